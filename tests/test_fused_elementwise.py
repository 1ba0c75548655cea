"""The block's elementwise tails (convnext_fast/fused_elementwise.py): linear_gelu's CPU inference
path (bias and GELU in place on the GEMM output) against the plain composition, and the cases that
must keep the plain path (autograd, autocast)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convnext_fast.fused_elementwise import _cpu_inference_in_place, linear_gelu


def _inputs(dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    # NHWC view of a channels_last tensor, as the block passes it.
    x = torch.randn(2, 24, 5, 7, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x = x.permute(0, 2, 3, 1)
    w = torch.randn(96, 24, generator=g, dtype=dtype) / 5
    b = torch.randn(96, generator=g, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (x, w, b)]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_inference_path_matches_the_plain_composition(with_bias, dtype):
    x, w, b = _inputs(dtype)
    b = b if with_bias else None
    x_before = x.clone()
    with torch.no_grad():
        assert _cpu_inference_in_place(x, w, b)
        ours = linear_gelu(x, w, b)
    ref = F.gelu(F.linear(x.double(), w.double(), None if b is None else b.double()))
    # Same operations per element; only the GEMM's rounding of dot + bias may differ in the last bit.
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert torch.equal(x, x_before)  # the input is never written, only the GEMM's own output


def test_training_keeps_the_autograd_path():
    x, w, b = _inputs(requires_grad=True)
    assert not _cpu_inference_in_place(x, w, b)
    linear_gelu(x, w, b).sum().backward()
    ref = [t.detach().double().requires_grad_() for t in (x, w, b)]
    F.gelu(F.linear(*ref)).sum().backward()
    for ours, theirs in zip((x, w, b), ref):
        torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-5, atol=1e-5)


def test_inference_without_no_grad_uses_the_in_place_path_only_without_grad_inputs():
    x, w, b = _inputs()
    assert _cpu_inference_in_place(x, w, b)          # nothing requires grad
    w.requires_grad_()
    assert not _cpu_inference_in_place(x, w, b)      # grad mode on and a parameter requires grad
    with torch.no_grad():
        assert _cpu_inference_in_place(x, w, b)


def test_cpu_autocast_keeps_the_plain_path():
    x, w, b = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert not _cpu_inference_in_place(x, w, b)
        ours = linear_gelu(x, w, b)
        ref = F.gelu(F.linear(x, w, b))
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(ours, ref)
