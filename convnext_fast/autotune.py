"""``auto`` on a GPU: check the kernels on the device, time them at the call's shape, remember both.

The way cuDNN's benchmark mode and Triton's autotuner learn a device, with a parity gate first.
On a CUDA tensor, in plain eager mode, the first call of an op in a dtype:

1. verifies the op family's kernels on this device in that dtype, per kernel backend: small
   checks of ``python -m convnext_fast verify``'s kind against the float64 reference
   (:mod:`convnext_fast.parity`), within :data:`Config.verify_cap_s` seconds, compiles included. A
   backend whose kernels fail is never chosen on the device (one warning says so and names
   ``python -m convnext_fast verify``);
2. times the verified backends and PyTorch at the call's own shape (``warmup`` runs, then the median
   of ``reps`` synchronised runs each) and keeps the fastest; a kernel must beat PyTorch by
   :data:`MARGIN` to be chosen.

Both go into the device's record (:mod:`convnext_fast.record`), so later calls and later processes
reuse them: one decision per (op, pass, dtype, shape). An exception while verifying or timing (out
of memory included) is recorded and the call takes the defaults. Inputs come from a private
``torch.Generator`` and the RNG states are restored, so a seeded run draws the same numbers with
and without a record. One line on stderr, once per process, says what is being checked and where
the record is kept.

Nothing is measured while torch.compile / torch.export trace, under a dispatch mode (fake
tensors), during CUDA-graph capture, under torch.distributed with more than one process (every
rank must make the same choices: write the record ahead of time with
``python -m convnext_fast tune``), or when ``CONVNEXT_FAST_AUTOTUNE=0``. Then the record is used,
else the device's shipped record, else the shipped defaults (``records/default.json``).

Device identity, clock, synchronisation and check set are injectable (:func:`configure`), which is
how the tests run this code on the CPU with Triton's interpreter as the kernel and a fake clock.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from . import record as records

__all__ = ["Config", "MARGIN", "configure", "config", "may_measure", "choose", "reset", "store_for"]

ENV_VAR = "CONVNEXT_FAST_AUTOTUNE"
#: A kernel must be at least this much faster than PyTorch (3%) to be chosen over it.
MARGIN = 0.97


def _cuda_identity(device: torch.device) -> tuple[str, str]:
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _default_checks(op: str, dtype: torch.dtype, backend: str) -> list:
    from . import autotune_cases

    return autotune_cases.checks(op, dtype, backend)


@dataclass(frozen=True)
class Config:
    """What :func:`choose` uses; swap parts with :func:`configure`.

    Attributes:
        identity: device -> (name, compute capability "major.minor").
        clock: seconds, monotonic.
        sync: waits for the device's queued work.
        checks: (op, dtype, backend) -> the ``verify.Check`` list that decides the verdict.
        order: per device type, the kernel backends in the order the defaults prefer them.
        tuned: the device types on which ``auto`` verifies and times (CUDA).
        verify_cap_s: time cap per op family and backend for the checks (compiles included).
        warmup, reps: timing runs per candidate.
    """

    identity: Callable[[torch.device], tuple[str, str]] = _cuda_identity
    clock: Callable[[], float] = time.perf_counter
    sync: Callable[[torch.device], None] = _sync
    checks: Callable[[str, torch.dtype, str], list] = _default_checks
    order: dict = field(default_factory=lambda: {"cuda": ("triton", "cuda"), "cpu": ("cpu",)})
    tuned: frozenset = frozenset({"cuda"})
    verify_cap_s: float = 180.0
    warmup: int = 2
    reps: int = 5


_config = Config()
_lock = threading.RLock()
# (device name, capability) -> the record in use (loaded, or new and filled as we go).
_stores: dict[tuple[str, str], records.Record] = {}
# The resolved choices of this process, per call signature: (choice, final). A final choice comes
# from a record or a measurement; a non-final one from defaults while measuring was not possible.
_memo: dict[tuple, tuple[str, bool]] = {}
_announced = False
_warned: set[str] = set()
stats = {"verifications": 0, "timings": 0}


def config() -> Config:
    return _config


def configure(**changes) -> Config:
    """Replace parts of the configuration (see :class:`Config`) and forget what this process has
    resolved; returns the previous configuration, to restore with ``configure(**vars(previous))``."""
    global _config
    previous = _config
    _config = replace(_config, **changes)
    reset()
    return previous


def reset() -> None:
    """Forget the records loaded and the choices made in this process (the files stay)."""
    global _announced
    with _lock:
        _stores.clear()
        _memo.clear()
        _announced = False
        _warned.clear()
        records._warned.clear()
        stats.update(verifications=0, timings=0)


def candidate_order(device_type: str) -> tuple[str, ...]:
    """The kernel backends ``auto`` considers on ``device_type``, in the defaults' preference."""
    return tuple(_config.order.get(device_type, ()))


