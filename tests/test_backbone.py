"""ConvNeXt as a backbone (timm's API, checked against timm itself): ``features_only`` models and
their ``feature_info``, ``output_stride`` 16 / 8 (dilated depthwise convs on every backend),
torch.fx tracing and torchvision's feature extraction, the complete ``pretrained_cfg``, and the
FPN example through ``convert()`` and ``optimize_for_inference``. Tiny models and inputs."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import convnext_fast
from convnext_fast.patch_layers import PatchConvSequential
from convnext_fast import reference
from convnext_fast.features import FeatureDictNet, FeatureGetterNet, FeatureListNet
from convnext_fast.models import MODEL_CONFIGS, ConvNeXtBlock

from model_helpers import randomize_, rel_err, timm_model

timm = pytest.importorskip("timm")

FP32_TOL = 2e-5  # relative to the output's largest magnitude
ROOT = Path(__file__).resolve().parents[1]


def _timm_features(name, seed=0, **kwargs):
    """timm's features_only model with random weights (state dict as ours)."""
    ref = timm.create_model(name, features_only=True, **kwargs)
    return randomize_(ref, seed).eval()


def _ours_like(ref, name, **kwargs):
    model = convnext_fast.create_model(name, features_only=True, **kwargs).eval()
    model.load_state_dict(ref.state_dict())
    return model


def _outputs(out):
    return list(out.values()) if isinstance(out, dict) else list(out)


# ----------------------------------------------------------------------------------------------
# 1. features_only
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {},
    dict(out_indices=(1, 3)),
    dict(out_indices=2),
    dict(out_indices=(-1,), feature_cls="dict"),
    dict(out_indices=(0, 2), feature_cls="getter"),
    dict(feature_cls="getter"),
])
def test_features_only_matches_timm(kwargs):
    ref = _timm_features("convnext_atto", **kwargs)
    model = _ours_like(ref, "convnext_atto", **kwargs)
    assert type(model).__name__ == type(ref).__name__
    assert isinstance(model, FeatureGetterNet) == (kwargs.get("feature_cls") == "getter")
    info, ref_info = model.feature_info, ref.feature_info
    assert info.channels() == ref_info.channels() and info.reduction() == ref_info.reduction()
    assert info.module_name() == ref_info.module_name() and tuple(info.out_indices) == tuple(ref_info.out_indices)
    assert info.info == ref_info.info and len(info) == len(ref_info)
    assert list(model.state_dict()) == list(ref.state_dict())  # timm's keys (stem_0..., or model.*)
    assert model.pretrained_cfg == {k: v for k, v in ref.pretrained_cfg.items() if k != "url"}
    assert model.default_cfg is model.pretrained_cfg and "num_classes" not in model.pretrained_cfg
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    if isinstance(expected, dict):
        assert list(out) == list(expected)
    out, expected = _outputs(out), _outputs(expected)
    assert len(out) == len(expected)
    for o, e in zip(out, expected):
        assert o.shape == e.shape and rel_err(o, e) < FP32_TOL


def test_features_are_forward_intermediates():
    """The levels are those of the classification model's forward_intermediates (same kernels)."""
    model = convnext_fast.convnextv2_atto().eval()
    feats = convnext_fast.features.features_model(model, out_indices=(0, 1, 2, 3))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        out = feats(x)
    assert all(torch.equal(o, e) for o, e in zip(out, expected))
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    nhwc = convnext_fast.features.features_model(model, out_indices=(3,), output_fmt="NHWC")
    with torch.no_grad():
        assert torch.equal(nhwc(x)[0], expected[3].permute(0, 2, 3, 1))


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_feature_info_of_every_factory_matches_timm(name):
    model = convnext_fast.create_model(name, features_only=True, device="meta")
    ref = timm.create_model(name, features_only=True, device="meta")
    assert model.feature_info.info == ref.feature_info.info
    assert model.feature_info.out_indices == ref.feature_info.out_indices
    assert model.pretrained_cfg == {k: v for k, v in ref.pretrained_cfg.items() if k != "url"}


