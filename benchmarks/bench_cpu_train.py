"""CPU benchmark of a convnext_tiny training step: convnext_fast against timm eager, side by side.

One step = zero_grad, forward, cross-entropy, backward, SGD step; fp32, channels_last, 224x224,
random images and labels, both models with the same weights (timm's init copied into ours). The
two are timed round-robin (timm, ours, timm, ...) after warm-up, so a change in the machine's load
hits both alike; medians are reported with their ratio (> 1: ours is faster). Before timing, one
step's loss and a weight gradient of each model are compared (relative error), so a fast wrong
step cannot pass unnoticed.

Run: ``python benchmarks/bench_cpu_train.py [--batch 8] [--repeats 8] [--json out.json]`` (needs timm).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast.bench.env import git_commit, write_json

PARITY_RTOL = 1e-4  # fp32 through 18 blocks forward and backward


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    a = ap.parse_args(argv)
    import timm

    torch.manual_seed(0)
    models = {"timm_eager": timm.create_model("convnext_tiny", pretrained=False),
              "ours": convnext_fast.convnext_tiny()}
    models["ours"].load_state_dict(models["timm_eager"].state_dict())
    for m in models.values():
        m.train().to(memory_format=torch.channels_last)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-4) for name, m in models.items()}
    x = torch.randn(a.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (a.batch,))

    def loss_of(name: str) -> torch.Tensor:
        optimizers[name].zero_grad(set_to_none=True)
        loss = F.cross_entropy(models[name](x), y)
        loss.backward()
        return loss

    # Parity on the first step (same weights, no dropout / drop path in the defaults).
    losses = {name: loss_of(name).item() for name in models}
    g_ref = models["timm_eager"].stem[0].weight.grad
    g_ours = models["ours"].stem[0].weight.grad
    grad_err = ((g_ours - g_ref).norm() / g_ref.norm()).item()
    loss_err = abs(losses["ours"] - losses["timm_eager"]) / abs(losses["timm_eager"])
    if not (grad_err < PARITY_RTOL and loss_err < PARITY_RTOL):
        raise SystemExit(f"parity failed: loss relative error {loss_err:.2e}, stem gradient {grad_err:.2e}")

    def step(name: str) -> None:
        loss_of(name)
        optimizers[name].step()

    for _ in range(a.warmup):
        for name in models:
            step(name)
    times = {name: [] for name in models}
    for r in range(a.repeats):
        for name in models:
            start = time.perf_counter()
            step(name)
            times[name].append((time.perf_counter() - start) * 1e3)
        print(f"round {r + 1}/{a.repeats}: " + ", ".join(f"{n} {t[-1]:.1f} ms" for n, t in times.items()), flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    result = {"benchmark": "convnext_tiny training step (SGD), fp32, CPU", "batch": a.batch,
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": git_commit(),
              "parity": {"loss_rel_err": loss_err, "stem_grad_rel_err": grad_err},
              "median_ms": med, "times_ms": times, "speedup_vs_timm_eager": med["timm_eager"] / med["ours"]}
    print(f"batch {a.batch}: timm eager {med['timm_eager']:.1f} ms, ours {med['ours']:.1f} ms "
          f"({result['speedup_vs_timm_eager']:.2f}x); parity: loss {loss_err:.1e}, stem gradient {grad_err:.1e}")
    if a.json:
        write_json(a.json, result)
        print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
