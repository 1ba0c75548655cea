"""A ConvNeXt block's two ops called straight through to their CPU kernels, in inference.

At batch 1 a block's kernels run for a few hundred microseconds, and the routes of its two ops
(``dwconv_ln.py`` and ``mlp.py``: the argument checks, the backend choice, the autograd and tracing
conditions) add some 30 us of Python to each block. :class:`DirectCalls` remembers the input
signatures for which a block's call went through both routes to the CPU extension's kernels, called
directly; the block's next call with such an input calls those kernels at once
(:func:`forward`), with the same arguments the routes would pass.

Under autocast (the plain model over float32 parameters) the block's branch runs in the autocast
dtype and its residual stream stays float32, as in timm; :func:`forward_promoted` runs that tail
as one kernel (``mlp_forward_promoted``: the residual add in the MLP's row chunks, with the rounding
of the ``torch.addcmul`` the route runs), so it too gives the route's bits.

What can change between two calls with inputs of one signature is checked on every call
(:meth:`DirectCalls.key`, :meth:`DirectCalls.ready`): grad mode with an input or a weight that
needs a gradient, tracing, dispatch and function modes, torch.func transforms and forward-mode AD;
the dtype the block computes in (autocast's) and the backend asked for are part of the key. The rest of a route's choice is fixed
by the key: on the CPU the backend depends only on the backend asked for, the op, the dtype and the
sizes; the checks of ``x`` depend on its shape, strides and dtype. The block's weights are read on
every call and the extension checks their shapes, dtypes, devices and layout again, so a weight
replaced by one that does not fit raises there; a block forgets its signatures when it is moved
(``.to()``, ``.float()``, ...).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dwconv_ln, mlp
from .backend import implementation, requested_backend
from .layers import _compute_dtype
from .route import PLAIN_TENSOR_TYPES, needs_reference, plain_eager

__all__ = ["DirectCalls", "forward", "forward_promoted", "usable"]

_KERNELS = "cpu"  # the backend whose kernels the direct calls run: the compiled extension's
_MAX_SIGNATURES = 64  # per block


class DirectCalls:
    """The input signatures for which one block's call ran both ops' CPU kernels directly."""

    def __init__(self) -> None:
        self._seen: set = set()

    @staticmethod
    def key(x: Tensor) -> Optional[tuple]:
        """The signature of a call on ``x`` when the call may be a direct one (plain eager inference
        on a CPU tensor), else None: x's shape, strides and dtype, the dtype the block computes in
        (autocast's, or x's) and the backend asked for."""
        if not plain_eager() or type(x) is not Tensor or not x.is_cpu:
            return None
        if (x.requires_grad and torch.is_grad_enabled()) or needs_reference():
            return None
        return x.shape, x.stride(), x.dtype, _compute_dtype(x), requested_backend()

    def ready(self, key: Optional[tuple], *weights: Optional[Tensor]) -> bool:
        """Whether a call with signature ``key`` and these weights may go straight to the kernels:
        ``key`` was learned, and autograd has nothing to record (grad mode off, or no weight needs a
        gradient: parameters can be unfrozen between two calls of one signature)."""
        if key is None or key not in self._seen:
            return False
        return not torch.is_grad_enabled() or not any(w is not None and w.requires_grad for w in weights)

    def learn(self, key: Optional[tuple], x: Tensor, dw_weight: Tensor, ln_weight: Tensor, fc1_weight: Tensor,
              fc2_weight: Tensor, *others: Optional[Tensor]) -> None:
        """After a call on ``x`` that went through the ops' routes with these weights (undilated
        depthwise conv, no GRN): remember ``key`` if both routes called the CPU kernels directly,
        every weight being a plain tensor of x's dtype on the CPU that needs no gradient here."""
        if key is None or x.numel() == 0:
            return
        if not all(usable(w, x.dtype) for w in (dw_weight, ln_weight, fc1_weight, fc2_weight, *others)):
            return
        if (dwconv_ln.resolve(x, dw_weight, ln_weight)[0] == _KERNELS
                and mlp.resolve(x, fc1_weight, fc2_weight, x)[0] == _KERNELS):
            if len(self._seen) >= _MAX_SIGNATURES:  # inputs of ever new sizes: start over, not grow
                self._seen.clear()
            self._seen.add(key)

    def clear(self) -> None:
        self._seen.clear()


def usable(t: Optional[Tensor], dtype: torch.dtype) -> bool:
    """Whether ``t`` (None counts) can go to the kernels of a direct call as a ``dtype`` tensor: a
    plain CPU tensor of that dtype that needs no gradient here."""
    return t is None or (type(t) in PLAIN_TENSOR_TYPES and t.dtype == dtype and t.is_cpu
                         and not (t.requires_grad and torch.is_grad_enabled()))


def forward(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor, ln_bias: Tensor, eps: float,
            fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor, fc2_bias: Optional[Tensor],
            gamma: Optional[Tensor]) -> Tensor:
    """``x + gamma * MLP(LN(dwconv(x)))`` on the CPU kernels: what the routes of
    ``dwconv_layer_norm`` and ``pointwise_mlp`` (with ``shortcut=x``) call in inference."""
    n, c, h, w = x.shape
    y = dwconv_ln._forward(_KERNELS, x, dw_weight, dw_bias, ln_weight, ln_bias, eps)[0]
    out = mlp._forward(_KERNELS, mlp._rows(y), fc1_weight.flatten(1), fc1_bias, fc2_weight.flatten(1), fc2_bias,
                       gamma, mlp._rows(x), None, h * w, False)[0]
    return mlp._nchw(out, n, h, w)


def forward_promoted(x: Tensor, dtype: torch.dtype, dw_weight: Tensor, dw_bias: Optional[Tensor], ln_weight: Tensor,
                     ln_bias: Tensor, eps: float, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                     fc2_bias: Optional[Tensor], gamma: Optional[Tensor]) -> Tensor:
    """``x + gamma * MLP(LN(dwconv(x in dtype)))`` in float32, the branch in ``dtype`` (bfloat16; its
    parameters given in it), ``x`` float32 or bfloat16 and ``gamma`` float32: what the block's route
    computes under autocast (the cast of x, the two ops, then ``torch.addcmul``)."""
    n, c, h, w = x.shape
    kernels = implementation(_KERNELS)  # the compiled extension's module, imported on first use
    xc = x
    if x.dtype != dtype:  # x.to(dtype), into the output pool
        xc = kernels._like(x, dtype)
        xc.copy_(x)
    y = dwconv_ln._forward(_KERNELS, xc, dw_weight, dw_bias, ln_weight, ln_bias, eps)[0]
    out = kernels.mlp_forward_promoted(mlp._rows(y), fc1_weight.flatten(1), fc1_bias, fc2_weight.flatten(1),
                                       fc2_bias, gamma, mlp._rows(x))
    return mlp._nchw(out, n, h, w)
