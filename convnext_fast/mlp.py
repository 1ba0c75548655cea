"""The MLP half of a ConvNeXt block, ``shortcut + drop_scale * gamma * fc2(GELU(fc1(x)))`` over the
channels of an (N, C, H, W) tensor: its checks, its registered ops and its one route (``route.py``).

Liu et al., "A ConvNet for the 2020s", CVPR 2022 (section 2.4, the inverted bottleneck C -> 4C -> C
with layer scale and stochastic depth); Woo et al., "ConvNeXt V2", CVPR 2023 (GRN between GELU and
fc2).

The kernels work on token rows: the channels_last view of ``x`` flattened to (M, C), M = N*H*W,
which is a free view of a channels_last tensor (any other layout is copied into it first). The
route's Function takes the caller's (N, C, H, W) tensors and weights of either storage, hands the
launchers rows, 2-D weights and a float32 per-sample scale, and returns the gradients in the
caller's shapes.

Backend contract (``convnext_fast.kernels.launchers`` for ``triton``, ``convnext_fast.extension`` for
``cpu``; the compiled extension has no CUDA kernel for this op):

* ``mlp_forward(x, w1, b1, w2, b2, gamma, shortcut, sample_scale, rows_per_sample, save_hidden)
  -> (out, h)``: x / shortcut (M, C) with contiguous rows, w1 (Hd, C) and w2 (C, Hd) contiguous,
  sample_scale float32 (N,) (row r uses ``sample_scale[r // rows_per_sample]``), optional terms
  None; out (M, C) contiguous, h the (M, Hd) pre-activation when ``save_hidden`` else None.
* ``mlp_backward(grad_out, x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample, h)
  -> (gx, gw1, gb1, gw2, gb2, ggamma)``: grad_out (M, C) of any strides, h saved or None
  (recomputed); None for the gradients of absent terms. The shortcut's gradient is grad_out itself.

The Triton kernels compute in float16, bfloat16 and float32, the CPU kernel in bfloat16 and float32
(``convnext_fast.capabilities``); other dtypes (float64 always) run PyTorch's composite, and so does
a backend asked for by name that has no kernel for this op (the compiled extension's ``cuda``): the
model keeps running, its MLP half in PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from . import capabilities
from .backend import implementation
from .fused_elementwise import mlp_composite
from .kernels.layout import device_guard
from .route import (check_eps, check_params, check_x, direct_ok, needs_graph, needs_reference, reference_backward,
                    resolve_backward, resolve_forward)

__all__ = ["pointwise_mlp"]

OP = "pointwise_mlp"
# The dtypes each backend's kernels compute in, from the capability table (their launchers raise
# NotImplementedError for the others); a call in any other dtype takes the composite, decided before
# autograd records anything.
KERNEL_DTYPES = {b: tuple(capabilities.capability(OP, b).dtypes) for b in capabilities.kernel_backends(OP)}


# ---------------------------------------------------------------------------------------- checks


def _check_weight(name: str, w: Tensor, rows: int, cols: int, rows_name: str, cols_name: str) -> None:
    if w.shape[:2] != (rows, cols) or w.dim() not in (2, 4) or (w.dim() == 4 and w.shape[2:] != (1, 1)):
        raise ValueError(f"{OP} expects {name} of shape ({rows_name}, {cols_name}) or ({rows_name}, {cols_name}, 1, 1) "
                         f"with {rows_name}={rows} and {cols_name}={cols}, got {tuple(w.shape)}")


def _check_vector(name: str, t: Optional[Tensor], size: int, what: str) -> None:
    if t is not None and tuple(t.shape) != (size,):
        raise ValueError(f"{OP} expects {name} of shape ({size},) ({what}), got {tuple(t.shape)}")


def _check(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
           fc2_bias: Optional[Tensor], gamma: Optional[Tensor], shortcut: Optional[Tensor],
           grn_weight: Optional[Tensor], grn_bias: Optional[Tensor], drop_scale: Optional[Tensor],
           grn_eps) -> int:
    """Every argument of :func:`pointwise_mlp`; returns the hidden width Hd."""
    check_x(OP, x)
    check_params(OP, x, ("fc1_weight", "fc2_weight"), fc1_weight=fc1_weight, fc1_bias=fc1_bias,
                 fc2_weight=fc2_weight, fc2_bias=fc2_bias, gamma=gamma, shortcut=shortcut, grn_weight=grn_weight,
                 grn_bias=grn_bias)
    c = x.shape[1]
    if fc1_weight.dim() not in (2, 4) or fc1_weight.shape[1] != c:
        raise ValueError(f"{OP} expects fc1_weight of shape (Hd, C) or (Hd, C, 1, 1) with C={c} (the channel "
                         f"count of x), got {tuple(fc1_weight.shape)}")
    hd = fc1_weight.shape[0]
    _check_weight("fc1_weight", fc1_weight, hd, c, "Hd", "C")
    if fc2_weight.dim() in (2, 4) and fc2_weight.shape[0] == c and fc2_weight.shape[1] != hd:
        raise ValueError(f"{OP} expects fc2_weight of shape (C, Hd) with Hd={hd} (the hidden width of fc1_weight "
                         f"{tuple(fc1_weight.shape)}), got {tuple(fc2_weight.shape)}")
    _check_weight("fc2_weight", fc2_weight, c, hd, "C", "Hd")
    _check_vector("fc1_bias", fc1_bias, hd, "the hidden width Hd")
    _check_vector("fc2_bias", fc2_bias, c, "the channel count of x")
    _check_vector("gamma", gamma, c, "the channel count of x")
    if shortcut is not None and shortcut.shape != x.shape:
        raise ValueError(f"{OP} expects shortcut of the shape of x {tuple(x.shape)}, got {tuple(shortcut.shape)}")
    if (grn_weight is None) != (grn_bias is None):
        given, missing = ("grn_weight", "grn_bias") if grn_bias is None else ("grn_bias", "grn_weight")
        raise ValueError(f"{OP} got {given} without {missing}: GRN needs both (or neither)")
    _check_vector("grn_weight", grn_weight, hd, "the hidden width Hd")
    _check_vector("grn_bias", grn_bias, hd, "the hidden width Hd")
    check_eps(OP, grn_eps, "grn_eps")
    if drop_scale is not None:
        if not isinstance(drop_scale, Tensor):
            raise TypeError(f"{OP} expects drop_scale to be a torch.Tensor, got {type(drop_scale).__name__}")
        if not drop_scale.is_floating_point():
            raise TypeError(f"{OP} expects a floating-point drop_scale, got dtype {drop_scale.dtype}")
        if drop_scale.device != x.device:
            raise ValueError(f"{OP} expects all tensors on one device: x is on {x.device}, drop_scale on "
                             f"{drop_scale.device}")
        n = x.shape[0]
        if tuple(drop_scale.shape) not in ((n,), (n, 1, 1, 1)):
            raise ValueError(f"{OP} expects drop_scale of shape ({n},) or ({n}, 1, 1, 1) (one factor per sample, "
                             f"N={n}), got {tuple(drop_scale.shape)}")
    return hd


# --------------------------------------------------------------------------------- rows and outputs


def _rows(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (M, C) token rows with contiguous rows: a view of a channels_last tensor, a
    copy of any other layout. Explicit sizes, not -1: C may be 0."""
    n, c, h, w = t.shape
    r = t.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return r if r.is_contiguous() else r.contiguous()


