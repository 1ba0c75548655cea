"""Which implementation runs an op: the one resolver that the ops, the model and the optimized model ask.

Backends:

* ``reference`` - plain PyTorch (``reference.py``) with PyTorch's autograd; runs anywhere.
* ``triton``    - the Triton kernels in ``convnext_fast.kernels``; CUDA tensors, or CPU tensors
                  when ``TRITON_INTERPRET=1`` was set before import (how CI tests the kernels).
* ``cuda``      - the compiled extension's CUDA kernels (CUDA tensors).
* ``cpu``       - the compiled extension's C++ kernels (CPU tensors).
* ``auto``      - per op, pass, dtype and shape, the fastest backend verified on the device (see
                  below); the forward and the backward pass are chosen separately (the saved tensors
                  are the same for every backend), the backward at the first backward.

The request comes from, in order: ``use_backend()`` (per thread and per asyncio task: a context
variable), else ``set_backend()`` (the process-wide default), else the environment variable
``CONVNEXT_FAST_BACKEND`` (empty means unset), else ``auto``. torch.compile guards on both, so a
compiled function recompiles when the request changes. Policy (Liger-Kernel's): ``auto`` may fall
back quietly; a backend asked for by name that cannot run on the tensors' device raises
:class:`BackendUnavailableError` saying why. A backend asked for by name runs PyTorch for a call
its kernels do not serve (a dtype, a size, an op it has no kernel for: ``capabilities.py``).

What ``auto`` takes, per call: the kernel backends that run on the device and whose kernels serve
the call (``capabilities.py``); on a GPU, of those, the ones that passed the parity checks on this
device, and of those and PyTorch the one timed fastest at the call's shape: the per-device record
(``autotune.py``, ``record.py``) measured on first use, or the shipped record for the device, or the
shipped defaults. On the CPU: the compiled extension, else PyTorch. Nothing here touches the GPU at
import time.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from types import ModuleType
from typing import Callable, Iterator, Optional, Sequence

import torch

from . import capabilities

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "implementation",
    "requested_backend",
    "resolve",
    "resolve_passes",
    "set_backend",
    "use_backend",
]

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")
OPS = capabilities.OPS
ENV_VAR = "CONVNEXT_FAST_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run on the given tensors (the message says why)."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"unknown convnext_fast backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name.lower()


def env_backend() -> tuple[str, str]:
    """(the backend ``CONVNEXT_FAST_BACKEND`` asks for, '') or ('auto', why its value is not one);
    unset or empty: ('auto', ''). Never raises: ``import convnext_fast`` and ``info`` must work
    whatever the environment holds."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return "auto", ""
    if value.lower() in BACKENDS:
        return value.lower(), ""
    return "auto", (f"{ENV_VAR}={value!r} is not a convnext_fast backend; set it to one of {', '.join(BACKENDS)} "
                    "or unset it")


# Read once: Triton's interpreter mode is fixed when triton is first imported, so a later change of
# the variable could not take effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The process-wide default, and the per-context choice of use_backend() (None: take the default).
# A bad environment value is kept as its message and raised by the first op call.
_default, _env_error = env_backend()
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("convnext_fast_backend", default=None)


def set_backend(name: str) -> None:
    """Select the process-wide default backend (``auto``, ``reference``, ``triton``, ``cuda``, ``cpu``);
    a ``use_backend()`` block in force in the calling thread still takes precedence."""
    global _default, _env_error
    _default = _check_name(name)
    _env_error = ""


def get_backend() -> str:
    """The backend requested in this thread / task (possibly ``auto``)."""
    scoped = _scoped.get()
    return _default if scoped is None else scoped


