"""The elementwise tails of a ConvNeXt block, each written as one pass over memory.

A ConvNeXt block (Liu et al., "A ConvNet for the 2020s", CVPR 2022) ends its MLP with two
memory-bound steps that eager PyTorch runs as separate kernels:

* bias + GELU after the first pointwise layer (``Linear(C, 4C)``);
* layer scale ``gamma``, stochastic depth and the residual add after the second one.

The functions here express each step in the fewest PyTorch passes (on CUDA the bias rides in the
GEMM epilogue of ``addmm``, in CPU inference bias and GELU go in place onto the GEMM output;
``addcmul`` does scale + residual in one pass), in plain differentiable
PyTorch that ``torch.compile`` fuses further and that a later Triton kernel can take over behind
the same signature. ConvNeXt V2's Global Response Normalization (Woo et al., "ConvNeXt V2:
Co-designing and Scaling ConvNets with Masked Autoencoders", CVPR 2023) lives here too.

All functions take the NHWC view ``x.permute(0, 2, 3, 1)`` of a channels_last tensor, where the
channel dimension is last and contiguous.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_gelu", "layer_scale_residual", "drop_path_scale", "global_response_norm", "mlp_composite"]


def linear_gelu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``GELU(x @ weight.T + bias)`` with the exact (erf) GELU of the official ConvNeXt.

    On CUDA the bias is added inside the GEMM (``addmm``'s epilogue) and GELU is one more
    elementwise pass. PyTorch's own fused ``_addmm_activation`` is not used: it applies the tanh
    approximation.

    On the CPU, in inference (see :func:`_cpu_inference_in_place`), the bias and GELU are applied
    in place to the GEMM's output instead: CPU ``addmm`` first copies the bias into a fresh output
    (one more pass), and every fresh tensor above glibc's 32 MB mmap threshold (ConvNeXt-T stage 1
    at batch 8: 25088 x 384 fp32 = 38.5 MB) is page-faulted in again on every call (the times are in
    docs/performance.md, "Kernel constants"). Same operations in the same order per element, so the
    same values up to the GEMM's last-bit rounding of ``dot + bias``.

    Args:
        x: (..., C_in), channels last.
        weight: (C_out, C_in).
        bias: optional (C_out,).

    Returns:
        (..., C_out).
    """
    if _cpu_inference_in_place(x, weight, bias):
        h = F.linear(x, weight)
        if bias is not None:
            h.add_(bias)
        return torch.ops.aten.gelu_(h)
    return F.gelu(F.linear(x, weight, bias))


def _cpu_inference_in_place(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """True when the GEMM output of :func:`linear_gelu` may be overwritten in place: CPU tensors of
    one dtype, no autograd graph to record (grad mode off or nothing requiring grad), no CPU
    autocast (which would cast the bias inside the GEMM), and no torch.compile / TorchScript
    tracing (Inductor fuses bias + GELU itself)."""
    if x.device.type != "cpu" or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


def drop_path_scale(x: Tensor, drop_prob: float, training: bool) -> Optional[Tensor]:
    """Per-sample stochastic-depth factor: 0 for a dropped sample, ``1 / keep_prob`` for a kept one.

    Args:
        x: the residual branch, (N, ...).
        drop_prob: probability of dropping a sample's branch.
        training: stochastic depth is active only in training.

    Returns:
        None when nothing is dropped (eval mode or ``drop_prob == 0``), else an (N, 1, ..., 1) tensor
        of x's dtype (rank of x) to multiply into the branch.
    """
    if not training or drop_prob <= 0.0:
        return None
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)


def layer_scale_residual(x: Tensor, gamma: Optional[Tensor], shortcut: Tensor,
                         drop_scale: Optional[Tensor] = None) -> Tensor:
    """``shortcut + drop_scale * gamma * x`` in one pass (``torch.addcmul``).

    Dtypes follow PyTorch's type promotion, as in timm's block: under autocast a float32 ``gamma``
    makes the residual stream float32, like timm's ``x.mul(gamma) + shortcut``.

    Args:
        x: the residual branch, (N, H, W, C).
        gamma: layer scale (C,), or None (ConvNeXt V2 has none).
        shortcut: the block input, (N, H, W, C).
        drop_scale: optional (N, 1, 1, 1) stochastic-depth factor from :func:`drop_path_scale`.

    Returns:
        (N, H, W, C) block output.
    """
    if gamma is None:
        if drop_scale is None:
            return shortcut + x
        return torch.addcmul(shortcut, x, drop_scale)
    scale = gamma if drop_scale is None else gamma * drop_scale
    return torch.addcmul(shortcut, x, scale)


def global_response_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """ConvNeXt V2 Global Response Normalization over the NHWC tensor ``x``.

    ``g = ||x||_2 over (H, W)``; ``n = g / (mean_C(g) + eps)``; ``y = x + bias + weight * (x * n)``.
    The spatial norm and its channel mean are computed in float32 (float64 for float64 input), so
    bfloat16/float16 inputs neither overflow nor lose the statistic; the output has x's dtype.

    Args:
        x: (N, H, W, C).
        weight, bias: (C,) (the official ``gamma``/``beta``, timm's ``weight``/``bias``).
        eps: added to the channel mean of the norms.

    Returns:
        (N, H, W, C), dtype of x.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    gx = torch.linalg.vector_norm(xc, ord=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
    y = xc + torch.addcmul(bias.to(compute), weight.to(compute), xc * nx)
    return y.to(x.dtype)


def mlp_composite(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                  fc2_bias: Optional[Tensor], gamma: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                  grn_weight: Optional[Tensor] = None, grn_bias: Optional[Tensor] = None,
                  drop_scale: Optional[Tensor] = None, grn_eps: float = 1e-6) -> Tensor:
    """``reference.pointwise_mlp`` in the fewest PyTorch passes (bias + GELU with the GEMM, layer
    scale + stochastic depth + residual as one ``addcmul``), differentiable by PyTorch: what
    ``pointwise_mlp`` runs where no kernel serves the call. Same arguments and result as the
    reference (x and shortcut (N, C, H, W); returns (N, C, H, W))."""
    t = linear_gelu(x.permute(0, 2, 3, 1), fc1_weight.flatten(1), fc1_bias)
    if grn_weight is not None:
        t = global_response_norm(t, grn_weight, grn_bias, grn_eps)
    y = F.linear(t, fc2_weight.flatten(1), fc2_bias)
    scale = None if drop_scale is None else drop_scale.reshape(-1, 1, 1, 1).to(y.dtype)
    if shortcut is None:
        if gamma is not None:
            y = y * gamma
        return (y if scale is None else y * scale).permute(0, 3, 1, 2)
    return layer_scale_residual(y, gamma, shortcut.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)