def measuring_enabled() -> bool:
    """False when ``CONVNEXT_FAST_AUTOTUNE=0``."""
    return os.environ.get(ENV_VAR, "1").strip() not in ("0", "false", "off", "no")


def may_measure(*tensors: Optional[Tensor]) -> bool:
    """Whether an op call with these tensors may verify and time kernels now: plain eager mode on
    real tensors of a tuned device type, measuring on, no CUDA-graph capture, no multi-process
    torch.distributed group."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if not measuring_enabled():
        return False
    if torch._C._len_torch_dispatch_stack() > 0:
        return False
    first = next((t for t in tensors if t is not None), None)
    if first is None or first.device.type not in _config.tuned:
        return False
    for t in tensors:
        if t is not None and type(t) not in (Tensor, torch.nn.Parameter):
            return False
    if first.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            return False
    return True


def _identity(device: torch.device) -> Optional[tuple[str, str]]:
    try:
        return _config.identity(device)
    except Exception:  # noqa: BLE001 - no identity: the defaults decide
        return None


def store_for(identity: tuple[str, str]) -> records.Record:
    """The record in use for a device (loaded from the cache on first use)."""
    with _lock:
        rec = _stores.get(identity)
        if rec is None:
            rec = _stores[identity] = records.load_local(*identity)
        return rec


def _announce(identity: tuple[str, str], rec: records.Record) -> None:
    global _announced
    if not _announced:
        _announced = True
        print(f"convnext_fast: checking and timing the kernels on {identity[0]} on first use of each op and dtype "
              f"(once per device; record: {rec.path}; CONVNEXT_FAST_AUTOTUNE=0 turns this off)", file=sys.stderr)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _default_trusted(op: str) -> bool:
    from . import backend

    return op not in backend._UNVERIFIED_ON_CUDA


def _rules(identity: Optional[tuple[str, str]]) -> dict:
    shipped = records.shipped_record(*identity) if identity else None
    return (shipped or records.default_record()).rules


def _default_choice(op: str, pass_: str, hw: int, trusted: Sequence[str], identity) -> str:
    """The shipped defaults: among trusted kernels, Triton from ``min_hw_triton`` up, the CUDA
    extension below; else the first trusted one; else PyTorch."""
    if not trusted:
        return "reference"
    threshold = _rules(identity).get("min_hw_triton", {}).get(op, {}).get(pass_, 0)
    if "triton" in trusted and "cuda" in trusted:
        return "triton" if hw >= threshold else "cuda"
    return trusted[0]


def _verdict(rec: Optional[records.Record], identity, op: str, dtype: str, backend: str,
             device: torch.device, measure: bool) -> Optional[bool]:
    """True / False when known (or measured now), None when the defaults decide."""
    if rec is not None:
        v = rec.verdict(op, dtype, backend)
        if v is not None:
            return None if v.get("error") else bool(v.get("passed"))
        shipped = records.shipped_record(*identity)
        if shipped is not None and shipped.kernels_hash == records.kernels_hash():
            v = shipped.verdict(op, dtype, backend)
            if v is not None and not v.get("error"):
                return bool(v.get("passed"))
        if measure:
            v = _verify(rec, identity, op, dtype, backend, device)
            return None if v.get("error") else bool(v["passed"])
    return None


@contextlib.contextmanager
def _isolated(device: torch.device) -> Iterator[None]:
    """What the checks and timings run under, whatever the calling code set: the global RNG states
    restored afterwards, grad mode on and inference mode off (the checks take gradients), autocast
    off (the checks set their own dtypes)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in {"cpu", device.type}:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _verify(rec: records.Record, identity, op: str, dtype: str, backend: str, device: torch.device) -> dict:
    from . import verify

    _announce(identity, rec)
    stats["verifications"] += 1
    t0 = time.perf_counter()
    verdict: dict = {"passed": False, "error": None, "checks": 0, "failed": []}
    try:
        with _isolated(device):
            checks = _config.checks(op, getattr(torch, dtype), backend)
            for check in checks:
                if time.perf_counter() - t0 > _config.verify_cap_s:
                    raise TimeoutError(f"the checks of {op} took over {_config.verify_cap_s:.0f} s")
                row = verify.run_checks([check], device, log=lambda line: None)[0]
                verdict["checks"] += 1
                if row["error"]:
                    raise RuntimeError(row["error"])
                if not row["passed"]:
                    verdict["failed"].append(row["what"])
        verdict["passed"] = bool(verdict["checks"]) and not verdict["failed"]
        if not verdict["checks"]:
            verdict["error"] = "no checks for this op"
    except Exception as e:  # noqa: BLE001 - recorded; the defaults decide
        verdict["error"] = f"{type(e).__name__}: {e}"[:300]
    verdict["seconds"] = round(time.perf_counter() - t0, 2)
    with _lock:
        rec.set_verdict(op, dtype, backend, verdict)
        records.save(rec)
    final = rec.verdict(op, dtype, backend)  # another process may have written first: its verdict stands
    if not final.get("error") and not final.get("passed"):
        _warn_once(f"failed:{op}:{backend}",
                   f"convnext_fast: the {backend} kernels of {op} failed their parity check on {identity[0]} in "
                   f"{dtype} ({', '.join(final.get('failed', [])) or 'see the record'}); auto will not use them "
                   f"here (record: {rec.path}). Run `python -m convnext_fast verify` for the details and please "
                   "report them.")
    return final