def requested_backend() -> str:
    """:func:`get_backend` for an op call: raises ``ValueError`` naming ``CONVNEXT_FAST_BACKEND``
    when its value is not a backend and nothing else was asked for."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _env_error:
        raise ValueError(f"convnext_fast: {_env_error}")
    return _default


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
# Can a backend run at all on a device type (installed, built, a device present)? Each returns ''
# or the reason. They depend only on the installation, never on tensor values, so torch.compile may
# treat their result as a constant (assume_constant_result) instead of tracing imports.
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _triton_reason(device_type: str) -> str:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available"
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


@functools.lru_cache(maxsize=None)
def _kernel_reason(op: str, backend: str) -> str:
    """'' when ``backend`` has kernels for ``op`` (the capability table lists the pair and the
    backend's module has the launchers it names), else why not."""
    if backend == "reference":
        return ""
    reason = capabilities.reason(op, backend)
    if reason:
        return reason
    module = implementation(backend)
    missing = [name for name in capabilities.capability(op, backend).launchers if not hasattr(module, name)]
    if missing:
        return f"the {backend} backend has no {op} kernel ({module.__name__} lacks {', '.join(missing)})"
    return ""


@torch.compiler.assume_constant_result
def _op_unavailable_reason(op: str, backend: str, device_type: str) -> str:
    """'' when ``backend`` runs on ``device_type`` and has kernels for ``op``, else why not."""
    return _unavailable_reason(backend, device_type) or _kernel_reason(op, backend)


def has_kernel(op: str, name: str) -> bool:
    """Whether the backend ``name`` (``auto`` and ``reference`` count as yes) has kernels for ``op``."""
    return name in ("auto", "reference") or not _kernel_reason(op, name)


def available_backends(device_type: str) -> dict[str, str]:
    """For each concrete backend: '' if it can run on ``device_type``, else the reason it cannot."""
    return {b: _unavailable_reason(b, device_type) for b in BACKENDS if b != "auto"}


# ----------------------------------------------------------------------------------------------
# The resolver.
# ----------------------------------------------------------------------------------------------


def _static_shape(shape: Optional[Sequence]) -> Optional[tuple[int, ...]]:
    """The shape as plain ints, or None when a size is symbolic (dynamic shapes under tracing)."""
    if shape is None:
        return None
    for s in shape:
        if type(s) is not int:
            return None
    return tuple(shape)


_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float64: "float64"}


def _serves(op: str, backend: str, device_type: str, dtype: Optional[torch.dtype], pass_: str, sizes: dict) -> str:
    return _op_unavailable_reason(op, backend, device_type) or capabilities.reason(op, backend, dtype, pass_, **sizes)


def resolve(op: str, device: torch.device, hw: int = 0, *, pass_: str = "forward", dtype: Optional[torch.dtype] = None,
            shape: Optional[Sequence[int]] = None, requested: Optional[str] = None, fallback: bool = True,
            measure: "bool | Callable[[], bool]" = False, c: Optional[int] = None, k: Optional[int] = None,
            out_norm: Optional[int] = None) -> str:
    """The concrete backend (never ``auto``) that runs ``pass_`` of ``op`` for one call.

    Args:
        op: one of ``capabilities.OPS``.
        device: the tensors' device.
        hw: the feature map's H*W (the shipped defaults' thresholds).
        pass_: ``forward`` or ``backward``.
        dtype, c, k, out_norm: the call's dtype and sizes, checked against the capability table
            (None: not checked).
        shape: the call's input shape, the key of a timed choice (None: no per-shape choice).
        requested: the backend asked for (default: the one in force, :func:`requested_backend`);
            ops pass the forward's request when they resolve the backward at the first backward.
        fallback: a backend asked for by name that runs on the device but whose kernels do not serve
            the call gets ``reference`` (the op runs PyTorch) when True; raises when False.
        measure: whether ``auto`` may verify and time kernels now (the op says so only in plain
            eager mode on real tensors; see ``autotune.may_measure``), or a callable that answers
            it, asked only when no settled choice is at hand.

    Raises:
        BackendUnavailableError: the backend asked for by name cannot run on ``device``, or has
            no kernel for the call and ``fallback`` is False.
        ValueError: ``CONVNEXT_FAST_BACKEND`` holds a value that is not a backend.
    """
    if requested is None:
        requested = requested_backend()
    return _resolve(op, pass_, requested, device.type, device.index, _DTYPE_NAMES.get(dtype),
                    _static_shape(shape), hw if type(hw) is int else 0, fallback, measure, c, k, out_norm)


