"""The depthwise KxK convolution of a ConvNeXt block (stride 1, padding K//2): its checks, its
registered ops and its one route (see ``route.py``).

Liu et al., "A ConvNet for the 2020s", CVPR 2022: the 7x7 depthwise conv is the block's token mixer.

Backend contract (``convnext_fast.kernels.launchers`` for ``triton``, ``convnext_fast.extension`` for
``cuda`` / ``cpu``; inputs of any strides, weights contiguous, outputs allocated through
``kernels/layout.py``):

* ``dwconv_forward(x, w, b) -> y``: y (N, C, H, W) channels_last, x's dtype; b may be None.
* ``dwconv_backward(gy, x, w) -> (gx, gw, gb)``: gx channels_last, gw (C, 1, K, K), gb (C,).

NaN / Inf semantics are those of ``F.conv2d`` in float64: a non-finite weight tap also multiplies
the zero padding, so every output of its channel is NaN.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .backend import implementation
from .kernels.layout import device_guard, empty_channels_last
from .route import (check_dw, check_params, check_x, direct_ok, needs_graph, needs_reference, reference_backward,
                    resolve_backward, resolve_forward)

__all__ = ["depthwise_conv2d"]

OP = "depthwise_conv2d"


def _forward(backend: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if x.numel() == 0:
        return empty_channels_last(x.shape, x.dtype, x.device)
    with device_guard(x):
        return implementation(backend).dwconv_forward(x, weight.contiguous(),
                                                      None if bias is None else bias.contiguous())


def _backward(backend: str, grad_y: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), torch.zeros_like(weight),
                torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    with device_guard(x):
        return implementation(backend).dwconv_backward(grad_y, x, weight.contiguous())


@torch.library.custom_op("convnext_fast::dwconv_fwd", mutates_args=())
def dwconv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str, bwd_backend: str = "") -> Tensor:
    """Registered forward (``bwd_backend`` is kept for saved programs; the Function holds it)."""
    return _forward(backend, x, weight, bias)


@dwconv_fwd.register_fake
def _(x, weight, bias, backend, bwd_backend=""):
    return empty_channels_last(x.shape, x.dtype, x.device)


@torch.library.custom_op("convnext_fast::dwconv_bwd", mutates_args=())
def dwconv_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(backend, grad_y, x, weight)


@dwconv_bwd.register_fake
def _(grad_y, x, weight, backend):
    return (empty_channels_last(x.shape, x.dtype, x.device), torch.empty_like(weight, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape[0]))


class DepthwiseConvFunction(torch.autograd.Function):
    """The forward's backend is fixed at the forward call; the backward's is resolved at the first
    backward with the backend ``requested`` at the forward (an inference-only forward never
    resolves or loads a backward backend). ``direct`` says whether the passes call the kernels
    (plain eager) or the registered ops (tracing, dispatch modes, subclasses)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str, requested: str,
                direct: bool) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.requested, ctx.direct = requested, direct
        if direct:
            return _forward(backend, x, weight, bias)
        return dwconv_fwd(x, weight, bias, backend)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled():  # the backward itself is recorded: double backward
            return (*reference_backward(reference.depthwise_conv2d, (x, weight, bias), ctx.needs_input_grad, grad_y),
                    None, None, None)
        backend = resolve_backward(OP, x, (*x.shape, weight.shape[-1]), ctx.requested, grad_y, c=x.shape[1],
                                   k=weight.shape[-1])
        if backend == "reference":
            return (*reference_backward(reference.depthwise_conv2d, (x, weight, bias), ctx.needs_input_grad, grad_y,
                                        create_graph=False), None, None, None)
        if ctx.direct:
            gx, gw, gb = _backward(backend, grad_y, x, weight)
        else:
            gx, gw, gb = dwconv_bwd(grad_y, x, weight, backend)
        return gx, gw, (gb if bias is not None else None), None, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Depthwise KxK convolution, stride 1, padding K//2 (what ConvNeXt's ``dwconv`` computes).

    Args:
        x: input of shape (N, C, H, W), any memory layout; float16, bfloat16, float32 or float64.
        weight: (C, 1, K, K) with K odd, 1 <= K <= 31; same dtype and device as ``x``.
        bias: optional (C,).

    Returns:
        (N, C, H, W) tensor in channels_last memory order (the ``reference`` backend returns what
        PyTorch returns).
    """
    check_x(OP, x)
    check_params(OP, x, ("weight",), weight=weight, bias=bias)
    check_dw(OP, x, weight, bias)
    backend, requested = resolve_forward(OP, x, (*x.shape, weight.shape[-1]), weight, bias, c=x.shape[1],
                                         k=weight.shape[-1])
    if backend == "reference" or needs_reference():
        return reference.depthwise_conv2d(x, weight, bias)
    direct = direct_ok(x, weight, bias)
    if direct and not needs_graph(x, weight, bias):
        return _forward(backend, x, weight, bias)
    return DepthwiseConvFunction.apply(x, weight, bias, backend, requested, direct)
