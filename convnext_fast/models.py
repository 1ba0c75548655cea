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

import fnmatch
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .backend import get_backend, has_kernel
from .dwconv_ln import dwconv_layer_norm
from .mlp import pointwise_mlp
from .fused_elementwise import (drop_path_scale, global_response_norm, layer_scale_residual, linear_gelu,
                                mlp_composite)
from .layers import DepthwiseConv2d, LayerNorm2d
from .layers import _as as _cast, _compute_dtype

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


def _channels_last(x: Tensor) -> Tensor:
    """x in channels_last memory order, the layout every kernel prefers. Under a torch.func transform
    (vmap of per-sample gradients) memory-format conversions are unsupported, and the ops run their
    layout-agnostic reference there anyway, so x is taken as it is."""
    if torch._C._functorch.maybe_current_level() is not None:
        return x
    return x.contiguous(memory_format=torch.channels_last)


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


def _mlp_composite(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                   fc2_bias: Optional[Tensor], *, gamma: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                   grn_weight: Optional[Tensor] = None, grn_bias: Optional[Tensor] = None,
                   drop_scale: Optional[Tensor] = None, grn_eps: float = 1e-6) -> Tensor:
    """:func:`~convnext_fast.pointwise_mlp`'s signature over PyTorch's composite."""
    return mlp_composite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gamma, shortcut, grn_weight, grn_bias,
                         drop_scale, grn_eps)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: ``x + drop_path(gamma * fc2(GRN(GELU(fc1(LN(dwconv(x)))))))``.

    Two fused ops: :func:`convnext_fast.dwconv_layer_norm` (parameters kept in ``conv_dw``, a
    :class:`~convnext_fast.DepthwiseConv2d`, and ``norm``, a :class:`~convnext_fast.LayerNorm2d`:
    timm's names) and :func:`convnext_fast.pointwise_mlp` (fc1, GELU, [GRN], fc2, layer scale,
    stochastic depth and the residual add; parameters in ``mlp.fc1`` / ``mlp.grn`` / ``mlp.fc2`` and
    ``gamma``).

    If ``conv_dw``/``norm`` are replaced by plain PyTorch modules (what
    :func:`convnext_fast.convert.to_reference` does for export), the block runs plain PyTorch ops.

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

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, mlp = self.conv_dw, self.norm, self.mlp
        if not (isinstance(conv, DepthwiseConv2d) and isinstance(norm, LayerNorm2d) and type(mlp) is ConvNeXtMlp):
            # Plain PyTorch modules (to_reference(), for export): plain PyTorch ops throughout.
            y = mlp(norm(conv(x)).permute(0, 2, 3, 1))
            scale = drop_path_scale(y, self.drop_path, self.training)
            return layer_scale_residual(y, self.gamma, x.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)
        dt = _compute_dtype(x)
        y = dwconv_layer_norm(_cast(x, dt), _cast(conv.weight, dt), _cast(conv.bias, dt), _cast(norm.weight, dt),
                              _cast(norm.bias, dt), norm.eps)
        fc1, fc2, grn, gamma = mlp.fc1, mlp.fc2, mlp.grn, self.gamma
        scale = drop_path_scale(y, self.drop_path, self.training)
        args = (y, _cast(fc1.weight, dt), _cast(fc1.bias, dt), _cast(fc2.weight, dt), _cast(fc2.bias, dt))
        grn_args = {} if grn is None else dict(grn_weight=_cast(grn.weight, dt), grn_bias=_cast(grn.bias, dt),
                                               grn_eps=grn.eps)
        # A backend asked for by name that has no MLP kernel (the compiled extension's is CPU-only)
        # still runs the model: its MLP half takes PyTorch's composite.
        mlp_op = pointwise_mlp if has_kernel("pointwise_mlp", get_backend()) else _mlp_composite
        if x.dtype == dt and (gamma is None or gamma.dtype == dt):
            # One dtype (no autocast, or parameters already in it): the residual add is the kernel's epilogue.
            return mlp_op(*args, gamma=gamma, shortcut=x, drop_scale=scale, **grn_args)
        # Autocast over float32 parameters: the residual add follows PyTorch's type promotion, as
        # timm's block does (a float32 gamma keeps the residual stream in float32).
        y = mlp_op(*args, **grn_args).permute(0, 2, 3, 1)
        return layer_scale_residual(y, gamma, x.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)

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


