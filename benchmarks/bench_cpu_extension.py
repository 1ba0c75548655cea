"""CPU benchmark of the compiled extension's fused depthwise conv + LayerNorm forward against eager PyTorch.

Compares, in fp32 at ConvNeXt-T stage shapes (batch 8), on channels_last input:

* eager PyTorch the way timm / the official code run it: ``F.conv2d(groups=C)`` + permute +
  ``F.layer_norm`` + permute back;
* ``convnext_fast.extension.dwconv_ln_forward`` (one pass: each output row is convolved into a
  cache-resident buffer and normalized there before it is written).

Checks that both give the same result, then times them interleaved (eager, ours, eager, ours, ...
after warm-up, so that a change in the machine's load hits both alike) and reports the median and
the minimum of each, per stage and thread count, with the speedup eager / ours of the medians and
its geometric mean over the stages (target: >= 1.5x).

Run: ``python benchmarks/bench_cpu_extension.py [--threads 1 2] [--dtype bfloat16] [--json out.json]``
(the target is for fp32; ``--dtype bfloat16`` times the same comparison in bf16, where both sides
round their output to bf16 and agree to a few bf16 ulps).

Threads: speedups compare both sides at the same thread count (``torch.set_num_threads``; the
extension's kernels use torch's intra-op threads). On a shared 2-core machine a multi-threaded
region waits for its slowest thread, so timings swing with the machine's load (check ``uptime``);
the minimum is the least disturbed figure, the median the typical one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from convnext_fast import extension
from convnext_fast.shapes import CONVNEXT_T_STAGES

STAGES = [(c, h) for c, h, w in CONVNEXT_T_STAGES if h == w]  # ConvNeXt-T: (channels, square spatial size)
# dtype -> (torch dtype, atol = rtol of the parity check): fp32 1e-4; bf16 2^-6, a few bf16 ulps of
# the LayerNorm's outputs (both sides round to bf16, PyTorch's conv output too before its LayerNorm).
DTYPES = {"float32": (torch.float32, 1e-4), "bfloat16": (torch.bfloat16, 2.0 ** -6)}


def eager(x, dw_w, dw_b, ln_w, ln_b, eps):
    y = F.conv2d(x, dw_w, dw_b, padding=dw_w.shape[-1] // 2, groups=x.shape[1])
    y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), ln_w, ln_b, eps)
    return y.permute(0, 3, 1, 2)


def fused(x, dw_w, dw_b, ln_w, ln_b, eps):
    return extension.dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, eps)[0]


def interleaved_seconds(fns, args, warmup: int, repeats: int) -> list[list[float]]:
    """Per-call wall times of each of fns, called in turn (round-robin) repeats times."""
    for _ in range(warmup):
        for fn in fns:
            fn(*args)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(*args)
            times[i].append(time.perf_counter() - t0)
    return times


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to time (default: 1 and torch's default count)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of every tensor (default float32, the dtype of the target)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args()

    reason = extension.unavailable_reason("cpu")
    if reason:
        raise SystemExit(f"the cpu backend is not available: {reason}")
    info = extension.build_info()
    default_threads = torch.get_num_threads()
    counts = sorted(set(args.threads or [1, default_threads]))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"extension ISA {info.get('cpu_isa')}, {args.dtype}, batch {args.batch}, {args.kernel}x{args.kernel}, "
          f"{args.repeats} interleaved repeats" + (f", load average {load[0]:.2f}" if load else ""))

    results = []
    dtype, tol = DTYPES[args.dtype]
    torch.manual_seed(0)
    for c, s in STAGES:
        x = torch.randn(args.batch, c, s, s).contiguous(memory_format=torch.channels_last)
        dw_w = torch.randn(c, 1, args.kernel, args.kernel) * 0.1
        dw_b, ln_w, ln_b = torch.randn(c), 1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c)
        params = (*(t.to(dtype) for t in (x, dw_w, dw_b, ln_w, ln_b)), 1e-6)
        with torch.inference_mode():
            ref, ours = eager(*params), fused(*params)
            diff = (ref.float() - ours.float()).abs().max().item()
            if not torch.allclose(ref.float(), ours.float(), atol=tol, rtol=tol):
                raise SystemExit(f"results differ at stage {c}x{s}x{s}: max |diff| {diff:.3e}")
            for t in counts:
                torch.set_num_threads(t)
                try:
                    t_eager, t_fused = interleaved_seconds([eager, fused], params, args.warmup, args.repeats)
                finally:
                    torch.set_num_threads(default_threads)
                med_e, med_f = statistics.median(t_eager), statistics.median(t_fused)
                results.append({
                    "stage": f"{c}x{s}x{s}", "channels": c, "size": s, "threads": t,
                    "eager_median_ms": med_e * 1e3, "eager_min_ms": min(t_eager) * 1e3,
                    "fused_median_ms": med_f * 1e3, "fused_min_ms": min(t_fused) * 1e3,
                    "speedup_median": med_e / med_f, "speedup_min": min(t_eager) / min(t_fused),
                    "max_abs_diff": diff,
                })

    print()
    print(f"{'stage':>10} {'threads':>7} {'eager med':>10} {'eager min':>10} {'fused med':>10} {'fused min':>10} "
          f"{'speedup':>8} {'(of min)':>8} {'max|diff|':>10}")
    for r in results:
        print(f"{r['stage']:>10} {r['threads']:>7} {r['eager_median_ms']:>8.3f}ms {r['eager_min_ms']:>8.3f}ms "
              f"{r['fused_median_ms']:>8.3f}ms {r['fused_min_ms']:>8.3f}ms {r['speedup_median']:>7.2f}x "
              f"{r['speedup_min']:>7.2f}x {r['max_abs_diff']:>10.2e}")
    summary = {}
    print()
    for t in counts:
        rs = [r for r in results if r["threads"] == t]
        g_med, g_min = geomean(r["speedup_median"] for r in rs), geomean(r["speedup_min"] for r in rs)
        summary[str(t)] = {"geomean_speedup_median": g_med, "geomean_speedup_min": g_min}
        target = "target >= 1.5x" if args.dtype == "float32" else "the target is for float32"
        print(f"geometric-mean speedup of the fused forward over eager at {t} thread(s): {g_med:.2f}x "
              f"(of the minima: {g_min:.2f}x; {target})")

    if args.json:
        out = {
            "benchmark": f"fused depthwise conv + LayerNorm forward vs eager PyTorch, CPU, {args.dtype}, "
                         "channels_last",
            "dtype": args.dtype,
            "torch": torch.__version__, "cpu_isa": info.get("cpu_isa"), "cxx_flags": info.get("cxx_flags"),
            "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "load_average": list(load) if load else None, "batch": args.batch, "kernel": args.kernel,
            "warmup": args.warmup, "repeats": args.repeats, "threads": counts,
            "results": results, "geomean": summary,
            "target_speedup": 1.5 if args.dtype == "float32" else None,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
