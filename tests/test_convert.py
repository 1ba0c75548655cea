"""convert(): timm and torchvision ConvNeXts become fast in place, parameters shared; to_reference()."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convnext_fast
from convnext_fast import models
from convnext_fast.convert import ReferenceLayerNorm2d, TorchvisionConvNeXtBlock, convert, to_reference
from convnext_fast.layers import DepthwiseConv2d, LayerNorm2d
from convnext_fast.models import ConvNeXtBlock

from model_helpers import rel_err, timm_convnext, timm_model, tv_model

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=5)


@pytest.fixture(autouse=True)
def _reference_backend():
    with convnext_fast.use_backend("reference"):
        yield


def _fast_modules(model):
    return [m for m in model.modules() if isinstance(m, (ConvNeXtBlock, TorchvisionConvNeXtBlock,
                                                         DepthwiseConv2d, LayerNorm2d))]


def _check_converted(ref_model, make_input, n_blocks, block_type):
    original = copy.deepcopy(ref_model)
    params = dict(ref_model.named_parameters())
    keys = list(ref_model.state_dict())
    x = make_input()
    with torch.no_grad():
        expected = original(x)
    out_model = convert(ref_model)
    assert out_model is ref_model
    blocks = [m for m in ref_model.modules() if isinstance(m, block_type)]
    assert len(blocks) == n_blocks
    # same parameter objects under the same names; state dict keys unchanged
    after = dict(ref_model.named_parameters())
    assert list(after) == list(params)
    assert all(after[k] is params[k] for k in params)
    assert list(ref_model.state_dict()) == keys
    with torch.no_grad():
        assert rel_err(ref_model(x), expected) < 2e-5
    return original


@pytest.mark.parametrize("options", [dict(), dict(conv_mlp=True), dict(use_grn=True, ls_init_value=None),
                                     dict(use_grn=True, ls_init_value=None, conv_mlp=True)])
def test_convert_timm(options):
    ref = timm_convnext(**SMALL, **options)
    original = _check_converted(ref, lambda: torch.randn(2, 3, 64, 64), 5, ConvNeXtBlock)
    # stem / downsample / head LayerNorm2d are ours too
    assert isinstance(ref.stem[1], LayerNorm2d) and isinstance(ref.stages[1].downsample[0], LayerNorm2d)
    assert isinstance(ref.head.norm, LayerNorm2d)
    # and back: timm's own classes, same parameter objects, same outputs
    from timm.models.convnext import ConvNeXtBlock as TimmBlock

    params = dict(ref.named_parameters())
    back = to_reference(ref)
    assert not _fast_modules(back)
    assert sum(isinstance(m, TimmBlock) for m in back.modules()) == 5
    assert all(p is params[k] for k, p in back.named_parameters())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(back(x), original(x)) < 2e-5


def test_convert_timm_factory_model():
    ref = timm_model("convnextv2_atto")
    _check_converted(ref, lambda: torch.randn(2, 3, 32, 32), 12, ConvNeXtBlock)


def test_convert_torchvision():
    ref = tv_model("convnext_tiny")
    original = _check_converted(ref, lambda: torch.randn(2, 3, 32, 32), 18, TorchvisionConvNeXtBlock)
    assert isinstance(ref.features[0][1], LayerNorm2d) and isinstance(ref.classifier[0], LayerNorm2d)
    assert isinstance(ref.features[1][0].block[0], DepthwiseConv2d)
    back = to_reference(ref)
    from torchvision.models.convnext import CNBlock

    assert not _fast_modules(back) and sum(isinstance(m, CNBlock) for m in back.modules()) == 18
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(back(x), original(x)) < 2e-5


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_existing_optimizer_keeps_working(source):
    """An optimizer created before convert() trains the converted model exactly like the original."""
    def make():
        if source == "timm":
            return timm_convnext(**SMALL)
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.ConvNeXt(
            [torchvision.models.convnext.CNBlockConfig(16, 24, 1), torchvision.models.convnext.CNBlockConfig(24, None, 2)],
            num_classes=5)

    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    losses = []
    for do_convert in (False, True):
        model = make().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        if do_convert:
            convert(model)
            assert _fast_modules(model)
        run = []
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_convert_generic_depthwise_conv_only():
    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 8, 5, padding=1, groups=8),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, stride=2), nn.Conv2d(8, 16, 3, padding=1))
    weight = model[0].weight
    x = torch.randn(1, 8, 11, 11)
    with torch.no_grad():
        expected = model(x)
        convert(model)
        assert isinstance(model[0], DepthwiseConv2d) and model[0].weight is weight
        assert [type(m) for m in model[1:]] == [nn.Conv2d] * 3  # not 'same' padding / strided / dense
        assert rel_err(model(x), expected) < 2e-5
    with pytest.warns(UserWarning, match="found nothing"):
        convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        convert("convnext_tiny")


def test_convert_skips_unsupported_timm_blocks():
    from timm.models.convnext import ConvNeXtBlock as TimmBlock

    block = nn.Sequential(TimmBlock(16, act_layer="gelu_tanh"))
    with pytest.warns(UserWarning, match="not exact GELU"):
        convert(block)
    assert isinstance(block[0], TimmBlock)


def test_to_reference_native_model_exports_without_custom_ops():
    model = models.ConvNeXt(**SMALL).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    params = dict(model.named_parameters())
    to_reference(model)
    assert not _fast_modules(model) or all(isinstance(m, ConvNeXtBlock) for m in _fast_modules(model))
    assert isinstance(model.stem[1], ReferenceLayerNorm2d) and type(model.stem) is nn.Sequential
    assert type(model.stages[1].downsample) is nn.Sequential
    assert type(model.stages[0].blocks[0].conv_dw) is nn.Conv2d
    assert all(p is params[k] for k, p in model.named_parameters())
    with torch.no_grad():
        assert rel_err(model(x), expected) < 2e-5
    with convnext_fast.use_backend("auto"):
        ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("convnext_fast" in t for t in targets), targets
    # and convert() makes it fast again
    convert(model)
    assert isinstance(model.stages[0].blocks[0].conv_dw, DepthwiseConv2d)
    assert isinstance(model.stages[0].blocks[0].norm, LayerNorm2d)
    with torch.no_grad():
        assert rel_err(model(x), expected) < 2e-5


def test_failed_convert_leaves_model_unchanged():
    """A block that fails part-way through (after the stem and earlier blocks were convertible)
    makes convert() raise without changing any module of the model."""
    from timm.layers import DropPath

    model = timm_convnext(**SMALL)
    # timm's DropPath without rescaling by 1/keep has no fused counterpart: this block cannot convert
    model.stages[2].blocks[1].drop_path = DropPath(0.1, scale_by_keep=False)
    types = [(name, type(m)) for name, m in model.named_modules()]
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        convert(model)
    assert [(name, type(m)) for name, m in model.named_modules()] == types
    assert not _fast_modules(model)
    after = dict(model.named_parameters())
    assert list(after) == list(params) and all(after[k] is params[k] for k in params)
    sd = model.state_dict()
    assert list(sd) == list(state) and all(torch.equal(sd[k], v) for k, v in state.items())
    assert info.match(r"stages\.2\.blocks\.1 \(ConvNeXtBlock\): .*scale_by_keep=False.*left unchanged")
    # with the block fixed, the same model converts in full
    model.stages[2].blocks[1].drop_path = DropPath(0.1)
    convert(model)
    assert sum(isinstance(m, ConvNeXtBlock) for m in model.modules()) == 5
