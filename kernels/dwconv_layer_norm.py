"""Fused depthwise KxK convolution + channels-first LayerNorm in Triton (the first half of a ConvNeXt block).

In ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) every block starts with a 7x7
depthwise convolution followed by a LayerNorm over channels. Eager PyTorch writes the conv output to
HBM, reads it back (permute + LayerNorm) and, for training, keeps it alive until the backward pass.
Here:

* forward: one kernel computes the conv output of a tile of pixels x all channels in fp32 registers,
  normalizes it and writes only y (plus per-pixel mean/rstd): the conv output never reaches HBM;
* backward: one kernel *recomputes* the conv output from x (K*K loads per element, served from L1/L2,
  instead of storing an activation the size of x for the whole forward-backward interval), applies
  the LayerNorm backward to get the gradient of the conv output, and the depthwise-conv backward of
  ``kernels/depthwise_conv.py`` takes it from there.

Tiling. A program handles ``BLOCK_W`` consecutive pixels of one image row (n, h) and ``BLOCK_C``
channels; neighbouring programs take neighbouring column blocks of the same row, so the K input rows
they share stay in L1/L2. Rows keep (n, h) scalar: no per-element integer division, and any input
strides (contiguous NCHW, channels_last, sliced) are handled by the same code. The kernel-row loop
(kh) is a runtime loop and the kernel-column loop (kw) is unrolled, so a 7x7 kernel is 7 loop
iterations of 7 independent loads, and K = 31 does not blow up the code.

Fast path. For K <= 7, C <= 1024 and fp16/bf16/fp32, ``_dwconv_ln_fwd_px_kernel`` and
``_dwconv_ln_bwd_px_kernel`` replace the tile kernels: each thread owns PW consecutive output pixels
x 4 channels (2 in the backward), so per input row a loaded input column and a weight vector serve
PW outputs (see ``fused_px_config``); both compute the conv with the same code (``_conv_strip``).

NaN / Inf weights: the conv multiplies the zero padding like the real pixels, as float64
``F.conv2d`` does (0 * NaN = 0 * Inf = NaN, ``kernels/depthwise_conv.py``), so a NaN or Inf tap of
channel c gives a non-finite conv value of c at every pixel and the LayerNorm makes those pixels NaN
in every channel, as the reference does; the backward recomputes the conv with the same code.

Channel chunks. When C exceeds one register tile (C > 1024, ConvNeXt-V2-H's 1408 / 2816), the forward
pass loops over channel chunks, merging chunk mean / sum of squared deviations with Chan's parallel
formula, then loops again to normalize. The second loop *recomputes* the conv chunk rather than
writing the unnormalized conv output into y and re-reading it: that keeps the conv output in fp32
(no rounding to bf16/fp16 before normalization, no fp16 overflow of an unnormalized value), needs no
barrier between a store by one thread and a load by another, and costs only cached reads (those
layers have 7x7 or 14x14 spatial maps, so x is L2-resident). The backward pass does the same.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .layout import empty_channels_last, stats_dtype, stats_shape

from .depthwise_conv import dwconv_backward
from .host_math import cdiv, next_power_of_2
from .joined_sums import joined_sums, slot8, split8
from .layer_norm import (_TRITON_DTYPE, MAX_BLOCK_C, MAX_BLOCK_C_FP64, NUM_WARPS, TILE_BWD, TILE_FWD,
                         _add_to_partial, _affine, _chunk_stats, _ln_bwd_chunk, _ln_dx, _mean_div, _tile_stats,
                         divisibility_attrs, num_partials, reduce_partials)

__all__ = ["dwconv_ln_forward", "dwconv_ln_backward", "aot_configs"]

# Elements of the fp32 conv accumulator tile (BLOCK_W * BLOCK_C) for 16-bit input, 4 warps. The
# forward keeps one accumulator plus the in-flight tap loads: the LayerNorm's TILE_FWD (4096) for
# narrow layers (C <= 256: many pixels per program, so neighbouring taps hit L1), 1024 for wide
# ones; the backward also holds the incoming gradient and zhat: the LayerNorm's TILE_BWD (2048),
# 1024 from C > 512. The narrow tiles and the warps are imported from layer_norm.py, their one
# home; each module binds its own name, so the launcher-constant sweep still varies them per
# launcher. Timed against 512..4096 and 8 warps at ConvNeXt-T shapes (docs/performance.md,
# "Kernel constants"); the wide tiles are the largest that compile without spills for both sm_90
# and sm_80.
TILE_FWD_WIDE = 1024
TILE_BWD_WIDE = 1024


@triton.jit
def _conv_tile(
    x_ptr,  # input (N, C, H, W), strides s_c, s_h, s_w; x_base is the offset of image n
    wt_ptr,  # (K*K, C) depthwise weight, transposed so the C values of a tap are contiguous
    db_ptr,  # (C,) depthwise bias (unused when not HAS_BIAS)
    x_base, h, w, cols, c_mask, H, W, C, s_c, s_h, s_w,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, acc_t: tl.constexpr,
):
    """Depthwise conv output (padding K//2, stride 1) at pixels (h, w[:]) x channels cols, in acc_t."""
    PAD: tl.constexpr = K // 2
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=acc_t)
    # One [BLOCK_W, BLOCK_C] pointer tile at the centre tap of row 0; every tap is a scalar offset
    # from it, so the per-tap address work is one scalar multiply-add, not a tile of int64 math.
    ptrs = x_ptr + (x_base + w.to(tl.int64)[:, None] * s_w + cols.to(tl.int64)[None, :] * s_c)
    # Weights and bias are loaded as full [BLOCK_W, BLOCK_C] tiles (each row the same C values,
    # served by L1) so that they get the x tile's register layout. A [BLOCK_C] vector load gets a
    # layout of its own, and converting it to the tile's goes through shared memory with two
    # barriers, K*K times per tile (seen in the sm_90 SASS: ~40 barriers per tile at C = 96).
    col_tile = cols[None, :] + 0 * w[:, None]
    c_mask_tile = c_mask[None, :] & (col_tile >= 0)
    for kh in range(K):
        ih = h + kh - PAD
        row_ok = (ih >= 0) & (ih < H)
        row_ptrs = ptrs + ih.to(tl.int64) * s_h
        for kw in tl.static_range(K):
            iw = w + (kw - PAD)
            m = (row_ok & (iw >= 0) & (iw < W))[:, None] & c_mask[None, :]
            xv = tl.load(row_ptrs + (kw - PAD) * s_w, mask=m, other=0.0)
            wv = tl.load(wt_ptr + (kh * K + kw) * C + col_tile, mask=c_mask_tile, other=0.0)
            acc += xv.to(acc_t) * wv.to(acc_t)
    if HAS_BIAS:
        acc += tl.load(db_ptr + col_tile, mask=c_mask_tile, other=0.0).to(acc_t)
    return acc


