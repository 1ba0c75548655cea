"""The registered ops: ``torch.library`` custom ops with fake (meta) implementations and autograd.

Each public op is a forward custom op plus a backward custom op, so that both passes are opaque
nodes torch.compile can trace without a graph break (``torch.library.opcheck`` checks each). The
backends are chosen in ``functional.py`` *before* the op is called and passed in as string
arguments (``backend`` runs the forward, ``bwd_backend``, when not empty, the backward; ``auto``
may pick two), so autograd records which implementations run.

Backend implementation contract (``convnext_fast.kernels`` for ``triton``,
``convnext_fast.extension`` for ``cuda``/``cpu``); all outputs are freshly allocated through
``convnext_fast.layout`` so they have exactly the strides the fakes below report, and inputs may
have any strides (channels_last, contiguous, sliced, expanded stride-0 gradients):

=============================================================  ======================================
``dwconv_forward(x, w, b) -> y``                                y (N,C,H,W) channels_last, x.dtype
``dwconv_backward(gy, x, w) -> (gx, gw, gb)``                   gx channels_last; gw (C,1,K,K)
                                                                contiguous; gb (C,); w.dtype
``layer_norm_forward(x, w, b, eps) -> (y, mean, rstd)``         mean/rstd (N,H,W) contiguous in
                                                                ``layout.stats_dtype(x.dtype)``
``layer_norm_backward(gy, x, w, mean, rstd) -> (gx, gw, gb)``
``dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, eps)``           -> (y, mean, rstd)
``dwconv_ln_backward(gy, x, dw_w, dw_b, ln_w, mean, rstd)``     -> (gx, g_dw_w, g_dw_b, g_ln_w,
                                                                g_ln_b); recomputes the conv output
=============================================================  ======================================

Weight tensors arrive contiguous; ``b``/``dw_b`` may be None; tensors are never empty (N = 0 is
answered here without calling the backend).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backend import implementation
from .kernels.layout import empty_channels_last, stats_dtype, stats_shape

__all__ = ["dwconv_fwd", "dwconv_bwd", "ln_fwd", "ln_bwd", "dwconv_ln_fwd", "dwconv_ln_bwd",
           "run_dwconv_fwd", "run_dwconv_bwd", "run_ln_fwd", "run_ln_bwd", "run_dwconv_ln_fwd", "run_dwconv_ln_bwd"]


def _param_grad_like(p: Tensor) -> Tensor:
    return torch.empty(p.shape, dtype=p.dtype, device=p.device)


def _stats_like(x: Tensor) -> tuple[Tensor, Tensor]:
    shape, dtype = stats_shape(x.shape), stats_dtype(x.dtype)
    return (torch.empty(shape, dtype=dtype, device=x.device), torch.empty(shape, dtype=dtype, device=x.device))


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


# --------------------------------------------------------------------------- depthwise conv


def run_dwconv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    """The body of ``dwconv_fwd``; also called by the eager route (``eager_autograd.py``, and
    ``functional.py`` when autograd has nothing to record)."""
    if x.numel() == 0:
        return empty_channels_last(x.shape, x.dtype, x.device)
    return implementation(backend).dwconv_forward(x, weight.contiguous(), _contig(bias))


def run_dwconv_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """The body of ``dwconv_bwd``."""
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device),
                torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device),
                torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    return implementation(backend).dwconv_backward(grad_y, x, weight.contiguous())


@torch.library.custom_op("convnext_fast::dwconv_fwd", mutates_args=())
def dwconv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str, bwd_backend: str = "") -> Tensor:
    return run_dwconv_fwd(x, weight, bias, backend)


@dwconv_fwd.register_fake
def _(x, weight, bias, backend, bwd_backend=""):
    return empty_channels_last(x.shape, x.dtype, x.device)


@torch.library.custom_op("convnext_fast::dwconv_bwd", mutates_args=())
def dwconv_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return run_dwconv_bwd(grad_y, x, weight, backend)


@dwconv_bwd.register_fake
def _(grad_y, x, weight, backend):
    return (empty_channels_last(x.shape, x.dtype, x.device), _param_grad_like(weight),
            torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device))


def _dwconv_setup(ctx, inputs, output):
    x, weight, bias, backend, bwd_backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.backend = bwd_backend or backend


def _dwconv_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    gx, gw, gb = dwconv_bwd(grad_y, x, weight, ctx.backend)
    return gx, gw, (gb if ctx.has_bias else None), None, None


dwconv_fwd.register_autograd(_dwconv_backward, setup_context=_dwconv_setup)


# --------------------------------------------------------------------------- LayerNorm over C


def run_ln_fwd(x: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """The body of ``ln_fwd``."""
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), *_stats_like(x))
    return implementation(backend).layer_norm_forward(x, weight.contiguous(), bias.contiguous(), eps)


def run_ln_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """The body of ``ln_bwd``."""
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), torch.zeros_like(weight),
                torch.zeros_like(weight))
    return implementation(backend).layer_norm_backward(grad_y, x, weight.contiguous(), mean, rstd)


@torch.library.custom_op("convnext_fast::ln_fwd", mutates_args=())
def ln_fwd(x: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str,
           bwd_backend: str = "") -> tuple[Tensor, Tensor, Tensor]:
    return run_ln_fwd(x, weight, bias, eps, backend)


@ln_fwd.register_fake
def _(x, weight, bias, eps, backend, bwd_backend=""):
    return (empty_channels_last(x.shape, x.dtype, x.device), *_stats_like(x))


@torch.library.custom_op("convnext_fast::ln_bwd", mutates_args=())
def ln_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return run_ln_bwd(grad_y, x, weight, mean, rstd, backend)


@ln_bwd.register_fake
def _(grad_y, x, weight, mean, rstd, backend):
    return (empty_channels_last(x.shape, x.dtype, x.device), _param_grad_like(weight), _param_grad_like(weight))


def _ln_setup(ctx, inputs, output):
    x, weight, bias, eps, backend, bwd_backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.backend = bwd_backend or backend


def _ln_backward(ctx, grad_y, grad_mean, grad_rstd):
    x, weight, mean, rstd = ctx.saved_tensors
    gx, gw, gb = ln_bwd(grad_y, x, weight, mean, rstd, ctx.backend)
    return gx, gw, gb, None, None, None


ln_fwd.register_autograd(_ln_backward, setup_context=_ln_setup)


# --------------------------------------------------------------------------- fused dwconv + LayerNorm


def run_dwconv_ln_fwd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor,
                      eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """The body of ``dwconv_ln_fwd``."""
    if x.numel() == 0:
        return (empty_channels_last(x.shape, x.dtype, x.device), *_stats_like(x))
    return implementation(backend).dwconv_ln_forward(x, dw_weight.contiguous(), _contig(dw_bias),
                                                     ln_weight.contiguous(), ln_bias.contiguous(), eps)


def run_dwconv_ln_bwd(grad_y: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                      mean: Tensor, rstd: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The body of ``dwconv_ln_bwd``."""
    if x.numel() == 0:
        c = x.shape[1]
        z = lambda: torch.zeros(c, dtype=ln_weight.dtype, device=x.device)  # noqa: E731
        return (empty_channels_last(x.shape, x.dtype, x.device), torch.zeros_like(dw_weight), z(), z(), z())
    return implementation(backend).dwconv_ln_backward(grad_y, x, dw_weight.contiguous(), _contig(dw_bias),
                                                      ln_weight.contiguous(), mean, rstd)


