"""The paper's road from ResNet-50 to ConvNeXt-T, one model per step of its Figure 2.

Liu et al., "A ConvNet for the 2020s", CVPR 2022, Section 2 and Figure 2: a ResNet-50 is
modernised one design decision at a time, each step keeping the previous ones. Every constructor
here builds the network of one step; each changes only what the paper changes at that step:

* ``resnet50``: torchvision's ResNet-50 (v1.5: stride on the 3x3 conv), depths (3, 4, 6, 3);
* ``stage_ratio``: depths (3, 3, 9, 3);
* ``patchify_stem``: the stem cell (7x7/2 conv, BN, ReLU, 3x3/2 max pool) becomes a 4x4/4 conv + BN;
* ``depthwise_conv``: the bottleneck's 3x3 conv becomes depthwise (groups = channels);
* ``wider``: widths 64 -> 96 (stem 96; bottleneck widths 96..768, block outputs 384..3072);
* ``inverted_bottleneck``: 1x1 C -> 4C, depthwise 3x3 on 4C, 1x1 4C -> C (outputs 96..768);
* ``move_up_dwconv``: the depthwise conv first: dw 3x3 on C, 1x1 C -> 4C, 1x1 4C -> C;
* ``larger_kernel(k)``: depthwise kernel 3 -> 5 / 7 / 9 / 11 (the later steps keep 7);
* ``gelu``: every ReLU becomes a GELU;
* ``fewer_activations``: one GELU per block, between the two 1x1 layers, none after the add;
* ``fewer_norms``: one BN per block, after the depthwise conv;
* ``layer_norm``: every BN becomes a LayerNorm (the package's ``LayerNorm2d``);
* ``separate_downsampling``: LN + 2x2/2 conv between stages, LN after the stem and after pooling:
  :class:`convnext_fast.models.ConvNeXt`, i.e. ConvNeXt-T.

Conventions that the paper leaves open, fixed once for every step:

* Stride-2 blocks. Until ``separate_downsampling``, a stage downsamples in its first block, as
  ResNet does: the spatial conv of that block has stride 2 (the depthwise one from
  ``depthwise_conv`` on) and the shortcut is a stride-2 1x1 conv + norm. The package's
  :class:`~convnext_fast.DepthwiseConv2d` is stride 1 only, so those three stride-2 depthwise convs
  are plain ``nn.Conv2d(groups=C, stride=2)``; every stride-1 depthwise conv (15 of 18 blocks) is
  the package's module.
* Biases. A conv followed by a BatchNorm has no bias (BN's shift takes its place, as in
  torchvision's ResNet); every other conv has one (as in ConvNeXt). So the 1x1 layers gain biases
  at ``fewer_norms`` and the depthwise conv at ``layer_norm`` (LayerNorm normalizes over channels,
  so it does not absorb a per-channel bias).
* The patchify stem is a conv + norm (Swin's patch embedding, ConvNeXt's stem): no activation.
* Layer scale (``gamma``, initial value 1e-6) is part of the paper's training recipe, not a step of
  Figure 2. The roadmap adds it at the last step, ``separate_downsampling``, which is then
  ConvNeXt-T parameter for parameter; it adds no multiply-adds counted here (one multiply per
  activation).
* From ``fewer_norms`` on, stride-1 blocks are :class:`convnext_fast.models.ConvNeXtBlock` (with a
  BatchNorm in place of its LayerNorm at ``fewer_norms``, without layer scale before the last
  step), so the package's fused ops run them.

Small inputs (CIFAR, 32x32): the stem's downsampling is reduced by the same factor for every
step. ``stem_stride`` (default: 4 for inputs of 128 pixels or more, else 1) is the stem's total
stride: 4 is the paper's (ResNet: 7x7 stride-2 conv + stride-2 max pool; patchify: 4x4 stride 4);
2 drops the max pool / uses 2x2 patches; 1 makes the 7x7 conv stride 1 without max pool / uses 1x1
patches. The stages then see 32x32 .. 4x4 maps at a 32x32 input, the layout of the usual CIFAR
ResNets, and every step keeps the same resolution per stage.

Multiply-adds: :func:`count_macs` counts them on meta tensors under the ``reference`` backend
(PyTorch's FLOP counter cannot see the package's custom ops, and counts 2 FLOPs per multiply-add);
``python -m convnext_fast.roadmap`` prints the table against the paper's FLOPs column.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .backend import use_backend
from .fused_elementwise import drop_path_scale
from .layers import DepthwiseConv2d, LayerNorm2d
from .models import ConvNeXt, ConvNeXtBlock, _stage_drop_path_rates

__all__ = [
    "KERNEL_SIZES", "PAPER_STEPS", "RoadmapBlock", "RoadmapNet", "Step", "count_macs", "default_stem_stride",
    "fewer_activations", "fewer_norms", "gelu", "get_step",
    "inverted_bottleneck", "larger_kernel", "layer_norm", "move_up_dwconv", "patchify_stem", "resnet50",
    "separate_downsampling", "stage_ratio", "steps", "wider", "depthwise_conv",
]

KERNEL_SIZES = (3, 5, 7, 9, 11)


def default_stem_stride(img_size: int) -> int:
    """The stem's total stride for an input of ``img_size`` pixels: 4 (the paper's) from 128 up, else 1."""
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    return 4 if img_size >= 128 else 1


def _stem_stride(img_size: int, stem_stride: Optional[int]) -> int:
    s = default_stem_stride(img_size) if stem_stride is None else stem_stride
    if s not in (1, 2, 4):
        raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride!r}")
    return s


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    return LayerNorm2d(channels, eps=1e-6)


def _act(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.GELU()


def _spatial_conv(cin: int, cout: int, k: int, stride: int, depthwise: bool, bias: bool) -> nn.Module:
    """The block's KxK conv: dense, or depthwise (the package's module at stride 1)."""
    if depthwise and stride == 1:
        return DepthwiseConv2d(cin, k, bias=bias)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=cin if depthwise else 1, bias=bias)


def _maybe(module: Optional[nn.Module]) -> nn.Module:
    return nn.Identity() if module is None else module


@dataclass(frozen=True)
class _Cfg:
    """One step's design: what every constructor below varies."""

    depths: Sequence[int] = (3, 4, 6, 3)
    widths: Sequence[int] = (64, 128, 256, 512)  # bottleneck widths (the depthwise width until "inverted")
    stem: str = "resnet"  # "resnet" or "patchify"
    block: str = "bottleneck"  # "bottleneck", "inverted", "moved_up"
    depthwise: bool = False
    kernel_size: int = 3
    act: str = "relu"
    all_acts: bool = True
    all_norms: bool = True
    norm: str = "bn"


