"""ConvNeXt's patch convolutions with their LayerNorms fused, for inference: the stem (4x4 stride-4
conv, then a LayerNorm) and the downsampling layers (a LayerNorm, then a 2x2 stride-2 conv).

Liu et al., "A ConvNet for the 2020s", CVPR 2022 (section 2.2, "patchify" stem; separate
downsampling layers). With stride equal to the kernel size the patches do not overlap, so the conv
is one GEMM over patch rows (each output pixel's k x k input pixels, (kh, kw, c) in order, a row of
K = k*k*C values) and the norms fit around it: one pass reads the input and writes the output.

    u = x, or LN0(x): each input pixel normalized over its C channels, without affine (in_eps)
    y = patches(u) @ weight_t + bias
    out = y, or LayerNorm over the O output channels with out_weight / out_bias (out_eps)

A downsampling layer's LayerNorm affine folds into its conv, as ``optimize_for_inference`` does
(``fold_norm_into_patch_weight``): the patches do not overlap and there is no padding, so every tap
sees a normalized pixel and ``W (ln_w * u + ln_b) = (W diag(ln_w)) u + W ln_b`` exactly. The
stem's LayerNorm comes after the conv and stays an output norm.

The weight is taken as ``weight_t`` (K, O) (``patch_weight(conv.weight)``), laid out once when a
model is optimized: the kernels read it as stored, as the B operand of the patch GEMM.

One route: checks -> backend choice -> the kernel (``patch_linear_forward`` of the ``cpu`` or
``triton`` backend; directly, or through the registered op ``convnext_fast::patch_linear_fwd`` under
torch.compile, export and dispatch modes) when nothing needs a gradient and the dtype is one the
kernel computes in; else ``patch_linear_composite`` (PyTorch's ops, PyTorch's autograd).

Backend contract: ``patch_linear_forward(x, weight_t, bias, k, in_eps, out_weight, out_bias,
out_eps) -> out``: x (N, C, H, W) of any layout, weight_t (K, O) contiguous, vectors (O,)
contiguous or None, all of x's dtype; out a new (N, O, H // k, W // k) channels_last tensor.
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import capabilities
from .backend import BackendUnavailableError, implementation, resolve
from .kernels.layout import device_guard, empty_channels_last
from .route import check_eps, check_params, check_x, direct_ok, needs_graph, needs_reference, resolve_forward

__all__ = ["patch_linear", "patch_linear_composite", "patch_weight", "fold_norm_into_patch_weight", "kernel_backend"]

OP = "patch_linear"
# The dtypes each backend's kernel computes in, from the capability table (the others run the
# composite; so does a Triton output LayerNorm wider than the table's max_out_norm).
KERNEL_DTYPES = {b: tuple(capabilities.capability(OP, b).dtypes) for b in capabilities.kernel_backends(OP)}


def kernel_backend(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The backend whose kernel :func:`patch_linear` runs for (inference) inputs of this device and
    dtype under the backend in force, or None when it runs ``patch_linear_composite`` there. Under
    ``auto`` on a GPU this may run the kernel's parity checks there (once per device and dtype: the
    device record); shapes are timed at the calls themselves."""
    from .autotune import may_measure
    from .backend import requested_backend

    requested = requested_backend()
    measure = (lambda: may_measure(torch.empty(0, device=device))) if requested == "auto" else False
    try:
        backend = resolve(OP, device, dtype=dtype, requested=requested, measure=measure)
    except BackendUnavailableError:
        return None
    return None if backend == "reference" else backend


def patch_weight(conv_weight: Tensor) -> Tensor:
    """A k x k conv weight (O, C, k, k), as ``nn.Conv2d`` stores it, as the (k*k*C, O) matrix the
    kernels read: row ``(kh * k + kw) * C + c``. A new contiguous tensor."""
    o = conv_weight.shape[0]
    return conv_weight.permute(2, 3, 1, 0).reshape(-1, o).contiguous()


