"""CPU benchmark of convnext_tiny's stem, downsampling layers and head as ``optimize_for_inference``
folds them, against the modules they replace.

Per layer, fp32, channels_last input of the shape it sees in convnext_tiny at 224x224:

* ``modules``: what ``convnext_fast.convnext_tiny()`` runs, the stem as ``nn.Conv2d`` (4x4, stride 4)
  then ``LayerNorm2d`` (our op), a downsampling layer as ``LayerNorm2d`` then ``nn.Conv2d`` (2x2,
  stride 2; oneDNN reorders input and weights on every call), the head as pool, ``nn.LayerNorm``,
  ``nn.Linear``;
* ``folded``: the ``FoldedPatchConv`` / ``FoldedHead`` of the optimized model (one
  ``convnext_fast.patch_linear`` pass on the CPU kernel, csrc/cpu_patch_linear.cpp).

The outputs are checked against each other first, then both are timed interleaved (modules, folded,
modules, ...) and the medians reported with their ratio (> 1: the folded layer is faster). Caches are
warm here; inside a whole forward the weights of the late layers come from memory, so
``bench_cpu_model.py`` is the measure that counts.

Run: ``python benchmarks/bench_cpu_patch.py [--batch 1 8] [--repeats 50] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import convnext_fast
from convnext_fast.bench.env import git_commit, write_json
from convnext_fast.shapes import CONVNEXT_T_STAGES


def layers(model: torch.nn.Module, optimized: torch.nn.Module):
    """(name, original module, folded module, input shape at batch 1) for convnext_tiny at 224x224."""
    yield f"stem 3->{CONVNEXT_T_STAGES[0][0]}", model.stem, optimized.stem, (3, 224, 224)
    for i, ((c, h, w), (out, _, _)) in enumerate(zip(CONVNEXT_T_STAGES, CONVNEXT_T_STAGES[1:]), start=1):
        yield f"downsample {c}->{out}", model.stages[i].downsample, optimized.stages[i].downsample, (c, h, w)
    yield (f"head {CONVNEXT_T_STAGES[-1][0]}->1000", model.forward_head, optimized.forward_head,
           CONVNEXT_T_STAGES[-1])


def interleaved_ms(fns, x, warmup: int, repeats: int) -> list[float]:
    for fn in fns:
        for _ in range(warmup):
            fn(x)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            start = time.perf_counter()
            fn(x)
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = convnext_fast.convnext_tiny().eval()
    with torch.no_grad():  # non-trivial norm affines, so a wrong fold would show in the check
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    with convnext_fast.use_backend("cpu"):
        optimized = convnext_fast.optimize_for_inference(model)
    result = {"benchmark": "convnext_tiny stem / downsampling / head, modules vs folded, fp32",
              "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": git_commit(), "rows": []}
    print(f"{'batch':>5} {'layer':<22} {'modules ms':>10} {'folded ms':>9} {'speedup':>8} {'rel err':>8}")
    with torch.inference_mode():
        for batch in a.batch:
            for name, original, folded, shape in layers(model, optimized):
                x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
                expected, ours = original(x), folded(x)
                err = ((ours - expected).norm() / expected.norm()).item()
                if not err < 1e-5:
                    raise SystemExit(f"{name}: folded output differs from the modules' (relative error {err:.2e})")
                t_mod, t_fold = interleaved_ms((original, folded), x, a.warmup, a.repeats)
                print(f"{batch:>5} {name:<22} {t_mod:10.3f} {t_fold:9.3f} {t_mod / t_fold:7.2f}x {err:8.1e}")
                result["rows"].append({"batch": batch, "layer": name, "modules_ms": t_mod, "folded_ms": t_fold,
                                       "speedup": t_mod / t_fold, "rel_err": err})
    if a.json:
        write_json(a.json, result)
        print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
