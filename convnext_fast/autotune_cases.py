"""What :mod:`convnext_fast.autotune` runs: per op family, the parity checks that decide whether a
backend's kernels are trusted on a device, and the timed calls at one shape.

Shapes, as the ops pass them (the key of a timed choice):

* ``depthwise_conv2d``, ``dwconv_layer_norm``: (N, C, H, W, K)
* ``layer_norm_2d``: (N, C, H, W)
* ``pointwise_mlp``: (N, C, H, W, Hd)
* ``patch_linear``: (N, C, H, W, k, O, input LayerNorm 0/1, output LayerNorm 0/1)

Inputs come from a private ``torch.Generator``; the caller restores the global RNG states as well.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

from . import reference

__all__ = ["TIMED_OPS", "checks", "runners"]

TIMED_OPS = frozenset({"depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "pointwise_mlp", "patch_linear"})
_EPS = 1e-6
_CL = torch.channels_last


def _randn(g: torch.Generator, device: torch.device, *size: int, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(size, generator=g, dtype=torch.float64)).to(device)


def _ones_ish(g: torch.Generator, device: torch.device, n: int) -> Tensor:
    return (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).to(device)


def _inputs(op: str, shape: tuple[int, ...], device: torch.device) -> dict[str, Optional[Tensor]]:
    """float64 inputs of ``op`` at ``shape`` (see the module docstring), from a private generator."""
    g = torch.Generator().manual_seed(1234)
    n, c, h, w = shape[:4]
    x = _randn(g, device, n, c, h, w).contiguous(memory_format=_CL)
    if op in ("depthwise_conv2d", "dwconv_layer_norm"):
        k = shape[4]
        out = {"x": x, "weight": _randn(g, device, c, 1, k, k, scale=1.0 / k), "bias": _randn(g, device, c, scale=0.1)}
        if op == "dwconv_layer_norm":
            out.update(ln_weight=_ones_ish(g, device, c), ln_bias=_randn(g, device, c, scale=0.1))
        return out
    if op == "layer_norm_2d":
        return {"x": x, "weight": _ones_ish(g, device, c), "bias": _randn(g, device, c, scale=0.1)}
    if op == "pointwise_mlp":
        hd = shape[4]
        return {"x": x, "fc1_weight": _randn(g, device, hd, c, scale=c ** -0.5),
                "fc1_bias": _randn(g, device, hd, scale=0.1), "fc2_weight": _randn(g, device, c, hd, scale=hd ** -0.5),
                "fc2_bias": _randn(g, device, c, scale=0.1), "gamma": _ones_ish(g, device, c),
                "shortcut": _randn(g, device, n, c, h, w).contiguous(memory_format=_CL)}
    if op == "patch_linear":
        k, o, in_norm, out_norm = shape[4:8]
        return {"x": x, "weight_t": _randn(g, device, k * k * c, o, scale=(k * k * c) ** -0.5),
                "bias": _randn(g, device, o, scale=0.1),
                "out_weight": _ones_ish(g, device, o) if out_norm else None,
                "out_bias": _randn(g, device, o, scale=0.1) if out_norm else None}
    raise ValueError(f"no timed calls for {op}")


def _cast(inputs: dict, dtype: torch.dtype, grad: bool = False) -> dict:
    out = {}
    for name, t in inputs.items():
        if t is None:
            out[name] = None
            continue
        t = t.detach().to(dtype)
        if t.dim() == 4 and name in ("x", "shortcut"):
            t = t.contiguous(memory_format=_CL)
        out[name] = t.requires_grad_(grad)
    return out


def _public(op: str) -> Callable[..., Tensor]:
    """``op``'s public function taking the dict of :func:`_inputs` as keywords."""
    import convnext_fast

    if op == "patch_linear":
        from .patch_linear import patch_linear

        return lambda x, weight_t, bias, out_weight, out_bias: patch_linear(
            x, weight_t, bias, _PATCH_K, out_weight=out_weight, out_bias=out_bias)
    return getattr(convnext_fast, op)


_PATCH_K = 2


