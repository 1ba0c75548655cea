"""ConvNeXt's non-overlapping patch convolutions (kernel = stride = k, no padding) with their
LayerNorms fused, in one Triton kernel, for inference (no autograd).

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) has two such layers, each a GEMM over
the k*k*C values of a patch once the input is dense NHWC:

* the downsampling layers: a LayerNorm over C at every input pixel, then a 2x2 stride-2 conv
  C -> 2C. ``optimize_for_inference`` folds the LayerNorm affine into the conv, so the kernel
  normalizes without affine: u[p, :] = (x[p, :] - mean_C) * rsqrt(var_C + in_eps);
* the stem: a 4x4 stride-4 conv of the C = 3 image channels to O, then a LayerNorm over the O
  outputs of every output pixel *with* affine (out_weight, out_bias).

Per output pixel (n, i, j), i < H // k, j < W // k (trailing rows / columns are ignored, as
``nn.Conv2d`` does), with r = (kh*k + kw)*C + c the row of weight_t = W.permute(2, 3, 1, 0):

    y[:] = sum_r u[n, i*k + kh, j*k + kw, c] * weight_t[r, :] + bias          (u = x without in_eps)
    y[:] = (y - mean_O(y)) * rsqrt(var_O(y) + out_eps) * out_weight + out_bias  (with out_weight)

Neither u nor the pre-norm y reaches memory: the kernel reads x (each input pixel once per output
slice, every pixel belongs to exactly one patch) and weight_t, and writes y once.

Tiling: a GEMM of (N*Ho*Wo) x (k*k*C) by (k*k*C) x O. A program owns BLOCK_M consecutive output
pixels of the flattened N*Ho*Wo range and one slice of BLOCK_N output channels (the slices of a
pixel tile are neighbouring program ids, so the second slice reads x from L2). In dense NHWC a
patch's tap (kh, kw) is at the scalar offset (kh*W + kw)*C from its top-left pixel, so the
reduction runs over the k*k taps and, within a tap, over C in chunks of BLOCK_K: a [BLOCK_M,
BLOCK_K] masked load of contiguous channel rows, a [BLOCK_K, BLOCK_N] slice of weight_t, one
``tl.dot`` into a [BLOCK_M, BLOCK_N] fp32 accumulator. With in_eps, each tap first gets its
per-pixel mean / rstd from a statistics pass over its C chunks, then the dot pass re-reads every
chunk (from L1 / L2) and normalizes it with them; when C <= BLOCK_K (SINGLE: C = 40 .. 64 in 16-bit) the
tap's one tile stays in registers from the statistics to the dot. Statistics: each chunk's mean
and sum of squared deviations from that mean (two-pass within the chunk, in registers), merged
across chunks with Chan's formula (as ``layer_norm._chan_combine``; the first merge is the chunk
itself, exactly). Why: it reads x once for the statistics, where a two-pass mean-then-deviations
over C would read every chunk twice (three reads of x per tap with the dot pass), and it keeps the
two-pass accuracy, where one pass of E[x^2] - E[x]^2 cancels when |mean| >> std (mean 300, std 1:
an error of ~5e-2 in u in fp32; Welford per element would cost a division per value). The
per-pixel LayerNorm work is repeated by every output slice of a pixel tile, hence wide slices:
with 16-bit x one slice of up to 256 channels.

Without in_eps and with C < 16 (the stem, C = 3) a tap is too narrow for a dot (>= 16 along
every dimension): the reduction then runs flat over the k*k*C patch values in chunks of BLOCK_K
(the stem's 48 in three chunks of 16), the input offset of patch value r being
kh*W*C + (r - kh*k*C) (the k*C values of a patch row are contiguous in NHWC).

With out_weight, one program owns all O channels (BLOCK_N = next power of two >= O, O <= 512) and
the epilogue normalizes the fp32 accumulator in registers (two-pass: mean, then mean of squared
deviations over the O valid columns).

Numerics: LayerNorm statistics, the normalization, accumulation and the epilogue in fp32 (biased
variances); u is rounded once to x's dtype, the dot operand (fp16 / bf16 tensor cores; fp32 dots
with ``input_precision="ieee"``, no TF32); one rounding of the output. Means over n values multiply
by 1/n computed on the host (exact for powers of two and n = 1; Triton's fp32 ``/`` is
approximate, see ``layer_norm._mean_div``; only Chan's merge weights n_b / (n_a + n_b) are fp32
divisions, whose ~2 ulp scale the update of the mean, not the mean). Channel padding (C up to a
multiple of BLOCK_K) is zeroed after the normalization: loaded as 0, it would normalize to
-mean * rstd, which rounds to +-inf in fp16 for a constant pixel of value >= 66 (rstd =
1/sqrt(eps) = 1000), and inf times the padding's zero weights is NaN. fp64 and other dtypes:
``NotImplementedError`` (the caller runs PyTorch).
"""
from __future__ import annotations

