"""Depthwise KxK convolution (stride 1, zero padding K//2): Triton kernels and host launchers.

The 7x7 depthwise convolution is the spatial mixing layer of every ConvNeXt block (Liu et al.,
"A ConvNet for the 2020s", CVPR 2022, section 2.4 / 2.5). It does 49 multiply-adds per output
element and is memory-bound in eager PyTorch; these kernels read each input element from HBM about
once and keep the K*K reuse in registers and L1.

Layout: tensors are logically (N, C, H, W). The kernels tile [BLOCK_W pixels of one row, BLOCK_C
channels] with channels innermost, so on channels_last (NHWC) memory each thread loads 16 contiguous
bytes of channels. Any strides are accepted (a stride of 0 too: the expanded gradient of
``y.sum()``); the launchers copy an input whose channel stride is neither 1 nor 0 to channels_last
first, because channel-innermost tiles over NCHW memory would touch one 32-byte sector per element.
Outputs are channels_last (``layout.empty_channels_last``).

NaN / Inf weights: the conv multiplies the zero padding like the real pixels, as float64
``F.conv2d`` does (0 * NaN = 0 * Inf = NaN), so an output whose window puts a NaN or Inf tap over the
padding is NaN (a NaN tap makes its whole channel NaN); the forward kernels skip padding rows and add
their products, 0 * w summed over the taps per channel, to the bias of the output rows they touch,
and the input gradient (the same kernels on grad_y) follows the same rule.

Kernels:

* ``_dwconv_fwd_kernel``: y = conv(x, w) + b. Also computes the input gradient: grad_x is the
  correlation of grad_y with the spatially flipped kernel (same padding K//2), so the backward pass
  launches this kernel on grad_y with flipped weights and no bias.
* ``_dwconv_fwd_px_kernel``: the same computation for K <= 13 (fp16/bf16/fp32), with each thread
  owning PW consecutive output columns and every tap unrolled, so an input column and a weight vector
  are loaded and converted once per row for PW outputs (``_px_config`` picks it; on sm_90 it issues
  about 74 instructions per output element at K=7, bf16, against 156 for ``_dwconv_fwd_kernel``,
  which stays for K >= 15 and fp64).
* ``_dwconv_bwd_weight_kernel``: per-program fp32 (fp64 for fp64) partial sums of
  grad_w[c, kh, kw] = sum_{n,h,w} grad_y[n, c, h, w] * x[n, c, h + kh - K//2, w + kw - K//2] and of
  grad_b[c] = sum grad_y, written to a partials buffer [programs, K*K + 1, C].
* ``_dwconv_bwd_weight_px_kernel``: the same partials for K <= 11 (fp16/bf16/fp32), with the
  register blocking of ``_dwconv_fwd_px_kernel``: each thread owns PW output columns x 2 channels
  (1 at K >= 9), keeps all K*K tap sums in registers for the whole program, loads each x row once
  and each grad_y row K times per row walk, and reduces over pixels once at the end
  (``_wgrad_px_config`` picks it; on sm_90 at K=7 its row loop issues about 84 instructions per
  input pixel x channel in bf16 and 71 in fp32, against 243 and 170 for
  ``_dwconv_bwd_weight_kernel``, which stays for K >= 13 and fp64).
* ``_dwconv_bwd_weight_reduce_kernel``: sums the partials over programs in a fixed order and writes
  grad_w (C, 1, K, K) and grad_b (C,). No atomics anywhere: two backward passes give bitwise-equal
  weight gradients.

Launcher contract (``kernels/launchers.py``): ``dwconv_forward(x, w, b) -> y`` and
``dwconv_backward(gy, x, w) -> (gx, gw, gb)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .layout import empty_channels_last

from .host_math import cdiv, next_power_of_2
from .joined_sums import joined_sums, slot8

__all__ = ["dwconv_forward", "dwconv_backward", "aot_configs"]

# Programs to aim for in the weight-gradient pass: enough to fill a large GPU (130+ SMs, several
# 2-warp programs each) while keeping the partials buffer small. A fixed number, not a device query, so
# the reduction order (and the result bits) depend only on the shapes.
_WGRAD_TARGET_PROGRAMS = 1024
# Forward programs to aim for: a program takes a whole image column (no halo rows read twice)
# unless that gives fewer programs than this; then H is split into row segments (see _fwd_rows).
_FWD_TARGET_PROGRAMS = 1024
# Rows of one weight-gradient tile: small enough that the tile's grad_y rows and x rows (with
# halo) stay in L1 across the K passes over kh (8 rows x 16 px x 32 ch: about 28 KB at K=7, bf16).
_WGRAD_TILE_ROWS = 8
_NUM_WARPS = 2


@triton.jit
def _padding_row_bias(bias, taps, tap_stride, c_mask, oh, H, P: tl.constexpr, K: tl.constexpr,
                      MASKED: tl.constexpr):
    """The bias of output row ``oh`` plus the skipped padding rows' products, 0 * w (NaN for a NaN or
    Inf tap; the padding columns get theirs from the masked loads): the taps of kernel rows
    kh < P - oh and kh >= H - oh + P, two loops that are empty inside the image. ``taps``: tap 0's
    channel vector, tap t at ``taps + t * tap_stride``; MASKED loads it under ``c_mask``."""
    row_bias = bias
    for t in range(0, tl.maximum(P - oh, 0) * K):
        row_bias += _load_taps(taps + t * tap_stride, c_mask, MASKED) * 0
    for t in range(tl.minimum(H - oh + P, K) * K, K * K):
        row_bias += _load_taps(taps + t * tap_stride, c_mask, MASKED) * 0
    return row_bias


@triton.jit
def _load_taps(ptrs, c_mask, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptrs, mask=c_mask, other=0)
    return tl.load(ptrs)


@triton.jit
def _dwconv_fwd_kernel(
    x_ptr,  # input (N, C, H, W), element (n, c, h, w) at n*sxn + c*sxc + h*sxh + w*sxw
    w_ptr,  # weights transposed to [K*K, C], contiguous, in the accumulation dtype (fp32/fp64);
    # tap t = kh*K + kw of channel c at t*C + c (flipped for the input gradient by the launcher)
    b_ptr,  # bias (C,) (read only when HAS_BIAS)
    y_ptr,  # output (N, C, H, W) channels_last: (n, c, h, w) at ((n*H + h)*W + w)*C + c
    C, H, W,
    sxn, sxc, sxh, sxw,  # input strides in elements (any value, 0 included)
    rows,  # output rows per program (a row segment; the launcher sets it)
    num_segs,  # row segments per image = cdiv(H, rows)
    num_wblocks,  # column strips per row = cdiv(W, BLOCK_W)
    K: tl.constexpr,  # kernel size (odd)
    HAS_BIAS: tl.constexpr,
    BLOCK_W: tl.constexpr,  # output columns per program (one row at a time)
    BLOCK_C: tl.constexpr,  # channels per program (innermost: 16-byte vector loads on NHWC)
):
    # Program = (image n, row segment, strip of BLOCK_W columns) on axis 0, flattened with the strip
    # fastest so programs that run together share their K-1 halo columns/rows in L2; channel block
    # on axis 1.
    #
    # Rolling rows: the program walks the INPUT rows ih of its segment (plus K-1 halo rows) once.
    # For each row it loads the K column-shifted tiles (kw = 0..K-1; the shifts re-read from L1)
    # and adds each into the K output rows that input row feeds. accs[s] holds output row
    # ih - K//2 + s, which takes input row ih through tap kh = K-1-s; after the update accs[0] is
    # complete, is stored, and the window rotates. Each input element thus comes from HBM/L2 about
    # once, is loaded K times (not K*K) from L1, and is converted to fp32 K times.
    P: tl.constexpr = K // 2
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    wb = pid % num_wblocks
    t = pid // num_wblocks
    seg = t % num_segs
    n = t // num_segs

    acc_ty = w_ptr.dtype.element_ty
    ow = wb * BLOCK_W + tl.arange(0, BLOCK_W)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    out_mask = (ow < W)[:, None] & c_mask[None, :]

    # int64 for the image and row offsets: n*sxn and h*sxh can pass 2^31 on large batches.
    x_img = x_ptr + tl.cast(n, tl.int64) * sxn
    x_tile_off = c[None, :] * sxc
    y_img = y_ptr + tl.cast(n, tl.int64) * H * W * C
    y_tile_off = ow[:, None] * C + c[None, :]

    oh0 = seg * rows
    n_rows = tl.minimum(rows, H - oh0)

    zero = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_ty)
    accs = ()
    for s in tl.static_range(K):
        accs = accs + (zero,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_mask, other=0).to(acc_ty)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=acc_ty)

    for i in range(0, n_rows + K - 1):
        ih = oh0 - P + i
        if (ih >= 0) & (ih < H):  # padding rows: no x loads, no FMAs (see row_bias below)
            x_row = x_img + tl.cast(ih, tl.int64) * sxh
            # A runtime loop over kw (not static_range): the K weight vectors of column kw are then
            # loaded inside it. With every tap unrolled, the compiler hoists all K*K weight vectors
            # out of the row loop (392 registers per thread at K=7) and spills.
            for kw in range(0, K):
                iw = ow + (kw - P)
                m = ((iw >= 0) & (iw < W))[:, None] & c_mask[None, :]
                xt = tl.load(x_row + iw[:, None] * sxw + x_tile_off, mask=m, other=0).to(acc_ty)
                updated = ()
                for s in tl.static_range(K):
                    wv = tl.load(w_ptr + ((K - 1 - s) * K + kw) * C + c, mask=c_mask, other=0)
                    updated = updated + (accs[s] + xt * wv[None, :],)
                accs = updated
        oh = ih - P
        if oh >= oh0:  # the first K-1 steps only fill the window
            row_bias = _padding_row_bias(bias, w_ptr + c, C, c_mask, oh, H, P, K, True)
            out = accs[0] + row_bias[None, :]
            tl.store(y_img + tl.cast(oh, tl.int64) * W * C + y_tile_off, out.to(y_ptr.dtype.element_ty), mask=out_mask)
        accs = accs[1:] + (zero,)


@triton.jit
def _dwconv_fwd_px_kernel(
    x_ptr,  # input (N, C, H, W), element (n, c, h, w) at n*sxn + c*sxc + h*sxh + w*sxw
    w_ptr,  # weights [cdiv(C, BLOCK_C), K*K, BLOCK_C] contiguous, lanes past C uninitialized, in the
    # accumulation dtype: tap t = kh*K + kw of channel c at ((c // BLOCK_C)*K*K + t)*BLOCK_C + c % BLOCK_C
    b_ptr,  # bias (C,) (read only when HAS_BIAS)
    y_ptr,  # output (N, C, H, W) channels_last
    C, H, W,
    sxn, sxc, sxh, sxw,
    rows, num_segs, num_wblocks,  # as in _dwconv_fwd_kernel; a strip is BLOCK_G * PW columns
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_C: tl.constexpr,  # C % BLOCK_C == 0: no channel masks
    PW: tl.constexpr,  # consecutive output columns per thread (statically unrolled)
    BLOCK_G: tl.constexpr,  # groups of PW columns per program
    BLOCK_C: tl.constexpr,
):
    # Same rolling-row walk as _dwconv_fwd_kernel, but each thread owns PW consecutive columns of
    # its channels (group g = columns g*PW .. g*PW + PW - 1) and every tap is unrolled:
    # per input row a thread loads the PW + K - 1 input columns its group needs once (not K*PW
    # shifted loads), converts each once, and loads each of the K*K weight vectors once for PW
    # columns. accs[s*PW + p] holds column p of output row ih - K//2 + s.
    P: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    wb = pid % num_wblocks
    t = pid // num_wblocks
    seg = t % num_segs
    n = t // num_segs

    acc_ty = w_ptr.dtype.element_ty
    g0 = (wb * BLOCK_G + tl.arange(0, BLOCK_G)) * PW  # first column of each group
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    if EVEN_C:
        c_mask = tl.full((BLOCK_C,), True, tl.int1)
    else:
        c_mask = c < C

    x_img = x_ptr + tl.cast(n, tl.int64) * sxn
    y_img = y_ptr + tl.cast(n, tl.int64) * H * W * C
    # Weight tile [BLOCK_G, BLOCK_C] (the same vector for every group: loaded as a 2-D tile so it
    # gets the accumulators' layout, no layout conversion); taps at immediate offsets t*BLOCK_C.
    w_tile = w_ptr + cb * (KK * BLOCK_C) + (g0 * 0)[:, None] + tl.arange(0, BLOCK_C)[None, :]
    w_vec = w_ptr + cb * (KK * BLOCK_C) + tl.arange(0, BLOCK_C)  # the same taps as [BLOCK_C] vectors

    oh0 = seg * rows
    n_rows = tl.minimum(rows, H - oh0)

    zero = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_ty)
    accs = ()
    for s in tl.static_range(K * PW):
        accs = accs + (zero,)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_mask, other=0).to(acc_ty)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=acc_ty)

    for i in range(0, n_rows + K - 1):
        ih = oh0 - P + i
        if (ih >= 0) & (ih < H):  # padding rows: see row_bias below
            x_row = x_img + tl.cast(ih, tl.int64) * sxh
            cols = ()
            for j in tl.static_range(PW + K - 1):
                iw = g0 + (j - P)
                m = ((iw >= 0) & (iw < W))[:, None] & c_mask[None, :]
                cols = cols + (tl.load(x_row + iw[:, None] * sxw + c[None, :] * sxc, mask=m, other=0).to(acc_ty),)
            # (ih >> 30) * 16 is 0 (the launcher checks H < 2**30) but not provably so: the weight
            # loads then depend on the row and are not hoisted out of the row loop (K*K weight
            # vectors would spill); the factor 16 keeps them vectorized (known alignment).
            w_row = w_tile + (ih >> 30) * 16
            updated = ()
            for s in tl.static_range(K):
                a = ()
                for p in tl.static_range(PW):
                    a = a + (accs[s * PW + p],)
                for kw in tl.static_range(K):
                    wv = tl.load(w_row + ((K - 1 - s) * K + kw) * BLOCK_C)
                    b2 = ()
                    for p in tl.static_range(PW):
                        b2 = b2 + (a[p] + cols[p + kw] * wv,)
                    a = b2
                updated = updated + a
            accs = updated
        oh = ih - P
        if oh >= oh0:
            # Blocked taps: every lane is loadable (lanes past C are never stored), so no mask.
            row_bias = _padding_row_bias(bias, w_vec, BLOCK_C, c_mask, oh, H, P, K, False)
            for p in tl.static_range(PW):
                ow = g0 + p
                out = accs[p] + row_bias[None, :]
                tl.store(y_img + tl.cast(oh, tl.int64) * W * C + ow[:, None] * C + c[None, :],
                         out.to(y_ptr.dtype.element_ty), mask=(ow < W)[:, None] & c_mask[None, :])
        accs = accs[PW:]
        for p in tl.static_range(PW):
            accs = accs + (zero,)


@triton.jit
def _dwconv_bwd_weight_kernel(
    gy_ptr,  # grad_y (N, C, H, W), element at n*sgn + c*sgc + h*sgh + w*sgw (strides may be 0)
    x_ptr,  # input x (N, C, H, W), element at n*sxn + c*sxc + h*sxh + w*sxw
    part_ptr,  # partials [programs along axis 0, K*K + 1, C] in the accumulation dtype, zeroed by
    # the launcher; program p owns rows p*(K*K+1) .. and only its channel block: no two programs
    # write the same element (deterministic, no atomics). Row K*K is the bias gradient.
    C, H, W,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    num_segs,  # row tiles per image = cdiv(H, TILE_ROWS)
    num_wblocks,  # column strips per row = cdiv(W, BLOCK_W)
    num_tiles,  # N * num_segs * num_wblocks
    tiles_per_prog,  # consecutive tiles each program sums (neighbours share halos in L1)
    K: tl.constexpr,
    TILE_ROWS: tl.constexpr,  # output rows per tile
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # For each tile of TILE_ROWS x BLOCK_W output pixels x BLOCK_C channels, and each kernel row kh:
    # K tile-shaped accumulators (one per kw) collect grad_y * shifted x over the tile's rows, are
    # reduced over pixels, and added into this program's partials row (a read-modify-write of a
    # program-private, L2-resident vector). Holding all K*K taps at once would need K*K
    # accumulators (392 registers per thread at K=7); this order needs K, and re-reads the tile's
    # grad_y and x from L1 once per kh instead of from HBM.
    P: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    acc_ty = part_ptr.dtype.element_ty

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    part_row = part_ptr + tl.cast(pid, tl.int64) * (KK + 1) * C + c

    t_end = tl.minimum((pid + 1) * tiles_per_prog, num_tiles)
    for t in range(pid * tiles_per_prog, t_end):
        wb = t % num_wblocks
        seg = (t // num_wblocks) % num_segs
        n = t // (num_wblocks * num_segs)
        ow = wb * BLOCK_W + tl.arange(0, BLOCK_W)
        ow_mask = ow < W
        gy_img = gy_ptr + tl.cast(n, tl.int64) * sgn
        gy_tile_off = ow[:, None] * sgw + c[None, :] * sgc
        x_img = x_ptr + tl.cast(n, tl.int64) * sxn
        x_tile_off = c[None, :] * sxc
        oh0 = seg * TILE_ROWS
        for kh in range(0, K):
            # accs[kw] for tap (kh, kw); accs[K] sums grad_y itself (the bias gradient, kept when
            # kh == K//2, where every valid output row passes exactly once).
            zero = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_ty)
            accs = ()
            for kw in tl.static_range(K + 1):
                accs = accs + (zero,)
            for r in range(0, TILE_ROWS):
                oh = oh0 + r
                ih = oh + kh - P
                if (oh < H) & (ih >= 0) & (ih < H):
                    g_mask = ow_mask[:, None] & c_mask[None, :]
                    g = tl.load(gy_img + tl.cast(oh, tl.int64) * sgh + gy_tile_off, mask=g_mask, other=0).to(acc_ty)
                    x_row = x_img + tl.cast(ih, tl.int64) * sxh
                    new_accs = ()
                    for kw in tl.static_range(K):
                        iw = ow + (kw - P)
                        m = ((iw >= 0) & (iw < W) & ow_mask)[:, None] & c_mask[None, :]
                        xt = tl.load(x_row + iw[:, None] * sxw + x_tile_off, mask=m, other=0).to(acc_ty)
                        new_accs = new_accs + (accs[kw] + g * xt,)
                    accs = new_accs + (accs[K] + g,)
            for kw in tl.static_range(K):
                p = part_row + (kh * K + kw) * C
                tl.store(p, tl.load(p, mask=c_mask, other=0) + tl.sum(accs[kw], axis=0), mask=c_mask)
            if kh == P:
                p = part_row + KK * C
                tl.store(p, tl.load(p, mask=c_mask, other=0) + tl.sum(accs[K], axis=0), mask=c_mask)


@triton.jit
def _dwconv_bwd_weight_px_kernel(
    gy_ptr,  # grad_y (N, C, H, W), element at n*sgn + c*sgc + h*sgh + w*sgw (strides may be 0)
    x_ptr,  # input x (N, C, H, W), element at n*sxn + c*sxc + h*sxh + w*sxw
    part_ptr,  # partials [programs along axis 0, K*K + 1, C] in fp32 (see _dwconv_bwd_weight_kernel);
    # every program writes all K*K + 1 rows of its channel block (the launcher need not zero it)
    C, H, W,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    rows,  # output rows per unit (a row segment of one image; the launcher sets it)
    num_segs,  # row segments per image = cdiv(H, rows)
    num_wblocks,  # column strips per row = cdiv(W, BLOCK_G * PW)
    num_units,  # N * num_segs * num_wblocks
    units_per_prog,  # consecutive units each program sums into its registers
    K: tl.constexpr,
    EVEN_C: tl.constexpr,  # C % BLOCK_C == 0: no channel masks
    EVEN_W: tl.constexpr,  # W == num_wblocks * BLOCK_G * PW: every group's PW columns are in the image
    PW: tl.constexpr,  # consecutive output columns per thread (statically unrolled)
    BLOCK_G: tl.constexpr,  # groups of PW columns per program
    BLOCK_C: tl.constexpr,
):
    # The weight gradient with the register blocking of _dwconv_fwd_px_kernel: each thread owns PW
    # consecutive output columns (group g: columns g*PW .. g*PW + PW - 1) of its channels and keeps
    # all K*K taps' fp32 sums for them in registers (accs[kh*K + kw], [BLOCK_G, BLOCK_C] each) for
    # the whole program; the pixel axis (groups) is reduced once, at the end.
    #
    # The program walks the INPUT rows ih of its units once. Per row a thread loads the PW + K - 1
    # x columns its group needs once and converts each once; input row ih meets output row
    # oh = ih + P - kh through tap row kh, so for each kh it loads that grad_y row's PW columns
    # (from L1: each grad_y row is loaded K times, each x row once) and adds
    # sum_p g[p] * x[p + kw] into the K accumulators of row kh, every tap unrolled.
    P: tl.constexpr = K // 2
    KK: tl.constexpr = K * K
    pid = tl.program_id(0)
    cb = tl.program_id(1)
    acc_ty = part_ptr.dtype.element_ty

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    if EVEN_C:
        c_mask = tl.full((BLOCK_C,), True, tl.int1)
    else:
        c_mask = c < C
    gl = tl.arange(0, BLOCK_G)

    zero = tl.zeros((BLOCK_G, BLOCK_C), dtype=acc_ty)
    accs = ()
    for t in tl.static_range(KK):
        accs = accs + (zero,)
    gsum = zero  # sum of grad_y: the bias gradient

    u_end = tl.minimum((pid + 1) * units_per_prog, num_units)
    for u in range(pid * units_per_prog, u_end):
        wb = u % num_wblocks
        tt = u // num_wblocks
        seg = tt % num_segs
        n = tt // num_segs
        g0 = (wb * BLOCK_G + gl) * PW  # first column of each group
        if EVEN_W:
            g_in = tl.full((BLOCK_G,), True, tl.int1)
        else:
            g_in = g0 < W
        x_img = x_ptr + tl.cast(n, tl.int64) * sxn
        gy_img = gy_ptr + tl.cast(n, tl.int64) * sgn
        oh0 = seg * rows
        oh1 = tl.minimum(oh0 + rows, H)
        for i in range(0, oh1 - oh0 + K - 1):
            ih = oh0 - P + i
            if (ih >= 0) & (ih < H):  # padding rows contribute nothing
                x_row = x_img + tl.cast(ih, tl.int64) * sxh
                cols = ()
                for j in tl.static_range(PW + K - 1):
                    iw = g0 + (j - P)
                    if EVEN_W:
                        # inner columns are inside the image; only the K-1 halo columns are checked
                        if j < P:
                            cm = iw >= 0
                        elif j >= PW + P:
                            cm = iw < W
                        else:
                            cm = g_in
                    else:
                        cm = (iw >= 0) & (iw < W)
                    m = cm[:, None] & c_mask[None, :]
                    cols = cols + (tl.load(x_row + iw[:, None] * sxw + c[None, :] * sxc, mask=m, other=0).to(acc_ty),)
                updated = ()
                for kh in tl.static_range(K):
                    a = ()
                    for kw in tl.static_range(K):
                        a = a + (accs[kh * K + kw],)
                    oh = ih + P - kh
                    if (oh >= oh0) & (oh < oh1):
                        gy_row = gy_img + tl.cast(oh, tl.int64) * sgh
                        g = ()
                        for p in tl.static_range(PW):
                            ow = g0 + p
                            if EVEN_W:
                                gm = g_in
                            else:
                                gm = ow < W
                            g = g + (tl.load(gy_row + ow[:, None] * sgw + c[None, :] * sgc,
                                             mask=gm[:, None] & c_mask[None, :], other=0).to(acc_ty),)
                        if kh == P:  # every output row of the unit passes here exactly once
                            for p in tl.static_range(PW):
                                gsum = gsum + g[p]
                        b2 = ()
                        for kw in tl.static_range(K):
                            s = a[kw]
                            for p in tl.static_range(PW):
                                s = s + g[p] * cols[p + kw]
                            b2 = b2 + (s,)
                        a = b2
                    updated = updated + a
                accs = updated

    totals = accs + (gsum,)  # tap t = 0 .. K*K - 1, then the bias at t = K*K
    if BLOCK_G == 1:  # one column group: the sums over it are the registers themselves
        part_row = part_ptr + tl.cast(pid, tl.int64) * (KK + 1) * C + c
        for t in tl.static_range(KK + 1):
            tl.store(part_row + t * C, tl.sum(totals[t], axis=0), mask=c_mask)
    else:
        # The groups span warps: eight sums per tl.sum (joined_sums.py; 50 separate sums at K = 7
        # cost 99-299 barriers per program on sm_90), stored from the joined form.
        part_row = part_ptr + tl.cast(pid, tl.int64) * (KK + 1) * C + c[:, None, None, None]
        for base in tl.static_range(0, KK + 1, 8):
            tap = base + slot8()[None, :, :, :]
            tl.store(part_row + tap * C, joined_sums(totals[base:base + 8], min(8, KK + 1 - base), 0),
                     mask=c_mask[:, None, None, None] & (tap <= KK))


@triton.jit
def _dwconv_bwd_weight_reduce_kernel(
    part_ptr,  # partials [num_parts, K*K + 1, C] (see _dwconv_bwd_weight_kernel)
    gw_ptr,  # grad_w (C, 1, K, K) contiguous: tap t of channel c at c*K*K + t
    gb_ptr,  # grad_b (C,)
    num_parts, C,
    K: tl.constexpr,
    BLOCK: tl.constexpr,  # (tap, channel) pairs per program
):
    # Sums the partials over programs in index order: a fixed order, so the result is bitwise
    # reproducible. Each program owns BLOCK consecutive (tap, channel) pairs (coalesced reads).
    KK: tl.constexpr = K * K
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = (KK + 1) * C
    mask = j < total
    acc = tl.zeros((BLOCK,), dtype=part_ptr.dtype.element_ty)
    for p in range(0, num_parts):
        acc += tl.load(part_ptr + tl.cast(p, tl.int64) * total + j, mask=mask, other=0)
    tap = j // C
    ch = j % C
    tl.store(gw_ptr + ch * KK + tap, acc.to(gw_ptr.dtype.element_ty), mask=mask & (tap < KK))
    tl.store(gb_ptr + ch, acc.to(gb_ptr.dtype.element_ty), mask=mask & (tap == KK))


# --------------------------------------------------------------------------------------- launchers


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile_config(c: int, w: int, k: int, dtype: torch.dtype, wgrad: bool = False) -> tuple[int, int]:
    """(BLOCK_W, BLOCK_C) for a [pixels, channels] tile; shared by all three passes.

    A program has _NUM_WARPS * 32 = 64 threads and each thread holds ``per_thread`` elements of
    each of the K rolling accumulators: 8 (two 16-byte bf16 vectors' worth) while K * 8 fits in
    registers (K <= 15), 4 for larger K (31 * 4 = 124 accumulator registers); half that for fp64,
    whose values take two registers; the weight-gradient kernel keeps K+1 accumulators next to
    its loads and takes half. BLOCK_W is at most 16 (and no wider than the image: 8 for ConvNeXt's
    7x7 stage), BLOCK_C takes the rest, at most 32 and no wider than C. Capped at 32 because a
    64-wide channel vector in a 64-thread program gets a one-element-per-thread layout for the
    weight loads and a shared-memory layout conversion on every tap (seen in the sm_90 TTGIR).
    """
    per_thread = 8 if k <= 15 else 4
    if wgrad:
        per_thread //= 2
    if dtype == torch.float64:
        per_thread //= 2
    elems = per_thread * 32 * _NUM_WARPS
    block_w = min(16, next_power_of_2(w))
    block_c = max(1, min(32, elems // block_w, next_power_of_2(c)))
    return block_w, block_c


def _fwd_rows(n: int, h: int, w: int, c: int, block_w: int, block_c: int) -> int:
    """Output rows per forward program: the whole column (no halo rows re-read) unless that leaves
    fewer than _FWD_TARGET_PROGRAMS programs; then split H into segments of equal length."""
    base = n * cdiv(w, block_w) * cdiv(c, block_c)
    segs = min(h, max(1, cdiv(_FWD_TARGET_PROGRAMS, base)))
    return cdiv(h, segs)


def _channel_vectorizable(t: torch.Tensor) -> torch.Tensor:
    """``t`` if its channel stride is 1 or 0, else a channels_last copy (see module docstring)."""
    if t.stride(1) in (0, 1) or t.shape[1] == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _transposed_taps(weight: torch.Tensor, flip: bool) -> torch.Tensor:
    """weight (C, 1, K, K) -> [K*K, C] contiguous in the accumulation dtype (flipped if asked)."""
    c, _, k, _ = weight.shape
    w = weight.flip(-1, -2) if flip else weight
    out = torch.empty((k * k, c), dtype=_acc_dtype(weight.dtype), device=weight.device)
    return out.copy_(w.reshape(c, k * k).t())  # one launch: transpose and convert together


def _px_config(c: int, w: int, k: int, dtype: torch.dtype) -> Optional[tuple[int, int, int]]:
    """(PW, BLOCK_G, BLOCK_C) for _dwconv_fwd_px_kernel, or None to use _dwconv_fwd_kernel.

    A thread holds PW columns x ``cpt`` channels of each of the K rolling output rows (K*PW*cpt fp32
    accumulator registers, kept <= 112 so the PW + K - 1 input columns and the streamed weights
    fit in 255 registers without spills). cpt = 2 with PW = 7 when W is a multiple of 7 (every
    ConvNeXt stage: 56, 28, 14, 7; no half-empty groups), else cpt = 4 (16-byte fp32 weight
    loads) and PW = 112 // (K*4) capped at 8. Large K (every tap is unrolled: K*K*PW FMAs
    of code per row) and fp64 keep _dwconv_fwd_kernel.
    """
    if k > 13 or dtype == torch.float64:
        return None
    if k <= 7 and w % 7 == 0:
        pw, cpt = 7, 2
    else:
        pw, cpt = max(1, min(8, 112 // (k * 4))), 4
    elems = cpt * 32 * _NUM_WARPS
    block_g = min(next_power_of_2(cdiv(w, pw)), elems // cpt)
    block_c = max(1, min(elems // block_g, next_power_of_2(c)))
    return pw, block_g, block_c


def _wgrad_px_config(c: int, w: int, k: int, dtype: torch.dtype) -> Optional[tuple[int, int, int]]:
    """(PW, BLOCK_G, BLOCK_C) for _dwconv_bwd_weight_px_kernel, or None to use _dwconv_bwd_weight_kernel.

    A thread keeps K*K*cpt fp32 accumulators for the whole program, next to the PW + K - 1 x
    columns and PW grad_y columns of one row (times cpt): cpt = 2 channels for K <= 7 (98
    accumulators at K=7; 4-byte bf16 / 8-byte fp32 loads), 1 for K = 9 and 11 (121 at K=11).
    PW = 7 when W is a multiple of 7 (every ConvNeXt stage: no half-empty groups; 203-224
    registers at K=7 on sm_90/sm_80), else 8, or 5 at K = 7 and K = 11 (masked columns and
    channels: PW = 8 spills at K=7, C=37, W=17; PW = 5 takes 236-246 registers), never more than W.
    Larger K (K*K accumulators do not fit) and fp64 keep _dwconv_bwd_weight_kernel.
    """
    if k > 11 or dtype == torch.float64:
        return None
    cpt = 2 if k <= 7 else 1
    pw = 7 if (w % 7 == 0 and k != 11) else min(5 if k in (7, 11) else 8, w)
    elems = cpt * 32 * _NUM_WARPS
    block_g = min(next_power_of_2(cdiv(w, pw)), elems // cpt)
    block_c = max(1, min(elems // block_g, next_power_of_2(c)))
    return pw, block_g, block_c


def _blocked_taps(weight: torch.Tensor, flip: bool, block_c: int) -> torch.Tensor:
    """weight (C, 1, K, K) -> [cdiv(C, block_c), K*K, block_c] contiguous in the accumulation dtype
    (flipped if asked): the weight layout of _dwconv_fwd_px_kernel. Lanes past C in the last block
    are left uninitialized: the kernel masks those channels' input loads and output stores, so
    their values never reach memory (a zero fill would be one more kernel launch per call)."""
    c, _, k, _ = weight.shape
    nb, full = cdiv(c, block_c), c // block_c
    w = (weight.flip(-1, -2) if flip else weight).reshape(c, k * k)
    out = torch.empty((nb, k * k, block_c), dtype=_acc_dtype(weight.dtype), device=weight.device)
    # One strided copy with the dtype conversion per part: the full blocks (every ConvNeXt width
    # is only those), then the partial last block. Each launch costs host time on every call.
    if full:
        out[:full].copy_(w[:full * block_c].view(full, block_c, k * k).transpose(1, 2))
    if full < nb:
        out[full, :, :c - full * block_c].copy_(w[full * block_c:].t())
    return out


def _launch_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], flip: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    y = empty_channels_last(x.shape, x.dtype, x.device)
    px = _px_config(c, w, k, x.dtype)
    if px is not None:
        if h >= 2**30:
            raise ValueError(f"depthwise conv: H = {h} must be below 2**30")
        pw, block_g, block_c = px
        rows = _fwd_rows(n, h, w, c, block_g * pw, block_c)
        num_segs, num_wblocks = cdiv(h, rows), cdiv(w, block_g * pw)
        grid = (n * num_segs * num_wblocks, cdiv(c, block_c))
        w_taps = _blocked_taps(weight, flip, block_c)
        _dwconv_fwd_px_kernel[grid](
            x, w_taps, bias if bias is not None else w_taps, y,
            c, h, w, *x.stride(), rows, num_segs, num_wblocks,
            K=k, HAS_BIAS=bias is not None, EVEN_C=c % block_c == 0, PW=pw, BLOCK_G=block_g, BLOCK_C=block_c,
            num_warps=_NUM_WARPS,
        )
        return y
    w_taps = _transposed_taps(weight, flip)
    block_w, block_c = _tile_config(c, w, k, x.dtype)
    rows = _fwd_rows(n, h, w, c, block_w, block_c)
    num_segs, num_wblocks = cdiv(h, rows), cdiv(w, block_w)
    grid = (n * num_segs * num_wblocks, cdiv(c, block_c))
    _dwconv_fwd_kernel[grid](
        x, w_taps, bias if bias is not None else w_taps, y,
        c, h, w, *x.stride(), rows, num_segs, num_wblocks,
        K=k, HAS_BIAS=bias is not None, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )
    return y


def dwconv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y = depthwise_conv2d(x, weight, bias), stride 1, padding K//2.

    Args:
        x: (N, C, H, W), any strides; fp16, bf16, fp32 or fp64.
        weight: (C, 1, K, K) contiguous, K odd; bias: (C,) or None.

    Returns:
        y (N, C, H, W) channels_last, dtype of x.
    """
    return _launch_fwd(_channel_vectorizable(x), weight, bias, flip=False)


