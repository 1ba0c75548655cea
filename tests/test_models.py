"""ConvNeXtBlock, ConvNeXt and the factories against timm and torchvision (same random weights)."""
from __future__ import annotations

import pytest
import torch

import convnext_fast
from convnext_fast import models
from convnext_fast.backend import available_backends
from convnext_fast.layers import DepthwiseConv2d, LayerNorm2d
from convnext_fast.models import ConvNeXt, ConvNeXtBlock, MODEL_CONFIGS
from convnext_fast.weights import load_weights

from model_helpers import randomize_, rel_err, timm_convnext, timm_model, tv_model

FP32_TOL = 2e-5  # relative to the output's largest magnitude

# Big models take tens of seconds each on 2 CPU cores (building them dominates, not the 32x32
# forward pass); marked slow, still run by default (deselect with -m "not slow").
_SLOW = {"convnext_large", "convnext_xlarge", "convnextv2_large", "convnextv2_huge"}


@pytest.fixture(autouse=True)
def _reference_backend():
    with convnext_fast.use_backend("reference"):
        yield


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(list(MODEL_CONFIGS)))
def test_factory_matches_timm(name):
    ref = timm_model(name)
    model = getattr(models, name)(pretrained=ref.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, out = ref(x), model(x)
    assert out.shape == (2, 1000)
    assert rel_err(out, expected) < FP32_TOL
    # Same architecture, not just loadable weights: identical state-dict keys and shapes.
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("name", _params(["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"]))
def test_factory_matches_torchvision(name):
    ref = tv_model(name)
    model = getattr(models, name)(pretrained=ref.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < FP32_TOL


def test_factory_defaults_and_kwargs():
    m = models.convnext_atto(num_classes=10, in_chans=1, drop_path_rate=0.1)
    assert m.head.fc.out_features == 10 and m.stem[0].in_channels == 1
    assert m.stages[3].blocks[-1].drop_path == pytest.approx(0.1)
    assert m.stages[0].blocks[0].drop_path == 0.0
    assert isinstance(m.stages[0].blocks[0].conv_dw, DepthwiseConv2d)
    assert isinstance(m.stages[0].blocks[0].norm, LayerNorm2d)
    assert m.stages[0].blocks[0].gamma is not None and models.convnextv2_atto().stages[0].blocks[0].gamma is None
    assert models.create_model("convnext_atto").num_features == 320
    assert models.list_models() == list(MODEL_CONFIGS)
    assert models.convnext_tiny.__name__ == "convnext_tiny" and "Args:" in models.convnext_tiny.__doc__


@pytest.mark.parametrize("pretrained", ["convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in22k", True])
def test_pretrained_hub_name_raises(pretrained):
    with pytest.raises(ValueError, match="never downloads") as info:
        models.convnext_tiny(pretrained=pretrained)
    assert "local file" in str(info.value)


def test_pretrained_bad_type():
    with pytest.raises(TypeError, match="file path or a state dict"):
        models.convnext_atto(pretrained=3)


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 11])
@pytest.mark.parametrize("variant", ["v1", "v1_conv_mlp", "v2", "v2_conv_mlp"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_block_matches_timm_forward_and_backward(kernel_size, variant, memory_format):
    from timm.models.convnext import ConvNeXtBlock as TimmBlock

    v2, conv_mlp = variant.startswith("v2"), variant.endswith("conv_mlp")
    ls = None if v2 else 1e-6
    dim = 24
    ref = randomize_(TimmBlock(dim, kernel_size=kernel_size, use_grn=v2, ls_init_value=ls, conv_mlp=conv_mlp))
    block = ConvNeXtBlock(dim, kernel_size=kernel_size, use_grn=v2, ls_init_value=ls, conv_mlp=conv_mlp)
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, dim, 9, 13).to(memory_format=memory_format)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = ref(x1), block(x2)
    assert rel_err(y, y_ref) < FP32_TOL
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    assert rel_err(x2.grad, x1.grad) < 1e-4
    ours = dict(block.named_parameters())
    assert list(ours) == [n for n, _ in ref.named_parameters()]  # same names, same order
    for name, p_ref in ref.named_parameters():
        assert rel_err(ours[name].grad, p_ref.grad) < 1e-4, name


def test_block_output_is_channels_last():
    block = ConvNeXtBlock(16).eval()
    y = block(torch.randn(1, 16, 8, 8).to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match="drop_path"):
        ConvNeXtBlock(8, drop_path=1.0)
    with pytest.raises(ValueError, match="positive channel count"):
        ConvNeXtBlock(0)
    with pytest.raises(ValueError, match="odd kernel size"):
        ConvNeXtBlock(8, kernel_size=4)


@pytest.mark.parametrize("options", [
    dict(kernel_size=(3, 5, 7, 9)),
    dict(head_norm_first=True, conv_mlp=True),
    dict(use_grn=True, ls_init_value=None, norm_eps=1e-5),
])
def test_convnext_options_match_timm(options):
    timm_opts = dict(options)
    if "kernel_size" in timm_opts:
        timm_opts["kernel_sizes"] = timm_opts.pop("kernel_size")
    arch = dict(depths=(1, 2, 2, 1), dims=(16, 24, 32, 48), num_classes=7)
    ref = timm_convnext(**arch, **timm_opts)
    model = ConvNeXt(**arch, **options).eval()
    load_weights(model, ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < FP32_TOL
        assert rel_err(model.forward_head(model.forward_features(x), pre_logits=True),
                       ref.forward_head(ref.forward_features(x), pre_logits=True)) < FP32_TOL


def test_forward_intermediates_match_timm():
    arch = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48))
    ref = timm_convnext(**arch, head_norm_first=True)
    model = ConvNeXt(**arch, head_norm_first=True).eval()
    load_weights(model, ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, norm=True)
        final_ref, feats_ref = ref.forward_intermediates(x, norm=True)
        assert rel_err(final, final_ref) < FP32_TOL
        assert [f.shape for f in feats] == [(1, 16, 16, 16), (1, 24, 8, 8), (1, 32, 4, 4), (1, 48, 2, 2)]
        for f, f_ref in zip(feats, feats_ref):
            assert rel_err(f, f_ref) < FP32_TOL
            assert f.is_contiguous(memory_format=torch.channels_last)
        two = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert len(two) == 2 and rel_err(two[1], feats_ref[2]) < FP32_TOL
        assert len(model.forward_intermediates(x, indices=2, stop_early=True)[1]) == 2
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [16, 24, 32, 48]
    with pytest.raises(ValueError, match="stage indices"):
        model.forward_intermediates(x, indices=[4])


