"""The per-device record behind ``auto``: which kernels passed their parity checks on a device, and
which backend was timed fastest at each shape.

One JSON file per device, in the user's cache directory beside the compiled extension
(``$CONVNEXT_FAST_CACHE/records/``, default ``~/.cache/convnext_fast/records/``)::

    {"format": 1, "device": "NVIDIA H100 80GB HBM3", "capability": "9.0",
     "versions": {"torch": ..., "triton": ..., "cuda": ...}, "kernels_hash": "<sha256 of kernels/>",
     "verdicts": {op: {dtype: {backend: {"passed": bool, "error": str | null, "checks": int, ...}}}},
     "choices": {"op|pass|dtype|shape": {"choice": backend | null, "times_ms": {backend: ms},
                                         "error": str | null}},
     "rules": {...}}                                   # shipped records: the defaults' thresholds

A cached record counts only where all of device, capability, versions and kernel hash match this
installation; anything else (another version, a corrupt or partial file) is ignored and rebuilt.
Writes are atomic (a temporary file in the same directory, then a rename) under a lock file, and
merge with what another process wrote meanwhile: the first decision for a key stands.

Shipped records (package data ``convnext_fast/records/*.json``, same format) are found by device
name and capability; their timed choices apply whatever the versions, their parity verdicts only
where the kernel hash matches. ``default.json`` holds the defaults for a device with no record.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

__all__ = ["FORMAT", "Record", "current_key", "default_record", "kernels_hash", "load_local", "record_path",
           "records_dir", "shipped_record", "slug"]

FORMAT = 1
_SHIPPED_DIR = Path(__file__).resolve().parent / "records"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "none"


@functools.lru_cache(maxsize=None)
def kernels_hash() -> str:
    """sha256 over the Triton kernel sources (``convnext_fast.kernels``, found without importing it):
    a record's parity verdicts hold for these sources only."""
    spec = importlib.util.find_spec("convnext_fast.kernels")
    h = hashlib.sha256()
    for location in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(location).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, str]:
    """torch, Triton and CUDA versions of this installation (Triton's without importing it)."""
    return {"torch": torch.__version__, "triton": _dist_version("triton"), "cuda": torch.version.cuda or "none"}


def current_key(device: str, capability: str) -> dict:
    """What a cached record must match to count here."""
    return {"format": FORMAT, "device": device, "capability": capability, "versions": versions(),
            "kernels_hash": kernels_hash()}


def slug(device: str, capability: str) -> str:
    """A file name for a device: ``nvidia-h100-80gb-hbm3-sm90``."""
    name = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    if re.fullmatch(r"\d+\.\d+", capability):
        return f"{name}-sm{capability.replace('.', '')}"
    return f"{name}-{re.sub(r'[^a-z0-9]+', '-', capability.lower()).strip('-')}"


def records_dir() -> Path:
    """``$CONVNEXT_FAST_CACHE/records`` (default ``~/.cache/convnext_fast/records``)."""
    from .build import cache_root

    return cache_root() / "records"


def record_path(device: str, capability: str) -> Path:
    """Where this device's record is kept."""
    return records_dir() / f"{slug(device, capability)}.json"


