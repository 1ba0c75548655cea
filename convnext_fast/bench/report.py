"""The benchmark report: ``python -m convnext_fast.bench --out DIR [--quick] [--budget-s S]``.

Order of work (each step recorded in ``results.json``):

1. parity: our providers against a float64 reference on the same random inputs (a provider that
   fails is marked, never fatal);
2. the ceilings: device-to-device copy bandwidth (bytes read + written), the matmul rate per dtype
   and the fp32 FMA rate (see ``roofline.py``); on a CPU they are recorded but are no roofline
   (:func:`measure_ceilings`), so a CPU report gives no % of roofline;
3. the standard set, most important first (dwconv 7x7 fwd, fused dwconv+LN, the MLP half, LN,
   block, model, the model's batch-1 latency on a GPU, kernel-size sweep, other dtypes); a case
   that would run past ``--budget-s`` is skipped with a note. ``--only`` / ``--exclude`` / ``--stages``
   restrict the set (e.g. ``--only mlp,model --exclude sweep,latency --stages 1,2``: the MLP half at
   stages 1-2 and convnext_tiny at batch 256);
4. on a CPU, convnext_tiny at batch 1 and 8 in every engine a user would pick (timm, ONNX Runtime,
   OpenVINO, torch.compile with freezing; fp32 and bf16) beside ours, interleaved, with each row's
   share of the measured GEMM ceiling (``cpu_engines.py``; ``--no-cpu-engines`` leaves it out);
5. ``results.json`` (raw), ``report.md`` (tables), PNG plots.

The run ends by printing what was measured on this device: each of our providers against eager
PyTorch and ``torch.compile``, per op and mode, block, model and sweep; then the speed targets,
which are set for a GPU in bf16, on a GPU run, or one line saying that they need a GPU.

Only torch is needed to import this module or to print ``--help``; timm (the model baselines) and
matplotlib (the plots) are imported where they are used (``pip install -e .[bench]``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import aggregate, cases as C, deps, roofline
from .env import bench_device, environment
from .timing import SPREAD_LIMIT, measure, measure_steady

__all__ = ["main", "make_figures", "measure_ceilings", "render_markdown", "roofline_ceilings", "write_plots"]

SCHEMA_VERSION = 1


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------

class _Progress:
    """tqdm when installed, else a printed counter (one line per item, flushed for log files)."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        except Exception:  # noqa: BLE001
            self._bar = None

    def step(self, label: str) -> None:
        self.n += 1
        if self._bar is not None:
            self._bar.set_description(label[:60], refresh=False)
            self._bar.update(1)
        else:
            print(f"[{self.n}/{self.total}] {label}", flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ------------------------------------------------------------------------------------------------
# ceilings
# ------------------------------------------------------------------------------------------------

def measure_ceilings(device: torch.device, quick: bool = False) -> dict:
    """The machine's ceilings, measured here and now.

    GPU: copy bandwidth (GB/s, read + write), matmul TFLOP/s per dtype and the fp32 FMA rate (an
    fp32 matmul with TF32 off: the rate of the CUDA cores, which the depthwise taps, LayerNorm and
    GELU run on). ``roofline`` is True: the report gives each case's % of roofline from them.

    CPU: the copy bandwidth and an fp32 matmul rate are measured for the record, but ``roofline``
    is False and no % of roofline is given: a CPU's fp32 FMA peak cannot be measured from Python (a
    matrix product is bound by its packing and blocking, not by the FMA units: measured depthwise
    convs ran at 116-136% of it), and the benchmark's tensors live in the CPU's caches, so a DRAM
    copy is no floor either (LayerNorm ran at up to 214% of it). ``fp32_fma_tflops`` is None.
    """
    out: dict = {"copy_gbps": None, "matmul_tflops": {}, "fp32_fma_tflops": None, "roofline": False, "notes": []}
    if device.type == "cuda":
        nbytes = 1 << 30  # 1 GiB each way: far beyond L2
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, rep_ms=200)
        out["copy_gbps"] = 2 * nbytes / (t.median_ms / 1e3) / 1e9
        del src, dst
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on the CUDA cores, whatever the caller set
        try:
            for dt, n in (("bfloat16", 8192), ("float32", 8192 if not quick else 4096)):
                a = torch.randn(n, n, device=device, dtype=getattr(torch, dt))
                b = torch.randn(n, n, device=device, dtype=getattr(torch, dt))
                t = measure(lambda: torch.mm(a, b), device, rep_ms=200)
                out["matmul_tflops"][dt] = 2 * n ** 3 / (t.median_ms / 1e3) / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        out["fp32_fma_tflops"] = out["matmul_tflops"]["float32"]
        out["roofline"] = True
        out["notes"].append("copy: 1 GiB uint8 device-to-device, bytes read + written; matmul: 8192^3 torch.mm; "
                            "float32 matmul with TF32 off, which is also the fp32 FMA ceiling of the depthwise "
                            "taps, LayerNorm and GELU (no tensor cores)")
    else:
        nbytes = 256 << 20
        src = torch.empty(nbytes, dtype=torch.uint8).random_(0, 255)
        dst = torch.empty_like(src)
        t = measure(lambda: dst.copy_(src), device, rep_ms=300)
        out["copy_gbps"] = 2 * nbytes / (t.median_ms / 1e3) / 1e9
        n = 1024 if quick else 2048
        a, b = torch.randn(n, n), torch.randn(n, n)
        t = measure(lambda: torch.mm(a, b), device, rep_ms=300)
        out["matmul_tflops"]["float32"] = 2 * n ** 3 / (t.median_ms / 1e3) / 1e12
        out["notes"].append(f"CPU: 256 MiB memcpy (read + write), {n}^3 fp32 torch.mm on "
                            f"{torch.get_num_threads()} threads; for the record only: " + CPU_NO_ROOFLINE)
    return out


