"""The compiled extension's cache survives what users and concurrent processes do to it: a damaged
library is never loaded and ``python -m convnext_fast build`` replaces it; a process that arrives
during another's build waits for the whole library (and says so); a complete library loads without
a compiler; an unwritable cache gets a message naming CONVNEXT_FAST_CACHE.

No test compiles the extension: each copies the library already built for this checkout into a
throwaway cache, and a fake compile that writes that library the way a linker does (the file
first, then its bytes) stands in for ninja. Every process that loads a library runs as a
subprocess, because loading a damaged one kills the process.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from convnext_fast import build

NO_COMPILER = "convnext-fast-test-no-such-compiler"
HANG_GUARD_S = 300  # only for a process that never reports: a failing test must not hang the suite

# Installs the fake compile in the subprocess. argv: the real library, the mode (copy: write it;
# import: write it, then import it from the build directory, as cpp_extension.load does; slow:
# write its first 4096 bytes, say so, wait for a go file, write the rest; forbid: refuse to compile
# at all), and a folder for the signal files.
PRELUDE = '''
import sys, time
from pathlib import Path
from convnext_fast import build

REAL, MODE, SIGNALS = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])


def fake_compile(p, directory, verbose):
    if MODE == "forbid":
        raise RuntimeError("this test process must not compile the extension")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = REAL.read_bytes()
    with open(directory / (build.MODULE_NAME + ".so"), "wb") as f:
        f.write(data[:4096])
        f.flush()
        if MODE == "slow":
            (SIGNALS / "linking").touch()
            deadline = time.monotonic() + %d
            while not (SIGNALS / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        f.write(data[4096:])
    if MODE == "import":
        build._import_binary(directory / (build.MODULE_NAME + ".so"))


build._compile = fake_compile
''' % HANG_GUARD_S

MAIN = "from convnext_fast.__main__ import main\nsys.exit(main(sys.argv[4:]))\n"
LOAD = ("m, p, how = build.load()\n"
        "print(how, 'cpu' if dict(m.build_info())['cpu'] else 'no-cpu', m.__file__)\n")


def _real_library() -> Optional[Path]:
    """The newest library compiled for this torch and Python in the real cache (complete ones first)."""
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-"
    found = [p for p in build.cache_root().glob(f"{tag}*/{build.MODULE_NAME}*.so") if ".build-" not in p.parent.name]
    found.sort(key=lambda p: (p.with_name(p.name + ".sha256").exists(), p.stat().st_mtime), reverse=True)
    return found[0] if found else None


REAL = _real_library()
pytestmark = pytest.mark.skipif(REAL is None, reason="no compiled extension in the cache to copy "
                                                      "(python -m convnext_fast build makes one)")


def _env(cache: Path, compiler: bool = True) -> dict:
    env = {**os.environ, "CONVNEXT_FAST_CACHE": str(cache), "CONVNEXT_FAST_BUILD_CUDA": "0",
           "CONVNEXT_FAST_BUILD_CPU": "auto"}
    if not compiler:
        env["CXX"] = NO_COMPILER
    return env


def _start(body: str, mode: str, signals: Path, env: dict, *args: str) -> subprocess.Popen:
    signals.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", PRELUDE + body, str(REAL), mode, str(signals), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(body: str, mode: str, tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = _start(body, mode, tmp_path / "signals", env, *args)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _library(cache: Path) -> Path:
    found = [p for p in cache.glob(f"*/{build.MODULE_NAME}*.so") if ".build-" not in p.parent.name]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A cache holding one complete library, put there by `python -m convnext_fast build` (fake compile)."""
    tmp = tmp_path_factory.mktemp("seed")
    cache = tmp / "cache"
    out = _run(MAIN, "copy", tmp, _env(cache), "build")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _library(cache).read_bytes() == REAL.read_bytes()
    return cache


def _copy_of(seeded: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(seeded, cache)
    return cache


def _damage(library: Path, how: str) -> None:
    size = library.stat().st_size
    if how == "truncated":
        os.truncate(library, 4096)
    else:  # the same size, other bytes in the middle
        with open(library, "r+b") as f:
            f.seek(4096)
            f.write(bytes((37 * i + 11) % 256 for i in range(size - 8192)))


@pytest.mark.parametrize("how,compiler", [("truncated", True), ("overwritten", False)])
def test_damaged_library_is_never_loaded(seeded, tmp_path, how, compiler):
    """`info` on a damaged library lives to report it: with a compiler it tries to build the library
    again (the fake compile refuses here), without one it says the library is damaged and why it
    cannot be rebuilt."""
    cache = _copy_of(seeded, tmp_path)
    _damage(_library(cache), how)
    out = _run(MAIN, "forbid", tmp_path, _env(cache, compiler=compiler), "info")
    assert out.returncode == 0, f"info died ({out.returncode}): {out.stderr[-3000:]}"
    assert "built: False" in out.stdout, out.stdout
    if compiler:
        assert "is damaged" in out.stderr and "building it again" in out.stderr, out.stderr
        assert "must not compile" in out.stdout, out.stdout
    else:
        assert "is damaged" in out.stdout and NO_COMPILER in out.stdout, out.stdout
        assert "The cpu and cuda backends cannot run in this process" in out.stderr, out.stderr  # warned once


def test_build_replaces_a_damaged_library(seeded, tmp_path):
    cache = _copy_of(seeded, tmp_path)
    library = _library(cache)
    _damage(library, "truncated")
    out = _run(MAIN, "copy", tmp_path, _env(cache), "build")
    assert out.returncode == 0, f"build died ({out.returncode}): {out.stderr[-3000:]}"
    assert "extension compiled" in out.stdout and "is damaged" in out.stderr, (out.stdout, out.stderr)
    assert _library(cache).read_bytes() == REAL.read_bytes()
    again = _run(LOAD, "forbid", tmp_path, _env(cache))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith("cached cpu "), again.stdout


def _wait_for(stream, words: str, proc: subprocess.Popen) -> str:
    """What ``stream`` says up to and including ``words``; fails if the process ends first. Reads
    the pipe itself, unbuffered, so that text already read is never left waiting in a buffer."""
    seen = ""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream.fileno()], [], [], 1.0)
        if ready:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
            if words in seen:
                return seen
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"the process never said {words!r} (exit {proc.returncode}): {seen}{err[-3000:]}{out[-1000:]}")


