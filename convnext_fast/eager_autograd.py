"""Eager-mode autograd for the three ops, without the torch.library dispatcher round trip.

The registered custom ops in ``ops.py`` are what ``torch.compile``, ``torch.export``, FakeTensor,
``opcheck`` and every other dispatcher-level tool see. In plain eager PyTorch, though, a Python
custom op with ``register_autograd`` costs tens of microseconds of Python per call (argument
normalization, the autograd wrapper, a redispatch), more than a whole stage-4 ConvNeXt kernel
runs on an H100. Measured on this project's 2-core CPU machine with the ``cpu`` backend on a tiny
tensor (so the kernels themselves take a few us): the fused dwconv+LayerNorm forward took 43 us per
call through the custom op and 12 us through the ``torch.autograd.Function`` below; forward +
backward 160 us and 78 us (``benchmarks/bench_host_overhead.py``).

So ``functional.py`` takes this path when nothing but eager autograd is watching (see
:func:`fast_path_ok`) and the custom op otherwise. Both paths call the same ``ops.run_*``
functions, so they compute bit-identical results (``tests/test_api.py`` checks that).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.autograd.function import once_differentiable

from . import ops

__all__ = ["fast_path_ok", "needs_graph", "DepthwiseConvFunction", "LayerNorm2dFunction", "DwconvLayerNormFunction"]


def fast_path_ok(*tensors: Optional[Tensor]) -> bool:
    """True when a plain ``torch.autograd.Function`` is observably the same as the custom op.

    False under torch.compile / export tracing, TorchScript tracing, any TorchDispatchMode (FakeTensor,
    FlopCounterMode, ...) or TorchFunctionMode (``with torch.device(...)``), functorch transforms,
    and for tensor subclasses: each of those has to see the registered op, not its kernels.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._functorch.maybe_current_level() is not None:
        return False
    return all(t is None or type(t) is Tensor for t in tensors)


def needs_graph(*tensors: Optional[Tensor]) -> bool:
    """False when the ``torch.autograd.Function`` would record nothing: grad mode off or no input
    requiring grad, and no forward-AD level open. Then the eager route calls the kernels directly
    (inference: ~2 us less host time per call on the dev CPU, ~15% of the op's Python). An open
    dual level keeps the Function, which raises that it has no forward-mode derivative, instead
    of silently dropping the tangents of dual inputs."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return forward_ad._current_level >= 0


class DepthwiseConvFunction(torch.autograd.Function):
    """``depthwise_conv2d``; both passes' backends are fixed at the forward call."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], backend: str, bwd_backend: str) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.backend = bwd_backend
        return ops.run_dwconv_fwd(x, weight, bias, backend)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        gx, gw, gb = ops.run_dwconv_bwd(grad_y, x, weight, ctx.backend)
        return gx, gw, (gb if ctx.has_bias else None), None, None


class LayerNorm2dFunction(torch.autograd.Function):
    """``layer_norm_2d``; mean and rstd are saved, not returned."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, backend: str, bwd_backend: str) -> Tensor:
        y, mean, rstd = ops.run_ln_fwd(x, weight, bias, eps, backend)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.backend = bwd_backend
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = ops.run_ln_bwd(grad_y, x, weight, mean, rstd, ctx.backend)
        return gx, gw, gb, None, None, None


class DwconvLayerNormFunction(torch.autograd.Function):
    """``dwconv_layer_norm``; like the custom op, it saves x, not the conv output (recomputed)."""

    @staticmethod
    def forward(ctx, x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor,
                eps: float, backend: str, bwd_backend: str) -> Tensor:
        y, mean, rstd = ops.run_dwconv_ln_fwd(x, dw_weight, dw_bias, ln_weight, ln_bias, eps, backend)
        ctx.save_for_backward(x, dw_weight, dw_bias, ln_weight, mean, rstd)
        ctx.has_bias = dw_bias is not None
        ctx.backend = bwd_backend
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, dw_weight, dw_bias, ln_weight, mean, rstd = ctx.saved_tensors
        gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b = ops.run_dwconv_ln_bwd(grad_y, x, dw_weight, dw_bias, ln_weight, mean,
                                                                   rstd, ctx.backend)
        return gx, g_dw_w, (g_dw_b if ctx.has_bias else None), g_ln_w, g_ln_b, None, None, None