@triton.jit
def _dwconv_ln_fwd_kernel(
    x_ptr,  # input (N, C, H, W), any strides (s_n, s_c, s_h, s_w)
    wt_ptr,  # (K*K, C) depthwise weight, tap-major (transposed by the launcher)
    db_ptr,  # (C,) depthwise bias, or any pointer when not HAS_BIAS
    lw_ptr,  # (C,) LayerNorm weight
    lb_ptr,  # (C,) LayerNorm bias
    y_ptr,  # output (N, C, H, W) channels_last: element (p, c) at p*C + c, p = (n*H + h)*W + w
    mean_ptr,  # (N*H*W,) per-pixel mean of the conv output; its dtype (fp32/fp64) is the compute dtype
    rstd_ptr,  # (N*H*W,) per-pixel 1 / sqrt(var + eps)
    H, W, C, NUM_WB,  # NUM_WB: column blocks per image row
    s_n, s_c, s_h, s_w,
    eps,
    inv_C,  # 1 / C (fp32), see _mean_div
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SINGLE_TILE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    pid = tl.program_id(0)
    row = pid // NUM_WB  # n*H + h; column blocks of one row are neighbouring programs
    n = row // H
    h = row - n * H
    w = (pid - row * NUM_WB) * BLOCK_W + tl.arange(0, BLOCK_W)
    w_mask = w < W
    x_base = n.to(tl.int64) * s_n
    p = row.to(tl.int64) * W + w
    cols0 = tl.arange(0, BLOCK_C)
    if SINGLE_TILE:
        c_mask = cols0 < C
        mask = w_mask[:, None] & c_mask[None, :]
        z = _conv_tile(x_ptr, wt_ptr, db_ptr, x_base, h, w, cols0, c_mask, H, W, C, s_c, s_h, s_w,
                       K, HAS_BIAS, BLOCK_W, BLOCK_C, acc_t)
        # Masked lanes of z are exactly 0 (masked loads, masked bias), so the plain sum is the row sum.
        zc, mean, rstd = _tile_stats(z, mask, C, inv_C, eps)
        y = _affine(zc, rstd, lw_ptr, lb_ptr, cols0, c_mask)
        tl.store(y_ptr + (p[:, None] * C + cols0[None, :]), y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        mean = tl.zeros([BLOCK_W], dtype=acc_t)
        m2 = tl.zeros([BLOCK_W], dtype=acc_t)
        for c0 in range(0, C, BLOCK_C):
            cols, c_mask, mask, z = _conv_chunk(c0, cols0, w_mask, True, x_ptr, wt_ptr, db_ptr, x_base, h, w, H, W,
                                                C, s_c, s_h, s_w, K, HAS_BIAS, BLOCK_W, BLOCK_C, acc_t)
            mean, m2 = _chunk_stats(mean, m2, z, mask, c0, C, BLOCK_C)
        rstd = 1.0 / tl.sqrt(_mean_div(m2, C, inv_C) + eps)
        for c0 in range(0, C, BLOCK_C):
            cols, c_mask, mask, z = _conv_chunk(c0, cols0, w_mask, True, x_ptr, wt_ptr, db_ptr, x_base, h, w, H, W,
                                                C, s_c, s_h, s_w, K, HAS_BIAS, BLOCK_W, BLOCK_C, acc_t)
            y = _affine(z - mean[:, None], rstd, lw_ptr, lb_ptr, cols, c_mask)
            tl.store(y_ptr + (p[:, None] * C + cols[None, :]), y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + p, mean, mask=w_mask)
    tl.store(rstd_ptr + p, rstd, mask=w_mask)


@triton.jit
def _conv_chunk(c0, cols0, w_mask, conv_ok, x_ptr, wt_ptr, db_ptr, x_base, h, w, H, W, C, s_c, s_h, s_w,
                K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                acc_t: tl.constexpr):
    """The channel chunk starting at c0 for every pass of the chunked (C > one tile) paths: its
    channels, masks, and the conv output z (zero where the chunk is masked or ``conv_ok`` is false:
    the backward's grid-padding rows). Returns (cols, c_mask, mask, z)."""
    cols = c0 + cols0
    c_mask = cols < C
    mask = w_mask[:, None] & c_mask[None, :]
    z = _conv_tile(x_ptr, wt_ptr, db_ptr, x_base, h, w, cols, c_mask & conv_ok, H, W, C, s_c, s_h, s_w,
                   K, HAS_BIAS, BLOCK_W, BLOCK_C, acc_t)
    return cols, c_mask, mask, z


@triton.jit
def _bias_and_weight_tiles(db_ptr, lw_ptr, c_tile, c_mask_tile, HAS_BIAS: tl.constexpr, BLOCK_G: tl.constexpr,
                           BLOCK_C: tl.constexpr, acc_t: tl.constexpr):
    """The conv bias (zeros without HAS_BIAS) and the LayerNorm weight as [BLOCK_G, BLOCK_C] tiles
    of the px kernels, in acc_t."""
    if HAS_BIAS:
        bias = tl.load(db_ptr + c_tile, mask=c_mask_tile, other=0.0).to(acc_t)
    else:
        bias = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_t)
    lw = tl.load(lw_ptr + c_tile, mask=c_mask_tile, other=0.0).to(acc_t)
    return bias, lw


@triton.jit
def _conv_strip(
    x_img,  # pointer to image n of the input; element (c, h, w) at c*s_c + h*s_h + w*s_w
    w_ptr,  # (K*K, BLOCK_C) weights in the compute dtype, tap-major: tap t of channel c at t*BLOCK_C + c;
    # columns C .. BLOCK_C - 1 uninitialized (_tap_major(w, BLOCK_C))
    h, g0, c, c_mask,
    valid,  # scalar: False for a program's slot past the last strip (then nothing is loaded)
    H, W, s_c, s_h, s_w,
    K: tl.constexpr, PW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, acc_t: tl.constexpr,
):
    """Depthwise conv (no bias) of output row h at columns g0[:, None] + 0 .. PW-1, channels c: a tuple
    of PW [BLOCK_G, BLOCK_C] tiles in acc_t; lanes c >= C hold garbage (see the weight tile below).
    Per input row kh (a runtime loop) a thread loads the PW + K - 1 input columns its group needs
    once, converts each once, and loads each of the K weight vectors of the row once, for PW
    outputs; all K*PW*K multiply-adds of the row are unrolled (see _dwconv_ln_fwd_px_kernel)."""
    P: tl.constexpr = K // 2
    # Weight tile [BLOCK_G, BLOCK_C] (the same vector for every group, loaded as a 2-D tile so it gets
    # the accumulators' layout: no layout conversion through shared memory). Unmasked, at immediate
    # offsets (tap stride BLOCK_C): lanes past C read uninitialized weight columns, multiply them by
    # input lanes loaded as 0, and the callers keep those lanes out of every sum with tl.where (a
    # product with garbage may be NaN). On sm_90 masked weight loads cost ~9% more instructions in
    # this loop and a runtime tap stride C ~4%; zero-filling the padding would cost the launcher
    # two more kernels per call at every ConvNeXt width (C is never a power of two).
    w_tile = w_ptr + (g0 * 0)[:, None] + c[None, :]
    zero = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_t)
    accs = ()
    for p in tl.static_range(PW):
        accs = accs + (zero,)
    for kh in range(K):
        ih = h + (kh - P)
        if valid & (ih >= 0) & (ih < H):  # padding rows: no loads, no FMAs (see the else branch)
            x_row = x_img + ih.to(tl.int64) * s_h
            cols = ()
            for j in tl.static_range(PW + K - 1):
                iw = g0 + (j - P)
                m = ((iw >= 0) & (iw < W))[:, None] & c_mask[None, :]
                cols = cols + (tl.load(x_row + (iw[:, None] * s_w + c[None, :] * s_c), mask=m,
                                       other=0.0).to(acc_t),)
            w_row = w_tile + kh * (K * BLOCK_C)
            for kw in tl.static_range(K):
                wv = tl.load(w_row + kw * BLOCK_C)
                b2 = ()
                for p in tl.static_range(PW):
                    b2 = b2 + (accs[p] + cols[p + kw] * wv,)
                accs = b2
        else:
            # A padding row: its K taps multiply zeros, and 0 * w is NaN for a NaN or Inf tap (the
            # column padding gets the same from the masked loads). One sum of 0 * w per channel
            # for the row, then one add per output: K weight loads per padding row and strip.
            pad = zero
            for kw in range(K):
                pad += tl.load(w_tile + kh * (K * BLOCK_C) + kw * BLOCK_C) * 0
            b2 = ()
            for p in tl.static_range(PW):
                b2 = b2 + (accs[p] + pad,)
            accs = b2
    return accs


