"""The timm API that users of ConvNeXt already call, checked against timm itself: list_models,
create_model with ``name.tag``, pretrained_cfg / default_cfg, get_classifier / reset_classifier,
forward_intermediates(output_fmt=...), and export (torch.export; torch.jit.script refuses clearly)."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import convnext_fast
from convnext_fast import models
from convnext_fast.models import ConvNeXt, MODEL_CONFIGS

from model_helpers import rel_err, timm_convnext, timm_model

timm = pytest.importorskip("timm")

FP32_TOL = 2e-5  # relative to the output's largest magnitude
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


@pytest.fixture(autouse=True)
def _reference_backend():
    with convnext_fast.use_backend("reference"):
        yield


def _timm_tagged(filter="convnext*", **kwargs):
    """timm's pretrained names for the architectures this package has."""
    return {n for n in timm.list_models(filter, pretrained=True, **kwargs) if n.split(".")[0] in MODEL_CONFIGS}


# ----------------------------------------------------------------------------------------------
# list_models
# ----------------------------------------------------------------------------------------------


def test_list_models_filters_like_timm():
    v2 = [n for n in MODEL_CONFIGS if n.startswith("convnextv2")]
    assert models.list_models("*v2*") == v2
    assert models.list_models(["convnext_a*", "convnextv2_a*"]) == ["convnext_atto", "convnextv2_atto"]
    assert models.list_models("convnext*", exclude_filters=["*v2*", "*_[afp]*"]) == [
        "convnext_nano", "convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"]
    assert models.list_models("resnet*") == []
    assert models.list_models("convnext_atto.*") == []  # untagged names unless pretrained=True, as in timm
    for filt, excl in [("*v2*", ""), (["convnext_a*", "*_tiny"], ""), ("convnext*", "*v2*")]:
        assert set(models.list_models(filt, exclude_filters=excl)) == {
            n for n in timm.list_models(filt, exclude_filters=excl) if n in MODEL_CONFIGS}
    with pytest.raises(TypeError, match="list of str"):
        models.list_models(["convnext*", 3])


def test_list_models_pretrained_are_timm_tags():
    tagged = models.list_models(pretrained=True)
    assert len(tagged) == len(set(tagged))
    assert set(tagged) == _timm_tagged()  # every timm weight of these architectures, nothing else
    assert "convnextv2_small" not in {n.split(".")[0] for n in tagged}  # timm publishes none
    for filt, excl in [("*v2*", ""), ("convnext_tiny", ""), ("convnext_atto.d2*", ""), ("*", "*fcmae*"),
                       (["*_in22k", "convnextv2_a*"], "*_384")]:
        assert set(models.list_models(filt, pretrained=True, exclude_filters=excl)) == _timm_tagged(
            filt, exclude_filters=excl), (filt, excl)
    assert models.list_models("convnext_atto", pretrained=True) == ["convnext_atto.d2_in1k"]
    # Each architecture's default tag comes first.
    assert models.list_models("convnext_tiny", pretrained=True)[0] == "convnext_tiny.in12k_ft_in1k"
    assert "from a file you have" in models.list_models.__doc__


# ----------------------------------------------------------------------------------------------
# create_model and pretrained_cfg
# ----------------------------------------------------------------------------------------------

_REQUIRED_CFG_KEYS = {"architecture", "tag", "input_size", "interpolation", "crop_pct", "mean", "std",
                      "num_classes", "first_conv", "classifier"}


def test_pretrained_cfg_of_every_tag_matches_timm():
    from timm.models import get_pretrained_cfg

    names = models.list_models(pretrained=True) + list(MODEL_CONFIGS)  # untagged: timm's default tag
    for name in names:
        model = models.create_model(name, device="meta")
        ours = model.pretrained_cfg
        theirs = get_pretrained_cfg(name).to_dict()
        assert _REQUIRED_CFG_KEYS <= set(ours), name
        assert {k: theirs.get(k, "<absent in timm>") for k in ours} == ours, name
        assert model.num_classes == theirs["num_classes"], name
        assert model.default_cfg is ours
        if "." in name:
            assert ours["tag"] == name.split(".", 1)[1]


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_atto.d2_in1k", "convnextv2_atto.fcmae",
                                  "convnext_tiny.fb_in22k", "convnext_base.clip_laion2b_augreg_ft_in1k"])
