"""Sweep the Triton launchers' tunable constants on a GPU and report the fastest setting per shape.

The launchers in ``convnext_fast.kernels`` pick tiles, warps and program counts from module-level
constants that were set from AOT compiles (registers, spills) and from one H100 run of older
kernels. This tool times each *study* (one constant of one launcher) at every value in its list, at
the ConvNeXt-T stage shapes, and checks each value's outputs against the default value's (a
variant that computes something else is reported as ``wrong``, never as fastest). It changes no
file: the numbers go to ``sweep.json`` and ``sweep.md`` for a person to carry into the kernels.

    python -m convnext_fast.bench.sweep --out DIR [--studies NAME ...] [--budget-s S] [--batch N]
    python -m convnext_fast.bench.sweep --check-only   # every variant once at tiny shapes, no timing

``--check-only`` runs on CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1`` is set
(how CI checks that every variant still computes the right thing); timing needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..shapes import CONVNEXT_T_STAGES

__all__ = ["STUDIES", "Study", "main", "run_studies"]

# ConvNeXt-T's stages as (C, H = W): every stage is square.
STAGES = tuple((c, h) for c, h, w in CONVNEXT_T_STAGES if h == w)
TINY_STAGES = ((24, 9), (40, 7))  # --check-only: small, odd sizes, a multiple-of-7 width


@dataclass(frozen=True)
class Study:
    """One constant of one launcher: ``module.attr`` takes each of ``values`` in turn."""

    name: str
    module: str  # inside convnext_fast.kernels
    attr: str
    values: tuple
    op: str  # key of _OPS: what is run and compared
    note: str = ""


STUDIES = (
    Study("fused_fwd_threads", "dwconv_layer_norm", "PX_THREADS", (64, 128, 256), "dwconv_ln_fwd",
          "threads per program of the fused px kernels (forward timed here)"),
    Study("fused_bwd_threads", "dwconv_layer_norm", "PX_THREADS", (64, 128, 256), "dwconv_ln_bwd",
          "threads per program of the fused px kernels (backward timed here)"),
    Study("fused_bwd_partials", "layer_norm", "MAX_PARTIALS", (256, 1024, 4096), "dwconv_ln_bwd",
          "programs (partial-sum rows) of the LayerNorm and fused backward kernels"),
    Study("dwconv_warps", "depthwise_conv", "_NUM_WARPS", (2, 4), "dwconv_fwd",
          "warps per program of the depthwise px kernels (forward timed here)"),
    Study("dwconv_fwd_programs", "depthwise_conv", "_FWD_TARGET_PROGRAMS", (512, 1024, 4096), "dwconv_fwd",
          "forward programs below which H is split into row segments (halo rows re-read)"),
    Study("dwconv_wgrad_programs", "depthwise_conv", "_WGRAD_TARGET_PROGRAMS", (256, 1024, 4096), "dwconv_bwd",
          "programs (partial rows) of the depthwise weight gradient"),
    Study("ln_fwd_tile", "layer_norm", "TILE_FWD", (2048, 4096, 8192), "ln_fwd",
          "elements per LayerNorm forward program"),
    Study("ln_bwd_tile", "layer_norm", "TILE_BWD", (1024, 2048, 4096), "ln_bwd",
          "elements per LayerNorm backward tile"),
)


def _kernels(module: str):
    import importlib

    return importlib.import_module(f"convnext_fast.kernels.{module}")


@contextlib.contextmanager
def _patched(module: str, attr: str, value) -> Iterator[None]:
    mod = _kernels(module)
    old = getattr(mod, attr)
    setattr(mod, attr, value)
    try:
        yield
    finally:
        setattr(mod, attr, old)


def _inputs(c: int, hw: int, batch: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The benchmark's own inputs for the fused op at this shape (K = 7), plus an incoming gradient."""
    from .cases import Case, _op_inputs

    case = Case("dwconv_ln", "fwd", (batch, c, hw, hw), str(dtype).replace("torch.", ""), 7)
    x, w, b, lw, lb = _op_inputs(case, device)
    gy = torch.randn(x.shape, generator=torch.Generator(device="cpu").manual_seed(1)).to(device=device, dtype=dtype)
    return {"x": x, "w": w, "b": b, "lw": lw, "lb": lb, "gy": gy.contiguous(memory_format=torch.channels_last)}


def _op(name: str, t: dict) -> Callable[[], tuple]:
    """The launcher call of an op on inputs ``t`` (kernels called directly: no dispatch in the way)."""
    from convnext_fast.kernels import launchers as K

    if name == "dwconv_fwd":
        return lambda: (K.dwconv_forward(t["x"], t["w"], t["b"]),)
    if name == "dwconv_bwd":
        return lambda: K.dwconv_backward(t["gy"], t["x"], t["w"])
    if name == "ln_fwd":
        return lambda: K.layer_norm_forward(t["x"], t["lw"], t["lb"], 1e-6)
    if name == "ln_bwd":
        _, mean, rstd = K.layer_norm_forward(t["x"], t["lw"], t["lb"], 1e-6)
        return lambda: K.layer_norm_backward(t["gy"], t["x"], t["lw"], mean, rstd)
    if name == "dwconv_ln_fwd":
        return lambda: K.dwconv_ln_forward(t["x"], t["w"], t["b"], t["lw"], t["lb"], 1e-6)
    if name == "dwconv_ln_bwd":
        _, mean, rstd = K.dwconv_ln_forward(t["x"], t["w"], t["b"], t["lw"], t["lb"], 1e-6)
        return lambda: K.dwconv_ln_backward(t["gy"], t["x"], t["w"], t["b"], t["lw"], mean, rstd)
    raise ValueError(f"unknown op {name!r}")


