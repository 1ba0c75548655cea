"""ConvNeXt as a backbone: timm's ``features_only`` models, without timm.

Detection and segmentation code builds a backbone with
``create_model(name, features_only=True, out_indices=(...))``, reads its ``feature_info``
(channels and reduction of each level) and feeds the levels to an FPN or UPerNet head. This module
gives :func:`convnext_fast.create_model` and the factories the same: the wrappers timm would build
around its ConvNeXt (the same classes' behaviour, the same ``feature_info``, the same state-dict
keys), running the stem and stages of our :class:`~convnext_fast.ConvNeXt`, i.e. the same fused
kernels as ``forward_features``.

* ``feature_cls="list"`` (timm's default): :class:`FeatureListNet`, a ``ModuleDict`` of the model's
  stem and stage modules up to the last level asked for (names ``stem_0``, ``stem_1``,
  ``stages_0``... as timm's ``flatten_sequential`` gives them); ``forward`` returns a list.
* ``feature_cls="dict"``: :class:`FeatureDictNet`, the same returning ``{str(index): tensor}``.
* ``feature_cls="getter"``: :class:`FeatureGetterNet`, the pruned model under ``model`` called
  through :meth:`~convnext_fast.ConvNeXt.forward_intermediates`.

ConvNeXt: Liu et al., "A ConvNet for the 2020s", CVPR 2022 (their detection and segmentation
results use it as a backbone: Mask R-CNN / Cascade Mask R-CNN on COCO, UperNet on ADE20K).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .patch_layers import PatchConvSequential

__all__ = ["FeatureInfo", "FeatureListNet", "FeatureDictNet", "FeatureGetterNet", "FEATURE_CLASSES",
           "features_model", "pretrained_cfg_for_features"]

OutIndices = Union[int, Sequence[int]]
_OUTPUT_FMTS = ("NCHW", "NHWC")


def _as_tuple(out_indices: OutIndices) -> Tuple[int, ...]:
    """timm's rule: an int n means the last n levels (negative indices), a sequence is taken as is."""
    if isinstance(out_indices, bool):
        raise TypeError(f"out_indices must be an int or a sequence of ints, got {out_indices!r}")
    if isinstance(out_indices, int):
        return tuple(range(-out_indices, 0))
    out = tuple(out_indices)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in out):
        raise TypeError(f"out_indices must be an int or a sequence of ints, got {out_indices!r}")
    return out


class FeatureInfo:
    """Channels, reduction (stride) and module name of each feature level, and the levels taken
    (``out_indices``): timm's ``FeatureInfo`` API (``channels()``, ``reduction()``,
    ``module_name()``, ``get()``, ``get_dicts()``, indexing, ``len``).

    Args:
        feature_info: one dict per level with ``num_chs``, ``reduction`` and ``module``.
        out_indices: the levels taken (an int n: the last n), as timm.

    Raises:
        ValueError: a malformed level, or an index outside the levels.
    """

    def __init__(self, feature_info: List[Dict[str, Any]], out_indices: OutIndices) -> None:
        out_indices = _as_tuple(out_indices)
        n = len(feature_info)
        prev = 1
        for i, fi in enumerate(feature_info):
            if not fi.get("num_chs", 0) > 0 or fi.get("reduction", 0) < prev or "module" not in fi:
                raise ValueError(f"feature level {i} needs num_chs > 0, a reduction >= the previous one and a "
                                 f"module name, got {fi}")
            prev = fi["reduction"]
            fi.setdefault("index", i)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices must name levels of the {n} this model has (0..{n - 1}, or negative "
                             f"from the end), got {out_indices}")
        self.out_indices = out_indices
        self.info = feature_info

    def from_other(self, out_indices: OutIndices) -> "FeatureInfo":
        """A copy with other levels taken."""
        return FeatureInfo(copy.deepcopy(self.info), out_indices)

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """``key`` of each taken level (idx None), of level ``idx``, or of each level in ``idx``."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Optional[Sequence[str]] = None,
                  idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """The level dicts (restricted to ``keys``) of the taken levels, or of ``idx``."""
        pick = (lambda d: d) if keys is None else (lambda d: {k: d[k] for k in keys})  # noqa: E731
        if idx is None:
            return [pick(self.info[i]) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(self.info[i]) for i in idx]
        return pick(self.info[idx])

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """Channel count of each taken level (or of ``idx``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """Stride relative to the input of each taken level (or of ``idx``)."""
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """Name of the module producing each taken level (or ``idx``) in the classification model."""
        return self.get("module", idx)

    def __getitem__(self, item: int) -> Dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, info={self.info})"


