"""Allocation rules shared by every backend and by the fake (meta) implementations.

torch.compile needs the fake implementation of an op to report exactly the strides the real
one returns. Every backend therefore allocates its outputs through these helpers, and so do the
fakes in ``ops.py``: one rule, one place.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["empty_channels_last", "stats_dtype", "stats_shape"]


def empty_channels_last(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised (N, C, H, W) tensor in channels_last (NHWC) memory order."""
    return torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=torch.channels_last)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved LayerNorm mean / rstd: fp32 for fp32 and lower, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stats_shape(x_shape: Sequence[int]) -> tuple[int, int, int]:
    """Shape of the saved LayerNorm mean / rstd for an (N, C, H, W) input: (N, H, W), contiguous."""
    n, _, h, w = x_shape
    return (n, h, w)