def _max_rel_diff(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """Largest |a - b| / max|b| over the outputs (norm-free, so it reads the same for every output)."""
    worst = 0.0
    for a, b in zip(outs, refs):
        scale = b.double().abs().max().item() or 1.0
        worst = max(worst, (a.double() - b.double()).abs().max().item() / scale)
    return worst


def run_studies(studies: Sequence[Study], device: torch.device, *, batch: int, dtype: torch.dtype,
                stages: Sequence[tuple], timed: bool, budget_s: Optional[float] = None,
                tol: float = 2e-2, log: Callable[[str], None] = print) -> list[dict]:
    """One row per (study, stage, value): time_ms (None when not timed), rel_diff to the default
    value's outputs, status 'ok' | 'wrong' | 'failed' | 'budget'."""
    from .timing import measure

    start = time.perf_counter()
    rows: list[dict] = []
    for study in studies:
        default = getattr(_kernels(study.module), study.attr)
        values = (default,) + tuple(v for v in study.values if v != default)
        for c, hw in stages:
            t = _inputs(c, hw, batch, dtype, device)
            ref = [o for o in _op(study.op, t)() if o is not None]
            for value in values:
                row = {"study": study.name, "attr": f"{study.module}.{study.attr}", "value": value,
                       "default": value == default, "op": study.op, "shape": [batch, c, hw, hw],
                       "dtype": str(dtype).replace("torch.", ""), "time_ms": None, "rel_diff": None}
                rows.append(row)
                if budget_s is not None and time.perf_counter() - start > budget_s:
                    row["status"] = "budget"
                    continue
                try:
                    with _patched(study.module, study.attr, value):
                        fn = _op(study.op, t)
                        outs = [o for o in fn() if o is not None]
                        row["rel_diff"] = _max_rel_diff(outs, ref)
                        row["status"] = "ok" if row["rel_diff"] <= tol else "wrong"
                        if timed and row["status"] == "ok":
                            row["time_ms"] = measure(fn, device, rep_ms=50, max_total_s=1.0).median_ms
                except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result
                    row["status"] = "failed"
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                shown = "-" if row["time_ms"] is None else f"{row['time_ms']:.4f} ms"
                log(f"{study.name:24s} {c:4d}x{hw:<3d} {study.attr}={value!s:6s} {row['status']:6s} {shown}")
    return rows


def summary_markdown(rows: Sequence[dict]) -> str:
    """Per study and shape: the default's time, the fastest value and its speedup over the default."""
    lines = ["| study | shape | default | default ms | fastest | fastest ms | speedup | wrong / failed |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["study"], tuple(r["shape"])) for r in rows}, key=lambda k: (k[0], -k[1][2]))
    for study, shape in keys:
        sel = [r for r in rows if r["study"] == study and tuple(r["shape"]) == shape]
        base = next((r for r in sel if r["default"]), None)
        timed = [r for r in sel if r.get("time_ms")]
        best = min(timed, key=lambda r: r["time_ms"]) if timed else None
        bad = ", ".join(f"{r['value']}: {r['status']}" for r in sel if r.get("status") in ("wrong", "failed"))
        fmt = lambda r: "-" if r is None or r.get("time_ms") is None else f"{r['time_ms']:.4f}"  # noqa: E731
        speed = (f"{base['time_ms'] / best['time_ms']:.2f}x" if base and best and base.get("time_ms") else "-")
        lines.append(f"| {study} | {'x'.join(map(str, shape))} | {base['value'] if base else '-'} | {fmt(base)} | "
                     f"{best['value'] if best else '-'} | {fmt(best)} | {speed} | {bad or '-'} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for sweep.json and sweep.md")
    ap.add_argument("--studies", nargs="+", choices=[s.name for s in STUDIES], help="default: all")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new measurements after this")
    ap.add_argument("--check-only", action="store_true",
                    help="run every variant once at tiny shapes and compare; no timing (works under the interpreter)")
    args = ap.parse_args(argv)
    studies = [s for s in STUDIES if not args.studies or s.name in args.studies]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not args.check_only and not cuda:
        ap.error("timing needs a CUDA GPU; --check-only runs anywhere Triton runs")
    dtype = getattr(torch, args.dtype)
    if args.check_only:
        rows = run_studies(studies, device, batch=2, dtype=torch.float32, stages=TINY_STAGES, timed=False,
                           tol=1e-4)
    else:
        rows = run_studies(studies, device, batch=args.batch, dtype=dtype, stages=STAGES, timed=True,
                           budget_s=args.budget_s)
    md = summary_markdown(rows)
    print(md)
    if args.out:
        from .env import environment

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps({"meta": environment(), "rows": rows}, indent=1))
        (args.out / "sweep.md").write_text(f"# Launcher constants sweep\n\n{md}\n")
    bad = [r for r in rows if r.get("status") in ("wrong", "failed")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
