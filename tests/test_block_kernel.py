"""The whole-block inference kernel (``kernels/block.py``: depthwise conv + LayerNorm +
MLP + residual in one kernel) against the float64 evaluation of the same math:
``reference.dwconv_layer_norm`` with a unit LayerNorm affine, then ``reference.pointwise_mlp`` with
x as the shortcut (the folded form of a ConvNeXt block, see ``convnext_fast/inference.py``).

Shapes on purpose: H and W odd or not multiples of any tile, C not a power of two (8, 40, 96,
160), K 3 and 7 (maps smaller than K too), with and without the conv bias and the fc biases;
forced small tiles so that pixel tiles cross image rows and images, the conv runs in several
channel chunks, the output in several slices (the last partly masked) and the hidden loop ends
in a partial chunk. fp32 within 1e-5; fp16 within 2x PyTorch's own fp16 error plus a small atol.
On a machine without a GPU the kernel runs in Triton's interpreter, where ``tl.dot`` on bf16 is
wrong (triton-lang/triton#11584): bf16 is tested on a GPU only.
"""
import pytest
import torch

from convnext_fast import reference
from convnext_fast.kernels import block as B
from convnext_fast.parity import assert_matches_reference

ON_GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if ON_GPU else "cpu")
EPS = 1e-6

# (N, C, H, W, K, conv bias, fc biases)
CASES = [
    (1, 8, 5, 7, 3, True, True),
    (2, 40, 5, 7, 7, False, True),   # 5x7 map smaller than the 7x7 window in H
    (1, 96, 9, 4, 7, True, True),    # W = 4 < K
    (2, 40, 9, 4, 3, True, False),   # no fc1 / fc2 bias
    (1, 160, 3, 5, 3, True, True),   # BLOCK_C 256: one slice of 256 (16-bit), two of 128 (fp32)
]
GPU_CASES = [
    (4, 96, 56, 56, 7, True, True),
    (3, 192, 29, 31, 7, True, True),
    (2, 256, 14, 14, 7, True, True),
    (5, 40, 13, 11, 5, False, True),
]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
# Forced small tiles for C = 40 (BLOCK_C 64): 16-pixel tiles (crossing rows and images), conv
# chunks of 16 channels (4 chunks, the last with 8 valid), output slices of 32 (2 slices, the second
# with 8 valid) and hidden chunks of 64 over Hd = 160 (the last half empty).
SMALL_TILES = (16, 64, 16, 32, 64, 4, 1)


def case_id(case):
    n, c, h, w, k, db, fb = case
    return f"{n}x{c}x{h}x{w}-k{k}" + ("" if db else "-nodwbias") + ("" if fb else "-nofcbias")


def make_block(n, c, h, w, k, dw_bias=True, fc_bias=True, seed=0):
    """float64 input and folded block parameters with O(1) activations (fan-in scaled weights)."""
    g = torch.Generator().manual_seed(seed + 97 * c + k)
    hd = 4 * c

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return {"x": rnd(n, c, h, w), "dw_weight": rnd(c, 1, k, k, scale=1.0 / k), "dw_bias": rnd(c) if dw_bias else None,
            "fc1_weight": rnd(hd, c, scale=c ** -0.5), "fc1_bias": rnd(hd, scale=0.5) if fc_bias else None,
            "fc2_weight": rnd(c, hd, scale=hd ** -0.5), "fc2_bias": rnd(c, scale=0.5) if fc_bias else None}


def reference_block(p, dtype=torch.float64):
    """The block's math in ``dtype`` through the reference ops (LayerNorm without affine)."""
    cast = {k: None if v is None else v.to(DEV, dtype) for k, v in p.items()}
    c = p["x"].shape[1]
    ones, zeros = torch.ones(c, dtype=dtype, device=DEV), torch.zeros(c, dtype=dtype, device=DEV)
    y = reference.dwconv_layer_norm(cast["x"], cast["dw_weight"], cast["dw_bias"], ones, zeros, EPS)
    return reference.pointwise_mlp(y, cast["fc1_weight"], cast["fc1_bias"], cast["fc2_weight"], cast["fc2_bias"],
                                   shortcut=cast["x"])


def kernel_args(p, dtype):
    args = {k: None if v is None else v.to(DEV, dtype) for k, v in p.items()}
    args["x"] = args["x"].contiguous(memory_format=torch.channels_last)
    return args


def run_block(p, dtype, cfg=None):
    a = kernel_args(p, dtype)
    if cfg is None:
        return B.block_forward(a["x"], a["dw_weight"], a["dw_bias"], EPS, a["fc1_weight"], a["fc1_bias"],
                               a["fc2_weight"], a["fc2_bias"])
    return B._launch(a["x"], a["dw_weight"], a["dw_bias"], EPS, a["fc1_weight"], a["fc1_bias"], a["fc2_weight"],
                     a["fc2_bias"], None, cfg)


