"""Drop-in modules. Each subclasses the PyTorch layer it replaces, so state-dict keys, parameter
names and optimizers see exactly what they saw before."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .depthwise_conv import depthwise_conv2d
from .layer_norm import layer_norm_2d
from .route import check_eps, check_kernel_size

__all__ = ["DepthwiseConv2d", "LayerNorm2d"]


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


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)`` on the
    fast depthwise kernel.

    Under ``torch.autocast`` it runs in the autocast dtype, as ``nn.Conv2d`` does; parameters are cast
    to the input's dtype (the op requires one dtype).

    Args:
        channels: number of input and output channels C.
        kernel_size: odd K, 1 <= K <= 31.
        bias: learn an additive bias.

    Shape:
        (N, C, H, W) -> (N, C, H, W), channels_last.
    """

    def __init__(self, channels: int, kernel_size: int = 7, bias: bool = True, device=None, dtype=None) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"DepthwiseConv2d expects a positive channel count, got {channels!r}")
        kernel_size = check_kernel_size("DepthwiseConv2d", kernel_size)
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias,
                         device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if torch._C._is_any_autocast_enabled() or w.dtype != x.dtype:
            dtype = _compute_dtype(x)
            x, w, b = _as(x, dtype), _as(w, dtype), _as(b, dtype)
        return depthwise_conv2d(x, w, b)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, kernel_size={self.kernel_size[0]}, bias={self.bias is not None}"


class LayerNorm2d(nn.LayerNorm):
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
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        return layer_norm_2d(x, w, b, self.eps)
