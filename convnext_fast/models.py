"""The ConvNeXt family on the fused ops: :class:`ConvNeXtBlock`, :class:`ConvNeXt` and factories.

* ConvNeXt: Liu et al., "A ConvNet for the 2020s", CVPR 2022 (facebookresearch/ConvNeXt).
* ConvNeXt V2: Woo et al., "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
  Autoencoders", CVPR 2023 (facebookresearch/ConvNeXt-V2): Global Response Normalization (GRN)
  in the MLP and no layer scale.

Module and parameter names are those of timm's ``ConvNeXt`` (``stem``, ``stages.i.downsample``,
``stages.i.blocks.j.conv_dw/norm/mlp.fc1/mlp.fc2/mlp.grn/gamma``, ``norm_pre``, ``head.norm``,
``head.fc``), so a timm state dict loads as is and :func:`convnext_fast.weights.load_weights` maps
the official and torchvision layouts onto it. With ``conv_mlp=True`` (timm's small models) the MLP
weights are stored as 1x1 convolutions, exactly as timm stores them; the computation is the same
either way (a Linear on the channels-last view).

The network runs channels_last throughout: the block's first half is the fused
``dwconv_layer_norm`` op, its MLP runs as ``nn.Linear`` on the free NHWC view
``x.permute(0, 2, 3, 1)``, and bias + GELU and layer scale + residual each take one pass
(``convnext_fast.fused_elementwise``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .functional import dwconv_layer_norm
from .fused_elementwise import drop_path_scale, global_response_norm, layer_scale_residual, linear_gelu
from .layers import DepthwiseConv2d, LayerNorm2d

__all__ = [
    "GlobalResponseNorm",
    "ConvNeXtMlp",
    "ConvNeXtBlock",
    "ConvNeXtStage",
    "ClassifierHead",
    "ConvNeXt",
    "MODEL_CONFIGS",
    "create_model",
    "list_models",
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "convnext_xlarge",
    "convnextv2_atto",
    "convnextv2_femto",
    "convnextv2_pico",
    "convnextv2_nano",
    "convnextv2_tiny",
    "convnextv2_base",
    "convnextv2_large",
    "convnextv2_huge",
    "convnextv2_small",
]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the fused ops run in: autocast's dtype when autocast is on for x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


# ----------------------------------------------------------------------------------------------
# Block parts
# ----------------------------------------------------------------------------------------------


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2 Global Response Normalization on an NHWC tensor (timm's ``GlobalResponseNorm``).

    ``y = x + bias + weight * x * n`` with ``n = ||x||_{H,W} / (mean_C ||x||_{H,W} + eps)``.
    Parameters are named ``weight``/``bias`` (timm); the official code calls them ``gamma``/``beta``
    with shape (1, 1, 1, C), which :func:`~convnext_fast.weights.load_weights` reshapes.

    Args:
        dim: number of channels C.
        eps: added to the channel mean of the spatial norms.

    Shape:
        (N, H, W, C) -> (N, H, W, C).
    """

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return global_response_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ConvNeXtMlp(nn.Module):
    """The block's pointwise MLP: ``fc1`` -> GELU (exact) -> [GRN] -> ``fc2`` on an NHWC tensor.

    ``fc1``/``fc2`` are ``nn.Linear`` or, with ``conv_mlp=True``, 1x1 ``nn.Conv2d`` (timm's storage
    for its small models); either way they run as a Linear on the channels-last view, using the
    conv weight's free ``(C_out, C_in)`` view.

    Args:
        dim: input and output channels C.
        hidden: hidden channels (4C in ConvNeXt).
        use_grn: insert ConvNeXt V2's Global Response Normalization after the GELU.
        conv_mlp: store fc1/fc2 as 1x1 convolutions.

    Shape:
        (N, H, W, C) -> (N, H, W, C).
    """

    def __init__(self, dim: int, hidden: int, use_grn: bool = False, conv_mlp: bool = False,
                 eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        # Registration order fc1, grn, fc2 is timm's: same parameter order, so optimizer state
        # dicts carry over too.
        linear = (lambda i, o: nn.Conv2d(i, o, 1, **dd)) if conv_mlp else (lambda i, o: nn.Linear(i, o, **dd))
        self.fc1 = linear(dim, hidden)
        self.grn = GlobalResponseNorm(hidden, eps=eps, **dd) if use_grn else None
        self.fc2 = linear(hidden, dim)

    @staticmethod
    def _weight(layer: nn.Module) -> Tensor:
        w = layer.weight
        return w.flatten(1) if w.dim() == 4 else w

    def forward(self, x: Tensor) -> Tensor:
        x = linear_gelu(x, self._weight(self.fc1), self.fc1.bias)
        if self.grn is not None:
            x = self.grn(x)
        return F.linear(x, self._weight(self.fc2), self.fc2.bias)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: ``x + drop_path(gamma * fc2(GRN(GELU(fc1(LN(dwconv(x)))))))``.

    The depthwise conv and the channels-first LayerNorm run as one fused op
    (:func:`convnext_fast.dwconv_layer_norm`, parameters kept in ``conv_dw`` (a
    :class:`~convnext_fast.DepthwiseConv2d`) and ``norm`` (a :class:`~convnext_fast.LayerNorm2d`),
    timm's names); the MLP runs as Linear layers on the free NHWC view of the channels_last
    activation; layer scale, stochastic depth and the residual add are one pass.

    If ``conv_dw``/``norm`` are replaced by plain PyTorch modules (what
    :func:`convnext_fast.convert.to_reference` does for export), the block calls them instead of
    the fused op.

    Under ``torch.autocast`` the fused op runs in the autocast dtype (its parameters are cast to
    it); the residual add follows PyTorch's type promotion, as timm's block does.

    Args:
        dim: channels C.
        kernel_size: odd depthwise kernel size.
        mlp_ratio: hidden width of the MLP as a multiple of C.
        ls_init_value: initial layer-scale value; None for no layer scale (ConvNeXt V2).
        drop_path: stochastic-depth probability (training only).
        use_grn: ConvNeXt V2 Global Response Normalization in the MLP.
        conv_mlp: store the MLP as 1x1 convolutions (timm's small models; same computation).
        eps: LayerNorm epsilon.

    Shape:
        (N, C, H, W) -> (N, C, H, W), channels_last (best given channels_last input).
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0,
                 ls_init_value: Optional[float] = 1e-6, drop_path: float = 0.0, use_grn: bool = False,
                 conv_mlp: bool = False, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"ConvNeXtBlock expects a positive channel count dim, got {dim!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"ConvNeXtBlock expects 0 <= drop_path < 1, got {drop_path}")
        dd = {"device": device, "dtype": dtype}
        self.conv_dw = DepthwiseConv2d(dim, kernel_size, bias=True, **dd)
        self.norm = LayerNorm2d(dim, eps=eps, **dd)
        self.mlp = ConvNeXtMlp(dim, int(mlp_ratio * dim), use_grn=use_grn, conv_mlp=conv_mlp, eps=eps, **dd)
        if ls_init_value is not None:
            self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd))
        else:
            self.gamma = None
        self.drop_path = float(drop_path)

    def _token_mixer(self, x: Tensor) -> Tensor:
        conv, norm = self.conv_dw, self.norm
        if isinstance(conv, DepthwiseConv2d) and isinstance(norm, LayerNorm2d):
            dt = _compute_dtype(x)
            return dwconv_layer_norm(x.to(dt), conv.weight.to(dt), _cast(conv.bias, dt), norm.weight.to(dt),
                                     norm.bias.to(dt), norm.eps)
        return norm(conv(x))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        y = self._token_mixer(x).permute(0, 2, 3, 1)
        y = self.mlp(y)
        scale = drop_path_scale(y, self.drop_path, self.training)
        return layer_scale_residual(y, self.gamma, shortcut.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}" if self.drop_path else ""


class ConvNeXtStage(nn.Module):
    """One resolution stage: optional LayerNorm2d + 2x2 stride-2 conv downsampling, then blocks.

    Args:
        in_dim, out_dim: channels in and out.
        depth: number of blocks.
        downsample: whether to downsample (every stage but the first).
        drop_path_rates: per-block stochastic-depth probabilities (``depth`` values).
        block_kwargs: passed to each :class:`ConvNeXtBlock`.

    Shape:
        (N, in_dim, H, W) -> (N, out_dim, H/2, W/2) (or H, W without downsampling).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool,
                 drop_path_rates: Sequence[float], eps: float = 1e-6, device=None, dtype=None,
                 **block_kwargs: Any) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if downsample:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=eps, **dd),
                nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2, **dd),
            )
        elif in_dim != out_dim:
            raise ValueError(f"ConvNeXtStage without downsampling needs in_dim == out_dim, got {in_dim}, {out_dim}")
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_dim, drop_path=drop_path_rates[i], eps=eps, **dd, **block_kwargs) for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pool -> LayerNorm (unless ``norm_first``) -> dropout -> Linear.

    ``norm``/``fc`` match timm's ``head.norm``/``head.fc``. The LayerNorm runs on the pooled
    (N, C) vector, so under autocast it computes in float32 as ``F.layer_norm`` does.

    Args:
        dim: feature channels C.
        num_classes: output classes; 0 for no classifier (``forward`` returns pooled features).
        norm: apply the LayerNorm after pooling (False when the model normalizes before pooling).
        drop_rate: dropout before the classifier.
        eps: LayerNorm epsilon.

    Shape:
        (N, C, H, W) -> (N, num_classes) (or (N, C) with ``pre_logits=True`` or ``num_classes=0``).
    """

    def __init__(self, dim: int, num_classes: int, norm: bool = True, drop_rate: float = 0.0,
                 eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(dim, eps=eps, **dd) if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x.mean((2, 3)))
        if pre_logits:
            return x
        return self.fc(self.drop(x))


def _stage_drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Linearly increasing stochastic depth over all blocks (official ConvNeXt / timm schedule)."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    out, i = [], 0
    for d in depths:
        out.append(rates[i:i + d])
        i += d
    return out


class ConvNeXt(nn.Module):
    """ConvNeXt (V1, or V2 with ``use_grn=True, ls_init_value=None``), channels_last inside.

    Patchify stem (4x4 conv, stride 4, + LayerNorm2d), four stages of :class:`ConvNeXtBlock`
    (each but the first preceded by LayerNorm2d + 2x2 stride-2 conv), global average pooling +
    LayerNorm + Linear head. Parameter names follow timm, so ``timm`` checkpoints load directly.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        kernel_size: depthwise kernel size, one int or one per stage.
        in_chans: input image channels.
        num_classes: classifier outputs (0: no classifier).
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        drop_rate: dropout before the classifier.
        ls_init_value: layer-scale initial value, None for none (V2).
        use_grn: ConvNeXt V2 Global Response Normalization.
        conv_mlp: store block MLPs as 1x1 convs (timm's small models; same outputs).
        head_norm_first: LayerNorm2d before pooling (``norm_pre``) instead of after (timm ``_hnf``).
        norm_eps: epsilon of every LayerNorm.
        mlp_ratio: MLP width multiple.
        patch_size: stem patch size.
        head_init_scale: scale of the classifier's initial weights and bias.

    Shape:
        (N, in_chans, H, W) -> (N, num_classes).
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 kernel_size: Union[int, Sequence[int]] = 7, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, ls_init_value: Optional[float] = 1e-6,
                 use_grn: bool = False, conv_mlp: bool = False, head_norm_first: bool = False,
                 norm_eps: float = 1e-6, mlp_ratio: float = 4.0, patch_size: int = 4,
                 head_init_scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        depths, dims = tuple(depths), tuple(dims)
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"ConvNeXt expects as many depths as dims, got depths={depths}, dims={dims}")
        kernel_sizes = (kernel_size,) * len(depths) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel_sizes) != len(depths):
            raise ValueError(f"ConvNeXt expects one kernel_size or one per stage ({len(depths)}), got {kernel_size}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, **dd),
            LayerNorm2d(dims[0], eps=norm_eps, **dd),
        )
        rates = _stage_drop_path_rates(drop_path_rate, depths)
        stages, prev, self.feature_info = [], dims[0], []
        reduction = patch_size
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            if i > 0:
                reduction *= 2
            stages.append(ConvNeXtStage(prev, dim, depth, downsample=i > 0, drop_path_rates=rates[i], eps=norm_eps,
                                        kernel_size=kernel_sizes[i], mlp_ratio=mlp_ratio, ls_init_value=ls_init_value,
                                        use_grn=use_grn, conv_mlp=conv_mlp, **dd))
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
            prev = dim
        self.stages = nn.Sequential(*stages)
        self.norm_pre = LayerNorm2d(dims[-1], eps=norm_eps, **dd) if head_norm_first else nn.Identity()
        self.head = ClassifierHead(dims[-1], num_classes, norm=not head_norm_first, drop_rate=drop_rate,
                                   eps=norm_eps, **dd)
        self._init_weights(head_init_scale)

    @torch.no_grad()
    def _init_weights(self, head_init_scale: float) -> None:
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head.fc, nn.Linear):
            self.head.fc.weight.mul_(head_init_scale)
            self.head.fc.bias.mul_(head_init_scale)

    def set_grad_checkpointing(self, enable: bool = True, stages: Optional[Sequence[int]] = None) -> None:
        """Recompute block activations in the backward pass instead of storing them.

        Args:
            enable: turn checkpointing on or off.
            stages: indices of the stages to change (default: all). Each block of a checkpointed
                stage runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``.
        """
        for i, stage in enumerate(self.stages):
            if stages is None or i in stages:
                stage.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem, stages and (``head_norm_first``) the pre-head norm.

        Shape:
            (N, in_chans, H, W) -> (N, dims[-1], H/32, W/32), channels_last.
        """
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        x = self.stages(x)
        return self.norm_pre(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, norm and classify the output of :meth:`forward_features`.

        Returns:
            (N, num_classes) logits, or (N, dims[-1]) pooled features with ``pre_logits=True``.
        """
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False,
                              intermediates_only: bool = False) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs for detection/segmentation backbones (timm's ``forward_intermediates``).

        Args:
            x: (N, in_chans, H, W) images.
            indices: stages to return: None for all, an int n for the last n, or a list of indices.
            norm: apply ``norm_pre`` to the last stage's output if it is taken.
            stop_early: skip the stages after the last one requested.
            intermediates_only: return only the list.

        Returns:
            The list of (N, dims[i], H/2^(i+2), W/2^(i+2)) stage outputs (channels_last), or
            ``(final_features, list)``.
        """
        n = len(self.stages)
        if indices is None:
            take = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices} asks for the last {indices} of {n} stages")
            take = list(range(n - indices, n))
        else:
            take = [i + n if i < 0 else i for i in indices]
            if any(not 0 <= i < n for i in take):
                raise ValueError(f"stage indices must lie in [-{n}, {n}), got {list(indices)}")
        last = max(take)
        out = []
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        stages = self.stages[:last + 1] if (stop_early or intermediates_only) else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                out.append(self.norm_pre(x) if norm and i == n - 1 else x)
        if intermediates_only:
            return out
        if len(stages) == n:
            x = self.norm_pre(x)
        return x, out


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------

_V1_SMALL = dict(conv_mlp=True)
_V2 = dict(use_grn=True, ls_init_value=None)

#: Architecture of each factory: the depths, dims and options of its timm namesake.
MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {
    "convnext_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_V1_SMALL),
    "convnext_femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), **_V1_SMALL),
    "convnext_pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), **_V1_SMALL),
    "convnext_nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), **_V1_SMALL),
    "convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "convnext_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    "convnext_xlarge": dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
    "convnextv2_atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True, **_V2),
    "convnextv2_femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True, **_V2),
    "convnextv2_pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True, **_V2),
    "convnextv2_nano": dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True, **_V2),
    "convnextv2_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), **_V2),
    "convnextv2_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_V2),
    "convnextv2_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_V2),
    "convnextv2_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **_V2),
    "convnextv2_huge": dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816), **_V2),
}

