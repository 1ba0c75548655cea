"""The patch convolution with fused LayerNorms (``convnext_fast.patch_linear``), the stem and
downsampling layers of ``optimize_for_inference``: the op on the compiled CPU kernel
(csrc/cpu_patch_linear.cpp) against float64 PyTorch, the weight fold, the routes that run PyTorch's
ops (bfloat16 on the CPU, gradients, the reference backend), the registered op under opcheck and
torch.compile, and argument errors. The Triton kernel's own tests are in test_patch_linear_kernel.py.

Shapes: the stem (C = 3, k = 4, output norm), downsampling layers (k = 2, input norm) at widths that
are not multiples of 16 (40 -> 80, 13 -> 24) and past one 128-column panel (96 -> 200: two panels),
odd H / W (the trailing row and column ignored, as nn.Conv2d does), and row counts that are not
multiples of the kernel's row blocks; 1 and 2 threads.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast.patch_linear import (fold_norm_into_patch_weight, patch_linear, patch_linear_composite,
                                        patch_linear_fwd, patch_weight)
from conftest import cpu_kernel_unavailable
from convnext_fast.parity import assert_matches_reference


REASON = cpu_kernel_unavailable("patch_linear_forward")
needs_cpu_kernel = pytest.mark.skipif(bool(REASON), reason=f"CPU patch kernel unavailable: {REASON}")

# (N, C, H, W, O, k, input norm, output norm)
CASES = [
    (2, 3, 17, 16, 40, 4, False, True),    # stem: H not a multiple of k
    (2, 3, 8, 8, 96, 4, False, True),
    (3, 40, 7, 9, 80, 2, True, False),     # downsampling: odd H and W
    (2, 13, 6, 6, 24, 2, True, False),
    (2, 96, 10, 10, 200, 2, True, False),  # O = 200: two column panels
    (1, 24, 2, 2, 48, 2, True, True),      # one output pixel, both norms
    (2, 16, 4, 4, 32, 1, False, False),    # k = 1: a plain Linear over channels
    # From 1024 output pixels on, float32 runs the row-block kernel instead of oneDNN's linear.
    (2, 8, 64, 66, 24, 2, True, False),    # downsampling, M = 2112
    (1, 3, 130, 129, 40, 4, False, True),  # stem, M = 1024
]


def _reference64(x, conv_w, conv_b, k, in_eps, out_w, out_b, out_eps):
    """float64 PyTorch: LayerNorm over C without affine, F.conv2d with stride k, LayerNorm over O."""
    x = x.double()
    if in_eps is not None:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=in_eps).permute(0, 3, 1, 2)
    y = F.conv2d(x, conv_w.double(), None if conv_b is None else conv_b.double(), stride=k)
    if out_w is not None:
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), out_w.double(),
                         None if out_b is None else out_b.double(), out_eps).permute(0, 3, 1, 2)
    return y


def _case(n, c, h, w, o, k, in_norm, out_norm, dtype=torch.float32, bias=True):
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + o)
    x = (2 * torch.randn(n, c, h, w, generator=g) + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)
    conv_w = (torch.randn(o, c, k, k, generator=g) / (c * k * k) ** 0.5).to(dtype)
    conv_b = (0.1 * torch.randn(o, generator=g)).to(dtype) if bias else None
    out_w = (1 + 0.2 * torch.randn(o, generator=g)).to(dtype) if out_norm else None
    out_b = (0.1 * torch.randn(o, generator=g)).to(dtype) if out_norm else None
    return x, conv_w, conv_b, (1e-6 if in_norm else None), out_w, out_b


@needs_cpu_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_kernel_matches_float64(case, bias, threads):
    x, conv_w, conv_b, in_eps, out_w, out_b = _case(*case, bias=bias)
    k = case[5]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with convnext_fast.use_backend("cpu"):
            out = patch_linear(x, patch_weight(conv_w), conv_b, k, in_eps=in_eps, out_weight=out_w, out_bias=out_b)
    finally:
        torch.set_num_threads(before)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(out, _reference64(x, conv_w, conv_b, k, in_eps, out_w, out_b, 1e-6), name="patch_linear")


@needs_cpu_kernel
def test_cpu_kernel_takes_any_input_layout_and_output_norm_without_bias():
    x, conv_w, conv_b, in_eps, out_w, _ = _case(*CASES[0])
    out = patch_linear(x.contiguous(), patch_weight(conv_w), conv_b, 4, out_weight=out_w)
    assert_matches_reference(out, _reference64(x, conv_w, conv_b, 4, None, out_w, None, 1e-6))
    sliced = torch.randn(2, 6, 9, 9)[:, ::2]  # non-contiguous channels
    w = torch.randn(8, 3, 3, 3)
    assert_matches_reference(patch_linear(sliced, patch_weight(w), None, 3), _reference64(sliced, w, None, 3, None,
                                                                                          None, None, 1e-6))


@pytest.mark.parametrize("case", CASES[2:4])
def test_fold_of_the_input_norm_affine_is_exact(case):
    """conv(LN(x)) with an affine == conv'(LN0(x)) with the folded weight, in float64."""
    x, conv_w, conv_b, _, _, _ = _case(*case)
    c, k = case[1], case[5]
    ln_w, ln_b = 1 + torch.rand(c), torch.randn(c)
    x64 = x.double()
    normed = F.layer_norm(x64.permute(0, 2, 3, 1), (c,), ln_w.double(), ln_b.double(), 1e-6).permute(0, 3, 1, 2)
    expected = F.conv2d(normed, conv_w.double(), conv_b.double(), stride=k)
    w64, b64 = fold_norm_into_patch_weight(conv_w, conv_b, ln_w, ln_b)
    folded = patch_linear_composite(x64, patch_weight(w64), b64, k, 1e-6, None, None, 1e-6)
    torch.testing.assert_close(folded, expected, rtol=1e-12, atol=1e-12)