def _check_fmt(output_fmt: str) -> str:
    if output_fmt not in _OUTPUT_FMTS:
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    return output_fmt


def _check_convnext(model: nn.Module, what: str) -> None:
    from .models import ConvNeXt

    if not isinstance(model, ConvNeXt):
        raise TypeError(f"{what} wraps a convnext_fast ConvNeXt, got {type(model).__name__}; for timm models use "
                        f"timm's own features_only (convnext_fast.convert() makes their blocks fast)")


class FeatureDictNet(nn.ModuleDict):
    """The stem and stages of a :class:`~convnext_fast.ConvNeXt` up to the last level taken, run in
    order, returning the taken levels as a dict ``{str(out_index): tensor}`` (timm's
    ``FeatureDictNet`` with ``flatten_sequential=True``: module names ``stem_0``, ``stem_1``,
    ``stages_0``..., timm's state-dict keys).

    The input is made channels_last first, as :meth:`~convnext_fast.ConvNeXt.forward_features`
    does: the levels are exactly those of ``forward_intermediates``, from the same fused kernels.

    Args:
        model: the :class:`~convnext_fast.ConvNeXt` whose modules are taken (shared, not copied).
        out_indices: levels to return (timm's semantics; an int n: the last n).
        output_fmt: ``"NCHW"`` (channels_last memory) or ``"NHWC"`` (the free permuted view).

    Shape:
        (N, in_chans, H, W) -> {index: (N, C_i, H / r_i, W / r_i)}.
    """

    def __init__(self, model: nn.Module, out_indices: OutIndices = (0, 1, 2, 3), output_fmt: str = "NCHW") -> None:
        super().__init__()
        _check_convnext(model, type(self).__name__)
        self.feature_info = FeatureInfo(copy.deepcopy(model.feature_info), out_indices)
        self.output_fmt = _check_fmt(output_fmt)
        self.grad_checkpointing = False
        wanted = {self.feature_info.info[i]["module"]: str(i) for i in self.feature_info.out_indices}
        self.return_layers: Dict[str, str] = {}
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        for name, child in model.named_children():
            if name not in ("stem", "stages"):
                continue  # norm_pre and the head are not levels
            for child_name, module in child.named_children():
                layers[f"{name}_{child_name}"] = module
                old = f"{name}.{child_name}"
                if old in wanted:
                    self.return_layers[f"{name}_{child_name}"] = wanted.pop(old)
                if not wanted:
                    break
            if not wanted:
                break
        self.update(layers)
        # The stem's two modules are flattened for timm's names, but run as the stem does (one
        # fused pass in inference, patch_layers.PatchConvSequential): held outside the submodules
        # (the same two modules; registering it would add its parameters' names twice).
        stem = getattr(model, "stem", None)
        object.__setattr__(self, "_fused_stem",
                           stem if isinstance(stem, PatchConvSequential) and "stem_1" in layers else None)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each module but the first and the last in the backward pass (timm's rule)."""
        self.grad_checkpointing = enable

    def _collect(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        from .models import _channels_last

        out: "OrderedDict[str, Tensor]" = OrderedDict()
        x = _channels_last(x)
        last = len(self) - 1
        for i, (name, module) in enumerate(self.items()):
            if self._fused_stem is not None and name in ("stem_0", "stem_1"):
                if name == "stem_0":  # i = 0: never checkpointed
                    x = self._fused_stem(x)
                continue
            if self.grad_checkpointing and torch.is_grad_enabled() and 0 < i < last:
                x = torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x
        return out

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return self._collect(x)


class FeatureListNet(FeatureDictNet):
    """:class:`FeatureDictNet` returning a list (timm's default ``features_only`` model)."""

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        return list(self._collect(x).values())


class FeatureGetterNet(nn.ModuleDict):
    """The model (pruned past the last level taken) under ``model``, its levels taken with
    :meth:`~convnext_fast.ConvNeXt.forward_intermediates` (timm's ``feature_cls="getter"``).

    Args:
        model: the :class:`~convnext_fast.ConvNeXt` (pruned in place: later stages and the head go).
        out_indices: levels to return (an int n: the last n; negative indices from the end).
        output_fmt: ``"NCHW"`` or ``"NHWC"``.
        norm: apply ``norm_pre`` to the last stage's output (models with ``head_norm_first``).
        prune: drop the stages after the last level and the head (timm's default).

    Shape:
        (N, in_chans, H, W) -> [(N, C_i, H / r_i, W / r_i) ...].
    """

    def __init__(self, model: nn.Module, out_indices: OutIndices = 4, output_fmt: str = "NCHW",
                 norm: bool = False, prune: bool = True) -> None:
        super().__init__()
        _check_convnext(model, type(self).__name__)
        if prune:
            out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.feature_info = FeatureInfo(copy.deepcopy(model.feature_info), out_indices)
        self.model = model
        self.out_indices = self.feature_info.out_indices
        self.output_fmt = _check_fmt(output_fmt)
        self.norm = norm

    def forward(self, x: Tensor) -> List[Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True)


FEATURE_CLASSES = {"list": FeatureListNet, "dict": FeatureDictNet, "getter": FeatureGetterNet}


def pretrained_cfg_for_features(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """timm's ``pretrained_cfg`` of a ``features_only`` model: the classifier's entries removed."""
    out = copy.deepcopy(dict(cfg))
    for key in ("num_classes", "classifier", "global_pool"):
        out.pop(key, None)
    return out


def features_model(model: nn.Module, out_indices: Optional[OutIndices] = None,
                   feature_cls: Union[str, type] = "list", **feature_kwargs: Any) -> nn.Module:
    """``model`` as timm's ``features_only=True`` model (what :func:`convnext_fast.create_model` does
    with ``features_only=True``).

    Args:
        model: a :class:`~convnext_fast.ConvNeXt`.
        out_indices: levels (stages) to return; default all four ``(0, 1, 2, 3)`` (timm's default
            for ConvNeXt). An int n takes the last n.
        feature_cls: ``"list"`` (default), ``"dict"``, ``"getter"``, or one of those classes.
        **feature_kwargs: the class's other arguments (``output_fmt``; ``norm``, ``prune`` for the
            getter).

    Returns:
        The wrapper, with ``feature_info`` and the model's ``pretrained_cfg`` less its classifier
        entries (``default_cfg`` the same dict).

    Raises:
        ValueError: an unknown ``feature_cls`` (timm's ``"hook"`` and ``"fx"`` wrappers are not
            provided: the fused modules are leaves of FX graphs, so torchvision's
            ``create_feature_extractor`` serves that use on the model itself).
    """
    if isinstance(feature_cls, str):
        cls = FEATURE_CLASSES.get(feature_cls.lower())
        if cls is None:
            raise ValueError(f"feature_cls={feature_cls!r} is not supported; choose one of {', '.join(FEATURE_CLASSES)} "
                             f"(for an FX graph of any levels use torchvision's create_feature_extractor on the "
                             f"model itself)")
    elif isinstance(feature_cls, type) and issubclass(feature_cls, tuple(FEATURE_CLASSES.values())):
        cls = feature_cls
    else:
        raise ValueError(f"feature_cls must be one of {', '.join(FEATURE_CLASSES)} or one of those classes, "
                         f"got {feature_cls!r}")
    if out_indices is None:
        out_indices = (0, 1, 2, 3)
    cfg = getattr(model, "pretrained_cfg", None)
    wrapper = cls(model, out_indices=out_indices, **feature_kwargs)
    wrapper.in_chans = model.in_chans
    wrapper.pretrained_cfg = pretrained_cfg_for_features(cfg) if cfg is not None else {}
    wrapper.default_cfg = wrapper.pretrained_cfg
    return wrapper
