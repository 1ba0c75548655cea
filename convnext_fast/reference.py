"""Ground truth for every op: the formulas of the official ConvNeXt code, in plain PyTorch.

Tests compare every backend against these (usually evaluated in float64), the benchmarks use them
as the eager baseline, and the ``reference`` backend runs them directly with PyTorch's autograd.

Liu et al., "A ConvNet for the 2020s", CVPR 2022; facebookresearch/ConvNeXt ``models/convnext.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "pointwise_mlp"]


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     dilation: int = 1) -> torch.Tensor:
    """Depthwise KxK convolution, stride 1, padding ``dilation * (K//2)``
    (``nn.Conv2d(C, C, K, padding=dilation * (K//2), dilation=dilation, groups=C)``): the same-size
    output of ConvNeXt's block, dilated in the later stages of a backbone with output stride 16 or 8
    (timm's ``output_stride``)."""
    k = weight.shape[-1]
    return F.conv2d(x, weight, bias, padding=dilation * (k // 2), dilation=dilation, groups=x.shape[1])


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
    dilation: int = 1,
) -> torch.Tensor:
    """The first half of a ConvNeXt block: LayerNorm over C of the (dilated) depthwise conv of ``x``."""
    return layer_norm_2d(depthwise_conv2d(x, dw_weight, dw_bias, dilation), ln_weight, ln_bias, eps)


def pointwise_mlp(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: Optional[torch.Tensor],
    fc2_weight: torch.Tensor,
    fc2_bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor] = None,
    shortcut: Optional[torch.Tensor] = None,
    grn_weight: Optional[torch.Tensor] = None,
    grn_bias: Optional[torch.Tensor] = None,
    drop_scale: Optional[torch.Tensor] = None,
    grn_eps: float = 1e-6,
) -> torch.Tensor:
    """The second half of a ConvNeXt block on an (N, C, H, W) tensor:
    ``shortcut + drop_scale * gamma * fc2(GRN(GELU(fc1(x))))``, the Linear layers acting on channels.

    fc1_weight is (4C, C) or (4C, C, 1, 1), fc2_weight (C, 4C) or (C, 4C, 1, 1); GELU is the exact
    (erf) one; GRN (ConvNeXt V2) runs when ``grn_weight`` is given; ``drop_scale`` is the
    per-sample stochastic-depth factor, shape (N,). Each optional term is skipped when None.
    Returns (N, C, H, W), computed in x's dtype.
    """
    t = x.permute(0, 2, 3, 1)
    h = F.gelu(F.linear(t, fc1_weight.flatten(1), fc1_bias))
    if grn_weight is not None:
        compute = torch.float64 if h.dtype == torch.float64 else torch.float32
        hc = h.to(compute)
        g = torch.linalg.vector_norm(hc, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + grn_eps)
        h = (hc + grn_bias.to(compute) + grn_weight.to(compute) * (hc * n)).to(h.dtype)
    y = F.linear(h, fc2_weight.flatten(1), fc2_bias)
    if gamma is not None:
        y = y * gamma
    if drop_scale is not None:
        y = y * drop_scale.reshape(-1, 1, 1, 1).to(y.dtype)
    if shortcut is not None:
        y = y + shortcut.permute(0, 2, 3, 1)
    return y.permute(0, 3, 1, 2)