# Why a CPU run prints no % of roofline (report.md, the pytest-benchmark suite).
CPU_NO_ROOFLINE = ("no % of roofline on a CPU: its fp32 FMA peak cannot be measured from Python (a matrix "
                   "product is not an FMA ceiling) and the benchmark's tensors fit in its caches, so a DRAM "
                   "copy is no floor either; achieved GB/s and TFLOP/s are given instead")


def roofline_ceilings(ceil: dict) -> Optional[roofline.Ceilings]:
    """The :class:`roofline.Ceilings` to hold timings to, or None when ``ceil`` (from
    :func:`measure_ceilings`) is not a roofline (a CPU, or a failed measurement)."""
    if not ceil.get("roofline") or not ceil.get("copy_gbps"):
        return None
    return roofline.Ceilings(ceil["copy_gbps"], dict(ceil["matmul_tflops"]), ceil.get("fp32_fma_tflops"))


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

def _default_providers(device: torch.device, quick: bool) -> list[str]:
    if device.type == "cuda":
        return ["torch", "torch_compile", "triton", "cuda", "triton_compile", "triton_optimized",
                "triton_optimized_compile", "resnet50", "resnet50_compile"]
    # CPU: compiling with gcc on a small machine costs tens of seconds per graph: only outside --quick.
    return ["torch", "cpu", "cpu_optimized", "resnet50"] if quick else \
        ["torch", "torch_compile", "cpu", "cpu_optimized", "resnet50", "resnet50_compile"]


def _estimated_cost_s(case: C.Case, provider: str, device: torch.device, seen: dict) -> float:
    """A guess at one measurement's wall time (compile included), to skip what cannot fit."""
    observed = seen.get((case.op, case.mode, provider))
    if provider in C.COMPILED:
        # Compiling and timing convnext_tiny under torch.compile takes tens of seconds on a GPU
        # (docs/performance.md, "Kernel constants"); the guesses leave room for a cold compile cache
        # without skipping what would have fitted.
        guess = {"model": 90.0 if case.mode == "train" else 45.0, "block": 20.0}.get(case.op, 8.0)
        if device.type != "cuda":
            guess *= 3
    else:
        guess = {"model": 15.0 if device.type == "cuda" else 20.0, "block": 2.0}.get(case.op, 1.0)
    return max(guess if observed is None else observed, 0.5)


def _compile_allowed(case: C.Case, device: torch.device, quick: bool, compile_all: bool,
                     provider: str = "torch_compile") -> str:
    """'' if a compiled provider should run this case, else why not (compile time is the budget's
    largest item)."""
    if compile_all:
        return ""
    if provider == "triton_compile" and case.op != "model":
        return "ours under torch.compile: the model only by default (compile time; --compile-all for blocks)"
    if case.group == "sweep":
        return "sweep compares eager PyTorch with ours (compile only with --compile-all)"
    if device.type == "cuda":
        if case.dtype != "bfloat16":
            return "torch.compile only in bf16 by default (compile time); --compile-all for every dtype"
        return ""
    if case.op == "model":
        return "torch.compile of the whole model on CPU takes minutes (--compile-all to force)"
    if case.stage not in (1, None):
        return "on CPU torch.compile runs at stage 1 only (compile time; --compile-all for all)"
    return ""


def _parity_plan(cases: Sequence[C.Case], device: torch.device) -> list[C.Case]:
    """Parity cases per (op, dtype, k), in the gradient mode, at the timed batch size (the kernels
    compile and autotune once for both): ops at stage 1 and stage 4 (C = 768 catches channel-tiling
    bugs; K = 7 only; for the MLP, stage 1 runs the fused kernel and stage 4 the GEMMs with fused
    epilogues), block at stage 1, the model at batch <= 32."""
    seen, plan = set(), []
    for case in cases:
        grad_mode = {"dwconv": "fwdbwd", "layer_norm": "bwd", "dwconv_ln": "fwdbwd", "mlp": "fwdbwd",
                     "block": "fwdbwd", "model": "infer"}[case.op]
        shapes: list = [case.shape]
        if case.op in ("dwconv", "layer_norm", "dwconv_ln", "mlp") and case.k == 7:
            shapes = [(case.shape[0],) + C.STAGES[0], (case.shape[0],) + C.STAGES[3]]
        elif case.op == "block":
            shapes = [(case.shape[0],) + C.STAGES[0]]
        elif case.op == "model":
            # a float64 reference of the whole network at batch 256 costs more than it tells
            shapes = [(min(case.shape[0], 32 if case.k == 7 else 8),) + tuple(case.shape[1:])]
        for shape in shapes:
            key = (case.op, case.dtype, case.k, tuple(shape[1:]))
            if key in seen:
                continue
            seen.add(key)
            plan.append(C.Case(case.op, grad_mode, tuple(shape), case.dtype, case.k, case.group))
    return plan


def _load_average() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every platform has one
        return None


