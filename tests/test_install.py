"""Installs that just work: the package ships its kernel sources, compiles the extension on first
use into a keyed cache (one process at a time), and a non-editable install carries the tools."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from convnext_fast import build

REPO = Path(__file__).resolve().parents[1]


def test_plan_key_follows_sources_and_flags(tmp_path, monkeypatch):
    """A changed source or flag gives another cache directory, so a stale binary is never loaded."""
    p = build.BuildPlan(cpu=True, cuda=False)
    key = p.key()
    assert build.BuildPlan(cpu=True, cuda=True, archs=["90"]).key() != key
    monkeypatch.setattr(build, "CSRC", tmp_path)
    (tmp_path / "ext.cpp").write_text("// one\n")
    one = p.key()
    (tmp_path / "ext.cpp").write_text("// two\n")
    assert p.key() != one
    (tmp_path / "extra.h").write_text("// a header counts too\n")
    assert len({one, p.key()}) == 2


def test_plan_reports_what_is_left_out(monkeypatch):
    monkeypatch.setenv("CONVNEXT_FAST_BUILD_CUDA", "0")
    p = build.plan()
    assert not p.cuda and "CONVNEXT_FAST_BUILD_CUDA=0" in p.skipped["cuda"]
    monkeypatch.setenv("CONVNEXT_FAST_BUILD_CUDA", "maybe")
    with pytest.raises(build.BuildError, match="auto, 0 or 1"):
        build.plan()


def test_cuda_build_without_toolchain_says_why(monkeypatch):
    monkeypatch.setattr(build, "_cuda_reason", lambda: "nvcc not found (simulated)")
    with pytest.raises(build.BuildError, match="nvcc not found"):
        build.plan(cuda=True)
    monkeypatch.setenv("CONVNEXT_FAST_BUILD_CUDA", "auto")
    assert "nvcc not found" in build.plan().skipped["cuda"]


def test_lock_serializes_builders(tmp_path):
    """Two processes that want the same configuration: the second waits for the first's lock."""
    script = (
        "import sys, time; from pathlib import Path; from convnext_fast import build\n"
        "d = Path(sys.argv[1]) / 'cfg'\n"
        "with build._lock(d):\n"
        "    print('in', time.monotonic(), flush=True); time.sleep(1.0); print('out', time.monotonic(), flush=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    spans = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        times = dict(line.split() for line in out.split("\n") if line)
        spans.append((float(times["in"]), float(times["out"])))
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1, f"both held the lock at once: {spans}"


def test_build_command_help():
    out = subprocess.run([sys.executable, "-m", "convnext_fast", "build", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--cuda" in out.stdout


# Run from a directory outside the checkout, so that the checkout's own top-level folders are not on
# sys.path: what it prints is what the installed package provides.
LAYOUT_PROBE = """
import importlib.util, sys
import convnext_fast.kernels.launchers as launchers
from convnext_fast import build
print(launchers.__file__)
print(build.CSRC)
print(sorted(p.name for p in build.CSRC.iterdir() if p.suffix in build.SOURCE_SUFFIXES))
print(importlib.util.find_spec("kernels"), importlib.util.find_spec("csrc"))
"""


def _probe_layout(cwd: Path, env: dict) -> list:
    out = subprocess.run([sys.executable, "-c", LAYOUT_PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_editable_install_maps_kernels_and_csrc(tmp_path):
    """The repository's top-level kernels/ and csrc/ are convnext_fast.kernels and convnext_fast.csrc
    in the installed package, never top-level `kernels` / `csrc` import names."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    launchers, csrc, sources, top_level = _probe_layout(tmp_path, env)
    if not Path(launchers).resolve().is_relative_to(REPO):
        pytest.skip(f"convnext_fast is not installed editable from this checkout ({launchers})")
    assert Path(launchers).resolve() == REPO / "kernels" / "launchers.py"
    assert Path(csrc).resolve() == REPO / "csrc"
    assert "'ext.cpp'" in sources and ".cu'" in sources, sources
    assert top_level == "None None", f"the install provides a top-level kernels/csrc module: {top_level}"


@pytest.mark.slow
def test_non_editable_install_carries_the_tools(tmp_path):
    """`pip install .` (not editable) ships the kernels' sources and the bench package: the report's
    command runs from another directory, and `import convnext_fast` loads none of the tools."""
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (target / "convnext_fast" / "csrc" / "ext.cpp").is_file()
    assert (target / "convnext_fast" / "kernels" / "launchers.py").is_file()
    assert not (target / "kernels").exists() and not (target / "csrc").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    launchers, csrc, sources, top_level = _probe_layout(elsewhere, env)
    assert launchers.startswith(str(target)) and csrc.startswith(str(target)), (launchers, csrc)
    assert "'ext.cpp'" in sources and ".cu'" in sources, sources
    assert top_level == "None None", f"the install provides a top-level kernels/csrc module: {top_level}"
    probe = ("import sys, convnext_fast; print(convnext_fast.__file__); "
             "print(sorted(m for m in sys.modules if m.startswith('convnext_fast.')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    where, loaded = out.stdout.splitlines()[:2]
    assert where.startswith(str(target)), where
    for tool in ("bench", "aot_check", "sass_mix", "build", "extension"):
        assert f"convnext_fast.{tool}'" not in loaded, f"import convnext_fast loaded convnext_fast.{tool}: {loaded}"
    bench = subprocess.run([sys.executable, "-m", "convnext_fast.bench", "--help"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "usage" in bench.stdout.lower()


@pytest.mark.slow
def test_first_cpu_call_compiles_the_extension_into_an_empty_cache(tmp_path):
    """What a fresh `pip install .` gives: the first call that needs the cpu backend compiles the
    extension from the sources the install shipped (one line says so) into the cache, the call is
    right, and the next process loads it. (The editable install's build is setup.sh's.)"""
    script = (
        "import torch, convnext_fast as cf\n"
        "from convnext_fast import extension, reference\n"
        "x, w = torch.randn(1, 8, 6, 5), torch.randn(8, 1, 3, 3)\n"
        "with cf.use_backend('cpu'):\n"
        "    y = cf.depthwise_conv2d(x, w)\n"
        "assert torch.allclose(y, reference.depthwise_conv2d(x, w), atol=1e-5)\n"
        "print(extension.build_info()['obtained'])\n"
    )
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    script = f"import convnext_fast; assert convnext_fast.__file__.startswith({str(target)!r})\n" + script
    env = {**os.environ, "CONVNEXT_FAST_CACHE": str(tmp_path / "cache"), "CONVNEXT_FAST_BUILD_CUDA": "0",
           "PYTHONPATH": str(target)}
    env.pop("TRITON_INTERPRET", None)
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1200,
                           cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiling the extension" in first.stderr
    assert first.stdout.strip().startswith("compiled")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "compiling" not in second.stderr and second.stdout.strip().startswith("cached")
