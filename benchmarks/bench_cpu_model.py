"""CPU benchmark of whole-model ConvNeXt: convnext_fast against the engines a user would pick, side by side.

Inference (``convnext_fast.bench.cpu_engines``, shared with the report): timm eager, ONNX Runtime,
OpenVINO (f32 and bf16 precision hints), torch.compile with freezing (fp32; bf16 under autocast and
as a ``.to(torch.bfloat16)`` model), timm under bf16 autocast, and ours (``create_model``, its
``optimize_for_inference`` in fp32 and bf16, ours under autocast); with ``--avx2`` also our
optimized model in fp32 and bf16 in a worker process restricted to AVX2, as on a CPU without
AVX-512 and AVX512_BF16. Every engine is checked against timm in float64 first
(``convnext_fast.parity``); then ``--runs`` interleaved blocks of ``--repeats`` round-robin rounds,
each with its medians and spread. Every row's share of this CPU's measured ceiling (the best rate of
large fp32 / bf16 GEMMs) is reported, and the speed targets as the lowest ratio over the runs.

Training (``--train``): one step (forward, cross-entropy, backward, SGD with momentum) of timm
eager, timm under ``torch.compile`` and ours, fp32 and bf16 autocast, interleaved the same way,
after their first-step logits are checked against timm in float64.

Each frozen compile takes about a minute on two cores; batch 32 is ``--batch 32``.

Run: ``python benchmarks/bench_cpu_model.py [--model convnext_tiny] [--batch 1 8] [--runs 3]
[--threads 2] [--repeats 10] [--size 224] [--dtypes fp32 bf16] [--avx2] [--train] [--out result.json]``
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import subprocess
import sys
from typing import Callable

import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast import extension, parity
from convnext_fast.bench import cpu_engines as CE
from convnext_fast.bench.env import cpu_details, git_commit, write_json


def work_tree_changes() -> list[str]:
    """``git status --porcelain`` of the package: uncommitted code a ``+dirty`` commit measured."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "convnext_fast", "csrc", "benchmarks/bench_cpu_model.py"],
                             capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def _train_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, autocast: bool) -> Callable:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> torch.Tensor:
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = F.cross_entropy(out.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def train_comparison(name: str, batch: int, size: int, dtypes: list[str], a) -> list[dict]:
    """One training step of timm eager, timm under torch.compile and ours (fp32 and bf16 autocast):
    first-step logits checked against timm in float64, then interleaved timing."""
    timm_model = CE.build_timm(name).train()
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad():
        ref64 = copy.deepcopy(timm_model).double()(x.double())
        lowp = {"fp32": timm_model(x), "bf16": copy.deepcopy(timm_model).to(torch.bfloat16)(x.to(torch.bfloat16))}
    rows, engines = [], []
    for dtype in dtypes:
        amp = dtype == "bf16"
        ours = convnext_fast.create_model(name)
        ours.load_state_dict(timm_model.state_dict())
        ours = ours.train().to(memory_format=torch.channels_last)
        candidates = [(f"timm_eager_train_{dtype}", copy.deepcopy(timm_model), "timm eager"),
                      (f"timm_compile_train_{dtype}", None, "timm under torch.compile (default mode)"),
                      (f"ours_train_{dtype}", ours, "convnext_fast.create_model + timm weights")]
        for ename, model, what in candidates:
            row = {"model": name, "batch": batch, "size": size, "engine": ename, "dtype": dtype, "what": what,
                   "mode": "train"}
            rows.append(row)
            try:
                if model is None:
                    from convnext_fast.bench.cases import _set_compile_limits

                    _set_compile_limits()
                    model = torch.compile(copy.deepcopy(timm_model), dynamic=False)
                with torch.no_grad(), (torch.autocast("cpu", torch.bfloat16) if amp else contextlib.nullcontext()):
                    out = model(x)
                verdict = parity.compare(out.float(), lowp[dtype].float(), ref64,
                                         "float32" if dtype == "fp32" else "bfloat16")
                row["parity"] = verdict
                if not verdict["passed"]:
                    row["status"] = "failed parity"
                    continue
                step = _train_step(model, x, labels, amp)
                step()  # compiles the compiled one's forward and backward
                engines.append(CE.Engine(ename, dtype, what, step))
                row["status"] = "ok"
            except Exception as exc:  # noqa: BLE001 - one engine's failure is a row
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:400])
            print(f"  {ename:<28} {row['status']}", flush=True)
    blocks = [CE.time_interleaved(engines, a.repeats, a.warmup if r == 0 else 1, print) for r in range(a.runs)]
    for row in rows:
        if row.get("status") == "ok":
            row["runs"] = [CE.stats(b[row["engine"]]) for b in blocks]
            row.update(row["runs"][0])
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["convnext_tiny"],
                   help="model names known to both timm and convnext_fast (default convnext_tiny)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="which engines (default both)")
    p.add_argument("--engines", nargs="+", help=f"only these engines (known: {', '.join(CE.FP32_ENGINES + CE.BF16_ENGINES + CE.AVX2_ENGINES)})")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--no-openvino", action="store_true", help="skip OpenVINO")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile with freezing (a minute per compile)")
    p.add_argument("--avx2", action="store_true",
                   help="also our optimized model (fp32, bf16) in a process restricted to AVX2 (no AVX512_BF16)")
    p.add_argument("--train", action="store_true", help="also the training step against torch.compile's")
    p.add_argument("--train-batch", type=int, default=8, help="batch of the training step (default 8)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads, ONNX Runtime's and OpenVINO's threads (default: torch's count)")
    p.add_argument("--runs", type=int, default=1, help="interleaved timing blocks per batch (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed round-robin rounds per block (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--out", help="write the environment and the rows as JSON to this path")
    a = p.parse_args(argv)
    for flag, value in (("--threads", a.threads), ("--repeats", a.repeats), ("--size", a.size), ("--runs", a.runs)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    if a.warmup < 0 or min(a.batch) < 1:
        p.error(f"--warmup must be >= 0 and every --batch >= 1, got {a.warmup} and {a.batch}")
    torch.set_num_threads(a.threads)
    wanted = list(a.engines) if a.engines else \
        [e for d in a.dtypes for e in (CE.FP32_ENGINES if d == "fp32" else CE.BF16_ENGINES)]
    if a.avx2 and not a.engines:
        wanted += list(CE.AVX2_ENGINES)
    drop = set()
    if a.no_onnx or CE.onnxruntime_version() is None:
        drop.add("onnxruntime")
    if a.no_openvino or CE.openvino_version() is None:
        drop |= {"openvino", "openvino_bf16"}
    if a.no_compile:
        drop |= set(CE.COMPILED)
    wanted = [e for e in wanted if e not in drop]
    import timm

    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "onnxruntime": CE.onnxruntime_version(), "openvino": CE.openvino_version(),
        "convnext_fast": convnext_fast.__version__, "commit": git_commit(), "work_tree_changes": work_tree_changes(),
        "python": platform.python_version(), "machine": platform.machine(),
        "extension_cpu": extension.unavailable_reason("cpu") or "available",
        "extension_isa": extension.build_info().get("cpu_isa"),
        "loadavg_start": os.getloadavg(), "argv": sys.argv[1:],
    }
    ceiling = CE.measure_ceiling()
    env["cpu"] = cpu_details()
    print(f"{env['cpu']['summary']}\n{env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
          f"openvino {env['openvino']}, convnext_fast {env['convnext_fast']} ({env['commit']}); ceiling fp32 "
          f"{ceiling['fp32']} GFLOP/s, bf16 {ceiling['bf16']} GFLOP/s; load average {os.getloadavg()}", flush=True)
    result = {"benchmark": "whole-model ConvNeXt on the CPU: convnext_fast against timm, ONNX Runtime, OpenVINO, "
                           "torch.compile with freezing",
              "settings": {"models": a.model, "batch": a.batch, "size": a.size, "engines": wanted, "runs": a.runs,
                           "repeats": a.repeats, "warmup": a.warmup},
              "environment": env, "ceiling": ceiling, "results": [], "train": []}
    for name in a.model:
        res = CE.compare(name, a.batch, a.size, wanted, runs=a.runs, repeats=a.repeats, warmup=a.warmup,
                         ceiling=ceiling, log=lambda s: print(s, flush=True))
        result["results"].append(res)
        print("\n" + CE.format_table(res), flush=True)
        if a.train:
            print(f"{name}: training step, batch {a.train_batch}", flush=True)
            rows = train_comparison(name, a.train_batch, a.size, a.dtypes, a)
            result["train"] += rows
            for r in rows:
                ms = " / ".join(f"{s['median_ms']:.1f}" for s in r.get("runs", [])) or r["status"]
                print(f"  {r['engine']:<28} {ms} ms", flush=True)
    env["loadavg_end"] = os.getloadavg()
    if a.out:
        write_json(a.out, result)
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