@needs_cpu_kernel
@pytest.mark.parametrize("case", CASES)
def test_cpu_kernel_in_bfloat16_within_pytorch_rounding(case):
    """bf16 on the CPU kernel (oneDNN's bf16 GEMM with bf16 dot products, else the float32 kernel on
    widened inputs): within twice the error of PyTorch's own bf16 ops against float64."""
    x, conv_w, conv_b, in_eps, out_w, out_b = _case(*case, dtype=torch.bfloat16)
    k, c, o = case[5], case[1], case[4]
    ref = _reference64(x, conv_w, conv_b, k, in_eps, out_w, out_b, 1e-6)
    u = x if in_eps is None else F.layer_norm(x.permute(0, 2, 3, 1), (c,), eps=in_eps).permute(0, 3, 1, 2)
    torch_own = F.conv2d(u, conv_w, conv_b, stride=k)
    if out_w is not None:
        torch_own = F.layer_norm(torch_own.permute(0, 2, 3, 1), (o,), out_w, out_b, 1e-6).permute(0, 3, 1, 2)
    weight_t = patch_weight(conv_w)
    with convnext_fast.use_backend("cpu"):
        ours = patch_linear(x, weight_t, conv_b, k, in_eps=in_eps, out_weight=out_w, out_bias=out_b)
        # later calls use the weight's packed copy kept from the first: the same bits
        again = patch_linear(x, weight_t, conv_b, k, in_eps=in_eps, out_weight=out_w, out_bias=out_b)
    assert ours.dtype == torch.bfloat16 and ours.is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(ours, ref, torch_own)
    assert torch.equal(ours, again)


def test_gradients_run_pytorch_autograd():
    """A call autograd must record runs the composite: every gradient is PyTorch's (float64 gradcheck)."""
    x, conv_w, conv_b, in_eps, out_w, out_b = (None if t is None or isinstance(t, float) else t.double()
                                                for t in _case(1, 4, 4, 4, 6, 2, True, True))
    wt = patch_weight(conv_w)
    args = [t.requires_grad_() for t in (x, wt, conv_b, out_w, out_b)]
    fn = lambda x, wt, b, ow, ob: patch_linear(x, wt, b, 2, in_eps=1e-6, out_weight=ow, out_bias=ob)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@needs_cpu_kernel
