"""Parity of the fused depthwise conv + LayerNorm (``convnext_fast.dwconv_layer_norm``) with ``reference.py``.

Forward and the gradients of x, the depthwise weight and bias and the LayerNorm weight and bias,
against the float64 reference: kernel sizes 3..31, H or W smaller than K, C = 1, C not a multiple
of any block size, C above one register tile (the chunk loop), every memory layout, no conv bias,
expanded stride-0 gradients, fp16/bf16 under the 2x-PyTorch rule, determinism, gradcheck, N = 0,
and that autograd keeps no conv-output-sized activation besides x.
"""

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast import reference
from convnext_fast.parity import assert_matches_reference, lowp_atol
from conftest import ON_GPU, kernel_backends



# (N, C, H, W, K, conv bias). C = 1100 > 1024 runs the chunked path; 2x3 / 3x2 maps are smaller than K.
CPU_CASES = [
    (2, 13, 5, 6, 3, True),
    (1, 16, 4, 5, 3, True),  # C a multiple of 16: the CPU kernels' in-place fp32 rows
    (1, 1, 3, 2, 5, True),
    (1, 37, 4, 3, 7, False),
    (1, 1100, 2, 3, 3, True),
    (1, 3, 2, 3, 31, True),
]
GPU_CASES = CPU_CASES + [
    (4, 96, 56, 56, 7, True),
    (3, 192, 29, 31, 7, True),
    (8, 768, 7, 7, 7, True),
    (2, 1408, 14, 14, 7, True),
    (2, 2816, 7, 7, 7, True),
    (2, 64, 17, 23, 31, True),
    (2, 40, 9, 11, 5, False),
]
CASES = GPU_CASES if ON_GPU else CPU_CASES
LAYOUTS = ["contiguous", "channels_last", "sliced"]
NAMES = ("y", "grad_x", "grad_dw_weight", "grad_dw_bias", "grad_ln_weight", "grad_ln_bias")