import functools
import numbers
from typing import Optional

import torch
import triton
import triton.language as tl

from .host_math import cdiv, next_power_of_2
from .layout import device_guard, empty_channels_last
from .pointwise_mlp import _TRITON_DTYPE, _dot_precision

__all__ = ["patch_linear_forward", "aot_configs", "MAX_OUT_NORM_O"]

# Widest output LayerNorm served: one program holds a pixel's O outputs in registers (ConvNeXt
# stems: O = 40 .. 352).
MAX_OUT_NORM_O = 512
_MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _patch_linear_fwd_kernel(
    x_ptr,    # (N, C, H, W) input, dense channels_last: pixel p = (n*H + h)*W + w, element (p, c) at p*C + c
    wt_ptr,   # (K*K*C, O) weight, contiguous: row (kh*K + kw)*C + c
    b_ptr,    # (O,) conv bias (unused without HAS_B)
    ow_ptr,   # (O,) output LayerNorm weight (unused without OUT_NORM)
    ob_ptr,   # (O,) output LayerNorm bias (unused without HAS_OB)
    out_ptr,  # (N, O, Ho, Wo) output, dense channels_last: element (m, o) at m*O + o
    M, Ho, Wo, H, W, C, O,
    in_eps,
    inv_C,      # 1 / C (fp32)
    inv_last,   # 1 / (C - BLOCK_K * ((C - 1) // BLOCK_K)): 1 / count of the last channel chunk
    out_eps,
    inv_O,      # 1 / O (fp32)
    NUM_SLICES,  # cdiv(O, BLOCK_N): programs per pixel tile
    K: tl.constexpr,          # patch size = stride
    IN_NORM: tl.constexpr,    # LayerNorm over C of every input pixel (no affine)
    FLAT: tl.constexpr,       # reduce flat over the K*K*C patch values (no IN_NORM, C < 16)
    SINGLE: tl.constexpr,     # C <= BLOCK_K: one channel chunk per tap
    C_DIV: tl.constexpr,      # largest power of two <= 16 that divides C
    HAS_B: tl.constexpr, OUT_NORM: tl.constexpr, HAS_OB: tl.constexpr,
    BLOCK_M: tl.constexpr,  # output pixels per program
    BLOCK_K: tl.constexpr,  # reduction chunk: channels of a tap (patch values with FLAT)
    BLOCK_N: tl.constexpr,  # output channels per program (all of O with OUT_NORM)
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    tile = pid // NUM_SLICES
    pid_n = pid - tile * NUM_SLICES
    dt = x_ptr.dtype.element_ty
    # C as a visible multiple of C_DIV (the JIT marks only multiples of 16): the x offsets keep
    # that alignment, so C = 40 in 16-bit still gets 16-byte vector loads.
    C = (C // C_DIV) * C_DIV

    m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pmask = m < M
    j = m % Wo
    t = m // Wo
    i = t % Ho
    n = t // Ho
    # Top-left input pixel of each patch, as an element offset (int64: N*H*W*C can pass 2**31).
    base = ((n * H + i * K).to(tl.int64) * W + j * K) * C
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < O
    kk = tl.arange(0, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if FLAT:
        KC = K * C
        KKC = K * KC
        for r0 in range(0, KKC, BLOCK_K):
            r = r0 + kk
            rmask = r < KKC
            kh = r // KC
            off = kh * (W * C) + (r - kh * KC)
            a = tl.load(x_ptr + (base[:, None] + off[None, :]), mask=pmask[:, None] & rmask[None, :], other=0.0)
            w = tl.load(wt_ptr + (r[:, None] * O + cols[None, :]), mask=rmask[:, None] & cmask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    else:
        xrow = x_ptr + (base[:, None] + kk[None, :])  # [BLOCK_M, BLOCK_K] pointers: tap (0, 0), chunk 0
        wrow = wt_ptr + (kk[:, None] * O + cols[None, :])  # [BLOCK_K, BLOCK_N] pointers: row 0
        for tap in range(K * K):
            kh = tap // K
            tptr = xrow + (kh * W + (tap - kh * K)) * C
            wtap = wrow + tap * C * O
            if SINGLE:
                # C <= BLOCK_K: the tap's channels in one tile, kept in registers from the
                # statistics to the dot (two-pass in registers).
                kmask = kk < C
                cm = pmask[:, None] & kmask[None, :]
                xc = tl.load(tptr, mask=cm, other=0.0)
                if IN_NORM:
                    xf = xc.to(tl.float32)
                    mean = tl.sum(xf, axis=1) * inv_C
                    d = tl.where(cm, xf - mean[:, None], 0.0)
                    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) * inv_C + in_eps)
                    a = (d * rstd[:, None]).to(dt)
                else:
                    a = xc
                w = tl.load(wtap, mask=kmask[:, None] & cmask[None, :], other=0.0)
                acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
            else:
                if IN_NORM:
                    # Statistics of the tap's pixels: per chunk, its mean and sum of squared
                    # deviations (two-pass in registers), merged with Chan's formula (all chunks
                    # but the last are full: the count before chunk c0 is c0; the first merge is
                    # the chunk itself, exactly).
                    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
                    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
                    for c0 in range(0, C, BLOCK_K):
                        cm = pmask[:, None] & (c0 + kk < C)[None, :]
                        xf = tl.load(tptr + c0, mask=cm, other=0.0).to(tl.float32)
                        full = c0 + BLOCK_K <= C
                        mean_b = tl.sum(xf, axis=1) * tl.where(full, 1.0 / BLOCK_K, inv_last)
                        d = tl.where(cm, xf - mean_b[:, None], 0.0)
                        n_a = tl.cast(c0, tl.float32)
                        n_b = tl.cast(tl.minimum(C - c0, BLOCK_K), tl.float32)
                        w_b = tl.where(c0 == 0, 1.0, n_b / (n_a + n_b))
                        delta = mean_b - mean
                        mean = mean + delta * w_b
                        m2 = m2 + tl.sum(d * d, axis=1) + delta * delta * (n_a * w_b)
                    rstd = 1.0 / tl.sqrt(m2 * inv_C + in_eps)
                for c0 in range(0, C, BLOCK_K):
                    kmask = c0 + kk < C
                    cm = pmask[:, None] & kmask[None, :]
                    xc = tl.load(tptr + c0, mask=cm, other=0.0)
                    if IN_NORM:
                        # Padding zeroed after the normalization (see the module docstring).
                        a = tl.where(cm, (xc.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0).to(dt)
                    else:
                        a = xc
                    w = tl.load(wtap + c0 * O, mask=kmask[:, None] & cmask[None, :], other=0.0)
                    acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    # ---- epilogue: + bias, output LayerNorm (two-pass over the O valid columns), one rounding
    y = acc
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if OUT_NORM:
        mu = tl.sum(tl.where(cmask[None, :], y, 0.0), axis=1) * inv_O
        yc = tl.where(cmask[None, :], y - mu[:, None], 0.0)
        r_o = 1.0 / tl.sqrt(tl.sum(yc * yc, axis=1) * inv_O + out_eps)
        y = yc * r_o[:, None] * tl.load(ow_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_OB:
            y += tl.load(ob_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    offs = m.to(tl.int64)[:, None] * O + cols[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


# --------------------------------------------------------------------------------- configuration


def _block_k(n: int) -> int:
    """Channel chunk for C channels: the one of 64 / 32 / 16 with the least padded work, counting
    a chunk's fixed cost as 8 channels (ties to the larger chunk). C = 192, 352, 384, 768, 1408 ->
    64; 80, 96, 160 -> 32; 40, 48 -> 64 (one chunk)."""
    return min((64, 32, 16), key=lambda b: (cdiv(n, b) * (b + 8), -b))


def _c_div(c: int) -> int:
    """The largest power of two <= 16 that divides c."""
    return min(16, c & -c)


@functools.lru_cache(maxsize=64)
def _config(c: int, o: int, dtype: torch.dtype, in_norm: bool, out_norm: bool) -> tuple:
    """(FLAT, SINGLE, BLOCK_M, BLOCK_K, BLOCK_N, warps, stages) for C -> O in ``dtype``.

    From ``aot_check --mix --only patch`` (Triton 3.8, sm_90 / sm_80 registers; no spills):

    * 16-bit, C >= 16: BLOCK_N = all of O up to 128 with BLOCK_M 128, else slices of 256 with
      BLOCK_M 64 (fp32 accumulator: 64 registers per thread at 8 warps). At the compute-bound
      widths every slice repeats the per-pixel LayerNorm work (statistics and normalization,
      on the CUDA cores), so the slice is as wide as the registers allow: per 64-channel chunk,
      64 x 256 issues ~395 instructions per warp on sm_90 (stats + dot loop) for 8 wgmma, 128 x 128
      ~640 for the same tensor work. C = 192, 384, 768, 1408 (K 64): 175 / 168 registers, 80 / 48 KB of
      shared memory (fits sm_86 / sm_89's 99 KB); C = 96 (K 32): 120 / 153 registers, 40 / 24 KB.
      Untested on a GPU: K 32 at the wide widths too (~122 registers on sm_90, so two programs per
      SM, each overlapping the other's LayerNorm phase with its dots, for ~20% more instructions
      per channel). C <= BLOCK_K (C = 40, 48, 64): SINGLE, the tap's tile stays in registers from
      the statistics to the dot (C = 40: 157 / 128 registers at 128 x 128, 80 / 48 KB).
    * stem (FLAT, C = 3): chunks of 16 patch values (48 = 3 x 16, no padding; one padded chunk of
      64 took 227 / 234 registers at 128 x 128, 16 takes 128 / 128); with the output LayerNorm all
      of O in one program: BLOCK_N 128 / 256 / 512 with BLOCK_M 128 / 64 / 32 (~127 registers).
    * fp32 (exact fma dots, a correctness path): chunks of 16 (the fma dot's registers grow with
      BLOCK_K: K 64 spilled), slices of up to 128, BLOCK_M 64; with the output LayerNorm
      BLOCK_M shrinks as BLOCK_N grows (103 .. 128 registers, <= 34 KB).
    """
    flat = not in_norm and c < _MIN_DOT
    bn_full = max(_MIN_DOT, next_power_of_2(o))
    if dtype == torch.float32:
        bk = _MIN_DOT
        bn = bn_full if out_norm else min(bn_full, 128)
        bm = max(16, min(64, 8192 // bn))
    else:
        bk = _MIN_DOT if flat else _block_k(c)
        bn = bn_full if (out_norm or bn_full <= 128) else 256
        bm = max(16, min(128, 16384 // bn))
    return (flat, not flat and c <= bk, bm, bk, bn, 8, 2)


def _check(x, weight_t, bias, k, out_weight, out_bias) -> None:
    if x.dim() != 4:
        raise ValueError(f"patch_linear_forward expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in _TRITON_DTYPE:
        raise NotImplementedError(f"the patch linear kernel supports float16, bfloat16 and float32, got {x.dtype}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"patch_linear_forward expects a patch size k >= 1, got {k!r}")
    _, c, h, w = x.shape
    if h < k or w < k:
        raise ValueError(f"patch_linear_forward expects H and W >= k={k}, got H={h}, W={w}")
    if c == 0:
        raise NotImplementedError("the patch linear kernel serves C >= 1, got C=0 (the output is the bias)")
    if weight_t.dim() != 2 or weight_t.shape[0] != k * k * c:
        raise ValueError(f"patch_linear_forward expects weight_t (k*k*C, O) with k*k*C={k * k * c}, "
                         f"got {tuple(weight_t.shape)}")
    o = weight_t.shape[1]
    if out_weight is None and out_bias is not None:
        raise ValueError("patch_linear_forward got out_bias without out_weight")
    for name, t in (("bias", bias), ("out_weight", out_weight), ("out_bias", out_bias)):
        if t is not None and tuple(t.shape) != (o,):
            raise ValueError(f"patch_linear_forward expects {name} of shape ({o},), got {tuple(t.shape)}")
    for name, t in (("weight_t", weight_t), ("bias", bias), ("out_weight", out_weight), ("out_bias", out_bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"patch_linear_forward expects {name} in x's dtype {x.dtype}, got {t.dtype}")
    if out_weight is not None and o > MAX_OUT_NORM_O:
        raise NotImplementedError(f"the patch linear kernel's output LayerNorm serves O <= {MAX_OUT_NORM_O}, "
                                  f"got O={o}")


def _launch(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps, cfg):
    n, c, h, w = x.shape
    o = weight_t.shape[1]
    ho, wo = h // k, w // k
    x = x.contiguous(memory_format=torch.channels_last)
    out = empty_channels_last((n, o, ho, wo), x.dtype, x.device)
    m = n * ho * wo
    if out.numel() == 0:
        return out
    flat, single, bm, bk, bn, warps, stages = cfg
    slices = cdiv(o, bn)
    has_b, out_norm, has_ob = bias is not None, out_weight is not None, out_bias is not None
    last = c - bk * ((c - 1) // bk)
    # Absent tensors are replaced by x: the kernel never reads them (constexpr flags). The (O,)
    # vectors are read with unit stride (.contiguous() is free when they are).
    bias, out_weight, out_bias = (x if t is None else t.contiguous() for t in (bias, out_weight, out_bias))
    with device_guard(x):
        _patch_linear_fwd_kernel[(cdiv(m, bm) * slices,)](
            x, weight_t.contiguous(), bias, out_weight, out_bias, out,
            m, ho, wo, h, w, c, o,
            0.0 if in_eps is None else float(in_eps), 1.0 / c, 1.0 / last, float(out_eps), 1.0 / o,
            slices,
            K=k, IN_NORM=in_eps is not None, FLAT=flat, SINGLE=single, C_DIV=_c_div(c), HAS_B=has_b,
            OUT_NORM=out_norm, HAS_OB=has_ob, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn,
            DOT_PRECISION=_dot_precision(x.dtype), num_warps=warps, num_stages=stages)
    return out


def patch_linear_forward(x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor], k: int,
                         in_eps: Optional[float], out_weight: Optional[torch.Tensor],
                         out_bias: Optional[torch.Tensor], out_eps: float) -> torch.Tensor:
    """A non-overlapping k x k, stride-k convolution (no padding) with an optional LayerNorm over C
    of its input pixels (no affine) and an optional LayerNorm over O of its outputs (with affine),
    for inference in one kernel. No autograd.

    Args:
        x: (N, C, H, W), float16 / bfloat16 / float32; channels_last (dense NHWC) is read in place,
            any other layout is copied to it first. H, W >= k; trailing rows / columns past a
            multiple of k are ignored (as ``nn.Conv2d``).
        weight_t: (k*k*C, O), the conv weight W (O, C, k, k) as ``W.permute(2, 3, 1, 0).reshape(k*k*C, O)``
            (row (kh*k + kw)*C + c).
        bias: (O,) conv bias, or None.
        k: patch size = stride.
        in_eps: epsilon of the input LayerNorm over C (biased variance, no affine), or None for none.
        out_weight, out_bias: (O,) affine of the output LayerNorm over O, or None for none (out_bias
            may be None with out_weight given: zero).
        out_eps: epsilon of the output LayerNorm (unused without out_weight).

    Every tensor has x's dtype and x's device.

    Shape:
        (N, C, H, W) -> (N, O, H // k, W // k).

    Returns:
        A new channels_last tensor of x's dtype.

    Raises:
        NotImplementedError: float64 or another dtype; an output LayerNorm over O > 512; C = 0
            (the caller runs PyTorch instead).
        ValueError / TypeError: shapes or dtypes that do not fit together.
    """
    _check(x, weight_t, bias, k, out_weight, out_bias)
    k = int(k)
    cfg = _config(x.shape[1], weight_t.shape[1], x.dtype, in_eps is not None, out_weight is not None)
    return _launch(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps, cfg)


# --------------------------------------------------------------------------------- AOT configs


# (C, O, k, in_norm, out_norm) compiled besides the layers of the stages: the family's narrowest
# downsampling (atto, 40 -> 80: C <= BLOCK_K, the SINGLE path) and widest stem (V2 huge, 3 -> 352:
# BLOCK_N 512), configurations the ConvNeXt-T widths do not reach.
_AOT_EXTRA_LAYERS = [(40, 80, 2, True, False), (3, 352, 4, False, True)]


def aot_configs(stages) -> list[dict]:
    """The kernel at the configurations ``patch_linear_forward`` picks for ConvNeXt's patch layers
    at the widths of ``stages`` ((C, H, W) tuples): the downsampling between consecutive stages
    (k = 2, C -> the next stage's width, with in_eps and bias) and the stem (k = 4, 3 -> the first
    width, bias and output LayerNorm with affine), plus _AOT_EXTRA_LAYERS; bf16 and fp32, for
    ``convnext_fast.aot_check``. Entries as in ``pointwise_mlp.aot_configs``."""
    from .layer_norm import divisibility_attrs

    layers = [(3, stages[0][0], 4, False, True)]
    layers += [(c, c_next, 2, True, False) for (c, _, _), (c_next, _, _) in zip(stages, stages[1:]) if c_next > c]
    layers += _AOT_EXTRA_LAYERS
    configs: list[dict] = []
    seen: set = set()
    for dtype in (torch.bfloat16, torch.float32):
        t = _TRITON_DTYPE[dtype]
        for c, o, k, in_norm, out_norm in layers:
            flat, single, bm, bk, bn, warps, num_stages = _config(c, o, dtype, in_norm, out_norm)
            kind = ("stem" if out_norm else "down") + ("_single" if single else "")
            div = tuple(nm for nm, v in (("C", c), ("O", o)) if v % 16 == 0)
            slices = cdiv(o, bn)
            name = (f"patch_linear_{kind}_{t}_k{k}_M{bm}_K{bk}_N{bn}_w{warps}_s{num_stages}"
                    + ("" if "C" in div else f"_cdiv{_c_div(c)}") + ("" if "O" in div else "_omask")
                    + ("_1slice" if slices == 1 else ""))
            if name in seen:
                continue
            seen.add(name)
            sig = {nm: f"*{t}" for nm in ("x_ptr", "wt_ptr", "b_ptr", "ow_ptr", "ob_ptr", "out_ptr")}
            sig.update({nm: "i32" for nm in ("M", "Ho", "Wo", "H", "W", "C", "O", "NUM_SLICES")})
            sig.update({nm: "fp32" for nm in ("in_eps", "inv_C", "inv_last", "out_eps", "inv_O")})
            const = {"K": k, "IN_NORM": in_norm, "FLAT": flat, "SINGLE": single, "C_DIV": _c_div(c), "HAS_B": True,
                     "OUT_NORM": out_norm, "HAS_OB": out_norm, "BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn,
                     "DOT_PRECISION": _dot_precision(dtype)}
            if slices == 1:
                const["NUM_SLICES"] = 1  # the JIT specializes an integer argument equal to 1 as a constant
            sig = {nm: sig.get(nm, "constexpr") for nm in _patch_linear_fwd_kernel.arg_names}
            sig.update({nm: "constexpr" for nm in const})
            configs.append({"kernel": _patch_linear_fwd_kernel, "signature": sig, "constexprs": const,
                            "attrs": divisibility_attrs(_patch_linear_fwd_kernel, sig, div), "num_warps": warps,
                            "num_stages": num_stages, "name": name})
    return configs
