"""Compiling the extension (sources in ``csrc/``, installed as ``convnext_fast.csrc``) on first use, with ninja through
``torch.utils.cpp_extension.load``.

Why on first use and not at install: the extension must match the torch it runs with, and pip's
default build isolation hides that torch from ``setup.py``. So every install (``pip install -e .``,
``pip install .``, a wheel) ships the sources, and the first call that needs the ``cpu`` or ``cuda``
backend compiles them once into a cache directory keyed by the sources, the flags, torch and
Python; later processes import the cached binary directly. ``python -m convnext_fast build``
compiles ahead of time (for example in a Docker image or a CI setup step).

The cache only ever holds complete libraries, because loading a truncated or overwritten one kills
the process (SIGBUS, SIGILL) before Python can report anything: a build runs in a fresh directory
beside its configuration's, the library is checked and renamed into place, and then a completeness
record (its size and SHA-256, ``convnext_fast_C.so.sha256``) is written. A library is loaded only
when its record matches it; otherwise it is built again, under the configuration's lock (a process
that finds another's build under way says so and waits for it). A complete library whose
configuration serves the process loads without a compiler, so a runtime image needs only the cache
that a build stage filled.

Switches (environment variables):

* ``CONVNEXT_FAST_BUILD_CPU=auto|0|1``  - the C++ CPU kernels (auto: when a C++ compiler is there)
* ``CONVNEXT_FAST_BUILD_CUDA=auto|0|1`` - the CUDA kernels (auto: when torch is a CUDA build, nvcc is
  there and a GPU is visible; ``1`` compiles them without a GPU, for a build check or an image)
* ``CONVNEXT_FAST_CUDA_ARCHS``          - semicolon-separated SM versions, default ``80;90``
* ``CONVNEXT_FAST_CACHE``               - where binaries go (default ``~/.cache/convnext_fast``)
* ``MAX_JOBS``                          - parallel compile jobs (ninja)

``auto`` leaves a part out when it cannot be built (the ``reference`` and ``triton`` backends keep
working, and ``python -m convnext_fast info`` says why); ``1`` raises :class:`BuildError` instead.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.machinery
import importlib.resources
import importlib.util
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

import torch

__all__ = ["BuildError", "BuildPlan", "plan", "load", "cache_root", "CSRC"]

#: The extension's sources: ``csrc/`` of the repository, shipped as package data of
#: ``convnext_fast.csrc`` with every install kind (wheel, sdist, editable).
CSRC = Path(os.fspath(importlib.resources.files("convnext_fast.csrc")))
SOURCE_SUFFIXES = (".cpp", ".cu", ".h")
MODULE_NAME = "convnext_fast_C"
RECORD_SUFFIX = ".sha256"  # the completeness record next to a cached library


class BuildError(RuntimeError):
    """The extension was required (a switch set to 1, or an explicit build) and could not be built."""


def _switch(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise BuildError(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


def cache_root() -> Path:
    """The directory holding one subdirectory per compiled configuration."""
    return Path(os.environ.get("CONVNEXT_FAST_CACHE") or Path.home() / ".cache" / "convnext_fast")


def _cxx_reason() -> str:
    cxx = os.environ.get("CXX", "c++")
    return "" if shutil.which(cxx) else f"no C++ compiler found (looked for {cxx!r}; set CXX)"


def _nvcc() -> Optional[str]:
    """nvcc from CUDA_HOME / CUDA_PATH, PATH or /usr/local/cuda, resolved through wrapper links."""
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None


def _cuda_root(nvcc: str) -> Optional[str]:
    """The toolkit root whose include/ has cuda_runtime.h (a /usr/local/bin/nvcc wrapper points
    elsewhere than its headers)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), os.path.dirname(os.path.dirname(nvcc)),
                  "/usr/local/cuda"]
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


def _cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    nvcc = _nvcc()
    if nvcc is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    if _cuda_root(nvcc) is None:
        return f"cuda_runtime.h not found next to {nvcc}; set CUDA_HOME to the toolkit root"
    return ""


def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return "unknown"