def run(args: argparse.Namespace) -> dict:
    """Parity, ceilings, timings; returns the results.json structure."""
    t_start = time.perf_counter()
    device = bench_device()
    if device.type == "cuda":
        # timm's training scripts turn this on; PyTorch's best setup is the fair baseline.
        torch.backends.cudnn.benchmark = True
    env = environment()
    # Timings from a loaded machine spread; the load at the start says how busy it was.
    env["load_average"] = _load_average()
    print(f"load average at start (1, 5, 15 min): {env['load_average'] or 'unknown'} on "
          f"{os.cpu_count()} logical CPUs", flush=True)
    providers = args.providers.split(",") if args.providers else _default_providers(device, args.quick)
    cases = C.standard_cases(device.type, quick=args.quick, stages=_stage_numbers(args.stages))
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if _selects(wanted, c)]
    if args.exclude:
        unwanted = set(args.exclude.split(","))
        cases = [c for c in cases if not _selects(unwanted, c)]
    if args.max_cases:
        cases = cases[: args.max_cases]
    ours = [p for p in providers if p in C.OURS]
    parity_plan = _parity_plan(cases, device)
    notes: list = []
    if deps.missing("timm"):
        notes.append(f"timm is not installed ({deps.INSTALL_HINT}): the convnext_tiny cases are skipped and the "
                     "block baseline is timm's ConvNeXtBlock written out in PyTorch")
    status = {p: C.provider_unavailable(p, device) for p in providers}
    for p, why in status.items():
        if why:
            notes.append(f"provider {p} not run: {why}")
    runnable_ours = [p for p in ours if not status[p]]
    # Parity runs per backend: a compiled provider (our kernels under torch.compile) carries the
    # parity of its backend, run eagerly (compiling a model per parity case would eat the budget).
    parity_providers = [p for p in runnable_ours if p not in C.COMPILED]

    total = sum(1 for pc in parity_plan for p in parity_providers if not C.provider_skip_reason(p, pc)) + 1 + \
        len(cases) * len(providers)
    bar = _Progress(total)
    ceil: dict = {"copy_gbps": None, "matmul_tflops": {}, "notes": ["not measured yet"]}
    parity: list = []
    rows: list = []
    cpu_engines_result: dict = {}

    def elapsed() -> float:
        return time.perf_counter() - t_start

    def snapshot(done: bool) -> dict:
        meta = dict(env)
        meta.update(argv=sys.argv[1:], quick=args.quick, compile_mode=args.compile_mode, budget_s=args.budget_s,
                    elapsed_s=round(elapsed(), 1), providers=providers, cuda_graphs=args.cuda_graphs,
                    complete=done)
        return {"schema": SCHEMA_VERSION, "meta": meta, "ceilings": ceil, "parity": parity, "results": rows,
                "notes": notes, "cpu_engines": cpu_engines_result}

    last_save = [0.0]

    def checkpoint(force: bool = False) -> None:
        # a run killed from outside (the device tool's time limit) still leaves its numbers
        if getattr(args, "checkpoint", "") and (force or time.perf_counter() - last_save[0] > 10):
            _write_json(Path(args.checkpoint), snapshot(False))
            last_save[0] = time.perf_counter()

    # 1. parity ------------------------------------------------------------------------------------
    # Each (op, dtype, K, provider) is checked once, on the shapes the timing uses (so the kernels'
    # compilation and autotuning happen once). The headline set (first dtype, K = 7) is checked up
    # front; sweep kernel sizes and other dtypes just before their first timing, so that the time
    # budget cuts their parity together with their timings.
    parity_ok: dict = {}
    parity_done: set = set()
    first_dtype = cases[0].dtype if cases else ""

    def run_parity(pc: C.Case, p: str) -> None:
        key = (pc.op, pc.dtype, pc.k, p)
        if (key, tuple(pc.shape)) in parity_done or C.provider_skip_reason(p, pc):
            return  # done already, or a provider that does not measure this op (optimized: the model only)
        parity_done.add((key, tuple(pc.shape)))
        bar.step(f"parity {pc.op} {_shape_text(pc.shape)} {pc.dtype} k{pc.k} {p}")
        if args.budget_s and elapsed() > args.budget_s:
            res = {"op": pc.op, "mode": pc.mode, "shape": list(pc.shape), "dtype": pc.dtype, "k": pc.k,
                   "provider": p, "passed": None, "outputs": {}, "error": "skipped: time budget exceeded"}
        else:
            try:
                res = C.check_parity(pc, p, device, batch=pc.shape[0])
            except C.Skip as exc:
                res = {"op": pc.op, "mode": pc.mode, "shape": list(pc.shape), "dtype": pc.dtype, "k": pc.k,
                       "provider": p, "passed": None, "outputs": {}, "error": f"skipped: {exc}"}
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        parity.append(res)
        if res.get("passed") is None:
            parity_ok.setdefault(key, None)
        else:
            parity_ok[key] = bool(res["passed"]) and parity_ok.get(key, True) is not False
        if res.get("passed") is False:
            bar.note(f"PARITY FAILED: {pc.op} {pc.dtype} k{pc.k} {p}: {res.get('error') or res['outputs']}")
        checkpoint()

    headline_share = 0.4  # parity up front may use at most this share of the budget
    for pc in parity_plan:
        if pc.dtype != first_dtype or pc.k != 7 or pc.group != "standard":
            continue
        for p in parity_providers:
            if args.budget_s and elapsed() > headline_share * args.budget_s:
                break
            run_parity(pc, p)

    # 2. ceilings ----------------------------------------------------------------------------------
    bar.step("ceilings")
    try:
        ceil = measure_ceilings(device, args.quick)
    except Exception as exc:  # noqa: BLE001
        ceil = {"copy_gbps": None, "matmul_tflops": {}, "notes": [f"ceiling measurement failed: {exc}"]}
    ceilings = roofline_ceilings(ceil)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    checkpoint(force=True)

    # 3. timings -----------------------------------------------------------------------------------
    seen_cost: dict = {}
    for case in cases:
        checkpoint()
        for p in parity_providers:  # parity not yet done for this (op, dtype, K): now, before timing
            for pc in parity_plan:
                if (pc.op, pc.dtype, pc.k) == (case.op, case.dtype, case.k):
                    run_parity(pc, p)
        for p in providers:
            bar.step(f"{case.label} {p}")
            row: dict = {"op": case.op, "mode": case.mode, "shape": list(case.shape), "dtype": case.dtype,
                         "k": case.k, "group": case.group, "stage": case.stage, "provider": p}
            rows.append(row)
            if status[p]:
                row.update(status="skipped", reason=status[p])
                continue
            why = C.provider_skip_reason(p, case)
            if why:
                row.update(status="skipped", reason=why)
                continue
            if p in C.COMPILED:
                why = _compile_allowed(case, device, args.quick, args.compile_all, p)
                if why:
                    row.update(status="skipped", reason=why)
                    continue
            est = _estimated_cost_s(case, p, device, seen_cost)
            if args.budget_s and elapsed() + est > args.budget_s:
                row.update(status="budget", reason=f"time budget {args.budget_s:.0f}s: "
                                                   f"{elapsed():.0f}s used, needs ~{est:.0f}s")
                continue
            t0 = time.perf_counter()
            try:
                prep = C.prepare(case, p, device, compile_mode=args.compile_mode)
                peak, case_notes = prep.peak_mem_mb, prep.notes
                t = measure_steady(prep.fn, device, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                            min_reps=5 if device.type == "cuda" else 3,
                            cuda_graph=args.cuda_graphs and case.mode in ("fwd", "infer"),
                            max_total_s=2.0)
            except C.Skip as exc:
                row.update(status="skipped", reason=str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - record, keep going
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:400])
                bar.note(f"FAILED {case.label} {p}: {row['reason']}")
                if args.verbose:
                    traceback.print_exc()
                continue
            finally:
                seen_cost[(case.op, case.mode, p)] = time.perf_counter() - t0
                prep = None  # noqa: F841 - free the case's tensors before the next one
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            work = (roofline.resnet50_work(case.shape[0], case.dtype, case.mode, int(case.shape[2])) if p in C.ANCHORS
                    else roofline.op_work(case.op, case.shape, case.k, case.dtype, case.mode))
            row.update(status="ok", time_ms=t.median_ms, time_p20_ms=t.p20_ms, time_p80_ms=t.p80_ms, reps=t.reps,
                       spread=round(t.spread, 3), attempts=t.attempts, unstable=t.unstable, cuda_graph=t.cuda_graph, host_ms=t.host_ms, setup_s=round(seen_cost[(case.op, case.mode, p)], 2))
            row.update(roofline.roofline(work, t.median_ms, ceilings, case.dtype))
            if case.op == "model":
                row["img_per_s"] = case.shape[0] / (t.median_ms / 1e3)
                row["peak_mem_mb"] = peak
            if case_notes:
                row["notes"] = case_notes
            if p in C.OURS:
                # a compiled provider carries the parity of its eager twin (same kernels, same model)
                ok = parity_ok.get((case.op, case.dtype, case.k, C.eager_twin(p)))
                row["parity"] = "n/a" if ok is None else ("ok" if ok else "failed")
    bar.close()
    # 4. CPU: the whole model in every engine a user would pick (cpu_engines.py), batch 1 and 8;
    # part of the model measurements (left out with them by --only / --exclude).
    if device.type == "cpu" and not getattr(args, "no_cpu_engines", False) and any(c.op == "model" for c in cases):
        if args.budget_s and elapsed() > args.budget_s:
            notes.append("CPU engine comparison skipped: time budget exceeded")
        else:
            from . import cpu_engines

            try:
                cpu_engines_result.update(cpu_engines.compare(
                    "convnext_tiny", batches=(1,) if args.quick else (1, 8), runs=1, repeats=5 if args.quick else 10,
                    warmup=2, log=lambda s: print(s, flush=True)))
            except Exception as exc:  # noqa: BLE001 - recorded; the rest of the report stands
                notes.append(f"CPU engine comparison failed: {type(exc).__name__}: {exc}"[:400])
    aggregate.add_speedups(rows)
    skipped_budget = sum(1 for r in rows if r.get("status") == "budget")
    if skipped_budget:
        notes.append(f"{skipped_budget} measurements skipped: time budget of {args.budget_s:.0f}s exceeded")
    return snapshot(True)