@torch.library.custom_op("convnext_fast::dwconv_ln_fwd", mutates_args=())
def dwconv_ln_fwd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor,
                  eps: float, backend: str, bwd_backend: str = "") -> tuple[Tensor, Tensor, Tensor]:
    return run_dwconv_ln_fwd(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend)


@dwconv_ln_fwd.register_fake
def _(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend, bwd_backend=""):
    return (empty_channels_last(x.shape, x.dtype, x.device), *_stats_like(x))


@torch.library.custom_op("convnext_fast::dwconv_ln_bwd", mutates_args=())
def dwconv_ln_bwd(grad_y: Tensor, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                  mean: Tensor, rstd: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return run_dwconv_ln_bwd(grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd, backend)


@dwconv_ln_bwd.register_fake
def _(grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd, backend):
    c = x.shape[1]
    return (empty_channels_last(x.shape, x.dtype, x.device), _param_grad_like(dw_weight),
            torch.empty(c, dtype=dw_weight.dtype, device=x.device), _param_grad_like(ln_weight),
            _param_grad_like(ln_weight))


def _dwconv_ln_setup(ctx, inputs, output):
    x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend, bwd_backend = inputs
    _, mean, rstd = output
    # The conv output is not saved: the backward pass recomputes it from x (one activation less).
    ctx.save_for_backward(x, dw_weight, dw_bias, ln_weight, mean, rstd)
    ctx.backend = bwd_backend or backend


def _dwconv_ln_backward(ctx, grad_y, grad_mean, grad_rstd):
    x, dw_weight, dw_bias, ln_weight, mean, rstd = ctx.saved_tensors
    gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b = dwconv_ln_bwd(grad_y, x, dw_weight, dw_bias, ln_weight, mean, rstd,
                                                       ctx.backend)
    return gx, g_dw_w, (g_dw_b if dw_bias is not None else None), g_ln_w, g_ln_b, None, None, None


dwconv_ln_fwd.register_autograd(_dwconv_ln_backward, setup_context=_dwconv_ln_setup)
