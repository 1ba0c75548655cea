"""The compiled extension (sources in ``csrc/``) as the ``cuda`` and ``cpu`` backends.

Loaded lazily: importing convnext_fast never imports it. The first call that needs it imports the
cached binary or compiles it (``convnext_fast/build.py``). The launchers implement the backend
contract documented in each op module; the C++ side dispatches by the tensors' device.

Inputs may have any strides: activations are made dense channels_last with
``.contiguous(memory_format=torch.channels_last)`` before the C++ call (a no-op for the usual
channels_last input; a copy for contiguous NCHW, sliced views and expanded stride-0 gradients),
because the kernels index dense NHWC memory. Outputs are allocated through
``convnext_fast.kernels.layout`` exactly as every backend and the fake implementations allocate them.
"""
from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from .kernels.layout import empty_channels_last, stats_dtype, stats_shape

__all__ = [
    "build_info",
    "dwconv_backward",
    "dwconv_forward",
    "dwconv_ln_backward",
    "dwconv_ln_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "mlp_backward",
    "mlp_forward",
    "patch_linear_forward",
    "release_cpu_memory",
    "unavailable_reason",
]

_HOW: dict[str, str] = {}  # how the binary was obtained, for build_info()


@functools.lru_cache(maxsize=None)
def _load() -> tuple[Optional[ModuleType], str]:
    """(the module, '') or (None, why it cannot be had)."""
    from . import build

    try:
        module, plan, how = build.load()
    except Exception as e:  # noqa: BLE001 - a failed compile is reported, the other backends still run
        reason = (f"the compiled extension is not available ({type(e).__name__}: {e}); "
                  "see `python -m convnext_fast build`")
        # Once per process (this result is cached): under `auto` the process would otherwise run
        # slower backends for its whole life without a word.
        warnings.warn(f"convnext_fast: {reason}. The cpu and cuda backends cannot run in this process; auto uses "
                      f"the others", RuntimeWarning, stacklevel=2)
        return None, reason
    _HOW.update(obtained=f"{how} ({plan.directory()})",
                skipped="; ".join(f"{k}: {v}" for k, v in plan.skipped.items()) or "none")
    return module, ""


def _ext() -> ModuleType:
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module


def build_info() -> dict:
    """What the compiled extension was built with: ``built``, ``cpu``, ``cuda``, ``cuda_archs``,
    ``cuda_version``, ``torch_version``, compiler flags the CPU instruction set in use, ``obtained``
    (compiled now or loaded from the cache, and where) and ``skipped`` (parts left out, and why); or
    ``{"built": False, "reason": ...}``."""
    module, reason = _load()
    if module is None:
        return {"built": False, "reason": reason}
    return {"built": True, **dict(module.build_info()), **_HOW}


@functools.lru_cache(maxsize=None)
def unavailable_reason(device_type: str) -> str:
    """'' when the extension can run ops on ``device_type`` tensors, else why not."""
    info = build_info()
    if not info["built"]:
        return info["reason"]
    if device_type == "cpu":
        if not info["cpu"]:
            return f"the compiled extension was built without its CPU kernels ({info.get('skipped')})"
        return ""
    if device_type == "cuda":
        if not info["cuda"]:
            return f"the compiled extension was built without its CUDA kernels ({info.get('skipped')})"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return ""
    return f"the compiled extension does not support {device_type} tensors"


def _nhwc(t: Tensor) -> Tensor:
    # Dense channels_last: the kernels index NHWC memory (see the module docstring).
    return t.contiguous(memory_format=torch.channels_last)


