"""The patch-convolution inference kernel (``kernels/patch_linear.py``: ConvNeXt's
stem and downsampling layers, a k x k stride-k conv with an optional LayerNorm over C of its input
pixels and an optional LayerNorm over O of its outputs) against the float64 evaluation of the same
math: ``F.layer_norm`` over C on the NHWC view (no affine), ``F.conv2d`` with stride k and the weight
rebuilt from weight_t, ``F.layer_norm`` over O with affine.

Shapes on purpose: H or W odd (the trailing row / column is dropped, as nn.Conv2d), C not a power
of two (40, 48, 80) and C = 3 (the stem: the flat reduction over the 48 patch values), with and
without every bias; forced small tiles so that pixel tiles cross image rows and images, the
statistics and the dot run over several channel chunks (the last partial), and the output in
several slices (the last partial); inputs whose mean dwarfs their spread (the statistics) and
constant pixels in fp16 (the channel padding after the normalization); layouts, empty batches and
the error cases. fp32 within 1e-5; fp16 within 2x PyTorch's own fp16 error plus a small atol. On
a machine without a GPU the kernel runs in Triton's interpreter, where ``tl.dot`` on bf16 is wrong
(triton-lang/triton#11584): bf16 is tested on a GPU only.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from convnext_fast.kernels import patch_linear as P  # noqa: E402
from convnext_fast.parity import assert_matches_reference, max_abs_err  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if ON_GPU else "cpu")
IN_EPS, OUT_EPS = 1e-6, 1e-6
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])

# (N, C, H, W, k, O, in_norm, bias, out_norm, out_bias)
CASES = [
    (2, 40, 5, 6, 2, 80, True, True, False, False),    # downsample, atto width; odd H; C <= BLOCK_K in 16-bit
    (2, 48, 4, 5, 2, 96, True, False, False, False),   # no bias; odd W
    (1, 80, 5, 4, 2, 160, True, True, False, False),   # 16-bit: 3 channel chunks of 32 (last 16), BLOCK_N 256
    (2, 3, 9, 8, 4, 40, False, True, True, True),      # stem: 48 patch values, output LayerNorm with affine
    (1, 3, 8, 11, 4, 96, False, False, True, False),   # stem without biases
    (1, 16, 6, 4, 2, 40, False, True, False, False),   # plain patch conv (no LayerNorm), C >= 16
    (2, 8, 7, 6, 3, 16, True, True, True, True),       # k = 3, both LayerNorms, C = 8 padded to a chunk of 16
    (1, 192, 4, 5, 2, 384, True, True, False, False),  # ConvNeXt-T 2 -> 3: 3 chunks of 64, 2 slices of 256 (16-bit)
    (1, 3, 8, 9, 4, 352, False, True, True, True),     # V2-huge stem: BLOCK_N 512
]
GPU_CASES = [
    (8, 96, 56, 56, 2, 192, True, True, False, False),
    (4, 384, 14, 15, 2, 768, True, True, False, False),
    (2, 1408, 14, 14, 2, 2816, True, True, False, False),
    (4, 3, 224, 224, 4, 96, False, True, True, True),
    (2, 3, 227, 225, 4, 352, False, True, True, True),
]


def case_id(case):
    n, c, h, w, k, o, inn, b, on, ob = case
    return (f"{n}x{c}x{h}x{w}-k{k}-O{o}" + ("-inln" if inn else "") + ("" if b else "-nobias")
            + ("-outln" if on else "") + ("-noob" if on and not ob else ""))


def make_layer(n, c, h, w, k, o, in_norm, bias, out_norm, out_bias, seed=0):
    """float64 input and parameters with O(1) outputs (fan-in scaled weights)."""
    g = torch.Generator().manual_seed(seed + 31 * c + o + k)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift

    return {"x": rnd(n, c, h, w, shift=0.5), "weight_t": rnd(k * k * c, o, scale=(k * k * c) ** -0.5),
            "bias": rnd(o, scale=0.5) if bias else None, "k": k, "in_eps": IN_EPS if in_norm else None,
            "out_weight": rnd(o, scale=0.5, shift=1.0) if out_norm else None,
            "out_bias": rnd(o, scale=0.5) if out_norm and out_bias else None, "out_eps": OUT_EPS}


def reference(p, dtype=torch.float64):
    """The layer's math in ``dtype`` with PyTorch's ops."""
    t = {key: v.to(DEV, dtype) if isinstance(v, torch.Tensor) else v for key, v in p.items()}
    x, k = t["x"], t["k"]
    c, o = x.shape[1], t["weight_t"].shape[1]
    if t["in_eps"] is not None:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (c,), eps=t["in_eps"]).permute(0, 3, 1, 2)
    weight = t["weight_t"].reshape(k, k, c, o).permute(3, 2, 0, 1)
    y = F.conv2d(x, weight, t["bias"], stride=k)
    if t["out_weight"] is not None:
        y = F.layer_norm(y.permute(0, 2, 3, 1), (o,), t["out_weight"], t["out_bias"], eps=t["out_eps"])
        y = y.permute(0, 3, 1, 2)
    return y


def kernel_args(p, dtype):
    a = {key: v.to(DEV, dtype) if isinstance(v, torch.Tensor) else v for key, v in p.items()}
    a["x"] = a["x"].contiguous(memory_format=torch.channels_last)
    return a


def run(p, dtype, cfg=None):
    a = kernel_args(p, dtype)
    args = (a["x"], a["weight_t"], a["bias"], a["k"], a["in_eps"], a["out_weight"], a["out_bias"], a["out_eps"])
    if cfg is None:
        return P.patch_linear_forward(*args)
    return P._launch(*args, cfg)


def check(out, p, dtype):
    n, _, h, w = p["x"].shape
    k, o = p["k"], p["weight_t"].shape[1]
    assert out.dtype == dtype and out.shape == (n, o, h // k, w // k)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref64 = reference(p)
    lowp = None if dtype == torch.float32 else reference(p, dtype)
    # atol 2e-4 of max |ref| (default 1e-3): PyTorch's own fp16 error is ~4e-4 of it at these sizes.
    assert_matches_reference(out, ref64, lowp, name=f"patch_linear {dtype}", atol=None if lowp is None else 2e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES + CASES if ON_GPU else CASES, ids=case_id)
def test_matches_reference(case, dtype):
    p = make_layer(*case)
    check(run(p, dtype), p, dtype)


# Forced small tiles (FLAT, SINGLE, BLOCK_M, BLOCK_K, BLOCK_N, warps, stages): 16-pixel tiles (crossing
# rows and images), channel chunks of 16 (C = 40: 3 chunks, the last with 8 valid; the statistics
# merge them), output slices of 32 (O = 80: 3 slices, the last with 16 valid).
SMALL_TILES = [
    ((2, 40, 5, 9, 2, 80, True, True, False, False), (False, False, 16, 16, 32, 4, 1)),
    ((2, 48, 4, 7, 2, 80, False, True, False, False), (False, False, 16, 16, 32, 4, 1)),
    ((1, 40, 6, 6, 2, 40, True, True, True, True), (False, False, 16, 16, 64, 4, 1)),   # out LN: one slice
    ((2, 3, 8, 13, 4, 40, False, True, True, True), (True, False, 16, 16, 64, 4, 1)),   # stem, 3 flat chunks
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case, cfg", SMALL_TILES, ids=lambda v: case_id(v) if len(v) == 10 else None)
def test_small_tiles(case, cfg, dtype):
    p = make_layer(*case)
    check(run(p, dtype, cfg), p, dtype)


def test_statistics_of_offset_inputs():
    """Input pixels with |mean| >> std (mean 300, std 1): the per-chunk two-pass statistics merged
    with Chan's formula stay as accurate as PyTorch's own fp32 LayerNorm + conv (x - mean itself
    carries fp32's rounding of 300, ~1.5e-5), where E[x^2] - E[x]^2 in fp32 would be ~1000x worse
    (an error of ~5e-2 in the normalized values, measured)."""
    p = make_layer(2, 80, 4, 6, 2, 40, True, True, False, False)
    p["x"] = (p["x"] + 300.0).float().double()  # the fp32 inputs exactly: the reference sees what the kernel reads
    ref64 = reference(p)
    torch_err = max_abs_err(reference(p, torch.float32), ref64)
    for cfg in (None, (False, False, 16, 16, 64, 4, 1)):  # 5 channel chunks of 16
        ours_err = max_abs_err(run(p, torch.float32, cfg), ref64)
        assert ours_err <= 2 * torch_err, f"max error {ours_err:.2e} > 2 x PyTorch's fp32 {torch_err:.2e}"


@pytest.mark.parametrize("cfg", [None, (False, False, 16, 16, 32, 4, 1)], ids=["default", "chunks16"])
def test_constant_pixels_fp16(cfg):
    """Pixels whose C channels all equal 100: u = 0 there (var 0, rstd = 1/sqrt(eps) = 1000), so
    the output is the bias. The channel padding of a chunk (C = 40: 24 or 8 padded lanes) must be
    zeroed after the normalization, not only loaded as 0: (0 - 100) * 1000 rounds to -inf in fp16,
    and -inf times the padding's zero weights would make the pixel NaN."""
    p = make_layer(1, 40, 4, 6, 2, 80, True, True, False, False)
    p["x"][:, :, :2, :] = 100.0  # the first row of output pixels sees constant input pixels only
    out = run(p, torch.float16, cfg)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, 0, :], p["bias"].half()[None, :, None].expand(1, 80, 3))
    check(out, p, torch.float16)