def fold_norm_into_patch_weight(conv_weight: Tensor, conv_bias: Optional[Tensor], ln_weight: Tensor,
                                ln_bias: Tensor) -> tuple[Tensor, Tensor]:
    """(conv weight, conv bias) of ``conv(LN(x))`` rewritten for ``conv(LN0(x))``, LN0 the same
    LayerNorm without affine: ``W' = W diag(ln_w)`` per input channel, ``b' = b + sum W ln_b``.
    Exact for a conv without padding (each tap sees a normalized pixel). Computed in float64;
    returned in float64 for the caller to round once."""
    w = conv_weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if conv_bias is None \
        else conv_bias.detach().double()
    lw, lb = ln_weight.detach().double(), ln_bias.detach().double()
    return w * lw[None, :, None, None], b + torch.einsum("ochw,c->o", w, lb)


def _check(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k, in_eps, out_weight: Optional[Tensor],
           out_bias: Optional[Tensor], out_eps) -> None:
    check_x(OP, x)
    check_params(OP, x, ("weight_t",), weight_t=weight_t, bias=bias, out_weight=out_weight, out_bias=out_bias)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"{OP} expects the patch size k to be a positive integer, got {k!r}")
    n, c, h, w = x.shape
    if h < k or w < k:
        raise ValueError(f"{OP} expects an input of at least k x k = {k} x {k} pixels, got H={h}, W={w}")
    if weight_t.dim() != 2 or weight_t.shape[0] != k * k * c:
        raise ValueError(f"{OP} expects weight_t of shape (k*k*C, O) = ({k * k * c}, O) for k={k}, C={c} "
                         f"(patch_weight(conv.weight) makes it), got {tuple(weight_t.shape)}")
    o = weight_t.shape[1]
    for name, t in (("bias", bias), ("out_weight", out_weight), ("out_bias", out_bias)):
        if t is not None and tuple(t.shape) != (o,):
            raise ValueError(f"{OP} expects {name} of shape ({o},) (the output channels O), got {tuple(t.shape)}")
    if out_bias is not None and out_weight is None:
        raise ValueError(f"{OP} got out_bias without out_weight: the output LayerNorm needs out_weight")
    if in_eps is not None:
        check_eps(OP, in_eps, "in_eps")
    check_eps(OP, out_eps, "out_eps")


def patch_linear_composite(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, in_eps: Optional[float],
                           out_weight: Optional[Tensor], out_bias: Optional[Tensor], out_eps: float) -> Tensor:
    """The same math in PyTorch's ops, differentiable: the reference of the kernels and the route for
    everything they do not serve. LayerNorms on the NHWC view; the patches gathered into rows (one
    copy of the input, none for k = 1) and multiplied with ``weight_t`` as stored (a plain GEMM: a
    conv would need the weight in its own layout, and reordering it on every call cost more than
    the gather)."""
    n, c, h, w = x.shape
    o, ho, wo = weight_t.shape[1], h // k, w // k
    u = x[:, :, :ho * k, :wo * k].permute(0, 2, 3, 1)
    if in_eps is not None:
        u = F.layer_norm(u, (c,), eps=float(in_eps))
    rows = u.reshape(n, ho, k, wo, k, c).transpose(2, 3).reshape(n * ho * wo, k * k * c)
    y = rows @ weight_t if bias is None else torch.addmm(bias, rows, weight_t)
    if out_weight is not None:
        y = F.layer_norm(y, (o,), out_weight, out_bias, float(out_eps))
    return y.view(n, ho, wo, o).permute(0, 3, 1, 2)


def _out_shape(x: Tensor, weight_t: Tensor, k: int) -> tuple[int, int, int, int]:
    n, _, h, w = x.shape
    return n, weight_t.shape[1], h // k, w // k