@torch.compiler.assume_constant_result
def _resolve(op: str, pass_: str, requested: str, device_type: str, device_index: Optional[int],
             dtype_name: Optional[str], shape: Optional[tuple[int, ...]], hw: int, fallback: bool, measure,
             c: Optional[int], k: Optional[int], out_norm: Optional[int]) -> str:
    # Plain values in, a string out: torch.compile runs this once while tracing and keeps its result
    # (``measure`` is then the constant False).
    dtype = None if dtype_name is None else getattr(torch, dtype_name)
    sizes = {"c": c, "k": k, "out_norm": out_norm}
    if requested == "reference":
        return "reference"
    if requested != "auto":
        reason = _unavailable_reason(requested, device_type)
        if reason:
            raise BackendUnavailableError(f"convnext_fast backend {requested!r} cannot run {op}: {reason}")
        reason = _kernel_reason(op, requested) or capabilities.reason(op, requested, dtype, pass_, **sizes)
        if reason:
            if fallback:
                return "reference"
            raise BackendUnavailableError(f"convnext_fast backend {requested!r} cannot run {op}: {reason}")
        return requested
    from . import autotune

    candidates = [b for b in autotune.candidate_order(device_type)
                  if not _serves(op, b, device_type, dtype, pass_, sizes)]
    device = torch.device(device_type) if device_index is None else torch.device(device_type, device_index)
    return autotune.choose(op, pass_, device, dtype, shape, hw, tuple(candidates), measure)


def resolve_passes(op: str, device: torch.device, hw: int = 0) -> tuple[str, str]:
    """(forward backend, backward backend) for ``op`` on ``device`` from the record and defaults
    alone (nothing is measured); equal unless ``auto`` chose two. A backend asked for by name runs
    both passes or raises :class:`BackendUnavailableError`. The ops themselves resolve the backward
    at the first backward (:func:`resolve` with ``pass_="backward"``)."""
    forward = resolve(op, device, hw, fallback=False)
    if forward == "reference":
        return "reference", "reference"
    backward = resolve(op, device, hw, pass_="backward", fallback=False)
    if backward == "reference":
        backward = forward
    return forward, backward


_IMPLEMENTATIONS: dict[str, ModuleType] = {}  # filled on first use: importing triton is slow


def implementation(backend: str) -> ModuleType:
    """The module holding the forward/backward functions of a concrete, non-reference backend.

    Every such module provides the launchers the capability table (``capabilities.TABLE``) names
    for it, with the signatures documented in each op module (``depthwise_conv.py``, ...).
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


def dispatch_table() -> dict:
    """The shipped defaults for CUDA devices without a record of their own, in the shape of the
    former ``dispatch.json``: ``min_hw_triton`` (per op and pass, the smallest H*W at which Triton
    is taken over the CUDA extension) and ``kernels_verified`` (per op, whether ``auto`` takes its
    kernels without a parity run on the device)."""
    from . import record

    default = record.default_record()
    return {"cuda": {"min_hw_triton": default.rules.get("min_hw_triton", {}),
                     "kernels_verified": {op: bool(ok) for op, ok in default.rules.get("trusted", {}).items()}}}


def _unverified_by_default() -> frozenset:
    from . import record

    return frozenset(op for op, ok in record.default_record().rules.get("trusted", {}).items() if not ok)


# The ops whose kernels the shipped defaults do not take on a GPU without a parity run there (the
# default record's ``trusted`` false): with no record for the device and measuring off, ``auto``
# runs PyTorch for them.
_UNVERIFIED_ON_CUDA = _unverified_by_default()


def verified_on_cuda(op: str) -> bool:
    """Whether the shipped defaults take ``op``'s kernels on a GPU without a parity run there."""
    return op not in _UNVERIFIED_ON_CUDA