def test_gradient_in_float32_matches_the_composite():
    x, conv_w, conv_b, in_eps, _, _ = _case(*CASES[2])
    x.requires_grad_()
    out = patch_linear(x, patch_weight(conv_w), conv_b, 2, in_eps=in_eps)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    x2 = x.detach().clone().requires_grad_()
    ref = patch_linear_composite(x2, patch_weight(conv_w), conv_b, 2, in_eps, None, None, 1e-6)
    (gx_ref,) = torch.autograd.grad(ref.square().sum(), x2)
    torch.testing.assert_close(gx, gx_ref)


@needs_cpu_kernel
def test_registered_op_opcheck_and_compile_fullgraph():
    x, conv_w, conv_b, in_eps, out_w, out_b = _case(*CASES[5])
    wt = patch_weight(conv_w)
    torch.library.opcheck(patch_linear_fwd, (x, wt, conv_b, 2, in_eps, out_w, out_b, 1e-6, "cpu"))
    fn = torch.compile(lambda x: patch_linear(x, wt, conv_b, 2, in_eps=in_eps, out_weight=out_w, out_bias=out_b),
                       fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_matches_reference(fn(x), _reference64(x, conv_w, conv_b, 2, in_eps, out_w, out_b, 1e-6))


def test_reference_backend_and_float64():
    x, conv_w, conv_b, in_eps, out_w, out_b = _case(*CASES[5], dtype=torch.float64)
    expected = _reference64(x, conv_w, conv_b, 2, in_eps, out_w, out_b, 1e-6)
    with convnext_fast.use_backend("reference"):
        torch.testing.assert_close(patch_linear(x.float(), patch_weight(conv_w.float()), conv_b.float(), 2,
                                                in_eps=in_eps, out_weight=out_w.float(), out_bias=out_b.float()),
                                   expected.float(), rtol=1e-5, atol=1e-5)
    out = patch_linear(x, patch_weight(conv_w), conv_b, 2, in_eps=in_eps, out_weight=out_w, out_bias=out_b)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_triton_output_norm_wider_than_its_kernel_runs_pytorch():
    """The Triton kernel's output LayerNorm serves O <= 512; a wider one takes the composite."""
    if convnext_fast.available_backends("cpu")["triton"]:
        pytest.skip("the triton backend cannot run on CPU tensors here")
    x, conv_w, conv_b, _, out_w, out_b = _case(1, 3, 4, 4, 520, 4, False, True)
    with convnext_fast.use_backend("triton"):
        out = patch_linear(x, patch_weight(conv_w), conv_b, 4, out_weight=out_w, out_bias=out_b)
    assert_matches_reference(out, _reference64(x, conv_w, conv_b, 4, None, out_w, out_b, 1e-6))


def test_a_backend_without_the_kernel_asked_by_name_says_so():
    x, conv_w, conv_b, *_ = _case(*CASES[3])
    with convnext_fast.use_backend("cuda"):
        with pytest.raises(convnext_fast.BackendUnavailableError, match="cuda"):
            patch_linear(x, patch_weight(conv_w), conv_b, 2)


def test_argument_errors():
    x = torch.randn(2, 8, 6, 6)
    wt = torch.randn(32, 16)
    with pytest.raises(ValueError, match=r"weight_t of shape \(k\*k\*C, O\) = \(32, O\)"):
        patch_linear(x, torch.randn(30, 16), None, 2)
    with pytest.raises(ValueError, match="patch size k"):
        patch_linear(x, wt, None, 0)
    with pytest.raises(ValueError, match="at least k x k"):
        patch_linear(x, torch.randn(8 * 49, 16), None, 7)
    with pytest.raises(ValueError, match=r"bias of shape \(16,\)"):
        patch_linear(x, wt, torch.randn(15), 2)
    with pytest.raises(ValueError, match="out_bias without out_weight"):
        patch_linear(x, wt, None, 2, out_bias=torch.randn(16))
    with pytest.raises(ValueError, match="in_eps"):
        patch_linear(x, wt, None, 2, in_eps=0.0)
    with pytest.raises(TypeError, match="dtype of x"):
        patch_linear(x, wt.double(), None, 2)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 and float64"):
        patch_linear(x.int(), wt, None, 2)


@needs_cpu_kernel
def test_empty_batch_and_channels():
    x = torch.randn(0, 8, 4, 4)
    assert patch_linear(x, torch.randn(32, 16), None, 2, in_eps=1e-6).shape == (0, 16, 2, 2)