def _loaded_libstdcxx() -> list[str]:
    """[path of the libstdc++.so.6 this process (which has imported torch) has mapped], or [].

    Linked by its path so the extension uses the very libstdc++ torch loaded even under a compiler
    that links libstdc++ statically: a private static copy next to the process's one crashed the
    first time a TORCH_CHECK message was formatted."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))[:1]


@dataclass
class BuildPlan:
    """One configuration of the extension: which parts, with which flags, where."""

    cpu: bool
    cuda: bool
    archs: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # part -> why it is left out

    @property
    def sources(self) -> list[str]:
        files = [str(CSRC / "ext.cpp")]
        if self.cpu:
            files += sorted(p for p in glob.glob(str(CSRC / "*.cpp")) if not p.endswith("ext.cpp"))
        if self.cuda:
            files += sorted(glob.glob(str(CSRC / "*.cu")))
        return files

    def flags(self) -> dict[str, list[str]]:
        # No -march: the CPU kernels pick AVX2 / AVX-512 at run time, so the binary stays portable.
        # at::parallel_for is a header template over `#pragma omp parallel` when torch uses OpenMP:
        # without -fopenmp it silently runs on one thread.
        openmp = ["-fopenmp"] if sys.platform.startswith("linux") and self.cpu else []
        cxx = ["-O3", "-fno-math-errno", "-Wno-psabi"] + openmp
        nvcc = []
        if self.cuda:
            nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
            for a in self.archs:
                nvcc += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
            if self.archs:  # also embed PTX of the newest arch so newer GPUs can JIT it
                nvcc += ["-gencode", f"arch=compute_{self.archs[-1]},code=compute_{self.archs[-1]}"]
        return {"cxx": cxx, "nvcc": nvcc, "ld": openmp + _loaded_libstdcxx()}

    def key(self) -> str:
        """Hash of everything the binary depends on: sources and headers, flags, torch, Python."""
        h = hashlib.sha256()
        for path in sorted(p for p in CSRC.iterdir() if p.suffix in SOURCE_SUFFIXES):
            h.update(path.name.encode())
            h.update(path.read_bytes())
        h.update(repr((self.cpu, self.cuda, self.archs, self.flags(), torch.__version__, torch.version.cuda,
                       sys.version_info[:2], platform.machine())).encode())
        return h.hexdigest()[:16]

    def directory(self) -> Path:
        parts = "cpu" if not self.cuda else ("cuda" if not self.cpu else "cpu-cuda")
        tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{parts}"
        return cache_root() / f"{tag}-{self.key()}"

    def describe(self) -> str:
        parts = (["CPU kernels"] if self.cpu else []) + ([f"CUDA kernels for sm_{', sm_'.join(self.archs)}"]
                                                         if self.cuda else [])
        return " and ".join(parts) or "bindings only"


def _archs() -> list[str]:
    return [a.strip().replace(".", "") for a in os.environ.get("CONVNEXT_FAST_CUDA_ARCHS", "80;90").split(";")
            if a.strip()]


def _switches(cuda: Optional[bool]) -> tuple[str, str]:
    want_cpu, want_cuda = _switch("CONVNEXT_FAST_BUILD_CPU"), _switch("CONVNEXT_FAST_BUILD_CUDA")
    if cuda is not None:
        want_cuda = "1" if cuda else "0"
    return want_cpu, want_cuda


def plan(cuda: Optional[bool] = None) -> BuildPlan:
    """The configuration the switches ask for that can be compiled on this machine. ``cuda``
    overrides the CUDA switch (True: build the CUDA part even without a GPU).

    Raises:
        BuildError: a part that is required (its switch set to 1, or ``cuda=True``) cannot be
            compiled here. :func:`load` looks in the cache before it asks for this.
    """
    return _plan(cuda, strict=True)


def _plan(cuda: Optional[bool], strict: bool) -> BuildPlan:
    """:func:`plan`; with ``strict=False`` a required part that cannot be compiled is left out (and
    listed in ``skipped``) instead of raising."""
    want_cpu, want_cuda = _switches(cuda)
    skipped: dict[str, str] = {}
    cpu_ok = want_cpu != "0" and not _cxx_reason()
    if want_cpu == "0":
        skipped["cpu"] = "CONVNEXT_FAST_BUILD_CPU=0"
    elif not cpu_ok:
        if want_cpu == "1" and strict:
            raise BuildError(f"CONVNEXT_FAST_BUILD_CPU=1 but the CPU kernels cannot be built: {_cxx_reason()}")
        skipped["cpu"] = _cxx_reason()
    cuda_ok = False
    if want_cuda == "0":
        skipped["cuda"] = "not requested (CONVNEXT_FAST_BUILD_CUDA=0)"
    else:
        reason = _cuda_reason()
        if reason and want_cuda == "1" and strict:
            raise BuildError(f"the CUDA kernels were requested but cannot be built: {reason}")
        if not reason and want_cuda == "auto" and not torch.cuda.is_available():
            reason = "no GPU visible (set CONVNEXT_FAST_BUILD_CUDA=1 to compile the CUDA kernels anyway)"
        cuda_ok = not reason
        if reason:
            skipped["cuda"] = reason
    return BuildPlan(cpu=cpu_ok, cuda=cuda_ok, archs=_archs() if cuda_ok else [], skipped=skipped)


def _candidates(cuda: Optional[bool]) -> list[BuildPlan]:
    """The configurations whose complete cached library serves this process, most parts first.

    A part that can be compiled here must be in it (a cached library never takes away a part the
    machine could build); a part that cannot be compiled here (no compiler, no nvcc, no GPU) may
    be in it, since a prebuilt library needs no compiler to load; a part switched off is not.
    """
    want_cpu, want_cuda = _switches(cuda)
    here = _plan(cuda, strict=False)
    if want_cpu == "0":
        cpu_options = [False]
    elif here.cpu or want_cpu == "1":
        cpu_options = [True]
    else:
        cpu_options = [True, False]
    if want_cuda == "0":
        cuda_options = [False]
    elif here.cuda or want_cuda == "1":
        cuda_options = [True]
    elif torch.version.cuda is not None:
        cuda_options = [True, False]  # CUDA kernels built elsewhere run the CPU kernels the same
    else:
        cuda_options = [False]
    found = []
    for cpu in cpu_options:
        for cuda_part in cuda_options:
            if cpu or cuda_part:
                has = {"cpu": cpu, "cuda": cuda_part}
                skipped = {part: why for part, why in here.skipped.items() if not has[part]}
                found.append(BuildPlan(cpu=cpu, cuda=cuda_part, archs=_archs() if cuda_part else [], skipped=skipped))
    return found


def _write_build_config(p: BuildPlan, directory: Path) -> Path:
    """cf_build_config.h: what the binary is built with (``build_info()`` reports it)."""
    gen = directory / "generated"
    gen.mkdir(parents=True, exist_ok=True)
    flags = p.flags()
    values = {
        "CF_WITH_CPU": int(p.cpu), "CF_WITH_CUDA": int(p.cuda), "CF_CUDA_ARCHS": ";".join(p.archs),
        "CF_CUDA_VERSION": _nvcc_version(_nvcc()) if p.cuda else "", "CF_TORCH_VERSION": torch.__version__,
        "CF_CXX_FLAGS": " ".join(flags["cxx"]), "CF_NVCC_FLAGS": " ".join(flags["nvcc"]),
    }
    lines = ["// Generated: what convnext_fast's extension was built with.", "#pragma once"]
    lines += [f"#define {k} {v}" if isinstance(v, int) else f'#define {k} "{v}"' for k, v in values.items()]
    (gen / "cf_build_config.h").write_text("\n".join(lines) + "\n")
    return gen


def _so_path(directory: Path) -> Optional[Path]:
    found = sorted(directory.glob(f"{MODULE_NAME}*.so")) + sorted(directory.glob(f"{MODULE_NAME}*.pyd"))
    return found[0] if found else None


def _record_path(library: Path) -> Path:
    """The completeness record of a cached library: its size and SHA-256, written after it."""
    return library.with_name(library.name + RECORD_SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _complete_library(directory: Path) -> tuple[Optional[Path], str]:
    """(the library in ``directory``, "") when its completeness record matches it byte for byte;
    else (None, why it cannot be loaded), the reason "" when there is no library at all.

    Loading a truncated or overwritten library kills the process (SIGBUS, SIGILL) before Python
    can report anything, so nothing is loaded on the strength of the file merely existing.
    """
    so = _so_path(directory)
    if so is None:
        return None, ""
    record_path = _record_path(so)
    try:
        record = json.loads(record_path.read_text())
        size, digest = int(record["size"]), str(record["sha256"])
    except FileNotFoundError:
        return None, (f"{so} has no completeness record ({record_path.name}): the build that wrote it did not "
                      f"finish, or an older convnext_fast wrote it")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"the completeness record {record_path} is unreadable ({type(e).__name__}: {e})"
    try:
        actual = so.stat().st_size
        if actual != size:
            return None, f"{so} is damaged: it has {actual} bytes, {size} were written"
        if _sha256(so) != digest:
            return None, f"{so} is damaged: its SHA-256 differs from the one recorded when it was written"
    except OSError as e:
        return None, f"{so} cannot be read ({e})"
    return so, ""


def _incomplete_reason(path: Path) -> str:
    """'' when ``path`` holds a whole shared library as far as its ELF header tells (nothing is
    loaded); else what is wrong. Only 64-bit little-endian ELF files are measured."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            if size == 0:
                return "it is empty"
            if not sys.platform.startswith("linux"):
                return ""
            if head[:4] != b"\x7fELF":
                return f"it is not an ELF shared library (it starts with {head[:8]!r})"
            if len(head) < 64 or head[4] != 2 or head[5] != 1:
                return ""
            phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
            end = shoff + shnum * shentsize
            f.seek(phoff)
            table = f.read(phnum * phentsize)
    except OSError as e:
        return f"it cannot be read ({e})"
    if len(table) < phnum * phentsize:
        return f"it is truncated ({size} bytes, its program headers end at byte {phoff + phnum * phentsize})"
    for i in range(phnum):
        offset, filesz = struct.unpack_from("<Q", table, i * phentsize + 8)[0], \
            struct.unpack_from("<Q", table, i * phentsize + 32)[0]
        end = max(end, offset + filesz)
    if end > size:
        return f"it is truncated ({size} bytes, its ELF header describes {end})"
    return ""


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _install(staged: Path, directory: Path) -> Path:
    """Move a checked library from its build directory into ``directory`` (one rename, so a reader
    sees the old file or the new one, never part of one), then write its completeness record."""
    size, digest = staged.stat().st_size, _sha256(staged)
    _fsync(staged)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / staged.name
    record = _record_path(final)
    record.unlink(missing_ok=True)  # the library it describes is about to be replaced
    os.replace(staged, final)
    pending = record.with_name(record.name + ".tmp")
    pending.write_text(json.dumps({"file": final.name, "size": size, "sha256": digest}) + "\n")
    _fsync(pending)
    os.replace(pending, record)
    return final


