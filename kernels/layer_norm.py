"""Channels-first LayerNorm in Triton: normalize an (N, C, H, W) tensor over C, without a permute copy.

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) normalizes over the channel dimension
of NCHW activations after every downsampling layer and in the stem; the official code does it with
five elementwise PyTorch passes (mean, subtract, square, mean, divide) and squares in the input
dtype, which overflows in fp16 (facebookresearch/ConvNeXt#80). Here one program normalizes
``BLOCK_P`` pixels x all C channels in one read and one write, in fp32 (fp64 for fp64 input).

Addressing. A pixel ``p`` in [0, N*H*W) is (n, h, w) in row-major order. Inputs may have any
strides; when the pixel strides collapse to one (``s_n == H*W*s``, ``s_h == W*s``, ``s_w == s``),
which holds for contiguous NCHW (s = 1), channels_last (s = C) and expanded stride-0 gradients
(s = 0), the launcher sets ``*_LINEAR`` and the kernel computes ``p * s`` instead of dividing ``p``
into (n, h, w). Outputs are channels_last, so the element (p, c) of y / grad_x is at ``p*C + c``.
Offsets are int64 (tensors may exceed 2**31 elements).

Variance. A tile that holds all C channels uses the exact two-pass formula in registers. When C is
larger than one register tile (``SINGLE_TILE = False``, C > 1024, e.g. ConvNeXt-V2-H's 1408 / 2816)
the program loops over channel chunks, combining each chunk's mean and sum of squared deviations
with Chan et al.'s parallel formula (stable, no E[x^2] - E[x]^2 cancellation), then loops again to
normalize; the second read of x comes from L2 (the program's BLOCK_P x C slice is a few hundred KB).

Weight / bias gradients are reductions over N*H*W: each of G programs accumulates the tiles
``pid, pid + G, pid + 2G, ...`` into its own row of an fp32 (fp64) partial buffer, and a second
kernel sums the G rows in a fixed order, so the result is bitwise deterministic (no atomics) and G
depends only on the shape, not on the GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import empty_channels_last, stats_dtype, stats_shape

from .host_math import cdiv, next_power_of_2

__all__ = ["layer_norm_forward", "layer_norm_backward", "aot_configs"]

# Largest channel tile held in registers (next power of two of C); above it the chunk loop runs.
MAX_BLOCK_C = 1024
MAX_BLOCK_C_FP64 = 512
# Elements per register tile (BLOCK_P * BLOCK_C), 4 warps: 32 (forward) / 16 (backward, which
# holds x, grad_y and intermediates) values per thread: the fastest, or within a few %, of the tiles
# timed at ConvNeXt-T shapes (docs/performance.md, "Kernel constants").
TILE_FWD = 4096
TILE_BWD = 2048
NUM_WARPS = 4
# Programs of a backward kernel (= rows of its fp32 partial gradient buffer): about 8 resident
# programs per SM on a large GPU (130+ SMs). Fixed, so the summation order, and the bits of the
# result, do not depend on the GPU the code runs on. Many more programs make the backward slower:
# the fixed-order reduction over the rows then dominates.
MAX_PARTIALS = 1024
# Rows of the partial buffer summed per step of the reduction kernel (one [64, 64] tile).
REDUCE_BLOCK_G = 64
REDUCE_BLOCK_C = 64


# --------------------------------------------------------------------------------- device helpers


@triton.jit
def _pixel_offsets(p, HW, W, s_n, s_h, s_w, LINEAR: tl.constexpr):
    """Element offset of channel 0 of pixel ``p`` (int64 vector) in a tensor with strides s_*.

    LINEAR: the pixel strides collapse (see module docstring) and ``s_w`` is the pixel stride.
    """
    if LINEAR:
        off = p * s_w
    else:
        n = p // HW
        hw = p - n * HW
        h = hw // W
        w = hw - h * W
        off = n * s_n + h * s_h + w * s_w
    return off


@triton.jit
def _mean_div(total, n, inv_n):
    """total / n, for the per-pixel means over C. fp32: ``total * inv_n`` with inv_n = 1/n from
    the host (exact for n = 1; Triton's fp32 ``/`` is an approximate division whose error, for
    C = 1, makes x - mean nonzero, which rstd = 1/sqrt(eps) = 1000 then amplifies; the IEEE
    division compiles to a subroutine call that costs a stack frame). fp64: true division."""
    if total.dtype == tl.float64:
        res = total / n
    else:
        res = total * inv_n
    return res


@triton.jit
def _chan_combine(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Merge the (mean, sum of squared deviations) of two disjoint sets of n_a and n_b values.

    Chan, Golub, LeVeque (1979): stable for any ratio n_b / n_a; n_a = 0 gives (mean_b, m2_b).
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return mean, m2


@triton.jit
def _tile_stats(x, mask, C, inv_C, eps):
    """A whole row of C channels held in one tile (x in the compute dtype, 0 where masked):
    (x - mean, 0 where masked; mean; rstd), two-pass: the mean, then the mean of squared deviations."""
    mean = _mean_div(tl.sum(x, axis=1), C, inv_C)
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(_mean_div(tl.sum(xc * xc, axis=1), C, inv_C) + eps)
    return xc, mean, rstd


@triton.jit
def _chunk_stats(mean, m2, x, mask, c0, C, BLOCK_C: tl.constexpr):
    """(mean, m2) of the channels before chunk c0 merged with those of the chunk x (0 where
    masked), Chan's formula; all chunks but the last are full, so the count before c0 is c0."""
    acc_t = mean.dtype
    n_b = tl.cast(tl.minimum(C - c0, BLOCK_C), acc_t)
    mean_b = tl.sum(x, axis=1) / n_b
    d = tl.where(mask, x - mean_b[:, None], 0.0)
    return _chan_combine(mean, m2, tl.cast(c0, acc_t), mean_b, tl.sum(d * d, axis=1), n_b)