def test_no_classifier_returns_pooled_features():
    model = models.convnext_atto(num_classes=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 320)


def test_convnext_rejects_bad_arguments():
    with pytest.raises(ValueError, match="as many depths as dims"):
        ConvNeXt(depths=(1, 1), dims=(8, 16, 32))
    with pytest.raises(ValueError, match="one kernel_size or one per stage"):
        ConvNeXt(depths=(1, 1), dims=(8, 16), kernel_size=(3, 5, 7))


def _triton_ready() -> str:
    return available_backends("cpu" if not torch.cuda.is_available() else "cuda")["triton"]


@pytest.mark.slow
@pytest.mark.skipif(bool(_triton_ready()), reason=_triton_ready() or "triton ready")
def test_convnext_atto_triton_backend_matches_timm():
    """The whole model on the Triton kernels (interpreter on CPU: tiny input, one image)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = timm_model("convnext_atto").to(device)
    model = models.convnext_atto(pretrained=ref.state_dict()).to(device).eval()
    x = torch.randn(1, 3, 32, 32, device=device)
    with torch.no_grad():
        expected = ref(x)
        with convnext_fast.use_backend("triton"):
            out = model(x)
    assert rel_err(out, expected) < 1e-4


def test_block_mlp_falls_back_when_the_named_backend_has_no_mlp_kernel(monkeypatch):
    """A backend asked for by name without an MLP kernel (the compiled extension's is CPU-only, so
    `cuda`) still runs whole blocks: their MLP half takes PyTorch's composite, same outputs."""
    import convnext_fast
    from convnext_fast import mlp

    torch.manual_seed(0)
    block = ConvNeXtBlock(8, ls_init_value=0.5).eval()
    x = torch.randn(2, 8, 5, 5)
    calls = []
    composite = mlp.mlp_composite
    with torch.no_grad():
        expected = block(x)
        # What the resolver answers for a named backend without a kernel for the call: "reference".
        monkeypatch.setattr(mlp, "resolve_forward", lambda *a, **k: ("reference", "cuda"))
        monkeypatch.setattr(mlp, "mlp_composite", lambda *a: calls.append(1) or composite(*a))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert calls, "the block's MLP half did not take PyTorch's composite"
    assert convnext_fast.backend.has_kernel("pointwise_mlp", "reference")
    assert not convnext_fast.backend.has_kernel("pointwise_mlp", "cuda")
