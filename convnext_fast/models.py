"""The ConvNeXt family on the fused ops: :class:`ConvNeXtBlock`, :class:`ConvNeXt`.

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

The network runs channels_last throughout. A block is two ops: the fused ``dwconv_layer_norm``,
then the fused ``pointwise_mlp`` (fc1, exact GELU, [GRN], fc2, layer scale, stochastic depth and
the residual add, on the free NHWC view ``x.permute(0, 2, 3, 1)``). Where the backend has no MLP
kernel, the MLP half runs PyTorch's GEMMs with bias + GELU and layer scale + residual as one pass
each (``convnext_fast.fused_elementwise``). The registry and the factories are in
:mod:`convnext_fast.pretrained`; this module re-exports them.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.fx import Proxy

from . import direct_block
from .direct_block import DirectCalls, usable
from .dwconv_ln import dwconv_layer_norm
from .mlp import pointwise_mlp
from .fused_elementwise import (drop_path_scale, global_response_norm, layer_scale_residual, linear_gelu,
                                mlp_composite)
from .layers import DepthwiseConv2d, FxLeafScripting, LayerNorm2d, fx_leaf
from .patch_layers import PatchConvSequential
from .layers import _as as _cast, _as_param as _cast_param, _compute_dtype
# The registry and factories live in pretrained.py; this module keeps exporting them.
from . import pretrained as _pretrained
from .pretrained import (
    MODEL_CONFIGS, _generic_pretrained_cfg, convnext_atto, convnext_base, convnext_femto, convnext_large,
    convnext_nano, convnext_pico, convnext_small, convnext_tiny, convnext_xlarge, convnextv2_atto, convnextv2_base,
    convnextv2_femto, convnextv2_huge, convnextv2_large, convnextv2_nano, convnextv2_pico, convnextv2_small,
    convnextv2_tiny, create_model, list_models,
)

__all__ = [
    "GlobalResponseNorm",
    "ConvNeXtMlp",
    "ConvNeXtBlock",
    "ConvNeXtStage",
    "ClassifierHead",
    "ConvNeXt",
    *_pretrained.__all__,  # MODEL_CONFIGS, create_model, list_models and the factories
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


class GlobalResponseNorm(FxLeafScripting, nn.Module):
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
        if isinstance(x, Proxy):
            return fx_leaf(self, x)
        return global_response_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ConvNeXtMlp(FxLeafScripting, nn.Module):
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
        if isinstance(x, Proxy):
            return fx_leaf(self, x)
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


class ConvNeXtBlock(FxLeafScripting, nn.Module):
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

    Under torch.fx symbolic tracing the block is one leaf (``call_module``) node: the traced graph
    runs the block itself, on the same kernels.

    Args:
        dim: channels C.
        kernel_size: odd depthwise kernel size.
        dilation: of the depthwise conv (timm's ``output_stride`` 16 / 8 dilates the later stages).
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
                 conv_mlp: bool = False, eps: float = 1e-6, device=None, dtype=None, dilation: int = 1) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"ConvNeXtBlock expects a positive channel count dim, got {dim!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"ConvNeXtBlock expects 0 <= drop_path < 1, got {drop_path}")
        dd = {"device": device, "dtype": dtype}
        self.conv_dw = DepthwiseConv2d(dim, kernel_size, bias=True, dilation=dilation, **dd)
        self.norm = LayerNorm2d(dim, eps=eps, **dd)
        self.mlp = ConvNeXtMlp(dim, int(mlp_ratio * dim), use_grn=use_grn, conv_mlp=conv_mlp, eps=eps, **dd)
        if ls_init_value is not None:
            self.gamma = nn.Parameter(torch.full((dim,), float(ls_init_value), **dd))
        else:
            self.gamma = None
        self.drop_path = float(drop_path)
        self._direct = DirectCalls()

    def _apply(self, fn, recurse: bool = True):
        self._direct.clear()  # moved or cast parameters: the next call goes through the routes again
        return super()._apply(fn, recurse)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_direct", DirectCalls())  # a block pickled before the memo existed

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Proxy):
            return fx_leaf(self, x)
        conv, norm, mlp = self.conv_dw, self.norm, self.mlp
        if not (isinstance(conv, DepthwiseConv2d) and isinstance(norm, LayerNorm2d) and type(mlp) is ConvNeXtMlp):
            # Plain PyTorch modules (to_reference(), for export): plain PyTorch ops throughout.
            y = mlp(norm(conv(x)).permute(0, 2, 3, 1))
            scale = drop_path_scale(y, self.drop_path, self.training)
            return layer_scale_residual(y, self.gamma, x.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)
        fc1, fc2, grn, gamma = mlp.fc1, mlp.fc2, mlp.grn, self.gamma
        key = None if self.training and self.drop_path else DirectCalls.key(x)
        dt = _compute_dtype(x)
        one_dtype = x.dtype == dt and (gamma is None or gamma.dtype == dt)
        # The parameters in the dtype the block computes in (themselves unless autocast casts them).
        dw_w, dw_b, ln_w, ln_b, w1, b1, w2, b2 = [_cast_param(p, dt) for p in (
            conv.weight, conv.bias, norm.weight, norm.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias)]
        if self._direct.ready(key, dw_w, dw_b, ln_w, ln_b, w1, b1, w2, b2, gamma):
            # A CPU inference call like one before: the kernels the routes chose then.
            if one_dtype:
                return direct_block.forward(x, dw_w, dw_b, ln_w, ln_b, norm.eps, w1, b1, w2, b2, gamma)
            return direct_block.forward_promoted(x, dt, dw_w, dw_b, ln_w, ln_b, norm.eps, w1, b1, w2, b2, gamma)
        xc = _cast(x, dt)
        y = dwconv_layer_norm(xc, dw_w, dw_b, ln_w, ln_b, norm.eps, conv.dilation[0])
        scale = drop_path_scale(y, self.drop_path, self.training)
        grn_args = {} if grn is None else dict(grn_weight=_cast_param(grn.weight, dt),
                                               grn_bias=_cast_param(grn.bias, dt), grn_eps=grn.eps)
        # A backend asked for by name that has no MLP kernel still runs the model: pointwise_mlp's
        # route gives that call to PyTorch's composite.
        if one_dtype:
            # One dtype (no autocast, or parameters already in it): the residual add is the kernel's epilogue.
            out = pointwise_mlp(y, w1, b1, w2, b2, gamma=gamma, shortcut=x, drop_scale=scale, **grn_args)
            direct_ok = True
        else:
            # Autocast over float32 parameters: the residual add follows PyTorch's type promotion, as
            # timm's block does (a float32 gamma keeps the residual stream in float32).
            z = pointwise_mlp(y, w1, b1, w2, b2, **grn_args).permute(0, 2, 3, 1)
            out = layer_scale_residual(z, gamma, x.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)
            # The direct call's kernel computes that tail for a bfloat16 branch over a float32 or
            # bfloat16 stream and a float32 (or no) layer scale.
            direct_ok = (dt == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16)
                         and usable(gamma, torch.float32) and usable(x, x.dtype))
        if grn is None and conv.dilation[0] == 1 and direct_ok:
            self._direct.learn(key, xc, dw_w, ln_w, w1, w2, dw_b, ln_b, b1, b2, gamma if one_dtype else None)
        return out

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}" if self.drop_path else ""


class _SameConv2x2(nn.Conv2d):
    """A 2x2 stride-1 conv with dilation d and timm's "same" padding (d in total per dimension):
    ``d // 2`` before and the rest after, i.e. one pixel at the bottom / right for d = 1 (timm's
    dynamic same padding) and one on each side for d = 2 (its static padding). The downsampling
    layer of a stage that dilates instead of downsampling (``output_stride`` 16 / 8); an
    ``nn.Conv2d`` (same parameters and state-dict keys) that pads explicitly."""

    def __init__(self, in_dim: int, out_dim: int, dilation: int, device=None, dtype=None) -> None:
        super().__init__(in_dim, out_dim, kernel_size=2, stride=1, dilation=dilation, device=device, dtype=dtype)
        self.same_pad = (dilation // 2, dilation - dilation // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.same_pad))


class ConvNeXtStage(nn.Module):
    """One resolution stage: optional LayerNorm2d + 2x2 conv downsampling, then blocks.

    Args:
        in_dim, out_dim: channels in and out.
        depth: number of blocks.
        downsample: whether to downsample (every stage but the first, unless dilated instead).
        drop_path_rates: per-block stochastic-depth probabilities (``depth`` values).
        dilation: (first, rest), timm's stage dilation for ``output_stride`` 16 / 8: the blocks'
            depthwise convs take ``rest``; where the two differ the stage keeps its LayerNorm + 2x2
            conv but with stride 1, dilation ``first`` and "same" padding (timm's layer: the padding
            (``first``) goes bottom / right for ``first`` = 1, both sides for 2), as timm builds it.
        block_kwargs: passed to each :class:`ConvNeXtBlock`.

    Shape:
        (N, in_dim, H, W) -> (N, out_dim, H/2, W/2) (or H, W without downsampling).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int, downsample: bool,
                 drop_path_rates: Sequence[float], eps: float = 1e-6, device=None, dtype=None,
                 dilation: Tuple[int, int] = (1, 1), **block_kwargs: Any) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        first_dilation, dilation_ = dilation
        if downsample and dilation_ > 1:
            raise ValueError(f"ConvNeXtStage downsamples (stride 2) or dilates, not both: dilation={dilation}")
        if downsample:
            self.downsample = PatchConvSequential(
                LayerNorm2d(in_dim, eps=eps, **dd),
                nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2, **dd),
            )
        elif first_dilation != dilation_:
            self.downsample = nn.Sequential(
                LayerNorm2d(in_dim, eps=eps, **dd),
                _SameConv2x2(in_dim, out_dim, first_dilation, **dd),
            )
        elif in_dim != out_dim:
            raise ValueError(f"ConvNeXtStage without downsampling needs in_dim == out_dim, got {in_dim}, {out_dim}")
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_dim, drop_path=drop_path_rates[i], eps=eps, dilation=dilation_, **dd, **block_kwargs)
            for i in range(depth)
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


