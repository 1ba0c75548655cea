"""What every op's route shares: argument checks, the choice between calling kernels directly and
calling the registered ops, and the autograd modes the kernels cannot serve.

Each op module (``depthwise_conv.py``, ``layer_norm.py``, ``dwconv_ln.py``,
``mlp.py``) has one route::

    public function -> checks -> backend choice
        -> reference (PyTorch's autograd)   when the reference backend runs, or a mode the kernels
                                            cannot serve is on (forward-mode AD, torch.func transforms)
        -> kernels directly                 when autograd has nothing to record (inference)
        -> one torch.autograd.Function      otherwise; its passes call the kernels directly in plain
                                            eager mode and the registered ops (``convnext_fast::*``)
                                            under torch.compile, export, dispatch modes and subclasses

In CPU inference a ConvNeXt block may call the kernels its two ops' routes chose for an earlier
input of the same signature without going through the routes again (``direct_block.py``).

Double backward runs through the same Function: when its backward is itself recorded
(``create_graph=True``), it differentiates the reference instead of calling the backward kernel.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .autotune import may_measure
from .backend import requested_backend, resolve

__all__ = ["FLOAT_DTYPES", "MAX_KERNEL_SIZE", "check_x", "check_params", "check_eps", "check_dw", "check_ln",
           "direct_ok", "plain_eager", "needs_graph", "needs_reference", "reference_backward", "resolve_forward",
           "resolve_backward"]

MAX_KERNEL_SIZE = 31
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)  # what the kernels take directly


def check_x(op: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op} expects x to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op} expects x of shape (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op} supports float16, bfloat16, float32 and float64 tensors, got x of dtype {x.dtype}")


def check_params(op: str, x: Tensor, required: Sequence[str], **params: Optional[Tensor]) -> None:
    """Each parameter is a tensor (or None, unless named in ``required``) of x's dtype and device."""
    for name, p in params.items():
        if p is None:
            if name in required:
                raise TypeError(f"{op} expects {name} to be a torch.Tensor, got None")
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{op} expects {name} to be a torch.Tensor, got {type(p).__name__}")
        if p.dtype != x.dtype:
            raise TypeError(f"{op} expects {name} to have the dtype of x ({x.dtype}), got {p.dtype}; "
                            f"cast it with .to({x.dtype})")
        if p.device != x.device:
            raise ValueError(f"{op} expects all tensors on one device: x is on {x.device}, {name} on {p.device}")


def check_eps(op: str, eps, name: str = "eps") -> float:
    """A positive real number (Python or NumPy scalar) as a float."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not float(eps) > 0:
        raise ValueError(f"{op} expects {name} to be a positive number, got {eps!r}")
    return float(eps)


def check_kernel_size(op: str, k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k % 2 == 0 or not 1 <= k <= MAX_KERNEL_SIZE:
        raise ValueError(f"{op} expects an odd kernel size between 1 and {MAX_KERNEL_SIZE}, got {k!r}")
    return int(k)


def check_dw(op: str, x: Tensor, weight: Tensor, bias: Optional[Tensor], prefix: str = "") -> None:
    c = x.shape[1]
    w_name, b_name = f"{prefix}weight", f"{prefix}bias"
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"{op} expects {w_name} of shape (C, 1, K, K) with C={c}, got {tuple(weight.shape)}")
    kh, kw = weight.shape[2], weight.shape[3]
    if kh != kw:
        raise ValueError(f"{op} expects a square kernel, got {w_name} of shape {tuple(weight.shape)} ({kh}x{kw})")
    check_kernel_size(op, kh)
    if bias is not None and tuple(bias.shape) != (c,):
        raise ValueError(f"{op} expects {b_name} of shape ({c},), got {tuple(bias.shape)}")


def check_ln(op: str, x: Tensor, weight: Tensor, bias: Tensor, prefix: str = "") -> None:
    c = x.shape[1]
    for name, p in ((f"{prefix}weight", weight), (f"{prefix}bias", bias)):
        if tuple(p.shape) != (c,):
            raise ValueError(f"{op} expects {name} of shape ({c},) (the channel count of x), got {tuple(p.shape)}")


def direct_ok(*tensors: Optional[Tensor]) -> bool:
    """True when calling the kernels directly is observably the same as calling the registered op.

    False under torch.compile / export tracing, TorchScript tracing, any TorchDispatchMode (FakeTensor,
    FlopCounterMode, ...) or TorchFunctionMode (``with torch.device(...)``), and for tensor
    subclasses: each of those has to see the registered op. ``nn.Parameter`` is a plain tensor here.
    """
    if not plain_eager():
        return False
    for t in tensors:
        if t is not None and type(t) not in PLAIN_TENSOR_TYPES:
            return False
    return True


def plain_eager() -> bool:
    """False under torch.compile / export tracing, TorchScript tracing, any TorchDispatchMode or
    TorchFunctionMode: what :func:`direct_ok` asks of the call's context, before its tensors."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack() > 0
                or torch._C._is_torch_function_mode_enabled())


