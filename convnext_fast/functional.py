"""Public functions: validate the input, pick the backend, run the op.

In plain eager mode the kernels run through a ``torch.autograd.Function`` (``eager_autograd.py``,
less host overhead), or directly when autograd has nothing to record (no_grad, inference); under
torch.compile, dispatch modes or tensor subclasses, through the registered custom ops (``ops.py``).
All call the same kernels.

Each function accepts (N, C, H, W) tensors in any memory layout and returns a channels_last
(N, C, H, W) tensor (the ``reference`` backend returns whatever PyTorch returns). Bad input raises
``TypeError`` (types, dtypes) or ``ValueError`` (shapes, devices, values) naming the numbers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import ops, reference
from .backend import resolve_passes
from .eager_autograd import (DepthwiseConvFunction, DwconvLayerNormFunction, LayerNorm2dFunction, fast_path_ok,
                             needs_graph)

__all__ = ["depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "MAX_KERNEL_SIZE"]

MAX_KERNEL_SIZE = 31
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_x(op: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op} expects x to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op} expects x of shape (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op} supports float16, bfloat16, float32 and float64 tensors, got x of dtype {x.dtype}")


def _check_same(op: str, x: Tensor, **params: Optional[Tensor]) -> None:
    for name, p in params.items():
        if p is None:
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{op} expects {name} to be a torch.Tensor, got {type(p).__name__}")
        if p.dtype != x.dtype:
            raise TypeError(f"{op} expects {name} to have the dtype of x ({x.dtype}), got {p.dtype}; "
                            f"cast it with .to({x.dtype})")
        if p.device != x.device:
            raise ValueError(f"{op} expects all tensors on one device: x is on {x.device}, {name} on {p.device}")


def _check_dw(op: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], prefix: str = "") -> None:
    c = x.shape[1]
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"{op} expects {w_name} of shape (C, 1, K, K) with C={c}, got {tuple(weight.shape)}")
    kh, kw = weight.shape[2], weight.shape[3]
    if kh != kw:
        raise ValueError(f"{op} expects a square kernel, got {w_name} of shape {tuple(weight.shape)} ({kh}x{kw})")
    if kh % 2 == 0 or not 1 <= kh <= MAX_KERNEL_SIZE:
        raise ValueError(f"{op} expects an odd kernel size between 1 and {MAX_KERNEL_SIZE}, got {kh}")
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{op} expects {b_name} of shape ({c},), got {tuple(bias.shape)}")


def _check_ln(op: str, x: Tensor, weight: Tensor, bias: Tensor, eps: float, prefix: str = "") -> None:
    c = x.shape[1]
    for name, p in ((f"{prefix}weight", weight), (f"{prefix}bias", bias)):
        if p is None:
            raise TypeError(f"{op} expects {name} to be a tensor of shape ({c},), got None")
        if tuple(p.shape) != (c,):
            raise ValueError(f"{op} expects {name} of shape ({c},) (the channel count of x), got {tuple(p.shape)}")
    if not isinstance(eps, (float, int)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"{op} expects eps to be a positive number, got {eps!r}")


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Depthwise KxK convolution, stride 1, padding K//2 (what ConvNeXt's ``dwconv`` computes).

    Args:
        x: input of shape (N, C, H, W), any memory layout; float16, bfloat16, float32 or float64.
        weight: (C, 1, K, K) with K odd, 1 <= K <= 31; same dtype and device as ``x``.
        bias: optional (C,).

    Returns:
        (N, C, H, W) tensor in channels_last memory order.
    """
    op = "depthwise_conv2d"
    _check_x(op, x)
    _check_same(op, x, weight=weight, bias=bias)
    _check_dw(op, x, weight, bias)
    backend, bwd_backend = resolve_passes(op, x.device, x.shape[2] * x.shape[3])
    if backend == "reference":
        return reference.depthwise_conv2d(x, weight, bias)
    if fast_path_ok(x, weight, bias):
        if not needs_graph(x, weight, bias):
            return ops.run_dwconv_fwd(x, weight, bias, backend)
        return DepthwiseConvFunction.apply(x, weight, bias, backend, bwd_backend)
    return ops.dwconv_fwd(x, weight, bias, backend, bwd_backend)


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channel dimension (dim 1) of an (N, C, H, W) tensor, without a permute copy.

    Mean and reciprocal standard deviation are computed in float32 (float64 for float64 input);
    biased variance, as the official ConvNeXt ``channels_first`` LayerNorm.

    Args:
        x: (N, C, H, W), any memory layout.
        weight, bias: (C,), same dtype and device as ``x``.
        eps: added to the variance.

    Returns:
        (N, C, H, W) tensor in channels_last memory order.
    """
    op = "layer_norm_2d"
    _check_x(op, x)
    _check_same(op, x, weight=weight, bias=bias)
    _check_ln(op, x, weight, bias, eps)
    backend, bwd_backend = resolve_passes(op, x.device, x.shape[2] * x.shape[3])
    if backend == "reference":
        return reference.layer_norm_2d(x, weight, bias, eps)
    if fast_path_ok(x, weight, bias):
        if not needs_graph(x, weight, bias):
            return ops.run_ln_fwd(x, weight, bias, float(eps), backend)[0]
        return LayerNorm2dFunction.apply(x, weight, bias, float(eps), backend, bwd_backend)
    return ops.ln_fwd(x, weight, bias, float(eps), backend, bwd_backend)[0]


def dwconv_layer_norm(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      ln_bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over C of the depthwise conv of ``x``: the first half of a ConvNeXt block, fused.

    One pass forward; the backward pass recomputes the conv output from ``x`` instead of saving it,
    so training keeps one activation less than ``layer_norm_2d(depthwise_conv2d(x, ...), ...)``.

    Args:
        x: (N, C, H, W), any memory layout.
        dw_weight: (C, 1, K, K), K odd; dw_bias: optional (C,).
        ln_weight, ln_bias: (C,).
        eps: LayerNorm epsilon.

    Returns:
        (N, C, H, W) tensor in channels_last memory order.
    """
    op = "dwconv_layer_norm"
    _check_x(op, x)
    _check_same(op, x, dw_weight=dw_weight, dw_bias=dw_bias, ln_weight=ln_weight, ln_bias=ln_bias)
    _check_dw(op, x, dw_weight, dw_bias, prefix="dw_")
    _check_ln(op, x, ln_weight, ln_bias, eps, prefix="ln_")
    backend, bwd_backend = resolve_passes(op, x.device, x.shape[2] * x.shape[3])
    if backend == "reference":
        return reference.dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps)
    if fast_path_ok(x, dw_weight, dw_bias, ln_weight, ln_bias):
        if not needs_graph(x, dw_weight, dw_bias, ln_weight, ln_bias):
            return ops.run_dwconv_ln_fwd(x, dw_weight, dw_bias, ln_weight, ln_bias, float(eps), backend)[0]
        return DwconvLayerNormFunction.apply(x, dw_weight, dw_bias, ln_weight, ln_bias, float(eps), backend,
                                             bwd_backend)
    return ops.dwconv_ln_fwd(x, dw_weight, dw_bias, ln_weight, ln_bias, float(eps), backend, bwd_backend)[0]
