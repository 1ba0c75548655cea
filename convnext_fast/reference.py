"""Ground truth for every op: the formulas of the official ConvNeXt code, in plain PyTorch.

Tests compare every backend against these (usually evaluated in float64), the benchmarks use them
as the eager baseline, and the ``reference`` backend runs them directly with PyTorch's autograd.

Liu et al., "A ConvNet for the 2020s", CVPR 2022; facebookresearch/ConvNeXt ``models/convnext.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm"]


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise KxK convolution, stride 1, padding K//2 (``nn.Conv2d(C, C, K, padding=K//2, groups=C)``)."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=k // 2, groups=x.shape[1])


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over dim 1 of an (N, C, H, W) tensor: the official ``channels_first`` LayerNorm.

    Biased variance, eps inside the square root. Half-precision inputs are computed in float32 and
    rounded once at the end (the official formula squares in the input dtype and overflows in fp16,
    facebookresearch/ConvNeXt#80).
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    u = xc.mean(1, keepdim=True)
    s = (xc - u).pow(2).mean(1, keepdim=True)
    xn = (xc - u) / torch.sqrt(s + eps)
    y = weight.to(compute)[:, None, None] * xn + bias.to(compute)[:, None, None]
    return y.to(x.dtype)


def dwconv_layer_norm(
    x: torch.Tensor,
    dw_weight: torch.Tensor,
    dw_bias: Optional[torch.Tensor],
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The first half of a ConvNeXt block: LayerNorm over C of the depthwise conv of ``x``."""
    return layer_norm_2d(depthwise_conv2d(x, dw_weight, dw_bias), ln_weight, ln_bias, eps)
