"""Allocation rules shared by every backend and by the fake (meta) implementations.

torch.compile needs the fake implementation of an op to report exactly the strides the real
one returns. Every backend therefore allocates its outputs through these helpers, and so do the
fake implementations of each op's module (``convnext_fast/<op>.py``): one rule, one place.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

__all__ = ["device_guard", "empty_channels_last", "stats_dtype", "stats_shape"]


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


_NO_GUARD = contextlib.nullcontext()


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s CUDA device current for a launch (Triton launches on the current device, so a
    tensor on ``cuda:1`` would otherwise be read from ``cuda:0``'s context); a no-op for CPU tensors
    and when it already is current."""
    device = t.device
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return _NO_GUARD
    return torch.cuda.device(device.index)