@triton.jit
def _dwconv_ln_fwd_px_kernel(
    x_ptr,  # input (N, C, H, W), element (n, c, h, w) at n*s_n + c*s_c + h*s_h + w*s_w; the offset of
    # one element within its image, w*s_w + c*s_c, must fit in int32 (the launcher checks)
    w_ptr,  # (K*K, BLOCK_C) depthwise weight in the compute dtype, tap-major: tap t = kh*K + kw of
    # channel c at t*BLOCK_C + c; columns past C uninitialized (_tap_major(dw_weight, BLOCK_C))
    db_ptr,  # (C,) depthwise bias, or any pointer when not HAS_BIAS
    lw_ptr,  # (C,) LayerNorm weight
    lb_ptr,  # (C,) LayerNorm bias
    y_ptr,  # output (N, C, H, W) channels_last: element (p, c) at p*C + c, p = (n*H + h)*W + w
    mean_ptr,  # (N*H*W,) per-pixel mean of the conv output; its dtype (fp32) is the compute dtype
    rstd_ptr,  # (N*H*W,) per-pixel 1 / sqrt(var + eps)
    H, W, C, NUM_WB,  # NUM_WB: strips (BLOCK_G * PW columns) per image row
    s_n, s_c, s_h, s_w,
    eps,
    inv_C,  # 1 / C (fp32), see _mean_div
    K: tl.constexpr, HAS_BIAS: tl.constexpr,
    PW: tl.constexpr,  # consecutive output columns per thread (statically unrolled)
    BLOCK_G: tl.constexpr,  # groups of PW columns per program
    BLOCK_C: tl.constexpr,  # next_power_of_2(C): all channels of a pixel in one program
):
    """Single-tile forward with per-thread column reuse (the idea of depthwise_conv's
    _dwconv_fwd_px_kernel). A program computes one strip of BLOCK_G * PW output pixels of one image
    row (n, h) x all C channels; tensors are [BLOCK_G, BLOCK_C] and thread (g, c-slice) owns output
    columns g*PW .. g*PW + PW - 1 (a tuple of PW accumulators) of its ~4 channels. Per input row kh
    (a runtime loop) a thread loads the PW + K - 1 input columns its group needs once, converts each
    once, and loads each of the K weight vectors of the row once, for PW outputs; all K*PW*K
    multiply-adds of the row are unrolled. Unlike the px kernel the K input rows are not rolled
    (K rolling rows x all C would need K*PW*4 accumulators per thread: spills at C = 768), so an
    input column is converted K times per output row instead of once, but the accumulators (PW per
    channel) and the input columns (PW + K - 1) fit in about 100 registers at every C <= 1024."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    pid = tl.program_id(0)
    row = pid // NUM_WB  # n*H + h; strips of one row are neighbouring programs (shared rows in L1/L2)
    n = row // H
    h = row - n * H
    g0 = ((pid - row * NUM_WB) * BLOCK_G + tl.arange(0, BLOCK_G)) * PW  # first column of each group
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_img = x_ptr + n.to(tl.int64) * s_n
    accs = _conv_strip(x_img, w_ptr, h, g0, c, c_mask, True, H, W, s_c, s_h, s_w, K, PW, BLOCK_G, BLOCK_C, acc_t)

    # Per-channel vectors as [BLOCK_G, BLOCK_C] tiles (repeated addresses, from L1): they arrive in
    # the accumulators' register layout, where 1-D loads needed a conversion through shared memory.
    c_tile = c[None, :] + (g0 * 0)[:, None]
    c_mask_tile = c_tile < C
    bias, lw = _bias_and_weight_tiles(db_ptr, lw_ptr, c_tile, c_mask_tile, HAS_BIAS, BLOCK_G, BLOCK_C, acc_t)
    lb = tl.load(lb_ptr + c_tile, mask=c_mask_tile, other=0.0).to(acc_t)
    # The PW pixels' means in one joined sum, then their variances in another (joined_sums.py), and
    # the statistics stored from the joined form: per-pixel sums and stores each cost a round trip
    # through shared memory, the sums where a pixel's channels span warps (C >= 192).
    zs = ()
    for p in tl.static_range(PW):
        zs = zs + (tl.where(c_mask_tile, accs[p] + bias, 0.0),)  # lanes past C: garbage
    mean8 = _mean_div(joined_sums(zs, PW, 1), C, inv_C)  # [BLOCK_G, 2, 2, 2], pixel p at slot8() == p
    means = split8(mean8)
    zcs = ()
    squares = ()
    for p in tl.static_range(PW):
        zc = tl.where(c_mask[None, :], zs[p] - means[p][:, None], 0.0)
        zcs = zcs + (zc,)
        squares = squares + (zc * zc,)
    rstd8 = 1.0 / tl.sqrt(_mean_div(joined_sums(squares, PW, 1), C, inv_C) + eps)
    rstds = split8(rstd8)
    for p in tl.static_range(PW):
        ow = g0 + p
        pix = row.to(tl.int64) * W + ow
        y = zcs[p] * rstds[p][:, None] * lw + lb
        tl.store(y_ptr + (pix[:, None] * C + c[None, :]), y.to(y_ptr.dtype.element_ty),
                 mask=(ow < W)[:, None] & c_mask[None, :])
    p8 = slot8()[None, :, :, :]
    ow8 = g0[:, None, None, None] + p8
    pix8 = row.to(tl.int64) * W + ow8
    ok8 = (p8 < PW) & (ow8 < W)
    tl.store(mean_ptr + pix8, mean8, mask=ok8)
    tl.store(rstd_ptr + pix8, rstd8, mask=ok8)


@triton.jit
def _dwconv_ln_bwd_px_kernel(
    gy_ptr,  # incoming gradient of y (N, C, H, W), any strides incl. expanded stride 0 (sg_*); the
    # offset of one element within its image row, w*sg_w + c*sg_c, must fit in int32 (launcher checks)
    x_ptr,  # forward input (N, C, H, W), any strides (sx_*), same int32 condition as the forward
    w_ptr,  # (K*K, BLOCK_C) depthwise weight, compute dtype, tap-major, columns past C uninitialized
    db_ptr,  # (C,) depthwise bias, or any pointer when not HAS_BIAS
    lw_ptr,  # (C,) LayerNorm weight
    mean_ptr,  # (N*H*W,) saved mean (compute dtype)
    rstd_ptr,  # (N*H*W,) saved rstd
    gz_ptr,  # output: gradient of the conv output, (N, C, H, W) channels_last, x dtype
    part_ptr,  # (G, 3*C) partial sums (compute dtype): row pid = [LayerNorm-weight grad,
    # LayerNorm-bias grad, conv-bias grad] of this program's pixels
    H, W, C, NUM_WB, NUM_STRIPS,  # NUM_WB strips per image row, NUM_STRIPS = N*H*NUM_WB
    sx_n, sx_c, sx_h, sx_w,
    sg_n, sg_c, sg_h, sg_w,
    G, STRIPS_PER_PROG,  # program pid handles the strips pid, pid + G, ...
    inv_C,  # 1 / C (fp32), see _mean_div
    K: tl.constexpr, HAS_BIAS: tl.constexpr, PW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The backward of _dwconv_ln_fwd_px_kernel up to the conv output's gradient gz: the conv is
    recomputed strip by strip exactly as the forward computes it (_conv_strip), then
    gz = rstd * (lw*gy - zhat*mean_c(zhat*lw*gy) - mean_c(lw*gy)) per pixel, and the partial sums of
    gy*zhat, gy and gz (the fp32 gz, before rounding) accumulate in tile-shaped registers, summed
    over the program's pixels once at the end. Per-channel vectors (bias, LayerNorm weight) are
    loaded as [BLOCK_G, BLOCK_C] tiles (repeated addresses, from L1) so that they arrive in the
    accumulators' register layout. The per-pixel statistics are loaded as [BLOCK_G] vectors and
    broadcast: as tiles, Triton 3.6 gave them a layout of their own and converted them and zhat
    through shared memory three times per pixel (sm_90 loop: 862 instructions, 48 barriers per
    strip at C = 96 bf16; with vectors and the batched sums below, 677 and 3)."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    pid = tl.program_id(0)
    gi = tl.arange(0, BLOCK_G)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    c_tile = c[None, :] + (gi * 0)[:, None]  # [BLOCK_G, BLOCK_C]: column c in every group
    c_mask_tile = c_tile < C
    bias, lw = _bias_and_weight_tiles(db_ptr, lw_ptr, c_tile, c_mask_tile, HAS_BIAS, BLOCK_G, BLOCK_C, acc_t)
    acc_w = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_t)
    acc_b = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_t)
    acc_db = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_t)
    for i in range(STRIPS_PER_PROG):
        t = pid + i * G
        valid = t < NUM_STRIPS
        row = t // NUM_WB  # n*H + h
        n = row // H
        h = row - n * H
        g0 = ((t - row * NUM_WB) * BLOCK_G + gi) * PW  # first column of each group
        accs = _conv_strip(x_ptr + n.to(tl.int64) * sx_n, w_ptr, h, g0, c, c_mask, valid, H, W, sx_c, sx_h, sx_w,
                           K, PW, BLOCK_G, BLOCK_C, acc_t)
        gy_row = gy_ptr + (n.to(tl.int64) * sg_n + h.to(tl.int64) * sg_h)
        zhats = ()
        gys = ()
        rstds = ()
        for p in tl.static_range(PW):
            ow = g0 + p
            w_ok = (ow < W) & valid
            m = w_ok[:, None] & c_mask_tile
            pix = row.to(tl.int64) * W + ow
            mean = tl.load(mean_ptr + pix, mask=w_ok, other=0.0)[:, None]
            rstd = tl.load(rstd_ptr + pix, mask=w_ok, other=0.0)[:, None]
            zhats = zhats + (tl.where(m, (accs[p] + bias - mean) * rstd, 0.0),)
            gys = gys + (tl.load(gy_row + (ow[:, None] * sg_w + c[None, :] * sg_c), mask=m, other=0.0).to(acc_t),)
            rstds = rstds + (rstd,)
        # The 2*PW per-pixel channel sums in one reduction (joined_sums.py): a pixel's channels
        # span warps here (2 channels per thread), and separate sums cost 16 barriers per strip.
        terms = ()
        for p in tl.static_range(PW):
            wdy = gys[p] * lw
            terms = terms + (zhats[p] * wdy, wdy)
        sums = split8(joined_sums(terms, 2 * PW, 1))
        for p in tl.static_range(PW):
            ow = g0 + p
            m = ((ow < W) & valid)[:, None] & c_mask_tile
            pix = row.to(tl.int64) * W + ow
            wdy = gys[p] * lw
            c1 = _mean_div(sums[2 * p], C, inv_C)
            c2 = _mean_div(sums[2 * p + 1], C, inv_C)
            gz = tl.where(m, (wdy - zhats[p] * c1[:, None] - c2[:, None]) * rstds[p], 0.0)
            tl.store(gz_ptr + (pix[:, None] * C + c[None, :]), gz.to(gz_ptr.dtype.element_ty), mask=m)
            acc_w += gys[p] * zhats[p]
            acc_b += gys[p]
            acc_db += gz
    part_row = part_ptr + pid.to(tl.int64) * (3 * C)
    tl.store(part_row + c, tl.sum(acc_w, axis=0), mask=c_mask)
    tl.store(part_row + C + c, tl.sum(acc_b, axis=0), mask=c_mask)
    tl.store(part_row + 2 * C + c, tl.sum(acc_db, axis=0), mask=c_mask)


@triton.jit
def _dwconv_ln_bwd_kernel(
    gy_ptr,  # incoming gradient of y (N, C, H, W), any strides incl. expanded stride 0 (sg_*)
    x_ptr,  # forward input (N, C, H, W), any strides (sx_*): the conv output is recomputed from it
    wt_ptr,  # (K*K, C) depthwise weight, tap-major
    db_ptr,  # (C,) depthwise bias, or any pointer when not HAS_BIAS
    lw_ptr,  # (C,) LayerNorm weight
    mean_ptr,  # (N*H*W,) saved mean (compute dtype)
    rstd_ptr,  # (N*H*W,) saved rstd
    gz_ptr,  # output: gradient of the conv output, (N, C, H, W) channels_last, x dtype
    part_ptr,  # (G, 3*C) partial sums (compute dtype); row pid, owned by this program alone, holds
               # [LayerNorm-weight grad, LayerNorm-bias grad, conv-bias grad] (C each) of its pixels
    H, W, C, NUM_WB, NUM_ROWS,  # NUM_ROWS = N*H
    sx_n, sx_c, sx_h, sx_w,
    sg_n, sg_c, sg_h, sg_w,
    G, TILES_PER_PROG,  # program pid handles the tiles pid, pid + G, ... (a tile = BLOCK_W pixels of a row)
    inv_C,  # 1 / C (fp32), see _mean_div
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SINGLE_TILE: tl.constexpr,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """LayerNorm backward on the recomputed conv output z: gz = rstd * (lw*gy - zhat*mean_c(zhat*lw*gy)
    - mean_c(lw*gy)), and per-program partial sums of gy*zhat, gy and gz. The conv-bias gradient
    (the sum of gz) is taken here from the fp32 gz, before gz is rounded to the x dtype."""
    acc_t: tl.constexpr = mean_ptr.dtype.element_ty
    pid = tl.program_id(0)
    cols0 = tl.arange(0, BLOCK_C)
    part_row = pid.to(tl.int64) * (3 * C)
    if SINGLE_TILE:
        c_mask0 = cols0 < C
        lw0 = tl.load(lw_ptr + cols0, mask=c_mask0, other=0.0).to(acc_t)
        # Tile-shaped accumulators, summed over the pixels once after the loop (a per-tile sum
        # across warps costs a dozen barriers per tile; see layer_norm.py's backward).
        acc_w = tl.zeros([BLOCK_W, BLOCK_C], dtype=acc_t)
        acc_b = tl.zeros([BLOCK_W, BLOCK_C], dtype=acc_t)
        acc_db = tl.zeros([BLOCK_W, BLOCK_C], dtype=acc_t)
    for i in range(TILES_PER_PROG):
        t = pid + i * G
        row = t // NUM_WB
        n = row // H
        h = row - n * H
        w = (t - row * NUM_WB) * BLOCK_W + tl.arange(0, BLOCK_W)
        w_mask = (w < W) & (row < NUM_ROWS)
        x_base = n.to(tl.int64) * sx_n
        g_row = n.to(tl.int64) * sg_n + h.to(tl.int64) * sg_h + w.to(tl.int64) * sg_w
        p = row.to(tl.int64) * W + w
        mean = tl.load(mean_ptr + p, mask=w_mask, other=0.0)
        rstd = tl.load(rstd_ptr + p, mask=w_mask, other=0.0)
        if SINGLE_TILE:
            mask = w_mask[:, None] & c_mask0[None, :]
            z = _conv_tile(x_ptr, wt_ptr, db_ptr, x_base, h, w, cols0, c_mask0 & (row < NUM_ROWS), H, W, C,
                           sx_c, sx_h, sx_w, K, HAS_BIAS, BLOCK_W, BLOCK_C, acc_t)
            gy = tl.load(gy_ptr + (g_row[:, None] + cols0.to(tl.int64)[None, :] * sg_c), mask=mask,
                         other=0.0).to(acc_t)
            zhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
            wdy = gy * lw0[None, :]
            c1 = _mean_div(tl.sum(zhat * wdy, axis=1), C, inv_C)
            c2 = _mean_div(tl.sum(wdy, axis=1), C, inv_C)
            gz = _ln_dx(zhat, wdy, c1, c2, rstd)
            tl.store(gz_ptr + (p[:, None] * C + cols0[None, :]), gz.to(gz_ptr.dtype.element_ty), mask=mask)
            acc_w += gy * zhat
            acc_b += gy
            acc_db += tl.where(mask, gz, 0.0)
        else:
            c1 = tl.zeros([BLOCK_W], dtype=acc_t)
            c2 = tl.zeros([BLOCK_W], dtype=acc_t)
            for c0 in range(0, C, BLOCK_C):
                cols, c_mask, mask, z = _conv_chunk(c0, cols0, w_mask, row < NUM_ROWS, x_ptr, wt_ptr, db_ptr, x_base,
                                                    h, w, H, W, C, sx_c, sx_h, sx_w, K, HAS_BIAS, BLOCK_W, BLOCK_C,
                                                    acc_t)
                zhat, wdy, gy = _ln_bwd_chunk(z, gy_ptr, g_row, lw_ptr, cols, c_mask, mask, mean, rstd, sg_c, acc_t)
                c1 += tl.sum(zhat * wdy, axis=1)
                c2 += tl.sum(wdy, axis=1)
            c1 = _mean_div(c1, C, inv_C)
            c2 = _mean_div(c2, C, inv_C)
            for c0 in range(0, C, BLOCK_C):
                cols, c_mask, mask, z = _conv_chunk(c0, cols0, w_mask, row < NUM_ROWS, x_ptr, wt_ptr, db_ptr, x_base,
                                                    h, w, H, W, C, sx_c, sx_h, sx_w, K, HAS_BIAS, BLOCK_W, BLOCK_C,
                                                    acc_t)
                zhat, wdy, gy = _ln_bwd_chunk(z, gy_ptr, g_row, lw_ptr, cols, c_mask, mask, mean, rstd, sg_c, acc_t)
                gz = _ln_dx(zhat, wdy, c1, c2, rstd)
                tl.store(gz_ptr + (p[:, None] * C + cols[None, :]), gz.to(gz_ptr.dtype.element_ty), mask=mask)
                _add_to_partial(part_ptr + part_row + cols, tl.sum(gy * zhat, axis=0), c_mask)
                _add_to_partial(part_ptr + part_row + C + cols, tl.sum(gy, axis=0), c_mask)
                _add_to_partial(part_ptr + part_row + 2 * C + cols, tl.sum(tl.where(mask, gz, 0.0), axis=0), c_mask)
            # Another thread may re-read a partial element in the next tile: order writes before reads.
            tl.debug_barrier()
    if SINGLE_TILE:
        tl.store(part_ptr + part_row + cols0, tl.sum(acc_w, axis=0), mask=c_mask0)
        tl.store(part_ptr + part_row + C + cols0, tl.sum(acc_b, axis=0), mask=c_mask0)
        tl.store(part_ptr + part_row + 2 * C + cols0, tl.sum(acc_db, axis=0), mask=c_mask0)


# --------------------------------------------------------------------------------- host side


# Channel-chunked configurations (C > the largest register tile), (BLOCK_W, BLOCK_C, num_warps) by
# (pass, element size). Each is one that compiles without spills for sm_90 and sm_80, with and
# without the JIT's divisibility marks, under every supported Triton version: ptxas spills a word
# or two at several neighbouring shapes, and its register choice flips with instruction order, so
# a change to the kernels can make an entry spill. tests/test_aot_compile.py fails on any spill;
# then AOT-compile the neighbours (BLOCK_W 1-4, BLOCK_C 256-1024, 4 or 8 warps) for sm_90 and
# sm_80 with each supported Triton and take a clean one.
CHUNKED_BLOCKS = {
    ("fwd", 2): (1, 512, 4), ("fwd", 4): (2, 512, 4), ("fwd", 8): (1, 512, 4),
    ("bwd", 2): (1, 1024, 8), ("bwd", 4): (2, 512, 8), ("bwd", 8): (1, 512, 4),
}


def fused_blocks(c: int, w: int, dtype: torch.dtype, tile: int) -> tuple[int, int, bool, int]:
    """(BLOCK_W, BLOCK_C, SINGLE_TILE, num_warps) for C channels, row width W, ``dtype``; a fixed table."""
    size = torch.empty((), dtype=dtype).element_size()
    max_c = MAX_BLOCK_C_FP64 if dtype == torch.float64 else MAX_BLOCK_C
    if c > max_c:
        block_w, block_c, num_warps = CHUNKED_BLOCKS[("fwd" if tile == TILE_FWD else "bwd", size)]
        return min(block_w, next_power_of_2(w)), block_c, False, num_warps
    block_c = next_power_of_2(c)
    if tile == TILE_FWD and block_c > 256:
        tile = TILE_FWD_WIDE
    elif tile == TILE_BWD and block_c > 512:
        tile = TILE_BWD_WIDE
    # The K in-flight tap loads per kernel row scale with the element size: halve the tile for
    # 32-bit input, quarter it for 64-bit, to stay spill-free (but not below 1024 elements).
    tile = max(1024, tile // {2: 1, 4: 2, 8: 4}[size])
    block_w = max(1, min(tile // block_c, next_power_of_2(w)))
    return block_w, block_c, True, NUM_WARPS


# Forward px kernel: channels per thread (4: one 16-byte fp32 weight load per tap and PW outputs)
# and threads per program: up to 128 (4 warps), more only when one group of columns needs them
# (C = 768: 1024 lanes / 4 = 256 threads). ptxas gives the kernel ~150 registers at C <= 512, so
# 4-warp programs fit 3 per SM (12 warps) where 8-warp ones would fit one (8 warps).
PX_CPT = 4
PX_THREADS = 128


def fused_px_config(c: int, w: int, k: int, dtype: torch.dtype,
                    backward: bool = False) -> Optional[tuple[int, int, int, int]]:
    """(PW, BLOCK_G, BLOCK_C, num_warps) for _dwconv_ln_fwd_px_kernel (``backward``:
    _dwconv_ln_bwd_px_kernel), or None for the tile kernels.

    Block shape: [BLOCK_G, BLOCK_C] with BLOCK_C = next_power_of_2(C) (the LayerNorm needs every
    channel of a pixel) and BLOCK_G * BLOCK_C = PX_CPT * threads, so each thread holds PX_CPT
    channels x PW columns: PW accumulators and PW + K - 1 converted input columns of PX_CPT
    values, ~(2*PW + K - 1) * 4 = 80 registers at PW = K = 7. PW = 7 when W is a multiple of 7
    (every ConvNeXt stage: no half-empty groups), else 4; BLOCK_G groups take the rest of
    PX_THREADS threads, at most the whole row (C = 768: one group, 8 warps). K > 7 (code size:
    K*K*PW unrolled multiply-adds per input row, K + PW - 1 live columns), fp64 and C > MAX_BLOCK_C
    keep _dwconv_ln_fwd_kernel.
    The backward holds three more tile-shaped accumulators per output: it takes PW = 4 and twice
    the warps (2 channels per thread). With 4 channels per thread ptxas spilled 8-16 B at PW = 7
    and at PW = 4 (Triton 3.6, sm_80 and sm_90; 3.8 only at PW = 7), at 128-168 registers; with 2
    it uses 86-128 registers and spills with neither version on either architecture.
    """
    if k > 7 or dtype == torch.float64 or c > MAX_BLOCK_C:
        return None
    pw = min(w, 4 if backward or w % 7 else 7)
    block_c = next_power_of_2(c)
    lanes_c = max(1, block_c // PX_CPT)  # threads across the channels of one group
    block_g = max(1, min(next_power_of_2(cdiv(w, pw)), PX_THREADS // lanes_c))
    num_warps = max(1, block_g * lanes_c // 32) * (2 if backward else 1)
    return pw, block_g, block_c, num_warps


def _tap_major(dw_weight: torch.Tensor, block_c: int = 0) -> torch.Tensor:
    """(C, 1, K, K) -> (K*K, max(C, block_c)) contiguous in the compute dtype: the C weights of one
    tap become one coalesced load, and no conversion is repeated per tile (the weights are a few
    KB). Columns C .. block_c - 1 are left uninitialized, so that a px kernel loads whole BLOCK_C
    vectors at immediate offsets without a mask (``_conv_strip``); one copy kernel either way."""
    c, k = dw_weight.shape[0], dw_weight.shape[-1]
    out = torch.empty((k * k, max(c, block_c)), dtype=stats_dtype(dw_weight.dtype), device=dw_weight.device)
    # one launch: transpose and convert together
    (out[:, :c] if block_c > c else out).copy_(dw_weight.reshape(c, k * k).t())
    return out


def dwconv_ln_forward(x: torch.Tensor, dw_weight: torch.Tensor, dw_bias: Optional[torch.Tensor],
                      ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm over C of depthwise_conv(x) in one kernel. Returns (y channels_last, mean, rstd),
    mean/rstd (N, H, W) contiguous in ``layout.stats_dtype(x.dtype)``, statistics of the conv output."""
    n, c, h, w = x.shape
    k = dw_weight.shape[-1]
    y = empty_channels_last(x.shape, x.dtype, x.device)
    mean = torch.empty(stats_shape(x.shape), dtype=stats_dtype(x.dtype), device=x.device)
    rstd = torch.empty_like(mean)
    s_n, s_c, s_h, s_w = x.stride()
    px = fused_px_config(c, w, k, x.dtype)
    if px is not None and _row_offsets_fit_int32(x):
        pw, block_g, block_c, num_warps = px
        num_wb = cdiv(w, block_g * pw)
        _dwconv_ln_fwd_px_kernel[(n * h * num_wb,)](
            x, _tap_major(dw_weight, block_c), dw_bias if dw_bias is not None else ln_bias,
            ln_weight, ln_bias, y, mean, rstd, h, w, c, num_wb, s_n, s_c, s_h, s_w, float(eps), 1.0 / c,
            K=k, HAS_BIAS=dw_bias is not None, PW=pw, BLOCK_G=block_g, BLOCK_C=block_c, num_warps=num_warps)
        return y, mean, rstd
    block_w, block_c, single, num_warps = fused_blocks(c, w, x.dtype, TILE_FWD)
    num_wb = cdiv(w, block_w)
    _dwconv_ln_fwd_kernel[(n * h * num_wb,)](
        x, _tap_major(dw_weight), dw_bias if dw_bias is not None else ln_bias, ln_weight, ln_bias, y, mean, rstd,
        h, w, c, num_wb, s_n, s_c, s_h, s_w, float(eps), 1.0 / c,
        K=k, HAS_BIAS=dw_bias is not None, SINGLE_TILE=single, BLOCK_W=block_w, BLOCK_C=block_c,
        num_warps=num_warps)
    return y, mean, rstd


