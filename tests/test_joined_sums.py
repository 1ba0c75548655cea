"""``kernels/joined_sums.py``: N <= 8 tile sums in one tl.sum, taken apart by ``split8`` and
addressed by ``slot8``, against torch's sums (Triton interpreter on CPU, the GPU when there is one)."""
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from conftest import DEVICE, kernel_backends  # noqa: E402

if "triton" not in kernel_backends():
    pytest.skip("triton backend unavailable here", allow_module_level=True)

from convnext_fast.kernels.joined_sums import joined_sums, slot8, split8  # noqa: E402

M, C = 4, 16


@triton.jit
def _sums_kernel(x_ptr, split_ptr, joined_ptr, N: tl.constexpr, AXIS: tl.constexpr, M: tl.constexpr,
                 C: tl.constexpr):
    # x: 8 tiles [M, C] contiguous; outputs: split8 -> [8, L] and the joined form stored by slot8
    # -> [8, L], where L = C (AXIS 0) or M (AXIS 1)
    r = tl.arange(0, M)[:, None] * C + tl.arange(0, C)[None, :]
    tiles = ()
    for i in tl.static_range(8):
        tiles = tiles + (tl.load(x_ptr + i * M * C + r),)
    s = joined_sums(tiles, N, AXIS)
    parts = split8(s)
    if AXIS == 0:
        L: tl.constexpr = C
    else:
        L: tl.constexpr = M
    idx = tl.arange(0, L)
    for i in tl.static_range(8):
        tl.store(split_ptr + i * L + idx, parts[i])
    tl.store(joined_ptr + slot8()[None, :, :, :] * L + idx[:, None, None, None], s)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("n", [1, 3, 7, 8])
def test_joined_sums_match_torch(n, axis):
    x = torch.randn(8, M, C, device=DEVICE)
    length = C if axis == 0 else M
    split = torch.full((8, length), float("nan"), device=DEVICE)
    joined = torch.full((8, length), float("nan"), device=DEVICE)
    _sums_kernel[(1,)](x, split, joined, N=n, AXIS=axis, M=M, C=C)
    expected = x.sum(dim=1 + axis)  # tile i summed along the axis
    expected[n:] = 0  # tiles past N count as zeros
    torch.testing.assert_close(split, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joined, expected, rtol=1e-5, atol=1e-5)
