"""ConvNeXt's stem and downsampling layers as modules that run as one fused pass in inference.

:class:`PatchConvSequential` is an ``nn.Sequential`` of a :class:`~convnext_fast.LayerNorm2d` and a
k x k, stride-k ``nn.Conv2d``, in either order (the stem: conv, then the norm; a downsampling
layer: the norm, then the conv): the same modules, parameters and state-dict keys as timm's. When
autograd has nothing to record (inference: grad mode off, or nothing requires grad), not under
tracing, and the patch kernel serves the device and dtype, it runs as one
:func:`~convnext_fast.patch_linear.patch_linear` pass, as :func:`convnext_fast.optimize_for_inference`
runs these layers, but on the model's own parameters: the conv's weight laid out as the kernel reads
it, and a norm before the conv folded into it (in float64, rounded once), are kept per dtype while
the parameters are unchanged (their versions and memory) and made again after any change. Otherwise
(training, tracing, another backend) its modules run one after the other. Under torch.fx symbolic
tracing it is one leaf (``call_module``), as the other fused modules are.

As a module, oneDNN's convolution reorders its weights and input on every call, and for the late
downsampling layers at small batches it is slow (docs/performance.md).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.fx import Proxy
from torch.utils.weak import WeakIdKeyDictionary

from .layers import LayerNorm2d, _as, _compute_dtype, fx_leaf
from .patch_linear import fold_norm_into_patch_weight, kernel_backend, patch_linear, patch_weight

__all__ = ["PatchConvSequential", "is_patch_conv", "patch_parts"]

# Per module, per (dtype, device): (the parameters' state when made, the patch_linear arguments).
_DERIVED: WeakIdKeyDictionary = WeakIdKeyDictionary()


def is_patch_conv(m: nn.Module) -> bool:
    """A plain k x k conv with stride k, no padding, dilation or groups: a GEMM over patches."""
    return (type(m) is nn.Conv2d and m.kernel_size[0] == m.kernel_size[1] == m.stride[0] == m.stride[1]
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1)


def patch_parts(m: nn.Module) -> Optional[tuple[nn.Conv2d, Optional[LayerNorm2d], Optional[LayerNorm2d]]]:
    """(conv, norm before, norm after) of a two-module ``nn.Sequential`` that is a
    :class:`~convnext_fast.LayerNorm2d` and a patch conv in either order (the stem and the
    downsampling layers of timm's, torchvision's and our ConvNeXt), else None."""
    if not isinstance(m, nn.Sequential) or len(m) != 2:
        return None
    first, second = m[0], m[1]
    if type(first) is LayerNorm2d and is_patch_conv(second):
        return second, first, None
    if is_patch_conv(first) and type(second) is LayerNorm2d:
        return first, None, second
    return None


class PatchConvSequential(nn.Sequential):
    """``nn.Sequential(conv, LayerNorm2d)`` or ``nn.Sequential(LayerNorm2d, conv)``, the conv a k x k
    stride-k ``nn.Conv2d``, that runs as one fused patch pass in inference (see the module
    docstring). Any other contents run as a plain ``nn.Sequential``.

    Shape:
        (N, C, H, W) -> (N, O, H // k, W // k), channels_last in the fused pass.
    """

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Proxy):  # one leaf of an FX graph, which then runs this same forward
            return fx_leaf(self, x)
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return super().forward(x)
        parts = patch_parts(self)
        if parts is None or (torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in self.parameters()))):
            return super().forward(x)
        dtype = _compute_dtype(x)
        if kernel_backend(x.device, dtype) is None:
            return super().forward(x)
        weight_t, bias, in_eps, out_weight, out_bias, out_eps = self._derived(parts, dtype, x.device)
        return patch_linear(_as(x, dtype), weight_t, bias, parts[0].kernel_size[0], in_eps=in_eps,
                            out_weight=out_weight, out_bias=out_bias, out_eps=out_eps)

    def _derived(self, parts, dtype: torch.dtype, device: torch.device) -> tuple:
        params = list(self.parameters())
        state = tuple((p._version, p.data_ptr(), tuple(p.shape)) for p in params)
        per_dtype = _DERIVED.setdefault(self, {})
        kept = per_dtype.get((dtype, device))
        if kept is not None and kept[0] == state:
            return kept[1]
        conv, in_norm, out_norm = parts
        with torch.no_grad(), torch.inference_mode(False):
            weight = conv.weight.detach().double()
            bias = None if conv.bias is None else conv.bias.detach().double()
            if in_norm is not None:
                ln_b = torch.zeros_like(in_norm.weight) if in_norm.bias is None else in_norm.bias
                weight, bias = fold_norm_into_patch_weight(weight, bias, in_norm.weight, ln_b)
            cast = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype).contiguous()  # noqa: E731
            args = (cast(patch_weight(weight)), cast(bias), None if in_norm is None else float(in_norm.eps),
                    None if out_norm is None else cast(out_norm.weight),
                    None if out_norm is None else cast(out_norm.bias),
                    1e-6 if out_norm is None else float(out_norm.eps))
        per_dtype[(dtype, device)] = (state, args)
        return args
