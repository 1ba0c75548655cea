"""Parity of ``convnext_fast.depthwise_conv2d`` (forward, grad_x, grad_w, grad_b) with the float64
reference, on every kernel backend that can run here (the Triton kernels through the interpreter on
CPU). CPU shapes are tiny (the interpreter is slow); on a GPU the same tests take bigger shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from conftest import ON_GPU
from convnext_fast import reference
from convnext_fast.parity import assert_matches_reference, lowp_atol


def _make_x(shape, dtype, device, layout):
    """An (N, C, H, W) input of the given shape in one of the memory layouts the op must accept."""
    n, c, h, w = shape
    if layout == "contiguous":
        return torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        return torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    if layout == "sliced_cl":  # a channels_last view with gaps in C, H and W (channel stride 1)
        big = torch.randn((n, c + 3, h + 2, 2 * w), dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
        return big[:, 2:2 + c, 1:1 + h, ::2]
    if layout == "sliced_nchw":  # an NCHW view with gaps (neither contiguous nor channels_last)
        big = torch.randn((n, 2 * c, h + 1, w + 3), dtype=dtype, device=device)
        return big[:, ::2, 1:, 3:]
    raise ValueError(layout)


def _ours(x, w, b, grad_y=None):
    """Forward and gradients through the public API (the backend chosen by the fixture)."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = convnext_fast.depthwise_conv2d(x, w, b)
    if grad_y is None:
        y.sum().backward()  # the incoming gradient is an expanded stride-0 tensor
    else:
        y.backward(grad_y)
    return y, x.grad, w.grad, (None if b is None else b.grad)


def _reference64(x, w, b, grad_y=None):
    """The float64 reference forward and gradients (PyTorch's conv2d with autograd)."""
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    b = None if b is None else b.detach().double().requires_grad_()
    y = reference.depthwise_conv2d(x, w, b)
    y.backward(torch.ones_like(y) if grad_y is None else grad_y.double())
    return y, x.grad, w.grad, (None if b is None else b.grad)


def _torch_lowp(x, w, b, grad_y):
    """PyTorch's own result in the low-precision dtype on the same device (the 2x rule's yardstick)."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])
    y.backward(grad_y)
    return y, x.grad, w.grad, (None if b is None else b.grad)


def _check_all(ours, ref, lowp=None, atol=None):
    """y and grad_x with ``atol``; grad_w and grad_b, sums of N*H*W products, in fp32 with an
    absolute tolerance scaled by sqrt(N*H*W) (random rounding errors add up like a random walk;
    the same rule as the LayerNorm tests). On the GPU a 4x96x28x28 grad_w carries 1.7e-5 absolute
    error in its near-zero elements, over the flat 1e-5."""
    n, _, h, w = ref[0].shape
    reduce_atol = 1e-5 * max(1.0, (n * h * w) ** 0.5) if ours[0].dtype == torch.float32 else atol
    names = ("y", "grad_x", "grad_w", "grad_b")
    for i, name in enumerate(names):
        if ref[i] is None:
            assert ours[i] is None, f"{name}: expected None"
            continue
        assert_matches_reference(ours[i], ref[i], None if lowp is None else lowp[i], name=name,
                                 atol=reduce_atol if i >= 2 else atol)


# (N, C, H, W), K, bias, layout. Chosen to cover: odd/prime sizes, C = 1, C not a multiple of any
# block size (13, 37), H or W smaller than K, every kernel size the task names, no bias, and the
# layouts above. CPU shapes stay tiny; GPU shapes are a real-ish ConvNeXt size plus the same corners.
_CPU_CASES = [
    ((2, 5, 6, 7), 3, True, "channels_last"),
    ((1, 13, 5, 4), 7, False, "contiguous"),  # H, W < K
    ((2, 3, 9, 11), 5, True, "sliced_cl"),
    ((1, 37, 3, 5), 3, True, "sliced_nchw"),
    ((2, 1, 5, 5), 3, True, "channels_last"),  # C = 1
    ((1, 3, 5, 6), 9, True, "channels_last"),
    ((1, 2, 4, 7), 11, False, "channels_last"),
    ((1, 2, 3, 3), 31, True, "channels_last"),  # K = 31, H = W = 3
]
_GPU_CASES = [
    ((4, 96, 28, 28), 7, True, "channels_last"),
    ((4, 96, 28, 28), 7, True, "contiguous"),
    ((3, 37, 13, 17), 7, False, "sliced_cl"),
    ((2, 13, 11, 9), 5, True, "sliced_nchw"),
    ((2, 1, 19, 23), 3, True, "channels_last"),
    ((2, 768, 7, 7), 7, True, "channels_last"),
    ((2, 40, 9, 13), 9, True, "channels_last"),
    ((2, 24, 15, 6), 11, False, "channels_last"),
    ((2, 16, 33, 40), 31, True, "channels_last"),
    ((1, 8, 5, 4), 31, True, "contiguous"),  # H, W < K
]
_CASES = _GPU_CASES if ON_GPU else _CPU_CASES


@pytest.mark.parametrize("shape,k,bias,layout", _CASES, ids=[f"{s}-k{k}-{'b' if b else 'nob'}-{l}"
                                                             for s, k, b, l in _CASES])
def test_parity_fp32(kernel_backend, device, shape, k, bias, layout):
    x = _make_x(shape, torch.float32, device, layout)
    w = torch.randn((shape[1], 1, k, k), device=device) / k
    b = torch.randn(shape[1], device=device) if bias else None
    grad_y = torch.randn(shape, device=device)
    ours = _ours(x, w, b, grad_y)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert ours[2].is_contiguous() and ours[2].shape == w.shape
    _check_all(ours, _reference64(x, w, b, grad_y))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_expanded_stride0_grad(kernel_backend, device, layout):
    """y.sum().backward(): the incoming gradient is an expanded tensor with all strides 0."""
    shape, k = ((4, 96, 28, 28), 7) if ON_GPU else ((2, 5, 6, 7), 3)
    x = _make_x(shape, torch.float32, device, layout)
    w = torch.randn((shape[1], 1, k, k), device=device) / k
    b = torch.randn(shape[1], device=device)
    _check_all(_ours(x, w, b), _reference64(x, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_against_torch(kernel_backend, device, dtype):
    """fp16 / bf16: our error against float64 is at most 2x PyTorch's own error in that dtype."""
    cases = [((4, 96, 28, 28), 7), ((2, 37, 9, 13), 5)] if ON_GPU else [((2, 8, 5, 6), 7), ((1, 13, 4, 5), 3)]
    for shape, k in cases:
        x = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn((shape[1], 1, k, k), device=device) / k).to(dtype)
        b = torch.randn(shape[1], device=device).to(dtype)
        grad_y = torch.randn(shape, device=device).to(dtype)
        ours = _ours(x, w, b, grad_y)
        assert all(t.dtype == dtype for t in ours)
        # lowp_atol: the interpreter rounds fp32 -> bf16 by truncation (see convnext_fast.parity.lowp_atol).
        _check_all(ours, _reference64(x, w, b, grad_y), _torch_lowp(x, w, b, grad_y),
                   atol=lowp_atol(kernel_backend, dtype))