def make_input(shape, layout, dtype, device, scale=1.0):
    """An (N, C, H, W) tensor of the given logical shape in the given memory layout."""
    n, c, h, w = shape
    if layout == "sliced":
        base = torch.randn(n, c + 3, h, 2 * w, dtype=torch.float64, device=device) * scale
        return base.to(dtype)[:, 2:c + 2, :, ::2]
    x = (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def case_id(case):
    n, c, h, w, k, bias = case
    return f"{n}x{c}x{h}x{w}-k{k}" + ("" if bias else "-nobias")


def make_params(c, k, bias, dtype, device):
    dw = (torch.randn(c, 1, k, k, dtype=torch.float64, device=device) / k).to(dtype)
    db = (0.2 * torch.randn(c, dtype=torch.float64, device=device)).to(dtype) if bias else None
    lw = (1.0 + 0.5 * torch.randn(c, dtype=torch.float64, device=device)).to(dtype)
    lb = (0.5 * torch.randn(c, dtype=torch.float64, device=device)).to(dtype)
    return dw, db, lw, lb


def _grads(fn, x, dw, db, lw, lb, grad_y, cast=None):
    leaves = [None if t is None else (t.detach().to(cast) if cast else t.detach().clone()).requires_grad_()
              for t in (x, dw, db, lw, lb)]
    y = fn(*leaves)
    y.backward(grad_y.to(cast) if cast else grad_y)
    return (y.detach(), *[None if t is None else t.grad for t in leaves])


def run_ours(x, dw, db, lw, lb, grad_y):
    return _grads(lambda *a: convnext_fast.dwconv_layer_norm(*a, 1e-6), x, dw, db, lw, lb, grad_y)


def run_reference64(x, dw, db, lw, lb, grad_y):
    return _grads(lambda *a: reference.dwconv_layer_norm(*a, 1e-6), x, dw, db, lw, lb, grad_y, cast=torch.float64)


def run_torch_lowp(x, dw, db, lw, lb, grad_y):
    """PyTorch's own computation in x's dtype: F.conv2d(groups=C), then F.layer_norm on the NHWC permutation."""
    def fn(x, dw, db, lw, lb):
        z = F.conv2d(x, dw, db, padding=dw.shape[-1] // 2, groups=x.shape[1])
        return F.layer_norm(z.permute(0, 2, 3, 1), (x.shape[1],), lw, lb, 1e-6).permute(0, 3, 1, 2)
    return _grads(fn, x, dw, db, lw, lb, grad_y)


def check_all(ours, ref, lowp=None, reduce_atol=None, lowp_atol=None):
    for i, (name, o, r) in enumerate(zip(NAMES, ours, ref)):
        if r is None:
            assert o is None, f"{name}: expected no gradient"
            continue
        atol = reduce_atol if (reduce_atol is not None and i >= 2) else lowp_atol
        assert_matches_reference(o, r, None if lowp is None else lowp[i], name=name, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_fp32(kernel_backend, device, case, layout):
    n, c, h, w, k, bias = case
    x = make_input((n, c, h, w), layout, torch.float32, device)
    params = make_params(c, k, bias, torch.float32, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float32, device=device)
    ours = run_ours(x, *params, gy)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    # Parameter gradients are sums over N*H*W terms: an absolute tolerance that grows with it.
    check_all(ours, run_reference64(x, *params, gy), reduce_atol=1e-5 * max(1.0, (n * h * w) ** 0.5))


@pytest.mark.parametrize("case", [(2, 13, 5, 6, 3, True), (1, 600, 2, 3, 3, False)], ids=case_id)
def test_matches_reference_fp64(kernel_backend, device, case):
    # fp64 uses a 512-channel tile, so C = 600 runs the chunked path in fp64.
    n, c, h, w, k, bias = case
    x = make_input((n, c, h, w), "channels_last", torch.float64, device)
    params = make_params(c, k, bias, torch.float64, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float64, device=device)
    check_all(run_ours(x, *params, gy), run_reference64(x, *params, gy))


LOWP_CASES = [(2, 37, 4, 5, 7, True), (1, 1100, 2, 3, 3, True)] + (
    [(4, 96, 56, 56, 7, True), (8, 768, 7, 7, 7, True)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", LOWP_CASES, ids=case_id)
def test_low_precision_within_twice_pytorch(kernel_backend, device, case, dtype):
    n, c, h, w, k, bias = case
    x = make_input((n, c, h, w), "channels_last", dtype, device)
    params = make_params(c, k, bias, dtype, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float64, device=device).to(dtype)
    ours = run_ours(x, *params, gy)
    assert all(o is None or o.dtype == dtype for o in ours)
    check_all(ours, run_reference64(x, *params, gy), run_torch_lowp(x, *params, gy),
              lowp_atol=lowp_atol(kernel_backend, dtype))


def test_fp16_large_values(kernel_backend, device):
    # Conv outputs of magnitude ~1e3 square to ~1e6: far beyond fp16's 65504.
    n, c, h, w, k = 1, 13, 4, 5, 3
    x = make_input((n, c, h, w), "channels_last", torch.float16, device, scale=300.0)
    params = make_params(c, k, True, torch.float16, device)
    z = F.conv2d(x.double(), params[0].double(), params[1].double(), padding=k // 2, groups=c)
    assert (z.abs() > 256).any(), "the conv output must overflow when squared in fp16"
    gy = torch.randn((n, c, h, w), dtype=torch.float64, device=device).to(torch.float16)
    ours = run_ours(x, *params, gy)
    check_all(ours, run_reference64(x, *params, gy), run_torch_lowp(x, *params, gy))


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_expanded_stride0_grad(kernel_backend, device, layout):
    n, c, h, w, k = 2, 13, 4, 5, 3
    x = make_input((n, c, h, w), layout, torch.float32, device)
    params = make_params(c, k, True, torch.float32, device)
    gy0 = torch.ones((), dtype=torch.float32, device=device).expand(n, c, h, w)
    assert gy0.stride() == (0, 0, 0, 0)
    ours = run_ours(x, *params, gy0)
    check_all(ours, run_reference64(x, *params, gy0.contiguous()))
    # The same through y.sum(), whose gradient autograd itself expands.
    leaves = [t.detach().clone().requires_grad_() for t in (x, *params)]
    convnext_fast.dwconv_layer_norm(*leaves).sum().backward()
    for name, o, leaf in zip(NAMES[1:], ours[1:], leaves):
        torch.testing.assert_close(leaf.grad, o, msg=lambda m: f"{name}: {m}")


def test_weight_grads_deterministic(kernel_backend, device):
    n, c, h, w, k = (4, 96, 14, 14, 7) if ON_GPU else (2, 37, 5, 6, 3)
    x = make_input((n, c, h, w), "channels_last", torch.float32, device)
    params = make_params(c, k, True, torch.float32, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float32, device=device)
    first, second = run_ours(x, *params, gy), run_ours(x, *params, gy)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two identical passes"


def test_gradcheck_fp64(kernel_backend, device):
    x = make_input((1, 3, 3, 4), "channels_last", torch.float64, device).requires_grad_()
    params = [p.requires_grad_() for p in make_params(3, 3, True, torch.float64, device)]
    assert torch.autograd.gradcheck(lambda *a: convnext_fast.dwconv_layer_norm(*a), (x, *params))


def test_empty_batch(kernel_backend, device):
    x = torch.randn(0, 13, 4, 5, device=device, requires_grad=True)
    params = [p.requires_grad_() for p in make_params(13, 3, True, torch.float32, device)]
    y = convnext_fast.dwconv_layer_norm(x, *params)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in params:
        assert torch.equal(p.grad, torch.zeros_like(p))


def _saved_sizes(fn, *args):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sizes


def test_saves_no_conv_output(kernel_backend, device):
    # The backward recomputes the conv output from x: the only saved tensor of x's size is x itself.
    n, c, h, w, k = 2, 13, 4, 5, 3
    x = make_input((n, c, h, w), "channels_last", torch.float32, device).requires_grad_()
    params = [p.requires_grad_() for p in make_params(c, k, True, torch.float32, device)]
    ours = _saved_sizes(convnext_fast.dwconv_layer_norm, x, *params)
    assert sum(s == x.numel() for s in ours) == 1, f"saved tensor sizes {ours}; x has {x.numel()} elements"
    # The unfused composition saves the conv output too, so the check can tell them apart.
    unfused = _saved_sizes(lambda x, dw, db, lw, lb: convnext_fast.layer_norm_2d(
        convnext_fast.depthwise_conv2d(x, dw, db), lw, lb), x, *params)
    assert sum(s == x.numel() for s in unfused) >= 2, f"saved tensor sizes {unfused}"


@pytest.mark.parametrize("case", [(2, 37, 5, 6, 7, True), (1, 3, 4, 5, 9, False), (1, 1100, 2, 3, 3, True)],
                         ids=case_id)
def test_triton_backward_with_several_tiles_per_program(device, monkeypatch, case):
    """The Triton backward kernels loop over tiles pid, pid + G, ... with G <= 1024 programs; test
    shapes are small enough that every program gets one tile. Forcing G = 3 runs the loop, the
    partial buffer with several tiles per row, and the empty slots past the last tile (the px
    kernel for K <= 7, the tile kernel for K = 9 and for C > 1024)."""
    if "triton" not in kernel_backends():
        pytest.skip("triton backend unavailable here")
    from convnext_fast.kernels import dwconv_layer_norm as fused_kernels
    from convnext_fast.kernels import layer_norm as ln_kernels

    monkeypatch.setattr(fused_kernels, "num_partials", lambda n: min(n, 3))
    monkeypatch.setattr(ln_kernels, "num_partials", lambda n: min(n, 3))
    n, c, h, w, k, bias = case
    x = make_input((n, c, h, w), "channels_last", torch.float32, device)
    params = make_params(c, k, bias, torch.float32, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float32, device=device)
    with convnext_fast.use_backend("triton"):
        ours = run_ours(x, *params, gy)
        ln_ours = _grads(lambda x, dw, db, lw, lb: convnext_fast.layer_norm_2d(x, lw, lb), x, *params, gy)
    check_all(ours, run_reference64(x, *params, gy), reduce_atol=1e-5 * max(1.0, (n * h * w) ** 0.5))
    ln_ref = _grads(lambda x, dw, db, lw, lb: reference.layer_norm_2d(x, lw, lb, 1e-6), x, *params, gy,
                    cast=torch.float64)
    for name, o, r in zip(("y", "grad_x", "grad_ln_weight", "grad_ln_bias"), (ln_ours[0], ln_ours[1], *ln_ours[4:]),
                          (ln_ref[0], ln_ref[1], *ln_ref[4:])):
        assert_matches_reference(o, r, name=name, atol=1e-5 * max(1.0, (n * h * w) ** 0.5))


@pytest.mark.parametrize("case", [(2, 37, 5, 6, 7, True), (1, 13, 4, 7, 5, False)], ids=case_id)
def test_triton_px_kernels_ignore_the_weight_padding(device, monkeypatch, case):
    """The px kernels load BLOCK_C weights per tap from a (K*K, BLOCK_C) buffer whose columns past C
    are left uninitialized (one copy kernel instead of zero fill + copy); lanes past C must stay out
    of every channel sum. Filling those columns with NaN must change nothing."""
    if "triton" not in kernel_backends():
        pytest.skip("triton backend unavailable here")
    from convnext_fast.kernels import dwconv_layer_norm as fused_kernels

    n, c, h, w, k, bias = case
    assert fused_kernels.fused_px_config(c, w, k, torch.float32) is not None  # the px path runs
    tap_major = fused_kernels._tap_major

    def nan_padded(dw_weight, block_c=0):
        out = tap_major(dw_weight, block_c)
        out[:, dw_weight.shape[0]:] = float("nan")
        return out

    monkeypatch.setattr(fused_kernels, "_tap_major", nan_padded)
    x = make_input((n, c, h, w), "channels_last", torch.float32, device)
    params = make_params(c, k, bias, torch.float32, device)
    gy = torch.randn((n, c, h, w), dtype=torch.float32, device=device)
    with convnext_fast.use_backend("triton"):
        ours = run_ours(x, *params, gy)
    check_all(ours, run_reference64(x, *params, gy), reduce_atol=1e-5 * max(1.0, (n * h * w) ** 0.5))
