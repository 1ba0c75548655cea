"""A ConvNeXt block's two ops called straight through to their CPU kernels, in inference.

At batch 1 a block's kernels run for a few hundred microseconds, and the routes of its two ops
(``dwconv_ln.py`` and ``mlp.py``: the argument checks, the backend choice, the autograd and tracing
conditions) add some 30 us of Python to each block. :class:`DirectCalls` remembers the input
signatures for which a block's call went through both routes to the CPU extension's kernels, called
directly; the block's next call with such an input calls those kernels at once
(:func:`forward`), with the same arguments the routes would pass.

What can change between two calls with inputs of one signature is checked on every call
(:meth:`DirectCalls.key`): grad mode with an input that requires grad, tracing, dispatch and
function modes, torch.func transforms and forward-mode AD, autocast, and the backend asked for
(part of the key). The rest of a route's choice is fixed by the key: on the CPU the backend depends
only on the backend asked for, the op, the dtype and the sizes; the checks of ``x`` depend on its
shape, strides and dtype. The block's weights are read on every call and the extension checks their
shapes, dtypes, devices and layout again, so a weight replaced by one that does not fit raises
there; a block forgets its signatures when it is moved (``.to()``, ``.float()``, ...).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dwconv_ln, mlp
from .backend import requested_backend
from .route import needs_reference, plain_eager

__all__ = ["DirectCalls", "forward"]

_KERNELS = "cpu"  # the backend whose kernels the direct calls run: the compiled extension's


class DirectCalls:
    """The input signatures for which one block's call ran both ops' CPU kernels directly."""

    def __init__(self) -> None:
        self._seen: set = set()

    @staticmethod
    def key(x: Tensor) -> Optional[tuple]:
        """The signature of a call on ``x`` when the call may be a direct one (plain eager inference
        on a CPU tensor, no autocast), else None. The key holds the backend asked for."""
        if not plain_eager() or type(x) is not Tensor or not x.is_cpu:
            return None
        if (x.requires_grad and torch.is_grad_enabled()) or torch._C._is_any_autocast_enabled() or needs_reference():
            return None
        return x.shape, x.stride(), x.dtype, requested_backend()

    def __contains__(self, key: Optional[tuple]) -> bool:
        return key is not None and key in self._seen

    def learn(self, key: Optional[tuple], x: Tensor, dw_weight: Tensor, ln_weight: Tensor, fc1_weight: Tensor,
              fc2_weight: Tensor, *others: Optional[Tensor]) -> None:
        """After a call on ``x`` that went through the ops' routes with these weights (undilated
        depthwise conv, no GRN): remember ``key`` if both routes called the CPU kernels directly,
        every weight being a plain tensor of x's dtype on the CPU that needs no gradient here."""
        if key is None or x.numel() == 0:
            return
        weights = (dw_weight, ln_weight, fc1_weight, fc2_weight, *others)
        for w in weights:
            if w is not None and (type(w) not in (Tensor, torch.nn.Parameter) or w.dtype != x.dtype or not w.is_cpu
                                  or (w.requires_grad and torch.is_grad_enabled())):
                return
        if (dwconv_ln.resolve(x, dw_weight, ln_weight)[0] == _KERNELS
                and mlp.resolve(x, fc1_weight, fc2_weight, x)[0] == _KERNELS):
            self._seen.add(key)

    def clear(self) -> None:
        self._seen.clear()


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
