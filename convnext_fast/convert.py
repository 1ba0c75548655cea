"""Make an existing timm or torchvision ConvNeXt fast in place, and go back for export.

:func:`convert` swaps a model's ConvNeXt blocks, channels-first LayerNorms and depthwise
convolutions for ``convnext_fast`` modules that hold the *same* ``nn.Parameter`` objects, so
optimizers, parameter names, state dicts and training code keep working. :func:`to_reference`
swaps them back to plain PyTorch modules (for ONNX / TensorRT export, or to hand the model to code
that expects the originals).

ConvNeXt: Liu et al., "A ConvNet for the 2020s", CVPR 2022. ConvNeXt V2: Woo et al., "ConvNeXt V2:
Co-designing and Scaling ConvNets with Masked Autoencoders", CVPR 2023.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fused_elementwise import drop_path_scale, layer_scale_residual
from .layers import DepthwiseConv2d, LayerNorm2d
from .models import ConvNeXtBlock, ConvNeXtMlp, GlobalResponseNorm
from .patch_layers import PatchConvSequential

__all__ = ["convert", "to_reference", "ReferenceLayerNorm2d", "TorchvisionConvNeXtBlock"]

# Attribute under which a converted module remembers the module it replaced (not a submodule:
# it holds the same Parameter objects and is restored by to_reference).
_ORIGINAL = "_convnext_fast_original"


class ReferenceLayerNorm2d(nn.LayerNorm):
    """Plain-PyTorch channels-first LayerNorm (permute + ``F.layer_norm`` + permute), export-friendly.

    What :func:`to_reference` puts in place of :class:`~convnext_fast.LayerNorm2d` modules that
    were not created by :func:`convert`. Same parameters and state-dict keys.

    Shape:
        (N, C, H, W) -> (N, C, H, W).
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class TorchvisionConvNeXtBlock(nn.Module):
    """torchvision's ``CNBlock`` on the fused ops, keeping its module and parameter names.

    ``block`` keeps torchvision's ``Sequential`` (``block.0`` depthwise conv, now a
    :class:`~convnext_fast.DepthwiseConv2d`; ``block.2`` LayerNorm; ``block.3``/``block.5``
    Linear), ``layer_scale`` (C, 1, 1) and ``stochastic_depth``, so the converted model's state
    dict is unchanged. Built by :func:`convert`; computes what :class:`ConvNeXtBlock` computes.

    Shape:
        (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        seq = original.block
        dw = _fast_dwconv(seq[0])
        if dw is None:
            raise ValueError(f"torchvision CNBlock with an unsupported depthwise conv: {seq[0]}")
        self.block = nn.Sequential(*([dw] + list(seq)[1:]))
        self.layer_scale = original.layer_scale
        self.stochastic_depth = original.stochastic_depth
        self.train(original.training)

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, fc1, fc2 = self.block[0], self.block[2], self.block[3], self.block[5]
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        from .dwconv_ln import dwconv_layer_norm

        y = dwconv_layer_norm(x.to(dt), conv.weight.to(dt), None if conv.bias is None else conv.bias.to(dt),
                              norm.weight.to(dt), norm.bias.to(dt), norm.eps).permute(0, 2, 3, 1)
        y = F.gelu(F.linear(y, fc1.weight, fc1.bias))
        y = F.linear(y, fc2.weight, fc2.bias)
        scale = drop_path_scale(y, self.stochastic_depth.p, self.training)
        return layer_scale_residual(y, self.layer_scale.reshape(-1), x.permute(0, 2, 3, 1), scale).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# Leaf conversions
# ----------------------------------------------------------------------------------------------


def _remember(new: nn.Module, original: nn.Module) -> nn.Module:
    object.__setattr__(new, _ORIGINAL, original)
    new.train(original.training)
    return new


def _is_depthwise(m: nn.Module) -> bool:
    if type(m) is not nn.Conv2d:  # timm's Conv2dSame etc. pad differently: left alone
        return False
    k, d = m.kernel_size, m.dilation
    # Dilated too (timm's output_stride 16 / 8 backbones): "same" padding is dilation * (K // 2).
    return (m.groups == m.in_channels == m.out_channels and k[0] == k[1] and k[0] % 2 == 1 and k[0] <= 31
            and m.stride == (1, 1) and d[0] == d[1] and m.padding == (d[0] * (k[0] // 2),) * 2
            and m.padding_mode == "zeros")


def _fast_dwconv(m: nn.Module) -> Optional[DepthwiseConv2d]:
    if isinstance(m, DepthwiseConv2d):
        return m
    if not _is_depthwise(m):
        return None
    new = DepthwiseConv2d(m.in_channels, m.kernel_size[0], bias=m.bias is not None, device="meta",
                          dilation=m.dilation[0])
    new.weight = m.weight
    if m.bias is not None:
        new.bias = m.bias
    return _remember(new, m)


def _is_channels_first_ln(m: nn.Module) -> bool:
    """timm's and torchvision's LayerNorm2d (permute + layer_norm over C), elementwise affine."""
    cls = type(m)
    if not isinstance(m, nn.LayerNorm) or cls is nn.LayerNorm or isinstance(m, LayerNorm2d):
        return False
    if len(m.normalized_shape) != 1 or m.weight is None or m.bias is None:
        return False
    return (cls.__name__ == "LayerNorm2d" and cls.__module__.split(".")[0] in ("timm", "torchvision")) or \
        cls is ReferenceLayerNorm2d


def _fast_ln(m: nn.Module) -> LayerNorm2d:
    new = LayerNorm2d(m.normalized_shape[0], eps=m.eps, device="meta")
    new.weight, new.bias = m.weight, m.bias
    return _remember(new, m) if type(m) is not ReferenceLayerNorm2d else new


def _is_exact_gelu(act: nn.Module) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    cls = type(act)  # timm.layers.GELU: F.gelu(x), exact
    return cls.__name__ == "GELU" and cls.__module__.startswith("timm.")


def _timm_block_ok(b: nn.Module) -> Optional[str]:
    """None if a timm ConvNeXtBlock can be converted, else why not."""
    if not isinstance(b.shortcut, nn.Identity):
        return "it changes channels or stride (non-identity shortcut)"
    if not _is_depthwise(b.conv_dw):
        return f"its depthwise conv is not a stride-1 'same' conv with an odd kernel: {b.conv_dw}"
    if not isinstance(b.norm, nn.LayerNorm) or b.norm.weight is None or b.norm.bias is None:
        return f"its norm is not an affine LayerNorm: {type(b.norm).__name__}"
    mlp = b.mlp
    if type(mlp).__name__ not in ("Mlp", "GlobalResponseNormMlp"):
        return f"its MLP is a {type(mlp).__name__}"
    if not _is_exact_gelu(mlp.act):
        return f"its activation is {mlp.act}, not exact GELU"
    for name in ("drop1", "drop2"):
        d = getattr(mlp, name, None)
        if isinstance(d, nn.Dropout) and d.p > 0:
            return "its MLP has dropout"
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        return "its MLP has a norm layer"
    for fc in (mlp.fc1, mlp.fc2):
        if fc.bias is None:
            return "its MLP has no bias"
    return None


def _tv_block_ok(b: nn.Module) -> Optional[str]:
    """None if a torchvision CNBlock can be converted, else why not."""
    seq = getattr(b, "block", None)
    if not isinstance(seq, nn.Sequential) or len(seq) != 7:
        return "unexpected CNBlock structure"
    if not _is_depthwise(seq[0]):
        return f"its depthwise conv is not a stride-1 'same' conv with an odd kernel: {seq[0]}"
    if type(seq[2]) is not nn.LayerNorm or seq[2].weight is None or seq[2].bias is None:
        return f"its norm is {seq[2]}, not an affine nn.LayerNorm"
    if not _is_exact_gelu(seq[4]):
        return f"its activation is {seq[4]}, not exact GELU"
    if not all(isinstance(seq[i], nn.Linear) and seq[i].bias is not None for i in (3, 5)):
        return "its MLP is not two biased nn.Linear layers"
    if getattr(b.stochastic_depth, "mode", "row") != "row":
        return f"its stochastic depth mode is {b.stochastic_depth.mode!r}, not 'row'"
    return None


def _convert_timm_block(b: nn.Module) -> ConvNeXtBlock:
    mlp = b.mlp
    use_grn = hasattr(mlp, "grn")
    dim = b.conv_dw.in_channels
    new = ConvNeXtBlock(dim, b.conv_dw.kernel_size[0], mlp_ratio=mlp.fc1.out_channels / dim
                        if isinstance(mlp.fc1, nn.Conv2d) else mlp.fc1.out_features / dim,
                        ls_init_value=None, use_grn=False, conv_mlp=isinstance(mlp.fc1, nn.Conv2d),
                        eps=b.norm.eps, device="meta")
    new.conv_dw = _fast_dwconv(b.conv_dw)
    norm = LayerNorm2d(dim, eps=b.norm.eps, device="meta")
    norm.weight, norm.bias = b.norm.weight, b.norm.bias
    new.norm = _remember(norm, b.norm)
    new_mlp = ConvNeXtMlp.__new__(ConvNeXtMlp)
    nn.Module.__init__(new_mlp)
    new_mlp.fc1 = mlp.fc1
    if use_grn:
        grn = GlobalResponseNorm(mlp.grn.weight.shape[0], eps=mlp.grn.eps, device="meta")
        grn.weight, grn.bias = mlp.grn.weight, mlp.grn.bias
        new_mlp.grn = grn
    else:
        new_mlp.grn = None
    new_mlp.fc2 = mlp.fc2
    new.mlp = new_mlp
    new.gamma = b.gamma
    dp = b.drop_path
    new.drop_path = float(getattr(dp, "drop_prob", 0.0)) if not isinstance(dp, nn.Identity) else 0.0
    if not getattr(dp, "scale_by_keep", True):
        raise ValueError("timm DropPath with scale_by_keep=False is not supported")
    return _remember(new, b)


def _children_items(module: nn.Module):
    return list(module._modules.items())


def convert(model: nn.Module) -> nn.Module:
    """Swap the ConvNeXt parts of ``model`` for ``convnext_fast`` modules, in place.

    * timm ``ConvNeXtBlock`` (V1 and V2, ``conv_mlp`` or not) -> :class:`ConvNeXtBlock` (same
      submodule and parameter names: ``conv_dw``, ``norm``, ``mlp.fc1``, ``mlp.fc2``,
      ``mlp.grn``, ``gamma``);
    * torchvision ``CNBlock`` -> :class:`TorchvisionConvNeXtBlock` (torchvision's names kept);
    * timm/torchvision ``LayerNorm2d`` (stem, downsampling, head) -> :class:`~convnext_fast.LayerNorm2d`;
    * any other stride-1, odd-kernel "same" depthwise ``nn.Conv2d`` -> :class:`~convnext_fast.DepthwiseConv2d`.

    Every new module holds the very ``nn.Parameter`` objects of the one it replaces (an existing
    optimizer keeps working; ``model.state_dict()`` keys do not change). Blocks that cannot be
    expressed exactly (other activations, non-identity shortcuts, ...) are left alone.

    All or nothing: every replacement is built first and the model is changed only once all of
    them were built, so an error leaves ``model`` exactly as it was.

    Args:
        model: any ``nn.Module``, typically a timm or torchvision ConvNeXt.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a block looks convertible but one of its parts is not supported (e.g. timm
            ``DropPath(scale_by_keep=False)``); the message names the block. ``model`` is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    # (parent, attribute name, replacement); building a replacement only reads the module it
    # replaces, so the model is untouched until every swap below is known to be possible.
    swaps: List[Tuple[nn.Module, str, nn.Module]] = []
    skipped: Dict[str, str] = {}

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in _children_items(parent):
            if child is None:
                continue
            path = f"{prefix}{name}"
            try:
                new = _replacement(child, path, skipped)
            except (ValueError, TypeError) as e:
                if type(e) not in (ValueError, TypeError):  # a subclass may need other arguments: as is
                    raise
                raise type(e)(f"convnext_fast.convert cannot convert {path} ({type(child).__name__}): {e}; "
                              f"the model was left unchanged") from e
            if new is not None:
                swaps.append((parent, name, new))
            else:
                visit(child, path + ".")

    visit(model, "")
    done: List[Tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent, name, new in swaps:
            done.append((parent, name, parent._modules[name]))
            setattr(parent, name, new)
    except BaseException:  # a parent whose __setattr__ refuses: undo the swaps made so far
        for parent, name, old in reversed(done):
            parent._modules[name] = old
        raise
    if skipped:
        warnings.warn("convnext_fast.convert left these blocks unchanged: "
                      + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:10]), stacklevel=2)
    if not swaps:
        warnings.warn(f"convnext_fast.convert found nothing to convert in {type(model).__name__}", stacklevel=2)
    return model


