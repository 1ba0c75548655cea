"""The named ConvNeXt architectures: their configurations, timm's pretrained tags, the registry
(:func:`create_model`, :func:`list_models`) and one factory per architecture (``convnext_tiny``...).

The blocks and the network itself live in :mod:`convnext_fast.models`, which re-exports every name
defined here. Weights always come from a local file (:mod:`convnext_fast.weights`); nothing here
downloads anything.
"""
from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:
    from torch import nn

    from .models import ConvNeXt

__all__ = [
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
         license: str = "apache-2.0", weights: bool = True, pool_size: Optional[int] = None) -> Dict[str, Any]:
    """One timm pretrained tag: the preprocessing its weights expect and their license (timm's values)."""
    cfg: Dict[str, Any] = {"custom_load": False, "input_size": (3, size, size)}
    if test_size is not None:
        cfg["test_input_size"] = (3, test_size, test_size)
    cfg.update(fixed_input_size=False, interpolation="bicubic", crop_pct=crop_pct)
    if test_crop_pct is not None:
        cfg["test_crop_pct"] = test_crop_pct
    mean, std = (_CLIP_MEAN, _CLIP_STD) if clip else (_IMAGENET_MEAN, _IMAGENET_STD)
    # pool_size: the unpooled feature map of an input_size image (the network's stride is 32),
    # unless timm records another value for the tag.
    pool = size // 32 if pool_size is None else pool_size
    cfg.update(crop_mode=crop_mode, mean=mean, std=std, num_classes=num_classes, pool_size=(pool, pool), first_conv="stem.0", classifier="head.fc", license=license)
    cfg["_weights"] = weights
    return cfg


def _v2tag(**kwargs: Any) -> Dict[str, Any]:
    # The ConvNeXt V2 release's license and timm's paper fields for it.
    return {**_tag(license="cc-by-nc-4.0", **kwargs), "paper_ids": "arXiv:2301.00808",
            "paper_name": "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
            "origin_url": "https://github.com/facebookresearch/ConvNeXt-V2"}


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
        # timm records pool_size (15, 15) for this tag (a 512 input gives 16 x 16); its value is kept.
        "fcmae_ft_in22k_in1k_512": _v2tag(size=512, crop_pct=1.0, crop_mode="squash", pool_size=15),
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


_FEATURE_KWARGS = ("out_indices", "feature_cls", "output_fmt", "norm", "prune")


def _create(name: str, pretrained: PretrainedSource, kwargs: Dict[str, Any], call: Optional[str] = None,
            checkpoint_path: Optional[PathLike] = None,
            pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The network, or with ``features_only=True`` timm's feature wrapper around it."""
    kwargs = dict(kwargs)
    features_only = kwargs.pop("features_only", False)
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    for key in ("out_indices", "feature_cls"):
        if key in kwargs:
            if not features_only:
                raise ValueError(f"{call or name + '('}{key}=...) applies to features_only=True models only")
            feature_cfg[key] = kwargs.pop(key)
    if feature_cfg and not features_only:
        raise ValueError(f"{call or name + '('}feature_cfg=...) applies to features_only=True models only")
    feature_cfg.pop("flatten_sequential", None)  # always flattened, as timm builds ConvNeXt's wrapper
    unknown = sorted(set(feature_cfg) - set(_FEATURE_KWARGS))
    if unknown:
        raise ValueError(f"unknown feature_cfg entries {unknown}; known: {', '.join(_FEATURE_KWARGS)}")
    model = _create_network(name, pretrained, kwargs, call, checkpoint_path, pretrained_cfg_overlay)
    if not features_only:
        return model
    from .features import features_model

    return features_model(model, **feature_cfg)


def _create_network(name: str, pretrained: PretrainedSource, kwargs: Dict[str, Any], call: Optional[str] = None,
                    checkpoint_path: Optional[PathLike] = None,
                    pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None) -> ConvNeXt:
    from .models import ConvNeXt  # at call time: models imports this module
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
                 pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> nn.Module:
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
            ``global_pool``, ``output_stride``, ``device``, ...). With ``pretrained`` weights and another
            ``num_classes`` than the checkpoint's, everything but the classifier is loaded and the
            classifier is initialized as in a new model (timm's way to fine-tune); a
            ``checkpoint_path`` given without ``pretrained`` must fit exactly. timm's backbone
            arguments: ``features_only=True`` with ``out_indices`` (default ``(0, 1, 2, 3)``),
            ``feature_cls`` (``"list"`` default, ``"dict"``, ``"getter"``) or ``feature_cfg=dict(...)``
            (those and ``output_fmt``, ``norm``, ``prune``): see :mod:`convnext_fast.features`.

    Returns:
        :class:`ConvNeXt` with ``pretrained_cfg`` set (``pretrained_cfg["tag"]``: the tag); with
        ``features_only=True`` the feature wrapper (:mod:`convnext_fast.features`) around it, with
        ``feature_info`` and the ``pretrained_cfg`` less its classifier entries, as timm's.

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


def _make_factory(name: str) -> Callable[..., nn.Module]:
    cfg = MODEL_CONFIGS[name]
    version = "ConvNeXt V2 (Woo et al. 2023)" if cfg.get("use_grn") else "ConvNeXt (Liu et al. 2022)"

    def factory(pretrained: PretrainedSource = None, *, checkpoint_path: Optional[PathLike] = None,
                pretrained_cfg_overlay: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> nn.Module:
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
            ``drop_path_rate``, ``in_chans``, ``output_stride``, ...), or timm's backbone arguments
            (``features_only=True``, ``out_indices``, ``feature_cls``, ``feature_cfg``: see
            :func:`create_model`).

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