def _nchw(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """(M, C) contiguous rows -> the (N, C, H, W) channels_last view of them."""
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def _contig(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _absent(x: Tensor) -> Tensor:
    """Stands for an absent output of a registered op (a schema cannot return None)."""
    return torch.empty(0, dtype=x.dtype, device=x.device)


def _forward_outputs(x: Tensor, hd: int, save_hidden: bool) -> tuple[Tensor, Tensor]:
    """(out, h) as the forward returns them: (M, C) and (M, Hd) contiguous, h absent unless saved.
    The fake, the empty-input path and (through ``.contiguous()``) the kernels all agree with it."""
    m, c = x.shape
    out = torch.empty((m, c), dtype=x.dtype, device=x.device)
    return out, (torch.empty((m, hd), dtype=x.dtype, device=x.device) if save_hidden else _absent(x))


def _backward_outputs(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
                      gamma: Optional[Tensor], zero: bool) -> tuple[Tensor, ...]:
    """(gx, gw1, gb1, gw2, gb2, ggamma) as the backward returns them: each the shape of its input,
    contiguous, absent for absent terms; zeros when ``zero`` (the gradients of an empty input)."""
    new = torch.zeros if zero else torch.empty

    def like(t: Optional[Tensor]) -> Tensor:
        return _absent(x) if t is None else new(tuple(t.shape), dtype=t.dtype, device=t.device)

    return (torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device), like(w1), like(b1), like(w2), like(b2),
            like(gamma))


# --------------------------------------------------------------------------------- the two passes


def _forward(backend: str, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
             gamma: Optional[Tensor], shortcut: Optional[Tensor], sample_scale: Optional[Tensor],
             rows_per_sample: int, save_hidden: bool) -> tuple[Tensor, Tensor]:
    if x.numel() == 0:  # no rows, or C = 0: nothing to compute, and the backward returns zeros
        return _forward_outputs(x, w1.shape[0], save_hidden)
    with device_guard(x):
        out, h = implementation(backend).mlp_forward(x, w1.contiguous(), _contig(b1), w2.contiguous(), _contig(b2),
                                                     _contig(gamma), shortcut, sample_scale, rows_per_sample,
                                                     save_hidden)
    return out.contiguous(), (h.contiguous() if save_hidden else _absent(x))


def _backward(backend: str, grad_out: Tensor, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor], gamma: Optional[Tensor], sample_scale: Optional[Tensor], rows_per_sample: int,
              h: Optional[Tensor]) -> tuple[Tensor, ...]:
    if x.numel() == 0:
        return _backward_outputs(x, w1, b1, w2, b2, gamma, zero=True)
    with device_guard(x):
        grads = implementation(backend).mlp_backward(grad_out, x, w1.contiguous(), _contig(b1), w2.contiguous(),
                                                     _contig(b2), _contig(gamma), sample_scale, rows_per_sample, h)
    return tuple(_absent(x) if g is None else g.contiguous() for g in grads)


