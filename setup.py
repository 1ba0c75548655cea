"""Build: the pure-Python package always; ``kernels/`` installs as ``convnext_fast.kernels``; the compiled
extension ``convnext_fast._C`` (csrc/) when a toolchain is there.

Install with torch already installed (the extension must match it)::

    pip install --no-build-isolation --no-deps -e .

Switches (environment variables, flash-attention style):

* ``CONVNEXT_FAST_BUILD_CPU=auto|0|1``  - the C++ CPU kernels (auto: when torch and a C++ compiler are there)
* ``CONVNEXT_FAST_BUILD_CUDA=auto|0|1`` - the CUDA kernels (auto: when nvcc and a CUDA build of torch are there)
* ``CONVNEXT_FAST_CUDA_ARCHS``          - semicolon-separated SM versions, default ``80;90``
* ``MAX_JOBS``                          - parallel compile jobs (ninja)

``auto`` warns and installs the pure-Python package when a part cannot be built; ``1`` fails with an
explanation instead. What was built (parts, archs, torch version, flags) is compiled into the binary:
``python -m convnext_fast info`` prints it.
"""
import os
import shutil
import subprocess
import sys
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "convnext_fast", "csrc")
GEN_DIR = os.path.join(ROOT, "build", "cf_generated")


def _switch(name: str) -> str:
    value = os.environ.get(name, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise SystemExit(f"{name} must be auto, 0 or 1, got {value!r}")
    return value


class _CannotBuild(Exception):
    pass


def _warn(msg: str) -> None:
    warnings.warn(f"convnext_fast: {msg}", stacklevel=2)
    print(f"WARNING convnext_fast: {msg}", file=sys.stderr)


def _torch():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        raise _CannotBuild(f"torch is not importable at build time ({e}); install torch first and use "
                           "pip install --no-build-isolation") from e
    return torch, cpp_extension


def _cpu_possible() -> None:
    _torch()
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise _CannotBuild(f"no C++ compiler found (looked for {cxx!r}; set CXX)")


def _cuda_possible() -> str:
    torch, cpp_extension = _torch()
    if torch.version.cuda is None:
        raise _CannotBuild(f"torch {torch.__version__} is a CPU-only build; the CUDA kernels need a CUDA build of torch")
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    if not nvcc or not os.path.exists(nvcc):
        raise _CannotBuild("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    if _cuda_include_dir(cuda_home, nvcc) is None:
        raise _CannotBuild(f"cuda_runtime.h not found next to nvcc ({nvcc}); set CUDA_HOME to the toolkit root")
    return nvcc


def _cuda_include_dir(cuda_home: str, nvcc: str):
    """The toolkit's include directory. torch derives CUDA_HOME from `which nvcc`, which gives
    /usr/local for a /usr/local/bin/nvcc wrapper whose headers live in /usr/local/cuda/include."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cuda_home,
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return os.path.join(root, "include")
    return None


def _nvcc_version(nvcc: str) -> str:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return "unknown"


def _cudart_link_args(torch) -> tuple[list[str], list[str]]:
    """Link libcudart: the wheel's nvidia/cu*/lib/libcudart.so.N (no unversioned .so there; torch has
    already loaded it at run time), else the toolkit's lib64."""
    import glob
    import site

    roots = [os.path.dirname(os.path.dirname(torch.__file__))] + site.getsitepackages()
    for root in roots:
        for lib in sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "lib", "libcudart.so.*"))):
            libdir, name = os.path.split(lib)
            return [libdir], [f"-L{libdir}", f"-l:{name}", f"-Wl,-rpath,{libdir}"]
    from torch.utils.cpp_extension import CUDA_HOME

    libdir = os.path.join(CUDA_HOME, "lib64")
    return [libdir], [f"-L{libdir}", "-lcudart", f"-Wl,-rpath,{libdir}"]


