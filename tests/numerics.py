"""Tolerance rules shared by the parity tests (flash-attention's rule for low precision)."""
from __future__ import annotations

import os

import torch


def max_abs_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item() if a.numel() else 0.0


def assert_matches_reference(ours: torch.Tensor, ref64: torch.Tensor, torch_lowp: torch.Tensor | None = None,
                             *, name: str = "output", atol: float | None = None, rtol: float = 1e-5) -> None:
    """Compare ``ours`` with the float64 reference ``ref64``.

    float32/float64: ``|ours - ref| <= atol + rtol * |ref|`` elementwise (rtol 1e-5).
    float16/bfloat16: the largest error of ours is at most twice the largest error of PyTorch's own
    computation in that dtype (``torch_lowp``) plus a small atol.
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
    scale = ref64.abs().max().item() if ref64.numel() else 1.0
    small_atol = (1e-3 if atol is None else atol) * max(scale, 1.0)
    ours_err, torch_err = max_abs_err(ours, ref64), max_abs_err(torch_lowp, ref64)
    assert ours_err <= 2 * torch_err + small_atol, (
        f"{name} ({ours.dtype}): max error {ours_err:.3e} > 2 x PyTorch's {torch_err:.3e} + {small_atol:.1e}")


def lowp_atol(backend: str, dtype: torch.dtype) -> float | None:
    """Extra absolute tolerance (relative to max |ref|) for low-precision results.

    Triton's CPU interpreter converts fp32 to bf16 by truncation, not round-to-nearest (checked:
    about half of random values differ from torch's conversion), so every bf16 output carries up
    to one ulp of error instead of half an ulp, while PyTorch's reference rounds correctly: allow
    one extra bf16 half-ulp (2**-8 of the magnitude) there. GPUs round to nearest: default rule.
    """
    if backend == "triton" and dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return 2.0 ** -8
    return None
