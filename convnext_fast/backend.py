"""Which implementation runs an op.

Backends:

* ``reference`` - plain PyTorch (``reference.py``) with PyTorch's autograd; runs anywhere.
* ``triton``    - the Triton kernels in ``convnext_fast.kernels``; CUDA tensors, or CPU tensors
                  when ``TRITON_INTERPRET=1`` was set before import (how CI tests the kernels).
* ``cuda``      - the compiled extension's CUDA kernels (CUDA tensors).
* ``cpu``       - the compiled extension's C++ kernels (CPU tensors).
* ``auto``      - the fastest available for the tensors' device, chosen separately for the forward
                  and the backward pass (the saved tensors are the same for every backend, so a
                  forward on one and a backward on another is valid); falls back quietly.

The choice comes from, in order: ``use_backend()`` (per thread and per asyncio task: a context
variable), else ``set_backend()`` (the process-wide default), else the environment variable
``CONVNEXT_FAST_BACKEND``, else ``auto``. torch.compile guards on both, so a compiled function
recompiles when the choice changes. Policy (Liger-Kernel's): ``auto`` may fall back quietly; a
backend asked for by name that cannot run on the given tensors raises :class:`BackendUnavailableError`
saying why. Nothing here touches the GPU at import time.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import json
import os
from types import ModuleType
from typing import Iterator

import torch

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "resolve",
    "resolve_passes",
    "set_backend",
    "use_backend",
]

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
OPS = ("depthwise_conv2d", "layer_norm_2d", "dwconv_layer_norm", "pointwise_mlp", "patch_linear")


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run on the given tensors (the message says why)."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown convnext_fast backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name.lower()


# Read once: Triton's interpreter mode is fixed when triton is first imported, so a later change of
# the variable could not take effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The process-wide default, and the per-context choice of use_backend() (None: take the default).
_default: str = _check_name(os.environ.get("CONVNEXT_FAST_BACKEND", "auto"))
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("convnext_fast_backend", default=None)


def set_backend(name: str) -> None:
    """Select the process-wide default backend (``auto``, ``reference``, ``triton``, ``cuda``, ``cpu``);
    a ``use_backend()`` block in force in the calling thread still takes precedence."""
    global _default
    _default = _check_name(name)


def get_backend() -> str:
    """The backend requested in this thread / task (possibly ``auto``)."""
    scoped = _scoped.get()
    return _default if scoped is None else scoped


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed code with backend ``name`` in this thread (or asyncio task)
    only, then restore the previous choice. Other threads are not affected."""
    token = _scoped.set(_check_name(name))
    try:
        yield
    finally:
        _scoped.reset(token)


# ----------------------------------------------------------------------------------------------
# Capability checks. Each returns None when the backend can run on `device_type`, else the reason.
# They depend only on the installation, never on tensor values, so torch.compile may treat their
# result as a constant (assume_constant_result) instead of tracing imports.
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _triton_reason(device_type: str) -> str:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if device_type == "cuda":
        return ""
    if device_type == "cpu":
        if _TRITON_INTERPRET:
            return ""
        return ("the triton backend runs CPU tensors only through Triton's interpreter; set "
                "TRITON_INTERPRET=1 before importing convnext_fast (slow: for tests only)")
    return f"the triton backend does not support {device_type} tensors"


@functools.lru_cache(maxsize=None)
def _extension_reason(backend: str, device_type: str) -> str:
    if backend != device_type:
        return f"the {backend} backend runs {backend.upper()} tensors only, got {device_type} tensors"
    from . import extension

    return extension.unavailable_reason(device_type)


@torch.compiler.assume_constant_result
def _unavailable_reason(backend: str, device_type: str) -> str:
    if backend == "reference":
        return ""
    if backend == "triton":
        return _triton_reason(device_type)
    return _extension_reason(backend, device_type)


# The kernel backends that implement an op, and the launchers each needs from its module
# (``implementation``), for ops that not every kernel backend has; the others run on all of them.
# The compiled extension's MLP and patch-convolution kernels are CPU-only; the patch convolution
# (inference only) has no backward.
_KERNEL_LAUNCHERS = {
    "pointwise_mlp": {"triton": ("mlp_forward", "mlp_backward"), "cpu": ("mlp_forward", "mlp_backward")},
    "patch_linear": {"triton": ("patch_linear_forward",), "cpu": ("patch_linear_forward",)},
}


@functools.lru_cache(maxsize=None)
def _kernel_reason(op: str, backend: str) -> str:
    """'' when ``backend`` has kernels for ``op``, else why not."""
    wanted = _KERNEL_LAUNCHERS.get(op)
    if wanted is None or backend == "reference":
        return ""
    if backend not in wanted:
        return f"the {backend} backend has no {op} kernel (backends with one: {', '.join(wanted)})"
    module = implementation(backend)
    missing = [name for name in wanted[backend] if not hasattr(module, name)]
    if missing:
        return f"the {backend} backend has no {op} kernel ({module.__name__} lacks {', '.join(missing)})"
    return ""


@torch.compiler.assume_constant_result
def _op_unavailable_reason(op: str, backend: str, device_type: str) -> str:
    return _unavailable_reason(backend, device_type) or _kernel_reason(op, backend)


