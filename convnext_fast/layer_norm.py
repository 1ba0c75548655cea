"""LayerNorm over the channels of an (N, C, H, W) tensor (ConvNeXt's ``channels_first``
LayerNorm) without a permute copy: its checks, its registered ops and its one route (``route.py``).

Backend contract (see ``depthwise_conv.py`` for where the backends live):

* ``layer_norm_forward(x, w, b, eps) -> (y, mean, rstd)``: mean / rstd (N, H, W) contiguous in
  ``kernels.layout.stats_dtype(x.dtype)``.
* ``layer_norm_backward(gy, x, w, mean, rstd) -> (gx, gw, gb)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .backend import implementation
from .kernels.layout import device_guard, empty_channels_last, stats_dtype, stats_shape
from .route import (check_eps, check_ln, check_params, check_x, direct_ok, needs_graph, needs_reference,
                    reference_backward, resolve_backward, resolve_forward)

__all__ = ["layer_norm_2d"]

OP = "layer_norm_2d"


def empty_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Uninitialised (mean, rstd) for an (N, C, H, W) input, as every backend allocates them."""
    shape, dtype = stats_shape(x.shape), stats_dtype(x.dtype)
    return (torch.empty(shape, dtype=dtype, device=x.device), torch.empty(shape, dtype=dtype, device=x.device))


def _forward(backend: str, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), *empty_stats(x))
    with device_guard(x):
        return implementation(backend).layer_norm_forward(x, weight.contiguous(), bias.contiguous(), eps)


def _backward(backend: str, grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor,
              rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), torch.zeros_like(weight), torch.zeros_like(weight))
    with device_guard(x):
        return implementation(backend).layer_norm_backward(grad_y, x, weight.contiguous(), mean, rstd)


@torch.library.custom_op("convnext_fast::ln_fwd", mutates_args=())
def ln_fwd(x: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str,
           bwd_backend: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """Registered forward: (y, mean, rstd)."""
    return _forward(backend, x, weight, bias, eps)


@ln_fwd.register_fake
def _(x, weight, bias, eps, backend, bwd_backend=""):
    return (empty_channels_last(x.shape, x.dtype, x.device), *empty_stats(x))


@torch.library.custom_op("convnext_fast::ln_bwd", mutates_args=())
def ln_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(backend, grad_y, x, weight, mean, rstd)


@ln_bwd.register_fake
def _(grad_y, x, weight, mean, rstd, backend):
    return (empty_channels_last(x.shape, x.dtype, x.device), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape))


class LayerNorm2dFunction(torch.autograd.Function):
    """Mean and rstd are saved, not returned; see ``DepthwiseConvFunction`` for ``direct`` and
    ``requested``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str, requested: str,
                direct: bool) -> Tensor:
        if direct:
            y, mean, rstd = _forward(backend, x, weight, bias, eps)
        else:
            y, mean, rstd = ln_fwd(x, weight, bias, eps, backend)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps, ctx.requested, ctx.direct = eps, requested, direct
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        fn = lambda x_, w_, b_: reference.layer_norm_2d(x_, w_, b_, ctx.eps)  # noqa: E731
        if torch.is_grad_enabled():  # the backward itself is recorded: double backward
            return (*reference_backward(fn, (x, weight, bias), ctx.needs_input_grad, grad_y), None, None, None, None)
        backend = resolve_backward(OP, x, tuple(x.shape), ctx.requested, grad_y, c=x.shape[1])
        if backend == "reference":
            return (*reference_backward(fn, (x, weight, bias), ctx.needs_input_grad, grad_y, create_graph=False),
                    None, None, None, None)
        if ctx.direct:
            gx, gw, gb = _backward(backend, grad_y, x, weight, mean, rstd)
        else:
            gx, gw, gb = ln_bwd(grad_y, x, weight, mean, rstd, backend)
        return gx, gw, gb, None, None, None, None


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channel dimension (dim 1) of an (N, C, H, W) tensor, without a permute copy.

    Mean and reciprocal standard deviation are computed in float32 (float64 for float64 input);
    biased variance, as the official ConvNeXt ``channels_first`` LayerNorm.

    Args:
        x: (N, C, H, W), any memory layout.
        weight, bias: (C,), same dtype and device as ``x``.
        eps: added to the variance (a positive number).

    Returns:
        (N, C, H, W) tensor in channels_last memory order.
    """
    check_x(OP, x)
    check_params(OP, x, ("weight", "bias"), weight=weight, bias=bias)
    check_ln(OP, x, weight, bias)
    eps = check_eps(OP, eps)
    backend, requested = resolve_forward(OP, x, tuple(x.shape), weight, bias, c=x.shape[1])
    if backend == "reference" or needs_reference():
        return reference.layer_norm_2d(x, weight, bias, eps)
    direct = direct_ok(x, weight, bias)
    if direct and not needs_graph(x, weight, bias):
        return _forward(backend, x, weight, bias, eps)[0]
    return LayerNorm2dFunction.apply(x, weight, bias, eps, backend, requested, direct)
