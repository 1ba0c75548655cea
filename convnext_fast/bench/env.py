"""What machine and software a benchmark ran on: recorded in every result (results.json, extra_info)."""
from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import platform
import re
import subprocess
from typing import Any

import torch

__all__ = ["environment", "device_slug", "bench_device", "git_commit", "write_json"]


def bench_device() -> torch.device:
    """The device benchmarks run on: the current CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - a missing or broken package is a fact to record
        return f"n/a ({type(exc).__name__})"


def git_commit() -> str:
    """The commit of the code measured, ``+dirty`` when tracked files have changes; ``n/a`` outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return "n/a"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "n/a"



def write_json(path: str, data: Any) -> None:
    """Write a benchmark's results (``data``) to ``path``, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def cpu_name() -> str:
    """The processor's name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@functools.lru_cache(maxsize=None)
def environment() -> dict[str, Any]:
    """Device name, library versions, date: plain strings, safe to put in JSON."""
    dev = bench_device()
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_type": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "n/a",
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "n/a",
        "triton": _version("triton"),
        "timm": _version("timm"),
        "convnext_fast": _version("convnext_fast"),
        "git_commit": git_commit(),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["l2_cache_mb"] = round(getattr(props, "L2_cache_size", 0) / 2**20, 1)
    try:
        from convnext_fast.backend import available_backends

        info["backends"] = {k: (v or "ok") for k, v in available_backends(dev.type).items()}
    except Exception as exc:  # noqa: BLE001
        info["backends"] = f"n/a ({exc})"
    return info


def device_slug(name: str) -> str:
    """A folder-safe name for a device ('NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3')."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-device"