def dispatch_table() -> dict:
    """The measured ``auto`` choices on CUDA (``dispatch.json``): for each op and pass, the smallest
    H*W at which Triton beats the CUDA extension, with the device, date and result file they come
    from; ``kernels_verified`` says which ops' kernels a recorded GPU parity run has checked. On CPU
    the compiled extension runs; the Triton interpreter is never chosen automatically."""
    with open(os.path.join(os.path.dirname(__file__), "dispatch.json")) as f:
        return json.load(f)


# Read once at import into a plain dict, which torch.compile treats as a constant.
_MIN_HW_TRITON = {(op, pass_ == "backward"): hw
                  for op, passes in dispatch_table()["cuda"]["min_hw_triton"].items() for pass_, hw in passes.items()}
# Ops whose kernels have no recorded parity run on a GPU yet (``kernels_verified`` false in
# dispatch.json): auto runs the reference for them on CUDA tensors until a run on a GPU has checked
# the kernels there. A backend asked for by name still runs its kernels (that is how the run is made).
_UNVERIFIED_ON_CUDA = frozenset(op for op, verified in dispatch_table()["cuda"].get("kernels_verified", {}).items()
                                if not verified)


@torch.compiler.assume_constant_result
def has_kernel(op: str, name: str) -> bool:
    """Whether the backend ``name`` (``auto`` and ``reference`` count as yes) has kernels for ``op``:
    not every kernel backend implements every op (the compiled extension's MLP is CPU-only)."""
    return name in ("auto", "reference") or not _kernel_reason(op, name)


def verified_on_cuda(op: str) -> bool:
    """Whether a recorded GPU parity run has checked ``op``'s kernels (``kernels_verified``)."""
    return op not in _UNVERIFIED_ON_CUDA


def _auto_candidates(op: str, device_type: str, hw: int, backward: bool = False) -> tuple[str, ...]:
    if device_type == "cuda":
        if op in _UNVERIFIED_ON_CUDA:
            return ("reference",)
        if hw >= _MIN_HW_TRITON.get((op, backward), 0):
            return ("triton", "cuda", "reference")
        return ("cuda", "triton", "reference")
    if device_type == "cpu":
        return ("cpu", "reference")
    return ("reference",)


def _resolve_auto(op: str, device_type: str, hw: int, backward: bool) -> str:
    for candidate in _auto_candidates(op, device_type, hw, backward):
        if not _op_unavailable_reason(op, candidate, device_type):
            return candidate
    return "reference"


def resolve(op: str, device: torch.device, hw: int = 0) -> str:
    """The concrete backend (never ``auto``) that runs the forward pass of ``op`` on ``device``.

    ``hw`` is the feature map's H*W, which ``auto`` uses to pick between the CUDA kernels.
    """
    return resolve_passes(op, device, hw)[0]


def resolve_passes(op: str, device: torch.device, hw: int = 0) -> tuple[str, str]:
    """(forward backend, backward backend) for ``op`` on ``device``; equal unless ``auto`` chose two.

    A backend asked for by name runs both passes or raises :class:`BackendUnavailableError`. When
    the forward is ``reference``, PyTorch's autograd runs the backward and the second entry is
    ``reference`` too.
    """
    scoped = _scoped.get()
    requested = _default if scoped is None else scoped
    device_type = device.type
    if requested != "auto":
        reason = _op_unavailable_reason(op, requested, device_type)
        if reason:
            raise BackendUnavailableError(f"convnext_fast backend {requested!r} cannot run {op}: {reason}")
        return requested, requested
    forward = _resolve_auto(op, device_type, hw, backward=False)
    backward = _resolve_auto(op, device_type, hw, backward=True)
    if forward == "reference" or backward == "reference":
        backward = forward  # a kernel forward needs a kernel backward: reference has no ops.*_bwd
    return forward, backward


_IMPLEMENTATIONS: dict[str, ModuleType] = {}  # filled on first use: importing triton is slow


def implementation(backend: str) -> ModuleType:
    """The module holding the forward/backward functions of a concrete, non-reference backend.

    Every such module provides ``dwconv_forward``, ``dwconv_backward``, ``layer_norm_forward``,
    ``layer_norm_backward``, ``dwconv_ln_forward`` and ``dwconv_ln_backward`` (and, where
    ``_KERNEL_LAUNCHERS`` says so, ``mlp_forward`` / ``mlp_backward``) with the signatures
    documented in each op module (``depthwise_conv.py``, ...).
    """
    module = _IMPLEMENTATIONS.get(backend)
    if module is not None:  # every op call comes here: a dict lookup, not an import statement
        return module
    if backend == "triton":
        from .kernels import launchers as module
    elif backend in ("cuda", "cpu"):
        from . import extension as module
    else:
        raise ValueError(f"backend {backend!r} has no kernel implementation module")
    _IMPLEMENTATIONS[backend] = module
    return module


def available_backends(device_type: str) -> dict[str, str]:
    """For each concrete backend: '' if it can run on ``device_type``, else the reason it cannot."""
    return {b: _unavailable_reason(b, device_type) for b in BACKENDS if b != "auto"}
