"""Drop-in modules. Each subclasses the PyTorch layer it replaces, so state-dict keys, parameter
names and optimizers see exactly what they saw before."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import depthwise_conv2d, layer_norm_2d

__all__ = ["DepthwiseConv2d", "LayerNorm2d"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the op runs in: autocast's low-precision dtype when autocast is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


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
        if kernel_size % 2 == 0:
            raise ValueError(f"DepthwiseConv2d expects an odd kernel_size, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias,
                         device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        return depthwise_conv2d(x.to(dtype), self.weight.to(dtype), bias)

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
        super().__init__(channels, eps=eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