@dataclass
class Record:
    """One device's verdicts and choices (see the module docstring for the format)."""

    device: Optional[str]
    capability: Optional[str]
    versions: dict = field(default_factory=dict)
    kernels_hash: Optional[str] = None
    verdicts: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    path: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict, path: Optional[Path] = None) -> "Record":
        """Raises ``ValueError`` for anything that is not a record of this format."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a convnext_fast device record of format {FORMAT}")
        for name in ("verdicts", "choices", "rules", "versions"):
            if not isinstance(data.get(name, {}), dict):
                raise ValueError(f"a record's {name} must be an object")
        for key, entry in data.get("choices", {}).items():
            if not isinstance(key, str) or not isinstance(entry, dict) or "choice" not in entry:
                raise ValueError(f"bad choice entry {key!r}")
        known = {"format", "device", "capability", "versions", "kernels_hash", "verdicts", "choices", "rules"}
        return cls(device=data.get("device"), capability=data.get("capability"), versions=data.get("versions", {}),
                   kernels_hash=data.get("kernels_hash"), verdicts=data.get("verdicts", {}),
                   choices=data.get("choices", {}), rules=data.get("rules", {}), path=path,
                   extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict:
        out = {"format": FORMAT, "device": self.device, "capability": self.capability, "versions": self.versions,
               "kernels_hash": self.kernels_hash, **self.extra, "verdicts": self.verdicts, "choices": self.choices}
        if self.rules:
            out["rules"] = self.rules
        return out

    def matches(self, key: dict) -> bool:
        return (self.device == key["device"] and self.capability == key["capability"]
                and self.versions == key["versions"] and self.kernels_hash == key["kernels_hash"])

    def verdict(self, op: str, dtype: str, backend: str) -> Optional[dict]:
        return self.verdicts.get(op, {}).get(dtype, {}).get(backend)

    def set_verdict(self, op: str, dtype: str, backend: str, verdict: dict) -> None:
        self.verdicts.setdefault(op, {}).setdefault(dtype, {})[backend] = verdict

    def merge_from(self, other: "Record") -> None:
        """Take ``other``'s entries for keys this record lacks, and let its existing entries stand
        over ours: the first decision written for a key is the one every process keeps."""
        for op, by_dtype in other.verdicts.items():
            for dtype, by_backend in by_dtype.items():
                for backend, verdict in by_backend.items():
                    self.set_verdict(op, dtype, backend, verdict)
        self.choices.update(other.choices)


def choice_key(op: str, pass_: str, dtype: str, shape: tuple[int, ...]) -> str:
    """``op|pass|dtype|NxCxHxW...``: a timed choice's key."""
    return f"{op}|{pass_}|{dtype}|{'x'.join(map(str, shape))}"


def _read(path: Path) -> Optional[Record]:
    try:
        with open(path) as f:
            return Record.from_json(json.load(f), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        # Corrupt, partial or of another format: ignored here, rebuilt by the next write.
        _warn_once(f"ignored:{path}", f"convnext_fast: ignoring the unreadable device record {path} ({e}); "
                                      "it is rebuilt as kernels are checked again")
        return None


def load_local(device: str, capability: str) -> Record:
    """This device's cached record if it matches this installation, else a new empty one (kept at
    the same path, replacing the stale file on the first write)."""
    key = current_key(device, capability)
    path = record_path(device, capability)
    found = _read(path)
    if found is not None and found.matches(key):
        return found
    return Record(device=device, capability=capability, versions=key["versions"], kernels_hash=key["kernels_hash"],
                  path=path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save(record: Record, forced: Optional[dict] = None) -> bool:
    """Write ``record`` atomically, merged with what is on disk for the same installation (entries
    already there stand, except the verdicts in ``forced``: {(op, dtype, backend): verdict}, which
    replace any). Returns False, after one warning per process, when the directory cannot be
    written: the record then lives in memory only."""
    for (op, dtype, backend), verdict in (forced or {}).items():
        record.set_verdict(op, dtype, backend, verdict)
    path = record.path or record_path(record.device, record.capability)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            on_disk = _read(path)
            if on_disk is not None and on_disk.matches(current_key(record.device, record.capability)):
                record.merge_from(on_disk)
                for (op, dtype, backend), verdict in (forced or {}).items():
                    record.set_verdict(op, dtype, backend, verdict)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(record.to_json(), f, indent=1, sort_keys=True)
                    f.write("\n")
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as e:
        _warn_once(f"readonly:{path.parent}",
                   f"convnext_fast: cannot write the device record {path} ({e}); the kernel checks and choices are "
                   "kept in memory for this process only. Set CONVNEXT_FAST_CACHE to a writable directory.")
        return False
    return True


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def _shipped() -> tuple[Record, ...]:
    out = []
    for path in sorted(_SHIPPED_DIR.glob("*.json")):
        if path.name == "default.json":
            continue
        with open(path) as f:
            out.append(Record.from_json(json.load(f), path))
    return tuple(out)


def shipped_record(device: str, capability: str) -> Optional[Record]:
    """The package's record for this device name and compute capability, if it ships one."""
    for rec in _shipped():
        if rec.device == device and rec.capability == capability:
            return rec
    return None


@functools.lru_cache(maxsize=None)
def default_record() -> Record:
    """The defaults for a device without a record: ``rules`` (``min_hw_triton`` thresholds, and per op
    whether its kernels are ``trusted`` without a parity run on the device)."""
    with open(_SHIPPED_DIR / "default.json") as f:
        return Record.from_json(json.load(f), _SHIPPED_DIR / "default.json")


def copy_record(rec: Record) -> Record:
    """A deep copy (entries that will be written must not alias a shipped record's)."""
    return copy.deepcopy(rec)
