"""What users do with a model made by optimize_for_inference besides calling it: deep-copy it, save
and load the whole module, move it to another dtype, feed it an empty batch or the wrong channel
count, and use timm's classifier API. Each gives the right result or a clear error, never a
changed original or an error about the folded internals."""
from __future__ import annotations

import copy

import pytest
import torch

import convnext_fast
from convnext_fast.inference import FoldedHead, FoldedPatchConv
from convnext_fast.verify import randomized

from conftest import DEVICE

CLASSES = 10


def rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm()).item()


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    model = convnext_fast.create_model("convnext_atto", depths=(1, 1, 1, 1), num_classes=CLASSES)
    return randomized(model).to(DEVICE).eval()


@pytest.fixture
def optimized(original):
    return convnext_fast.optimize_for_inference(original)


def _x(batch=2, channels=3, dtype=torch.float32):
    return torch.randn(batch, channels, 32, 32, device=DEVICE, dtype=dtype)


def test_deepcopy_is_an_independent_model(optimized):
    x = _x()
    with torch.no_grad():
        before = optimized(x)
        twin = copy.deepcopy(optimized).eval()
        assert twin is not optimized
        assert torch.equal(twin(x), before)
        for t in twin.buffers():  # nothing done to the copy reaches the original
            t.zero_()
        assert torch.equal(optimized(x), before)
        assert not torch.equal(twin(x), before)
    with pytest.raises(RuntimeError, match="inference only"):
        twin.train()
    with pytest.raises(RuntimeError, match="does not support backward"):
        twin(_x().requires_grad_())


def test_whole_module_saves_and_loads(optimized, tmp_path):
    """torch.save of the module itself (not its state dict) and torch.load give the same model:
    the same outputs, the same input cast and the same refusals."""
    path = tmp_path / "optimized.pt"
    torch.save(optimized, path)
    loaded = torch.load(path, weights_only=False, map_location=DEVICE)
    assert type(loaded) is type(optimized) and type(loaded.stem) is type(optimized.stem)
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded(x), optimized(x))
        assert torch.equal(loaded(x.double()), optimized(x))  # the input is still cast at the stem
    with pytest.raises(RuntimeError, match="inference only"):
        loaded.train()
    with pytest.raises(RuntimeError, match="does not support backward"):
        loaded(_x().requires_grad_())


@pytest.mark.parametrize("move", [lambda m: m.double(), lambda m: m.half(), lambda m: m.bfloat16(),
                                  lambda m: m.to(torch.float16), lambda m: m.to(DEVICE, torch.float64),
                                  lambda m: m.type(torch.float64)],
                         ids=["double", "half", "bfloat16", "to_float16", "to_device_float64", "type"])
def test_dtype_moves_are_refused_and_change_nothing(optimized, move):
    x = _x()
    with torch.no_grad():
        before = optimized(x)
    with pytest.raises(TypeError, match=r"optimize_for_inference\(original_model, dtype=torch\.\w+\)"):
        move(optimized)
    assert all(t.dtype == torch.float32 for t in (*optimized.parameters(), *optimized.buffers())
               if t.is_floating_point())
    with torch.no_grad():
        assert torch.equal(optimized(x), before)


def test_moves_that_keep_the_dtype_work_and_dtype_argument_still_does(original, optimized):
    x = _x()
    with torch.no_grad():
        before = optimized(x)
        assert torch.equal(optimized.float()(x), before)
        assert torch.equal(optimized.to(DEVICE)(x), before)
        low = convnext_fast.optimize_for_inference(original, dtype=torch.bfloat16)
        assert low(x).dtype == torch.bfloat16
        assert rel_err(low(x), original(x)) < 5e-2
    with pytest.raises(TypeError, match=r"in torch.bfloat16 and cannot move to torch.float32"):
        low.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_batch(original, dtype):
    optimized = convnext_fast.optimize_for_inference(original, dtype=dtype)
    with torch.no_grad():
        expected = original(_x(batch=0))
        out = optimized(_x(batch=0))
    assert expected.shape == (0, CLASSES)
    assert out.shape == (0, CLASSES) and out.dtype == dtype


def test_get_and_reset_classifier(optimized):
    assert isinstance(optimized.head, FoldedHead)
    fc = optimized.get_classifier()
    assert isinstance(fc, torch.nn.Linear) and fc.out_features == CLASSES
    x = _x()
    with torch.no_grad():
        features = optimized.forward_head(optimized.forward_features(x), pre_logits=True)
        assert rel_err(optimized(x), fc(features)) < 1e-5  # the folded head computes fc(features)
        optimized.reset_classifier(5)
        fc = optimized.get_classifier()
        assert fc.out_features == 5 and not fc.weight.requires_grad
        out = optimized(x)
        assert out.shape == (2, 5) and optimized.head.weight_t is not None  # the new classifier is folded
        assert rel_err(out, fc(features)) < 1e-5
        optimized.reset_classifier(0)
        assert isinstance(optimized.get_classifier(), torch.nn.Identity)
        assert torch.equal(optimized(x), features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wrong_channel_count_is_named(original, dtype):
    """The stem folded into the patch kernel (float32 here) or kept as it is (bfloat16 on the CPU):
    either way the error is about the model's 3 input channels, not the kernel's weights."""
    optimized = convnext_fast.optimize_for_inference(original, dtype=dtype)
    if DEVICE.type == "cpu" and dtype == torch.float32:
        assert any(isinstance(m, FoldedPatchConv) for m in optimized.stem.modules())
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, H, W\) with 3 channels, got an input "
                                         r"of shape \(2, 4, 32, 32\)"):
        with torch.no_grad():
            optimized(_x(channels=4))
