"""Up to eight reductions of equally shaped tiles as one ``tl.sum``.

Where the reduced axis of a tile spans several warps (a pixel's channels in the fused kernels, a
strip's column groups in the weight gradient), each ``tl.sum`` becomes a round trip through shared
memory with two barriers, and a kernel that sums many tiles one after another pays that many times
(the fused backward px kernel: 16 barriers per 4-column strip; its forward: up to 75 per program
with Triton 3.6; the weight-gradient epilogue: 50 sums). ``tl.join`` stacks tiles along new
trailing dimensions that live in each thread's registers, so one ``tl.sum`` over the joined
tensor reduces all of them with a single shared-memory exchange; the warp shuffles stay one per
value. ``split8`` takes the result apart again, ``slot8`` gives each entry's tile index (for
storing straight from the joined form).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["joined_sums", "split8", "slot8"]


@triton.jit
def joined_sums(tiles, N: tl.constexpr, AXIS: tl.constexpr):
    """Sums along ``AXIS`` of the first N <= 8 tiles of the tuple ``tiles`` (2-D, same shape and
    dtype), as one tensor with three trailing dimensions of 2: entry [..., i0, i1, i2] is the sum of
    tile i0 + 2*i1 + 4*i2, and zero past N."""
    tl.static_assert(N <= 8, "at most 8 tiles per joined sum")
    zero = tl.zeros_like(tiles[0])
    t = ()
    for i in tl.static_range(8):
        if i < N:
            t = t + (tiles[i],)
        else:
            t = t + (zero,)
    # tl.join stacks its two operands along a new last dimension
    return tl.sum(tl.join(tl.join(tl.join(t[0], t[1]), tl.join(t[2], t[3])),
                          tl.join(tl.join(t[4], t[5]), tl.join(t[6], t[7]))), axis=AXIS)


@triton.jit
def split8(s):
    """A [M, 2, 2, 2] result of ``joined_sums`` -> its 8 [M] vectors, tile 0 first."""
    lo, hi = tl.split(s)
    q0, q1 = tl.split(lo)
    q2, q3 = tl.split(hi)
    r0, r1 = tl.split(q0)
    r2, r3 = tl.split(q1)
    r4, r5 = tl.split(q2)
    r6, r7 = tl.split(q3)
    return r0, r1, r2, r3, r4, r5, r6, r7


@triton.jit
def slot8():
    """[2, 2, 2] int32: the tile index i0 + 2*i1 + 4*i2 of each entry of a ``joined_sums`` result."""
    i = tl.arange(0, 2)
    return i[:, None, None] + 2 * i[None, :, None] + 4 * i[None, None, :]
