"""The pointwise MLP of a ConvNeXt block in Triton: fc1 -> exact GELU -> fc2 -> layer scale ->
stochastic depth -> residual, on token rows.

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022, section 2.4) ends every block with an
inverted bottleneck of two Linear layers over channels (C -> 4C -> C) on the channels_last view of
the activation. Per token that is 16*C^2 FLOPs against ~6*C bytes of input and output (x,
shortcut, out in 16-bit): a Hopper GPU's ridge is ~300 FLOP/B, so the 4C hidden vector decides the
narrow stages (C = 96: 768 B of hidden activation per token, written and read back by an unfused
pipeline) and GEMM efficiency the wide ones (C >= 384). On rows x (M, C) of contiguous channels:

    h   = x @ w1.T + b1                 (M, Hd)  pre-activation, Hd = 4C in ConvNeXt
    a   = GELU_erf(h)                            in fp32
    y2  = a @ w2.T + b2                 (M, C)
    out = shortcut + s[row // rows_per_sample] * gamma * y2

Forward, two routes (``_fwd_config`` picks one from C):

* ``_mlp_fwd_fused_kernel`` (C <= FUSED_MAX_C): the loop of the Triton fused-attention tutorial
  with the hidden dimension in place of the keys. A program owns BLOCK_M rows and an output slice
  of BLOCK_N columns, keeps its x tile [BLOCK_M, C padded to a power of two] in registers, and for
  each hidden chunk of BLOCK_H computes h = x @ w1_chunk^T + b1 (tensor cores, fp32 accumulate),
  GELU in fp32, and ``acc += GELU(h).to(x dtype) @ w2_chunk^T``; the hidden activation never goes
  to memory (unless the backward asks for h). The epilogue adds b2, scales by gamma and the
  per-sample factor and adds the shortcut. The fp32 accumulator [BLOCK_M, BLOCK_N] must stay in
  registers, so BLOCK_N <= 128: with C > 128 the output is split in slices and each slice
  recomputes h (C = 192: 1.5x the FLOPs, still cheaper than the hidden round trip through HBM at
  that width; see FUSED_MAX_C).
* Two GEMMs with fused epilogues (C > FUSED_MAX_C, the compute-bound stages): ``_linear_kernel``
  computes h = x @ w1^T + b1, stores h when asked and a = GELU(h); the same kernel then computes
  a @ w2^T with the b2 / gamma / sample-scale / shortcut epilogue. At C >= 384 the hidden round trip
  (16*C bytes per token) costs less than the GEMMs (16*C^2 FLOPs), so recomputing h per output
  slice would only waste tensor-core time.

Backward (correct and deterministic first: no atomics anywhere; every sum over rows is per-tile
fp32 partials summed in a fixed order):

* ``_mlp_dgelu_kernel`` (Triton, fused): per [BLOCK_M, BLOCK_H] tile, loops over channel chunks
  computing ``g @ w2`` with g = grad_out * s * gamma formed in fp32 in the prologue (and, with no
  saved h, the recompute h = x @ w1^T + b1 in the same loop, sharing the row tiles); its epilogue
  applies the GELU derivative (gh = (g @ w2) * GELU'(h), TransformerEngine's DGELU epilogue) and
  writes gh, ``as = s * GELU(h)`` (the operand of the fc2 weight gradient) and fp32 column partial
  sums of gh (for grad b1). The programs of the first hidden block also write fp32 column partials
  of grad_out * s (for grad b2 and grad gamma).
* ``_mlp_wgrad_kernel`` (Triton): G = grad_out^T @ as, (C, Hd), in fp32, split over rows into
  per-split partials (FlashAttention-2's dK/dV pattern with a fixed split count). From G:
  grad w2 = gamma * G and grad gamma = sum_k w2 * G + b2 * sum_rows(grad_out * s), because
  sum_rows grad_out * s * y2 = sum_k w2[c, k] G[c, k] + b2[c] sum_rows grad_out[:, c] s: no
  recompute of y2 (another M x C x Hd GEMM). G has to be fp32 for that sum, which a 16-bit
  cuBLAS GEMM would round, hence Triton here.
* grad w1 = gh^T @ x and grad x = gh @ w1: plain GEMMs without epilogue, so ``torch.matmul``
  (cuBLAS: deterministic on one stream, and faster than a hand-written Triton GEMM at these shapes).

Numerics: every dot accumulates in fp32 with operands in x's dtype (fp16 / bf16 tensor cores; fp32
with ``input_precision="ieee"``, no TF32, so fp32 results match an fp32 reference); GELU, its
derivative, the bias, scale and residual terms in fp32; one rounding per stored tensor. fp64 is not
supported here (the op runs the reference).

Pointers: x, shortcut, out, h, gh, as are row-major (M, C) or (M, Hd) with contiguous rows; w1 is
(Hd, C), w2 (C, Hd), contiguous; grad_out is any 2-D strides (an expanded stride-0 gradient too).
Offsets of row-indexed tensors are int64 (M * Hd can pass 2**31 at stage 1, batch 256).
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .host_math import cdiv, next_power_of_2

__all__ = ["mlp_forward", "mlp_backward", "aot_configs"]

# Widest C served by the fused forward. C = 160 / 192 / 256 pad to 256 and run as two output slices
# of 128 (fc1 recomputed twice: 1.5x the FLOPs at C = 192, where the two-GEMM route would move the
# 8*C-byte hidden vector to HBM and back, ~16*C bytes per token at a ridge of ~300 FLOP/B); wider
# stages are compute-bound and take the two GEMMs.
FUSED_MAX_C = 256
# Output columns per fused program: the fp32 accumulator [BLOCK_M, BLOCK_N] lives in registers;
# with 256 columns every tried sm_90 configuration spilled.
FUSED_MAX_BLOCK_N = 128
# Programs to aim for in the weight-gradient split over rows: about two waves of a 132-SM GPU.
# A constant, not a device query, so the split (and the bits of the result) depends on the shape only.
_WGRAD_TARGET_PROGRAMS = 264
_MIN_DOT = 16  # tl.dot needs every dimension >= 16


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------------- device helpers


@triton.jit
def _gelu_parts(h):
    """(GELU(h), GELU'(h)) of fp32 h, the exact erf form: GELU = h * Phi(h), GELU' = Phi(h) + h * phi(h)."""
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
    return h * cdf, cdf + h * pdf


@triton.jit
def _gelu(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))


# --------------------------------------------------------------------------------- forward kernels


@triton.jit
def _mlp_fwd_fused_kernel(
    x_ptr,      # (M, C) input rows, contiguous
    w1_ptr,     # (Hd, C) fc1 weight
    b1_ptr,     # (Hd,) fc1 bias (unused without HAS_B1)
    w2_ptr,     # (C, Hd) fc2 weight
    b2_ptr,     # (C,) fc2 bias (unused without HAS_B2)
    gamma_ptr,  # (C,) layer scale (unused without HAS_GAMMA)
    sc_ptr,     # (M, C) shortcut rows (unused without HAS_SC)
    s_ptr,      # (N,) fp32 per-sample scale, row r uses s[r // RPS] (unused without HAS_S)
    out_ptr,    # (M, C) output rows
    h_ptr,      # (M, Hd) pre-activation, written by the first output slice when SAVE_H
    M, C, HD, RPS,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_SC: tl.constexpr,
    HAS_S: tl.constexpr, SAVE_H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """out[rows, slice] for BLOCK_M rows and one BLOCK_N slice of the C outputs.

    BLOCK_K = C padded to a power of two: the whole x row tile is loaded once and reused by every
    hidden chunk (the fc1 reduction runs over all of C in one dot). Padded channels and hidden
    units load as zeros, so they add nothing (GELU(0) = 0 and their w2 rows are zero).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < C
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < C
    hs = tl.arange(0, BLOCK_H)

    x = tl.load(x_ptr + rows64[:, None] * C + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j in range(0, HD, BLOCK_H):
        hid = j + hs
        hmask = hid < HD
        # w1 chunk as [BLOCK_K, BLOCK_H] (= w1[hid, :]^T): the dot's B operand without a transpose.
        w1 = tl.load(w1_ptr + hid[None, :] * C + ks[:, None], mask=kmask[:, None] & hmask[None, :], other=0.0)
        h = tl.dot(x, w1, input_precision=DOT_PRECISION)
        if HAS_B1:
            h += tl.load(b1_ptr + hid, mask=hmask, other=0.0).to(tl.float32)[None, :]
        if SAVE_H:
            if pid_n == 0:
                tl.store(h_ptr + rows64[:, None] * HD + hid[None, :], h.to(h_ptr.dtype.element_ty),
                         mask=rmask[:, None] & hmask[None, :])
        acc = _gelu_fc2(h, hid, hmask, cols, cmask, w2_ptr, HD, acc, x_ptr.dtype.element_ty, DOT_PRECISION)

    _residual_epilogue(acc, rows, rows64, rmask, cols, cmask, b2_ptr, gamma_ptr, sc_ptr, s_ptr, out_ptr, C, RPS,
                       HAS_B2, HAS_GAMMA, HAS_SC, HAS_S)


@triton.jit
def _gelu_fc2(h, hid, hmask, cols, cmask, w2_ptr, HD, acc, A_TY: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The second half of one hidden chunk, shared by this MLP and the one-kernel block:
    ``acc += GELU(h).to(A_TY) @ w2[cols, hid]^T``. GELU in fp32, rounded once to the dot's operand
    dtype; the w2 chunk is loaded as [BLOCK_H, BLOCK_N] (the dot's B operand without a transpose),
    and padded hidden units (hmask false) load zero rows, so they add nothing."""
    a = _gelu(h).to(A_TY)
    w2 = tl.load(w2_ptr + cols[None, :] * HD + hid[:, None], mask=hmask[:, None] & cmask[None, :], other=0.0)
    return tl.dot(a, w2, acc, input_precision=DOT_PRECISION)


@triton.jit
def _residual_epilogue(acc, rows, rows64, rmask, cols, cmask, b2_ptr, gamma_ptr, sc_ptr, s_ptr, out_ptr, C, RPS,
                       HAS_B2: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_SC: tl.constexpr, HAS_S: tl.constexpr):
    """out = shortcut + s[row // RPS] * gamma * (acc + b2), in fp32, one rounding at the store."""
    y = acc
    if HAS_B2:
        y += tl.load(b2_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GAMMA:
        y *= tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_S:
        y *= tl.load(s_ptr + rows // RPS, mask=rmask, other=0.0)[:, None]
    mask = rmask[:, None] & cmask[None, :]
    offs = rows64[:, None] * C + cols[None, :]
    if HAS_SC:
        y += tl.load(sc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_kernel(
    a_ptr,      # (M, K) row operand, contiguous rows
    w_ptr,      # (N, K) weight, contiguous
    bias_ptr,   # (N,) bias (unused without HAS_BIAS)
    gamma_ptr,  # (N,) layer scale (RESIDUAL epilogue, unused without HAS_GAMMA)
    sc_ptr,     # (M, N) shortcut rows (RESIDUAL epilogue, unused without HAS_SC)
    s_ptr,      # (N_samples,) fp32 per-sample scale (RESIDUAL epilogue, unused without HAS_S)
    out_ptr,    # (M, N) result: GELU(a @ w^T + bias) (GELU epilogue) or the block output (RESIDUAL)
    h_ptr,      # (M, N) pre-activation a @ w^T + bias (GELU epilogue with SAVE_H)
    M, N, K, RPS,
    GELU_EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_SC: tl.constexpr,
    HAS_S: tl.constexpr, SAVE_H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of a @ w^T with a fused epilogue: fc1 (+ b1, store h, GELU) or
    fc2 (+ b2, * gamma, * sample scale, + shortcut). Programs are grouped GROUP_M row tiles at a
    time along N (the Triton matmul tutorial's order) so a weight tile stays in L2 while the rows
    that use it run."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_size
    pid_n = (pid % group) // group_size

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        kmask = kk < K
        a = tl.load(a_ptr + rows64[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * K + kk[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    if GELU_EPILOGUE:
        mask = rmask[:, None] & cmask[None, :]
        offs = rows64[:, None] * N + cols[None, :]
        h = acc
        if HAS_BIAS:
            h += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if SAVE_H:
            tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + offs, _gelu(h).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        _residual_epilogue(acc, rows, rows64, rmask, cols, cmask, bias_ptr, gamma_ptr, sc_ptr, s_ptr, out_ptr, N, RPS,
                           HAS_BIAS, HAS_GAMMA, HAS_SC, HAS_S)


# --------------------------------------------------------------------------------- backward kernels


@triton.jit
def _mlp_dgelu_kernel(
    go_ptr,     # (M, C) grad of the block output, strides (sgo_m, sgo_c), any (0 too)
    x_ptr,      # (M, C) input rows (the recompute, RECOMPUTE only)
    w1_ptr,     # (Hd, C) fc1 weight (RECOMPUTE only)
    b1_ptr,     # (Hd,) fc1 bias (RECOMPUTE with HAS_B1)
    w2_ptr,     # (C, Hd) fc2 weight
    gamma_ptr,  # (C,) layer scale (unused without HAS_GAMMA)
    s_ptr,      # (N,) fp32 per-sample scale (unused without HAS_S)
    h_ptr,      # (M, Hd) saved pre-activation (read unless RECOMPUTE)
    gh_ptr,     # (M, Hd) out: grad of h = (g @ w2) * GELU'(h), g = go * s * gamma
    as_ptr,     # (M, Hd) out: s * GELU(h), the right operand of the fc2 weight gradient
    gb1_part_ptr,  # (cdiv(M, BLOCK_M), Hd) fp32 out: column sums of gh over this program's rows
    gs_part_ptr,   # (cdiv(M, BLOCK_M), C) fp32 out: column sums of go * s (programs of hidden block 0)
    M, C, HD, RPS, sgo_m, sgo_c,
    RECOMPUTE: tl.constexpr, HAS_B1: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """gh, as and the bias partials for one [BLOCK_M, BLOCK_H] tile; loops over C in BLOCK_K chunks.

    The recompute of h shares the loop with g @ w2 (same rows, same channel chunks): recomputing
    costs one more dot per chunk and saves storing h (8*C bytes per token in bf16) in the forward
    and reading it here.
    """
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    hid = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hid < HD
    ks = tl.arange(0, BLOCK_K)
    if HAS_S:
        srow = tl.load(s_ptr + rows // RPS, mask=rmask, other=0.0)
    acc_g = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    acc_h = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + ks
        csm = cs < C
        tile_mask = rmask[:, None] & csm[None, :]
        g = tl.load(go_ptr + rows64[:, None] * sgo_m + cs.to(tl.int64)[None, :] * sgo_c, mask=tile_mask,
                    other=0.0).to(tl.float32)
        if HAS_S:
            g = g * srow[:, None]
        if pid_h == 0:
            tl.store(gs_part_ptr + pid_m.to(tl.int64) * C + cs, tl.sum(g, axis=0), mask=csm)
        if HAS_GAMMA:
            g = g * tl.load(gamma_ptr + cs, mask=csm, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w2_ptr + cs[:, None] * HD + hid[None, :], mask=csm[:, None] & hmask[None, :], other=0.0)
        acc_g = tl.dot(g.to(w2_ptr.dtype.element_ty), w2, acc_g, input_precision=DOT_PRECISION)
        if RECOMPUTE:
            x = tl.load(x_ptr + rows64[:, None] * C + cs[None, :], mask=tile_mask, other=0.0)
            w1 = tl.load(w1_ptr + hid[None, :] * C + cs[:, None], mask=csm[:, None] & hmask[None, :], other=0.0)
            acc_h = tl.dot(x, w1, acc_h, input_precision=DOT_PRECISION)

    mask = rmask[:, None] & hmask[None, :]
    offs = rows64[:, None] * HD + hid[None, :]
    if RECOMPUTE:
        h = acc_h
        if HAS_B1:
            h += tl.load(b1_ptr + hid, mask=hmask, other=0.0).to(tl.float32)[None, :]
    else:
        h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    act, dact = _gelu_parts(h)
    gh = acc_g * dact  # rows past M have g = 0, so gh = 0 there
    tl.store(gh_ptr + offs, gh.to(gh_ptr.dtype.element_ty), mask=mask)
    if HAS_S:
        act = act * srow[:, None]
    tl.store(as_ptr + offs, act.to(as_ptr.dtype.element_ty), mask=mask)
    tl.store(gb1_part_ptr + pid_m.to(tl.int64) * HD + hid, tl.sum(gh, axis=0), mask=hmask)


@triton.jit
def _mlp_wgrad_kernel(
    go_ptr,     # (M, C) grad of the block output, strides (sgo_m, sgo_c)
    as_ptr,     # (M, Hd) s * GELU(h), contiguous
    part_ptr,   # (SPLITS, C, Hd) fp32 out: this split's rows of G = go^T @ as
    M, C, HD, ROWS_PER_SPLIT, sgo_m, sgo_c,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One [BLOCK_C, BLOCK_H] tile of G summed over the rows [split * ROWS_PER_SPLIT, ...) of one
    split: each program owns its output tile, so no atomics, and the splits are summed on the host
    side in a fixed order."""
    pid_c = tl.program_id(0)
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    csm = cs < C
    hid = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hid < HD
    ms = tl.arange(0, BLOCK_M)
    m_start = split * ROWS_PER_SPLIT
    m_end = tl.minimum(m_start + ROWS_PER_SPLIT, M)
    acc = tl.zeros([BLOCK_C, BLOCK_H], dtype=tl.float32)
    for m0 in range(m_start, m_end, BLOCK_M):
        rows = m0 + ms
        rmask = rows < m_end
        rows64 = rows.to(tl.int64)
        # go^T tile [BLOCK_C, BLOCK_M] loaded directly in the transposed order.
        g = tl.load(go_ptr + rows64[None, :] * sgo_m + cs.to(tl.int64)[:, None] * sgo_c,
                    mask=csm[:, None] & rmask[None, :], other=0.0)
        a = tl.load(as_ptr + rows64[:, None] * HD + hid[None, :], mask=rmask[:, None] & hmask[None, :], other=0.0)
        acc = tl.dot(g, a, acc, input_precision=DOT_PRECISION)
    offs = (split.to(tl.int64) * C + cs[:, None]) * HD + hid[None, :]
    tl.store(part_ptr + offs, acc, mask=csm[:, None] & hmask[None, :])


# --------------------------------------------------------------------------------- configurations

_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# Shared memory one program may use on an sm_80 / sm_90 GPU (163 / 227 KB opt-in); consumer Ampere
# and Ada parts (sm_86 / sm_89) allow about 99 KB, which the large fused tiles exceed.
_SMALL_SMEM_BYTES = 101376


@functools.lru_cache(maxsize=16)
def _small_smem(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with at most ~99 KB of shared memory per program (sm_86 / sm_89):
    those get the fused tiles that fit there. Only the forward's row tile depends on it, and each
    row's arithmetic is the same at any row tile, so results do not depend on the answer."""
    if device.type != "cuda":
        return False
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 0) <= _SMALL_SMEM_BYTES


@functools.lru_cache(maxsize=256)
def _fwd_config(c: int, hd: int, dtype: torch.dtype, small_smem: bool = False) -> tuple:
    """Forward route and blocks for (C, Hd, dtype): ("fused", BLOCK_M, BLOCK_K, BLOCK_N, BLOCK_H,
    warps, stages) or ("gemm", BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages).

    sm_90, bf16, Triton 3.8 (``aot_check --only mlp``): with C padded to <= 128, BLOCK_M 128 x
    BLOCK_H 32 x 8 warps takes 172 registers and 72 KB of shared memory (BLOCK_H 64 saves ~7% of
    the loop's instructions but needs 112 KB, over sm_86's 99 KB; 4 warps spill). With C padded to
    256 (two output slices of 128), BLOCK_M 128 takes 166 registers and 120 KB, BLOCK_M 64 (small
    shared memory GPUs) 105 registers and 84 KB: BLOCK_M 128 halves the L2 traffic of re-reading
    the weights (w1 and a w2 slice, ~590 KB per row tile at C = 192). fp32 (exact fma dots, a
    correctness path) uses BLOCK_M 64. The GEMM tiles are the Triton matmul tutorial's Hopper
    choice, 128 x 128 x 64 with 8 warps and 3 stages (96 KB of shared memory: fits every sm_80+),
    32-wide K steps for fp32.
    """
    block_k = max(_MIN_DOT, next_power_of_2(c))
    wide = dtype == torch.float32
    if block_k <= FUSED_MAX_C:
        block_n = min(block_k, FUSED_MAX_BLOCK_N)
        block_m = 64 if (wide or (small_smem and block_k > 128)) else 128
        return ("fused", block_m, block_k, block_n, 32, 8, 2)
    return ("gemm", 128, 128, 32 if wide else 64, 8, 8, 3)


@functools.lru_cache(maxsize=256)
def _bwd_config(c: int, hd: int, m: int, dtype: torch.dtype) -> tuple:
    """(dgelu BLOCK_M, BLOCK_H, BLOCK_K, warps, stages, wgrad BLOCK_C, BLOCK_H, BLOCK_M, warps, stages,
    splits, rows per split) for the backward at (C, Hd, M).

    dgelu holds two fp32 [64, 128] accumulators (g @ w2 and the recompute of h): 130 / 167
    registers and 41 / 89 KB of shared memory on sm_90 in bf16 (aot_check), no spills. The weight
    gradient's [128, 128] fp32 tile over 64-row steps: 104 registers, 96 KB. Its split over rows
    aims at _WGRAD_TARGET_PROGRAMS programs and depends on the shape only (deterministic bits).
    """
    wide = dtype == torch.float32
    d_bm, d_bh, d_bk = 64, 128, (32 if wide else 64)
    d_bk = min(d_bk, max(_MIN_DOT, next_power_of_2(c)))
    w_bc = min(128, max(_MIN_DOT, next_power_of_2(c)))
    w_bh, w_bm = 128, (32 if wide else 64)
    tiles = cdiv(c, w_bc) * cdiv(hd, w_bh)
    splits = max(1, min(cdiv(m, w_bm), cdiv(_WGRAD_TARGET_PROGRAMS, tiles)))
    rows_per_split = cdiv(cdiv(m, splits), w_bm) * w_bm
    splits = cdiv(m, rows_per_split) if m else 1
    return (d_bm, d_bh, d_bk, 8, 2, w_bc, w_bh, w_bm, 8, 3, splits, rows_per_split)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_dtype(x: torch.Tensor) -> None:
    if x.dtype not in _TRITON_DTYPE:
        raise NotImplementedError(f"the Triton pointwise MLP supports float16, bfloat16 and float32, got {x.dtype}")


# --------------------------------------------------------------------------------- launchers


def _forward(x, w1, b1, w2, b2, gamma, shortcut, sample_scale, rows_per_sample, save_hidden, cfg):
    m, c = x.shape
    hd = w1.shape[0]
    out = torch.empty((m, c), dtype=x.dtype, device=x.device)
    h = torch.empty((m, hd), dtype=x.dtype, device=x.device) if save_hidden else None
    if m == 0:
        return out, h
    prec = _dot_precision(x.dtype)
    # Absent optional tensors are replaced by x: the kernel never reads them (constexpr flags).
    b1_, b2_, g_, sc_, s_, h_ = (t if t is not None else x for t in (b1, b2, gamma, shortcut, sample_scale, h))
    rps = max(1, int(rows_per_sample))
    with _device_guard(x):
        if cfg[0] == "fused":
            _, bm, bk, bn, bh, warps, stages = cfg
            _mlp_fwd_fused_kernel[(cdiv(m, bm), cdiv(c, bn))](
                x, w1, b1_, w2, b2_, g_, sc_, s_, out, h_, m, c, hd, rps,
                HAS_B1=b1 is not None, HAS_B2=b2 is not None, HAS_GAMMA=gamma is not None,
                HAS_SC=shortcut is not None, HAS_S=sample_scale is not None, SAVE_H=save_hidden,
                BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn, BLOCK_H=bh, DOT_PRECISION=prec,
                num_warps=warps, num_stages=stages)
        else:
            _, bm, bn, bk, group, warps, stages = cfg
            a = torch.empty((m, hd), dtype=x.dtype, device=x.device)
            _linear_kernel[(cdiv(m, bm) * cdiv(hd, bn),)](
                x, w1, b1_, x, x, x, a, h_, m, hd, c, rps,
                GELU_EPILOGUE=True, HAS_BIAS=b1 is not None, HAS_GAMMA=False, HAS_SC=False, HAS_S=False,
                SAVE_H=save_hidden, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, DOT_PRECISION=prec,
                num_warps=warps, num_stages=stages)
            _linear_kernel[(cdiv(m, bm) * cdiv(c, bn),)](
                a, w2, b2_, g_, sc_, s_, out, out, m, c, hd, rps,
                GELU_EPILOGUE=False, HAS_BIAS=b2 is not None, HAS_GAMMA=gamma is not None,
                HAS_SC=shortcut is not None, HAS_S=sample_scale is not None, SAVE_H=False,
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, DOT_PRECISION=prec,
                num_warps=warps, num_stages=stages)
    return out, h


def mlp_forward(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                b2: Optional[torch.Tensor], gamma: Optional[torch.Tensor], shortcut: Optional[torch.Tensor],
                sample_scale: Optional[torch.Tensor], rows_per_sample: int,
                save_hidden: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The MLP half of a ConvNeXt block on token rows.

    Args:
        x: (M, C) rows with stride (C, 1), float16 / bfloat16 / float32.
        w1, b1: fc1 weight (Hd, C), contiguous, and bias (Hd,) or None.
        w2, b2: fc2 weight (C, Hd), contiguous, and bias (C,) or None.
        gamma: layer scale (C,) or None.
        shortcut: (M, C) rows with stride (C, 1), added to the result, or None.
        sample_scale: (N,) float32 stochastic-depth factor of each sample, or None.
        rows_per_sample: rows of one sample (H * W); row r is scaled by sample_scale[r // rows_per_sample].
        save_hidden: also return the pre-activation h for the backward.

    Returns:
        (out (M, C), h (M, Hd) or None), both new contiguous tensors of x.dtype.

    Raises:
        NotImplementedError: for float64 input (the caller runs the reference).
    """
    _check_dtype(x)
    return _forward(x, w1, b1, w2, b2, gamma, shortcut, sample_scale, rows_per_sample, save_hidden,
                    _fwd_config(x.shape[1], w1.shape[0], x.dtype, _small_smem(x.device)))


def mlp_backward(grad_out: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                 w2: torch.Tensor, b2: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                 sample_scale: Optional[torch.Tensor], rows_per_sample: int, h: Optional[torch.Tensor]):
    """Gradients of :func:`mlp_forward` (the shortcut's gradient is grad_out itself, not returned).

    Args:
        grad_out: (M, C) gradient of the output, any strides.
        x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample: as in :func:`mlp_forward`.
        h: the saved pre-activation (M, Hd) with contiguous rows, or None to recompute it.

    Returns:
        (grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_gamma), each in the dtype of its input;
        grad_b1 / grad_b2 / grad_gamma are None when b1 / b2 / gamma is None. Bitwise deterministic.
    """
    _check_dtype(x)
    m, c = x.shape
    hd = w1.shape[0]
    cfg = _bwd_config(c, hd, m, x.dtype)
    d_bm, d_bh, d_bk, d_warps, d_stages, w_bc, w_bh, w_bm, w_warps, w_stages, splits, rows_per_split = cfg
    prec = _dot_precision(x.dtype)
    dev = x.device
    acc_t = torch.float32
    gh = torch.empty((m, hd), dtype=x.dtype, device=dev)
    as_ = torch.empty((m, hd), dtype=x.dtype, device=dev)
    n_row_blocks = cdiv(m, d_bm)
    gb1_part = torch.zeros((max(n_row_blocks, 1), hd), dtype=acc_t, device=dev)
    gs_part = torch.zeros((max(n_row_blocks, 1), c), dtype=acc_t, device=dev)
    g_part = torch.zeros((splits, c, hd), dtype=acc_t, device=dev)
    recompute = h is None
    if h is not None and h.stride() != (hd, 1):
        h = h.contiguous()
    rps = max(1, int(rows_per_sample))
    with _device_guard(x):
        if m > 0:
            _mlp_dgelu_kernel[(n_row_blocks, cdiv(hd, d_bh))](
                grad_out, x, w1, b1 if b1 is not None else x, w2, gamma if gamma is not None else x,
                sample_scale if sample_scale is not None else x, h if h is not None else x,
                gh, as_, gb1_part, gs_part, m, c, hd, rps, grad_out.stride(0), grad_out.stride(1),
                RECOMPUTE=recompute, HAS_B1=b1 is not None, HAS_GAMMA=gamma is not None,
                HAS_S=sample_scale is not None, BLOCK_M=d_bm, BLOCK_H=d_bh, BLOCK_K=d_bk, DOT_PRECISION=prec,
                num_warps=d_warps, num_stages=d_stages)
            _mlp_wgrad_kernel[(cdiv(c, w_bc), cdiv(hd, w_bh), splits)](
                grad_out, as_, g_part, m, c, hd, rows_per_split, grad_out.stride(0), grad_out.stride(1),
                BLOCK_C=w_bc, BLOCK_H=w_bh, BLOCK_M=w_bm, DOT_PRECISION=prec,
                num_warps=w_warps, num_stages=w_stages)
        # Fixed-order sums of the per-tile partials (PyTorch's reductions do not use atomics).
        g_mat = g_part.sum(0)
        gs_sum = gs_part.sum(0)
        gx = torch.matmul(gh, w1)
        gw1 = torch.matmul(gh.t(), x)
        gb1 = gb1_part.sum(0).to(b1.dtype) if b1 is not None else None
        gamma32 = gamma.to(acc_t) if gamma is not None else None
        gw2 = (g_mat * gamma32[:, None] if gamma is not None else g_mat).to(w2.dtype)
        gb2 = (gs_sum * gamma32 if gamma is not None else gs_sum).to(b2.dtype) if b2 is not None else None
        ggamma = None
        if gamma is not None:
            gg = (g_mat * w2.to(acc_t)).sum(1)
            if b2 is not None:
                gg = gg + b2.to(acc_t) * gs_sum
            ggamma = gg.to(gamma.dtype)
    return gx, gw1, gb1, gw2, gb2, ggamma


# --------------------------------------------------------------------------------- AOT configs


def aot_configs(stages) -> list[dict]:
    """Every MLP kernel at the configurations the launchers pick for the widths of ``stages``
    ((C, H, W) tuples; Hd = 4C, bf16, batch 128 for the row count), for ``convnext_fast.aot_check``.

    Entries as in ``layer_norm.aot_configs``: kernel, signature, constexprs, attrs (divisibility
    marks the JIT would set: pointers, and C / Hd / M when they are multiples of 16), num_warps,
    num_stages, name. Configurations that compile to the same code appear once.
    """
    from .layer_norm import divisibility_attrs

    dtype = torch.bfloat16
    t = _TRITON_DTYPE[dtype]
    prec = _dot_precision(dtype)
    configs: list[dict] = []
    seen: set = set()

    def add(kernel, sig, const, divisible, warps, num_stages, name):
        if name in seen:
            return
        seen.add(name)
        sig = dict(sig)
        sig.update({k: "constexpr" for k in const})
        configs.append({"kernel": kernel, "signature": sig, "constexprs": const,
                        "attrs": divisibility_attrs(kernel, sig, divisible), "num_warps": warps,
                        "num_stages": num_stages, "name": name})

    def add_forward(cfg, c, hd, m, div):
        if cfg[0] == "fused":
            _, bm, bk, bn, bh, warps, num_stages = cfg
            sig = {n: f"*{t}" for n in ("x_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "b2_ptr", "gamma_ptr", "sc_ptr",
                                         "out_ptr", "h_ptr")}
            sig.update({"s_ptr": "*fp32", "M": "i32", "C": "i32", "HD": "i32", "RPS": "i32"})
            for save in (False, True):
                const = {"HAS_B1": True, "HAS_B2": True, "HAS_GAMMA": True, "HAS_SC": True, "HAS_S": True,
                         "SAVE_H": save, "BLOCK_M": bm, "BLOCK_K": bk, "BLOCK_N": bn, "BLOCK_H": bh,
                         "DOT_PRECISION": prec}
                add(_mlp_fwd_fused_kernel, sig, const, div, warps, num_stages,
                    f"mlp_fwd_fused_{t}_C{c}_M{bm}_K{bk}_N{bn}_H{bh}" + ("_save_h" if save else ""))
        else:
            _, bm, bn, bk, group, warps, num_stages = cfg
            sig = {n: f"*{t}" for n in ("a_ptr", "w_ptr", "bias_ptr", "gamma_ptr", "sc_ptr", "out_ptr", "h_ptr")}
            sig.update({"s_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "RPS": "i32"})
            for gelu, save in ((True, False), (True, True), (False, False)):
                const = {"GELU_EPILOGUE": gelu, "HAS_BIAS": True, "HAS_GAMMA": not gelu, "HAS_SC": not gelu,
                         "HAS_S": not gelu, "SAVE_H": save, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
                         "GROUP_M": group, "DOT_PRECISION": prec}
                kdiv = tuple(n for n, v in (("N", hd if gelu else c), ("K", c if gelu else hd), ("M", m))
                             if v % 16 == 0)
                kind = ("fc1_save_h" if save else "fc1") if gelu else "fc2"
                add(_linear_kernel, sig, const, kdiv, warps, num_stages,
                    f"mlp_linear_{kind}_{t}_M{bm}_N{bn}_K{bk}" + ("" if "K" in kdiv else "_kmask"))

    for c, hh, ww in stages:
        hd = 4 * c
        m = 128 * hh * ww
        div = tuple(n for n, v in (("C", c), ("HD", hd), ("M", m)) if v % 16 == 0)
        # The backward kernels compile the same for every width whose sizes are multiples of 16.
        tag = "" if len(div) == 3 else "_" + "".join(f"{n}{v}" for n, v in (("C", c), ("HD", hd), ("M", m)))
        for cfg in dict.fromkeys(_fwd_config(c, hd, dtype, small) for small in (False, True)):
            add_forward(cfg, c, hd, m, div)
        d_bm, d_bh, d_bk, d_warps, d_stages, w_bc, w_bh, w_bm, w_warps, w_stages, _, _ = _bwd_config(c, hd, m, dtype)
        sig = {n: f"*{t}" for n in ("go_ptr", "x_ptr", "w1_ptr", "b1_ptr", "w2_ptr", "gamma_ptr", "h_ptr", "gh_ptr",
                                     "as_ptr")}
        sig.update({"s_ptr": "*fp32", "gb1_part_ptr": "*fp32", "gs_part_ptr": "*fp32", "M": "i32", "C": "i32",
                    "HD": "i32", "RPS": "i32", "sgo_m": "i32", "sgo_c": "constexpr"})
        for recompute in (False, True):
            const = {"sgo_c": 1, "RECOMPUTE": recompute, "HAS_B1": True, "HAS_GAMMA": True, "HAS_S": True,
                     "BLOCK_M": d_bm, "BLOCK_H": d_bh, "BLOCK_K": d_bk, "DOT_PRECISION": prec}
            add(_mlp_dgelu_kernel, sig, const, div + ("sgo_m",) if "C" in div else div, d_warps, d_stages,
                f"mlp_dgelu_{t}_M{d_bm}_H{d_bh}_K{d_bk}" + ("_recompute" if recompute else "") + tag)
        sig = {"go_ptr": f"*{t}", "as_ptr": f"*{t}", "part_ptr": "*fp32", "M": "i32", "C": "i32", "HD": "i32",
               "ROWS_PER_SPLIT": "i32", "sgo_m": "i32", "sgo_c": "constexpr"}
        const = {"sgo_c": 1, "BLOCK_C": w_bc, "BLOCK_H": w_bh, "BLOCK_M": w_bm, "DOT_PRECISION": prec}
        add(_mlp_wgrad_kernel, sig, const, div + ("ROWS_PER_SPLIT", "sgo_m") if "C" in div else div,
            w_warps, w_stages, f"mlp_wgrad_{t}_C{w_bc}_H{w_bh}_M{w_bm}" + tag)
    return configs