def _time_one(fn: Callable[[], object], device: torch.device) -> float:
    for _ in range(_config.warmup):
        fn()
    times = []
    for _ in range(_config.reps):
        _config.sync(device)
        t0 = _config.clock()
        fn()
        _config.sync(device)
        times.append(_config.clock() - t0)
    return statistics.median(times)


def _measure(rec: records.Record, identity, op: str, pass_: str, dtype: str, shape: tuple[int, ...],
             trusted: Sequence[str], device: torch.device, key: str) -> dict:
    from . import autotune_cases

    _announce(identity, rec)
    stats["timings"] += 1
    entry: dict = {"choice": None, "times_ms": {}, "error": None}
    try:
        with _isolated(device):
            runs = autotune_cases.runners(op, pass_, getattr(torch, dtype), shape, device,
                                          tuple(trusted) + ("reference",))
            with torch.no_grad():
                for backend, fn in runs.items():
                    entry["times_ms"][backend] = _time_one(fn, device) * 1e3
        times = entry["times_ms"]
        ours = [b for b in trusted if b in times]
        best = min(ours, key=lambda b: times[b]) if ours else None
        entry["choice"] = best if best is not None and times[best] <= MARGIN * times["reference"] else "reference"
    except Exception as e:  # noqa: BLE001 - recorded; the defaults decide
        entry["error"] = f"{type(e).__name__}: {e}"[:300]
    with _lock:
        rec.choices.setdefault(key, entry)
        records.save(rec)
    return rec.choices[key]