#: Global pooling types of :class:`ClassifierHead` (timm's names; ``""`` means no pooling).
_POOL_TYPES = ("avg", "max", "avgmax", "")


def _check_pool_type(pool_type: Any) -> str:
    if pool_type not in _POOL_TYPES:
        raise ValueError(f"global_pool={pool_type!r} is not supported; choose one of {_POOL_TYPES} "
                         f"('avg' average, 'max' maximum, 'avgmax' their mean, '' no pooling)")
    return pool_type


class ClassifierHead(nn.Module):
    """Global pool -> LayerNorm (unless ``norm_first``) -> dropout -> classifier (timm's head).

    ``norm``/``fc`` match timm's ``head.norm``/``head.fc``. The LayerNorm runs on the pooled
    (N, C) vector, so under autocast it computes in float32 as ``F.layer_norm`` does.

    With ``pool_type=""`` nothing is pooled: the LayerNorm and the classifier act at every position
    (on the free NHWC view) and the classifier is stored as a 1x1 ``nn.Conv2d``, as timm stores it,
    so state dicts stay interchangeable.

    Args:
        dim: feature channels C.
        num_classes: output classes; 0 for no classifier (``forward`` returns pooled features).
        norm: apply the LayerNorm after pooling (False when the model normalizes before pooling).
        drop_rate: dropout before the classifier.
        eps: LayerNorm epsilon.
        pool_type: ``"avg"`` (default), ``"max"``, ``"avgmax"`` (mean of the two) or ``""``.

    Shape:
        (N, C, H, W) -> (N, num_classes) (or (N, C) with ``pre_logits=True`` or ``num_classes=0``);
        with ``pool_type=""``, (N, num_classes, H, W) (or (N, C, H, W)), channels_last.
    """

    def __init__(self, dim: int, num_classes: int, norm: bool = True, drop_rate: float = 0.0,
                 eps: float = 1e-6, pool_type: str = "avg", device=None, dtype=None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.in_features = dim
        self.pool_type = _check_pool_type(pool_type)
        self.norm = nn.LayerNorm(dim, eps=eps, **dd) if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = self._classifier(num_classes, **dd)

    def _classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.pool_type:
            return nn.Linear(self.in_features, num_classes, device=device, dtype=dtype)
        return nn.Conv2d(self.in_features, num_classes, 1, device=device, dtype=dtype)

    def reset(self, num_classes: int, pool_type: Optional[str] = None, reset_other: bool = False,
              device=None, dtype=None) -> None:
        """A new classifier (PyTorch's default initialization) for ``num_classes`` (0: none).

        Args:
            num_classes: outputs of the new classifier.
            pool_type: new pooling type; None keeps the current one.
            reset_other: also drop the LayerNorm (timm's ``reset_other``).
            device, dtype: of the new classifier's parameters.
        """
        if pool_type is not None:
            self.pool_type = _check_pool_type(pool_type)
        if reset_other:
            self.norm = nn.Identity()
        self.fc = self._classifier(num_classes, device=device, dtype=dtype).train(self.training)

    def _pool(self, x: Tensor) -> Tensor:
        if self.pool_type == "avg":
            return x.mean((2, 3))
        if self.pool_type == "max":
            return x.amax((2, 3))
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if not self.pool_type:
            # Per position on the free NHWC view: the 1x1 conv classifier is a Linear over C.
            y = self.norm(x.permute(0, 2, 3, 1))
            if not pre_logits:
                y = self.drop(y)
                if isinstance(self.fc, nn.Conv2d):
                    y = F.linear(y, self.fc.weight.flatten(1), self.fc.bias)
            return y.permute(0, 3, 1, 2)
        x = self.norm(self._pool(x))
        if pre_logits:
            return x
        return self.fc(self.drop(x))

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


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

    The timm model API is there too: :meth:`get_classifier`, :meth:`reset_classifier`,
    :meth:`forward_features`, :meth:`forward_head`, :meth:`forward_intermediates`,
    :meth:`set_grad_checkpointing`, ``feature_info``, ``num_features`` and ``pretrained_cfg``
    (alias ``default_cfg``): the preprocessing of the weights the model was built for (timm's values
    for the factories and ``create_model`` names; generic ImageNet values for a model built
    directly), which ``timm.data.resolve_model_data_config(model)`` reads.

    Export: ``torch.export.export(model.eval(), (x,))`` is the supported path; it captures the fused
    ops as registered custom ops. For exporters or runtimes that need plain PyTorch operators
    (ONNX, TensorRT), :func:`convnext_fast.to_reference` swaps the fused modules for ``nn.Conv2d``
    and LayerNorm modules holding the same parameters. ``torch.jit.script`` is not supported (the
    blocks pick their kernels in Python, which TorchScript cannot compile, also after
    ``to_reference``) and raises a ``RuntimeError`` saying so; PyTorch itself deprecates
    ``torch.jit.script`` in favour of ``torch.export``.

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
        global_pool: pooling before the classifier: ``"avg"`` (default), ``"max"``, ``"avgmax"`` or
            ``""`` (none: per-position logits), as timm's ``global_pool``.

    Shape:
        (N, in_chans, H, W) -> (N, num_classes) ((N, num_classes, H/32, W/32) with ``global_pool=""``).
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 kernel_size: Union[int, Sequence[int]] = 7, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, ls_init_value: Optional[float] = 1e-6,
                 use_grn: bool = False, conv_mlp: bool = False, head_norm_first: bool = False,
                 norm_eps: float = 1e-6, mlp_ratio: float = 4.0, patch_size: int = 4,
                 head_init_scale: float = 1.0, global_pool: str = "avg", device=None, dtype=None) -> None:
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
                                   eps=norm_eps, pool_type=global_pool, **dd)
        self._init_weights(head_init_scale)
        # The factories and create_model replace this by the named weights' configuration.
        self.pretrained_cfg: Dict[str, Any] = _generic_pretrained_cfg(num_classes)

    @torch.no_grad()
    def _init_weights(self, head_init_scale: float) -> None:
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if not isinstance(self.head.fc, nn.Identity):
            self.head.fc.weight.mul_(head_init_scale)
            self.head.fc.bias.mul_(head_init_scale)

    @property
    def default_cfg(self) -> Dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: Dict[str, Any]) -> None:
        self.pretrained_cfg = cfg

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this hook first: fail here with a way out instead of deep inside
        # the compiler on the first fused op it cannot parse.
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script: its fused ops dispatch in Python. "
            f"Export it with torch.export.export(model.eval(), (example_input,)) (the fused ops become custom "
            f"ops), or call convnext_fast.to_reference(model) first for plain PyTorch operators (ONNX, TensorRT).")

    def get_classifier(self) -> nn.Module:
        """The classifier layer, ``head.fc`` (``nn.Identity`` without one), as timm's."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, reset_other: bool = False) -> None:
        """Replace the classifier by a new one with ``num_classes`` outputs (timm's ``reset_classifier``).

        The new layer has PyTorch's default initialization and the device and dtype of the model's
        parameters; the rest of the model is unchanged. ``pretrained_cfg`` keeps describing the
        loaded weights, as in timm.

        Args:
            num_classes: outputs of the new classifier; 0 for none (the model returns features).
            global_pool: new pooling (``"avg"``, ``"max"``, ``"avgmax"``, ``""`` for none); None keeps
                the current one.
            reset_other: also remove the head's LayerNorm.

        Raises:
            ValueError: a negative ``num_classes`` or an unknown ``global_pool``.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"reset_classifier expects num_classes >= 0, got {num_classes!r}")
        # The stem's weight (a parameter, or a buffer once optimize_for_inference folded the stem).
        weight = next(t for t in (*self.stem.parameters(), *self.stem.buffers()) if t.is_floating_point())
        self.head.reset(num_classes, global_pool, reset_other=reset_other, device=weight.device, dtype=weight.dtype)
        self.num_classes = num_classes

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
        x = self.stem(_channels_last(x))
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
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs for detection/segmentation backbones (timm's ``forward_intermediates``).

        Args:
            x: (N, in_chans, H, W) images.
            indices: stages to return: None for all, an int n for the last n, or a list of indices.
            norm: apply ``norm_pre`` to the last stage's output if it is taken.
            stop_early: skip the stages after the last one requested.
            output_fmt: ``"NCHW"`` (default; the tensors are channels_last in memory) or ``"NHWC"``
                (the free contiguous view ``permute(0, 2, 3, 1)``, for channels-last consumers).
                Applies to the intermediates; the final features stay NCHW, as in timm.
            intermediates_only: return only the list.

        Returns:
            The list of (N, dims[i], H/2^(i+2), W/2^(i+2)) stage outputs (channels_last), or
            ``(final_features, list)``; (N, H/2^(i+2), W/2^(i+2), dims[i]) with ``output_fmt="NHWC"``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
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
        x = self.stem(_channels_last(x))
        stages = self.stages[:last + 1] if (stop_early or intermediates_only) else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                feat = self.norm_pre(x) if norm and i == n - 1 else x
                out.append(feat.permute(0, 2, 3, 1) if output_fmt == "NHWC" else feat)
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

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _tag(num_classes: int = 1000, size: int = 224, crop_pct: float = 0.875, test_size: Optional[int] = None,
         test_crop_pct: Optional[float] = None, crop_mode: str = "center", clip: bool = False,
         license: str = "apache-2.0", weights: bool = True) -> Dict[str, Any]:
    """One timm pretrained tag: the preprocessing its weights expect and their license (timm's values)."""
    cfg: Dict[str, Any] = {"input_size": (3, size, size)}
    if test_size is not None:
        cfg["test_input_size"] = (3, test_size, test_size)
    cfg.update(fixed_input_size=False, interpolation="bicubic", crop_pct=crop_pct)
    if test_crop_pct is not None:
        cfg["test_crop_pct"] = test_crop_pct
    mean, std = (_CLIP_MEAN, _CLIP_STD) if clip else (_IMAGENET_MEAN, _IMAGENET_STD)
    cfg.update(crop_mode=crop_mode, mean=mean, std=std,
               num_classes=num_classes, first_conv="stem.0", classifier="head.fc", license=license)
    cfg["_weights"] = weights
    return cfg


def _v2tag(**kwargs: Any) -> Dict[str, Any]:
    return _tag(license="cc-by-nc-4.0", **kwargs)  # the ConvNeXt V2 release's license


# timm's pretrained tags of each architecture, its default tag first (timm 1.0.31). timm publishes
# the weights of each as ``timm/<arch>.<tag>`` on the Hugging Face hub, in its own layout, which
# load_weights reads (as it reads the official and torchvision files); convnextv2_small has none.
_PRETRAINED_TAGS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "convnext_atto": {
        "d2_in1k": _tag(test_size=288, test_crop_pct=0.95),
    },
    "convnext_femto": {
        "d1_in1k": _tag(test_size=288, test_crop_pct=0.95),
    },
    "convnext_pico": {
        "d1_in1k": _tag(test_size=288, test_crop_pct=0.95),
    },
    "convnext_nano": {
        "in12k_ft_in1k": _tag(crop_pct=0.95, test_size=288, test_crop_pct=1.0),
        "d1h_in1k": _tag(crop_pct=0.95, test_size=288, test_crop_pct=1.0),
        "r384_in12k_ft_in1k": _tag(size=384, crop_pct=1.0),
        "in12k": _tag(num_classes=11821, crop_pct=0.95),
        "r384_in12k": _tag(num_classes=11821, size=384, crop_pct=1.0),
        "r384_ad_in12k": _tag(num_classes=11821, size=384, crop_pct=1.0),
    },
    "convnext_tiny": {
        "in12k_ft_in1k": _tag(crop_pct=0.95, test_size=288, test_crop_pct=1.0),
        "in12k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "in12k": _tag(num_classes=11821, crop_pct=0.95),
        "fb_in22k_ft_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in22k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fb_in22k": _tag(num_classes=21841),
        "dinov3_lvd1689m": _tag(num_classes=0, crop_pct=1.0, license="dinov3-license"),
        "eupe_lvd1689m": _tag(num_classes=0, size=256, crop_pct=1.0, license="fair-noncommercial-research-license"),
    },
    "convnext_small": {
        "in12k_ft_in1k": _tag(crop_pct=0.95, test_size=288, test_crop_pct=1.0),
        "in12k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "in12k": _tag(num_classes=11821, crop_pct=0.95),
        "fb_in22k_ft_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in22k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fb_in22k": _tag(num_classes=21841),
        "dinov3_lvd1689m": _tag(num_classes=0, crop_pct=1.0, license="dinov3-license"),
        "eupe_lvd1689m": _tag(num_classes=0, size=256, crop_pct=1.0, license="fair-noncommercial-research-license"),
    },
    "convnext_base": {
        "fb_in22k_ft_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in22k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fb_in22k": _tag(num_classes=21841),
        "clip_laion2b_augreg_ft_in12k_in1k": _tag(size=256, crop_pct=1.0, clip=True),
        "clip_laion2b_augreg_ft_in12k_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash", clip=True),
        "clip_laion2b_augreg_ft_in1k": _tag(size=256, crop_pct=1.0, clip=True),
        "clip_laiona_augreg_ft_in1k_384": _tag(size=384, crop_pct=1.0, clip=True),
        "clip_laion2b_augreg_ft_in12k": _tag(num_classes=11821, size=256, crop_pct=1.0, clip=True),
        "clip_laion2b": _tag(num_classes=640, size=256, crop_pct=1.0, clip=True),
        "clip_laion2b_augreg": _tag(num_classes=640, size=256, crop_pct=1.0, clip=True),
        "clip_laiona": _tag(num_classes=640, size=256, crop_pct=1.0, clip=True),
        "clip_laiona_320": _tag(num_classes=640, size=320, crop_pct=1.0, clip=True),
        "clip_laiona_augreg_320": _tag(num_classes=640, size=320, crop_pct=1.0, clip=True),
        "dinov3_lvd1689m": _tag(num_classes=0, crop_pct=1.0, license="dinov3-license"),
        "eupe_lvd1689m": _tag(num_classes=0, size=256, crop_pct=1.0, license="fair-noncommercial-research-license"),
    },
    "convnext_large": {
        "fb_in22k_ft_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in22k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fb_in22k": _tag(num_classes=21841),
        "dinov3_lvd1689m": _tag(num_classes=0, crop_pct=1.0, license="dinov3-license"),
    },
    "convnext_xlarge": {
        "fb_in22k_ft_in1k": _tag(test_size=288, test_crop_pct=1.0),
        "fb_in22k_ft_in1k_384": _tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fb_in22k": _tag(num_classes=21841),
    },
    "convnextv2_atto": {
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=0.95),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_femto": {
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=0.95),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_pico": {
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=0.95),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_nano": {
        "fcmae_ft_in22k_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae_ft_in22k_in1k_384": _v2tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_tiny": {
        "fcmae_ft_in22k_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae_ft_in22k_in1k_384": _v2tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_small": {
        "untrained": _tag(weights=False),
    },
    "convnextv2_base": {
        "fcmae_ft_in22k_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae_ft_in22k_in1k_384": _v2tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_large": {
        "fcmae_ft_in22k_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae_ft_in22k_in1k_384": _v2tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae": _v2tag(num_classes=0),
    },
    "convnextv2_huge": {
        "fcmae_ft_in22k_in1k_384": _v2tag(size=384, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in22k_in1k_512": _v2tag(size=512, crop_pct=1.0, crop_mode="squash"),
        "fcmae_ft_in1k": _v2tag(test_size=288, test_crop_pct=1.0),
        "fcmae": _v2tag(num_classes=0),
    },
}


