"""A whole ConvNeXt block for inference in one Triton kernel: depthwise conv -> LayerNorm -> fc1 ->
GELU -> fc2 -> residual, for the narrow stages (C <= 256).

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) computes per block, per pixel p:

    z   = dwconv_KxK(x)[p] + dw_b                    (padding K//2, zero padding)
    u   = (z - mean_C(z)) * rsqrt(var_C(z) + eps)    (biased variance; LayerNorm without affine)
    out = x[p] + GELU_erf(u @ W1'^T + b1') @ W2'^T + b2'

with the LayerNorm affine folded into fc1 (W1', b1') and the layer scale into fc2 (W2', b2'), as
``convnext_fast.inference.optimize_for_inference`` does. At stages 1-2 the block is memory-bound
unless the 4C hidden activation stays on chip (``pointwise_mlp.py``'s docstring); here neither the conv
output, the normalized activation nor the hidden activation reaches memory: the block reads x
(its K*K shifted windows from L1/L2) and the weights, and writes out, once.

Tiling. A program owns BLOCK_M consecutive pixels of the flattened (N*H*W) pixel range, all C
channels (padded to BLOCK_C, a power of two) for the conv and the LayerNorm, and one slice of
BLOCK_N output channels for the MLP:

1. conv, in chunks of CONV_C channels: for each of the K*K taps, one masked [BLOCK_M, CONV_C] load
   of the shifted input tile (every tap is a scalar offset (dh*W + dw)*C from the centre tile,
   dense NHWC), times the tap's weights, into an fp32 accumulator. Flattened tiles rather than row strips: a strip of one image
   row wastes most of a 64- or 128-pixel tile at W = 28, 14, 7 (stages 2-4), while the per-pixel
   (h, w) of a flattened tile costs one division per pixel per program;
2. LayerNorm over C in fp32 (two-pass: mean, then the mean of squared deviations), rounded once
   to x's dtype: the A operand of the fc1 dot, the same for every hidden chunk (the compiler
   stores it to shared memory once and every hidden step reads it from there);
3. the flash-MLP loop of ``pointwise_mlp._mlp_fwd_fused_kernel``: per hidden chunk of BLOCK_H,
   h = u @ W1'[chunk]^T + b1' (tensor cores, fp32 accumulate), exact-erf GELU in fp32, and
   ``acc += GELU(h).to(x dtype) @ W2'[:, chunk]^T``;
4. epilogue: acc + b2' + x (the centre tile, reloaded: it was read by the conv a moment ago, so it
   comes from L1/L2, and keeping it in registers through the MLP loop would cost BLOCK_M * BLOCK_N
   16-bit values per program at the loop's register peak), one rounding, one store.

Output slices: in fp16 / bf16 one program covers all C outputs (BLOCK_N = BLOCK_C, up to 256),
so h is computed once per pixel. The fp32 path (exact fma dots, a correctness path) splits C > 128
into slices of BLOCK_N = 128: several programs share a pixel tile, each recomputing the conv, the
LayerNorm and h; the slices of a tile are neighbouring program ids, so the second reads x from L2.

NaN / Inf conv weights: every tap is multiplied with its input, the (masked, zero) border padding
too, exactly as float64 ``F.conv2d`` and ``kernels/depthwise_conv.py`` do: a NaN tap makes its
channel's conv NaN at every pixel, an Inf tap NaN where it lies over the padding (0 * Inf) and
+-Inf elsewhere, and the LayerNorm then makes those pixels NaN in every channel (a kernel that
skipped the padding taps would leave border pixels finite).

Numerics: the conv, the LayerNorm statistics, GELU and the epilogue in fp32; the dots take
operands in x's dtype (fp16 / bf16 tensor cores; fp32 with ``input_precision="ieee"``, no TF32)
and accumulate in fp32; one rounding of u, one of GELU(h), one of the output. fp64, C > 256, K > 7
or even K: ``NotImplementedError`` (the caller runs the two fused ops instead). V2 blocks (GRN
between GELU and fc2) need each image's norm over its whole hidden activation and are not served.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from .host_math import cdiv, next_power_of_2
from .layout import device_guard, empty_channels_last
from .pointwise_mlp import _TRITON_DTYPE, _dot_precision, _gelu_fc2, _residual_epilogue

__all__ = ["block_forward", "dw_taps", "aot_configs", "MAX_C", "MAX_K"]

# Widest block served: stages 1-2 of every ConvNeXt (40 .. 256). At C = 256 the [BLOCK_M, C] fp32
# MLP accumulator takes all 255 registers of a thread at BLOCK_M 128 (see _config); from C = 384
# the block is compute-bound (its GEMMs outweigh its bytes) and the two fused ops (fc1 / fc2 GEMMs)
# serve it.
MAX_C = 256
# Largest depthwise kernel: the conv's K*K taps are unrolled K at a time.
MAX_K = 7
_MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _conv_chunk(
    x_ptr, wt_ptr, db_ptr,  # as in _block_fwd_kernel
    pix64, ph, pw, pmask,   # [BLOCK_M] flat pixel index (int64), its row h and column w, pixel < N*H*W
    kc,                     # [CONV_C] channels of this chunk
    H, W, C,
    K: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_M: tl.constexpr, CONV_C: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Depthwise conv (+ bias) of BLOCK_M pixels x the CONV_C channels kc, [BLOCK_M, CONV_C] fp32;
    channels >= C are exactly 0 (masked input, zero weight columns, masked bias)."""
    PAD: tl.constexpr = K // 2
    kmask = kc < C
    # Weights and bias as [BLOCK_M, CONV_C] tiles (every row the same values, from L1): they get the
    # x tile's register layout, where a vector would get its own and be converted through shared
    # memory at every tap (kernels/dwconv_layer_norm.py, _conv_tile). The compiler loads each
    # thread's distinct columns once per tap (seen in the sm_90 SASS).
    k_tile = kc[None, :] + 0 * ph[:, None]
    # Every tap is a scalar offset (dh*W + dw)*C from the centre tile (dense NHWC).
    ptrs = x_ptr + (pix64[:, None] * C + kc[None, :])
    col_ok = ()
    for kw in tl.static_range(K):
        iw = pw + (kw - PAD)
        col_ok = col_ok + (pmask & (iw >= 0) & (iw < W),)
    z = tl.zeros([BLOCK_M, CONV_C], dtype=tl.float32)
    for kh in range(K):
        ih = ph + (kh - PAD)
        row_ok = (ih >= 0) & (ih < H)
        row_ptrs = ptrs + (kh - PAD) * W * C
        for kw in tl.static_range(K):
            m = (row_ok & col_ok[kw])[:, None] & kmask[None, :]
            xv = tl.load(row_ptrs + (kw - PAD) * C, mask=m, other=0.0)
            # Unmasked: the padding columns of wt are zeros. Every tap multiplies its input, the
            # zeros of the border padding too, so a NaN / Inf tap propagates as in F.conv2d.
            wv = tl.load(wt_ptr + (kh * K + kw) * BLOCK_C + k_tile)
            z += xv.to(tl.float32) * wv
    if HAS_DB:
        z += tl.load(db_ptr + k_tile, mask=k_tile < C, other=0.0).to(tl.float32)
    return z