def needs_graph(*tensors: Optional[Tensor]) -> bool:
    """True when autograd would record the call: grad mode on and an input requiring grad."""
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def needs_reference() -> bool:
    """True under a torch.func transform (grad, vjp, jacrev, jvp, vmap) or an open forward-AD level:
    the kernels have no forward-mode derivative and no batching rule, so the differentiable
    reference serves the call (right, never silent zero tangents)."""
    return torch._C._functorch.maybe_current_level() is not None or forward_ad._current_level >= 0


def reference_backward(fn: Callable[..., Tensor], inputs: Sequence[Optional[Tensor]],
                       needs_input_grad: Sequence[bool], grad_y: Tensor,
                       create_graph: bool = True) -> list[Optional[Tensor]]:
    """Gradients of ``fn(*inputs)`` (the reference): with ``create_graph=True`` the backward pass of a
    backward that is itself recorded (double backward, gradient penalties), ``inputs`` being the
    saved inputs, still attached to the graph that produced them; with False, a backward that
    ``auto`` gave to PyTorch (the forward again, then autograd), on detached copies."""
    if not create_graph:
        inputs = [None if t is None else t.detach().requires_grad_(need)
                  for t, need in zip(inputs, needs_input_grad)]
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs_input_grad)) if need and t is not None]
    with torch.enable_grad():
        y = fn(*inputs)
        grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_y, create_graph=create_graph,
                                    allow_unused=True)
    out: list[Optional[Tensor]] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        out[i] = g
    return out


def resolve_forward(op: str, x: Tensor, shape: Sequence[int], *tensors: Optional[Tensor],
                    **sizes: Optional[int]) -> tuple[str, str]:
    """(the forward's backend, the backend asked for) for a call of ``op`` on ``x``: the resolver
    (``backend.resolve``) with the call's dtype, shape and sizes; ``auto`` may verify and time kernels
    now when the call runs in plain eager mode (``autotune.may_measure``). The backward is resolved
    at the first backward (:func:`resolve_backward`), with the request kept from the forward."""
    requested = requested_backend()
    return resolve(op, x.device, x.shape[2] * x.shape[3], dtype=x.dtype, shape=shape, requested=requested,
                   measure=_measure_if_allowed(requested, x, *tensors), **sizes), requested


def resolve_backward(op: str, x: Tensor, shape: Sequence[int], requested: str, grad_y: Tensor,
                     **sizes: Optional[int]) -> str:
    """The backward's backend, decided at the first backward of a call whose forward ran a kernel
    (``reference`` means: the forward again in PyTorch, then autograd)."""
    return resolve(op, x.device, x.shape[2] * x.shape[3], pass_="backward", dtype=x.dtype, shape=shape,
                   requested=requested, measure=_measure_if_allowed(requested, x, grad_y), **sizes)


def _measure_if_allowed(requested: str, *tensors: Optional[Tensor]):
    """False, or (plain eager ``auto``) a callable that says whether this call may measure: the
    resolver asks it only when no settled choice is at hand, which keeps the common call cheap.
    While torch.compile traces it is the constant False."""
    if requested != "auto" or torch.compiler.is_compiling():
        return False
    return lambda: may_measure(*tensors)