@triton.jit
def _affine(xc, rstd, w_ptr, b_ptr, cols, c_mask):
    """xc * rstd * w + b with the chunk's LayerNorm weight and bias (xc = x - mean), in xc's dtype."""
    acc_t = xc.dtype
    wt = tl.load(w_ptr + cols, mask=c_mask, other=0.0).to(acc_t)
    bs = tl.load(b_ptr + cols, mask=c_mask, other=0.0).to(acc_t)
    return xc * rstd[:, None] * wt[None, :] + bs[None, :]


@triton.jit
def _ln_dx(xhat, wdy, c1, c2, rstd):
    """The LayerNorm input gradient rstd * (w*gy - xhat * c1 - c2), c1 = mean_C(xhat * w*gy),
    c2 = mean_C(w*gy)."""
    return (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]


@triton.jit
def _ln_bwd_chunk(z, gy_ptr, g_row, w_ptr, cols, c_mask, mask, mean, rstd, sg_c, acc_t: tl.constexpr):
    """One channel chunk of the LayerNorm backward (the chunked, C > one tile, paths): loads the
    incoming gradient gy and the weight w of the chunk and returns (zhat, w * gy, gy) in acc_t,
    zhat = (z - mean) * rstd and 0 where masked. g_row: gy's pixel offsets of the tile's rows."""
    gy = tl.load(gy_ptr + (g_row[:, None] + cols.to(tl.int64)[None, :] * sg_c), mask=mask, other=0.0).to(acc_t)
    wt = tl.load(w_ptr + cols, mask=c_mask, other=0.0).to(acc_t)
    zhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
    return zhat, gy * wt[None, :], gy


@triton.jit
def _ln_bwd_x_chunk(c0, cols0, p_mask, x_ptr, x_row, sx_c, gy_ptr, g_row, w_ptr, mean, rstd, sg_c, C,
                    acc_t: tl.constexpr):
    """The channel chunk starting at c0 for both passes of the chunked LayerNorm backward: loads x
    and hands it to :func:`_ln_bwd_chunk`. Returns (cols, c_mask, mask, xhat, w * gy, gy)."""
    cols = c0 + cols0
    c_mask = cols < C
    mask = p_mask[:, None] & c_mask[None, :]
    x = tl.load(x_ptr + (x_row[:, None] + cols.to(tl.int64)[None, :] * sx_c), mask=mask, other=0.0).to(acc_t)
    xhat, wdy, gy = _ln_bwd_chunk(x, gy_ptr, g_row, w_ptr, cols, c_mask, mask, mean, rstd, sg_c, acc_t)
    return cols, c_mask, mask, xhat, wdy, gy