def check(out, p, dtype):
    assert out.dtype == dtype and out.shape == p["x"].shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref64 = reference_block(p)
    lowp = None if dtype == torch.float32 else reference_block(p, dtype)
    # atol 2e-4 of max |ref| (default 1e-3): at these sizes PyTorch's own fp16 error is ~5e-4 of it,
    # and the default would let the atol term decide.
    assert_matches_reference(out, ref64, lowp, name=f"block {dtype}", atol=None if lowp is None else 2e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES + CASES if ON_GPU else CASES, ids=case_id)
def test_block_matches_reference(case, dtype):
    n, c, h, w, k, db, fb = case
    p = make_block(n, c, h, w, k, db, fb)
    check(run_block(p, dtype), p, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("k", [3, 7])
def test_small_tiles(k, dtype):
    """Tiles crossing rows and images, several conv chunks, output slices and a partial hidden chunk."""
    p = make_block(2, 40, 5, 7, k)
    check(run_block(p, dtype, SMALL_TILES), p, dtype)


def test_precomputed_taps_and_other_layouts():
    """``dw_taps`` made once gives the same bits; an NCHW-contiguous input is read correctly."""
    p = make_block(1, 40, 5, 7, 7)
    a = kernel_args(p, torch.float32)
    args = (a["dw_weight"], a["dw_bias"], EPS, a["fc1_weight"], a["fc1_bias"], a["fc2_weight"], a["fc2_bias"])
    out = B.block_forward(a["x"], *args)
    taps = B.dw_taps(a["dw_weight"])
    assert taps.shape == (49, 64) and taps.dtype == torch.float32 and (taps[:, 40:] == 0).all()
    assert torch.equal(B.block_forward(a["x"], *args, dw_taps=taps), out)
    nchw = B.block_forward(a["x"].contiguous(), *args)
    assert nchw.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nchw, out)
    check(out, p, torch.float32)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_weight_multiplies_padding():
    """A NaN tap makes its channel's conv NaN at every pixel, also where the tap lies over the zero
    padding (as float64 F.conv2d), and the LayerNorm spreads it to every channel: all NaN, like
    the reference. A kernel that skipped the padding would leave border pixels finite."""
    p = make_block(1, 8, 5, 7, 3)
    p["dw_weight"][2, 0, 0, 0] = float("nan")
    ref = reference_block(p)
    assert ref.isnan().all()
    out = run_block(p, torch.float32)
    assert out.isnan().all()
    p["dw_weight"][2, 0, 0, 0] = float("inf")
    assert torch.equal(run_block(p, torch.float32).isnan(), reference_block(p).isnan())


def test_empty_batch():
    p = make_block(0, 8, 5, 7, 3)
    out = run_block(p, torch.float32)
    assert out.shape == (0, 8, 5, 7) and out.is_contiguous(memory_format=torch.channels_last)


def _args(n=1, c=8, h=3, w=3, k=3, dtype=torch.float32, hd=None):
    hd = 4 * c if hd is None else hd
    t = lambda *s: torch.zeros(*s, dtype=dtype, device=DEV)  # noqa: E731
    return [t(n, c, h, w), t(c, 1, k, k), t(c), EPS, t(hd, c), t(hd), t(c, hd), t(c)]


@pytest.mark.parametrize("args, match", [
    (_args(dtype=torch.float64), "float64"),
    (_args(c=264), "C <= 256, got C=264"),
    (_args(k=9), "K=9"),
    (_args(k=4), "K=4"),
], ids=["fp64", "C264", "K9", "K4"])
def test_not_implemented(args, match):
    """What the kernel does not serve raises NotImplementedError, so the caller can fall back."""
    with pytest.raises(NotImplementedError, match=match):
        B.block_forward(*args)


def test_bad_shapes_and_dtypes():
    args = _args()
    args[1] = torch.zeros(6, 1, 3, 3, device=DEV)
    with pytest.raises(ValueError, match=r"dw_weight \(C, 1, K, K\) with C=8, got \(6, 1, 3, 3\)"):
        B.block_forward(*args)
    args = _args()
    args[6] = torch.zeros(8, 16, device=DEV)
    with pytest.raises(ValueError, match=r"fc2_weight \(C, Hd\) = \(8, 32\), got \(8, 16\)"):
        B.block_forward(*args)
    args = _args()
    args[4] = args[4].half()
    with pytest.raises(TypeError, match="fc1_weight in x's dtype torch.float32, got torch.float16"):
        B.block_forward(*args)