def test_create_model_cfg_and_data_config_match_timm(name):
    ref = timm.create_model(name, pretrained=False, device="meta")
    model = models.create_model(name, device="meta")
    assert {k: ref.pretrained_cfg.get(k) for k in model.pretrained_cfg} == model.pretrained_cfg
    assert ref.default_cfg is ref.pretrained_cfg and model.default_cfg is model.pretrained_cfg
    assert model.num_classes == ref.num_classes
    # What users build their eval transforms from.
    assert timm.data.resolve_model_data_config(model) == timm.data.resolve_model_data_config(ref)


def test_create_model_tag_rules():
    m = models.create_model("convnext_atto.d2_in1k", num_classes=10)
    assert m.num_classes == 10 and m.head.fc.out_features == 10
    assert m.pretrained_cfg["tag"] == "d2_in1k" and m.pretrained_cfg["num_classes"] == 1000  # describes the weights
    assert models.create_model("convnextv2_atto.fcmae").get_classifier().__class__ is nn.Identity
    assert models.convnext_atto().pretrained_cfg["tag"] == "d2_in1k"
    over = models.create_model("convnext_atto", pretrained_cfg_overlay=dict(crop_pct=0.5), device="meta")
    assert over.pretrained_cfg["crop_pct"] == 0.5
    with pytest.raises(ValueError, match="unknown pretrained tag 'fb_in1k' for convnext_atto; its tags are: d2_in1k"):
        models.create_model("convnext_atto.fb_in1k")
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        models.create_model("resnet50")
    # A model built directly has generic ImageNet preprocessing and no tag.
    cfg = ConvNeXt(**TINY, num_classes=7).pretrained_cfg
    assert cfg["tag"] is None and cfg["num_classes"] == 7 and cfg["input_size"] == (3, 224, 224)
    assert (cfg["mean"], cfg["std"]) == (timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    direct = ConvNeXt(**TINY)
    direct.default_cfg = {"tag": "mine"}
    assert direct.pretrained_cfg == {"tag": "mine"}


@pytest.mark.parametrize("build", [
    lambda: models.create_model("convnext_atto.d2_in1k", pretrained=True),
    lambda: models.convnextv2_atto(pretrained=True),
    lambda: models.create_model("convnextv2_small", pretrained=True),
])
def test_pretrained_true_without_file_says_where_weights_come_from(build):
    with pytest.raises(ValueError, match="never downloads") as info:
        build()
    msg = str(info.value)
    assert "checkpoint_path=" in msg and "load_weights(model" in msg and "local file" in msg


def test_pretrained_true_loads_the_given_file(tmp_path):
    ref = timm_model("convnext_atto")
    path = tmp_path / "convnext_atto.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref(x)
    built = [
        models.create_model("convnext_atto.d2_in1k", pretrained=True, checkpoint_path=path),
        models.create_model("convnext_atto.d2_in1k", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
        models.create_model("convnext_atto", checkpoint_path=str(path)),  # loaded without pretrained, as timm
        models.convnext_atto(pretrained=True, checkpoint_path=path),
    ]
    for model in built:
        assert model.pretrained_cfg["tag"] == "d2_in1k"
        with torch.no_grad():
            assert rel_err(model.eval()(x), expected) < FP32_TOL
    with pytest.raises(ValueError, match="weights given twice"):
        models.create_model("convnext_atto", pretrained=ref.state_dict(), checkpoint_path=path)
    with pytest.raises(FileNotFoundError):
        models.create_model("convnext_atto", pretrained=True, checkpoint_path=tmp_path / "missing.pth")


# ----------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("global_pool", [None, "avg", "max", "avgmax", ""])
def test_reset_classifier_matches_timm(global_pool):
    ref = timm_convnext(**TINY, num_classes=7)
    model = ConvNeXt(**TINY, num_classes=7).eval()
    model.load_state_dict(ref.state_dict())
    assert model.get_classifier() is model.head.fc and isinstance(ref.get_classifier(), nn.Linear)
    ref.reset_classifier(5, global_pool)
    model.reset_classifier(5, global_pool)
    assert model.num_classes == 5 and type(model.get_classifier()) is type(ref.get_classifier())
    model.load_state_dict(ref.state_dict())  # same keys and shapes ('' pooling: a 1x1 conv, as timm's)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(x), ref(x)
        assert out.shape == expected.shape
        assert rel_err(out, expected) < FP32_TOL
        ref.reset_classifier(0)
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        feats, feats_ref = model(x), ref(x)
        assert feats.shape == feats_ref.shape == ((2, 32, 2, 2) if global_pool == "" else (2, 32))
        assert rel_err(feats, feats_ref) < FP32_TOL


def test_reset_classifier_options_and_errors():
    model = ConvNeXt(**TINY, num_classes=7).to(torch.float64).train()
    model.reset_classifier(3)
    fc = model.get_classifier()
    assert fc.weight.dtype == torch.float64 and fc.training and fc.out_features == 3
    model.reset_classifier(4, reset_other=True)
    assert isinstance(model.head.norm, nn.Identity)
    with pytest.raises(ValueError, match="global_pool='catavgmax' is not supported"):
        model.reset_classifier(2, "catavgmax")
    with pytest.raises(ValueError, match="num_classes >= 0"):
        model.reset_classifier(-1)
    assert model.num_classes == 4 and model.get_classifier().out_features == 4  # unchanged by the failures
    assert list(inspect.signature(ConvNeXt.reset_classifier).parameters) == list(
        inspect.signature(timm.models.convnext.ConvNeXt.reset_classifier).parameters)


@pytest.mark.parametrize("global_pool", ["max", ""])
def test_global_pool_argument_matches_timm(global_pool):
    ref = timm_convnext(**TINY, num_classes=7, global_pool=global_pool)
    model = ConvNeXt(**TINY, num_classes=7, global_pool=global_pool).eval()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < FP32_TOL


# ----------------------------------------------------------------------------------------------
# forward_intermediates
# ----------------------------------------------------------------------------------------------


def test_forward_intermediates_signature_and_output_fmt():
    ours = list(inspect.signature(ConvNeXt.forward_intermediates).parameters)
    assert ours == list(inspect.signature(timm.models.convnext.ConvNeXt.forward_intermediates).parameters)
    model = ConvNeXt(**TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, nchw = model.forward_intermediates(x, output_fmt="NCHW")
        final2, nhwc = model.forward_intermediates(x, output_fmt="NHWC")
        last = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
    assert torch.equal(final, final2) and final.shape == (1, 32, 2, 2)
    assert [f.shape for f in nhwc] == [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 24), (1, 2, 2, 32)]
    for a, b in zip(nchw, nhwc):
        assert torch.equal(a.permute(0, 2, 3, 1), b) and b.is_contiguous()
    assert len(last) == 1 and torch.equal(last[0], nhwc[-1])
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC', got 'NLC'"):
        model.forward_intermediates(x, output_fmt="NLC")


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def test_torch_export_matches_eager():
    x = torch.randn(2, 3, 32, 32)
    with convnext_fast.use_backend("auto"):
        model = models.convnext_atto().eval()
        with torch.no_grad():
            expected = model(x)
        ep = torch.export.export(model, (x,))
        with torch.no_grad():
            assert rel_err(ep.module()(x), expected) < 1e-6
    # to_reference: the same numbers from plain ATen operators only (for ONNX / TensorRT).
    plain = convnext_fast.to_reference(model)
    ep = torch.export.export(plain, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert all(t.startswith("aten.") or t == "<built-in function getitem>" for t in targets), targets
    with torch.no_grad():
        assert rel_err(ep.module()(x), expected) < FP32_TOL


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torch_jit_script_refuses_with_the_export_route():
    model = ConvNeXt(**TINY).eval()
    for candidate in (model, convnext_fast.to_reference(ConvNeXt(**TINY).eval())):
        with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.export\.export.*to_reference"):
            torch.jit.script(candidate)
    assert "torch.export" in ConvNeXt.__doc__ and "to_reference" in ConvNeXt.__doc__
