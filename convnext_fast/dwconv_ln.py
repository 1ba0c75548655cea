"""The first half of a ConvNeXt block fused: LayerNorm over C of the depthwise conv of ``x``, one
pass forward; the backward recomputes the conv output instead of saving it (one activation less).
Its checks, registered ops and one route (``route.py``).

Backend contract (see ``depthwise_conv.py`` for where the backends live):

* ``dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, eps) -> (y, mean, rstd)``
* ``dwconv_ln_backward(gy, x, dw_w, dw_b, ln_w, mean, rstd) -> (gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b)``
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .backend import implementation
from .depthwise_conv import check_dilation, dilated_call
from .kernels.layout import device_guard, empty_channels_last
from .layer_norm import empty_stats
from .route import (check_dw, check_eps, check_ln, check_params, check_x, direct_ok, needs_graph, needs_reference,
                    reference_backward, resolve_backward, resolve_forward)

__all__ = ["dwconv_layer_norm"]

OP = "dwconv_layer_norm"


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _forward(backend: str, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
             ln_bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), *empty_stats(x))
    with device_guard(x):
        return implementation(backend).dwconv_ln_forward(x, dw_weight.contiguous(), _contig(dw_bias),
                                                         ln_weight.contiguous(), ln_bias.contiguous(), eps)


def _backward(backend: str, grad_y: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor],
              ln_weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if x.numel() == 0:
        z = lambda: torch.zeros(x.shape[1], dtype=ln_weight.dtype, device=x.device)  # noqa: E731
        return (empty_channels_last(x.shape, x.dtype, x.device), torch.zeros_like(dw_weight), z(), z(), z())
    with device_guard(x):
        return implementation(backend).dwconv_ln_backward(grad_y, x, dw_weight.contiguous(), _contig(dw_bias),
                                                          ln_weight.contiguous(), mean, rstd)


@torch.library.custom_op("convnext_fast::dwconv_ln_fwd", mutates_args=())
def dwconv_ln_fwd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor,
                  eps: float, backend: str, bwd_backend: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """Registered forward: (y, mean, rstd)."""
    return _forward(backend, x, dw_weight, dw_bias, ln_weight, ln_bias, eps)


@dwconv_ln_fwd.register_fake
def _(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend, bwd_backend=""):
    return (empty_channels_last(x.shape, x.dtype, x.device), *empty_stats(x))


@torch.library.custom_op("convnext_fast::dwconv_ln_bwd", mutates_args=())
def dwconv_ln_bwd(grad_y: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                  mean: Tensor, rstd: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _backward(backend, grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd)


@dwconv_ln_bwd.register_fake
def _(grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd, backend):
    c = x.shape[1]
    return (empty_channels_last(x.shape, x.dtype, x.device), dw_weight.new_empty(dw_weight.shape),
            dw_weight.new_empty(c), ln_weight.new_empty(ln_weight.shape), ln_weight.new_empty(ln_weight.shape))


class DwconvLayerNormFunction(torch.autograd.Function):
    """Saves x, not the conv output (recomputed); see ``DepthwiseConvFunction`` for ``direct`` and
    ``requested``."""

    @staticmethod
    def forward(ctx, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor,
                eps: float, backend: str, requested: str, direct: bool) -> Tensor:
        if direct:
            y, mean, rstd = _forward(backend, x, dw_weight, dw_bias, ln_weight, ln_bias, eps)
        else:
            y, mean, rstd = dwconv_ln_fwd(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend)
        ctx.save_for_backward(x, dw_weight, dw_bias, ln_weight, ln_bias, mean, rstd)
        ctx.eps, ctx.requested, ctx.direct = eps, requested, direct
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, dw_weight, dw_bias, ln_weight, ln_bias, mean, rstd = ctx.saved_tensors
        fn = lambda *t: reference.dwconv_layer_norm(*t, ctx.eps)  # noqa: E731
        saved = (x, dw_weight, dw_bias, ln_weight, ln_bias)
        if torch.is_grad_enabled():  # the backward itself is recorded: double backward
            return (*reference_backward(fn, saved, ctx.needs_input_grad, grad_y), None, None, None, None)
        k = dw_weight.shape[-1]
        backend = resolve_backward(OP, x, (*x.shape, k), ctx.requested, grad_y, c=x.shape[1], k=k)
        if backend == "reference":
            return (*reference_backward(fn, saved, ctx.needs_input_grad, grad_y, create_graph=False),
                    None, None, None, None)
        if ctx.direct:
            grads = _backward(backend, grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd)
        else:
            grads = dwconv_ln_bwd(grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd, backend)
        gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b = grads
        return gx, g_dw_w, (g_dw_b if dw_bias is not None else None), g_ln_w, g_ln_b, None, None, None, None


def resolve(x: Tensor, dw_weight: Tensor, ln_weight: Tensor) -> tuple[str, str]:
    """(the forward's backend, the backend asked for) of a call on ``x`` with these weights."""
    k = dw_weight.shape[-1]
    return resolve_forward(OP, x, (*x.shape, k), dw_weight, ln_weight, c=x.shape[1], k=k)


def dwconv_layer_norm(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      ln_bias: Tensor, eps: float = 1e-6, dilation: int = 1) -> Tensor:
    """LayerNorm over C of the depthwise conv of ``x``: the first half of a ConvNeXt block, fused.

    Args:
        x: (N, C, H, W), any memory layout.
        dw_weight: (C, 1, K, K), K odd; dw_bias: optional (C,).
        ln_weight, ln_bias: (C,).
        eps: LayerNorm epsilon (a positive number).
        dilation: of the depthwise conv (padding ``dilation * (K//2)``). The LayerNorm acts on each
            pixel alone, so a dilated call runs the fused kernels on the polyphase components of
            ``x`` (``convnext_fast.depthwise_conv``'s module docstring).

    Returns:
        (N, C, H, W) tensor in channels_last memory order.
    """
    check_x(OP, x)
    check_params(OP, x, ("dw_weight", "ln_weight", "ln_bias"), dw_weight=dw_weight, dw_bias=dw_bias,
                 ln_weight=ln_weight, ln_bias=ln_bias)
    check_dw(OP, x, dw_weight, dw_bias, prefix="dw_")
    check_ln(OP, x, ln_weight, ln_bias, prefix="ln_")
    eps = check_eps(OP, eps)
    dilation = check_dilation(OP, dilation)
    backend, requested = resolve(x, dw_weight, ln_weight)
    if dilation > 1:
        if backend == "reference" or needs_reference():
            return reference.dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, dilation)
        return dilated_call(lambda t: dwconv_layer_norm(t, dw_weight, dw_bias, ln_weight, ln_bias, eps), x, dilation)
    if backend == "reference" or needs_reference():
        return reference.dwconv_layer_norm(x, dw_weight, dw_bias, ln_weight, ln_bias, eps)
    direct = direct_ok(x, dw_weight, dw_bias, ln_weight, ln_bias)
    if direct and not needs_graph(x, dw_weight, dw_bias, ln_weight, ln_bias):
        return _forward(backend, x, dw_weight, dw_bias, ln_weight, ln_bias, eps)[0]
    return DwconvLayerNormFunction.apply(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend, requested, direct)