def _reference(op: str) -> Callable[..., Tensor]:
    if op == "depthwise_conv2d":
        return lambda x, weight, bias: reference.depthwise_conv2d(x, weight, bias)
    if op == "layer_norm_2d":
        return lambda x, weight, bias: reference.layer_norm_2d(x, weight, bias, _EPS)
    if op == "dwconv_layer_norm":
        return lambda x, weight, bias, ln_weight, ln_bias: reference.dwconv_layer_norm(
            x, weight, bias, ln_weight, ln_bias, _EPS)
    if op == "pointwise_mlp":
        return lambda **kw: reference.pointwise_mlp(**kw)
    raise ValueError(op)


def _op_call(op: str) -> Callable[..., Tensor]:
    import convnext_fast

    if op == "dwconv_layer_norm":
        return lambda x, weight, bias, ln_weight, ln_bias: convnext_fast.dwconv_layer_norm(
            x, weight, bias, ln_weight, ln_bias, _EPS)
    if op == "layer_norm_2d":
        return lambda x, weight, bias: convnext_fast.layer_norm_2d(x, weight, bias, _EPS)
    return _public(op)


def _op_outputs(op: str, shape: tuple[int, ...], backend: str, device: torch.device, dtype: torch.dtype):
    """The op on ``backend`` (forward and every gradient) next to the reference in ``dtype`` and in
    float64, as ``verify``'s checks return them."""
    from .backend import use_backend

    inputs = _inputs(op, shape, device)
    g = torch.Generator().manual_seed(99)
    grad_out = _randn(g, device, *inputs["x"].shape[:1], inputs["x"].shape[1], *inputs["x"].shape[2:])

    def outputs(fn: Callable[..., Tensor], dt: torch.dtype) -> dict[str, Tensor]:
        leaves = _cast(inputs, dt, grad=True)
        present = {k: v for k, v in leaves.items() if v is not None}
        y = fn(**leaves)
        grads = torch.autograd.grad(y, list(present.values()), grad_out.to(y.dtype))
        return {"y": y, **{f"grad_{k}": gr for k, gr in zip(present, grads)}}

    ref = outputs(_reference(op), torch.float64)
    low = outputs(_reference(op), dtype)
    with use_backend(backend):
        ours = outputs(_op_call(op), dtype)
    return {k: (ours[k], low[k], ref[k]) for k in ref}, f"{backend} kernels, forward and backward"


# Small shapes: odd sizes, a width that is no power of two, the widest ConvNeXt stage's channel count
# for the norms' channel loops kept off (those compile long): seconds on a GPU, compiles included.
_CHECK_SHAPES = {
    "depthwise_conv2d": [(2, 40, 9, 11, 7), (1, 96, 5, 5, 3)],
    "layer_norm_2d": [(2, 40, 9, 11), (1, 200, 3, 5)],
    "dwconv_layer_norm": [(2, 40, 9, 11, 7), (1, 100, 5, 6, 7)],
    "pointwise_mlp": [(1, 96, 4, 4, 384), (2, 40, 3, 5, 160)],
}


def checks(op: str, dtype: torch.dtype, backend: str) -> list:
    """The parity checks that decide whether ``backend``'s kernels of ``op`` are trusted in ``dtype``:
    ``python -m convnext_fast verify``'s own (at its small sizes) for the Triton MLP, patch and
    one-kernel-block kernels, the same kind of check at small sizes for the others."""
    from . import verify

    name = str(dtype).removeprefix("torch.")
    if backend == "triton" and op in ("pointwise_mlp", "patch_linear", "folded_block"):
        return verify.checks_for("cpu", [name], [op])
    if op in _CHECK_SHAPES:
        return [verify.Check(op, "x".join(map(str, s)), name, functools.partial(_op_outputs, op, s, backend))
                for s in _CHECK_SHAPES[op]]
    return []