@triton.jit
def _block_fwd_kernel(
    x_ptr,    # (N, C, H, W) input, dense channels_last: pixel p = (n*H + h)*W + w, element (p, c) at p*C + c
    wt_ptr,   # (K*K, BLOCK_C) fp32 depthwise weight, tap-major, columns C .. BLOCK_C - 1 zero (dw_taps)
    db_ptr,   # (C,) depthwise bias (unused without HAS_DB)
    w1_ptr,   # (HD, C) folded fc1 weight, contiguous
    b1_ptr,   # (HD,) folded fc1 bias (unused without HAS_B1)
    w2_ptr,   # (C, HD) folded fc2 weight, contiguous
    b2_ptr,   # (C,) folded fc2 bias (unused without HAS_B2)
    out_ptr,  # (N, C, H, W) output, dense channels_last like x
    NHW, H, W, C, HD,
    eps,
    inv_C,    # 1 / C in fp32 (a multiply, not fp32 division: exact for C = 1, see layer_norm._mean_div)
    NUM_SLICES,  # cdiv(C, BLOCK_N): programs per pixel tile
    K: tl.constexpr, HAS_DB: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    BLOCK_M: tl.constexpr,  # pixels per program
    BLOCK_C: tl.constexpr,  # C padded to a power of two (>= 16)
    CONV_C: tl.constexpr,   # channels per conv chunk (divides BLOCK_C)
    BLOCK_N: tl.constexpr,  # output channels per program (one slice)
    BLOCK_H: tl.constexpr,  # hidden units per MLP step
    DOT_PRECISION: tl.constexpr,
):
    """out[pixels, slice] for BLOCK_M pixels and one BLOCK_N slice of the C output channels.

    The conv runs in BLOCK_C / CONV_C channel chunks (a tuple of [BLOCK_M, CONV_C] fp32 tiles):
    one [BLOCK_M, BLOCK_C] tile with its K in-flight tap loads needs ~2x the registers of the
    chunked one at BLOCK_M 128 and spilled on sm_90. The chunks stay chunks through the LayerNorm
    and into fc1, whose reduction over C is a sum of one dot per chunk.
    """
    pid = tl.program_id(0)
    tile = pid // NUM_SLICES  # the slices of one pixel tile are neighbouring programs: x from L2
    pid_n = pid - tile * NUM_SLICES
    NCH: tl.constexpr = BLOCK_C // CONV_C

    pix = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pmask = pix < NHW
    pw = pix % W
    ph = (pix // W) % H
    pix64 = pix.to(tl.int64)

    # ---- depthwise conv, fp32, chunk by chunk; the per-pixel channel sums on the way
    zs = ()
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for ci in tl.static_range(NCH):
        kc = ci * CONV_C + tl.arange(0, CONV_C)
        z = _conv_chunk(x_ptr, wt_ptr, db_ptr, pix64, ph, pw, pmask, kc, H, W, C, K, HAS_DB, BLOCK_M, CONV_C, BLOCK_C)
        total += tl.sum(z, axis=1)
        zs = zs + (z,)

    # ---- LayerNorm over C (no affine: folded into fc1), two-pass in fp32
    mean = total * inv_C
    sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    zcs = ()
    for ci in tl.static_range(NCH):
        kc = ci * CONV_C + tl.arange(0, CONV_C)
        zc = tl.where((kc < C)[None, :], zs[ci] - mean[:, None], 0.0)
        sq += tl.sum(zc * zc, axis=1)
        zcs = zcs + (zc,)
    rstd = 1.0 / tl.sqrt(sq * inv_C + eps)
    us = ()
    for ci in tl.static_range(NCH):
        us = us + ((zcs[ci] * rstd[:, None]).to(x_ptr.dtype.element_ty),)  # fc1's A operand, padded lanes 0

    # ---- MLP over hidden chunks, hidden tile on chip
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < C
    hs = tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j in range(0, HD, BLOCK_H):
        hid = j + hs
        hmask = hid < HD
        h = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
        for ci in tl.static_range(NCH):
            kc = ci * CONV_C + tl.arange(0, CONV_C)
            # w1 chunk as [CONV_C, BLOCK_H] (= W1'[hid, kc]^T): the dot's B operand without a
            # transpose; padded channels load as zeros.
            w1 = tl.load(w1_ptr + hid[None, :] * C + kc[:, None], mask=(kc < C)[:, None] & hmask[None, :], other=0.0)
            h = tl.dot(us[ci], w1, h, input_precision=DOT_PRECISION)
        if HAS_B1:
            h += tl.load(b1_ptr + hid, mask=hmask, other=0.0).to(tl.float32)[None, :]
        acc = _gelu_fc2(h, hid, hmask, cols, cmask, w2_ptr, HD, acc, x_ptr.dtype.element_ty, DOT_PRECISION)

    # ---- epilogue: + b2', + x (the residual), one rounding: the MLP kernel's, with gamma folded into
    # fc2 and no stochastic depth (inference), so those pointers are never read.
    _residual_epilogue(acc, pix, pix64, pmask, cols, cmask, b2_ptr, b2_ptr, x_ptr, b2_ptr, out_ptr, C, 1,
                       HAS_B2, False, True, False)


# --------------------------------------------------------------------------------- configuration


@functools.lru_cache(maxsize=64)
def _config(c: int, dtype: torch.dtype) -> tuple:
    """(BLOCK_M, BLOCK_C, CONV_C, BLOCK_N, BLOCK_H, warps, stages) for width C in ``dtype``.

    From ``aot_check --mix --only block`` (K = 7; registers / shared memory on sm_90 and sm_80; no
    spills in any row with Triton 3.8 or 3.6):

    * 16-bit, C <= 128: BLOCK_M 128, conv chunks of 32 channels, 8 warps, BLOCK_H 32, 2 stages:
      146 / 184 registers, 64 / 48 KB. One [128, 128] conv tile instead of chunks: 255 registers
      and 56 B of spills (7 in-flight tap loads of 64 values per thread); chunks of 64: 187
      registers. BLOCK_H 64: 173 registers, 96 KB (over sm_86's 99 KB with headroom to spare
      only on sm_90) for ~9% fewer MLP-loop instructions per pixel.
    * 16-bit, C = 160 .. 256 (BLOCK_C 256): one output slice of 256 (h computed once; two slices
      of 128 recompute it and issue ~2x the MLP-loop instructions per pixel), BLOCK_M 64, 1 stage:
      170 / 174 registers (Triton 3.6: 182 / 181), 48 / 52 KB, so it also fits GPUs with ~99 KB of
      shared memory per program (sm_86 / sm_89). BLOCK_M 128 issues ~2.2x fewer MLP-loop
      instructions per pixel but sits at 255 registers with Triton 3.8 and spills 56 B with 3.6.
    * fp32 (exact fma dots, a correctness path): BLOCK_M 64, 8 warps (128 / 222 registers,
      72 KB); C > 128: BLOCK_M 32, 8 warps, two output slices of 128 (126 / 114 registers; 4 warps
      spilled on sm_80 with Triton 3.6).
    """
    block_c = max(_MIN_DOT, next_power_of_2(c))
    conv_c = min(32, block_c)
    if dtype == torch.float32:
        if block_c <= 128:
            return (64, block_c, conv_c, block_c, 32, 8, 2)
        return (32, block_c, conv_c, 128, 32, 8, 2)
    if block_c <= 128:
        return (128, block_c, conv_c, block_c, 32, 8, 2)
    return (64, block_c, conv_c, block_c, 32, 8, 1)


def dw_taps(dw_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise weight (C, 1, K, K) as the kernel reads it: (K*K, BLOCK_C) fp32, tap-major (the C
    weights of a tap are contiguous: vector loads), columns C .. BLOCK_C - 1 zero (unmasked loads).

    :func:`block_forward` makes it on every call unless given; a caller that runs the same weights
    many times (an inference model) can make it once and pass it as ``dw_taps``.
    """
    c, k = dw_weight.shape[0], dw_weight.shape[-1]
    block_c = max(_MIN_DOT, next_power_of_2(c))
    out = torch.zeros((k * k, block_c), dtype=torch.float32, device=dw_weight.device)
    out[:, :c].copy_(dw_weight.reshape(c, k * k).t())
    return out


def _check(x, dw_weight, dw_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, taps) -> None:
    if x.dim() != 4:
        raise ValueError(f"block_forward expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    c = x.shape[1]
    if x.dtype not in _TRITON_DTYPE:
        raise NotImplementedError(f"the fused block kernel supports float16, bfloat16 and float32, got {x.dtype}")
    if c > MAX_C:
        raise NotImplementedError(f"the fused block kernel serves C <= {MAX_C}, got C={c}")
    if dw_weight.dim() != 4 or dw_weight.shape[:2] != (c, 1) or dw_weight.shape[2] != dw_weight.shape[3]:
        raise ValueError(f"block_forward expects dw_weight (C, 1, K, K) with C={c}, got {tuple(dw_weight.shape)}")
    k = dw_weight.shape[-1]
    if k % 2 == 0 or k > MAX_K:
        raise NotImplementedError(f"the fused block kernel serves odd kernel sizes <= {MAX_K}, got K={k}")
    if fc1_weight.dim() != 2 or fc1_weight.shape[1] != c:
        raise ValueError(f"block_forward expects fc1_weight (Hd, C) with C={c}, got {tuple(fc1_weight.shape)}")
    hd = fc1_weight.shape[0]
    if tuple(fc2_weight.shape) != (c, hd):
        raise ValueError(f"block_forward expects fc2_weight (C, Hd) = ({c}, {hd}), got {tuple(fc2_weight.shape)}")
    for name, t, n in (("dw_bias", dw_bias, c), ("fc1_bias", fc1_bias, hd), ("fc2_bias", fc2_bias, c)):
        if t is not None and tuple(t.shape) != (n,):
            raise ValueError(f"block_forward expects {name} of shape ({n},), got {tuple(t.shape)}")
    for name, t in (("dw_weight", dw_weight), ("dw_bias", dw_bias), ("fc1_weight", fc1_weight),
                    ("fc1_bias", fc1_bias), ("fc2_weight", fc2_weight), ("fc2_bias", fc2_bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"block_forward expects {name} in x's dtype {x.dtype}, got {t.dtype}")
    taps_shape = (k * k, max(_MIN_DOT, next_power_of_2(c)))
    if taps is not None and (taps.dtype != torch.float32 or tuple(taps.shape) != taps_shape
                             or not taps.is_contiguous()):
        raise ValueError(f"block_forward expects dw_taps from dw_taps(dw_weight): contiguous float32 "
                         f"{taps_shape}, got {taps.dtype} {tuple(taps.shape)}")


def _launch(x, dw_weight, dw_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, taps, cfg):
    n, c, h, w = x.shape
    hd = fc1_weight.shape[0]
    x = x.contiguous(memory_format=torch.channels_last)
    out = empty_channels_last(x.shape, x.dtype, x.device)
    nhw = n * h * w
    if out.numel() == 0:
        return out
    if taps is None:
        taps = dw_taps(dw_weight)
    bm, bc, cc, bn, bh, warps, stages = cfg
    slices = cdiv(c, bn)
    # Absent biases are replaced by x: the kernel never reads them (constexpr flags).
    with device_guard(x):
        _block_fwd_kernel[(cdiv(nhw, bm) * slices,)](
            x, taps, x if dw_bias is None else dw_bias, fc1_weight.contiguous(), x if fc1_bias is None else fc1_bias,
            fc2_weight.contiguous(), x if fc2_bias is None else fc2_bias, out,
            nhw, h, w, c, hd, float(eps), 1.0 / c, slices,
            K=dw_weight.shape[-1], HAS_DB=dw_bias is not None, HAS_B1=fc1_bias is not None,
            HAS_B2=fc2_bias is not None, BLOCK_M=bm, BLOCK_C=bc, CONV_C=cc, BLOCK_N=bn, BLOCK_H=bh,
            DOT_PRECISION=_dot_precision(x.dtype), num_warps=warps, num_stages=stages)
    return out


def block_forward(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor], eps: float,
                  fc1_weight: torch.Tensor, fc1_bias: Optional[torch.Tensor], fc2_weight: torch.Tensor,
                  fc2_bias: Optional[torch.Tensor], *, dw_taps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A ConvNeXt block for inference in one kernel: ``x + fc2(GELU(fc1(LN0(dwconv(x)))))`` with the
    LayerNorm affine folded into fc1 and the layer scale into fc2 (``LN0``: no affine). No autograd.

    Args:
        x: (N, C, H, W) input, float16 / bfloat16 / float32, C <= 256; channels_last (dense NHWC)
            is read in place, any other layout is copied to it first.
        dw_weight: (C, 1, K, K) depthwise weight, K odd and <= 7.
        dw_bias: (C,) depthwise bias, or None.
        eps: the LayerNorm epsilon (inside the square root, biased variance).
        fc1_weight, fc1_bias: folded fc1 weight (Hd, C) and bias (Hd,) or None.
        fc2_weight, fc2_bias: folded fc2 weight (C, Hd) and bias (C,) or None.
        dw_taps: ``dw_taps(dw_weight)`` made once by the caller, or None to make it here
            (one small copy per call).

    Every tensor has x's dtype and x's device.

    Shape:
        (N, C, H, W) -> (N, C, H, W).

    Returns:
        A new channels_last tensor of x's dtype.

    Raises:
        NotImplementedError: float64 or another dtype, C > 256, an even K or K > 7 (the caller runs
            the depthwise conv + LayerNorm op and the MLP op instead).
        ValueError / TypeError: shapes or dtypes that do not fit together.
    """
    _check(x, dw_weight, dw_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, dw_taps)
    cfg = _config(x.shape[1], x.dtype)
    return _launch(x, dw_weight, dw_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, dw_taps, cfg)


# --------------------------------------------------------------------------------- AOT configs


def aot_configs(stages) -> list[dict]:
    """The block kernel at the configurations ``block_forward`` picks for the widths of ``stages``
    ((C, H, W) tuples, C <= 256; K = 7 with every bias; bf16 and fp32), for ``convnext_fast.aot_check``. Entries as in ``pointwise_mlp.aot_configs``."""
    from .layer_norm import divisibility_attrs

    configs: list[dict] = []
    seen: set = set()
    for dtype in (torch.bfloat16, torch.float32):
        t = _TRITON_DTYPE[dtype]
        for c, _, _ in stages:
            if c > MAX_C:
                continue
            bm, bc, cc, bn, bh, warps, num_stages = _config(c, dtype)
            name = f"block_fwd_{t}_C{c}_M{bm}_K{bc}_CC{cc}_N{bn}_H{bh}_w{warps}_s{num_stages}"
            if name in seen:
                continue
            seen.add(name)
            sig = {n: f"*{t}" for n in ("x_ptr", "db_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "out_ptr")}
            sig.update({"wt_ptr": "*fp32", "NHW": "i32", "H": "i32", "W": "i32", "C": "i32", "HD": "i32",
                        "eps": "fp32", "inv_C": "fp32", "NUM_SLICES": "i32"})
            const = {"K": 7, "HAS_DB": True, "HAS_B1": True, "HAS_B2": True, "BLOCK_M": bm, "BLOCK_C": bc,
                     "CONV_C": cc, "BLOCK_N": bn, "BLOCK_H": bh, "DOT_PRECISION": _dot_precision(dtype)}
            sig = {k: sig.get(k, "constexpr") for k in _block_fwd_kernel.arg_names}
            sig.update({k: "constexpr" for k in const})
            div = tuple(n for n, v in (("C", c), ("HD", 4 * c)) if v % 16 == 0)
            configs.append({"kernel": _block_fwd_kernel, "signature": sig, "constexprs": const,
                            "attrs": divisibility_attrs(_block_fwd_kernel, sig, div), "num_warps": warps,
                            "num_stages": num_stages, "name": name})
    return configs
