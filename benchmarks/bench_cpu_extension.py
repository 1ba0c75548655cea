"""CPU benchmark of the compiled extension's fused depthwise conv + LayerNorm forward (issue 3).

Compares, in fp32 at ConvNeXt-T stage shapes (batch 8), on channels_last input:

* eager PyTorch the way timm / the official code run it: ``F.conv2d(groups=C)`` + permute +
  ``F.layer_norm`` + permute back;
* ``convnext_fast.extension.dwconv_ln_forward`` (one pass: each output row is convolved into a
  cache-resident buffer and normalized there before it is written).

Checks that both give the same result, times each (median over repeats, after warm-up), and prints
the geometric-mean speedup (target: >= 1.5x). Run: ``python benchmarks/bench_cpu_extension.py``.

Threads: both sides are timed at one thread and at the default thread count, and speedups are
given at equal thread counts. On a shared 2-core machine a multi-threaded region waits for its
slowest thread, so timings there swing with the machine's load (check ``uptime``); the one-thread
figures are the steadier comparison.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from convnext_fast import extension

STAGES = [(96, 56), (192, 28), (384, 14), (768, 7)]  # ConvNeXt-T: (channels, spatial size)


def eager(x, dw_w, dw_b, ln_w, ln_b, eps):
    y = F.conv2d(x, dw_w, dw_b, padding=dw_w.shape[-1] // 2, groups=x.shape[1])
    y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), ln_w, ln_b, eps)
    return y.permute(0, 3, 1, 2)


def fused(x, dw_w, dw_b, ln_w, ln_b, eps):
    return extension.dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, eps)[0]


def median_seconds(fn, args, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    reason = extension.unavailable_reason("cpu")
    if reason:
        raise SystemExit(f"the cpu backend is not available: {reason}")
    info = extension.build_info()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"extension ISA {info.get('cpu_isa')}, fp32, batch {args.batch}, {args.kernel}x{args.kernel}")
    threads = torch.get_num_threads()
    counts = sorted({1, threads})
    head = " ".join(f"{f'eager@{t}t':>10} {f'fused@{t}t':>10} {'speedup':>8}" for t in counts)
    print(f"{'stage':>12} {head} {'max |diff|':>11}")
    speedups = {t: [] for t in counts}
    torch.manual_seed(0)
    for c, s in STAGES:
        x = torch.randn(args.batch, c, s, s).contiguous(memory_format=torch.channels_last)
        dw_w = torch.randn(c, 1, args.kernel, args.kernel) * 0.1
        dw_b, ln_w, ln_b = torch.randn(c), 1 + 0.1 * torch.randn(c), 0.1 * torch.randn(c)
        params = (x, dw_w, dw_b, ln_w, ln_b, 1e-6)
        row = []
        with torch.inference_mode():
            ref, ours = eager(*params), fused(*params)
            diff = (ref - ours).abs().max().item()
            if not torch.allclose(ref, ours, atol=1e-4, rtol=1e-4):
                raise SystemExit(f"results differ at stage {c}x{s}x{s}: max |diff| {diff:.3e}")
            for t in counts:
                torch.set_num_threads(t)
                try:
                    t_eager = median_seconds(eager, params, args.warmup, args.repeats)
                    t_fused = median_seconds(fused, params, args.warmup, args.repeats)
                finally:
                    torch.set_num_threads(threads)
                speedups[t].append(t_eager / t_fused)
                row.append(f"{t_eager * 1e3:10.3f} {t_fused * 1e3:10.3f} {t_eager / t_fused:7.2f}x")
        print(f"{f'{c}x{s}x{s}':>12} {' '.join(row)} {diff:11.2e}")
    for t in counts:
        geo = math.exp(sum(math.log(v) for v in speedups[t]) / len(speedups[t]))
        print(f"geometric-mean speedup of the fused forward over eager at {t} thread(s): {geo:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