def _generic_pretrained_cfg(num_classes: int) -> Dict[str, Any]:
    """``pretrained_cfg`` of a model built directly: ImageNet preprocessing, no named weights."""
    cfg = {"architecture": None, "tag": None, **_tag(num_classes=num_classes)}
    del cfg["_weights"], cfg["license"]
    return cfg


def _named_pretrained_cfg(arch: str, tag: str) -> Dict[str, Any]:
    """timm's ``pretrained_cfg`` of ``arch.tag`` (the keys this package knows)."""
    cfg: Dict[str, Any] = {"architecture": arch, "tag": tag}
    row = dict(_PRETRAINED_TAGS[arch][tag])
    if row.pop("_weights"):
        cfg["hf_hub_id"] = f"timm/{arch}.{tag}"
    cfg.update(row)
    return cfg


def _split_name(name: Any) -> Tuple[str, str]:
    """``"convnext_tiny.fb_in1k"`` -> ``("convnext_tiny", "fb_in1k")``; no tag: timm's default tag."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    arch, _, tag = name.partition(".")
    if arch not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CONFIGS)} (list_models() lists "
                         f"them, list_models(pretrained=True) with their pretrained tags)")
    tags = _PRETRAINED_TAGS[arch]
    if not tag:
        return arch, next(iter(tags))
    if tag not in tags:
        raise ValueError(f"unknown pretrained tag {tag!r} for {arch}; its tags are: {', '.join(tags)}")
    return arch, tag


PretrainedSource = Union[bool, None, str, "os.PathLike[str]", Mapping[str, Any]]
PathLike = Union[str, "os.PathLike[str]"]


def _no_file_error(call: str, arch: str, tag: str) -> ValueError:
    """``call`` opens the user's call: ``"convnext_atto("`` or ``"create_model('convnext_atto.d2_in1k', "``."""
    if _PRETRAINED_TAGS[arch][tag]["_weights"]:
        where = (f"Download the {arch}.{tag} weights yourself (e.g. `hf download timm/{arch}.{tag}` from the "
                 f"Hugging Face hub, or the official release) and pass the local file")
    else:
        where = f"No published weights are known for {arch}.{tag}; pass a local file of your own"
    return ValueError(
        f"{call}pretrained=True): convnext_fast never downloads weights, they come from a file you have. {where}: "
        f"{call}pretrained=True, checkpoint_path='/path/to/model.safetensors') (also .pth/.pt, official, timm "
        f"or torchvision layout), or pretrained='/path/to/file', or build the model and call "
        f"convnext_fast.load_weights(model, '/path/to/file').")