class _Shortcut(nn.Sequential):
    """ResNet's projection shortcut: 1x1 conv (stride s) + norm."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__(nn.Conv2d(cin, cout, 1, stride=stride, bias=norm != "bn"), _norm(norm, cout))


class RoadmapBlock(nn.Module):
    """The residual block of the steps before ``separate_downsampling`` (and their stride-2 blocks).

    Three layouts, each ``conv -> [norm] -> [act]`` per layer, ``+ shortcut``, ``[act]``:

    * ``bottleneck`` (ResNet): 1x1 in->w, KxK w->w (stride s; depthwise or dense), 1x1 w->out;
    * ``inverted``: 1x1 in->4out, depthwise KxK on 4out (stride s), 1x1 4out->out;
    * ``moved_up``: depthwise KxK on in (stride s), 1x1 in->4out, 1x1 4out->out.

    With ``all_norms=False`` only the first layer keeps its norm; with ``all_acts=False`` only the
    second layer keeps its activation (between the two 1x1 layers of ``moved_up``) and there is
    none after the residual add.

    Args:
        cin, cout: channels in and out.
        width: the bottleneck width (``bottleneck`` only).
        stride: 1, or 2 in a stage's first block.
        cfg: the step's design.
        drop_path: stochastic-depth probability of the residual branch.

    Shape:
        (N, cin, H, W) -> (N, cout, H/stride, W/stride).
    """

    def __init__(self, cin: int, cout: int, width: int, stride: int, cfg: _Cfg, drop_path: float = 0.0) -> None:
        super().__init__()
        k, bn = cfg.kernel_size, cfg.norm == "bn"
        if cfg.block == "bottleneck":
            chans = [(cin, width, 1, 1, False), (width, width, k, stride, cfg.depthwise), (width, cout, 1, 1, False)]
        elif cfg.block == "inverted":
            chans = [(cin, 4 * cout, 1, 1, False), (4 * cout, 4 * cout, k, stride, True), (4 * cout, cout, 1, 1, False)]
        else:
            chans = [(cin, cin, k, stride, True), (cin, 4 * cout, 1, 1, False), (4 * cout, cout, 1, 1, False)]
        layers = []
        for i, (a, b, kk, s, dw) in enumerate(chans):
            has_norm = cfg.all_norms or i == 0
            has_act = i < 2 and (cfg.all_acts or i == 1)
            layers.append(nn.Sequential(
                _spatial_conv(a, b, kk, s, dw, bias=not (has_norm and bn)) if kk > 1 else
                nn.Conv2d(a, b, 1, bias=not (has_norm and bn)),
                _maybe(_norm(cfg.norm, b) if has_norm else None),
                _maybe(_act(cfg.act) if has_act else None)))
        self.conv1, self.conv2, self.conv3 = layers
        self.shortcut = _Shortcut(cin, cout, stride, cfg.norm) if stride != 1 or cin != cout else nn.Identity()
        self.act = _act(cfg.act) if cfg.all_acts else nn.Identity()
        self.drop_path = float(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        scale = drop_path_scale(y, self.drop_path, self.training)
        if scale is not None:
            y = y * scale
        return self.act(self.shortcut(x) + y)


def _convnext_style_block(dim: int, cfg: _Cfg, drop_path: float) -> nn.Module:
    """A stride-1 block of ``fewer_norms`` / ``layer_norm``: :class:`ConvNeXtBlock` without layer
    scale (with a bias-free depthwise conv and a BatchNorm at ``fewer_norms``)."""
    block = ConvNeXtBlock(dim, kernel_size=cfg.kernel_size, ls_init_value=None, drop_path=drop_path)
    if cfg.norm == "bn":
        block.conv_dw = DepthwiseConv2d(dim, cfg.kernel_size, bias=False)
        block.norm = nn.BatchNorm2d(dim)
    return block


class RoadmapNet(nn.Module):
    """The network of one step before ``separate_downsampling``: stem, four stages of residual
    blocks (the first block of stages 2-4 downsamples), global average pooling, Linear classifier.

    Module names: ``stem``, ``stages.i.j`` (blocks), ``fc``.

    Shape:
        (N, 3, H, W) -> (N, num_classes).
    """

    def __init__(self, cfg: _Cfg, num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        s = _stem_stride(img_size, stem_stride)
        self.cfg, self.stem_stride = cfg, s
        widths = list(cfg.widths)
        stem_out = widths[0]
        if cfg.stem == "resnet":
            # Each factor of 2 the stem gives up comes off the max pool first, then the conv's stride.
            stem = [nn.Conv2d(3, stem_out, 7, stride=2 if s >= 2 else 1, padding=3, bias=False),
                    _norm(cfg.norm, stem_out), _act(cfg.act)]
            if s == 4:
                stem.append(nn.MaxPool2d(3, stride=2, padding=1))
            self.stem = nn.Sequential(*stem)
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_out, s, stride=s, bias=cfg.norm != "bn"),
                                      _norm(cfg.norm, stem_out))
        outs = [4 * w for w in widths] if cfg.block == "bottleneck" else widths
        rates = _stage_drop_path_rates(drop_path_rate, cfg.depths)
        stages, cin = [], stem_out
        for i, (depth, w, cout) in enumerate(zip(cfg.depths, widths, outs)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                if stride == 1 and cin == cout and not cfg.all_norms:
                    blocks.append(_convnext_style_block(cout, cfg, rates[i][j]))
                else:
                    blocks.append(RoadmapBlock(cin, cout, w, stride, cfg, rates[i][j]))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages: (N, 3, H, W) -> (N, C, H / (8 stem_stride), W / (8 stem_stride))."""
        x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