PretrainedSource = Union[bool, None, str, "os.PathLike[str]", Mapping[str, Any]]


def _create(name: str, pretrained: PretrainedSource, kwargs: Dict[str, Any]) -> ConvNeXt:
    from .weights import load_weights, resolve_pretrained

    source = resolve_pretrained(name, pretrained)
    args = {**MODEL_CONFIGS[name], **kwargs}
    if source is None:
        return ConvNeXt(**args)
    # Build without memory or initialization, then take the checkpoint's tensors.
    device = args.pop("device", None)
    model = ConvNeXt(**args, device="meta")
    load_weights(model, source, assign=True)
    return model if device is None else model.to(device)


def create_model(name: str, pretrained: PretrainedSource = None, **kwargs: Any) -> ConvNeXt:
    """Build the factory ``name`` (see :func:`list_models`), e.g. ``create_model("convnext_tiny")``."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    return _create(name, pretrained, kwargs)


def list_models() -> List[str]:
    """Names of the model factories."""
    return list(MODEL_CONFIGS)


def _make_factory(name: str) -> Callable[..., ConvNeXt]:
    cfg = MODEL_CONFIGS[name]
    version = "ConvNeXt V2 (Woo et al. 2023)" if cfg.get("use_grn") else "ConvNeXt (Liu et al. 2022)"

    def factory(pretrained: PretrainedSource = None, **kwargs: Any) -> ConvNeXt:
        return _create(name, pretrained, kwargs)

    factory.__name__ = factory.__qualname__ = name
    options = ", ".join(f"{k}={v}" for k, v in cfg.items())
    factory.__doc__ = f"""{name}: {version}, as timm's ``{name}`` ({options}).

    Args:
        pretrained: weights to load: a local ``.pth``/``.pt``/``.safetensors`` file or a state dict
            (official, timm or torchvision layout, optionally wrapped under ``model``/``state_dict``).
            Nothing is downloaded; a hub name raises an error explaining how to pass a file.
        **kwargs: :class:`ConvNeXt` arguments overriding the defaults (``num_classes``,
            ``drop_path_rate``, ``in_chans``, ...).

    Returns:
        :class:`ConvNeXt`.
    """
    return factory


convnext_atto = _make_factory("convnext_atto")
convnext_femto = _make_factory("convnext_femto")
convnext_pico = _make_factory("convnext_pico")
convnext_nano = _make_factory("convnext_nano")
convnext_tiny = _make_factory("convnext_tiny")
convnext_small = _make_factory("convnext_small")
convnext_base = _make_factory("convnext_base")
convnext_large = _make_factory("convnext_large")
convnext_xlarge = _make_factory("convnext_xlarge")
convnextv2_atto = _make_factory("convnextv2_atto")
convnextv2_femto = _make_factory("convnextv2_femto")
convnextv2_pico = _make_factory("convnextv2_pico")
convnextv2_nano = _make_factory("convnextv2_nano")
convnextv2_tiny = _make_factory("convnextv2_tiny")
convnextv2_small = _make_factory("convnextv2_small")
convnextv2_base = _make_factory("convnextv2_base")
convnextv2_large = _make_factory("convnextv2_large")
convnextv2_huge = _make_factory("convnextv2_huge")