def _replacement(child: nn.Module, path: str, skipped: Dict[str, str]) -> Optional[nn.Module]:
    """The ``convnext_fast`` module to put in place of ``child`` (None: none; ``child`` unchanged).

    Records blocks that look like ConvNeXt blocks but cannot be converted in ``skipped``.
    """
    cls = type(child)
    if cls.__name__ == "ConvNeXtBlock" and cls.__module__.startswith("timm."):
        why = _timm_block_ok(child)
        if why is None:
            return _convert_timm_block(child)
        skipped[path] = why
    elif cls.__name__ == "CNBlock" and cls.__module__.startswith("torchvision."):
        why = _tv_block_ok(child)
        if why is None:
            return _remember(TorchvisionConvNeXtBlock(child), child)
        skipped[path] = why
    elif _is_channels_first_ln(child):
        return _fast_ln(child)
    elif _is_depthwise(child):
        return _fast_dwconv(child)
    return None


def _restore(new: nn.Module) -> nn.Module:
    """The module ``new`` replaced, holding ``new``'s current parameters and training mode."""
    original: nn.Module = getattr(new, _ORIGINAL)
    originals = dict(original.named_parameters(remove_duplicate=False))
    for name, p in new.named_parameters(remove_duplicate=False):
        if name in originals and originals[name] is not p:
            owner, _, leaf = name.rpartition(".")
            setattr(original.get_submodule(owner) if owner else original, leaf, p)
    original.train(new.training)
    return original


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every ``convnext_fast`` module in ``model`` by plain PyTorch modules, in place.

    Modules made by :func:`convert` become the timm/torchvision modules they replaced again.
    The rest (e.g. inside :class:`convnext_fast.models.ConvNeXt`):
    :class:`~convnext_fast.DepthwiseConv2d` -> ``nn.Conv2d`` and :class:`~convnext_fast.LayerNorm2d`
    -> :class:`ReferenceLayerNorm2d`, :class:`~convnext_fast.patch_layers.PatchConvSequential` ->
    ``nn.Sequential``; a :class:`ConvNeXtBlock` whose ``conv_dw``/``norm`` are plain
    modules runs plain PyTorch ops. Parameters stay the same objects. The result exports with
    ``torch.onnx.export`` / ``torch.export`` without custom ops.

    Args:
        model: a model containing ``convnext_fast`` modules (or one itself).

    Returns:
        The model (a new object only if ``model`` itself was a converted module).
    """

    def plain(m: nn.Module) -> Optional[nn.Module]:
        if hasattr(m, _ORIGINAL):
            return _restore(m)
        if isinstance(m, DepthwiseConv2d):
            new = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, padding=m.padding, dilation=m.dilation,
                            groups=m.groups, bias=m.bias is not None, device="meta")
            new.weight = m.weight
            if m.bias is not None:
                new.bias = m.bias
            return new.train(m.training)
        if isinstance(m, LayerNorm2d):
            new = ReferenceLayerNorm2d(m.normalized_shape[0], eps=m.eps, device="meta")
            new.weight, new.bias = m.weight, m.bias
            return new.train(m.training)
        if isinstance(m, PatchConvSequential):  # its modules, one after the other (converted in turn)
            return nn.Sequential(*m).train(m.training)
        return None

    def visit(parent: nn.Module) -> None:
        for name, child in _children_items(parent):
            if child is None:
                continue
            new = plain(child)
            if new is not None:
                setattr(parent, name, new)
                child = new
            visit(child)

    top = plain(model)
    if top is not None:
        model = top
    visit(model)
    return model