def _create(name: str, pretrained: PretrainedSource, kwargs: Dict[str, Any], call: Optional[str] = None,
            checkpoint_path: Optional[PathLike] = None,
            pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None) -> ConvNeXt:
    from .weights import CheckpointError, load_weights, resolve_pretrained, without_classifier

    arch, tag = _split_name(name)
    call = call or f"{arch}("
    cfg = _named_pretrained_cfg(arch, tag)
    if pretrained_cfg_overlay:
        cfg.update(pretrained_cfg_overlay)
    if pretrained is True:
        # timm's two ways of naming a local file: checkpoint_path=, or pretrained_cfg_overlay={"file": ...}.
        source: PretrainedSource = checkpoint_path if checkpoint_path is not None else cfg.get("file")
        if source is None:
            raise _no_file_error(call, arch, tag)
    elif pretrained is None or pretrained is False:
        source = checkpoint_path
    else:
        if checkpoint_path is not None:
            raise ValueError(f"{call}pretrained=..., checkpoint_path=...): weights given twice, as pretrained=<"
                             f"{type(pretrained).__name__}> and as checkpoint_path; pass one")
        source = resolve_pretrained(arch, pretrained)
    # As in timm, the named weights decide the default class count (21841 for fb_in22k, 0 for fcmae).
    args = {**MODEL_CONFIGS[arch], "num_classes": cfg["num_classes"], **kwargs}
    if (source is not None and pretrained not in (None, False) and args["num_classes"]
            and args["num_classes"] != cfg["num_classes"]):
        # As timm: pretrained weights with another class count keep everything but the classifier,
        # which is initialized as in a new model (fine-tuning). A plain checkpoint_path must fit.
        rest, classes = without_classifier(source)
        if classes is not None and classes != args["num_classes"]:
            model = ConvNeXt(**args)
            try:
                missing, unexpected = load_weights(model, rest, strict=False)
            except CheckpointError as e:
                if isinstance(source, (str, os.PathLike)):
                    raise CheckpointError(f"checkpoint file {os.fspath(source)!r}: {e}") from None
                raise
            others = sorted(set(missing) - {"head.fc.weight", "head.fc.bias"})
            if others or unexpected:
                raise CheckpointError(f"{call}pretrained=..., num_classes={args['num_classes']}): the checkpoint "
                                      f"does not fit {arch} beyond its classifier: missing {others[:20]}, "
                                      f"unexpected {unexpected[:20]}")
            model.pretrained_cfg = cfg
            return model
    if source is None:
        model = ConvNeXt(**args)
    else:
        # Build without memory or initialization, then take the checkpoint's tensors.
        device = args.pop("device", None)
        model = ConvNeXt(**args, device="meta")
        load_weights(model, source, assign=True)
        if device is not None:
            model = model.to(device)
    model.pretrained_cfg = cfg
    return model