def dwconv_ln_backward(grad_y: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor,
                       dw_bias: Optional[torch.Tensor], ln_weight: torch.Tensor, mean: torch.Tensor,
                       rstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of dwconv_ln_forward: (grad_x, grad_dw_weight, grad_dw_bias, grad_ln_weight, grad_ln_bias).

    Recomputes the conv output from x, applies the LayerNorm backward in the same kernel to get the
    gradient of the conv output (x dtype, channels_last), then runs the depthwise-conv backward.
    grad_dw_bias is always computed; parameter gradients are deterministic. Where the forward takes
    _dwconv_ln_fwd_px_kernel (K <= 7, C <= 1024, not fp64), the first kernel is its px twin.
    """
    n, c, h, w = x.shape
    k = dw_weight.shape[-1]
    gz = empty_channels_last(x.shape, x.dtype, x.device)
    acc = stats_dtype(x.dtype)
    px = fused_px_config(c, w, k, x.dtype, backward=True)
    if px is not None and _row_offsets_fit_int32(x) and _row_offsets_fit_int32(grad_y):
        pw, block_g, block_c, num_warps = px
        num_wb = cdiv(w, block_g * pw)
        num_strips = n * h * num_wb
        g = num_partials(num_strips)
        part = torch.empty((g, 3 * c), dtype=acc, device=x.device)  # every program writes its row
        _dwconv_ln_bwd_px_kernel[(g,)](
            grad_y, x, _tap_major(dw_weight, block_c), dw_bias if dw_bias is not None else ln_weight,
            ln_weight, mean.contiguous(), rstd.contiguous(), gz, part, h, w, c, num_wb, num_strips,
            *x.stride(), *grad_y.stride(), g, cdiv(num_strips, g), 1.0 / c,
            K=k, HAS_BIAS=dw_bias is not None, PW=pw, BLOCK_G=block_g, BLOCK_C=block_c, num_warps=num_warps)
        return _finish_backward(part, gz, x, dw_weight, ln_weight)
    block_w, block_c, single, num_warps = fused_blocks(c, w, x.dtype, TILE_BWD)
    num_wb = cdiv(w, block_w)
    num_tiles = n * h * num_wb
    g = num_partials(num_tiles)
    # The chunked path read-modify-writes its partial row, so it starts from zeros.
    part = (torch.empty if single else torch.zeros)((g, 3 * c), dtype=acc, device=x.device)
    sx_n, sx_c, sx_h, sx_w = x.stride()
    sg_n, sg_c, sg_h, sg_w = grad_y.stride()
    _dwconv_ln_bwd_kernel[(g,)](
        grad_y, x, _tap_major(dw_weight), dw_bias if dw_bias is not None else ln_weight, ln_weight,
        mean.contiguous(), rstd.contiguous(), gz, part, h, w, c, num_wb, n * h,
        sx_n, sx_c, sx_h, sx_w, sg_n, sg_c, sg_h, sg_w, g, cdiv(num_tiles, g), 1.0 / c,
        K=k, HAS_BIAS=dw_bias is not None, SINGLE_TILE=single, BLOCK_W=block_w, BLOCK_C=block_c,
        num_warps=num_warps)
    return _finish_backward(part, gz, x, dw_weight, ln_weight)


def _finish_backward(part: torch.Tensor, gz: torch.Tensor, x: torch.Tensor, dw_weight: torch.Tensor,
                     ln_weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Sum the (G, 3C) partials, then run the depthwise-conv backward on gz."""
    g_ln_w, g_ln_b, g_dw_b = reduce_partials(part, 3, ln_weight.dtype)
    # The conv backward's own bias gradient sums the rounded gz; the one above sums the fp32 gz.
    gx, g_dw_w, _ = dwconv_backward(gz, x, dw_weight)
    return gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b


def _row_offsets_fit_int32(t: torch.Tensor) -> bool:
    """The px kernels compute an element's offset within its image row, w*s_w + c*s_c, in int32."""
    _, c, _, w = t.shape
    return (c - 1) * abs(t.stride(1)) + (w - 1) * abs(t.stride(3)) < 2**31


# --------------------------------------------------------------------------------- AOT configs

def aot_configs(stages) -> list[dict]:
    """The fused kernels at the configurations the launchers pick for the (C, H, W) ``stages`` (channels_last
    x, K = 7 with bias; bf16 and fp32), for an ahead-of-time compile check (registers, spills).

    Each entry: ``kernel``, ``signature`` (argument name -> Triton type, constexprs as "constexpr"),
    ``constexprs``, ``attrs`` (the divisibility marks Triton's JIT sets at these shapes), ``num_warps``,
    ``name``. The channel stride of channels_last x and grad_y is 1,
    which Triton specializes as a constant at run time, as here.
    """
    configs = []
    for dtype in (torch.bfloat16, torch.float32):
        t = _TRITON_DTYPE[dtype]
        a = _TRITON_DTYPE[stats_dtype(dtype)]
        for c, _, w in stages:
            for k in (7,):
                px = fused_px_config(c, w, k, dtype)
                if px is not None:
                    pw, block_g, block_c, nw = px
                    kern, wt = _dwconv_ln_fwd_px_kernel, a  # px weights are in the compute dtype
                    const = {"s_c": 1, "K": k, "HAS_BIAS": True, "PW": pw, "BLOCK_G": block_g, "BLOCK_C": block_c}
                else:
                    block_w, block_c, single, nw = fused_blocks(c, w, dtype, TILE_FWD)
                    kern, wt = _dwconv_ln_fwd_kernel, a  # tap-major weights are in the compute dtype too
                    const = {"s_c": 1, "K": k, "HAS_BIAS": True, "SINGLE_TILE": single, "BLOCK_W": block_w,
                             "BLOCK_C": block_c}
                sig = {"x_ptr": f"*{t}", "wt_ptr": f"*{wt}", "w_ptr": f"*{wt}", "db_ptr": f"*{t}", "lw_ptr": f"*{t}",
                       "lb_ptr": f"*{t}", "y_ptr": f"*{t}", "mean_ptr": f"*{a}", "rstd_ptr": f"*{a}", "H": "i32",
                       "W": "i32", "C": "i32", "NUM_WB": "i32", "s_n": "i32", "s_c": "constexpr", "s_h": "i32",
                       "s_w": "i32", "eps": "fp32", "inv_C": "fp32"}
                sig = {name: sig.get(name, "constexpr") for name in kern.arg_names}
                sig.update({key: "constexpr" for key in const})
                # C and the pixel strides (multiples of C) are multiples of 16; W (56, 28, 14, 7) is not.
                configs.append({"kernel": kern, "signature": sig, "constexprs": const,
                                "attrs": divisibility_attrs(kern, sig, ("C", "s_n", "s_h", "s_w")),
                                "num_warps": nw, "name": f"dwconv_ln_fwd_{t}_C{c}_W{w}_K{k}"})
                px = fused_px_config(c, w, k, dtype, backward=True)
                if px is not None:
                    pw, block_g, block_c, nw = px
                    const = {"sx_c": 1, "sg_c": 1, "K": k, "HAS_BIAS": True, "PW": pw, "BLOCK_G": block_g,
                             "BLOCK_C": block_c}
                    sig = {"gy_ptr": f"*{t}", "x_ptr": f"*{t}", "w_ptr": f"*{a}", "db_ptr": f"*{t}",
                           "lw_ptr": f"*{t}", "mean_ptr": f"*{a}", "rstd_ptr": f"*{a}", "gz_ptr": f"*{t}",
                           "part_ptr": f"*{a}", "inv_C": "fp32"}
                    kern = _dwconv_ln_bwd_px_kernel
                    sig = {name: sig.get(name, "i32") for name in kern.arg_names}
                    sig.update({key: "constexpr" for key in const})
                    configs.append({"kernel": kern, "signature": sig, "constexprs": const,
                                    "attrs": divisibility_attrs(kern, sig, (
                                        "C", "sx_n", "sx_h", "sx_w", "sg_n", "sg_h", "sg_w")),
                                    "num_warps": nw, "name": f"dwconv_ln_bwd_px_{t}_C{c}_W{w}_K{k}"})
                    continue
                block_w, block_c, single, nw = fused_blocks(c, w, dtype, TILE_BWD)
                const = {"sx_c": 1, "sg_c": 1, "K": k, "HAS_BIAS": True, "SINGLE_TILE": single, "BLOCK_W": block_w,
                         "BLOCK_C": block_c}
                sig = {"gy_ptr": f"*{t}", "x_ptr": f"*{t}", "wt_ptr": f"*{a}", "db_ptr": f"*{t}", "lw_ptr": f"*{t}",
                       "mean_ptr": f"*{a}", "rstd_ptr": f"*{a}", "gz_ptr": f"*{t}", "part_ptr": f"*{a}",
                       "H": "i32", "W": "i32", "C": "i32", "NUM_WB": "i32", "NUM_ROWS": "i32",
                       "sx_n": "i32", "sx_c": "constexpr", "sx_h": "i32", "sx_w": "i32", "sg_n": "i32",
                       "sg_c": "constexpr", "sg_h": "i32", "sg_w": "i32", "G": "i32", "TILES_PER_PROG": "i32",
                   "inv_C": "fp32"}
                sig.update({key: "constexpr" for key in const})
                configs.append({"kernel": _dwconv_ln_bwd_kernel, "signature": sig, "constexprs": const,
                                "attrs": divisibility_attrs(_dwconv_ln_bwd_kernel, sig, (
                                    "C", "sx_n", "sx_h", "sx_w", "sg_n", "sg_h", "sg_w")),
                                "num_warps": nw, "name": f"dwconv_ln_bwd_{t}_C{c}_W{w}_K{k}"})
    return configs