def _loaded_libstdcxx() -> list[str]:
    """[path of the libstdc++.so.6 this process (which has imported torch) has mapped], or [] when
    there is none to see (not Linux, or no /proc)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libstdc++.so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))[:1]


def _write_build_config(values: dict) -> None:
    os.makedirs(GEN_DIR, exist_ok=True)
    lines = ["// Generated by setup.py: what convnext_fast._C was built with.", "#pragma once"]
    for key, value in values.items():
        lines.append(f"#define {key} {value}" if isinstance(value, int) else f'#define {key} "{value}"')
    text = "\n".join(lines) + "\n"
    path = os.path.join(GEN_DIR, "cf_build_config.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _extension_setup():
    """(ext_modules, cmdclass) for the compiled extension; empty when nothing can be built."""
    want_cpu, want_cuda = _switch("CONVNEXT_FAST_BUILD_CPU"), _switch("CONVNEXT_FAST_BUILD_CUDA")
    build_cpu = build_cuda = False
    nvcc = None
    for part, want in (("CPU", want_cpu), ("CUDA", want_cuda)):
        if want == "0":
            continue
        try:
            if part == "CPU":
                _cpu_possible()
                build_cpu = True
            else:
                nvcc = _cuda_possible()
                build_cuda = True
        except _CannotBuild as e:
            if want == "1":
                raise SystemExit(f"convnext_fast: CONVNEXT_FAST_BUILD_{part}=1 but the {part} kernels cannot be "
                                 f"built: {e}")
            _warn(f"not building the {part} kernels of the compiled extension: {e}")
    if not (build_cpu or build_cuda):
        return [], {}

    torch, cpp_extension = _torch()
    archs = [a.strip().replace(".", "") for a in os.environ.get("CONVNEXT_FAST_CUDA_ARCHS", "80;90").split(";")
             if a.strip()]
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++17 or C++20).
    # No -march: the CPU kernels pick AVX2 / AVX-512 at run time, so the binary stays portable.
    cxx_flags = ["-O3", "-fno-math-errno", "-Wno-psabi"]
    # at::parallel_for is a header template over `#pragma omp parallel` when torch uses OpenMP:
    # without -fopenmp it silently runs on one thread. Linking libgomp.so.1 reuses the copy torch
    # has already loaded (same soname), so there is one OpenMP runtime in the process.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas=-warn-spills"]
    for a in archs:
        nvcc_flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    if archs:  # also embed PTX of the newest arch so newer GPUs can JIT it
        nvcc_flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    sources = [os.path.join("convnext_fast", "csrc", "ext.cpp")]
    include_dirs = [CSRC, GEN_DIR]
    library_dirs, libraries, link_args = [], [], []
    if build_cpu:
        sources.append(os.path.join("convnext_fast", "csrc", "cpu_kernels.cpp"))
        cxx_flags += openmp
    if build_cuda:
        sources.append(os.path.join("convnext_fast", "csrc", "cuda_kernels.cu"))
        include_dirs.append(_cuda_include_dir(cpp_extension.CUDA_HOME, nvcc))
        libraries.append("c10_cuda")
        library_dirs, link_args = _cudart_link_args(torch)
    _write_build_config({
        "CF_WITH_CPU": int(build_cpu),
        "CF_WITH_CUDA": int(build_cuda),
        "CF_CUDA_ARCHS": ";".join(archs) if build_cuda else "",
        "CF_CUDA_VERSION": _nvcc_version(nvcc) if build_cuda else "",
        "CF_TORCH_VERSION": torch.__version__,
        "CF_CXX_FLAGS": " ".join(cxx_flags),
        "CF_NVCC_FLAGS": " ".join(nvcc_flags) if build_cuda else "",
    })
    # Link libstdc++ as a shared library, the very file torch has loaded, even under a compiler that
    # links it statically: the GPU machine's /opt/gcc/bin/g++ gave a _C with no libstdc++.so.6 in its
    # DT_NEEDED, even with an explicit -lstdc++ (its library path finds libstdc++.a first). That
    # private static copy next to the process's libstdc++.so.6 crashed (SIGSEGV in
    # std::ostream::_M_insert<long>) the first time a TORCH_CHECK message was formatted
    # (benchmarks/results/nvidia-h100-80gb-hbm3/2026-11-23-tests/NOTE.md). A shared library named by
    # its path resolves every std:: symbol to it, before the driver's own libraries.
    link_args = link_args + _loaded_libstdcxx()
    ext = cpp_extension.CppExtension(
        name="convnext_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        libraries=libraries,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_args + (openmp if build_cpu else []),
    )
    forced = want_cpu == "1" or want_cuda == "1"

    class BuildExtension(cpp_extension.BuildExtension):
        """torch's BuildExtension (ninja, MAX_JOBS); in auto mode a failed compile only warns."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as e:  # noqa: BLE001 - any compiler failure
                if forced:
                    raise
                # Drop it so the install (including editable installs) goes on without the binary.
                self.extensions = [e for e in self.extensions if e is not extension]
                _warn(f"building {extension.name} failed ({e}); the pure-Python package (triton and reference "
                      "backends) is installed without it. Set CONVNEXT_FAST_BUILD_CPU/CUDA=1 to make this an error.")

    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extension_setup()

setup(
    name="convnext_fast",
    version="0.1.0",
    description="Fused Triton/CUDA kernels for ConvNeXt: depthwise conv, channels-first LayerNorm, models",
    packages=find_packages(include=["convnext_fast", "convnext_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "timm", "torchvision", "safetensors", "matplotlib"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