def _forward(backend: str, x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, in_eps: Optional[float],
             out_weight: Optional[Tensor], out_bias: Optional[Tensor], out_eps: float) -> Tensor:
    if x.numel() == 0 or weight_t.shape[1] == 0:
        out = empty_channels_last(_out_shape(x, weight_t, k), x.dtype, x.device)
        if out.numel():  # C = 0: the patch sums are empty, the output is the bias (then the norm)
            return patch_linear_composite(x, weight_t, bias, k, None, out_weight, out_bias, out_eps)
        return out
    contig = lambda t: None if t is None else t.contiguous()  # noqa: E731
    with device_guard(x):
        return implementation(backend).patch_linear_forward(x, weight_t.contiguous(), contig(bias), k, in_eps,
                                                            contig(out_weight), contig(out_bias), out_eps)


@torch.library.custom_op("convnext_fast::patch_linear_fwd", mutates_args=())
def patch_linear_fwd(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, in_eps: Optional[float],
                     out_weight: Optional[Tensor], out_bias: Optional[Tensor], out_eps: float, backend: str) -> Tensor:
    """Registered forward of :func:`patch_linear` on a kernel backend (inference only: no autograd)."""
    return _forward(backend, x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)


@patch_linear_fwd.register_fake
def _(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps, backend):
    return empty_channels_last(_out_shape(x, weight_t, k), x.dtype, x.device)


def patch_linear(x: Tensor, weight_t: Tensor, bias: Optional[Tensor], k: int, *, in_eps: Optional[float] = None,
                 out_weight: Optional[Tensor] = None, out_bias: Optional[Tensor] = None,
                 out_eps: float = 1e-6) -> Tensor:
    """A k x k, stride-k convolution (no padding) with optional LayerNorms before (over C, without
    affine) and after (over O, with affine), in one pass: ConvNeXt's stem and downsampling layers
    (see the module docstring).

    The kernels serve inference; a call that autograd must record (an input requiring grad, grad
    mode on), forward-mode AD, torch.func transforms, the ``reference`` backend and a dtype the
    kernel does not compute in (float64; float16 on ``cpu``) and, on ``triton``, an
    output LayerNorm over more than 512 channels, and a backend asked for by name without this
    kernel (``cuda``) run ``patch_linear_composite``. On CUDA tensors ``auto`` takes the Triton
    kernel once it passed its parity checks on the device and was timed faster there (the device
    record, ``convnext_fast.autotune``).

    Args:
        x: (N, C, H, W), any layout (channels_last is read in place). Rows and columns beyond a
            multiple of k are ignored, as ``nn.Conv2d`` does.
        weight_t: (k*k*C, O), ``patch_weight(conv.weight)``.
        bias: optional (O,).
        k: patch size (kernel size and stride).
        in_eps: when given, each input pixel is normalized over its C channels first (biased
            variance, ``in_eps`` inside the square root), without affine.
        out_weight, out_bias: when ``out_weight`` is given, a LayerNorm over the O output channels
            with this affine (``out_bias`` optional) and ``out_eps``.
        out_eps: the output LayerNorm's epsilon.

    Every tensor has x's dtype and device.

    Returns:
        (N, O, H // k, W // k), channels_last.

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
        convnext_fast.BackendUnavailableError: a backend asked for by name cannot run this op on x's
            device (``cuda`` has no kernel for it).
    """
    _check(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)
    k = int(k)
    in_eps = None if in_eps is None else float(in_eps)
    out_eps = float(out_eps)
    params = (weight_t, bias, out_weight, out_bias)
    n, c, h, w = x.shape
    o = weight_t.shape[1]
    shape = (n, c, h, w, k, o, int(in_eps is not None), int(out_weight is not None))
    # "reference" also for a backend asked for by name without a kernel for this call (cuda, a
    # dtype, an output LayerNorm too wide): the composite runs it.
    if needs_reference() or needs_graph(x, *params):
        return patch_linear_composite(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)
    backend, _ = resolve_forward(OP, x, shape, weight_t, c=c, out_norm=o if out_weight is not None else None)
    if backend == "reference":
        return patch_linear_composite(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)
    if direct_ok(x, *params):
        return _forward(backend, x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps)
    return patch_linear_fwd(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps, backend)
