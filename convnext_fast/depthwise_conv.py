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

Dilation (the later stages of a segmentation backbone, timm's ``output_stride=16`` / ``8``): a
depthwise conv with dilation d is d*d undilated convs, one per polyphase component ``x[..., a::d,
b::d]`` (the classic space-to-batch form of atrous convolution): output pixel (a + d*i, b + d*j)
only reads input pixels of its own phase, and the zero padding of the dilated conv is the zero
padding of each phase. So every backend serves a dilated call with its undilated kernels on the
phases, folded into the batch (one rearranging copy in, one out; see :func:`dilated_call`), with
the same autograd route; the reference backend calls ``F.conv2d`` with ``dilation``.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import torch
from torch import Tensor

from . import reference
from .backend import implementation
from .kernels.layout import device_guard, empty_channels_last
from .route import (check_dw, check_params, check_x, direct_ok, needs_graph, needs_reference, reference_backward,
                    resolve_backward, resolve_forward)

__all__ = ["depthwise_conv2d", "dilated_call"]

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


def check_dilation(op: str, dilation) -> int:
    """A positive int (Python or NumPy integer) as an int."""
    if isinstance(dilation, bool) or not isinstance(dilation, numbers.Integral) or dilation < 1:
        raise ValueError(f"{op} expects dilation to be a positive integer, got {dilation!r}")
    return int(dilation)


def dilated_call(fn: Callable[[Tensor], Tensor], x: Tensor, dilation: int) -> Tensor:
    """``fn`` (a per-pixel-local, same-size op whose spatial part is an undilated depthwise conv)
    applied as its ``dilation``-dilated version: on the d*d polyphase components of ``x`` folded into
    the batch, then unfolded (see the module docstring).

    H and W are zero-padded at the bottom / right to multiples of d first (only when they are not
    multiples already): the padded rows and columns are exactly the zero padding the dilated conv
    sees there, and their outputs are cropped.
    """
    d = dilation
    n, c, h, w = x.shape
    hp, wp = -(-h // d) * d, -(-w // d) * d
    if (hp, wp) != (h, w):
        x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h))
    # (N, C, Hp, Wp) -> (N, d, d, C, Hp/d, Wp/d) phases -> batch; channels_last memory, as the ops want.
    phases = x.reshape(n, c, hp // d, d, wp // d, d).permute(0, 3, 5, 1, 2, 4)
    phases = phases.reshape(n * d * d, c, hp // d, wp // d).contiguous(memory_format=torch.channels_last)
    y = fn(phases)
    y = y.reshape(n, d, d, c, hp // d, wp // d).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hp, wp)
    if (hp, wp) != (h, w):
        y = y[:, :, :h, :w]
    return y.contiguous(memory_format=torch.channels_last)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, dilation: int = 1) -> Tensor:
    """Depthwise KxK convolution, stride 1, padding ``dilation * (K//2)`` (what ConvNeXt's ``dwconv``
    computes; dilated in a backbone's later stages with timm's ``output_stride`` 16 or 8).

    Args:
        x: input of shape (N, C, H, W), any memory layout; float16, bfloat16, float32 or float64.
        weight: (C, 1, K, K) with K odd, 1 <= K <= 31; same dtype and device as ``x``.
        bias: optional (C,).
        dilation: spacing of the kernel taps (1: a plain conv). A dilated call runs the backend's
            undilated kernels on the polyphase components of ``x`` (see the module docstring).

    Returns:
        (N, C, H, W) tensor in channels_last memory order (the ``reference`` backend returns what
        PyTorch returns).
    """
    check_x(OP, x)
    check_params(OP, x, ("weight",), weight=weight, bias=bias)
    check_dw(OP, x, weight, bias)
    dilation = check_dilation(OP, dilation)
    backend, requested = resolve_forward(OP, x, (*x.shape, weight.shape[-1]), weight, bias, c=x.shape[1],
                                         k=weight.shape[-1])
    if dilation > 1:
        if backend == "reference" or needs_reference():
            return reference.depthwise_conv2d(x, weight, bias, dilation)
        return dilated_call(lambda t: depthwise_conv2d(t, weight, bias), x, dilation)
    if backend == "reference" or needs_reference():
        return reference.depthwise_conv2d(x, weight, bias)
    direct = direct_ok(x, weight, bias)
    if direct and not needs_graph(x, weight, bias):
        return _forward(backend, x, weight, bias)
    return DepthwiseConvFunction.apply(x, weight, bias, backend, requested, direct)
