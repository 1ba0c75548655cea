"""The paper's road from ResNet-50 to ConvNeXt-T in throughput: every step of Figure 2
(``convnext_fast.roadmap``) timed in inference and in a training step, per provider.

Providers (``PROVIDERS``):

* ``eager``: the model under the ``reference`` backend: plain PyTorch, channels_last;
* ``ours``: the same model under ``auto`` (the package's kernels where they run);
* ``ours_optimized``: :func:`convnext_fast.optimize_for_inference` (inference; the steps that
  have ConvNeXt blocks with LayerNorm, i.e. ``layer_norm`` and ``separate_downsampling``);
* ``eager_compile`` / ``ours_compile``: ``torch.compile`` of the two, for ResNet-50, the kernel-7
  step and the final step only (``COMPILE_STEPS``: a compile takes a minute or more on 2 cores).

CPU: float32, inference at batch 8, a training step (forward, cross-entropy, backward, SGD step)
at batch 4. GPU: bfloat16 weights and inputs at batch 256 for both. Work is ordered by importance
(eager and ours for every step, then the optimized models, then the compiled ones) and a
measurement whose estimated cost would pass ``budget_s`` is skipped and marked ``budget``.

``python benchmarks/bench_roadmap.py`` runs it alone; ``python -m convnext_fast.bench --roadmap``
adds it to the main report. Outputs: ``roadmap.json``, ``roadmap.md`` (the table) and
``roadmap.png`` (the paper's Figure 2 layout: steps down the side, throughput bars per provider,
the multiply-adds beside them).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import roadmap as R
from ..backend import use_backend
from .env import bench_device, environment, write_json
from .timing import measure

__all__ = ["COMPILE_STEPS", "PROVIDERS", "merge", "render_markdown", "run", "write_outputs", "write_plot"]

PROVIDERS = ("eager", "ours", "ours_optimized", "eager_compile", "ours_compile")
COMPILE_STEPS = ("resnet50", "k7", "separate_downsampling")
_BACKEND = {"eager": "reference", "eager_compile": "reference", "ours": "auto", "ours_optimized": "auto",
            "ours_compile": "auto"}
COLORS = {"eager": "#8c8c8c", "eager_compile": "#4d4d4d", "ours": "tab:blue", "ours_optimized": "tab:green",
          "ours_compile": "tab:orange"}


def _applies(provider: str, step: str, model: torch.nn.Module, mode: str) -> str:
    """'' when ``provider`` is measured for ``step`` in ``mode``, else why not."""
    if provider.endswith("compile") and step not in COMPILE_STEPS:
        return "compiled only for " + ", ".join(COMPILE_STEPS)
    if provider == "ours_optimized":
        if mode == "train":
            return "inference only"
        from ..layers import LayerNorm2d
        from ..models import ConvNeXtBlock
        if not any(isinstance(m, ConvNeXtBlock) and isinstance(m.norm, LayerNorm2d) for m in model.modules()):
            return "no ConvNeXt block with LayerNorm to fold"
    return ""


def _callable(provider: str, model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor):
    """The function to time for one (provider, mode): a forward, or a whole training step."""
    backend = _BACKEND[provider]
    if mode == "infer":
        model = model.eval()
        if provider == "ours_optimized":
            from ..inference import optimize_for_inference
            with use_backend(backend):
                model = optimize_for_inference(model)
        net = torch.compile(model) if provider.endswith("compile") else model

        def fn():
            with use_backend(backend), torch.inference_mode():
                return net(x)
    else:
        model = model.train()
        net = torch.compile(model) if provider.endswith("compile") else model
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def fn():
            with use_backend(backend):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(x).float(), y)
                loss.backward()
                opt.step()
            return loss
    return fn


def run(budget_s: float = 600.0, device: Optional[torch.device] = None, batch: Optional[int] = None,
        train_batch: Optional[int] = None, steps: Optional[Sequence[str]] = None,
        providers: Sequence[str] = PROVIDERS, img_size: int = 224, stem_stride: Optional[int] = None,
        warmup_ms: float = 25.0, rep_ms: float = 100.0, modes: Sequence[str] = ("infer", "train"),
        verbose: bool = False) -> dict:
    """Time every step and provider; returns the ``roadmap.json`` structure.

    Args:
        budget_s: wall-time budget of the whole run (0: none).
        device: default: a GPU when there is one, else the CPU.
        batch, train_batch: inference / training batch (default: 256 / 256 on a GPU, 8 / 4 on CPU).
        steps: step names (default: all of Figure 2).
        providers: subset of :data:`PROVIDERS`.
        img_size, stem_stride: input side and the stem's stride (``convnext_fast.roadmap``).
        modes: ``"infer"`` and / or ``"train"``.
    """
    t0 = time.perf_counter()
    device = device or bench_device()
    gpu = device.type == "cuda"
    batch = batch or (256 if gpu else 8)
    train_batch = train_batch or (256 if gpu else 4)
    dtype = torch.bfloat16 if gpu else torch.float32
    chosen = [s for s in R.PAPER_STEPS if steps is None or s.name in steps]
    rows: list = []
    macs = {s.name: R.count_macs(s.build, img_size, 1000, stem_stride) / 1e9 for s in chosen}
    # Most important first: eager and ours for every step in inference, then the folded models,
    # then the training step, then the compiled models. Within a phase a step's providers are
    # timed back to back, so a change in the machine's load falls on all of them alike.
    phases = [(("eager", "ours"), "infer"), (("ours_optimized",), "infer"), (("eager", "ours"), "train"),
              (("eager_compile", "ours_compile"), "infer"), (("eager_compile", "ours_compile"), "train")]
    plan = [(p, m, s) for ps, m in phases for s in chosen for p in ps if p in providers and m in modes]
    seen_cost: dict = {}
    for provider, mode, s in plan:
        row = {"step": s.name, "title": s.title, "provider": provider, "mode": mode,
               "batch": batch if mode == "infer" else train_batch, "dtype": str(dtype).replace("torch.", "")}
        if provider.endswith("compile") and s.name not in COMPILE_STEPS:
            continue
        # the last measurement of this kind; a first compile is assumed to take 90 s
        est = seen_cost.get((provider, mode), 90.0 if provider.endswith("compile") else 0.0)
        if budget_s and time.perf_counter() - t0 + est > budget_s:
            rows.append({**row, "status": "budget", "reason": f"time budget of {budget_s:.0f} s"})
            continue
        torch.manual_seed(0)
        model = s.build(num_classes=1000, img_size=img_size, stem_stride=stem_stride)
        model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        if _applies(provider, s.name, model, mode):
            continue
        n = row["batch"]
        x = torch.randn(n, 3, img_size, img_size, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (n,), device=device)
        start = time.perf_counter()
        try:
            fn = _callable(provider, copy.deepcopy(model) if provider == "ours_optimized" else model, mode, x, y)
            if provider.endswith("compile"):
                fn()  # compilation (measure's first call warms up the others)
            t = measure(fn, device, warmup_ms=warmup_ms, rep_ms=rep_ms, min_reps=3,
                        max_total_s=max(5.0, 0.02 * budget_s) if budget_s else None)
            row.update(status="ok", time_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
                       img_per_s=n / (t.median_ms / 1e3))
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}"[:300])
            if verbose:
                traceback.print_exc()
        cost = time.perf_counter() - start
        seen_cost[(provider, mode)] = cost
        row["setup_s"] = round(cost, 1)
        rows.append(row)
        if verbose:
            print(f"{s.name:24s} {provider:15s} {mode:5s} {row.get('img_per_s', 0):8.1f} img/s "
                  f"{row['status']} ({cost:.0f} s)", flush=True)
        del model
    env = environment()
    meta = {**env, "device_type": device.type, "batch": batch, "train_batch": train_batch, "img_size": img_size,
            "dtype": str(dtype).replace("torch.", ""), "budget_s": budget_s,
            "elapsed_s": round(time.perf_counter() - t0, 1),
            "date": env.get("date") or datetime.date.today().isoformat()}
    steps_meta = [{"name": s.name, "title": s.title, "paper_top1": s.paper_top1, "paper_gmacs": s.paper_gmacs,
                   "gmacs": round(macs[s.name], 3)} for s in chosen]
    return {"meta": meta, "steps": steps_meta, "rows": rows}


def merge(datas: Sequence[dict]) -> dict:
    """Several runs of the same steps as one: for each (step, provider, mode) the run that measured
    it fastest (on a shared machine, the least disturbed one); ``img_per_s_runs`` keeps every run's
    value and ``runs`` how many measured it. Meta data are the first run's, with every run's
    elapsed time and date."""
    if not datas:
        raise ValueError("merge needs at least one run")
    best: dict = {}
    for data in datas:
        for r in data["rows"]:
            key = (r["step"], r["provider"], r["mode"])
            kept = best.get(key)
            seen = (kept or {}).get("img_per_s_runs", [])
            if r["status"] == "ok":
                seen = seen + [round(r["img_per_s"], 3)]
            if kept is None or (r["status"] == "ok" and (kept["status"] != "ok" or r["img_per_s"] > kept["img_per_s"])):
                kept = dict(r)
            kept["img_per_s_runs"] = seen
            kept["runs"] = len(seen)
            best[key] = kept
    order = {s["name"]: i for i, s in enumerate(datas[0]["steps"])}
    rows = sorted(best.values(), key=lambda r: (r["mode"], PROVIDERS.index(r["provider"]), order.get(r["step"], 99)))
    meta = dict(datas[0]["meta"])
    meta["merged_runs"] = [{"date": d["meta"].get("date"), "elapsed_s": d["meta"].get("elapsed_s"),
                            "budget_s": d["meta"].get("budget_s"), "git_commit": d["meta"].get("git_commit")}
                           for d in datas]
    meta["elapsed_s"] = round(sum(d["meta"].get("elapsed_s") or 0 for d in datas), 1)
    return {"meta": meta, "steps": datas[0]["steps"], "rows": rows}


def _table(data: dict, mode: str) -> tuple[list, list]:
    rows = [r for r in data["rows"] if r["mode"] == mode]
    if not rows:
        return [], []
    provs = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    ok = {(r["step"], r["provider"]): r for r in rows}
    base = {p: ok.get((data["steps"][0]["name"], p)) for p in provs}
    header = ["step", "GMACs", "paper GMACs", "paper top-1"] + [f"{p} img/s" for p in provs] + \
             [f"{p} / ResNet-50" for p in ("eager", "ours") if p in provs] + ["ours / eager"]
    body = []
    for s in data["steps"]:
        cells = [s["title"], f"{s['gmacs']:.2f}", f"{s['paper_gmacs']:.1f}", f"{s['paper_top1']:.1f}"]
        ips = {}
        for p in provs:
            r = ok.get((s["name"], p))
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                ips[p] = r["img_per_s"]
                cells.append(f"{r['img_per_s']:.1f}")
            else:
                cells.append(r["status"])
        for p in ("eager", "ours"):
            if p in provs:
                b = base[p]
                cells.append(f"{ips[p] / b['img_per_s']:.2f}" if p in ips and b and b.get("status") == "ok" else "-")
        cells.append(f"{ips['ours'] / ips['eager']:.2f}x" if "ours" in ips and "eager" in ips else "-")
        body.append(cells)
    return header, body


def render_markdown(data: dict, heading: str = "#") -> str:
    """The roadmap section: one table for inference, one for the training step."""
    m = data["meta"]
    out = [f"{heading} The road from ResNet-50 to ConvNeXt-T in throughput", "",
           f"{m.get('device_name', m.get('device_type'))}, {m.get('dtype')}, {m.get('img_size')}x{m.get('img_size')}, "
           f"1000 classes; torch {m.get('torch')}, convnext_fast commit {m.get('git_commit')}; "
           f"{m.get('elapsed_s')} s (budget {m.get('budget_s')} s).", "",
           "Steps of the paper's Figure 2 (`convnext_fast.roadmap`); GMACs counted on meta tensors, paper columns "
           "from the paper. *eager* = the `reference` backend (plain PyTorch, channels_last); *ours* = `auto`; "
           "*ours_optimized* = `optimize_for_inference`; *_compile* = `torch.compile` (default mode), for "
           "ResNet-50, kernel 7 and the final step only. Throughput = batch / median time "
           "(`convnext_fast.bench.timing.measure`). `budget` = skipped by the time budget.", ""]
    if m.get("merged_runs"):
        out += [f"Merged from {len(m['merged_runs'])} runs: each cell is the fastest run's median (the least "
                "disturbed one on a shared machine); `img_per_s_runs` in the JSON has every run's value.", ""]
    for mode, what in (("infer", f"Inference, batch {m.get('batch')}"),
                       ("train", "Training step (forward, cross-entropy, backward, SGD), "
                                 f"batch {m.get('train_batch')}")):
        header, body = _table(data, mode)
        if not body:
            continue
        out += [f"{heading}# {what}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(c for c in row) + " |" for row in body]
        out.append("")
    failed = [r for r in data["rows"] if r["status"] == "failed"]
    if failed:
        out += ["Failed: " + "; ".join(f"{r['step']} {r['provider']} {r['mode']}: {r['reason']}" for r in failed), ""]
    return "\n".join(out)


def write_plot(data: dict, path: Path) -> Path:
    """The paper's Figure 2 layout: steps top to bottom, inference and training throughput bars per
    provider, the GMACs as a line on a second axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = data["steps"]
    n = len(steps)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.42 * n + 2.2), sharey=True)
    for ax, mode, title in ((axes[0], "infer", f"inference, batch {data['meta']['batch']}"),
                            (axes[1], "train", f"training step, batch {data['meta']['train_batch']}")):
        rows = {(r["step"], r["provider"]): r for r in data["rows"] if r["mode"] == mode and r["status"] == "ok"}
        provs = [p for p in PROVIDERS if any(k[1] == p for k in rows)]
        h = 0.8 / max(len(provs), 1)
        for j, p in enumerate(provs):
            ys = [i - 0.4 + h * (j + 0.5) for i in range(n)]
            vals = [rows[(s["name"], p)]["img_per_s"] if (s["name"], p) in rows else 0.0 for s in steps]
            ax.barh(ys, vals, height=h, color=COLORS[p], label=p)
        ax.set_xlabel("images / s")
        ax.set_title(title if rows else f"{title}: not measured", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        twin = ax.twiny()
        twin.plot([s["gmacs"] for s in steps], range(n), "k.-", lw=1, label="GMACs")
        twin.set_xlabel("GMACs (224x224)")
        twin.set_xlim(0, max(s["gmacs"] for s in steps) * 1.15)
    # One legend for both panels, below them: inside a panel it would cover the last steps' bars.
    handles: dict = {}
    for ax in fig.axes:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hnd)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=9,
               frameon=False)
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels([f"{s['title']}  ({s['paper_top1']:.1f}%)" for s in steps], fontsize=9)
    axes[0].invert_yaxis()
    m = data["meta"]
    fig.suptitle(f"ResNet-50 -> ConvNeXt-T (paper's Figure 2, ImageNet top-1 in brackets) on "
                 f"{m.get('device_name', m.get('device_type'))}, {m.get('dtype')}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(data: dict, out_dir: Path) -> list:
    """roadmap.json, roadmap.md and (with matplotlib) roadmap.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(str(out_dir / "roadmap.json"), data)
    (out_dir / "roadmap.md").write_text(render_markdown(data))
    written = [out_dir / "roadmap.json", out_dir / "roadmap.md"]
    try:
        written.append(write_plot(data, out_dir / "roadmap.png"))
    except ImportError:
        print("matplotlib is not installed: no roadmap.png")
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="roadmap_results", help="folder for roadmap.json / .md / .png")
    ap.add_argument("--budget-s", type=float, default=600.0, help="wall-time budget (0: none)")
    ap.add_argument("--batch", type=int, default=0, help="inference batch (default 8 on CPU, 256 on a GPU)")
    ap.add_argument("--train-batch", type=int, default=0, help="training batch (default 4 on CPU, 256 on a GPU)")
    ap.add_argument("--steps", default="", help="comma list of step names (default: all)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--modes", default="infer,train", help="infer and / or train")
    ap.add_argument("--from-json", default="", nargs="+",
                    help="re-render the table and plot from roadmap.json files (several: merged, the fastest "
                         "measurement of each row kept)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if a.from_json:
        import json
        data = merge([json.loads(Path(p).read_text()) for p in a.from_json])
    else:
        data = run(a.budget_s, batch=a.batch or None, train_batch=a.train_batch or None,
                   steps=a.steps.split(",") if a.steps else None, providers=a.providers.split(","),
                   modes=a.modes.split(","), verbose=True)
    written = write_outputs(data, Path(a.out))
    print(render_markdown(data))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