def test_weight_grad_deterministic(kernel_backend, device):
    """Two backward passes give bitwise-equal weight and bias gradients (no atomics)."""
    shape, k = ((8, 96, 28, 28), 7) if ON_GPU else ((2, 5, 9, 7), 5)
    x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn((shape[1], 1, k, k), device=device) / k
    b = torch.randn(shape[1], device=device)
    grad_y = torch.randn(shape, device=device)
    _, _, gw1, gb1 = _ours(x, w, b, grad_y)
    _, _, gw2, gb2 = _ours(x, w, b, grad_y)
    assert torch.equal(gw1, gw2) and torch.equal(gb1, gb2)


def test_fp64_matches_reference(kernel_backend, device):
    """float64 runs with float64 accumulation (what gradcheck relies on): matches to ~1e-10."""
    shape, k = ((2, 24, 13, 11), 7) if ON_GPU else ((1, 3, 5, 4), 5)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    w = torch.randn((shape[1], 1, k, k), dtype=torch.float64, device=device)
    b = torch.randn(shape[1], dtype=torch.float64, device=device)
    grad_y = torch.randn(shape, dtype=torch.float64, device=device)
    _check_all(_ours(x, w, b, grad_y), _reference64(x, w, b, grad_y))


def test_gradcheck(kernel_backend, device):
    shape, k = (1, 2, 3, 4), 3
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn((shape[1], 1, k, k), dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(convnext_fast.depthwise_conv2d, (x, w, b), fast_mode=True)


def test_empty_batch(kernel_backend, device):
    x = torch.randn((0, 4, 5, 6), device=device, requires_grad=True)
    w = torch.randn((4, 1, 3, 3), device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = convnext_fast.depthwise_conv2d(x, w, b)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("shape,k", [((2, 40, 9, 11), 7), ((1, 37, 5, 14), 5), ((1, 100, 3, 14), 5)])
def test_triton_px_kernel_ignores_the_weight_padding(device, monkeypatch, shape, k):
    """The px forward (also the input gradient) reads weights in blocks of BLOCK_C channels whose
    lanes past C are left uninitialized; those lanes' outputs must never be stored. Filling them
    with NaN must change nothing (C = 40, 37 and 100 are not multiples of the px kernel's BLOCK_C;
    100 = one full block of 64 and a partial one)."""
    from conftest import kernel_backends
    from convnext_fast.kernels import depthwise_conv as dw_kernels

    if "triton" not in kernel_backends():
        pytest.skip("triton backend unavailable here")
    px = dw_kernels._px_config(shape[1], shape[3], k, torch.float32)
    assert px is not None and shape[1] % px[2] != 0  # the px path runs with a partial channel block
    blocked_taps = dw_kernels._blocked_taps

    def nan_padded(weight, flip, block_c):
        out = blocked_taps(weight, flip, block_c)
        c = weight.shape[0]
        out[c // block_c, :, c % block_c:] = float("nan")
        return out

    monkeypatch.setattr(dw_kernels, "_blocked_taps", nan_padded)
    x = _make_x(shape, torch.float32, device, "channels_last")
    w = torch.randn((shape[1], 1, k, k), device=device) / k
    b = torch.randn(shape[1], device=device)
    gy = torch.randn(shape, device=device)
    with convnext_fast.use_backend("triton"):
        ours = _ours(x, w, b, gy)
    _check_all(ours, _reference64(x, w, b, gy), atol=1e-5)