# ------------------------------------------------------------------------------------------------
# One constructor per step
# ------------------------------------------------------------------------------------------------

_RESNET = _Cfg()
_STAGE_RATIO = _Cfg(depths=(3, 3, 9, 3))
_PATCHIFY = _Cfg(depths=(3, 3, 9, 3), stem="patchify")
_DEPTHWISE = _Cfg(depths=(3, 3, 9, 3), stem="patchify", depthwise=True)
_WIDER = _Cfg(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), stem="patchify", depthwise=True)
_INVERTED = _Cfg(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), stem="patchify", depthwise=True, block="inverted")
_MOVED_UP = _Cfg(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), stem="patchify", depthwise=True, block="moved_up")


def _check_k(kernel_size: int) -> int:
    if kernel_size not in KERNEL_SIZES:
        raise ValueError(f"kernel_size must be one of {KERNEL_SIZES} (the paper's sweep), got {kernel_size!r}")
    return kernel_size


def _net(cfg: _Cfg, num_classes: int, img_size: int, stem_stride: Optional[int], drop_path_rate: float) -> RoadmapNet:
    return RoadmapNet(cfg, num_classes=num_classes, img_size=img_size, stem_stride=stem_stride,
                      drop_path_rate=drop_path_rate)


def resnet50(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
             drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 0: ResNet-50 (torchvision's layout; the paper trains it with its recipe to 78.8%).

    Args (every constructor):
        num_classes: classifier outputs.
        img_size: input side in pixels; chooses the default ``stem_stride`` (module docstring).
        stem_stride: the stem's total stride, 4, 2 or 1 (None: from ``img_size``).
        drop_path_rate: stochastic depth rising linearly over the blocks to this value.
    """
    return _net(_RESNET, num_classes, img_size, stem_stride, drop_path_rate)


def stage_ratio(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 1: blocks per stage (3, 4, 6, 3) -> (3, 3, 9, 3), Swin-T's 1:1:3:1."""
    return _net(_STAGE_RATIO, num_classes, img_size, stem_stride, drop_path_rate)


def patchify_stem(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                  drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 2: the stem cell becomes a patchify layer (4x4 conv, stride 4, + norm)."""
    return _net(_PATCHIFY, num_classes, img_size, stem_stride, drop_path_rate)


def depthwise_conv(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                   drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 3 (ResNeXt-ify): the bottleneck's 3x3 conv becomes depthwise."""
    return _net(_DEPTHWISE, num_classes, img_size, stem_stride, drop_path_rate)


def wider(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
          drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 4 (ResNeXt-ify): width 64 -> 96 channels (Swin-T's), every stage widened alike."""
    return _net(_WIDER, num_classes, img_size, stem_stride, drop_path_rate)


def inverted_bottleneck(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                        drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 5: inverted bottleneck, 1x1 C -> 4C, depthwise 3x3 on 4C, 1x1 4C -> C."""
    return _net(_INVERTED, num_classes, img_size, stem_stride, drop_path_rate)


def move_up_dwconv(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                   drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 6: the depthwise conv moves to the top of the block (still 3x3): ``larger_kernel(3)``."""
    return _net(_MOVED_UP, num_classes, img_size, stem_stride, drop_path_rate)


def larger_kernel(kernel_size: int = 7, num_classes: int = 1000, img_size: int = 224,
                  stem_stride: Optional[int] = None, drop_path_rate: float = 0.0) -> RoadmapNet:
    """Step 7: depthwise kernel size 3, 5, 7, 9 or 11 (the paper keeps 7 from here on)."""
    return _net(_Cfg(**{**_MOVED_UP.__dict__, "kernel_size": _check_k(kernel_size)}), num_classes, img_size,
                stem_stride, drop_path_rate)


def _micro(kernel_size: int, **changes) -> _Cfg:
    return _Cfg(**{**_MOVED_UP.__dict__, "kernel_size": _check_k(kernel_size), **changes})


def gelu(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
         drop_path_rate: float = 0.0, kernel_size: int = 7) -> RoadmapNet:
    """Step 8: every ReLU becomes a GELU (exact erf form)."""
    return _net(_micro(kernel_size, act="gelu"), num_classes, img_size, stem_stride, drop_path_rate)


def fewer_activations(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                      drop_path_rate: float = 0.0, kernel_size: int = 7) -> RoadmapNet:
    """Step 9: one GELU per block, between the two 1x1 layers, none after the residual add."""
    return _net(_micro(kernel_size, act="gelu", all_acts=False), num_classes, img_size, stem_stride, drop_path_rate)


def fewer_norms(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                drop_path_rate: float = 0.0, kernel_size: int = 7) -> RoadmapNet:
    """Step 10: one BatchNorm per block, after the depthwise conv."""
    return _net(_micro(kernel_size, act="gelu", all_acts=False, all_norms=False), num_classes, img_size,
                stem_stride, drop_path_rate)


def layer_norm(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
               drop_path_rate: float = 0.0, kernel_size: int = 7) -> RoadmapNet:
    """Step 11: every BatchNorm becomes a LayerNorm over channels (the package's ``LayerNorm2d``)."""
    return _net(_micro(kernel_size, act="gelu", all_acts=False, all_norms=False, norm="ln"), num_classes, img_size,
                stem_stride, drop_path_rate)


def separate_downsampling(num_classes: int = 1000, img_size: int = 224, stem_stride: Optional[int] = None,
                          drop_path_rate: float = 0.0, kernel_size: int = 7) -> ConvNeXt:
    """Step 12: separate downsampling layers (LayerNorm + 2x2 stride-2 conv between stages, a
    LayerNorm after the stem and after pooling) and layer scale: ConvNeXt-T.

    With the defaults the model is :func:`convnext_fast.convnext_tiny`'s architecture: same
    parameters, timm's key names, so the state dicts load into each other.
    """
    s = _stem_stride(img_size, stem_stride)
    return ConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), kernel_size=_check_k(kernel_size),
                    num_classes=num_classes, drop_path_rate=drop_path_rate, patch_size=s, ls_init_value=1e-6)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One bar of the paper's Figure 2.

    Attributes:
        name: short identifier (``"k7"`` for the kernel-size steps).
        title: the paper's label.
        paper_top1: ImageNet-1K top-1 (%) in Figure 2.
        paper_gmacs: the paper's FLOPs column (multiply-adds, G, 224x224, 1000 classes).
        build: ``build(num_classes=..., img_size=..., stem_stride=..., drop_path_rate=...)``.
    """

    name: str
    title: str
    paper_top1: float
    paper_gmacs: float
    build: Callable[..., nn.Module]


def _k(kernel_size: int) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        return larger_kernel(kernel_size, **kwargs)
    build.__name__ = f"larger_kernel_{kernel_size}"
    return build


#: Figure 2 of the paper, in order (the kernel-size sweep as four entries after ``move_up_dwconv``,
#: which is the 3x3 case).
PAPER_STEPS: List[Step] = [
    Step("resnet50", "ResNet-50", 78.8, 4.1, resnet50),
    Step("stage_ratio", "stage ratio", 79.4, 4.5, stage_ratio),
    Step("patchify_stem", "\"patchify\" stem", 79.5, 4.4, patchify_stem),
    Step("depthwise_conv", "depth conv", 78.3, 2.4, depthwise_conv),
    Step("wider", "width \u2191", 80.5, 5.3, wider),
    Step("inverted_bottleneck", "inverting dims", 80.6, 4.6, inverted_bottleneck),
    Step("move_up_dwconv", "move \u2191 d. conv", 79.9, 4.1, move_up_dwconv),
    Step("k5", "kernel sz. \u2192 5", 80.4, 4.1, _k(5)),
    Step("k7", "kernel sz. \u2192 7", 80.6, 4.2, _k(7)),
    Step("k9", "kernel sz. \u2192 9", 80.6, 4.2, _k(9)),
    Step("k11", "kernel sz. \u2192 11", 80.6, 4.3, _k(11)),
    Step("gelu", "ReLU \u2192 GELU", 80.6, 4.2, gelu),
    Step("fewer_activations", "fewer activations", 81.3, 4.2, fewer_activations),
    Step("fewer_norms", "fewer norms", 81.4, 4.2, fewer_norms),
    Step("layer_norm", "BN \u2192 LN", 81.5, 4.2, layer_norm),
    Step("separate_downsampling", "sep. d.s. conv", 82.0, 4.5, separate_downsampling),
]


def steps() -> List[Step]:
    """The steps of Figure 2 in order (a copy of :data:`PAPER_STEPS`)."""
    return list(PAPER_STEPS)


def get_step(name: str) -> Step:
    """The step called ``name`` (:attr:`Step.name`); ValueError listing the names otherwise."""
    for s in PAPER_STEPS:
        if s.name == name:
            return s
    raise ValueError(f"unknown roadmap step {name!r}; choose one of {', '.join(s.name for s in PAPER_STEPS)}")


def count_macs(model: Union[nn.Module, Callable[..., nn.Module]], img_size: int = 224, num_classes: int = 1000,
               stem_stride: Optional[int] = None, batch: int = 1) -> int:
    """Multiply-adds of one forward pass on a ``batch`` x 3 x img x img input.

    Args:
        model: a model, which is moved to the meta device (its weights are gone afterwards), or a
            step's constructor, called with ``num_classes``, ``img_size`` and ``stem_stride``.

    The model runs on meta tensors (no memory, no compute) under the ``reference`` backend, so
    PyTorch's FLOP counter sees plain convolutions and matmuls; its count is halved (it counts a
    multiply-add as 2 FLOPs). Norms, activations and pooling are not counted, as in the paper's
    column.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(model, nn.Module):
        model = model(num_classes=num_classes, img_size=img_size, stem_stride=stem_stride)
    model = model.to("meta").eval()
    x = torch.empty(batch, 3, img_size, img_size, device="meta")
    counter = FlopCounterMode(display=False)
    with use_backend("reference"), counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def _main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convnext_fast.roadmap",
                                 description="Multiply-adds of every step of the paper's Figure 2.")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--stem-stride", type=int, default=None, choices=(1, 2, 4))
    args = ap.parse_args(argv)
    print(f"{'step':24s} {'GMACs':>7s} {'paper':>7s} {'params (M)':>11s} {'paper top-1':>12s}")
    for s in PAPER_STEPS:
        model = s.build(num_classes=args.num_classes, img_size=args.img_size, stem_stride=args.stem_stride)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        macs = count_macs(model, args.img_size, args.num_classes) / 1e9
        paper = f"{s.paper_gmacs:.1f}" if (args.img_size, args.num_classes) == (224, 1000) else "-"
        print(f"{s.title:24s} {macs:7.2f} {paper:>7s} {params:11.1f} {s.paper_top1:12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