def dwconv_backward(grad_y: torch.Tensor, x: torch.Tensor,
                    weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of depthwise_conv2d.

    Args:
        grad_y: (N, C, H, W), any strides (expanded stride-0 included).
        x: the forward input (N, C, H, W), any strides.
        weight: (C, 1, K, K) contiguous.

    Returns:
        grad_x (N, C, H, W) channels_last in x.dtype; grad_w (C, 1, K, K) contiguous and grad_b (C,),
        both in weight.dtype, deterministic (fixed-order reduction, no atomics).
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    grad_y = _channel_vectorizable(grad_y)
    x = _channel_vectorizable(x)

    # Input gradient: correlation of grad_y with the flipped kernel, padding K//2.
    grad_x = _launch_fwd(grad_y, weight, None, flip=True)

    acc_dtype = _acc_dtype(x.dtype)
    px = _wgrad_px_config(c, w, k, x.dtype)
    if px is not None:
        pw, block_g, block_c = px
        num_cblocks = cdiv(c, block_c)
        rows = _fwd_rows(n, h, w, c, block_g * pw, block_c)
        num_segs, num_wblocks = cdiv(h, rows), cdiv(w, block_g * pw)
        num_units = n * num_segs * num_wblocks
        units_per_prog = max(1, cdiv(num_units, max(1, _WGRAD_TARGET_PROGRAMS // num_cblocks)))
        num_parts = cdiv(num_units, units_per_prog)
        # Every program writes all of its partials rows: no zero fill.
        partials = torch.empty((num_parts, k * k + 1, c), dtype=acc_dtype, device=x.device)
        if num_parts > 0:
            _dwconv_bwd_weight_px_kernel[(num_parts, num_cblocks)](
                grad_y, x, partials, c, h, w, *grad_y.stride(), *x.stride(),
                rows, num_segs, num_wblocks, num_units, units_per_prog,
                K=k, EVEN_C=c % block_c == 0, EVEN_W=w == num_wblocks * block_g * pw,
                PW=pw, BLOCK_G=block_g, BLOCK_C=block_c, num_warps=_NUM_WARPS,
            )
    else:
        partials, num_parts = _launch_wgrad_tiles(grad_y, x, k, acc_dtype)
    grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    grad_b = torch.empty((c,), dtype=weight.dtype, device=weight.device)
    block = 256
    _dwconv_bwd_weight_reduce_kernel[(cdiv((k * k + 1) * c, block),)](
        partials, grad_w, grad_b, num_parts, c, K=k, BLOCK=block, num_warps=4,
    )
    return grad_x, grad_w, grad_b


def _launch_wgrad_tiles(grad_y: torch.Tensor, x: torch.Tensor, k: int,
                        acc_dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """_dwconv_bwd_weight_kernel (large K, fp64): returns (partials, num_parts)."""
    n, c, h, w = x.shape
    block_w, block_c = _tile_config(c, w, k, x.dtype, wgrad=True)
    num_segs, num_wblocks = cdiv(h, _WGRAD_TILE_ROWS), cdiv(w, block_w)
    num_tiles = n * num_segs * num_wblocks
    num_cblocks = cdiv(c, block_c)
    tiles_per_prog = cdiv(num_tiles, max(1, _WGRAD_TARGET_PROGRAMS // num_cblocks))
    num_parts = cdiv(num_tiles, tiles_per_prog)
    partials = torch.zeros((num_parts, k * k + 1, c), dtype=acc_dtype, device=x.device)
    _dwconv_bwd_weight_kernel[(num_parts, num_cblocks)](
        grad_y, x, partials, c, h, w, *grad_y.stride(), *x.stride(),
        num_segs, num_wblocks, num_tiles, tiles_per_prog,
        K=k, TILE_ROWS=_WGRAD_TILE_ROWS, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )
    return partials, num_parts


# --------------------------------------------------------------------------------- AOT check list

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _signature(kernel, types: dict, constexprs: dict) -> dict:
    return {name: ("constexpr" if name in constexprs else types.get(name, "i32")) for name in kernel.arg_names}


def _divisible_attrs(kernel, values: dict, pointers: tuple) -> dict:
    """Triton's JIT marks pointers (16-byte aligned from the caching allocator) and ints divisible
    by 16 with tt.divisibility; the AOT compile gets the same marks so it sees the same code."""
    attrs = {}
    for i, name in enumerate(kernel.arg_names):
        if name in pointers or (isinstance(values.get(name), int) and values[name] % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def aot_configs(stages) -> list[dict]:
    """Every kernel at the configurations the launchers pick for the given (C, H, W) stages (square
    maps), for an ahead-of-time compile check (sm_90 / sm_80, no spills): each stage at K=7 in bf16
    and fp32, and the first one at K=31.

    Each entry: {"kernel", "signature", "constexprs", "attrs", "num_warps", "name"}; pass
    ``ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)`` to
    ``triton.compile`` with ``options={"num_warps": num_warps}``. Inputs are channels_last (channel
    stride 1, which the JIT specializes to a constant like here).
    """
    cases = [(c, hw, 7, dt) for c, hw, _ in stages for dt in (torch.bfloat16, torch.float32)]
    cases += [(stages[0][0], stages[0][1], 31, dt) for dt in (torch.bfloat16, torch.float32)]
    configs = []
    for c, hw, k, dtype in cases:
        n = 128
        t, acc = _TRITON_DTYPE[dtype], _TRITON_DTYPE[_acc_dtype(dtype)]
        block_w, block_c = _tile_config(c, hw, k, dtype)
        strides = {"n": hw * hw * c, "h": hw * c, "w": c}
        tag = f"C{c}_HW{hw}_K{k}_{t}"

        px = _px_config(c, hw, k, dtype)
        if px is not None:
            pw, block_g, block_c_px = px
            rows = _fwd_rows(n, hw, hw, c, block_g * pw, block_c_px)
            kern = _dwconv_fwd_px_kernel
            tile = {"EVEN_C": c % block_c_px == 0, "PW": pw, "BLOCK_G": block_g, "BLOCK_C": block_c_px}
        else:
            rows = _fwd_rows(n, hw, hw, c, block_w, block_c)
            kern = _dwconv_fwd_kernel
            tile = {"BLOCK_W": block_w, "BLOCK_C": block_c}
        for has_bias in (True, False):  # False: the input-gradient launch (bias pointer unused)
            values = {"C": c, "H": hw, "W": hw, "sxn": strides["n"], "sxh": strides["h"], "sxw": strides["w"],
                      "rows": rows}
            constexprs = {"sxc": 1, "K": k, "HAS_BIAS": has_bias, **tile}
            configs.append({
                "kernel": kern,
                "signature": _signature(kern, {"x_ptr": f"*{t}", "w_ptr": f"*{acc}", "y_ptr": f"*{t}",
                                               "b_ptr": f"*{t}" if has_bias else f"*{acc}"}, constexprs),
                "constexprs": constexprs,
                "attrs": _divisible_attrs(kern, values, ("x_ptr", "w_ptr", "b_ptr", "y_ptr")),
                "num_warps": _NUM_WARPS,
                "name": f"dwconv_fwd_{tag}_{'bias' if has_bias else 'nobias'}",
            })

        values = {"C": c, "H": hw, "W": hw, "sgn": strides["n"], "sgh": strides["h"], "sgw": strides["w"],
                  "sxn": strides["n"], "sxh": strides["h"], "sxw": strides["w"]}
        wpx = _wgrad_px_config(c, hw, k, dtype)
        if wpx is not None:
            pw, block_g, block_c_px = wpx
            num_wblocks = cdiv(hw, block_g * pw)
            values["rows"] = rows = _fwd_rows(n, hw, hw, c, block_g * pw, block_c_px)
            values["num_units"] = n * cdiv(hw, rows) * num_wblocks
            constexprs = {"sgc": 1, "sxc": 1, "K": k, "EVEN_C": c % block_c_px == 0,
                          "EVEN_W": hw == num_wblocks * block_g * pw, "PW": pw, "BLOCK_G": block_g,
                          "BLOCK_C": block_c_px}
            kern = _dwconv_bwd_weight_px_kernel
        else:
            block_w, block_c = _tile_config(c, hw, k, dtype, wgrad=True)
            constexprs = {"sgc": 1, "sxc": 1, "K": k, "TILE_ROWS": _WGRAD_TILE_ROWS, "BLOCK_W": block_w,
                          "BLOCK_C": block_c}
            kern = _dwconv_bwd_weight_kernel
        configs.append({
            "kernel": kern,
            "signature": _signature(kern, {"gy_ptr": f"*{t}", "x_ptr": f"*{t}", "part_ptr": f"*{acc}"}, constexprs),
            "constexprs": constexprs,
            "attrs": _divisible_attrs(kern, values, ("gy_ptr", "x_ptr", "part_ptr")),
            "num_warps": _NUM_WARPS,
            "name": f"dwconv_bwd_weight_{tag}",
        })

        constexprs = {"K": k, "BLOCK": 256}
        kern = _dwconv_bwd_weight_reduce_kernel
        configs.append({
            "kernel": kern,
            "signature": _signature(kern, {"part_ptr": f"*{acc}", "gw_ptr": f"*{t}", "gb_ptr": f"*{t}"}, constexprs),
            "constexprs": constexprs,
            "attrs": _divisible_attrs(kern, {"C": c}, ("part_ptr", "gw_ptr", "gb_ptr")),
            "num_warps": 4,
            "name": f"dwconv_bwd_weight_reduce_{tag}",
        })
    return configs