def test_features_training_and_checkpointing():
    model = convnext_fast.create_model("convnext_atto", features_only=True, out_indices=(1, 2)).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    sum(o.square().mean() for o in out).backward()
    assert all(torch.allclose(o, e, rtol=1e-5, atol=1e-6) for o, e in zip(out, expected))
    # Every parameter of the kept stages (stem, stages 0-2) receives a gradient; the later stages are gone.
    assert all(p.grad is not None for p in model.parameters())
    assert "stages_3" not in dict(model.named_children())


def test_features_only_errors():
    with pytest.raises(ValueError, match="feature_cls='hook' is not supported"):
        convnext_fast.create_model("convnext_atto", features_only=True, feature_cls="hook")
    with pytest.raises(ValueError, match="out_indices must name levels"):
        convnext_fast.create_model("convnext_atto", features_only=True, out_indices=(4,))
    with pytest.raises(ValueError, match="features_only=True models only"):
        convnext_fast.create_model("convnext_atto", out_indices=(1, 2))
    with pytest.raises(ValueError, match="unknown feature_cfg entries"):
        convnext_fast.create_model("convnext_atto", features_only=True, feature_cfg=dict(out_map=(1,)))
    with pytest.raises(TypeError, match="wraps a convnext_fast ConvNeXt"):
        FeatureListNet(nn.Sequential(nn.Conv2d(3, 3, 1)))
    # feature_cfg as timm takes it.
    m = convnext_fast.create_model("convnext_atto", features_only=True, feature_cfg=dict(feature_cls="dict"))
    assert isinstance(m, FeatureDictNet) and not isinstance(m, FeatureListNet)


# ----------------------------------------------------------------------------------------------
# 2. output_stride 16 / 8: dilated depthwise convs
# ----------------------------------------------------------------------------------------------