def choose(op: str, pass_: str, device: torch.device, dtype: Optional[torch.dtype], shape: Optional[tuple[int, ...]],
           hw: int, candidates: tuple[str, ...], measure: "bool | Callable[[], bool]") -> str:
    """``auto``'s backend for one call: ``candidates`` are the kernel backends that run on the device
    and serve the call (backend.py checked both); PyTorch (``reference``) is always possible.
    ``measure``: whether this call may verify and time (or a callable asked only when needed)."""
    if device.type not in _config.tuned:
        return candidates[0] if candidates else "reference"
    memo_key = (op, pass_, device, dtype, shape, hw, candidates)
    hit = _memo.get(memo_key)
    if hit is not None and hit[1]:
        return hit[0]
    if callable(measure):
        measure = bool(measure())
    if hit is not None and not measure:
        return hit[0]
    with _lock:
        identity = _identity(device)
        choice, final = _choose(op, pass_, device, identity, dtype, shape, hw, candidates, measure)
        if identity is not None:  # an unidentified device is asked again (only ever without a GPU)
            _memo[memo_key] = (choice, final)
    return choice


def _choose(op, pass_, device, identity, dtype, shape, hw, candidates, measure) -> tuple[str, bool]:
    rec = store_for(identity) if identity is not None else None
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    measure = measure and rec is not None and dtype_name is not None
    trusted = []
    for b in candidates:
        v = _verdict(rec, identity, op, dtype_name, b, device, measure) if dtype_name else None
        if v is None:
            v = _default_trusted(op)
        if v:
            trusted.append(b)
    if rec is not None and dtype_name is not None and shape is not None:
        key = records.choice_key(op, pass_, dtype_name, shape)
        entry = rec.choices.get(key)
        if entry is None and measure and op in _timed_ops():
            entry = _measure(rec, identity, op, pass_, dtype_name, shape, trusted, device, key)
        if entry is not None and not entry.get("error") and (entry["choice"] in trusted
                                                              or entry["choice"] == "reference"):
            return entry["choice"], True
        shipped = records.shipped_record(*identity)
        entry = shipped.choices.get(key) if shipped is not None else None
        if entry is not None and (entry.get("choice") in trusted or entry.get("choice") == "reference"):
            return entry["choice"], False
    if rec is not None and op not in _timed_ops() and dtype_name is not None:
        # Verified, never timed here (folded_block): the verdict alone decides.
        return (trusted[0] if trusted else "reference"), measure
    return _default_choice(op, pass_, hw, trusted, identity), False


def _timed_ops() -> frozenset:
    from . import autotune_cases

    return autotune_cases.TIMED_OPS


def _backend_reason(op: str, backend: str, device_type: str) -> str:
    """'' when ``backend`` runs on ``device_type`` and has ``op``'s kernels, else why not."""
    from . import backend as backends

    return backends._op_unavailable_reason(op, backend, device_type)


def record_in_use(device: torch.device) -> tuple[Optional[records.Record], str]:
    """(the record ``auto`` reads for ``device``, what it is) for ``info``: the cached record, else the
    shipped one for the device, else the shipped defaults."""
    identity = _identity(device)
    if identity is None:
        return records.default_record(), "shipped defaults (records/default.json): the device is not identified"
    rec = store_for(identity)
    if rec.verdicts or rec.choices:
        return rec, f"{rec.path} ({sum(len(d) for d in rec.verdicts.values())} op/dtype verdicts, " \
                    f"{len(rec.choices)} timed choices)"
    shipped = records.shipped_record(*identity)
    if shipped is not None:
        return shipped, f"shipped record {shipped.path.name} (nothing measured here yet; measured on first use into " \
                        f"{rec.path})"
    return records.default_record(), f"shipped defaults (nothing measured here yet; measured on first use into {rec.path})"


def record_failures(device: torch.device, rows: Sequence[dict]) -> Optional[str]:
    """Mark in ``device``'s record the Triton kernels that failed ``verify``'s checks (rows of
    ``verify.run_checks``), per op and dtype, so that ``auto`` never takes them there. Returns the
    record's path, or None when nothing failed or the device is not identified."""
    identity = _identity(device)
    failed: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if not row["passed"]:
            failed.setdefault((row["op"], row["dtype"]), []).append(row["what"])
    if identity is None or not failed:
        return None
    with _lock:
        rec = store_for(identity)
        forced = {}
        for (op, dtype), whats in failed.items():
            verdict = {"passed": False, "error": None, "checks": len(whats), "failed": whats, "source": "verify"}
            forced[(op, dtype, "triton")] = verdict
        records.save(rec, forced=forced)
        _memo.clear()
    return str(rec.path)
