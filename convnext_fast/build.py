"""Compiling the extension (sources in ``csrc/``, installed as ``convnext_fast.csrc``) on first use, with ninja through
``torch.utils.cpp_extension.load``.

Why on first use and not at install: the extension must match the torch it runs with, and pip's
default build isolation hides that torch from ``setup.py``. So every install (``pip install -e .``,
``pip install .``, a wheel) ships the sources, and the first call that needs the ``cpu`` or ``cuda``
backend compiles them once into a cache directory keyed by the sources, the flags, torch and
Python; later processes import the cached binary directly. ``python -m convnext_fast build``
compiles ahead of time (for example in a Docker image or a CI setup step).

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
import os
import platform
import shutil
import subprocess
import sys
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


def plan(cuda: Optional[bool] = None) -> BuildPlan:
    """The configuration the switches ask for on this machine. ``cuda`` overrides the CUDA switch
    (True: build the CUDA part even without a GPU)."""
    want_cpu, want_cuda = _switch("CONVNEXT_FAST_BUILD_CPU"), _switch("CONVNEXT_FAST_BUILD_CUDA")
    if cuda is not None:
        want_cuda = "1" if cuda else "0"
    skipped: dict[str, str] = {}
    cpu_ok = want_cpu != "0" and not _cxx_reason()
    if want_cpu == "0":
        skipped["cpu"] = "CONVNEXT_FAST_BUILD_CPU=0"
    elif not cpu_ok:
        if want_cpu == "1":
            raise BuildError(f"CONVNEXT_FAST_BUILD_CPU=1 but the CPU kernels cannot be built: {_cxx_reason()}")
        skipped["cpu"] = _cxx_reason()
    cuda_ok = False
    if want_cuda == "0":
        skipped["cuda"] = "not requested (CONVNEXT_FAST_BUILD_CUDA=0)"
    else:
        reason = _cuda_reason()
        if reason and want_cuda == "1":
            raise BuildError(f"the CUDA kernels were requested but cannot be built: {reason}")
        if not reason and want_cuda == "auto" and not torch.cuda.is_available():
            reason = "no GPU visible (set CONVNEXT_FAST_BUILD_CUDA=1 to compile the CUDA kernels anyway)"
        cuda_ok = not reason
        if reason:
            skipped["cuda"] = reason
    archs = [a.strip().replace(".", "") for a in os.environ.get("CONVNEXT_FAST_CUDA_ARCHS", "80;90").split(";")
             if a.strip()] if cuda_ok else []
    return BuildPlan(cpu=cpu_ok, cuda=cuda_ok, archs=archs, skipped=skipped)


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


def _import_binary(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(MODULE_NAME, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """An exclusive file lock, so two processes never compile the same configuration at once."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(str(directory) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(p: BuildPlan, directory: Path, verbose: bool) -> None:
    from torch.utils import cpp_extension

    flags = p.flags()
    include = [str(CSRC), str(_write_build_config(p, directory))]
    if p.cuda:
        root = _cuda_root(_nvcc())
        # torch derives CUDA_HOME from `which nvcc`, which is wrong for a wrapper outside the
        # toolkit; load() reads the module global when it writes the ninja file.
        cpp_extension.CUDA_HOME = root
        include.append(os.path.join(root, "include"))
    start = time.monotonic()
    print(f"convnext_fast: compiling the extension ({p.describe()}) into {directory}; once per torch "
          f"version and source change (a minute or more)...", file=sys.stderr, flush=True)
    cpp_extension.load(
        name=MODULE_NAME, sources=p.sources, extra_cflags=flags["cxx"], extra_cuda_cflags=flags["nvcc"],
        extra_ldflags=flags["ld"], extra_include_paths=include, build_directory=str(directory),
        with_cuda=p.cuda, verbose=verbose,
    )
    print(f"convnext_fast: extension compiled in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def load(p: Optional[BuildPlan] = None, verbose: bool = False) -> tuple[ModuleType, BuildPlan, str]:
    """(the extension module, its plan, how it was obtained: "cached" or "compiled").

    In ``auto`` mode without a GPU, a cached build that also has the CUDA part is used when there is
    one (it runs the CPU kernels the same). Raises :class:`BuildError` when nothing can be built,
    and whatever the compiler reported when compiling fails.
    """
    if p is None:
        p = plan()
        if not p.cuda and "cuda" in p.skipped and not _cuda_reason() and _switch("CONVNEXT_FAST_BUILD_CUDA") == "auto":
            fuller = plan(cuda=True)
            if _so_path(fuller.directory()) is not None:
                p = fuller
    if not (p.cpu or p.cuda):
        raise BuildError("neither the CPU nor the CUDA kernels can be built: " +
                         "; ".join(f"{k}: {v}" for k, v in p.skipped.items()))
    directory = p.directory()
    so = _so_path(directory)
    how = "cached"
    if so is None:
        with _lock(directory):
            so = _so_path(directory)  # another process may have finished it while we waited
            if so is None:
                directory.mkdir(parents=True, exist_ok=True)
                _compile(p, directory, verbose)
                so = _so_path(directory)
                how = "compiled"
        if so is None:
            raise BuildError(f"compiling the extension left no binary in {directory}")
    return _import_binary(so), p, how
