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

__all__ = ["environment", "device_slug", "bench_device", "git_commit", "write_json", "cpu_name", "cpu_details",
           "ISA_FLAGS"]

# Where the CPU describes itself (Linux); read by cpu_name and cpu_details.
CPUINFO = "/proc/cpuinfo"
# The /proc/cpuinfo flags that decide which CPU kernels run (ours, oneDNN's, OpenVINO's): vector width,
# FMA, the bf16 / int8 dot products and AMX. A CPU's speed claims are only comparable with these named.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


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
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_details() -> dict[str, Any]:
    """The CPU's vendor, family, model, stepping, name and the ISA flags of :data:`ISA_FLAGS` it has
    (from /proc/cpuinfo), plus ``summary``: one line naming them. A vendor's name alone ("AMD EPYC")
    does not tell one generation from the next; family and model do (AMD family 25 model 17: Zen 4;
    family 26: Zen 5)."""
    fields = _cpuinfo_fields()
    flags = set(fields.get("flags", "").split())
    out: dict[str, Any] = {
        "vendor": fields.get("vendor_id", platform.machine()),
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "stepping": fields.get("stepping"),
        "name": fields.get("model name") or platform.processor() or "cpu",
        "logical_cpus": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "isa_flags_missing": [f for f in ISA_FLAGS if f not in flags] if flags else [],
    }
    out["summary"] = (f"{out['name']} ({out['vendor']} family {out['family']} model {out['model']}), "
                      f"{out['logical_cpus']} logical CPUs, flags: {' '.join(out['isa_flags']) or 'unknown'}")
    return out


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
    info["cpu"] = cpu_details()
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