def _take_indices(n: int, indices: Optional[Union[int, Sequence[int]]]) -> List[int]:
    """timm's ``feature_take_indices``: None for all n stages, an int k for the last k, or a list of
    indices (negative ones count from the end), as absolute indices."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} asks for the last {indices} of {n} stages")
        return list(range(n - indices, n))
    take = [i + n if i < 0 else i for i in indices]
    if not take or any(not 0 <= i < n for i in take):
        raise ValueError(f"stage indices must lie in [-{n}, {n}), got {list(indices)}")
    return take


_TIMM_REGISTERED = False


def _register_with_timm() -> None:
    """List the fused modules as leaves of timm's FX tracer (``timm.layers.register_notrace_module``,
    what timm does for its own modules that tracing cannot follow), once timm has been imported.
    They are leaves for any tracer anyway (:func:`convnext_fast.layers.fx_leaf`); this makes timm's
    own helpers (``get_notrace_modules``) name them too. Never imports timm itself."""
    global _TIMM_REGISTERED
    if _TIMM_REGISTERED or "timm" not in sys.modules:
        return
    try:
        from timm.layers import register_notrace_module
    except ImportError:  # a timm without the FX registry
        return
    for cls in (ConvNeXtBlock, ConvNeXtMlp, GlobalResponseNorm, DepthwiseConv2d, LayerNorm2d, PatchConvSequential):
        register_notrace_module(cls)
    _TIMM_REGISTERED = True


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
        output_stride: 32 (default), 16 or 8: the network's total stride, as timm's ``output_stride``
            (for segmentation backbones). The stages past it keep their resolution: their
            downsampling layer becomes a stride-1 "same" 2x2 conv and their depthwise convs are
            dilated (2, then 4), exactly as timm builds them, so timm weights load unchanged.

    Shape:
        (N, in_chans, H, W) -> (N, num_classes) ((N, num_classes, H/32, W/32) with ``global_pool=""``).
    """

    def __init__(self, depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 kernel_size: Union[int, Sequence[int]] = 7, in_chans: int = 3, num_classes: int = 1000,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0, ls_init_value: Optional[float] = 1e-6,
                 use_grn: bool = False, conv_mlp: bool = False, head_norm_first: bool = False,
                 norm_eps: float = 1e-6, mlp_ratio: float = 4.0, patch_size: int = 4,
                 head_init_scale: float = 1.0, global_pool: str = "avg", output_stride: int = 32,
                 device=None, dtype=None) -> None:
        super().__init__()
        _register_with_timm()
        depths, dims = tuple(depths), tuple(dims)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"ConvNeXt expects output_stride 8, 16 or 32 (timm's choices), got {output_stride!r}")
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"ConvNeXt expects as many depths as dims, got depths={depths}, dims={dims}")
        kernel_sizes = (kernel_size,) * len(depths) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel_sizes) != len(depths):
            raise ValueError(f"ConvNeXt expects one kernel_size or one per stage ({len(depths)}), got {kernel_size}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.stem = PatchConvSequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, **dd),
            LayerNorm2d(dims[0], eps=norm_eps, **dd),
        )
        rates = _stage_drop_path_rates(drop_path_rate, depths)
        stages, prev, self.feature_info = [], dims[0], []
        reduction, dilation = patch_size, 1
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            # timm's rule: once the stride reaches output_stride, a stage dilates instead of downsampling.
            stride = 2 if i > 0 else 1
            if reduction >= output_stride and stride > 1:
                dilation *= stride
                stride = 1
            reduction *= stride
            first_dilation = 1 if dilation in (1, 2) else 2
            stages.append(ConvNeXtStage(prev, dim, depth, downsample=stride > 1, drop_path_rates=rates[i],
                                        eps=norm_eps, dilation=(first_dilation, dilation), kernel_size=kernel_sizes[i],
                                        mlp_ratio=mlp_ratio, ls_init_value=ls_init_value, use_grn=use_grn,
                                        conv_mlp=conv_mlp, **dd))
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

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what the stage outputs ``indices`` do not need, in place (timm's method, used by its
        ``feature_cls='getter'`` wrapper): the later stages, ``norm_pre`` (with ``prune_norm`` or
        when the last stage goes) and the classifier head (with ``prune_head`` or when the last stage
        goes).

        Args:
            indices: the stages kept for :meth:`forward_intermediates`, as its ``indices``.
            prune_norm: also drop ``norm_pre``.
            prune_head: drop the head (pooling, norm and classifier).

        Returns:
            The absolute indices of the kept outputs.
        """
        take = _take_indices(len(self.stages), indices)
        last = max(take)
        prune_end = last < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm_pre = nn.Identity()
        self.stages = self.stages[:last + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.head = ClassifierHead(self.num_features, 0, norm=False, eps=1e-6, pool_type="")
            self.num_classes = 0
        return take

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
        take = _take_indices(n, indices)
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
