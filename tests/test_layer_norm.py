"""Parity of the channels-first LayerNorm (``convnext_fast.layer_norm_2d``) with ``reference.py``.

Every kernel backend that can run here (Triton through its interpreter on CPU) against the float64
reference: forward and the gradients of x, weight and bias, for odd/prime shapes, C = 1, C not a
multiple of any block size, C above one register tile (the chunk loop), every memory layout,
expanded stride-0 gradients, fp16/bf16 under the 2x-PyTorch rule, large fp16 values, determinism,
gradcheck and N = 0.
"""

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast import reference
from convnext_fast.parity import assert_matches_reference, lowp_atol
from conftest import ON_GPU



# C = 1100 > 1024 (the largest fp32/bf16 register tile) runs the chunked path; C = 32 (a multiple of
# the CPU kernels' 16-channel blocks) the CPU kernels' in-place fp32/fp64 rows.
CPU_SHAPES = [(2, 13, 3, 5), (1, 1, 4, 3), (3, 37, 2, 7), (1, 1100, 2, 3), (2, 32, 3, 4)]
GPU_SHAPES = CPU_SHAPES + [(4, 96, 56, 56), (3, 192, 29, 31), (8, 768, 7, 7), (2, 2816, 7, 7), (2, 1408, 14, 14)]
SHAPES = GPU_SHAPES if ON_GPU else CPU_SHAPES
LAYOUTS = ["contiguous", "channels_last", "sliced"]


def make_input(shape, layout, dtype, device, scale=1.0):
    """An (N, C, H, W) tensor of the given logical shape in the given memory layout."""
    n, c, h, w = shape
    if layout == "sliced":
        # A view into a larger tensor: channel and width strides that no dense layout has.
        base = torch.randn(n, c + 3, h, 2 * w, dtype=torch.float64, device=device) * scale
        return base.to(dtype)[:, 2:c + 2, :, ::2]
    x = (torch.randn(shape, dtype=torch.float64, device=device) * scale + 0.5).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_params(c, dtype, device):
    w = (1.0 + 0.5 * torch.randn(c, dtype=torch.float64, device=device)).to(dtype)
    b = (0.5 * torch.randn(c, dtype=torch.float64, device=device)).to(dtype)
    return w, b


def run_ours(x, w, b, grad_y, eps=1e-6):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = convnext_fast.layer_norm_2d(x, w, b, eps)
    y.backward(grad_y)
    return y.detach(), x.grad, w.grad, b.grad


def run_reference64(x, w, b, grad_y, eps=1e-6):
    x, w, b = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = reference.layer_norm_2d(x, w, b, eps)
    y.backward(grad_y.double())
    return y.detach(), x.grad, w.grad, b.grad


