"""Turning raw result rows into comparisons: speedups, per-target verdicts, Markdown tables.

Pure functions over the ``results.json`` structure (no timing), so they are unit-tested with
fabricated data and reused by ``scripts/update_readme_perf.py``.

A result row (one case x provider) has at least: ``op, mode, shape, dtype, k, group, provider,
status`` ('ok' | 'skipped' | 'failed' | 'budget'), and when ok ``time_ms`` plus the roofline fields
(``bytes, gbps, tflops, pct_roofline, pct_bandwidth``), ``img_per_s`` and ``peak_mem_mb`` for the
model, ``parity`` ('ok' | 'failed' | 'n/a'), and ``unstable`` (its repetitions stayed spread: shown
in the tables, left out of every speedup, summary and target, see :func:`usable`).

Two summaries come out of the rows: :func:`measured_summary` (what our providers did against eager
PyTorch and ``torch.compile`` on the machine that ran, whatever it is) and :func:`evaluate_targets`
(the speed targets, which are set for a GPU in bf16 and evaluated only on one).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Optional, Sequence

from ..shapes import CONVNEXT_T_STAGES
from .roofline import checked_pct

__all__ = [
    "OURS", "OPTIMIZED", "MODEL_OURS", "Target", "TARGETS", "TARGET_DEVICE", "add_speedups", "best_ours", "describe",
    "evaluate_targets", "fmt", "usable",
    "geomean", "row_key", "markdown_table", "measured_summary", "roofline_pct", "summary_markdown",
    "targets_markdown", "targets_section",
]

# Our providers (as in cases.OURS; this module imports nothing from torch): the kernels through a
# backend, our model under torch.compile, and optimize_for_inference(model) eager and compiled.
OURS = ("triton", "cuda", "cpu", "triton_compile", "triton_optimized", "cpu_optimized", "triton_optimized_compile")
OPTIMIZED = ("triton_optimized", "cpu_optimized", "triton_optimized_compile")
# Our model as users train and run it (not the inference-only optimized copy).
MODEL_OURS = tuple(p for p in OURS if p not in OPTIMIZED)
STAGE_SHAPES = CONVNEXT_T_STAGES

# How the report names ops and modes. An op or mode missing here is shown by its own name, so a new
# benchmark case needs no change here to appear in the summaries.
OP_NAMES = {"dwconv": "depthwise conv", "layer_norm": "channels-first LayerNorm",
            "dwconv_ln": "fused depthwise conv + LayerNorm", "mlp": "MLP half", "block": "ConvNeXt block",
            "model": "convnext_tiny"}
MODE_NAMES = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward + backward", "infer": "inference",
              "train": "training step"}


def describe(op: str, mode: str) -> str:
    """What a case measures in words: ``describe("dwconv_ln", "fwd")`` -> 'fused depthwise conv +
    LayerNorm forward'."""
    return f"{OP_NAMES.get(op, op)} {MODE_NAMES.get(mode, mode)}"


def roofline_pct(row: dict, device_type: str, key: str = "pct_roofline") -> Optional[float]:
    """The row's % of roofline to print: None on a CPU run (no roofline there, see
    ``report.measure_ceilings``) and wherever the value could not be a percentage of a true ceiling."""
    if device_type != "cuda":
        return None
    return checked_pct(row, key)


def row_key(row: dict) -> tuple:
    """What identifies a case across providers."""
    return (row["op"], row["mode"], tuple(row["shape"]), row["dtype"], int(row.get("k", 7)))


