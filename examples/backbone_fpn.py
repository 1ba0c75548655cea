"""ConvNeXt as a detection / segmentation backbone: ``features_only`` levels into torchvision's
FeaturePyramidNetwork.

    python examples/backbone_fpn.py --model convnext_tiny --size 512 [--output-stride 16] [--weights FILE]

The backbone is built the way timm builds one (``create_model(name, features_only=True,
out_indices=...)``); its ``feature_info`` gives the FPN its input widths, and the pyramid levels
come from the same fused kernels as the classifier's ``forward_features``. ``--output-stride 16``
(or 8) dilates the later stages instead of downsampling them, as segmentation heads want.
``--optimize`` runs the backbone through :func:`convnext_fast.optimize_for_inference` (folded
blocks, inference only).
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

import convnext_fast


class ConvNeXtFPN(nn.Module):
    """A ``features_only`` ConvNeXt feeding a FeaturePyramidNetwork.

    Args:
        name: a convnext_fast model name (``convnext_tiny``, ``convnextv2_atto.fcmae``, ...).
        out_indices: the stages whose outputs form the pyramid.
        fpn_channels: the FPN's output width.
        output_stride: 32, 16 or 8 (timm's ``output_stride``).
        weights: a local checkpoint file (timm, official or torchvision layout), or None.

    Shape:
        (N, 3, H, W) -> {"p<i>": (N, fpn_channels, H / r_i, W / r_i)} for each level i.
    """

    def __init__(self, name: str = "convnext_tiny", out_indices: Sequence[int] = (0, 1, 2, 3),
                 fpn_channels: int = 256, output_stride: int = 32, weights: Optional[str] = None) -> None:
        super().__init__()
        self.backbone = convnext_fast.create_model(name, pretrained=weights, features_only=True,
                                                   out_indices=tuple(out_indices), output_stride=output_stride)
        self.fpn = FeaturePyramidNetwork(self.backbone.feature_info.channels(), fpn_channels)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        levels = self.backbone(x)
        return self.fpn(OrderedDict((f"p{i}", f) for i, f in zip(self.backbone.feature_info.out_indices, levels)))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--weights", default=None, help="local checkpoint file (nothing is downloaded)")
    p.add_argument("--optimize", action="store_true", help="fold the backbone for inference")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ConvNeXtFPN(args.model, output_stride=args.output_stride, weights=args.weights).to(device).eval()
    if args.optimize:
        model.backbone = convnext_fast.optimize_for_inference(model.backbone)
    info = model.backbone.feature_info
    print(f"{args.model} backbone: channels {info.channels()}, reductions {info.reduction()}, "
          f"modules {info.module_name()}")
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.inference_mode():
        out = model(x)
    for k, v in out.items():
        print(f"{k}: {tuple(v.shape)}")
    return out


if __name__ == "__main__":
    main()
