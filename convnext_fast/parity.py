"""The parity rule of the benchmark report and of ``python -m convnext_fast verify``: one output
compared with the float64 reference, next to PyTorch's own result in the same dtype.

Per output, the error is the relative error over the reference's norm (``||a - ref|| / ||ref||``).
Ours passes when it is finite, has the reference's shape, and its error is at most twice PyTorch's
own error in that dtype plus a small absolute allowance (``ATOL``): flash-attention's rule for low
precision, over norms so that one large-magnitude element does not decide it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ATOL", "compare", "max_abs_err", "rel_err"]

# Added to twice PyTorch's error, per dtype: rounding of the folded or fused weights and of the
# one output rounding our kernels do where PyTorch rounds between passes.
ATOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2, "float64": 1e-10}


def rel_err(a: Tensor, ref: Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64 (the plain norm of ``a`` when ``ref`` is zero); ``inf``
    when ``a`` has a non-finite value."""
    a64, r64 = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    denom = r64.norm().item()
    return (a64 - r64).norm().item() / (denom if denom > 0 else 1.0)


def max_abs_err(a: Tensor, ref: Tensor) -> float:
    """The largest elementwise ``|a - ref|`` (0 for empty tensors)."""
    return (a.detach().double() - ref.detach().double()).abs().max().item() if a.numel() else 0.0


def compare(ours: Tensor, torch_lowp: Tensor, ref64: Tensor, dtype: str) -> dict:
    """Ours and PyTorch's own result in ``dtype`` (a name: ``"bfloat16"``) against the float64
    reference. Returns {passed, rel_err, torch_rel_err, max_abs_err, tol}: plain floats and a bool,
    safe for JSON. A non-finite result of ours never passes, whatever PyTorch's own error is."""
    torch_err = rel_err(torch_lowp, ref64)
    tol = 2 * torch_err + ATOL.get(dtype, 1e-2)
    shape_ok = tuple(ours.shape) == tuple(ref64.shape)
    err = rel_err(ours, ref64) if shape_ok else float("inf")
    passed = math.isfinite(err) and err <= tol
    return {"passed": bool(passed), "rel_err": err, "torch_rel_err": torch_err,
            "max_abs_err": max_abs_err(ours, ref64) if shape_ok else float("inf"), "tol": tol}