def test_compiled_library_names_its_installed_file(tmp_path):
    """A compile imports the library from its build directory (cpp_extension.load does), which the
    build then removes: the module handed out names the installed file, which exists (``ldd`` and
    users read it)."""
    cache = tmp_path / "cache"
    out = _run(LOAD, "import", tmp_path, _env(cache))
    assert out.returncode == 0, out.stderr[-3000:]
    how, _, path = out.stdout.split()
    assert how == "compiled" and Path(path) == _library(cache) and Path(path).is_file(), out.stdout


def test_process_arriving_during_a_link_waits_for_the_whole_library(tmp_path):
    """One process runs `build` and is stopped mid-link (the library file exists, half written);
    another that needs the extension then arrives: it says it waits, and loads the whole library
    once the build is done, compiling nothing itself."""
    cache = tmp_path / "cache"
    signals = tmp_path / "signals"
    builder = _start(MAIN, "slow", signals, _env(cache), "build")
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (signals / "linking").exists():
            assert builder.poll() is None, f"the build ended before linking: {builder.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the fake link never started"
            time.sleep(0.05)
        loader = _start(LOAD, "forbid", signals, _env(cache))
        try:
            said = _wait_for(loader.stderr, "waiting for another process's build", loader)
            (signals / "go").touch()
            out, err = loader.communicate(timeout=HANG_GUARD_S)
        finally:
            loader.kill()
        (signals / "go").touch()
        b_out, b_err = builder.communicate(timeout=HANG_GUARD_S)
    finally:
        builder.kill()
    assert builder.returncode == 0, b_err[-3000:]
    assert loader.returncode == 0, said + err[-3000:]
    assert out.startswith("cached cpu "), out
    assert _library(cache).read_bytes() == REAL.read_bytes()


def test_complete_library_loads_without_a_compiler(seeded, tmp_path):
    """A runtime image without a compiler, whose cache a build stage filled: the cpu backend runs
    on the cached library, asked for by name or picked by auto."""
    cache = _copy_of(seeded, tmp_path)
    script = (
        "import torch, convnext_fast as cf\n"
        "from convnext_fast import extension, reference\n"
        "x, w = torch.randn(1, 8, 6, 5), torch.randn(8, 1, 3, 3)\n"
        "with cf.use_backend('cpu'):\n"
        "    y = cf.depthwise_conv2d(x, w)\n"
        "assert torch.allclose(y, reference.depthwise_conv2d(x, w), atol=1e-5)\n"
        "assert cf.available_backends('cpu')['cpu'] == '', cf.available_backends('cpu')\n"
        "print(extension.build_info()['obtained'])\n"
    )
    out = _run(script, "forbid", tmp_path, _env(cache, compiler=False))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("cached"), out.stdout


def _unwritable_cache(tmp_path: Path) -> Path:
    """An empty cache directory this process cannot write. Permissions do not stop root, so for
    root the cache path runs through a regular file instead."""
    cache = tmp_path / "readonly"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        (cache / "probe").touch()
    except OSError:
        return cache
    (cache / "probe").unlink()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    return blocker / "cache"


def test_unwritable_cache_is_reported_cleanly(tmp_path):
    cache = _unwritable_cache(tmp_path)
    try:
        built = _run(MAIN, "forbid", tmp_path, _env(cache), "build")
        info = _run(MAIN, "forbid", tmp_path, _env(cache), "info")
    finally:
        (tmp_path / "readonly").chmod(0o755)
    assert built.returncode == 1 and "Traceback" not in built.stderr, built.stderr[-3000:]
    assert built.stderr.startswith("convnext_fast build: cannot write the extension cache"), built.stderr
    assert "CONVNEXT_FAST_CACHE" in built.stderr
    assert info.returncode == 0, info.stderr[-3000:]
    assert "cannot write the extension cache" in info.stdout and "CONVNEXT_FAST_CACHE" in info.stdout, info.stdout