def _like(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialized channels_last tensor of x's shape and dtype (or ``dtype``) for a kernel's
    output: on the CPU from the extension's output pool (``csrc/cpu_output_pool.cpp``: large outputs
    reuse the blocks of freed ones instead of fresh, page-faulting memory)."""
    if x.device.type == "cpu" and hasattr(_ext(), "empty_pooled_like"):
        return _ext().empty_pooled_like(x, dtype)
    return empty_channels_last(x.shape, dtype or x.dtype, x.device)


def release_cpu_memory() -> int:
    """Frees the memory the CPU kernels keep for their next outputs (up to 256 MiB of blocks that
    earlier outputs gave back when they were freed); returns the bytes freed."""
    module = _ext()
    return int(module.release_pooled_memory()) if hasattr(module, "release_pooled_memory") else 0


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    shape, dtype = stats_shape(x.shape), stats_dtype(x.dtype)
    return (torch.empty(shape, dtype=dtype, device=x.device), torch.empty(shape, dtype=dtype, device=x.device))


def _vec_like(p: Tensor) -> Tensor:
    return torch.empty(p.shape, dtype=p.dtype, device=p.device)


def dwconv_forward(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    x = _nhwc(x)
    y = _like(x)
    _ext().dwconv_forward(x, w, b, y)
    return y


def dwconv_backward(grad_y: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x, grad_y = _nhwc(x), _nhwc(grad_y)
    gx = _like(x)
    gw = _vec_like(w)
    gb = torch.empty(w.shape[0], dtype=w.dtype, device=w.device)
    _ext().dwconv_backward(grad_y, x, w, gx, gw, gb)
    return gx, gw, gb


def layer_norm_forward(x: Tensor, w: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    x = _nhwc(x)
    y = _like(x)
    mean, rstd = _stats(x)
    _ext().layer_norm_forward(x, w, b, float(eps), y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(grad_y: Tensor, x: Tensor, w: Tensor, mean: Tensor,
                        rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x, grad_y = _nhwc(x), _nhwc(grad_y)
    gx = _like(x)
    gw, gb = _vec_like(w), _vec_like(w)
    _ext().layer_norm_backward(grad_y, x, w, mean.contiguous(), rstd.contiguous(), gx, gw, gb)
    return gx, gw, gb


def dwconv_ln_forward(x: Tensor, dw_w: Tensor, dw_b: Optional[Tensor], ln_w: Tensor, ln_b: Tensor,
                      eps: float) -> tuple[Tensor, Tensor, Tensor]:
    x = _nhwc(x)
    y = _like(x)
    mean, rstd = _stats(x)
    _ext().dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, float(eps), y, mean, rstd)
    return y, mean, rstd


def dwconv_ln_backward(grad_y: Tensor, x: Tensor, dw_w: Tensor, dw_b: Optional[Tensor], ln_w: Tensor, mean: Tensor,
                       rstd: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    x, grad_y = _nhwc(x), _nhwc(grad_y)
    gx = _like(x)
    g_dw_w = _vec_like(dw_w)
    g_dw_b = torch.empty(x.shape[1], dtype=dw_w.dtype, device=x.device)
    g_ln_w, g_ln_b = _vec_like(ln_w), _vec_like(ln_w)
    _ext().dwconv_ln_backward(grad_y, x, dw_w, dw_b, ln_w, mean.contiguous(), rstd.contiguous(), gx, g_dw_w,
                              g_dw_b, g_ln_w, g_ln_b)
    return gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b


def _cpu_only_ext():
    module = _ext()
    if not hasattr(module, "mlp_forward"):
        raise RuntimeError("the compiled extension was built without its CPU kernels; the fused MLP and the "
                           "patch convolution have no other compiled kernel")
    return module


def mlp_forward(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                gamma: Optional[Tensor], shortcut: Optional[Tensor], sample_scale: Optional[Tensor],
                rows_per_sample: int, save_hidden: bool) -> tuple[Tensor, Optional[Tensor]]:
    """The pointwise MLP of a ConvNeXt block on token rows, fused on the CPU (``csrc/cpu_mlp.cpp``):
    ``out = shortcut + s[row // rows_per_sample] * gamma * (GELU(x @ w1.T + b1) @ w2.T + b2)``.

    Args:
        x: (M, C) token rows (the NHWC view of an (N, C, H, W) tensor), contiguous rows.
        w1, b1: fc1, (Hd, C) and (Hd,) or None. w2, b2: fc2, (C, Hd) and (C,) or None.
        gamma: layer scale (C,) or None. shortcut: (M, C) residual or None.
        sample_scale: float32 (N,) per-sample stochastic-depth scale or None.
        rows_per_sample: M // N, the rows each entry of ``sample_scale`` covers.
        save_hidden: also return the pre-activation ``h`` for the backward.

    Shape: every tensor of x's dtype (float32 or bfloat16; others raise NotImplementedError) except
    ``sample_scale``; weights and vectors contiguous.

    Returns:
        (out (M, C), h (M, Hd) or None), new tensors.
    """
    out, h = _cpu_only_ext().mlp_forward(x, w1, b1, w2, b2, gamma, shortcut, sample_scale,
                                         int(rows_per_sample), bool(save_hidden))
    return out, h


def mlp_forward_promoted(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                         gamma: Optional[Tensor], shortcut: Tensor) -> Tensor:
    """Autocast inference's block tail on the CPU (``csrc/cpu_mlp.cpp``): a float32 residual stream
    over the bfloat16 MLP, ``out = shortcut + gamma * MLP(x)`` in float32 with one rounding, the bits
    of ``mlp_forward`` then ``torch.addcmul(shortcut, out, gamma)``, without the branch's round trip
    through memory.

    Args:
        x: (M, C) bfloat16 token rows; w1, b1, w2, b2: the MLP's bfloat16 weights (see
            :func:`mlp_forward`).
        gamma: float32 layer scale (C,) or None.
        shortcut: (M, C) float32 or bfloat16 rows, contiguous rows.

    Returns:
        (M, C) float32, a new tensor.
    """
    return _cpu_only_ext().mlp_forward_promoted(x, w1, b1, w2, b2, gamma, shortcut)


def mlp_backward(grad_out: Tensor, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                 gamma: Optional[Tensor], sample_scale: Optional[Tensor], rows_per_sample: int,
                 h: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor, Optional[Tensor],
                                               Optional[Tensor]]:
    """Gradients of :func:`mlp_forward` (deterministic: fixed-order sums, no atomics).

    Args:
        grad_out: (M, C) gradient of ``out``, any strides.
        x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample: as given to :func:`mlp_forward`.
        h: the saved pre-activation (M, Hd), or None to recompute it.

    Returns:
        (gx, gw1, gb1, gw2, gb2, ggamma), each of its input's shape and dtype; None where the
        optional input is None.
    """
    return tuple(_cpu_only_ext().mlp_backward(grad_out.contiguous(), x, w1, b1, w2, b2, gamma, sample_scale,
                                              int(rows_per_sample), h))


def patch_linear_forward(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, in_eps: Optional[float],
                         out_weight: Optional[Tensor], out_bias: Optional[Tensor], out_eps: float) -> Tensor:
    """A non-overlapping k x k, stride-k convolution with fused LayerNorms on the CPU
    (``csrc/cpu_patch_linear.cpp``): each input pixel normalized over C first when ``in_eps`` is
    given (no affine), then the patch GEMM with ``weight_t`` (k*k*C, O) and ``bias``, then a
    LayerNorm over O with ``out_weight`` / ``out_bias`` when ``out_weight`` is given.

    float32 and bfloat16 (others raise NotImplementedError). Returns a new (N, O, H // k, W // k)
    channels_last tensor. See ``convnext_fast/patch_linear.py`` for the contract.
    """
    y = _cpu_only_ext().patch_linear_forward(_nhwc(x).permute(0, 2, 3, 1), weight_t, bias, int(k),
                                             None if in_eps is None else float(in_eps), out_weight, out_bias,
                                             float(out_eps))
    return y.permute(0, 3, 1, 2)
