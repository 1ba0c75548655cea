"""NaN and Inf depthwise weights: every backend gives the float64 ``F.conv2d`` result.

A convolution with zero padding multiplies the padding too: 0 * NaN and 0 * Inf are NaN, so an
output whose KxK window puts a NaN or Inf tap over the padding is NaN (float64 ``F.conv2d`` computes
exactly that; PyTorch's fp32 depthwise kernels skip the padding and give fewer NaNs). A NaN tap
makes its whole channel NaN; an Inf tap gives NaN where it lies over the padding and +-Inf inside.
In the fused dwconv + LayerNorm a non-finite conv value of one channel makes the LayerNorm of its
pixel NaN in every channel. The input gradient is the same padded conv of grad_y with the flipped
kernel.

The bad taps go into channels of both the full and the partial channel block (C = 100), at tap
(0, 0) and at the centre; fp32 and fp64 take different kernels (Triton: the px kernels and the tile
kernels). The reference backend runs PyTorch's own kernels, so it is checked in float64 only.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from conftest import DEVICE, kernel_backends
from convnext_fast import reference

NAN, INF = float("nan"), float("inf")
# (channel, tap, value): 40 in the first channel block of every kernel, 99 in the partial last one.
BAD_TAPS = [(3, "corner", NAN), (40, "centre", INF), (70, "centre", NAN), (99, "corner", INF)]
# (dtype, K): fp32 K = 7 on W = 14 takes Triton's px kernels (a 64-channel block and a partial one)
# and the CPU kernels' whole-row blocks (which skip the padding columns); fp64 K = 3 takes the
# Triton tile kernels (16-channel blocks).
CASES = [(torch.float32, 7), (torch.float64, 3)]
SHAPE = (1, 100, 5, 14)

# The Triton interpreter computes 0 * NaN with numpy, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _backends_for(dtype):
    return kernel_backends() + (["reference"] if dtype == torch.float64 else [])


def _params():
    return [pytest.param(b, dt, k, id=f"{b}-{str(dt)[6:]}-K{k}") for dt, k in CASES for b in _backends_for(dt)]


def _weight(k, dtype, bad):
    w = torch.randn((SHAPE[1], 1, k, k), dtype=dtype, device=DEVICE) / k
    for c, where, value in bad:
        kh = kw = 0 if where == "corner" else k // 2
        w[c, 0, kh, kw] = value
    return w


def _x(dtype):
    return torch.randn(SHAPE, dtype=dtype, device=DEVICE).contiguous(memory_format=torch.channels_last)


def _assert_same_nonfinite(ours, ref, name):
    """Same NaN mask and same +-Inf, exactly."""
    assert torch.equal(ours.isnan(), ref.isnan()), (
        f"{name}: {int(ours.isnan().sum())} NaNs, the float64 reference has {int(ref.isnan().sum())}; "
        f"differ at {int((ours.isnan() != ref.isnan()).sum())} places")
    inf = ref.isinf()
    assert torch.equal(ours.isinf(), inf) and torch.equal(ours[inf], ref[inf].to(ours.dtype)), f"{name}: Inf differs"


@pytest.mark.parametrize("backend,dtype,k", _params())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_depthwise_conv2d_non_finite_weight(backend, dtype, k, bias):
    x = _x(dtype)
    w = _weight(k, dtype, BAD_TAPS)
    b = torch.randn(SHAPE[1], dtype=dtype, device=DEVICE) if bias else None
    clean = w.nan_to_num(nan=0.5, posinf=0.5)
    with convnext_fast.use_backend(backend):
        y = convnext_fast.depthwise_conv2d(x, w, b)
        y_clean = convnext_fast.depthwise_conv2d(x, clean, b)
    ref = reference.depthwise_conv2d(x.double(), w.double(), None if b is None else b.double())
    bad = [c for c, _, _ in BAD_TAPS]
    # The test must be able to fail: the fp64 result has NaNs only over the padding for an Inf
    # corner tap, a whole NaN channel for a NaN tap, and none for an Inf centre tap.
    assert ref[:, 99].isnan().any() and not ref[:, 99].isnan().all() and ref[:, 3].isnan().all()
    assert not ref[:, 40].isnan().any() and ref[:, 40].isinf().all()
    _assert_same_nonfinite(y, ref, "y")
    # Every other channel: finite and bit for bit what finite weights give.
    others = [c for c in range(SHAPE[1]) if c not in bad]
    assert y[:, others].isfinite().all()
    assert torch.equal(y[:, others], y_clean[:, others])
    torch.testing.assert_close(y[:, others].double(), ref[:, others], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,dtype,k", _params())
@pytest.mark.parametrize("bad", BAD_TAPS, ids=lambda t: f"c{t[0]}-{t[1]}-{t[2]}")
def test_dwconv_layer_norm_non_finite_weight(backend, dtype, k, bad):
    x = _x(dtype)
    w = _weight(k, dtype, [bad])
    bias = bad[0] % 2 == 0  # with and without the conv bias
    b = torch.randn(SHAPE[1], dtype=dtype, device=DEVICE) if bias else None
    lw = torch.randn(SHAPE[1], dtype=dtype, device=DEVICE)
    lb = torch.randn(SHAPE[1], dtype=dtype, device=DEVICE)
    with convnext_fast.use_backend(backend):
        y = convnext_fast.dwconv_layer_norm(x, w, b, lw, lb)
    ref = reference.dwconv_layer_norm(x.double(), w.double(), None if b is None else b.double(), lw.double(),
                                      lb.double())
    # Every pixel has a non-finite conv value in the bad channel (NaN over the padding or for a NaN
    # tap, +-Inf inside), so every LayerNorm output is NaN.
    assert ref.isnan().all()
    _assert_same_nonfinite(y, ref, "y")


@pytest.mark.parametrize("dtype,k", CASES, ids=[f"{str(dt)[6:]}-K{k}" for dt, k in CASES])
@pytest.mark.parametrize("backend", kernel_backends() or ["<none>"])
def test_depthwise_conv2d_input_gradient_non_finite_weight(backend, dtype, k):
    """grad_x is the padded conv of grad_y with the flipped kernel, with the same semantics."""
    if backend == "<none>":
        pytest.skip("no kernel backend can run here")
    x = _x(dtype).requires_grad_()
    w = _weight(k, dtype, BAD_TAPS)
    gy = torch.randn(SHAPE, dtype=dtype, device=DEVICE)
    with convnext_fast.use_backend(backend):
        convnext_fast.depthwise_conv2d(x, w, None).backward(gy)
    ref = F.conv2d(gy.double(), w.double().flip(-1, -2), padding=k // 2, groups=SHAPE[1])
    _assert_same_nonfinite(x.grad, ref, "grad_x")