def _dilated_case(n, c, h, w, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    x = torch.randn(n, c, h, w, generator=g, **f64).contiguous(memory_format=torch.channels_last)
    params = [torch.randn(c, 1, k, k, generator=g, **f64) * 0.3, torch.randn(c, generator=g, **f64),
              1 + 0.2 * torch.randn(c, generator=g, **f64), 0.2 * torch.randn(c, generator=g, **f64)]
    return [t.requires_grad_() for t in (x, *params)]


def _grads(y, inputs, gy):
    return torch.autograd.grad(y, inputs, gy)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("shape,k,d", [((2, 3, 7, 5), 3, 2), ((1, 5, 6, 9), 7, 3), ((1, 2, 4, 4), 3, 4)])
def test_dilated_ops_match_reference_fp64(backend, shape, k, d):
    """Forward and every gradient of the dilated depthwise conv and of the fused dwconv + LayerNorm,
    in float64, against ``F.conv2d(..., dilation=d)``; H, W not multiples of d, and smaller than the
    dilated kernel's reach."""
    if convnext_fast.available_backends("cpu")[backend]:
        pytest.skip(convnext_fast.available_backends("cpu")[backend])
    x, w, b, lw, lb = _dilated_case(*shape, k)
    gy = torch.randn(shape, dtype=torch.float64)
    with convnext_fast.use_backend(backend):
        y = convnext_fast.depthwise_conv2d(x, w, b, dilation=d)
        z = convnext_fast.dwconv_layer_norm(x, w, b, lw, lb, 1e-6, dilation=d)
        g_y = _grads(y, (x, w, b), gy)
        g_z = _grads(z, (x, w, b, lw, lb), gy)
    y_ref = reference.depthwise_conv2d(x, w, b, d)
    z_ref = reference.dwconv_layer_norm(x, w, b, lw, lb, 1e-6, d)
    assert torch.allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(z, z_ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(g_y, _grads(y_ref, (x, w, b), gy)):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-9)
    for g, r in zip(g_z, _grads(z_ref, (x, w, b, lw, lb), gy)):
        assert torch.allclose(g, r, rtol=1e-9, atol=1e-9)
    assert y.shape == shape and z.is_contiguous(memory_format=torch.channels_last)


def test_dilated_module_and_errors():
    conv = convnext_fast.DepthwiseConv2d(4, 3, dilation=2)
    assert conv.padding == (2, 2) and conv.dilation == (2, 2)
    plain = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        assert rel_err(conv(x), plain(x)) < 1e-6
    with pytest.raises(ValueError, match="dilation to be a positive integer"):
        convnext_fast.depthwise_conv2d(x, conv.weight.detach(), None, dilation=0)
    with pytest.raises(ValueError, match="dilation to be a positive integer"):
        convnext_fast.DepthwiseConv2d(4, 3, dilation=1.5)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_output_stride_matches_timm(name, output_stride):
    ref = timm_model(name, output_stride=output_stride)
    model = convnext_fast.create_model(name, pretrained=ref.state_dict(), output_stride=output_stride).eval()
    assert model.feature_info == ref.feature_info
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        out, expected = model.forward_features(x), ref.forward_features(x)
        logits, ref_logits = model(x), ref(x)
    assert out.shape == expected.shape == (1, 320, 40 // output_stride, 56 // output_stride)
    assert rel_err(out, expected) < FP32_TOL and rel_err(logits, ref_logits) < FP32_TOL
    # The dilated stages stay on the fused modules.
    convs = [b.conv_dw for b in model.modules() if isinstance(b, ConvNeXtBlock)]
    assert all(isinstance(c, convnext_fast.DepthwiseConv2d) for c in convs)
    assert {c.dilation[0] for c in convs} == ({1, 2} if output_stride == 16 else {1, 2, 4})


def test_output_stride_backbone_gradients_match_timm():
    ref = timm_model("convnext_atto", output_stride=8)
    model = convnext_fast.create_model("convnext_atto", pretrained=ref.state_dict(), output_stride=8)
    x = torch.randn(1, 3, 24, 24)
    for m in (model, ref):
        m.forward_features(x).square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        if p.grad is not None or grads[name].grad is not None:
            assert rel_err(p.grad, grads[name].grad) < 1e-4, name
    with pytest.raises(ValueError, match="output_stride 8, 16 or 32"):
        convnext_fast.create_model("convnext_atto", output_stride=4)


# ----------------------------------------------------------------------------------------------
# 3. torch.fx
# ----------------------------------------------------------------------------------------------


def _leaf_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_module"]


@pytest.mark.parametrize("name,kwargs", [("convnext_atto", {}), ("convnextv2_atto", {}),
                                         ("convnext_atto", dict(output_stride=16, global_pool=""))])
def test_symbolic_trace_same_outputs(name, kwargs):
    model = convnext_fast.create_model(name, **kwargs).eval()
    gm = torch.fx.symbolic_trace(model)
    leaves = _leaf_targets(gm)
    assert "stages.0.blocks.0" in leaves and "stem" in leaves  # fused modules are leaves
    assert not any(t.startswith("stages.0.blocks.0.") for t in leaves)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_every_factory_traces(name):
    model = convnext_fast.create_model(name, device="meta")
    gm = torch.fx.symbolic_trace(model)
    blocks = [n for n, m in model.named_modules() if isinstance(m, ConvNeXtBlock)]
    assert [t for t in _leaf_targets(gm) if t in blocks] == blocks


def test_create_feature_extractor_and_backward():
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = convnext_fast.create_model("convnext_atto", num_classes=5)
    train_nodes, eval_nodes = get_graph_node_names(model)
    # fused modules are nodes of their own: the downsampling layer (norm + conv) is one
    assert "stages.1.downsample" in eval_nodes and "stages.2.blocks.0" in eval_nodes
    fx = create_feature_extractor(model.eval(), return_nodes={"stages.1": "c3", "stages.3": "c5"})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = fx(x)
        expected = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert list(out) == ["c3", "c5"] and all(torch.equal(o, e) for o, e in zip(out.values(), expected))
    # Training through the traced graph: every parameter gets its gradient.
    head = create_feature_extractor(model.train(), return_nodes=[train_nodes[-1]])
    list(head(torch.randn(2, 3, 32, 32)).values())[0].mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_fx_leaves_registered_with_timm_and_script_refused():
    from timm.models import get_notrace_modules

    model = convnext_fast.create_model("convnext_atto")
    assert {ConvNeXtBlock, convnext_fast.LayerNorm2d, convnext_fast.DepthwiseConv2d,
            PatchConvSequential} <= set(get_notrace_modules())
    gm = torch.fx.symbolic_trace(model)
    with pytest.raises(RuntimeError, match="cannot be compiled by torch.jit.script.*torch.export"):
        torch.jit.script(gm)


# ----------------------------------------------------------------------------------------------
# 4. pretrained_cfg
# ----------------------------------------------------------------------------------------------


def test_pretrained_cfg_has_every_timm_key():
    """Every key timm's pretrained_cfg has for a tag (but the download URL) is there, with timm's value."""
    from timm.models import get_pretrained_cfg

    for name in convnext_fast.list_models(pretrained=True) + ["convnextv2_small"]:
        theirs = {k: v for k, v in get_pretrained_cfg(name).to_dict().items() if k != "url"}
        ours = convnext_fast.create_model(name, device="meta").pretrained_cfg
        assert ours == theirs, name
    model = convnext_fast.create_model("convnext_tiny.fb_in22k_ft_in1k_384", device="meta")
    assert model.pretrained_cfg["pool_size"] == (12, 12) and model.pretrained_cfg["license"] == "apache-2.0"


# ----------------------------------------------------------------------------------------------
# 5. The FPN example; features_only through convert() and optimize_for_inference
# ----------------------------------------------------------------------------------------------


def test_fpn_example():
    example = runpy.run_path(str(ROOT / "examples" / "backbone_fpn.py"))
    out = example["main"](["--model", "convnext_atto", "--size", "32", "--output-stride", "16"])
    assert [tuple(v.shape) for v in out.values()] == [(1, 256, 8, 8), (1, 256, 4, 4), (1, 256, 2, 2), (1, 256, 2, 2)]
    fpn = example["ConvNeXtFPN"]("convnextv2_atto", out_indices=(1, 2, 3), fpn_channels=16).eval()
    with torch.no_grad():
        out = fpn(torch.randn(2, 3, 64, 64))
    assert list(out) == ["p1", "p2", "p3"] and out["p1"].shape == (2, 16, 8, 8)


@pytest.mark.parametrize("feature_cls", ["list", "getter"])
def test_features_through_optimize_for_inference(feature_cls):
    model = convnext_fast.create_model("convnext_atto", features_only=True, feature_cls=feature_cls,
                                       out_indices=(1, 3), output_stride=16)
    randomize_(model).eval()
    fast = convnext_fast.optimize_for_inference(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for o, e in zip(fast(x), model(x)):
            assert rel_err(o, e) < 1e-4
    assert not any(isinstance(m, ConvNeXtBlock) for m in fast.modules())  # every block folded, dilated too
    # to_reference: plain nn.Conv2d with the dilation (for export), same outputs.
    plain = convnext_fast.to_reference(model)
    convs = [m for m in plain.modules() if type(m) is nn.Conv2d and m.groups > 1]
    assert convs and {m.dilation[0] for m in convs} == {1, 2}
    with torch.no_grad():
        for o, e in zip(plain(x), fast(x)):
            assert rel_err(o, e) < 1e-4


def test_timm_features_model_through_convert():
    """A timm features_only backbone (dilated, output_stride 16) made fast in place by convert()."""
    ref = _timm_features("convnext_atto", output_stride=16, out_indices=(1, 2, 3))
    model = _timm_features("convnext_atto", output_stride=16, out_indices=(1, 2, 3))
    convnext_fast.convert(model)
    assert sum(isinstance(m, ConvNeXtBlock) for m in model.modules()) == 12
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for o, e in zip(model(x), ref(x)):
            assert rel_err(o, e) < FP32_TOL
    plain = convnext_fast.to_reference(model)
    with torch.no_grad():
        for o, e in zip(plain(x), ref(x)):
            assert rel_err(o, e) < FP32_TOL
