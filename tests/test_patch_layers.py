"""PatchConvSequential (convnext_fast/patch_layers.py): the stem and downsampling layers of the plain
model run as one patch_linear pass in inference, on weights derived from the parameters and made
again whenever a parameter changes; training, grad mode with parameters requiring grad, and the
reference backend run the modules."""
from __future__ import annotations

import copy

import pytest
import torch

import convnext_fast
from convnext_fast import models, patch_layers
from convnext_fast.layers import LayerNorm2d
from convnext_fast.parity import assert_matches_reference
from convnext_fast.patch_layers import PatchConvSequential

from conftest import cpu_kernel_unavailable
from model_helpers import randomize_

REASON = cpu_kernel_unavailable("patch_linear_forward")
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"CPU patch kernel unavailable: {REASON}")


def _layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    down = PatchConvSequential(LayerNorm2d(24), torch.nn.Conv2d(24, 48, 2, 2))
    stem = PatchConvSequential(torch.nn.Conv2d(3, 24, 4, 4), LayerNorm2d(24))
    for m in (down, stem):
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))
    return down, stem


def _modules(seq, x):
    """The same layers run one module after the other, in float64 (the reference backend)."""
    with convnext_fast.use_backend("reference"):
        return copy.deepcopy(seq).double()(x.double())


def _spy(monkeypatch):
    calls = []
    real = patch_layers.patch_linear

    def spy(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(patch_layers, "patch_linear", spy)
    return calls


@pytest.mark.parametrize("which", ["downsample", "stem"])
def test_inference_runs_one_patch_pass_matching_the_modules(which, monkeypatch):
    down, stem = _layers()
    seq, x = (down, torch.randn(2, 24, 10, 12)) if which == "downsample" else (stem, torch.randn(2, 3, 17, 16))
    calls = _spy(monkeypatch)
    with torch.no_grad():
        out = seq(x)
    assert calls == [seq[1].kernel_size[0] if which == "downsample" else seq[0].kernel_size[0]]
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(out, _modules(seq, x), name=which)


def test_parameters_changed_in_place_or_replaced_are_seen(monkeypatch):
    down, _ = _layers()
    x = torch.randn(1, 24, 8, 8)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        down(x)
        down[0].weight.mul_(-2.0)  # the folded LayerNorm affine
        assert_matches_reference(down(x), _modules(down, x), name="after ln weight *= -2")
        state = {k: v.clone() for k, v in down.state_dict().items()}
        state["1.weight"].mul_(0.5)
        down.load_state_dict(state)
        assert_matches_reference(down(x), _modules(down, x), name="after load_state_dict")
        down[1].bias = torch.nn.Parameter(down[1].bias.detach() + 1.0)
        assert_matches_reference(down(x), _modules(down, x), name="after a new bias")
    assert len(calls) == 4


def test_float32_and_autocast_calls_keep_their_weights_apart(monkeypatch):
    """One model run in float32 and under bf16 autocast in turn (as a benchmark interleaves them)
    derives each dtype's weights once, not on every switch."""
    down, _ = _layers()
    x = torch.randn(1, 24, 8, 8)
    made = []
    real = patch_layers.patch_weight
    monkeypatch.setattr(patch_layers, "patch_weight", lambda w: made.append(1) or real(w))
    with torch.no_grad():
        for _ in range(3):
            down(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert down(x).dtype == torch.bfloat16
    assert len(made) == 2


def test_training_and_reference_backend_run_the_modules(monkeypatch):
    down, _ = _layers()
    x = torch.randn(1, 24, 8, 8)
    calls = _spy(monkeypatch)
    out = down(x)  # grad mode on, parameters require grad: autograd records the modules
    out.sum().backward()
    assert down[1].weight.grad is not None and down[0].weight.grad is not None
    with torch.no_grad(), convnext_fast.use_backend("reference"):
        down(x)
    assert calls == []


def test_plain_model_in_inference_and_under_autocast():
    """convnext_atto's stem and downsampling layers are PatchConvSequential: its inference output
    matches the reference backend's, in float32 and (within bf16 rounding) under bf16 autocast."""
    model = models.convnext_atto().eval()
    with torch.no_grad():
        randomize_(model)
    assert type(model.stem) is PatchConvSequential and type(model.stages[1].downsample) is PatchConvSequential
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with convnext_fast.use_backend("reference"):
            expected = model(x)
        assert_matches_reference(model(x), expected.double(), name="fp32")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(x)
            with convnext_fast.use_backend("reference"):
                torch_own = model(x)
    assert ours.dtype == torch_own.dtype == torch.bfloat16
    with torch.no_grad():
        exact = model.double()(x.double())
    assert_matches_reference(ours, exact, torch_own, name="bf16 autocast")