def runners(op: str, pass_: str, dtype: torch.dtype, shape: tuple[int, ...], device: torch.device,
            backends: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    """Per backend (``reference``: PyTorch, what the op runs without a kernel), a call of ``op``'s
    ``pass_`` at ``shape`` in ``dtype`` on ``device``, ready to time."""
    if op not in TIMED_OPS:
        raise ValueError(f"{op} is not timed")
    t = _cast(_inputs(op, shape, device), dtype)
    return {b: _runner(op, pass_, b, t, shape) for b in backends}


def _runner(op: str, pass_: str, backend: str, t: dict, shape: tuple[int, ...]) -> Callable[[], object]:
    from . import depthwise_conv, dwconv_ln, layer_norm, mlp, patch_linear
    from .fused_elementwise import mlp_composite
    from .kernels.layout import stats_dtype

    x = t["x"]
    gy = torch.ones_like(x)

    def reference_backward(fn: Callable[..., Tensor], names: tuple[str, ...]) -> Callable[[], object]:
        # What a backward resolved to PyTorch runs: the forward again, then autograd.
        def run():
            with torch.enable_grad():
                leaves = [t[n].detach().requires_grad_(True) for n in names]
                y = fn(*leaves)
                return torch.autograd.grad(y, leaves, gy)
        return run

    def stats(z: Tensor) -> tuple[Tensor, Tensor]:
        zc = z.to(stats_dtype(z.dtype))
        mean = zc.mean(1)
        rstd = (zc.var(1, unbiased=False) + _EPS).rsqrt()
        return mean.contiguous(), rstd.contiguous()

    if op == "depthwise_conv2d":
        if pass_ == "forward":
            if backend == "reference":
                return lambda: reference.depthwise_conv2d(x, t["weight"], t["bias"])
            return lambda: depthwise_conv._forward(backend, x, t["weight"], t["bias"])
        if backend == "reference":
            return reference_backward(reference.depthwise_conv2d, ("x", "weight", "bias"))
        return lambda: depthwise_conv._backward(backend, gy, x, t["weight"])
    if op == "layer_norm_2d":
        if pass_ == "forward":
            if backend == "reference":
                return lambda: reference.layer_norm_2d(x, t["weight"], t["bias"], _EPS)
            return lambda: layer_norm._forward(backend, x, t["weight"], t["bias"], _EPS)
        if backend == "reference":
            return reference_backward(lambda a, b, c: reference.layer_norm_2d(a, b, c, _EPS), ("x", "weight", "bias"))
        mean, rstd = stats(x)
        return lambda: layer_norm._backward(backend, gy, x, t["weight"], mean, rstd)
    if op == "dwconv_layer_norm":
        names = ("x", "weight", "bias", "ln_weight", "ln_bias")
        if pass_ == "forward":
            if backend == "reference":
                return lambda: reference.dwconv_layer_norm(*(t[n] for n in names), _EPS)
            return lambda: dwconv_ln._forward(backend, *(t[n] for n in names), _EPS)
        if backend == "reference":
            return reference_backward(lambda *a: reference.dwconv_layer_norm(*a, _EPS), names)
        mean, rstd = stats(reference.depthwise_conv2d(x, t["weight"], t["bias"]))
        return lambda: dwconv_ln._backward(backend, gy, x, t["weight"], t["bias"], t["ln_weight"], mean, rstd)
    if op == "pointwise_mlp":
        names = ("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "gamma", "shortcut")
        hw = shape[2] * shape[3]
        composite = lambda *a: mlp_composite(*a[:6], a[6])  # noqa: E731
        if backend == "reference":
            if pass_ == "forward":
                return lambda: composite(*(t[n] for n in names))
            return reference_backward(composite, names)
        rows, sc = mlp._rows(x), mlp._rows(t["shortcut"])
        w = (t["fc1_weight"], t["fc1_bias"], t["fc2_weight"], t["fc2_bias"], t["gamma"])
        if pass_ == "forward":
            return lambda: mlp._forward(backend, rows, *w, sc, None, hw, False)
        h = torch.addmm(t["fc1_bias"], rows, t["fc1_weight"].t()).contiguous()
        grad_rows = mlp._rows(gy)
        return lambda: mlp._backward(backend, grad_rows, rows, *w, None, hw, h)
    # patch_linear (forward only)
    k, _, in_norm = shape[4], shape[5], shape[6]
    args = (x, t["weight_t"], t["bias"], k, _EPS if in_norm else None, t["out_weight"], t["out_bias"], _EPS)
    if backend == "reference":
        return lambda: patch_linear.patch_linear_composite(*args)
    return lambda: patch_linear._forward(backend, *args)