def create_model(name: str, pretrained: PretrainedSource = None, *, checkpoint_path: Optional[PathLike] = None,
                 pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> ConvNeXt:
    """Build a model by name, as ``timm.create_model`` does: ``create_model("convnext_tiny.fb_in1k")``.

    Weights come from a file you have; nothing is downloaded. ``pretrained=True`` therefore needs
    the file: ``checkpoint_path=`` or timm's ``pretrained_cfg_overlay=dict(file=...)``; without one
    it raises a ``ValueError`` that says where the named weights are published.

    Args:
        name: an architecture (:func:`list_models`), optionally with one of timm's pretrained tags
            (``"convnext_atto.d2_in1k"``, :func:`list_models` with ``pretrained=True``). The tag
            selects ``pretrained_cfg`` (the preprocessing its weights expect, the default
            ``num_classes``); without one, timm's default tag is used.
        pretrained: True (load ``checkpoint_path`` or the overlay's ``file``), a local
            ``.safetensors``/``.pth``/``.pt`` file or a state dict (official, timm or torchvision
            layout), or None/False for random initialization.
        checkpoint_path: local weights file, loaded whether or not ``pretrained`` is set (as timm).
        pretrained_cfg_overlay: entries that replace those of the tag's ``pretrained_cfg``.
        **kwargs: :class:`ConvNeXt` arguments (``num_classes``, ``drop_path_rate``, ``in_chans``,
            ``global_pool``, ``device``, ...). With ``pretrained`` weights and another
            ``num_classes`` than the checkpoint's, everything but the classifier is loaded and the
            classifier is initialized as in a new model (timm's way to fine-tune); a
            ``checkpoint_path`` given without ``pretrained`` must fit exactly.

    Returns:
        :class:`ConvNeXt` with ``pretrained_cfg`` set (``pretrained_cfg["tag"]``: the tag).

    Raises:
        ValueError: an unknown name or tag; ``pretrained=True`` without a file; a missing file.
        convnext_fast.CheckpointError: weights that do not fit the model.
    """
    return _create(name, pretrained, kwargs, call=f"create_model({name!r}, ", checkpoint_path=checkpoint_path,
                   pretrained_cfg_overlay=pretrained_cfg_overlay)


def _str_list(value: Union[str, Sequence[str], None], what: str) -> List[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    out = list(value)
    if not all(isinstance(v, str) for v in out):
        raise TypeError(f"list_models({what}=...) expects a str or a list of str, got {value!r}")
    return out


def list_models(filter: Union[str, Sequence[str]] = "", pretrained: bool = False,
                exclude_filters: Union[str, Sequence[str]] = "") -> List[str]:
    """Model names, as ``timm.list_models`` gives them (the subset of its arguments that applies).

    Weights never come from the network: ``pretrained=True`` lists the timm names whose weights
    this package can load from a file you have (timm's ``<arch>.<tag>`` hub names); download the
    file yourself and pass it to :func:`create_model` (``checkpoint_path=``) or
    :func:`convnext_fast.load_weights`.

    Args:
        filter: ``fnmatch`` wildcard(s), a str or a list: ``"*v2*"``, ``["convnext_a*", "*_tiny"]``.
        pretrained: list ``arch.tag`` names (one per set of published weights) instead of
            architectures. A filter without a tag then matches all of an architecture's tags.
        exclude_filters: wildcard(s) of names to drop.

    Returns:
        The matching names in :data:`MODEL_CONFIGS` order (V1 then V2, smallest first; timm sorts
        by name instead), with ``pretrained=True`` each architecture's tags in timm's order, its
        default tag first.
    """
    include = _str_list(filter, "filter")
    exclude = _str_list(exclude_filters, "exclude_filters")
    if pretrained:
        names = [f"{arch}.{tag}" for arch, tags in _PRETRAINED_TAGS.items() for tag, row in tags.items()
                 if row["_weights"]]
        # timm's expansion: "convnext_tiny" also matches "convnext_tiny.<any tag>".
        include = [g for f in include for g in ([f] if "." in f else [f, f + ".*"])]
        exclude = [g for f in exclude for g in ([f] if "." in f else [f, f + ".*"])]
    else:
        names = list(MODEL_CONFIGS)
    return [n for n in names if (not include or any(fnmatch.fnmatchcase(n, f) for f in include))
            and not any(fnmatch.fnmatchcase(n, f) for f in exclude)]


def _make_factory(name: str) -> Callable[..., ConvNeXt]:
    cfg = MODEL_CONFIGS[name]
    version = "ConvNeXt V2 (Woo et al. 2023)" if cfg.get("use_grn") else "ConvNeXt (Liu et al. 2022)"

    def factory(pretrained: PretrainedSource = None, *, checkpoint_path: Optional[PathLike] = None,
                pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> ConvNeXt:
        return _create(name, pretrained, kwargs, checkpoint_path=checkpoint_path,
                       pretrained_cfg_overlay=pretrained_cfg_overlay)

    factory.__name__ = factory.__qualname__ = name
    options = ", ".join(f"{k}={v}" for k, v in cfg.items())
    factory.__doc__ = f"""{name}: {version}, as timm's ``{name}`` ({options}).

    Args:
        pretrained: weights to load: a local ``.pth``/``.pt``/``.safetensors`` file or a state dict
            (official, timm or torchvision layout, optionally wrapped under ``model``/``state_dict``),
            or True with ``checkpoint_path=``. Nothing is downloaded; True without a file or a hub
            name raises an error explaining how to pass a file.
        checkpoint_path: local weights file (timm's argument), loaded whether or not ``pretrained`` is set.
        pretrained_cfg_overlay: entries replacing those of ``pretrained_cfg`` (timm's default tag
            ``{next(iter(_PRETRAINED_TAGS[name]))}``); its ``file`` is loaded with ``pretrained=True``.
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
