"""Drop-in modules. Each subclasses the PyTorch layer it replaces, so state-dict keys, parameter
names and optimizers see exactly what they saw before."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.fx import Proxy
from torch.utils.weak import WeakIdKeyDictionary

from .depthwise_conv import check_dilation, depthwise_conv2d
from .layer_norm import layer_norm_2d
from .route import check_eps, check_kernel_size

__all__ = ["DepthwiseConv2d", "LayerNorm2d"]


def fx_leaf(module: nn.Module, *args: object) -> object:
    """``module`` called on ``args`` as one ``call_module`` node of the torch.fx graph being traced.

    The fused modules pick kernels and dtypes in Python, which symbolic tracing cannot follow; as a
    leaf the graph calls the module itself, so a traced model runs the same fused kernels and gives
    the same outputs. Each fused module's ``forward`` hands its call here when its input is a
    ``torch.fx.Proxy`` (plain ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``
    and any other tracer); timm's tracer also lists them as leaves (``features.register_with_timm``).
    """
    tracer = next(a for a in args if isinstance(a, Proxy)).tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


class FxLeafScripting:
    """Mixin: ``torch.jit.script`` of a fused module (alone, or inside an FX graph) fails at once with
    the way out instead of deep inside the compiler."""

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script: convnext_fast's fused ops dispatch in "
            f"Python. Export with torch.export.export(model.eval(), (example_input,)) (the fused ops become custom "
            f"ops), or call convnext_fast.to_reference(model) first for plain PyTorch operators (ONNX, TensorRT).")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the op runs in: autocast's low-precision dtype when autocast is on, else x's."""
    if not torch._C._is_any_autocast_enabled():  # the common case, without building x.device
        return x.dtype
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _as(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``t`` in ``dtype``: itself when it already is (the common case: no call into torch)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


# Casts of parameters kept between forwards, per parameter (held weakly) and dtype:
# (version, data pointer, cast).
_PARAMETER_CASTS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _as_param(p: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """A parameter in ``dtype`` (autocast over float32 parameters): ``_as``, and where no gradient
    flows through the cast (grad mode off, or a parameter that needs none) the cast is kept for the
    next forward, as if the model had been converted to ``dtype``. Casting every weight on every
    call cost as much as a batch-1 forward's GEMMs; and a cast that is the same tensor call after
    call lets the CPU MLP keep its weights in oneDNN's packed layout. A kept cast is made again
    when the parameter changes in place (its version) or is given new memory; it lives as long as
    the parameter, a copy of it in ``dtype``. Tracing and inference tensors (no version) cast every
    call."""
    if p is None or p.dtype == dtype:
        return p
    if ((p.requires_grad and torch.is_grad_enabled()) or p.is_inference() or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return p.to(dtype)
    key = (p._version, p.data_ptr(), tuple(p.shape))
    casts = _PARAMETER_CASTS.get(p)
    kept = None if casts is None else casts.get(dtype)
    if kept is not None and kept[0] == key:
        return kept[1]
    with torch.inference_mode(False):  # a normal tensor even under inference mode: it has a version
        cast = p.detach().to(dtype)
    _PARAMETER_CASTS.setdefault(p, {})[dtype] = (key, cast)
    return cast


class DepthwiseConv2d(FxLeafScripting, nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
    dilation=dilation, groups=channels)`` on the fast depthwise kernel.

    Under ``torch.autocast`` it runs in the autocast dtype, as ``nn.Conv2d`` does; parameters are cast
    to the input's dtype (the op requires one dtype).

    Args:
        channels: number of input and output channels C.
        kernel_size: odd K, 1 <= K <= 31.
        bias: learn an additive bias.
        dilation: spacing of the taps (ConvNeXt's later stages at output stride 16 or 8).

    Shape:
        (N, C, H, W) -> (N, C, H, W), channels_last.
    """

    def __init__(self, channels: int, kernel_size: int = 7, bias: bool = True, device=None, dtype=None,
                 dilation: int = 1) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"DepthwiseConv2d expects a positive channel count, got {channels!r}")
        kernel_size = check_kernel_size("DepthwiseConv2d", kernel_size)
        dilation = check_dilation("DepthwiseConv2d", dilation)
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                         groups=channels, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Proxy):
            return fx_leaf(self, x)
        w, b = self.weight, self.bias
        if torch._C._is_any_autocast_enabled() or w.dtype != x.dtype:
            dtype = _compute_dtype(x)
            x, w, b = _as(x, dtype), _as_param(w, dtype), _as_param(b, dtype)
        return depthwise_conv2d(x, w, b, self.dilation[0])

    def extra_repr(self) -> str:
        dil = f", dilation={self.dilation[0]}" if self.dilation[0] != 1 else ""
        return f"{self.in_channels}, kernel_size={self.kernel_size[0]}{dil}, bias={self.bias is not None}"


class LayerNorm2d(FxLeafScripting, nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor (ConvNeXt's ``channels_first`` LayerNorm).

    Same parameters and state-dict keys as ``nn.LayerNorm(channels, eps=eps)`` and timm's
    ``LayerNorm2d``. Statistics in float32; the output keeps the input dtype (under autocast the
    parameters are cast to it).

    Shape:
        (N, C, H, W) -> (N, C, H, W), channels_last.
    """

    def __init__(self, channels: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"LayerNorm2d expects a positive channel count, got {channels!r}")
        super().__init__(channels, eps=check_eps("LayerNorm2d", eps), device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Proxy):
            return fx_leaf(self, x)
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        return layer_norm_2d(x, w, b, self.eps)
