"""What each backend's kernels can compute: one table, read by every check in the package.

Per op and kernel backend: the dtypes the kernels compute in, the passes they have (forward,
backward), the size limits they serve (channels ``C``, kernel size ``K``, the width of an output
LayerNorm ``O``) and the launchers the backend's implementation module must provide. A call outside
the table runs PyTorch (the ``reference`` backend, or the op's composite), decided before autograd
records anything; a backend asked for by name that has no kernel at all for an op raises.

This module imports neither Triton nor the compiled extension: inference.py, patch_linear.py and
the resolver (backend.py) read the limits here instead of importing the kernel modules. The kernel
modules enforce the same limits themselves (``NotImplementedError``); the tests check that the two
agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Capability", "KERNEL_BACKENDS", "OPS", "TABLE", "capability", "kernel_backends", "reason"]

KERNEL_BACKENDS = ("triton", "cuda", "cpu")
# Every op the resolver decides. ``folded_block`` is optimize_for_inference's one-kernel block.
OPS = ("depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "pointwise_mlp", "patch_linear", "folded_block")

_ALL = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_LOW_AND_FP32 = frozenset((torch.float16, torch.bfloat16, torch.float32))
_BF16_FP32 = frozenset((torch.bfloat16, torch.float32))
_FP32 = frozenset((torch.float32,))

# The largest odd depthwise kernel size any backend serves (route.check_kernel_size enforces it).
MAX_KERNEL_SIZE = 31


@dataclass(frozen=True)
class Capability:
    """What one backend's kernels serve for one op.

    Attributes:
        dtypes: the dtypes the kernels compute in.
        passes: ``("forward",)`` or ``("forward", "backward")``.
        launchers: the functions the backend's implementation module must have.
        max_c: largest channel count served (None: any).
        max_k: largest depthwise kernel size served (None: any the op accepts).
        max_out_norm: largest output-LayerNorm width served (None: any).
        min_c: smallest channel count served.
    """

    dtypes: frozenset
    passes: tuple[str, ...]
    launchers: tuple[str, ...]
    max_c: Optional[int] = None
    max_k: Optional[int] = None
    max_out_norm: Optional[int] = None
    min_c: int = 0


_BOTH = ("forward", "backward")
_DW = ("dwconv_forward", "dwconv_backward")
_LN = ("layer_norm_forward", "layer_norm_backward")
_DWLN = ("dwconv_ln_forward", "dwconv_ln_backward")
_MLP = ("mlp_forward", "mlp_backward")

# (op, backend) -> Capability. A missing pair: the backend has no kernel for the op.
TABLE: dict[tuple[str, str], Capability] = {
    ("depthwise_conv2d", "triton"): Capability(_ALL, _BOTH, _DW),
    ("depthwise_conv2d", "cuda"): Capability(_ALL, _BOTH, _DW),
    ("depthwise_conv2d", "cpu"): Capability(_ALL, _BOTH, _DW),
    ("layer_norm_2d", "triton"): Capability(_ALL, _BOTH, _LN),
    ("layer_norm_2d", "cuda"): Capability(_ALL, _BOTH, _LN),
    ("layer_norm_2d", "cpu"): Capability(_ALL, _BOTH, _LN),
    ("dwconv_layer_norm", "triton"): Capability(_ALL, _BOTH, _DWLN),
    ("dwconv_layer_norm", "cuda"): Capability(_ALL, _BOTH, _DWLN),
    ("dwconv_layer_norm", "cpu"): Capability(_ALL, _BOTH, _DWLN),
    # The compiled extension's MLP is CPU-only (csrc/cpu_mlp.cpp): no ("pointwise_mlp", "cuda").
    ("pointwise_mlp", "triton"): Capability(_LOW_AND_FP32, _BOTH, _MLP),
    ("pointwise_mlp", "cpu"): Capability(_BF16_FP32, _BOTH, _MLP),
    # Inference only; the Triton output LayerNorm holds a pixel's O outputs in one program
    # (kernels/patch_linear.py MAX_OUT_NORM_O); C = 0 has no patch sums (the output is the bias).
    ("patch_linear", "triton"): Capability(_LOW_AND_FP32, ("forward",), ("patch_linear_forward",), max_out_norm=512,
                                           min_c=1),
    ("patch_linear", "cpu"): Capability(_BF16_FP32, ("forward",), ("patch_linear_forward",), min_c=1),
    # kernels/block.py: the depthwise conv + LayerNorm as the prologue of the flash-style MLP.
    ("folded_block", "triton"): Capability(_LOW_AND_FP32, ("forward",), ("block_forward",), max_c=256, max_k=7),
}


def capability(op: str, backend: str) -> Optional[Capability]:
    """The table's entry for ``op`` on ``backend``, or None when the backend has no kernel for it."""
    if op not in OPS:
        raise ValueError(f"unknown convnext_fast op {op!r}; the ops are {', '.join(OPS)}")
    return TABLE.get((op, backend))


def kernel_backends(op: str) -> tuple[str, ...]:
    """The kernel backends that have kernels for ``op``."""
    return tuple(b for b in KERNEL_BACKENDS if capability(op, b) is not None)


def reason(op: str, backend: str, dtype: Optional[torch.dtype] = None, pass_: str = "forward", *,
           c: Optional[int] = None, k: Optional[int] = None, out_norm: Optional[int] = None) -> str:
    """'' when ``backend``'s kernels serve this call of ``op``, else why not.

    Args:
        op, backend: what is asked. ``reference`` serves everything.
        dtype: the call's dtype (None: not checked).
        pass_: ``forward`` or ``backward``.
        c, k, out_norm: channel count, depthwise kernel size, output-LayerNorm width (None: not
            checked; ``out_norm`` None also means the call has no output LayerNorm).
    """
    if backend == "reference":
        return ""
    cap = capability(op, backend)
    if cap is None:
        return (f"the {backend} backend has no {op} kernel (backends with one: "
                f"{', '.join(kernel_backends(op)) or 'none'})")
    if pass_ not in cap.passes:
        return f"the {backend} backend has no {op} {pass_} kernel"
    if dtype is not None and dtype not in cap.dtypes:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in cap.dtypes))
        return f"the {backend} {op} kernels compute in {names}, not {str(dtype).removeprefix('torch.')}"
    if c is not None and cap.max_c is not None and c > cap.max_c:
        return f"the {backend} {op} kernel serves C <= {cap.max_c}, got C={c}"
    if c is not None and c < cap.min_c:
        return f"the {backend} {op} kernel serves C >= {cap.min_c}, got C={c}"
    if k is not None and cap.max_k is not None and k > cap.max_k:
        return f"the {backend} {op} kernel serves K <= {cap.max_k}, got K={k}"
    if out_norm is not None and cap.max_out_norm is not None and out_norm > cap.max_out_norm:
        return f"the {backend} {op} kernel's output LayerNorm serves O <= {cap.max_out_norm}, got O={out_norm}"
    return ""
