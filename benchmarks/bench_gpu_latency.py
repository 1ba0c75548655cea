"""GPU latency of convnext_tiny inference at small batches, where the host's launch time dominates.

For each batch size (default 1 and 16), bf16, 224x224, channels_last, the providers, all fed the
same random images:

* ``timm_eager``: timm's convnext_tiny under ``torch.autocast``, eval, ``torch.no_grad``. The baseline.
* ``timm_compile_ro``: that model under ``torch.compile(mode="reduce-overhead")`` (Inductor plus
  CUDA graphs: the strongest small-batch setup a PyTorch user has).
* ``ours_optimized``: ``convnext_fast.optimize_for_inference(model, dtype=torch.bfloat16)`` with the
  same weights, eager.
* ``ours_optimized_graph``: the same with ``cuda_graph=True`` (one CUDA graph per input shape).
* ``ours_optimized_compile_ro``: ``ours_optimized`` under ``torch.compile(mode="reduce-overhead")``.

Ours run with the backend named by ``--backend`` (default ``triton`` on a GPU: the kernels by name,
as the benchmark report runs them, so a kernel that ``auto`` does not take yet because no GPU
parity run is recorded for it is still the one timed; the parity check below guards the result).

Parity first: each provider's logits against timm eager fp32, ``||out - ref|| / ||ref||`` within
5e-2 (bf16 through 18 blocks); a provider that fails or raises is reported and not timed.

Per provider and batch: ``latency_ms`` (median of one call followed by a device synchronize: what a
caller waiting for its answer sees), ``host_ms`` (median time until the call returns, before the
synchronize: the launch cost), and ``kernels`` (GPU kernels one call runs, from ``torch.profiler``;
a CUDA graph replays its kernels too, so this counts work, not launches from Python). Providers
are timed round-robin (``--repeats`` rounds) after ``--warmup`` calls each.

Run: ``python benchmarks/bench_gpu_latency.py [--batch 1 16] [--repeats 50] [--out latency.json]``
(needs timm; ``--device cpu`` runs the same code on the CPU to check the script, not to measure).
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from typing import Callable, Optional

import torch

import convnext_fast
from bench_cpu_model import relative_error
from convnext_fast.bench.env import git_commit, write_json

PARITY_RTOL = 5e-2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernels_per_call(fn: Callable[[], torch.Tensor], device: torch.device) -> Optional[int]:
    """GPU kernels one call of ``fn`` runs, counted by torch.profiler (None off the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    except RuntimeError as exc:  # no CUPTI: the timings still count
        print(f"kernel count unavailable: {exc}")
        return None
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset", "cudaGraph")))


def providers(batch: int, device: torch.device,
              backend: str) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    import timm

    torch.manual_seed(0)
    timm_model = timm.create_model("convnext_tiny", pretrained=False).to(device).eval()
    timm_model = timm_model.to(memory_format=torch.channels_last)
    ours = convnext_fast.convnext_tiny().to(device).eval().to(memory_format=torch.channels_last)
    ours.load_state_dict(timm_model.state_dict())
    x32 = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    x16 = x32.to(torch.bfloat16)
    with torch.no_grad():
        reference = timm_model(x32).float()
    def optimized(**kwargs) -> torch.nn.Module:  # made under the backend it runs with: the folds depend on it
        with convnext_fast.use_backend(backend):
            return convnext_fast.optimize_for_inference(ours, dtype=torch.bfloat16, **kwargs)

    builders = {
        "timm_eager": lambda: timm_model,
        "timm_compile_ro": lambda: torch.compile(timm_model, mode="reduce-overhead"),
        "ours_optimized": lambda: optimized(),
        "ours_optimized_graph": lambda: optimized(cuda_graph=True),
        "ours_optimized_compile_ro": lambda: torch.compile(optimized(), mode="reduce-overhead"),
    }
    fns, failed = {}, {}
    for name, build in builders.items():
        try:
            model = build()
            if name.startswith("timm"):
                def fn(model=model) -> torch.Tensor:
                    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
                        return model(x32)
            else:
                def fn(model=model) -> torch.Tensor:
                    with torch.no_grad(), convnext_fast.use_backend(backend):
                        return model(x16)
            for _ in range(3):  # compiles, captures
                out = fn()
            sync(device)
            err = relative_error(out.float(), reference)
            if not err <= PARITY_RTOL:
                failed[name] = f"parity: relative error {err:.2e} > {PARITY_RTOL}"
                continue
            fns[name] = fn
        except Exception as exc:  # reported in the table, the others still run
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return fns, failed


def measure(fns: dict[str, Callable[[], torch.Tensor]], warmup: int, repeats: int,
            device: torch.device) -> dict[str, dict]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    host = {n: [] for n in fns}
    total = {n: [] for n in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            sync(device)
            t2 = time.perf_counter()
            host[name].append((t1 - t0) * 1e3)
            total[name].append((t2 - t0) * 1e3)
    return {n: {"latency_ms": statistics.median(total[n]), "host_ms": statistics.median(host[n]),
                "kernels": kernels_per_call(fns[n], device)} for n in fns}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", help="write the rows as JSON to this path")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the script runs")
    ap.add_argument("--backend", choices=convnext_fast.backend.BACKENDS,
                    help="the backend our providers run with (default: triton on cuda, auto on cpu)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    backend = a.backend or ("triton" if device.type == "cuda" else "auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu_latency.py needs a CUDA device (--device cpu only checks that it runs)")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"benchmark": "convnext_tiny small-batch latency, bf16", "device": device_name,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "commit": git_commit(), "backend": backend, "rows": []}
    print(f"{'batch':>5} {'provider':<27} {'latency ms':>10} {'host ms':>8} {'kernels':>7} {'x timm_ro':>9}")
    for batch in a.batch:
        fns, failed = providers(batch, device, backend)
        rows = measure(fns, a.warmup, a.repeats, device)
        base = rows.get("timm_compile_ro", {}).get("latency_ms")
        for name, row in rows.items():
            speed = f"{base / row['latency_ms']:8.2f}x" if base else f"{'-':>9}"
            kernels = "-" if row["kernels"] is None else str(row["kernels"])
            print(f"{batch:>5} {name:<27} {row['latency_ms']:10.3f} {row['host_ms']:8.3f} {kernels:>7} {speed}")
            result["rows"].append({"batch": batch, "provider": name, **row})
        for name, why in failed.items():
            print(f"{batch:>5} {name:<27} not timed: {why}")
            result["rows"].append({"batch": batch, "provider": name, "status": why})
        if a.out:  # after each batch size, so a run stopped by a time limit keeps what it measured
            write_json(a.out, result)
    if a.out:
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
