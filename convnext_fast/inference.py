"""Whole-block inference: :func:`optimize_for_inference` folds each ConvNeXt block's weights and
runs the block as two fused passes over memory.

In inference a block's LayerNorm affine folds into fc1 and its layer scale into fc2
(timm PR #1747 measured the layer-scale fold alone at +8-9%):

* ``W1' = W1 diag(ln_w)``, ``b1' = b1 + W1 ln_b``;
* ``W2' = diag(gamma) W2``, ``b2' = gamma * b2``.

Then a block is ``x + MLP'(LN0(dwconv(x)))`` with a LayerNorm without affine (``LN0``): the fused
depthwise conv + LayerNorm op reads x once and writes its normalized output, and the fused MLP
op (fc1, GELU, [GRN], fc2 and the residual add in its epilogue) reads that and x once and writes
the block's output. Nothing is saved for a backward pass. The folds are computed in float64 and
rounded once to the model's dtype.

On a GPU, where C <= 256 and K <= 7 (ConvNeXt stages 1-2) and there is no GRN, a block can also
run as one Triton kernel (``kernels/block.py``: the depthwise conv + LayerNorm as the prologue of
the flash-style MLP, so the block reads x once and writes once). It runs when the ``triton``
backend is asked for by name; ``auto`` takes it once it passed its parity checks on the device
(the device record, ``convnext_fast.autotune``). Everything else takes the two fused ops.

The stem (4x4 stride-4 conv, then a LayerNorm) and each downsampling layer (a LayerNorm, then a
2x2 stride-2 conv) become one ``patch_linear`` pass each (``patch_linear.py``: the patch GEMM with
its LayerNorms fused; the downsampling LayerNorm's affine folds into the conv). The head (pool,
LayerNorm, Linear) folds its LayerNorm affine into the Linear and runs the pooled features through
one ``patch_linear`` pass (k = 1). These folds happen where the patch kernel runs for the model's
device and dtype under the backend in force when the model is optimized (the CPU kernel in
float32 and bfloat16; the Triton kernel on CUDA once the device record trusts it, or when ``triton`` is asked
for by name); elsewhere those layers keep their modules.

Small batches on a GPU are host-bound (a launch costs more than its kernel runs):
``cuda_graph=True`` replays each input shape's forward as one CUDA graph (``cuda_graph.py``), and
``torch.compile(optimized, mode="reduce-overhead")`` composes with the optimized model as well.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from . import backend, capabilities, direct_block
from .cuda_graph import GraphedForward
from .direct_block import DirectCalls
from .dwconv_ln import dwconv_layer_norm
from .kernels.layout import device_guard, empty_channels_last
from .layers import DepthwiseConv2d, LayerNorm2d
from .mlp import pointwise_mlp
from .models import ClassifierHead, ConvNeXtBlock, ConvNeXtMlp
from .patch_layers import patch_parts
from .patch_linear import fold_norm_into_patch_weight, patch_linear, patch_linear_composite, patch_weight
from .patch_linear import kernel_backend as patch_kernel_backend

__all__ = ["FoldedBlock", "FoldedHead", "FoldedPatchConv", "InferenceStem", "optimize_for_inference"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)




@torch.library.custom_op("convnext_fast::block_fwd", mutates_args=())
def block_fwd(x: Tensor, dw_weight: Tensor, dw_bias: Optional[Tensor], eps: float, fc1_weight: Tensor,
              fc1_bias: Tensor, fc2_weight: Tensor, fc2_bias: Tensor) -> Tensor:
    """A folded block in one Triton kernel (inference only: no autograd)."""
    with device_guard(x):
        return backend.implementation("triton").block_forward(x, dw_weight, dw_bias, eps, fc1_weight, fc1_bias,
                                                              fc2_weight, fc2_bias)


@block_fwd.register_fake
def _(x, dw_weight, dw_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    return empty_channels_last(x.shape, x.dtype, x.device)


def _one_kernel(x: Tensor, k: int) -> bool:
    """Whether a foldable block (K x K depthwise conv) on ``x`` runs as one kernel: the resolver's
    choice for ``folded_block`` (the capability table's dtypes and limits; triton asked for by name,
    or ``auto`` on a device where the kernel passed its parity checks)."""
    from .autotune import may_measure

    requested = backend.requested_backend()
    chosen = backend.resolve("folded_block", x.device, x.shape[2] * x.shape[3], dtype=x.dtype,
                             shape=(*x.shape, k), requested=requested, c=x.shape[1], k=k,
                             measure=requested == "auto" and may_measure(x))
    return chosen == "triton"


_NO_TRAINING = ("this model was made by convnext_fast.optimize_for_inference and runs inference only (its weights "
                "are folded); train the original model instead")


class _InferenceOnly(nn.Module):
    """Base of the modules :func:`optimize_for_inference` puts into a model. Their weights are folded
    and rounded once to the dtype they were built for, so they refuse ``train()`` and any move to
    another dtype (``.half()``, ``.double()``, ``.to(dtype)``) with an error that says what to do
    instead. Moving to another device is not refused. Methods of a module-level class, not
    per-instance closures or hooks, so the model deep-copies and pickles like any other.
    """

    def train(self, mode: bool = True) -> "_InferenceOnly":
        if mode:
            raise RuntimeError(_NO_TRAINING)
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        # What fn does to a tensor of this module's dtype tells a dtype move from a device move;
        # an empty probe costs nothing. Checked before anything moves, so a refused call leaves
        # the module as it was.
        held = next((t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point()), None)
        if held is not None:
            moved = fn(torch.empty(0, dtype=held.dtype, device=held.device))
            if isinstance(moved, Tensor) and moved.is_floating_point() and moved.dtype != held.dtype:
                raise TypeError(
                    f"a model made by convnext_fast.optimize_for_inference holds weights folded in {held.dtype} and "
                    f"cannot move to {moved.dtype} (.half(), .double(), .float(), .to(dtype)): call "
                    f"convnext_fast.optimize_for_inference(original_model, dtype={moved.dtype}) instead, which folds "
                    f"the original weights for that dtype")
        return super()._apply(fn, recurse)


class FoldedBlock(_InferenceOnly):
    """A :class:`~convnext_fast.ConvNeXtBlock` with its LayerNorm affine folded into fc1 and its layer
    scale into fc2, for inference only. Built by :func:`optimize_for_inference`.

    Shape:
        (N, C, H, W) -> (N, C, H, W), channels_last.
    """

    def __init__(self, block: ConvNeXtBlock, dtype: torch.dtype) -> None:
        super().__init__()
        conv, norm, mlp = block.conv_dw, block.norm, block.mlp
        c = conv.weight.shape[0]
        f64 = dict(dtype=torch.float64)
        ln_w, ln_b = norm.weight.detach().to(**f64), norm.bias.detach().to(**f64)
        w1, w2 = mlp.fc1.weight.detach().flatten(1).to(**f64), mlp.fc2.weight.detach().flatten(1).to(**f64)
        b1 = torch.zeros(w1.shape[0], **f64, device=w1.device) if mlp.fc1.bias is None else mlp.fc1.bias.detach().to(**f64)
        b2 = torch.zeros(c, **f64, device=w1.device) if mlp.fc2.bias is None else mlp.fc2.bias.detach().to(**f64)
        gamma = None if block.gamma is None else block.gamma.detach().to(**f64)
        fc1_w, fc1_b = w1 * ln_w[None, :], b1 + w1 @ ln_b
        fc2_w, fc2_b = (w2, b2) if gamma is None else (gamma[:, None] * w2, gamma * b2)
        cast = lambda t: t.to(dtype).contiguous()  # noqa: E731
        self.register_buffer("dw_weight", cast(conv.weight.detach()))
        self.register_buffer("dw_bias", None if conv.bias is None else cast(conv.bias.detach()))
        self.register_buffer("ln_ones", torch.ones(c, dtype=dtype, device=w1.device))
        self.register_buffer("ln_zeros", torch.zeros(c, dtype=dtype, device=w1.device))
        self.register_buffer("fc1_weight", cast(fc1_w))
        self.register_buffer("fc1_bias", cast(fc1_b))
        self.register_buffer("fc2_weight", cast(fc2_w))
        self.register_buffer("fc2_bias", cast(fc2_b))
        grn = mlp.grn
        self.register_buffer("grn_weight", None if grn is None else cast(grn.weight.detach()))
        self.register_buffer("grn_bias", None if grn is None else cast(grn.bias.detach()))
        self.grn_eps = 1e-6 if grn is None else grn.eps
        self.eps = norm.eps
        self.dilation = conv.dilation[0]  # output_stride 16 / 8 backbones; the one-kernel block has none
        k = conv.weight.shape[-1]
        self.one_kernel_ok = (grn is None and self.dilation == 1
                              and not capabilities.reason("folded_block", "triton", c=c, k=k))
        self._direct = DirectCalls()

    def forward(self, x: Tensor) -> Tensor:
        key = DirectCalls.key(x)
        weights = (self.dw_weight, self.dw_bias, self.ln_ones, self.ln_zeros, self.fc1_weight, self.fc1_bias,
                   self.fc2_weight, self.fc2_bias)
        if self._direct.ready(key, *weights):  # a CPU call like one before: the kernels the routes chose then
            dw_w, dw_b, ln_w, ln_b, w1, b1, w2, b2 = weights
            return direct_block.forward(x, dw_w, dw_b, ln_w, ln_b, self.eps, w1, b1, w2, b2, None)
        if self.one_kernel_ok and _one_kernel(x, self.dw_weight.shape[-1]):
            return block_fwd(x, self.dw_weight, self.dw_bias, self.eps, self.fc1_weight, self.fc1_bias,
                             self.fc2_weight, self.fc2_bias)
        y = dwconv_layer_norm(x, self.dw_weight, self.dw_bias, self.ln_ones, self.ln_zeros, self.eps, self.dilation)
        out = pointwise_mlp(y, self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias, shortcut=x,
                            grn_weight=self.grn_weight, grn_bias=self.grn_bias, grn_eps=self.grn_eps)
        if self.dilation == 1 and self.grn_weight is None:
            self._direct.learn(key, x, self.dw_weight, self.ln_ones, self.fc1_weight, self.fc2_weight, self.dw_bias,
                               self.ln_zeros, self.fc1_bias, self.fc2_bias)
        return out

    def _apply(self, fn, recurse: bool = True):
        self._direct.clear()  # moved weights: the next call goes through the routes again
        return super()._apply(fn, recurse)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_direct", DirectCalls())  # a block pickled before the memo existed

    def extra_repr(self) -> str:
        return f"{self.dw_weight.shape[0]}, kernel_size={self.dw_weight.shape[-1]}, grn={self.grn_weight is not None}"


def _patch_linear(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, in_eps: Optional[float],
                  out_weight: Optional[Tensor], out_bias: Optional[Tensor], out_eps: float) -> Tensor:
    # A backend asked for by name without this kernel (``cuda``) runs PyTorch's ops, as blocks do
    # for the MLP.
    if backend.has_kernel("patch_linear", backend.get_backend()):
        return patch_linear(x, weight_t, bias, k, in_eps=in_eps, out_weight=out_weight, out_bias=out_bias,
                            out_eps=out_eps)
    return patch_linear_composite(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)


class FoldedPatchConv(_InferenceOnly):
    """A stem (k x k stride-k conv, then :class:`~convnext_fast.LayerNorm2d`) or downsampling layer
    (:class:`~convnext_fast.LayerNorm2d`, then the conv) as one :func:`~convnext_fast.patch_linear.patch_linear`
    pass, for inference only. A LayerNorm before the conv has its affine folded into the conv's
    weight and bias (in float64, rounded once). Built by :func:`optimize_for_inference`.

    Shape:
        (N, C, H, W) -> (N, O, H // k, W // k), channels_last.
    """

    def __init__(self, conv: nn.Conv2d, in_norm: Optional[LayerNorm2d], out_norm: Optional[LayerNorm2d],
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.k = conv.kernel_size[0]
        weight = conv.weight.detach().double()
        bias = None if conv.bias is None else conv.bias.detach().double()
        self.in_eps = None if in_norm is None else in_norm.eps
        if in_norm is not None:
            ln_b = torch.zeros_like(in_norm.weight) if in_norm.bias is None else in_norm.bias
            weight, bias = fold_norm_into_patch_weight(weight, bias, in_norm.weight, ln_b)
        cast = lambda t: None if t is None else t.detach().to(dtype).contiguous()  # noqa: E731
        self.register_buffer("weight_t", cast(patch_weight(weight)))
        self.register_buffer("bias", cast(bias))
        self.register_buffer("out_weight", None if out_norm is None else cast(out_norm.weight))
        self.register_buffer("out_bias", None if out_norm is None else cast(out_norm.bias))
        self.out_eps = 1e-6 if out_norm is None else out_norm.eps

    def forward(self, x: Tensor) -> Tensor:
        return _patch_linear(x, self.weight_t, self.bias, self.k, self.in_eps, self.out_weight, self.out_bias,
                             self.out_eps)

    def extra_repr(self) -> str:
        c = self.weight_t.shape[0] // (self.k * self.k)
        return (f"{c}, {self.weight_t.shape[1]}, k={self.k}, in_norm={self.in_eps is not None}, "
                f"out_norm={self.out_weight is not None}")


class FoldedHead(_InferenceOnly, ClassifierHead):
    """:class:`~convnext_fast.models.ClassifierHead` (global pool, LayerNorm, Linear) with the
    LayerNorm affine folded into the Linear (``W' = W diag(ln_w)``, ``b' = b + W ln_b``, in float64,
    rounded once): the pooled features run through one ``patch_linear`` pass (k = 1, the LayerNorm
    without affine as its input norm). It keeps the head's ``norm`` and ``fc`` (frozen, in the
    model's dtype): ``pre_logits=True`` returns the features with the original LayerNorm, affine
    included, as the unfolded head does; ``fc`` is what the model's ``get_classifier()`` returns;
    :meth:`reset` (the model's ``reset_classifier``) replaces the classifier and folds the new one
    where it can (a pooled Linear after the LayerNorm), else runs the head unfolded. Built by
    :func:`optimize_for_inference`; inference only (dropout is off in eval mode).

    Shape:
        (N, C, H, W) -> (N, num_classes); (N, C) with ``pre_logits=True`` or no classifier.
    """

    def __init__(self, head: ClassifierHead, dtype: torch.dtype) -> None:
        nn.Module.__init__(self)  # ClassifierHead.__init__ would make new layers: these are the head's own
        self.in_features = head.in_features
        self.pool_type = head.pool_type
        self.register_buffer("weight_t", None)
        self.register_buffer("bias", None)
        self.eps = 1e-6
        self._fold(head.norm, head.fc, dtype)  # from the head's own precision, rounded once
        self.norm = head.norm.to(dtype).requires_grad_(False)
        self.drop = head.drop
        self.fc = head.fc.to(dtype).requires_grad_(False)

    def _fold(self, norm: nn.Module, fc: nn.Module, dtype: torch.dtype) -> None:
        """Fold ``norm``'s affine into ``fc`` as the patch pass reads them; clear the folded weights
        where the head is not a pooled LayerNorm + Linear (it then runs unfolded)."""
        if not (self.pool_type and type(fc) is nn.Linear and type(norm) is nn.LayerNorm and norm.weight is not None):
            self.weight_t, self.bias = None, None
            return
        ln_b = torch.zeros_like(norm.weight) if norm.bias is None else norm.bias
        weight, bias = fold_norm_into_patch_weight(fc.weight[:, :, None, None], fc.bias, norm.weight, ln_b)
        self.weight_t = patch_weight(weight).to(dtype)
        self.bias = bias.to(dtype)
        self.eps = norm.eps

    def reset(self, num_classes: int, pool_type: Optional[str] = None, reset_other: bool = False,
              device=None, dtype=None) -> None:
        """:meth:`ClassifierHead.reset <convnext_fast.models.ClassifierHead.reset>`, then the new
        classifier folded (frozen, like the rest of the optimized model)."""
        super().reset(num_classes, pool_type, reset_other=reset_other, device=device, dtype=dtype)
        self.fc.requires_grad_(False)
        held = next((t for t in (*self.norm.parameters(), *self.fc.parameters()) if t.is_floating_point()), None)
        self._fold(self.norm, self.fc, dtype or (held.dtype if held is not None else torch.get_default_dtype()))

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if pre_logits or self.weight_t is None:
            return super().forward(x, pre_logits=pre_logits)
        pooled = self._pool(x)
        n, c = pooled.shape
        # The class count from the weight, not reshape(n, -1): that cannot infer a size for n = 0.
        return _patch_linear(pooled.reshape(n, c, 1, 1), self.weight_t, self.bias, 1, self.eps, None, None,
                             1e-6).reshape(n, self.weight_t.shape[1])

    def extra_repr(self) -> str:
        classes = "unfolded" if self.weight_t is None else self.weight_t.shape[1]
        return f"{self.in_features}, {classes}, pool_type={self.pool_type!r}"


class InferenceStem(_InferenceOnly):
    """The stem of a model made by :func:`optimize_for_inference` (``body``: the folded or original
    stem), with the model's input checks in front of it, so every entry point that starts at the
    stem (``forward``, ``forward_features``, ``forward_intermediates``) has them:

    * an input that requires grad raises (the folded model has no backward);
    * an input with another channel count than the stem takes raises, naming both;
    * a floating input of another dtype is cast to the model's.

    Shape:
        (N, in_chans, H, W) -> what ``body`` returns.
    """

    def __init__(self, body: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.body = body
        self.input_dtype = dtype
        self.in_chans = _in_channels(body)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("a model made by convnext_fast.optimize_for_inference does not support backward: "
                               "its weights are folded and frozen; run it under torch.no_grad() / "
                               "torch.inference_mode(), or use the original model")
        if self.in_chans is not None and (x.dim() != 4 or x.shape[1] != self.in_chans):
            raise ValueError(f"this model expects images of shape (N, {self.in_chans}, H, W) with {self.in_chans} "
                             f"channels, got an input of shape {tuple(x.shape)}")
        if x.is_floating_point() and x.dtype != self.input_dtype:
            x = x.to(self.input_dtype)
        return self.body(x)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, dtype={self.input_dtype}"


def _in_channels(stem: nn.Module) -> Optional[int]:
    """The channel count ``stem`` takes: its folded patch weight's or its first convolution's."""
    if isinstance(stem, FoldedPatchConv):
        return stem.weight_t.shape[0] // (stem.k * stem.k)
    first = next((m for m in stem.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else first.in_channels


def _foldable_head(head: nn.Module) -> bool:
    return (type(head) is ClassifierHead and head.pool_type != "" and type(head.norm) is nn.LayerNorm
            and type(head.fc) is nn.Linear and head.norm.weight is not None)


def _patch_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d, Optional[LayerNorm2d], Optional[LayerNorm2d]]]:
    """(name, conv, norm before, norm after) of every stem and downsampling layer
    (``patch_layers.patch_parts``)."""
    return [(name, *parts) for name, m in model.named_modules() if name and (parts := patch_parts(m)) is not None]


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    setattr(owner, leaf, new)


def _foldable(block: ConvNeXtBlock) -> bool:
    return (isinstance(block.conv_dw, DepthwiseConv2d) and isinstance(block.norm, LayerNorm2d)
            and type(block.mlp) is ConvNeXtMlp)


def optimize_for_inference(model: nn.Module, *, dtype: Optional[torch.dtype] = None,
                           cuda_graph: bool = False) -> nn.Module:
    """An inference-only copy of ``model`` with every ConvNeXt block folded (see the module docstring).

    The input model is left untouched. The copy computes the same function (float32: relative error
    over the output norm within about 1e-5; lower precision: within bf16 / fp16 rounding of the
    folded weights), keeps ``forward_features`` / ``forward_head`` / ``forward_intermediates``, has
    frozen parameters, and refuses ``train()``, moves to another dtype (``.half()``, ``.double()``,
    ``.to(dtype)``: pass ``dtype=`` here instead), inputs that require grad and inputs with the
    wrong channel count with a clear error. A batch of 0 gives an empty (0, num_classes) output;
    ``get_classifier()`` and ``reset_classifier()`` work as on the original.

    The stem, downsampling layers and head fold where the patch kernel runs for the model's
    device and dtype under the backend in force now (see the module docstring): optimize under
    the backend the model will run with.

    Copying and saving: ``copy.deepcopy`` gives an independent copy, and ``torch.save(optimized,
    path)`` / ``torch.load(path, weights_only=False)`` round-trips the whole module (its classes
    are module-level; loading a pickled module runs code, so load only files you trust). Not with
    ``cuda_graph=True``: captured graphs neither copy nor pickle. To keep weights, save the
    original model's ``state_dict`` and call this after loading it; the folded copy's state dict
    is not a checkpoint format.

    Args:
        model: a ``convnext_fast`` ConvNeXt (V1 or V2), or a timm model made fast with
            :func:`convnext_fast.convert`: anything containing :class:`~convnext_fast.ConvNeXtBlock`
            modules whose ``conv_dw`` / ``norm`` are ``convnext_fast`` modules.
        dtype: run in this dtype (e.g. ``torch.bfloat16``); default: the model's own. Inputs of
            another floating dtype are cast to it at the stem.
        cuda_graph: replay ``forward`` as a CUDA graph, one captured per input shape on its first
            call (:class:`~convnext_fast.cuda_graph.GraphedForward`): for batch 1-16, where launches
            dominate. The model must be on a CUDA device; each call returns a new tensor;
            ``forward_features`` and the other methods stay eager. Do not also ``torch.compile`` it
            (``mode="reduce-overhead"`` is the compiled way to the same end).

    Returns:
        The optimized copy, in eval mode, on the model's device.

    Raises:
        ValueError: the model contains no ConvNeXt block that can be folded.
        TypeError: ``dtype`` is not a floating dtype.
        ValueError: ``cuda_graph=True`` for a model that is not on a CUDA device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__}")
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise TypeError(f"optimize_for_inference expects a floating dtype, got {dtype!r}")
    blocks = [name for name, m in model.named_modules() if isinstance(m, ConvNeXtBlock) and _foldable(m)]
    if not blocks:
        raise ValueError(f"optimize_for_inference found no ConvNeXt block to fold in {type(model).__name__}: pass a "
                         "convnext_fast model or a timm model made fast with convnext_fast.convert()")
    if dtype is None:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if cuda_graph:
        devices = {t.device.type for t in model.parameters()}
        if devices != {"cuda"}:
            raise ValueError(f"optimize_for_inference(cuda_graph=True) needs the model on a CUDA device, found "
                             f"{sorted(devices)}: move it with model.cuda() first, or leave cuda_graph=False")
    optimized = copy.deepcopy(model).eval()
    optimized.requires_grad_(False)
    for name in blocks:
        _replace(optimized, name, FoldedBlock(optimized.get_submodule(name), dtype))
    # The stem, the downsampling layers and the head fold only where the patch kernel will run them;
    # elsewhere (float16 on the CPU; CUDA until a GPU parity run of the kernel is recorded, unless
    # triton is asked for by name) their own modules (LayerNorm2d op + conv) are faster than the
    # patch op's PyTorch route.
    device = next(t for t in (*optimized.parameters(), *optimized.buffers()) if t.is_floating_point()).device
    if patch_kernel_backend(device, dtype) is not None:
        for name, conv, in_norm, out_norm in _patch_layers(optimized):
            _replace(optimized, name, FoldedPatchConv(conv, in_norm, out_norm, dtype))
        for name in [name for name, m in optimized.named_modules() if _foldable_head(m)]:
            _replace(optimized, name, FoldedHead(optimized.get_submodule(name), dtype))
    optimized.to(dtype)  # the layers left unfolded; the folded ones are in dtype already
    stem = getattr(optimized, "stem", None)
    if isinstance(stem, nn.Module):
        # First among the model's children, so train() and dtype moves are refused before any
        # other module changes.
        optimized.stem = InferenceStem(stem, dtype)
    if cuda_graph:
        optimized.forward = GraphedForward(optimized.forward)
    return optimized