def geomean(values: Iterable[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def usable(row: dict) -> bool:
    """A row that may enter a comparison: measured, and steady (a row marked ``unstable`` is noise)."""
    return row.get("status") == "ok" and not row.get("unstable")


def add_speedups(rows: list[dict]) -> list[dict]:
    """Set ``speedup_vs_eager`` / ``speedup_vs_compile`` on every ok row (in place; returns rows).

    Speedup = baseline time / this row's time, same case key; None where the baseline is missing or
    either row is unstable.
    """
    base: dict = {}
    for r in rows:
        if usable(r) and r["provider"] in ("torch", "torch_compile"):
            base[(row_key(r), r["provider"])] = r["time_ms"]
    for r in rows:
        if not usable(r):
            r["speedup_vs_eager"] = r["speedup_vs_compile"] = None
            continue
        k = row_key(r)
        te, tc = base.get((k, "torch")), base.get((k, "torch_compile"))
        r["speedup_vs_eager"] = te / r["time_ms"] if te else None
        r["speedup_vs_compile"] = tc / r["time_ms"] if tc else None
    return rows


def best_ours(rows: Sequence[dict], key: tuple, providers: Sequence[str] = OURS) -> Optional[dict]:
    """Our fastest ok row for a case key (over ``providers``, default all of ours), or None."""
    cands = [r for r in rows if usable(r) and r["provider"] in providers and row_key(r) == key]
    return min(cands, key=lambda r: r["time_ms"]) if cands else None


def _find(rows: Sequence[dict], key: tuple, provider: str) -> Optional[dict]:
    for r in rows:
        if usable(r) and r["provider"] == provider and row_key(r) == key:
            return r
    return None


class Target(NamedTuple):
    """One speed target: ``id``, what it measures in words (``target``), the op, its mode (or modes:
    the geometric mean covers each), the metric, the threshold, and which cases and providers count.

    metric: 'pct_bandwidth' | 'vs_eager' | 'vs_compile' | 'peak_mem_vs_eager' (ours / eager, must
    be <= threshold). ``stages``: ConvNeXt-T stage numbers (ops and block; None: all four);
    ``batch``: only this batch size (None: any in the standard set); ``providers``: which of ours
    count (our fastest of them per case).
    """

    id: str
    target: str
    op: str
    mode: Any  # str or tuple of str
    metric: str
    threshold: float
    stages: Optional[tuple] = None
    batch: Optional[int] = None
    providers: tuple = OURS


# The speed targets. They are set for a GPU in bf16 (TARGET_DEVICE); a run on another device reports
# measured_summary instead. The convnext_tiny targets count our model as users train and run it
# (MODEL_OURS); the optimized inference model has its own target.
TARGET_DEVICE = "cuda"
TARGETS = (
    Target("dwconv_roofline", "depthwise conv 7x7 forward, % of the measured memory-bandwidth roofline", "dwconv",
           "fwd", "pct_bandwidth", 85.0),
    Target("dwconv_ln_vs_eager", "fused depthwise conv + LayerNorm forward vs eager conv + permute + LayerNorm",
           "dwconv_ln", "fwd", "vs_eager", 1.8),
    Target("block_vs_eager", "ConvNeXt block forward + backward vs eager PyTorch", "block", "fwdbwd", "vs_eager", 1.5),
    Target("block_vs_compile", "ConvNeXt block forward + backward vs torch.compile", "block", "fwdbwd",
           "vs_compile", 1.2),
    Target("model_infer_vs_eager", "convnext_tiny inference (batch 256) vs timm eager", "model", "infer",
           "vs_eager", 2.0, providers=MODEL_OURS),
    Target("model_infer_vs_compile", "convnext_tiny inference (batch 256) vs timm torch.compile", "model", "infer",
           "vs_compile", 1.5, providers=MODEL_OURS),
    Target("model_train_vs_eager", "convnext_tiny training step (batch 256) vs timm eager", "model", "train",
           "vs_eager", 1.3, providers=MODEL_OURS),
    Target("model_train_peak_mem", "convnext_tiny training peak memory vs timm eager (ours / eager)", "model",
           "train", "peak_mem_vs_eager", 1.0, providers=MODEL_OURS),
    Target("mlp_vs_compile", "MLP half vs torch.compile, stages 1-2", "mlp", ("fwd", "fwdbwd"), "vs_compile", 1.5,
           stages=(1, 2)),
    Target("block_fwd_vs_compile", "ConvNeXt block forward vs timm block under torch.compile", "block", "fwd",
           "vs_compile", 1.5),
    Target("block_fwdbwd_vs_timm_compile", "ConvNeXt block forward + backward vs timm block under torch.compile",
           "block", "fwdbwd", "vs_compile", 1.3),
    Target("model_train_vs_compile", "convnext_tiny training step (batch 256) vs timm torch.compile", "model",
           "train", "vs_compile", 1.3, providers=MODEL_OURS),
    Target("optimized_infer_vs_compile", "optimized convnext_tiny inference (batch 256) vs timm torch.compile",
           "model", "infer", "vs_compile", 2.0, batch=256, providers=OPTIMIZED),
)


def _target_rows(rows: Sequence[dict], target: Target, dtype: str) -> list[tuple]:
    """Case keys for a target: its stage shapes (ops, block) or the model, K = 7, standard set, in
    the order of the target's modes."""
    modes = (target.mode,) if isinstance(target.mode, str) else tuple(target.mode)
    keys = sorted({row_key(r) for r in rows if r["op"] == target.op and r["mode"] in modes and r["dtype"] == dtype
                   and int(r.get("k", 7)) == 7 and r.get("group", "standard") == "standard"},
                  key=lambda k: (modes.index(k[1]), k[2][0], -k[2][2] if len(k[2]) > 2 else 0))
    if target.op != "model":
        shapes = STAGE_SHAPES if target.stages is None else tuple(STAGE_SHAPES[i - 1] for i in target.stages)
        keys = [k for k in keys if tuple(k[2][1:]) in shapes]
    if target.batch is not None:
        keys = [k for k in keys if k[2][0] == target.batch]
    return keys


def evaluate_targets(rows: list[dict], dtype: str = "bfloat16") -> list[dict]:
    """Each speed target with its measured value and a verdict: 'met' | 'not met' | 'not measured'.

    Ops and the block: the geometric mean over the measured ConvNeXt-T stages the target covers, and
    over its modes when it names several (per-case values in ``detail``). Ours = our fastest of the
    target's providers for each case. A parity failure makes a target 'not met'.
    """
    add_speedups(rows)
    out = []
    for t in TARGETS:
        tid, desc, metric, thr = t.id, t.target, t.metric, t.threshold
        several_modes = not isinstance(t.mode, str)
        vals, details, parity_bad = [], [], False
        for key in _target_rows(rows, t, dtype):
            ours = best_ours(rows, key, t.providers)
            if ours is None:
                continue
            if ours.get("parity") == "failed":
                parity_bad = True
            shape = "x".join(str(s) for s in key[2]) + (f" {key[1]}" if several_modes else "")
            if metric == "pct_bandwidth":
                v = checked_pct(ours, "pct_bandwidth")
            elif metric == "vs_eager":
                v = ours.get("speedup_vs_eager")
            elif metric == "vs_compile":
                v = ours.get("speedup_vs_compile")
            else:
                eager = _find(rows, key, "torch")
                v = (ours["peak_mem_mb"] / eager["peak_mem_mb"]
                     if eager and eager.get("peak_mem_mb") and ours.get("peak_mem_mb") else None)
            if v is None:
                continue
            vals.append(v)
            reach = ""
            if metric == "pct_bandwidth" and ours.get("pct_bandwidth_max") and ours["pct_bandwidth_max"] < 99.5:
                # the fp32 FMAs alone outlast the bytes: no implementation gets past this share
                reach = f", at most {fmt(ours['pct_bandwidth_max'], metric)} ({ours.get('bound')} bound)"
            details.append(f"{shape}: {fmt(v, metric)} ({ours['provider']}{reach})")
        value = geomean(vals)
        if value is None:
            verdict = "not measured"
        elif parity_bad:
            verdict = "not met (parity failed)"
        elif metric == "peak_mem_vs_eager":
            verdict = "met" if value <= thr else "not met"
        else:
            verdict = "met" if value >= thr else "not met"
        out.append({"id": tid, "target": desc, "metric": metric, "threshold": thr, "value": value,
                    "verdict": verdict, "detail": "; ".join(details)})
    return out


def fmt(v: Any, metric: str = "") -> str:
    """Human formatting: '1.83x', '87.2%', '12.3' ; 'n/a' for None."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if metric.startswith("pct"):
        return f"{v:.1f}%"
    if metric.startswith("vs") or metric == "x":
        return f"{v:.2f}x"
    if metric == "peak_mem_vs_eager":
        return f"{v:.2f}x"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _threshold_text(t: dict) -> str:
    if t["metric"] == "pct_bandwidth":
        return f">= {t['threshold']:.0f}%"
    if t["metric"] == "peak_mem_vs_eager":
        return f"<= {t['threshold']:.2f}x"
    return f">= {t['threshold']:.2f}x"


def targets_markdown(targets: Sequence[dict]) -> str:
    """The headline table: target | goal | measured | verdict | per-stage detail."""
    lines = ["| target | goal | measured | verdict | detail |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {_threshold_text(t)} | {fmt(t['value'], t['metric'])} | "
                     f"**{t['verdict']}** | {t['detail'] or '-'} |")
    return "\n".join(lines)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def targets_section(rows: list[dict], device_type: str) -> str:
    """The speed targets' table on a GPU run; elsewhere one line saying that they need a GPU."""
    if device_type == TARGET_DEVICE:
        return targets_markdown(evaluate_targets(rows))
    example = next(t.target for t in TARGETS if t.id == "model_infer_vs_compile")
    return (f"The {len(TARGETS)} speed targets (bf16, e.g. \"{example}\") are set for a CUDA GPU: "
            f"they need a GPU run and are not evaluated on this {device_type} run.")


def _case_label(row: dict) -> str:
    """How one case of a summary line is named: its stage (C x H x W), its K (sweep) or its batch
    (the model, batch-1 latency included)."""
    if row.get("group") == "sweep":
        return f"K={int(row.get('k', 7))}"
    if row["op"] == "model":
        return f"batch {row['shape'][0]}"
    return "x".join(str(s) for s in row["shape"][1:])


def _spread(vals: Sequence[tuple[str, float]], n_cases: int, what: str) -> dict:
    """geomean, min, max of (case, value) pairs and which cases they cover, for one summary cell."""
    if not vals:
        return {"value": None}
    nums = [v for _, v in vals]
    out = {"value": geomean(nums), "min": min(nums), "max": max(nums), "n": len(vals), "of": n_cases,
           "cases": [c for c, _ in vals]}
    if what == "kernel sizes":
        out["over"] = "K " + ", ".join(c.removeprefix("K=") for c, _ in vals)
    else:
        out["over"] = (f"{len(vals)} {what}" if len(vals) > 1 else vals[0][0]) + \
            (f" of {n_cases}" if 1 < len(vals) < n_cases else "")
    return out


_GROUP_SUFFIX = {"sweep": " (kernel-size sweep)", "latency": " (latency)"}


def measured_summary(rows: list[dict]) -> list[dict]:
    """What each of our providers measured against eager PyTorch and ``torch.compile``, per op and
    mode (ConvNeXt-T stages), model mode (and the model's batch-1 latency), and kernel-size sweep, on
    whatever device ran.

    One entry per (group, op, mode, dtype, batch, our provider) that has an ok row, in the order the
    rows were measured (most important first). ``vs_eager`` / ``vs_compile`` hold the geometric mean
    over the cases with that baseline (``value``), ``min``, ``max``, ``n`` and ``over`` (which cases,
    in words); ``value`` is None when the baseline was not measured.
    """
    add_speedups(rows)
    groups: dict = {}
    for r in rows:
        if not usable(r) or r["provider"] not in OURS:
            continue
        if r.get("group", "standard") == "standard" and r["op"] != "model" and int(r.get("k", 7)) != 7:
            continue
        key = (r.get("group", "standard"), r["op"], r["mode"], r["dtype"], r["shape"][0], r["provider"])
        groups.setdefault(key, []).append(r)
    out = []
    for (group, op, mode, dtype, batch, provider), sel in groups.items():
        what = "kernel sizes" if group == "sweep" else ("runs" if op == "model" else "stages")
        eager = [(_case_label(r), r["speedup_vs_eager"]) for r in sel if r.get("speedup_vs_eager")]
        comp = [(_case_label(r), r["speedup_vs_compile"]) for r in sel if r.get("speedup_vs_compile")]
        where = f"{dtype}, batch {batch}"
        if group == "sweep":
            where += f", {'x'.join(str(s) for s in sel[0]['shape'][1:])}"
        out.append({"group": group, "op": op, "mode": mode, "dtype": dtype, "batch": batch,
                    "provider": provider, "what": describe(op, mode) + _GROUP_SUFFIX.get(group, ""),
                    "where": where, "vs_eager": _spread(eager, len(sel), what),
                    "vs_compile": _spread(comp, len(sel), what)})
    return out


def _spread_text(cell: dict) -> str:
    if cell.get("value") is None:
        return "not measured"
    text = fmt(cell["value"], "x")
    if cell["n"] > 1:
        text += f" ({fmt(cell['min'], 'x')}-{fmt(cell['max'], 'x')}, {cell['over']})"
    elif cell["of"] > 1 or not cell["over"].startswith("batch"):
        text += f" ({cell['over']})"
    return text


def summary_markdown(summary: Sequence[dict]) -> str:
    """The measured summary as a table: what, dtype and batch, ours, x eager, x torch.compile.

    A speedup over several cases is their geometric mean, with the range and the cases it covers.
    """
    if not summary:
        return "None of our providers was measured against a baseline in this run."
    body = [[s["what"], s["where"], s["provider"], _spread_text(s["vs_eager"]), _spread_text(s["vs_compile"])]
            for s in summary]
    return markdown_table(["measured", "dtype, batch", "ours", "x eager PyTorch", "x torch.compile"], body)