@torch.library.custom_op("convnext_fast::mlp_fwd", mutates_args=())
def mlp_fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], gamma: Optional[Tensor],
            shortcut: Optional[Tensor], sample_scale: Optional[Tensor], rows_per_sample: int, save_hidden: bool,
            backend: str, bwd_backend: str = "") -> tuple[Tensor, Tensor]:
    """Registered forward on token rows: (out (M, C), h (M, Hd), or an empty tensor unless
    ``save_hidden``). ``bwd_backend`` is kept for saved programs; the Function holds it."""
    return _forward(backend, x, w1, b1, w2, b2, gamma, shortcut, sample_scale, rows_per_sample, save_hidden)


@mlp_fwd.register_fake
def _(x, w1, b1, w2, b2, gamma, shortcut, sample_scale, rows_per_sample, save_hidden, backend, bwd_backend=""):
    return _forward_outputs(x, w1.shape[0], save_hidden)


@torch.library.custom_op("convnext_fast::mlp_bwd", mutates_args=())
def mlp_bwd(grad_out: Tensor, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor],
            gamma: Optional[Tensor], sample_scale: Optional[Tensor], rows_per_sample: int, h: Optional[Tensor],
            backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Registered backward: (gx, gw1, gb1, gw2, gb2, ggamma), an empty tensor for each absent term."""
    return _backward(backend, grad_out, x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample, h)


@mlp_bwd.register_fake
def _(grad_out, x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample, h, backend):
    return _backward_outputs(x, w1, b1, w2, b2, gamma, zero=False)


class PointwiseMlpFunction(torch.autograd.Function):
    """Takes the caller's (N, C, H, W) tensors and weights of either storage, runs the kernels on
    token rows and 2-D weights, and returns the (N, C, H, W) channels_last view of the output rows.
    Saves x, the weights, gamma, the sample scale and, when the forward stored it (``save_hidden``),
    the pre-activation h; else the backward recomputes h. See ``DepthwiseConvFunction`` for
    ``direct`` and ``requested``."""

    @staticmethod
    def forward(ctx, x: Tensor, fc1_weight: Tensor, b1: Optional[Tensor], fc2_weight: Tensor, b2: Optional[Tensor],
                gamma: Optional[Tensor], shortcut: Optional[Tensor], sample_scale: Optional[Tensor],
                save_hidden: bool, backend: str, requested: str, direct: bool) -> Tensor:
        n, _, h, w = x.shape
        args = (_rows(x), fc1_weight.flatten(1), b1, fc2_weight.flatten(1), b2, gamma,
                None if shortcut is None else _rows(shortcut), sample_scale, h * w, save_hidden)
        if direct:
            out, hidden = _forward(backend, *args)
        else:
            out, hidden = mlp_fwd(*args, backend)
        ctx.save_for_backward(x, fc1_weight, b1, fc2_weight, b2, gamma, sample_scale,
                              hidden if save_hidden else None)
        ctx.requested, ctx.direct = requested, direct
        # Detached: autograd forbids in-place changes of a view created inside a Function (users do
        # ``y += ...``); a detached alias of the rows is the same memory without being a view.
        return _nchw(out, n, h, w).detach()

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, fc1_weight, b1, fc2_weight, b2, gamma, sample_scale, hidden = ctx.saved_tensors
        need = ctx.needs_input_grad
        # y = shortcut + (terms that do not depend on it): its gradient is grad_y, in every mode.
        tail = (grad_y if need[6] else None, None, None, None, None, None)
        if not any(need[:6]):
            return (None,) * 6 + tail
        fn = lambda *t: reference.pointwise_mlp(*t[:5], gamma=t[5], drop_scale=sample_scale)  # noqa: E731
        if torch.is_grad_enabled():  # the backward itself is recorded: double backward
            return (*reference_backward(fn, (x, fc1_weight, b1, fc2_weight, b2, gamma), need[:6], grad_y), *tail)
        n, c, h, w = x.shape
        backend = resolve_backward(OP, x, (n, c, h, w, fc1_weight.shape[0]), ctx.requested, grad_y, c=c)
        if backend == "reference":
            return (*reference_backward(fn, (x, fc1_weight, b1, fc2_weight, b2, gamma), need[:6], grad_y,
                                        create_graph=False), *tail)
        # x was saved as given: its rows are a view again for channels_last x; another layout is
        # copied once more here rather than kept alive as a second copy between the passes. The
        # rows of grad_y: a view when it is channels_last or expanded (stride 0), else a copy.
        args = (grad_y.permute(0, 2, 3, 1).reshape(n * h * w, c), _rows(x), fc1_weight.flatten(1), b1,
                fc2_weight.flatten(1), b2, gamma, sample_scale, h * w, hidden)
        if ctx.direct:
            grads = _backward(backend, *args)
        else:
            grads = mlp_bwd(*args, backend)
        gx, gw1, gb1, gw2, gb2, ggamma = grads
        return (_nchw(gx, n, h, w), gw1.view(fc1_weight.shape), gb1 if b1 is not None else None,
                gw2.view(fc2_weight.shape), gb2 if b2 is not None else None, ggamma if gamma is not None else None,
                *tail)


def resolve(x: Tensor, fc1_weight: Tensor, fc2_weight: Tensor, shortcut: Optional[Tensor]) -> tuple[str, str]:
    """(the forward's backend, the backend asked for) of a call on ``x`` with these weights."""
    n, c, h, w = x.shape
    return resolve_forward(OP, x, (n, c, h, w, fc1_weight.shape[0]), fc1_weight, fc2_weight, shortcut, c=c)


def pointwise_mlp(x: Tensor, fc1_weight: Tensor, fc1_bias: Optional[Tensor], fc2_weight: Tensor,
                  fc2_bias: Optional[Tensor], *, gamma: Optional[Tensor] = None, shortcut: Optional[Tensor] = None,
                  grn_weight: Optional[Tensor] = None, grn_bias: Optional[Tensor] = None,
                  drop_scale: Optional[Tensor] = None, grn_eps: float = 1e-6) -> Tensor:
    """The MLP half of a ConvNeXt block: ``shortcut + drop_scale * gamma * fc2(GRN(GELU(fc1(x))))``,
    the Linear layers acting on the channels of each pixel; GELU is the exact (erf) one. The same
    math as ``reference.pointwise_mlp``.

    The kernels fuse fc1, GELU, fc2, layer scale, stochastic depth and the residual. These calls
    run PyTorch instead (``fused_elementwise.mlp_composite``: the reference's math in the fewest
    PyTorch passes, PyTorch's autograd):

    * GRN (``grn_weight`` given): its normalizer is a norm over each image's whole hidden
      activation, which a kernel working on tiles of rows cannot form in one pass;
    * a dtype the backend's kernels do not compute in (float64 always, float16 on ``cpu``);
    * a backend asked for by name that has no MLP kernel (``cuda``: the compiled extension's MLP is
      CPU-only), so that a model runs under it;
    * a ``drop_scale`` that requires grad (the kernels give it no gradient);
    * forward-mode AD and torch.func transforms.

    Double backward (a backward recorded with ``create_graph=True``) differentiates the reference.

    Args:
        x: (N, C, H, W), any memory layout (channels_last is the fast case: its token rows are a
            view; any other layout is copied into channels_last first).
        fc1_weight: (Hd, C) (``nn.Linear``) or (Hd, C, 1, 1) (the 1x1 convolution of timm's
            ``conv_mlp`` models); fc1_bias: optional (Hd,).
        fc2_weight: (C, Hd) or (C, Hd, 1, 1); fc2_bias: optional (C,).
        gamma: optional layer scale (C,).
        shortcut: optional residual (N, C, H, W), any layout, added to the result.
        grn_weight, grn_bias: optional GRN parameters (Hd,), both or neither (ConvNeXt V2).
        drop_scale: optional per-sample stochastic-depth factor, (N,) or (N, 1, 1, 1), any floating
            dtype; it is rounded to x's dtype as the reference does.
        grn_eps: GRN epsilon (a positive number).

    Every tensor but ``drop_scale`` has x's dtype and all are on x's device.

    Returns:
        (N, C, H, W) tensor in channels_last memory order (the reference returns what PyTorch returns).

    Raises:
        TypeError / ValueError: a bad argument (the message names the shapes, dtypes or devices).
        convnext_fast.BackendUnavailableError: a backend asked for by name cannot run this op.
    """
    hd = _check(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gamma, shortcut, grn_weight, grn_bias, drop_scale,
                grn_eps)
    n, c, h, w = x.shape
    # A backend asked for by name without a kernel for this call gets "reference": the composite.
    backend, requested = resolve(x, fc1_weight, fc2_weight, shortcut)
    if backend == "reference" or needs_reference() or grn_weight is not None or hd == 0 or needs_graph(drop_scale):
        return mlp_composite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gamma, shortcut, grn_weight, grn_bias,
                             drop_scale, float(grn_eps))
    # The reference multiplies by drop_scale rounded to x's dtype; the kernels read it as float32.
    s = None if drop_scale is None else drop_scale.detach().reshape(n).to(x.dtype).to(torch.float32).contiguous()
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, gamma, shortcut)
    direct = direct_ok(x, *params, drop_scale)
    graph = needs_graph(x, *params)
    if direct and not graph:
        out = _forward(backend, _rows(x), fc1_weight.flatten(1), fc1_bias, fc2_weight.flatten(1), fc2_bias, gamma,
                       None if shortcut is None else _rows(shortcut), s, h * w, False)[0]
        return _nchw(out, n, h, w)
    return PointwiseMlpFunction.apply(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gamma, shortcut, s, graph,
                                      backend, requested, direct)