def run_torch_lowp(x, w, b, grad_y, eps=1e-6):
    """PyTorch's own computation in x's dtype: F.layer_norm on the NHWC permutation."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)
    y.backward(grad_y)
    return y.detach(), x.grad, w.grad, b.grad


NAMES = ("y", "grad_x", "grad_weight", "grad_bias")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp32(kernel_backend, device, shape, layout):
    x = make_input(shape, layout, torch.float32, device)
    w, b = make_params(shape[1], torch.float32, device)
    gy = torch.randn(shape, dtype=torch.float32, device=device)
    ours = run_ours(x, w, b, gy)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    ref = run_reference64(x, w, b, gy)
    # The weight/bias gradients are sums over N*H*W terms: an absolute tolerance scaled by it.
    reduce_atol = 1e-5 * max(1.0, (shape[0] * shape[2] * shape[3]) ** 0.5)
    for name, o, r in zip(NAMES, ours, ref):
        assert o.dtype == torch.float32
        atol = reduce_atol if name in ("grad_weight", "grad_bias") else None
        assert_matches_reference(o, r, name=name, atol=atol)


@pytest.mark.parametrize("shape", [(2, 13, 3, 5), (1, 600, 2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp64(kernel_backend, device, shape):
    # fp64 uses a 512-channel tile, so C = 600 runs the chunked path in fp64.
    x = make_input(shape, "channels_last", torch.float64, device)
    w, b = make_params(shape[1], torch.float64, device)
    gy = torch.randn(shape, dtype=torch.float64, device=device)
    ours = run_ours(x, w, b, gy)
    ref = run_reference64(x, w, b, gy)
    for name, o, r in zip(NAMES, ours, ref):
        assert_matches_reference(o, r, name=name)


LOWP_SHAPES = [(2, 37, 3, 5), (1, 1100, 2, 3)] + ([(4, 96, 56, 56), (8, 768, 7, 7)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("shape", LOWP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_low_precision_within_twice_pytorch(kernel_backend, device, shape, layout, dtype):
    x = make_input(shape, layout, dtype, device)
    w, b = make_params(shape[1], dtype, device)
    gy = torch.randn(shape, dtype=torch.float64, device=device).to(dtype)
    ours = run_ours(x, w, b, gy)
    ref = run_reference64(x, w, b, gy)
    lowp = run_torch_lowp(x, w, b, gy)
    for name, o, r, t in zip(NAMES, ours, ref, lowp):
        assert o.dtype == dtype
        assert_matches_reference(o, r, t, name=name, atol=lowp_atol(kernel_backend, dtype))


def test_fp16_large_values_do_not_overflow(kernel_backend, device):
    # Values ~300 square to ~9e4 > 65504: squaring in fp16 (the official formula) gives inf.
    shape = (2, 37, 3, 5)
    x = make_input(shape, "channels_last", torch.float16, device, scale=300.0)
    assert torch.isinf(x.pow(2)).any(), "the test input must overflow when squared in fp16"
    w, b = make_params(shape[1], torch.float16, device)
    gy = torch.randn(shape, dtype=torch.float64, device=device).to(torch.float16)
    ours = run_ours(x, w, b, gy)
    ref = run_reference64(x, w, b, gy)
    lowp = run_torch_lowp(x, w, b, gy)
    for name, o, r, t in zip(NAMES, ours, ref, lowp):
        assert_matches_reference(o, r, t, name=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_expanded_stride0_grad(kernel_backend, device, layout):
    # The gradient of y.sum() arrives as an expanded tensor with all strides 0.
    shape = (2, 13, 3, 5)
    x = make_input(shape, layout, torch.float32, device)
    w, b = make_params(shape[1], torch.float32, device)
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    (convnext_fast.layer_norm_2d(xs, ws, bs) * 1.0).sum().backward()
    gy = torch.ones(shape, dtype=torch.float32, device=device)
    ref = run_reference64(x, w, b, gy)
    for name, o, r in zip(NAMES[1:], (xs.grad, ws.grad, bs.grad), ref[1:]):
        assert_matches_reference(o, r, name=name)
    # And directly through the op with a stride-0 tensor.
    gy0 = torch.ones((), dtype=torch.float32, device=device).expand(shape)
    assert gy0.stride() == (0, 0, 0, 0)
    ours = run_ours(x, w, b, gy0)
    for name, o, r in zip(NAMES, ours, ref):
        assert_matches_reference(o, r, name=name)


def test_weight_grads_deterministic(kernel_backend, device):
    shape = (4, 96, 14, 14) if ON_GPU else (3, 37, 5, 7)
    x = make_input(shape, "channels_last", torch.float32, device)
    w, b = make_params(shape[1], torch.float32, device)
    gy = torch.randn(shape, dtype=torch.float32, device=device)
    first = run_ours(x, w, b, gy)
    second = run_ours(x, w, b, gy)
    for name, a, c in zip(NAMES, first, second):
        assert torch.equal(a, c), f"{name} differs between two identical passes"


def test_gradcheck_fp64(kernel_backend, device):
    x = make_input((2, 5, 3, 2), "channels_last", torch.float64, device).requires_grad_()
    w, b = make_params(5, torch.float64, device)
    w.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: convnext_fast.layer_norm_2d(x, w, b), (x, w, b))


def test_empty_batch(kernel_backend, device):
    x = torch.randn(0, 13, 3, 5, device=device, requires_grad=True)
    w, b = make_params(13, torch.float32, device)
    w.requires_grad_()
    y = convnext_fast.layer_norm_2d(x, w, b)
    assert y.shape == (0, 13, 3, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_stats_layout(kernel_backend, device):
    # The Triton launcher's own contract: mean/rstd (N, H, W) contiguous, fp32 for half input,
    # fp64 for fp64, and their values.
    if kernel_backend != "triton":
        pytest.skip("checks the Triton launcher")
    from convnext_fast.kernels.layer_norm import layer_norm_forward

    for dtype, stats in ((torch.bfloat16, torch.float32), (torch.float64, torch.float64)):
        x = make_input((2, 13, 3, 5), "contiguous", dtype, device)
        w, b = make_params(13, dtype, device)
        y, mean, rstd = layer_norm_forward(x, w, b, 1e-6)
        assert mean.shape == rstd.shape == (2, 3, 5) and mean.is_contiguous()
        assert mean.dtype == rstd.dtype == stats
        x64 = x.double()
        torch.testing.assert_close(mean.double(), x64.mean(1), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(x64.var(1, unbiased=False) + 1e-6),
                                   atol=1e-5, rtol=1e-5)