@triton.jit
def _add_to_partial(ptrs, value, mask):
    """ptrs += value: read-modify-write of a program's own partial-sum row (no other program
    touches it, so no atomics; the caller orders it against the next tile with a barrier)."""
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def _param_grad_reduce_kernel(
    part_ptr,  # (G, R*C) fp32/fp64 partial gradients: row g = program g's R per-channel partial sums
    out0_ptr,  # (C,) sum of column block 0 of the rows (e.g. the weight gradient), output dtype
    out1_ptr,  # (C,) sum of column block 1 (e.g. the bias gradient)
    out2_ptr,  # (C,) sum of column block 2 when R == 3 (unused otherwise)
    G, C,
    R: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Fixed-order sum over the G rows: [BLOCK_G, BLOCK_C] tiles, each summed by a tree of fixed
    shape, accumulated in row order. Deterministic for a given (G, C); grid (cdiv(C, BLOCK_C), R)."""
    acc_t: tl.constexpr = part_ptr.dtype.element_ty
    r = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cols < C
    rows0 = tl.arange(0, BLOCK_G)
    acc = tl.zeros([BLOCK_C], dtype=acc_t)
    for g0 in range(0, G, BLOCK_G):
        rows = g0 + rows0
        mask = (rows < G)[:, None] & c_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * (R * C) + (r * C + cols)[None, :]
        acc += tl.sum(tl.load(part_ptr + offs, mask=mask, other=0.0), axis=0)
    res = acc.to(out0_ptr.dtype.element_ty)
    if r == 0:
        tl.store(out0_ptr + cols, res, mask=c_mask)
    elif r == 1:
        tl.store(out1_ptr + cols, res, mask=c_mask)
    else:
        tl.store(out2_ptr + cols, res, mask=c_mask)


# --------------------------------------------------------------------------------- kernels


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # input (N, C, H, W), any strides (s_n, s_c, s_h, s_w below)
    w_ptr,  # (C,) LayerNorm weight, contiguous
    b_ptr,  # (C,) LayerNorm bias, contiguous
    y_ptr,  # output (N, C, H, W) channels_last: element (p, c) at p*C + c
    mean_ptr,  # (N*H*W,) fp32 (fp64 for fp64 x) per-pixel mean; its dtype is the compute dtype
    rstd_ptr,  # (N*H*W,) per-pixel 1 / sqrt(var + eps)
    NHW, C, HW, W,
    s_n, s_c, s_h, s_w,  # strides of x, in elements
    eps,
    inv_C,  # 1 / C (fp32), see _mean_div
    X_LINEAR: tl.constexpr,  # pixel strides of x collapse: pixel offset = p * s_w
    SINGLE_TILE: tl.constexpr,  # C <= BLOCK_C: the whole row stays in registers
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    acc_t = mean_ptr.dtype.element_ty
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < NHW
    x_row = _pixel_offsets(p, HW, W, s_n, s_h, s_w, X_LINEAR)
    y_row = p * C
    cols0 = tl.arange(0, BLOCK_C)
    if SINGLE_TILE:
        c_mask = cols0 < C
        mask = p_mask[:, None] & c_mask[None, :]
        x = tl.load(x_ptr + (x_row[:, None] + cols0.to(tl.int64)[None, :] * s_c), mask=mask, other=0.0).to(acc_t)
        xc, mean, rstd = _tile_stats(x, mask, C, inv_C, eps)
        y = _affine(xc, rstd, w_ptr, b_ptr, cols0, c_mask)
        tl.store(y_ptr + (y_row[:, None] + cols0[None, :]), y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # Pass 1: chunk statistics merged with Chan's formula (all chunks but the last are full,
        # so the running count before chunk c0 is c0 itself).
        mean = tl.zeros([BLOCK_P], dtype=acc_t)
        m2 = tl.zeros([BLOCK_P], dtype=acc_t)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            mask = p_mask[:, None] & (cols < C)[None, :]
            x = tl.load(x_ptr + (x_row[:, None] + cols.to(tl.int64)[None, :] * s_c), mask=mask,
                        other=0.0).to(acc_t)
            mean, m2 = _chunk_stats(mean, m2, x, mask, c0, C, BLOCK_C)
        rstd = 1.0 / tl.sqrt(_mean_div(m2, C, inv_C) + eps)
        # Pass 2: normalize (this re-read of x hits L2).
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + cols0
            c_mask = cols < C
            mask = p_mask[:, None] & c_mask[None, :]
            x = tl.load(x_ptr + (x_row[:, None] + cols.to(tl.int64)[None, :] * s_c), mask=mask,
                        other=0.0).to(acc_t)
            y = _affine(x - mean[:, None], rstd, w_ptr, b_ptr, cols, c_mask)
            tl.store(y_ptr + (y_row[:, None] + cols[None, :]), y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + p, mean, mask=p_mask)
    tl.store(rstd_ptr + p, rstd, mask=p_mask)


@triton.jit
def _layer_norm_bwd_kernel(
    gy_ptr,  # incoming gradient (N, C, H, W), any strides incl. expanded stride 0 (sg_* below)
    x_ptr,  # forward input (N, C, H, W), any strides (sx_* below)
    w_ptr,  # (C,) LayerNorm weight
    mean_ptr,  # (N*H*W,) saved mean (compute dtype)
    rstd_ptr,  # (N*H*W,) saved 1 / sqrt(var + eps)
    gx_ptr,  # output grad_x (N, C, H, W) channels_last: element (p, c) at p*C + c
    part_ptr,  # (G, 2*C) partial sums, compute dtype: row pid = [weight grad (C), bias grad (C)] of
               # this program's pixels, owned by this program alone
    NHW, C, HW, W,
    sx_n, sx_c, sx_h, sx_w,
    sg_n, sg_c, sg_h, sg_w,
    G,  # number of programs
    TILES_PER_PROG,  # tiles handled by each program: pid, pid + G, ...
    inv_C,  # 1 / C (fp32), see _mean_div
    X_LINEAR: tl.constexpr, GY_LINEAR: tl.constexpr,
    SINGLE_TILE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_x = rstd * (w*gy - xhat * mean_c(xhat*w*gy) - mean_c(w*gy)), xhat = (x - mean) * rstd;
    per-program partial sums of gy*xhat (weight) and gy (bias) over its pixels."""
    acc_t = mean_ptr.dtype.element_ty
    pid = tl.program_id(0)
    cols0 = tl.arange(0, BLOCK_C)
    part_row = pid.to(tl.int64) * (2 * C)
    if SINGLE_TILE:
        c_mask0 = cols0 < C
        wt0 = tl.load(w_ptr + cols0, mask=c_mask0, other=0.0).to(acc_t)
        # Tile-shaped accumulators: each thread adds its own elements, and the sum over the pixels
        # (across threads and warps, through shared memory) happens once, after the loop, instead
        # of once per tile (that cross-warp reduction cost 16 barriers per tile at C = 96, sm_90).
        acc_w = tl.zeros([BLOCK_P, BLOCK_C], dtype=acc_t)
        acc_b = tl.zeros([BLOCK_P, BLOCK_C], dtype=acc_t)
    for i in range(TILES_PER_PROG):
        p = (pid + i * G).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_mask = p < NHW
        x_row = _pixel_offsets(p, HW, W, sx_n, sx_h, sx_w, X_LINEAR)
        g_row = _pixel_offsets(p, HW, W, sg_n, sg_h, sg_w, GY_LINEAR)
        mean = tl.load(mean_ptr + p, mask=p_mask, other=0.0)
        rstd = tl.load(rstd_ptr + p, mask=p_mask, other=0.0)
        if SINGLE_TILE:
            mask = p_mask[:, None] & c_mask0[None, :]
            c64 = cols0.to(tl.int64)[None, :]
            x = tl.load(x_ptr + (x_row[:, None] + c64 * sx_c), mask=mask, other=0.0).to(acc_t)
            gy = tl.load(gy_ptr + (g_row[:, None] + c64 * sg_c), mask=mask, other=0.0).to(acc_t)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            wdy = gy * wt0[None, :]
            c1 = _mean_div(tl.sum(xhat * wdy, axis=1), C, inv_C)
            c2 = _mean_div(tl.sum(wdy, axis=1), C, inv_C)
            gx = _ln_dx(xhat, wdy, c1, c2, rstd)
            tl.store(gx_ptr + (p[:, None] * C + cols0[None, :]), gx.to(gx_ptr.dtype.element_ty), mask=mask)
            acc_w += gy * xhat
            acc_b += gy
        else:
            # Pass 1 over the channel chunks: the two row means the input gradient needs.
            c1 = tl.zeros([BLOCK_P], dtype=acc_t)
            c2 = tl.zeros([BLOCK_P], dtype=acc_t)
            for c0 in range(0, C, BLOCK_C):
                cols, c_mask, mask, xhat, wdy, gy = _ln_bwd_x_chunk(c0, cols0, p_mask, x_ptr, x_row, sx_c, gy_ptr,
                                                                    g_row, w_ptr, mean, rstd, sg_c, C, acc_t)
                c1 += tl.sum(xhat * wdy, axis=1)
                c2 += tl.sum(wdy, axis=1)
            c1 = _mean_div(c1, C, inv_C)
            c2 = _mean_div(c2, C, inv_C)
            # Pass 2 (re-reads hit L2): grad_x, and the parameter partials added into this
            # program's own row of the partial buffers.
            for c0 in range(0, C, BLOCK_C):
                cols, c_mask, mask, xhat, wdy, gy = _ln_bwd_x_chunk(c0, cols0, p_mask, x_ptr, x_row, sx_c, gy_ptr,
                                                                    g_row, w_ptr, mean, rstd, sg_c, C, acc_t)
                gx = _ln_dx(xhat, wdy, c1, c2, rstd)
                tl.store(gx_ptr + (p[:, None] * C + cols[None, :]), gx.to(gx_ptr.dtype.element_ty), mask=mask)
                _add_to_partial(part_ptr + part_row + cols, tl.sum(gy * xhat, axis=0), c_mask)
                _add_to_partial(part_ptr + part_row + C + cols, tl.sum(gy, axis=0), c_mask)
            # The thread that re-reads a partial element in the next tile need not be the one
            # that wrote it: order the global writes before the next iteration's reads.
            tl.debug_barrier()
    if SINGLE_TILE:
        tl.store(part_ptr + part_row + cols0, tl.sum(acc_w, axis=0), mask=c_mask0)
        tl.store(part_ptr + part_row + C + cols0, tl.sum(acc_b, axis=0), mask=c_mask0)


# --------------------------------------------------------------------------------- host side


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return stats_dtype(dtype)


def pixel_strides(t: torch.Tensor) -> tuple[bool, int, int, int, int]:
    """(linear, s_n, s_c, s_h, s_w) for an (N, C, H, W) tensor.

    ``linear``: the offset of pixel p = (n, h, w) is ``p * s`` for one stride s (contiguous NCHW,
    channels_last, expanded stride-0); then s is returned as s_w. Strides of size-1 dims are
    irrelevant and ignored.
    """
    n, _, h, w = t.shape
    s_n, s_c, s_h, s_w = t.stride()
    s = s_w if w > 1 else (s_h if h > 1 else s_n)
    linear = (w == 1 or s_w == s) and (h == 1 or s_h == w * s) and (n == 1 or s_n == h * w * s)
    if linear:
        return True, s_n, s_c, s_h, s
    return False, s_n, s_c, s_h, s_w


def ln_blocks(c: int, dtype: torch.dtype, tile: int) -> tuple[int, int, bool, int]:
    """(BLOCK_P, BLOCK_C, SINGLE_TILE, num_warps) for C channels of ``dtype``; a fixed table."""
    max_c = MAX_BLOCK_C_FP64 if dtype == torch.float64 else MAX_BLOCK_C
    if dtype == torch.float64:
        tile //= 2
    block_c = min(next_power_of_2(c), max_c)
    block_p = max(1, tile // block_c)
    return block_p, block_c, c <= block_c, NUM_WARPS


def num_partials(num_tiles: int) -> int:
    """Programs of a backward kernel (rows of its partial buffer): depends on the shape only."""
    return max(1, min(num_tiles, MAX_PARTIALS))


def reduce_partials(part: torch.Tensor, r: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Sum a (G, r*C) partial buffer over G in a fixed order into r separate (C,) tensors of ``dtype``."""
    g, c = part.shape[0], part.shape[1] // r
    outs = [torch.empty(c, dtype=dtype, device=part.device) for _ in range(r)]
    _param_grad_reduce_kernel[(cdiv(c, REDUCE_BLOCK_C), r)](
        part, outs[0], outs[1], outs[-1], g, c, R=r, BLOCK_G=REDUCE_BLOCK_G, BLOCK_C=REDUCE_BLOCK_C, num_warps=4)
    return outs


def layer_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over dim 1 of x (N, C, H, W), any strides. Returns (y channels_last, mean, rstd),
    mean/rstd (N, H, W) contiguous in ``layout.stats_dtype(x.dtype)``."""
    n, c, h, w = x.shape
    y = empty_channels_last(x.shape, x.dtype, x.device)
    mean = torch.empty(stats_shape(x.shape), dtype=stats_dtype(x.dtype), device=x.device)
    rstd = torch.empty_like(mean)
    linear, s_n, s_c, s_h, s_w = pixel_strides(x)
    block_p, block_c, single, num_warps = ln_blocks(c, x.dtype, TILE_FWD)
    nhw = n * h * w
    _layer_norm_fwd_kernel[(cdiv(nhw, block_p),)](
        x, weight, bias, y, mean, rstd, nhw, c, h * w, w, s_n, s_c, s_h, s_w, float(eps), 1.0 / c,
        X_LINEAR=linear, SINGLE_TILE=single, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    return y, mean, rstd


def layer_norm_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of LayerNorm over dim 1: (grad_x channels_last, grad_weight (C,), grad_bias (C,)),
    the parameter gradients in weight.dtype and deterministic."""
    n, c, h, w = x.shape
    nhw = n * h * w
    gx = empty_channels_last(x.shape, x.dtype, x.device)
    acc = _compute_dtype(x.dtype)
    block_p, block_c, single, num_warps = ln_blocks(c, x.dtype, TILE_BWD)
    num_tiles = cdiv(nhw, block_p)
    g = num_partials(num_tiles)
    # The chunked path read-modify-writes its partial row, so it starts from zeros.
    part = (torch.empty if single else torch.zeros)((g, 2 * c), dtype=acc, device=x.device)
    x_lin, sx_n, sx_c, sx_h, sx_w = pixel_strides(x)
    g_lin, sg_n, sg_c, sg_h, sg_w = pixel_strides(grad_y)
    _layer_norm_bwd_kernel[(g,)](
        grad_y, x, weight, mean.contiguous(), rstd.contiguous(), gx, part, nhw, c, h * w, w,
        sx_n, sx_c, sx_h, sx_w, sg_n, sg_c, sg_h, sg_w, g, cdiv(num_tiles, g), 1.0 / c,
        X_LINEAR=x_lin, GY_LINEAR=g_lin, SINGLE_TILE=single, BLOCK_P=block_p, BLOCK_C=block_c,
        num_warps=num_warps)
    gw, gb = reduce_partials(part, 2, weight.dtype)
    return gx, gw, gb


# --------------------------------------------------------------------------------- AOT configs

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def divisibility_attrs(kernel, signature: dict, divisible: tuple) -> dict:
    """``tt.divisibility`` marks as Triton's JIT sets them at run time: every pointer (16-byte
    aligned by PyTorch's allocator) and the integer arguments named in ``divisible`` (multiples of
    16 at the ConvNeXt shapes a config stands for), so the AOT compile sees the same vectorization."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
            if signature.get(name, "constexpr").startswith("*") or name in divisible}


def aot_configs(stages) -> list[dict]:
    """Every kernel at the configurations the launchers pick for the channel counts of ``stages``
    ((C, H, W) tuples) (channels_last x,
    contiguous weights; bf16 and fp32), for an ahead-of-time compile check (registers, spills).

    Each entry: ``kernel`` (the @triton.jit function), ``signature`` (argument name -> Triton type,
    constexprs included as "constexpr"), ``constexprs``, ``attrs`` (the divisibility marks the JIT
    would set, for ``ASTSource(..., attrs=attrs)``), ``num_warps``, ``name``. ``s_c`` / ``sx_c`` of
    channels_last tensors is 1, which Triton specializes as a constant at run time, as here.
    """
    configs = []
    for dtype in (torch.bfloat16, torch.float32):
        t = _TRITON_DTYPE[dtype]
        a = _TRITON_DTYPE[_compute_dtype(dtype)]
        for c, _, _ in stages:
            block_p, block_c, single, nw = ln_blocks(c, dtype, TILE_FWD)
            const = {"s_c": 1, "X_LINEAR": True, "SINGLE_TILE": single, "BLOCK_P": block_p, "BLOCK_C": block_c}
            sig = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "b_ptr": f"*{t}", "y_ptr": f"*{t}", "mean_ptr": f"*{a}",
                   "rstd_ptr": f"*{a}", "NHW": "i32", "C": "i32", "HW": "i32", "W": "i32", "s_n": "i32",
                   "s_c": "constexpr", "s_h": "i32", "s_w": "i32", "eps": "fp32",
                   "inv_C": "fp32"}
            sig.update({k: "constexpr" for k in const if k != "s_c"})
            configs.append({"kernel": _layer_norm_fwd_kernel, "signature": sig, "constexprs": const,
                            "attrs": divisibility_attrs(_layer_norm_fwd_kernel, sig, ("C", "s_n", "s_h", "s_w")),
                            "num_warps": nw, "name": f"layer_norm_fwd_{t}_C{c}"})
            block_p, block_c, single, nw = ln_blocks(c, dtype, TILE_BWD)
            const = {"sx_c": 1, "sg_c": 1, "X_LINEAR": True, "GY_LINEAR": True, "SINGLE_TILE": single,
                     "BLOCK_P": block_p, "BLOCK_C": block_c}
            sig = {"gy_ptr": f"*{t}", "x_ptr": f"*{t}", "w_ptr": f"*{t}", "mean_ptr": f"*{a}", "rstd_ptr": f"*{a}",
                   "gx_ptr": f"*{t}", "part_ptr": f"*{a}", "NHW": "i32", "C": "i32", "HW": "i32",
                   "W": "i32", "sx_n": "i32", "sx_c": "constexpr", "sx_h": "i32", "sx_w": "i32", "sg_n": "i32",
                   "sg_c": "constexpr", "sg_h": "i32", "sg_w": "i32", "G": "i32", "TILES_PER_PROG": "i32",
                   "inv_C": "fp32"}
            sig.update({k: "constexpr" for k in const if not k.endswith("_c")})
            configs.append({"kernel": _layer_norm_bwd_kernel, "signature": sig, "constexprs": const,
                            "attrs": divisibility_attrs(_layer_norm_bwd_kernel, sig, (
                                "C", "sx_n", "sx_h", "sx_w", "sg_n", "sg_h", "sg_w")),
                            "num_warps": nw, "name": f"layer_norm_bwd_{t}_C{c}"})
        for r in (2, 3):
            const = {"R": r, "BLOCK_G": REDUCE_BLOCK_G, "BLOCK_C": REDUCE_BLOCK_C}
            sig = {"part_ptr": f"*{a}", "out0_ptr": f"*{t}", "out1_ptr": f"*{t}", "out2_ptr": f"*{t}", "G": "i32",
                   "C": "i32", "R": "constexpr", "BLOCK_G": "constexpr", "BLOCK_C": "constexpr"}
            configs.append({"kernel": _param_grad_reduce_kernel, "signature": sig, "constexprs": const,
                            "attrs": divisibility_attrs(_param_grad_reduce_kernel, sig, ("C",)), "num_warps": 4,
                            "name": f"layer_norm_param_grad_reduce_{t}_R{r}"})
    return configs