def test_layouts_and_empty_batch():
    """An NCHW-contiguous (and a non-contiguous) input gives the same bits as channels_last; an
    empty batch gives an empty channels_last output."""
    p = make_layer(1, 40, 5, 6, 2, 80, True, True, False, False)
    a = kernel_args(p, torch.float32)
    rest = (a["weight_t"], a["bias"], 2, IN_EPS, None, None, OUT_EPS)
    out = P.patch_linear_forward(a["x"], *rest)
    nchw = P.patch_linear_forward(a["x"].contiguous(), *rest)
    assert nchw.is_contiguous(memory_format=torch.channels_last) and torch.equal(nchw, out)
    wide = torch.zeros(1, 40, 5, 12, device=DEV)
    wide[..., ::2] = a["x"]
    assert torch.equal(P.patch_linear_forward(wide[..., ::2], *rest), out)
    empty = P.patch_linear_forward(a["x"][:0], *rest)
    assert empty.shape == (0, 80, 2, 3) and empty.is_contiguous(memory_format=torch.channels_last)
    no_out = P.patch_linear_forward(a["x"], a["weight_t"][:, :0], None, 2, IN_EPS, None, None, OUT_EPS)
    assert no_out.shape == (1, 0, 2, 3)


def test_strided_vectors():
    """Non-contiguous (O,) vectors are read by element, not by position in memory."""
    p = make_layer(2, 3, 8, 8, 4, 40, False, True, True, True)
    a = kernel_args(p, torch.float32)
    # Every other element of a (2*O,) buffer whose gaps hold NaN.
    spread = [torch.stack([v, torch.full_like(v, float("nan"))], 1)[:, 0]
              for v in (a["bias"], a["out_weight"], a["out_bias"])]
    assert not spread[0].is_contiguous()
    out = P.patch_linear_forward(a["x"], a["weight_t"], spread[0], 4, None, spread[1], spread[2], OUT_EPS)
    check(out, p, torch.float32)


