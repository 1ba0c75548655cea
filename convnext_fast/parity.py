"""The parity rules: one output of ours compared with the float64 reference, next to PyTorch's own
result in the same dtype. The tests, ``python -m convnext_fast verify`` and the benchmark report all
judge with this module.

Two criteria, each named for what it catches:

* :func:`norm_check` catches **drift spread over the whole output**: the relative error over the
  reference's norm (``||a - ref|| / ||ref||``) at most twice PyTorch's own plus a per-dtype
  allowance (:data:`NORM_ATOL`). Flash-attention's rule for low precision, over norms so that one
  large-magnitude element does not decide it. On its own it is loose: one wrong tile of a large
  output moves the norm very little.
* :func:`max_abs_check` catches **a few wrong elements** (one wrong tile, one bad lane): the largest
  elementwise error at most twice PyTorch's own largest error plus a per-dtype share of the
  reference's magnitude (:data:`MAX_ABS_ALLOWANCE`).

:func:`compare` applies both (``verify`` and the report use it); :func:`assert_matches_reference`
is the tests' assertion, elementwise (``assert_close`` in float32 / float64, :func:`max_abs_check`
in float16 / bfloat16). A non-finite result or a wrong shape never passes.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

__all__ = ["NORM_ATOL", "MAX_ABS_ALLOWANCE", "rel_err", "max_abs_err", "norm_check", "max_abs_check", "compare",
           "assert_matches_reference", "lowp_atol"]

# Added to twice PyTorch's relative error, per dtype: rounding of the folded or fused weights and of
# the one output rounding our kernels do where PyTorch rounds between passes.
NORM_ATOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2, "float64": 1e-10}
# Added to twice PyTorch's largest error, as a share of the reference's largest magnitude.
MAX_ABS_ALLOWANCE = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-3, "float64": 1e-10}


def _dtype_name(dtype: "str | torch.dtype") -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def rel_err(a: Tensor, ref: Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64 (the plain norm of ``a`` when ``ref`` is zero); ``inf``
    when ``a`` has a non-finite value."""
    a64, r64 = a.detach().double(), ref.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    denom = r64.norm().item()
    return (a64 - r64).norm().item() / (denom if denom > 0 else 1.0)


def max_abs_err(a: Tensor, ref: Tensor) -> float:
    """The largest elementwise ``|a - ref|`` (0 for empty tensors; ``inf`` for a non-finite ``a``)."""
    if not a.numel():
        return 0.0
    a64 = a.detach().double()
    if not torch.isfinite(a64).all():
        return float("inf")
    return (a64 - ref.detach().double()).abs().max().item()


def _magnitude(ref: Tensor) -> float:
    """The reference's largest magnitude, at least 1 (an allowance never shrinks below its base)."""
    return max(ref.detach().double().abs().max().item(), 1.0) if ref.numel() else 1.0


def norm_check(ours: Tensor, torch_lowp: Tensor, ref64: Tensor, dtype: "str | torch.dtype") -> dict:
    """Drift over the whole output: relative norm error at most ``2 x PyTorch's + NORM_ATOL[dtype]``.
    Returns {passed, rel_err, torch_rel_err, tol}."""
    torch_err = rel_err(torch_lowp, ref64)
    tol = 2 * torch_err + NORM_ATOL.get(_dtype_name(dtype), 1e-2)
    err = rel_err(ours, ref64) if tuple(ours.shape) == tuple(ref64.shape) else float("inf")
    return {"passed": bool(math.isfinite(err) and err <= tol), "rel_err": err, "torch_rel_err": torch_err,
            "tol": tol}


def max_abs_check(ours: Tensor, torch_lowp: Tensor, ref64: Tensor, dtype: "str | torch.dtype",
                  allowance: Optional[float] = None) -> dict:
    """A few wrong elements: the largest error at most ``2 x PyTorch's largest + allowance x max|ref|``
    (``allowance`` defaults to ``MAX_ABS_ALLOWANCE[dtype]``). Returns {passed, max_abs_err,
    torch_max_abs_err, max_abs_tol}."""
    share = MAX_ABS_ALLOWANCE.get(_dtype_name(dtype), 1e-3) if allowance is None else allowance
    torch_err = max_abs_err(torch_lowp, ref64)
    tol = 2 * torch_err + share * _magnitude(ref64)
    err = max_abs_err(ours, ref64) if tuple(ours.shape) == tuple(ref64.shape) else float("inf")
    return {"passed": bool(math.isfinite(err) and err <= tol), "max_abs_err": err, "torch_max_abs_err": torch_err,
            "max_abs_tol": tol}


def compare(ours: Tensor, torch_lowp: Tensor, ref64: Tensor, dtype: "str | torch.dtype") -> dict:
    """Both criteria. Returns {passed, norm_passed, max_abs_passed, rel_err, torch_rel_err, tol,
    max_abs_err, torch_max_abs_err, max_abs_tol}: plain floats and bools, safe for JSON. ``passed``
    only when both pass."""
    norm = norm_check(ours, torch_lowp, ref64, dtype)
    peak = max_abs_check(ours, torch_lowp, ref64, dtype)
    out = {"passed": norm["passed"] and peak["passed"], "norm_passed": norm["passed"],
           "max_abs_passed": peak["passed"]}
    out.update({k: v for k, v in norm.items() if k != "passed"})
    out.update({k: v for k, v in peak.items() if k != "passed"})
    return out


def assert_matches_reference(ours: Tensor, ref64: Tensor, torch_lowp: Optional[Tensor] = None, *,
                             name: str = "output", atol: Optional[float] = None, rtol: float = 1e-5) -> None:
    """The tests' assertion: ``ours`` against the float64 reference ``ref64``, elementwise.

    float32 / float64: ``|ours - ref| <= atol + rtol * |ref|`` (atol = rtol = 1e-5; 1e-10 in float64).
    float16 / bfloat16: :func:`max_abs_check` against PyTorch's own result in that dtype
    (``torch_lowp``), with ``atol`` (default 1e-3) as the share of ``max|ref|``.
    """
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    if ours.dtype in (torch.float32, torch.float64):
        tol = 1e-5 if atol is None else atol
        if ours.dtype == torch.float64:
            tol, rtol = (1e-10 if atol is None else atol), 1e-10
        torch.testing.assert_close(ours.double(), ref64.double(), atol=tol, rtol=rtol, msg=lambda m: f"{name}: {m}")
        return
    assert torch_lowp is not None, "low-precision comparison needs PyTorch's own low-precision result"
    verdict = max_abs_check(ours, torch_lowp, ref64, ours.dtype, allowance=atol)
    assert verdict["passed"], (f"{name} ({ours.dtype}): max error {verdict['max_abs_err']:.3e} > 2 x PyTorch's "
                               f"{verdict['torch_max_abs_err']:.3e} + allowance (tol {verdict['max_abs_tol']:.3e})")


def lowp_atol(backend: str, dtype: torch.dtype) -> Optional[float]:
    """Extra allowance (a share of max |ref|) for low-precision results of Triton's CPU interpreter.

    The interpreter converts fp32 to bf16 by truncation, not round-to-nearest (about half of random
    values differ from torch's conversion), so every bf16 output carries up to one ulp of error
    instead of half an ulp, while PyTorch's reference rounds correctly: allow one extra bf16
    half-ulp (2**-8 of the magnitude) there. GPUs round to nearest: the default rule applies.
    """
    if backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return 2.0 ** -8
    return None