def _unwritable(path: Path, e: OSError) -> str:
    return (f"cannot write the extension cache at {path} ({e.strerror or e}): set CONVNEXT_FAST_CACHE to a writable "
            f"directory (the default is ~/.cache/convnext_fast), or build the extension ahead of time where the "
            f"cache is writable (`python -m convnext_fast build`)")


def _import_binary(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """An exclusive file lock on one configuration, so two processes never build it at once. A
    process that has to wait for another's build says so.

    Raises:
        BuildError: the cache directory or the lock file cannot be written.
    """
    lock_path = Path(str(directory) + ".lock")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a")
    except OSError as e:
        raise BuildError(_unwritable(directory.parent, e)) from e
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"convnext_fast: waiting for another process's build of the extension (it holds {lock_path})...",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(p: BuildPlan, directory: Path, verbose: bool) -> None:
    """Compile ``p`` with ninja in ``directory`` (a fresh build directory), leaving the library there."""
    from torch.utils import cpp_extension

    flags = p.flags()
    include = [str(CSRC), str(_write_build_config(p, directory))]
    if p.cuda:
        root = _cuda_root(_nvcc())
        # torch derives CUDA_HOME from `which nvcc`, which is wrong for a wrapper outside the
        # toolkit; load() reads the module global when it writes the ninja file.
        cpp_extension.CUDA_HOME = root
        include.append(os.path.join(root, "include"))
    cpp_extension.load(
        name=MODULE_NAME, sources=p.sources, extra_cflags=flags["cxx"], extra_cuda_cflags=flags["nvcc"],
        extra_ldflags=flags["ld"], extra_include_paths=include, build_directory=str(directory),
        with_cuda=p.cuda, verbose=verbose,
    )


def _build(p: BuildPlan, directory: Path, verbose: bool, why_not_cached: str) -> Path:
    """Compile ``p`` in a fresh directory next to ``directory``, check the library, move it into
    ``directory`` and record it complete. The caller holds the configuration's lock."""
    root = directory.parent
    # Build directories left by a builder that was killed: no other builder runs under this lock.
    for stale in root.glob(glob.escape(directory.name) + ".build-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=directory.name + ".build-", dir=root))
    except OSError as e:
        raise BuildError(_unwritable(root, e)) from e
    try:
        if why_not_cached:
            print(f"convnext_fast: not loading the cached extension: {why_not_cached}; building it again",
                  file=sys.stderr, flush=True)
        start = time.monotonic()
        print(f"convnext_fast: compiling the extension ({p.describe()}) for {directory}; once per torch version and "
              f"source change (a minute or more)...", file=sys.stderr, flush=True)
        _compile(p, staging, verbose)
        staged = _so_path(staging)
        if staged is None:
            raise BuildError(f"compiling the extension left no binary in {staging}")
        bad = _incomplete_reason(staged)
        if bad:
            raise BuildError(f"compiling the extension left an unusable binary {staged}: {bad}")
        try:
            final = _install(staged, directory)
        except OSError as e:
            raise BuildError(_unwritable(directory, e)) from e
        print(f"convnext_fast: extension compiled in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _not_cached(problems: list[str]) -> str:
    found = f" ({'; '.join(problems)})" if problems else ""
    return (f"no complete prebuilt library for this torch, Python and these sources is in {cache_root()}{found}; "
            f"`python -m convnext_fast build` makes one where a compiler is (CONVNEXT_FAST_CACHE chooses the cache)")


def load(p: Optional[BuildPlan] = None, verbose: bool = False,
         cuda: Optional[bool] = None) -> tuple[ModuleType, BuildPlan, str]:
    """(the extension module, its plan, how it was obtained: "cached" or "compiled").

    Only a library whose completeness record matches it is loaded; one that is missing, damaged
    or still being written is compiled again under the configuration's lock (a process that
    arrives during another's build waits for it and then loads its result).

    Args:
        p: load or build exactly this configuration. Default: the configuration the switches ask
            for; a complete cached library serving it is loaded even where nothing can be
            compiled (no compiler or nvcc: a runtime image built from a stage that ran
            ``python -m convnext_fast build``). In ``auto`` mode without a GPU, a cached build that
            also has the CUDA part is used when there is one (it runs the CPU kernels the same).
        verbose: show the compiler commands.
        cuda: with ``p`` None, overrides the CUDA switch as in :func:`plan`.

    Raises:
        BuildError: nothing usable is cached and nothing can be built (the message says why, and
            what was found in the cache), or the cache cannot be written. Whatever the compiler
            reported when compiling fails.
    """
    candidates = [p] if p is not None else _candidates(cuda)
    problems = []
    for candidate in candidates:
        so, why = _complete_library(candidate.directory())
        if so is not None:
            return _import_binary(so), candidate, "cached"
        if why:
            problems.append(why)
    if p is None:
        try:
            p = plan(cuda)
        except BuildError as e:
            raise BuildError(f"{e}; {_not_cached(problems)}") from None
    if not (p.cpu or p.cuda):
        raise BuildError("neither the CPU nor the CUDA kernels can be built here (" +
                         "; ".join(f"{k}: {v}" for k, v in p.skipped.items()) + f"), and {_not_cached(problems)}")
    directory = p.directory()
    with _lock(directory):
        so, why = _complete_library(directory)  # another process may have built it while this one waited
        how = "cached"
        if so is None:
            so = _build(p, directory, verbose, why)
            how = "compiled"
    module = _import_binary(so)
    if how == "compiled":
        # cpp_extension.load imported the library from its build directory, removed since, and the
        # interpreter hands back that module: name the installed file (the same bytes) instead.
        module.__file__ = str(so)
    return module, p, how
