"""Helpers shared by the model, weights, convert and training tests: random-weight timm and
torchvision ConvNeXts built without their (slow) initializers, and an official-layout renamer that
is independent of convnext_fast.weights."""
from __future__ import annotations

import re
from typing import Dict

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random, well-scaled value (layer scale and GRN included: timm's
    1e-6 layer-scale init and zero GRN init would hide errors in the block)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1 and p.numel() != p.shape[0]:
            std = p[0].numel() ** -0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        elif name.endswith(("gamma", "layer_scale")):
            p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=g))
        elif "grn" in name:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        elif name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def timm_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """timm model ``name`` with random weights, in eval mode (built on meta: no init cost)."""
    import timm

    m = timm.create_model(name, device="meta", **kwargs).to_empty(device="cpu")
    return randomize_(m, seed).eval()


def timm_convnext(seed: int = 0, **kwargs) -> nn.Module:
    """A timm ``ConvNeXt`` with the given constructor arguments and random weights."""
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(device="meta", **kwargs).to_empty(device="cpu")
    return randomize_(m, seed).eval()


def tv_model(name: str, seed: int = 0) -> nn.Module:
    """torchvision ConvNeXt ``name`` with random weights, in eval mode."""
    import torchvision

    with torch.device("meta"):
        m = getattr(torchvision.models, name)()
    return randomize_(m.to_empty(device="cpu"), seed).eval()


def timm_to_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a timm ConvNeXt state dict to facebookresearch's layout (inverse of timm's
    ``checkpoint_filter_fn``): Linear pwconv weights, GRN gamma/beta of shape (1, 1, 1, C)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if "mlp.grn" in k:
            k = k.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            v = v.reshape(1, 1, 1, -1)
        if "pwconv" in k and v.dim() == 4:
            v = v.flatten(1)
        k = k.replace("head.fc.", "head.").replace("head.norm.", "norm.")
        out[k] = v.clone()
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()