def _stage_numbers(text: str) -> Optional[list[int]]:
    """``--stages 1,2`` -> [1, 2]; '' -> None (the default stages)."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--stages takes ConvNeXt-T stage numbers such as 1,2, got {text!r}") from None


def _selects(names: set, case: C.Case) -> bool:
    """Whether an --only / --exclude list names ``case``: its op, ``op:mode`` or its group
    ('standard', 'sweep', 'latency')."""
    return case.op in names or f"{case.op}:{case.mode}" in names or case.group in names


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

# A call whose host issue time reaches this fraction of its measured time is flagged host-bound.
HOST_BOUND_FRACTION = 0.8


def _row_note(row: dict, with_roofline: bool = True) -> str:
    """The note column: failed parity, calls whose time is mostly the host issuing them and, when
    ``with_roofline`` (GPU runs), the ceiling that sets the roofline floor when it is not memory
    (``roofline.roofline``'s ``bound``) and calls measured faster than the floor (a ceiling measured
    too low: no % is printed)."""
    notes = []
    if row.get("parity") == "failed":
        notes.append("PARITY FAILED")
    if row.get("unstable"):
        notes.append(f"unstable (p80/p20 {row['spread']:.2f} after {row['attempts']} tries): not summarized")
    host = row.get("host_ms")
    if host is not None and row.get("time_ms") and host >= HOST_BOUND_FRACTION * row["time_ms"]:
        notes.append("host-bound")
    if not with_roofline:
        return "; ".join(notes)
    if row.get("bound") not in (None, "memory"):
        notes.append(f"floor: {row['bound']}")
    pct = row.get("pct_roofline")
    if row.get("ceiling_exceeded") or (pct is not None and pct > 100.0):
        notes.append("faster than the measured ceilings allow: a ceiling is too low, no % given")
    return "; ".join(notes)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def render_markdown(data: dict) -> str:
    """report.md: environment, ceilings, what was measured here, targets, parity, the main table,
    model, sweep, skips."""
    m, ceil, rows = data["meta"], data["ceilings"], data["results"]
    device_type = m.get("device_type", "cuda")
    on_gpu = device_type == "cuda"
    aggregate.add_speedups(rows)
    out = [f"# convnext_fast benchmark report — {m.get('device_name')} — {m.get('date')}", ""]
    out.append(f"torch {m.get('torch')}, triton {m.get('triton')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, "
               f"timm {m.get('timm')}, Python {m.get('python')}, convnext_fast {m.get('convnext_fast')} "
               f"(commit {m.get('git_commit')}). Run took {m.get('elapsed_s')} s"
               f"{' (--quick)' if m.get('quick') else ''}; torch.compile mode `{m.get('compile_mode')}`.")
    if m.get("load_average"):
        out.append(f"Load average at the start (1, 5, 15 min): {', '.join(str(v) for v in m['load_average'])}. "
                   f"A row whose p80 / p20 stayed above {SPREAD_LIMIT:.2f} after two retries is marked "
                   "unstable and left out of every summary and target.")
    out.append("")
    gb = ceil.get("copy_gbps")
    mm = ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in (ceil.get("matmul_tflops") or {}).items())
    if on_gpu:
        fma = f"; fp32 FMA {ceil['fp32_fma_tflops']:.1f} TFLOP/s" if ceil.get("fp32_fma_tflops") else ""
        out.append(f"**Measured ceilings:** copy {gb:.0f} GB/s (read + write); matmul {mm}{fma}." if gb else
                   "**Measured ceilings:** not measured.")
        notes = ceil.get("notes", [])
    else:
        out.append(f"**Measured for the record (no roofline on {device_type}):** copy {gb:.0f} GB/s "
                   f"(read + write); matmul {mm}." if gb else "**Ceilings:** not measured.")
        # Result files of older CPU runs carry a note that called the matmul an FMA ceiling.
        notes = [n for n in ceil.get("notes", []) if CPU_NO_ROOFLINE in n] or [CPU_NO_ROOFLINE]
    for n in notes:
        out.append(f"- {n}")
    roof_text = ("% roofline = max(min bytes / copy bandwidth, tensor-core flops / matmul rate, fp32 flops / fp32 "
                 "FMA rate) / time, where fp32 flops are the depthwise taps, LayerNorm and GELU (CUDA cores, fp32 "
                 "accumulation); bytes = inputs read once + outputs written once; never above 100% (a call "
                 "measured faster than the floor is flagged: a ceiling is too low). " if on_gpu else
                 "No % roofline on a CPU (see above); GB/s and TFLOP/s are achieved rates (bytes = inputs read "
                 "once + outputs written once). ")
    out += ["", "Timing: median of CUDA-event-timed calls with an L2 flush between calls (GPU) or host-clock "
            "medians (CPU), after warm-up and compilation. *Eager* = PyTorch as timm runs ConvNeXt (channels_last, "
            "depthwise `F.conv2d`, permute, `F.layer_norm`, Linear MLP; the MLP half: `F.linear` -> `F.gelu` -> "
            "`F.linear` on the NHWC view, then layer scale and residual); *compile* = the same under `torch.compile`. "
            "Ours: `triton`, `cuda`, `cpu` = `convnext_fast.use_backend(name)` (chosen by name, never `auto`); "
            "`*_compile` = under `torch.compile`; `*_optimized` = `convnext_fast.optimize_for_inference(model)` "
            "(inference only). " + roof_text +
            "*host ms* (GPU) = median host time to issue one call from an idle stream; "
            f"*host-bound* marks calls where it is at least {HOST_BOUND_FRACTION:.0%} of the measured time (the GPU "
            "waits for Python and launches, so the time is not the kernels').", ""]

    out += [f"## Measured on this {'GPU' if on_gpu else device_type.upper()}: ours vs eager PyTorch and "
            "torch.compile", "",
            "Geometric mean over the cases measured (range and cases in brackets), for each of our providers "
            "(not only the fastest).", "",
            aggregate.summary_markdown(aggregate.measured_summary(rows)), ""]
    out += ["## Speed targets (GPU, bf16)", "", aggregate.targets_section(rows, device_type), ""]
    if (data.get("cpu_engines") or {}).get("rows"):
        from .cpu_engines import format_table

        out += [f"## {data['cpu_engines'].get('model', 'convnext_tiny')} on this CPU: ours vs the engines users pick", "",
                "One interleaved run (round-robin), medians; every engine checked against timm in float64 first. "
                "% of ceiling: the model's FLOPs per second over the best large-GEMM rate of its dtype measured "
                "here; x fastest competitor: the fastest of torch.compile with freezing, OpenVINO and ONNX Runtime "
                "in the same dtype over the row's time.", "", format_table(data["cpu_engines"]), ""]

    out += ["## Parity (before timing, against a float64 reference)", ""]
    body = []
    for p in data.get("parity", []):
        worst = max(p["outputs"].values(), key=lambda o: o["rel_err"] / max(o["tol"], 1e-30), default=None)
        verdict = "skipped" if p.get("passed") is None else ("ok" if p["passed"] else "**FAILED**")
        body.append([p["op"], p["mode"], _shape_text(p["shape"]), p["dtype"], p["k"], p["provider"],
                     f"{worst['rel_err']:.2e}" if worst else "-", f"{worst['tol']:.2e}" if worst else "-",
                     f"{worst['max_abs_err']:.2e}" if worst else "-",
                     f"{worst['max_abs_tol']:.2e}" if worst and "max_abs_tol" in worst else "-", verdict,
                     (p.get("error") or "")[:120]])
    out.append(aggregate.markdown_table(["op", "mode", "shape", "dtype", "K", "provider", "rel err (worst)",
                                         "tol", "max abs err", "max abs tol", "result", "error"], body) if body else
               "No parity checks ran (no kernel provider available here).")
    out.append("")

    def pct(r: dict) -> str:
        return aggregate.fmt(aggregate.roofline_pct(r, device_type), "pct") if on_gpu else "-"

    def table(sel: list[dict]) -> str:
        body = []
        for r in sel:
            if r.get("status") == "ok":
                body.append([r["op"], r["mode"], _shape_text(r["shape"]), r["dtype"], r["k"], r["provider"],
                             f"{r['time_ms']:.3f}", aggregate.fmt(r.get("gbps")), aggregate.fmt(r.get("tflops")),
                             pct(r), aggregate.fmt(r.get("speedup_vs_eager"), "x"),
                             aggregate.fmt(r.get("speedup_vs_compile"), "x"),
                             "-" if r.get("host_ms") is None else f"{r['host_ms']:.3f}",
                             _row_note(r, with_roofline=on_gpu)])
        return aggregate.markdown_table(["op", "mode", "shape", "dtype", "K", "provider", "time ms", "GB/s",
                                         "TFLOP/s", "% roofline", "x eager", "x compile", "host ms", "note"], body)

    std = [r for r in rows if r.get("group") == "standard" and r["op"] != "model"]
    out += ["## Ops and block", "", table(std), ""]
    model = [r for r in rows if r["op"] == "model" and r.get("group") in ("standard", "latency")
             and r.get("status") == "ok"]
    out += ["## convnext_tiny", ""]
    if model:
        out += ["timm's convnext_tiny (`torch`, `torch_compile`) and ours, channels_last, 224x224, float32 parameters "
                "(under autocast when the dtype is lower). `*_optimized`: "
                "`convnext_fast.optimize_for_inference(model, dtype=)`, which holds folded weights in the dtype and "
                "runs without autocast. `resnet50`, `resnet50_compile`: torchvision's "
                "resnet50 the same way, an anchor, not a target (its *x eager* / *x compile* compare it with timm's "
                "convnext_tiny). Batch 1 rows: latency of one image (ms = per image).", ""]

    def dtype_text(r: dict) -> str:
        if r["dtype"] == "float32":
            return r["dtype"]
        return r["dtype"] + (" (weights)" if r["provider"] in C.OPTIMIZED else " (autocast)")

    out.append(aggregate.markdown_table(
        ["mode", "batch", "dtype", "provider", "time ms", "img/s", "peak MiB", "x eager", "x compile", "% roofline"],
        [[r["mode"], r["shape"][0], dtype_text(r), r["provider"],
          (f"{r['time_ms']:.1f}" if r["time_ms"] >= 1 else f"{r['time_ms']:.3f}") + (" (unstable)" if r.get("unstable")
                                                                                   else ""), f"{r['img_per_s']:.0f}",
          aggregate.fmt(r.get("peak_mem_mb")), aggregate.fmt(r.get("speedup_vs_eager"), "x"),
          aggregate.fmt(r.get("speedup_vs_compile"), "x"), pct(r)] for r in model]) if model else "Not measured.")
    out.append("")
    sweep_keys = {(r["op"], r["mode"], tuple(r["shape"]), r["dtype"]) for r in rows if r.get("group") == "sweep"}
    sweep = [r for r in rows if (r["op"], r["mode"], tuple(r["shape"]), r["dtype"]) in sweep_keys]
    sweep.sort(key=lambda r: (r["op"], r["mode"], r["k"], r["provider"]))
    out += ["## Kernel-size sweep", "", table(sweep) if sweep else "Not measured.", ""]

    not_run = [r for r in rows if r.get("status") != "ok"]
    if not_run or data.get("notes"):
        out += ["## Not measured", ""]
        for n in data.get("notes", []):
            out.append(f"- {n}")
        counts = Counter((r["provider"], r["status"], r.get("reason", "")) for r in not_run)
        for (p, st, why), n in sorted(counts.items(), key=lambda kv: -kv[1]):
            out.append(f"- {p}: {st} x{n}: {why}")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

# One colour per provider in every plot; baselines in greys.
PROVIDER_COLORS = {"torch": "#8c8c8c", "torch_compile": "#4d4d4d", "triton": "tab:orange", "cuda": "tab:green",
                   "cpu": "tab:blue", "triton_compile": "tab:red", "triton_optimized": "tab:purple",
                   "cpu_optimized": "tab:cyan", "triton_optimized_compile": "tab:pink", "resnet50": "#c9b38f",
                   "resnet50_compile": "tab:brown"}
_SPARE_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _color(provider: str) -> str:
    if provider in PROVIDER_COLORS:
        return PROVIDER_COLORS[provider]
    return _SPARE_COLORS[sum(map(ord, provider)) % len(_SPARE_COLORS)]


def _provider_order(providers) -> list[str]:
    """Baselines first, then ours, in C.PROVIDERS order; unknown names last, sorted."""
    known = [p for p in C.PROVIDERS if p in providers]
    return known + sorted(set(providers) - set(known))


def _panel_order(op_modes) -> list[tuple]:
    """(op, mode) in the order of ``cases.MODES`` (ops, then their modes); anything else after."""
    order = [(op, mode) for op, modes in C.MODES.items() for mode in modes]
    return sorted(op_modes, key=lambda om: (order.index(om) if om in order else len(order), om))


def _title_and_legend(fig, title: str, providers: Sequence[str], kind: str = "bar") -> None:
    """The figure's title, then one legend for all panels under it (never over a panel's data), then
    the panels below both. Title and legend are measured once drawn: a long device name wraps, a
    legend wider than the figure takes more rows."""
    import textwrap

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # Panels first, then the band above them: tight_layout would otherwise make room for the title twice.
    fig.tight_layout()
    top = fig.subplotpars.top
    width_px, height_px = fig.canvas.get_width_height()
    renderer = fig.canvas.get_renderer()
    pad = 0.06 * fig.dpi  # pixels between the figure's edge, the title, the legend and the panels
    sup = fig.suptitle(textwrap.fill(title, width=max(20, int(fig.get_figwidth() * 12))), fontsize=10,
                       y=1 - pad / height_px, va="top")
    below = sup.get_window_extent(renderer).y0 - pad
    handles = [Patch(color=_color(p)) if kind == "bar" else Line2D([], [], color=_color(p), marker="o")
               for p in providers]
    for ncol in range(len(providers), 0, -1):
        legend = fig.legend(handles, list(providers), loc="upper center", bbox_to_anchor=(0.5, below / height_px),
                            ncol=ncol, fontsize=8, frameon=False)
        if legend.get_window_extent(renderer).width <= width_px - 2 * pad or ncol == 1:
            break
        legend.remove()
    below = legend.get_window_extent(renderer).y0 - pad
    fig.subplots_adjust(top=top - (1 - below / height_px))


def make_figures(data: dict) -> dict:
    """The report's figures, not yet saved: {file name: matplotlib Figure}.

    * ``speedup.png``: per op and mode, our providers' (and torch.compile's) speedup over eager
      PyTorch at each ConvNeXt-T stage (first dtype measured, standard set);
    * ``sweep.png``: time against kernel size, per swept case;
    * ``model.png``: convnext_tiny images/s per provider, one horizontal bar each (the provider names
      sit on the y axis, so any number of them stays legible), with the speedup over eager (none
      for the resnet50 anchor: another network's images/s, for scale), batch-1 latency rows left out.

    Raises:
        deps.MissingDependency: matplotlib is not installed.
    """
    matplotlib = deps.require("matplotlib", "the report's plots")
    matplotlib.use("Agg")
    plt = deps.require("matplotlib.pyplot", "the report's plots")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = aggregate.add_speedups(data["results"])
    dev = data["meta"].get("device_name", "")
    figs: dict = {}
    ok = [r for r in rows if r.get("status") == "ok"]

    # speedup per op and stage (first dtype measured, standard set)
    std = [r for r in ok if r.get("group") == "standard" and r["op"] != "model"]
    if std:
        dtype = std[0]["dtype"]
        std = [r for r in std if r["dtype"] == dtype and int(r.get("k", 7)) == 7]
        panels = _panel_order({(r["op"], r["mode"]) for r in std})
        provs = [p for p in _provider_order({r["provider"] for r in std}) if p != "torch"]
        cols = min(4, len(panels))
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows + 0.5), squeeze=False)
        width = 0.8 / max(1, len(provs))
        for ax, (op, mode) in zip(axes.flat, panels):
            sel = [r for r in std if r["op"] == op and r["mode"] == mode]
            shapes = sorted({tuple(r["shape"]) for r in sel}, key=lambda s: (-s[2], s[1]))
            for i, p in enumerate(provs):
                ys = []
                for s in shapes:
                    r = next((r for r in sel if r["provider"] == p and tuple(r["shape"]) == s), None)
                    ys.append(r["speedup_vs_eager"] if r and r.get("speedup_vs_eager") else 0.0)
                ax.bar([j + i * width for j in range(len(shapes))], ys, width, color=_color(p))
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([j + (len(provs) - 1) * width / 2 for j in range(len(shapes))])
            ax.set_xticklabels([f"{s[1]}x{s[2]}" for s in shapes], fontsize=8)
            ax.set_title(f"{aggregate.OP_NAMES.get(op, op)}\n{aggregate.MODE_NAMES.get(mode, mode)}", fontsize=9)
            ax.set_ylabel("speedup over eager")
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        _title_and_legend(fig, f"convnext_fast vs eager PyTorch, {dtype}, batch {std[0]['shape'][0]} — {dev}",
                          provs)
        figs["speedup.png"] = fig

    # kernel-size sweep (the standard K = 7 row of each swept case included)
    sweep_keys = sorted({(r["op"], r["mode"], tuple(r["shape"]), r["dtype"]) for r in ok if r.get("group") == "sweep"})
    if sweep_keys:
        fig, axes = plt.subplots(1, len(sweep_keys), figsize=(4.2 * len(sweep_keys), 4.1), squeeze=False)
        shown: set = set()
        for ax, (op, mode, shape, dtype) in zip(axes.flat, sweep_keys):
            sel = [r for r in ok if (r["op"], r["mode"], tuple(r["shape"]), r["dtype"]) == (op, mode, shape, dtype)]
            for p in _provider_order({r["provider"] for r in sel}):
                pts = sorted((r["k"], r["time_ms"]) for r in sel if r["provider"] == p)
                ax.plot([k for k, _ in pts], [t for _, t in pts], marker="o", color=_color(p))
                shown.add(p)
            times = [r["time_ms"] for r in sel]
            if max(times) >= 10 * min(times):
                # a decade or more: log scale, 1-2-5 ticks in plain numbers (no 10^x notation)
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                ax.set_ylim(0, max(times) * 1.08)
            ax.set_xlabel("kernel size K")
            ax.set_ylabel("time (ms)")
            ax.set_title(f"{aggregate.describe(op, mode)}\n{_shape_text(shape)} {dtype}", fontsize=8)
        _title_and_legend(fig, f"kernel-size sweep — {dev}", _provider_order(shown), kind="line")
        figs["sweep.png"] = fig

    # model img/s
    model = [r for r in ok if r["op"] == "model" and r.get("group") == "standard"]
    if model:
        modes = [m for m in ("infer", "train") if any(r["mode"] == m for r in model)]
        modes += sorted({r["mode"] for r in model} - set(modes))
        most = max(sum(1 for r in model if r["mode"] == m) for m in modes)
        fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 1.4 + 0.42 * most), squeeze=False)
        for ax, mode in zip(axes.flat, modes):
            sel = [r for r in model if r["mode"] == mode]
            order = _provider_order({r["provider"] for r in sel})
            sel.sort(key=lambda r: order.index(r["provider"]))
            ys = list(range(len(sel)))[::-1]  # first provider on top
            vals = [r["img_per_s"] for r in sel]
            ax.barh(ys, vals, color=[_color(r["provider"]) for r in sel])
            ax.set_yticks(ys)
            ax.set_yticklabels([r["provider"] for r in sel], fontsize=8)
            for y, r in zip(ys, sel):
                # the anchor is another network: its images/s, never a speedup of ours
                x = r.get("speedup_vs_eager") if r["provider"] not in C.ANCHORS else None
                ax.text(r["img_per_s"], y, f" {aggregate.fmt(float(r['img_per_s']))}" + (f" ({x:.2f}x)" if x else ""),
                        va="center", fontsize=7)
            ax.set_xlim(0, max(vals) * 1.45)
            ax.set_xlabel("images / s (x eager)")
            ax.set_title(f"convnext_tiny {aggregate.MODE_NAMES.get(mode, mode)}, batch {sel[0]['shape'][0]}, "
                         f"{sel[0]['dtype']}", fontsize=9)
        fig.suptitle(textwrap.fill(dev, width=max(20, int(fig.get_figwidth() * 12))), fontsize=10)
        fig.tight_layout()
        figs["model.png"] = fig
    return figs


def write_plots(data: dict, out_dir: Path) -> list[Path]:
    """Save :func:`make_figures` into ``out_dir``; returns the paths.

    Raises:
        deps.MissingDependency: matplotlib is not installed.
    """
    figs = make_figures(data)
    import matplotlib.pyplot as plt  # make_figures has imported it

    written: list = []
    for name, fig in figs.items():
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m convnext_fast.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.json, report.md and the PNG plots")
    ap.add_argument("--from-json", default="",
                    help="do not measure: re-render report.md and the plots from an existing results.json")
    ap.add_argument("--quick", action="store_true", help="reduced set: fewer stages/dtypes/kernel sizes")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="wall-time budget for the whole run; cases that would exceed it are skipped (0: none)")
    ap.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune",
                                                                   "max-autotune-no-cudagraphs"],
                    help="torch.compile mode for the torch_compile provider (max-autotune is slow to compile)")
    ap.add_argument("--compile-all", action="store_true",
                    help="run torch_compile for every dtype, stage and the sweep (slow)")
    ap.add_argument("--providers", default="", help="comma list (default: every provider for this device)")
    ap.add_argument("--only", default="",
                    help="comma list of ops (dwconv, layer_norm, dwconv_ln, mlp, block, model), op:mode or groups "
                         "(standard, sweep, latency) to run")
    ap.add_argument("--exclude", default="", help="comma list in the form of --only: cases to leave out "
                                                  "(e.g. 'sweep,latency')")
    ap.add_argument("--stages", default="",
                    help="ConvNeXt-T stages (1-4, comma list) of the op and block cases (default: all; "
                         "GPU --quick: 1,3)")
    ap.add_argument("--max-cases", type=int, default=0, help="run only the first N cases (debugging)")
    ap.add_argument("--cuda-graphs", action="store_true", help="time forward/inference calls as CUDA graph replays")
    ap.add_argument("--warmup-ms", type=float, default=25.0)
    ap.add_argument("--rep-ms", type=float, default=100.0)
    ap.add_argument("--no-cpu-engines", action="store_true",
                    help="CPU: leave out convnext_tiny in timm, ONNX Runtime, OpenVINO and torch.compile with "
                         "freezing beside ours (batch 1 and 8; about a minute per frozen compile)")
    ap.add_argument("--roadmap", action="store_true",
                    help="add the ResNet-50 -> ConvNeXt-T road in throughput (convnext_fast.bench.roadmap): "
                         "its table in report.md, roadmap.png / .json / .md in --out. On by default in a full "
                         "run (neither --quick nor --only); this forces it")
    ap.add_argument("--no-roadmap", action="store_true", help="leave the road from ResNet-50 out of a full run")
    ap.add_argument("--roadmap-budget-s", type=float, default=600.0, help="wall-time budget of --roadmap")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed cases")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.checkpoint = ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    no_plots = ""
    if deps.missing("matplotlib"):
        # said up front, not after minutes of measuring
        no_plots = f"plots not written: matplotlib is not installed ({deps.INSTALL_HINT})"
        print(no_plots, flush=True)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        args.checkpoint = str(out / "results.json")
        data = run(args)
        full_run = not (args.quick or args.only or getattr(args, "no_roadmap", False))
        if getattr(args, "roadmap", False) or full_run:
            from . import roadmap as roadmap_bench
            data["roadmap"] = roadmap_bench.run(args.roadmap_budget_s, verbose=args.verbose)
        _write_json(out / "results.json", data)
    (out / "report.md").write_text(render_markdown(data))
    if data.get("roadmap"):
        from . import roadmap as roadmap_bench
        with open(out / "report.md", "a") as f:
            f.write("\n" + roadmap_bench.render_markdown(data["roadmap"], heading="##") + "\n")
        roadmap_bench.write_outputs(data["roadmap"], out)
    plots: list = []
    if not no_plots:
        plots = write_plots(data, out)
    ok = sum(1 for r in data["results"] if r.get("status") == "ok")
    failed = [p for p in data["parity"] if p.get("passed") is False]
    written = ([] if args.from_json else [out / "results.json"]) + [out / "report.md"] + plots
    print("wrote " + ", ".join(str(p) for p in written))
    if no_plots:
        print(no_plots)
    print(f"{ok} measurements, {len(failed)} parity failures, {data['meta'].get('elapsed_s', '?')} s")
    print()
    print(final_summary(data))
    # Exit 0 even when some providers failed: the report says so; a crash above exits non-zero.
    return 0


def final_summary(data: dict) -> str:
    """What the run prints last: what was measured on this device (ours vs eager PyTorch and
    torch.compile), then the GPU speed targets on a GPU run, or one line saying they need one."""
    m = data["meta"]
    device_type = m.get("device_type", "cuda")
    rows = data["results"]
    lines = [f"Measured on {m.get('device_name', device_type)} ({device_type}): ours vs eager PyTorch and "
             "torch.compile", "", aggregate.summary_markdown(aggregate.measured_summary(rows)), ""]
    if device_type == aggregate.TARGET_DEVICE:
        lines += ["Speed targets (GPU, bf16):", ""]
    lines.append(aggregate.targets_section(rows, device_type))
    if (data.get("cpu_engines") or {}).get("rows"):
        from .cpu_engines import format_table

        lines += ["", f"{data['cpu_engines'].get('model', 'convnext_tiny')} on this CPU, ours vs the engines users pick:",
                  "", format_table(data["cpu_engines"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