def _args(n=1, c=8, h=4, w=4, k=2, o=16, dtype=torch.float32, out_norm=False):
    t = lambda *s: torch.zeros(*s, dtype=dtype, device=DEV)  # noqa: E731
    return [t(n, c, h, w), t(k * k * c, o), t(o), k, IN_EPS, t(o) if out_norm else None,
            t(o) if out_norm else None, OUT_EPS]


def _with(args, i, v):
    args = list(args)
    args[i] = v
    return args


@pytest.mark.parametrize("args, match", [
    (_args(dtype=torch.float64), "float64"),
    (_args(dtype=torch.int32), "int32"),
    (_args(o=520, out_norm=True), "O <= 512, got O=520"),
    (_args(c=0), "C >= 1, got C=0"),
], ids=["fp64", "int32", "outnorm-O520", "C0"])
def test_not_implemented(args, match):
    """What the kernel does not serve raises NotImplementedError, so the caller can fall back."""
    with pytest.raises(NotImplementedError, match=match):
        P.patch_linear_forward(*args)


@pytest.mark.parametrize("args, exc, match", [
    (_with(_args(), 0, torch.zeros(8, 4, 4, device=DEV)), ValueError, r"x of shape \(N, C, H, W\)"),
    (_with(_args(), 1, torch.zeros(24, 16, device=DEV)), ValueError, r"k\*k\*C=32, got \(24, 16\)"),
    (_with(_args(), 1, torch.zeros(32, device=DEV)), ValueError, r"weight_t \(k\*k\*C, O\)"),
    (_with(_args(), 2, torch.zeros(15, device=DEV)), ValueError, r"bias of shape \(16,\), got \(15,\)"),
    (_with(_args(out_norm=True), 5, torch.zeros(8, device=DEV)), ValueError, r"out_weight of shape \(16,\)"),
    (_with(_args(), 6, torch.zeros(16, device=DEV)), ValueError, "out_bias without out_weight"),
    (_args(h=3, w=5, k=4, c=3), ValueError, "H and W >= k=4, got H=3, W=5"),
    (_with(_args(), 3, 0), ValueError, "patch size k >= 1, got 0"),
    (_with(_args(), 1, torch.zeros(32, 16, dtype=torch.float16, device=DEV)), TypeError,
     "weight_t in x's dtype torch.float32, got torch.float16"),
    (_with(_args(), 2, torch.zeros(16, dtype=torch.float16, device=DEV)), TypeError, "bias in x's dtype"),
    (_with(_args(out_norm=True), 6, torch.zeros(16, dtype=torch.bfloat16, device=DEV)), TypeError,
     "out_bias in x's dtype"),
], ids=["x-3d", "weight-rows", "weight-1d", "bias-shape", "out-weight-shape", "out-bias-alone", "H<k", "k0",
        "weight-dtype", "bias-dtype", "out-bias-dtype"])
def test_bad_shapes_and_dtypes(args, exc, match):
    with pytest.raises(exc, match=match):
        P.patch_linear_forward(*args)
