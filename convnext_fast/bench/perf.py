"""The README's performance section, generated from the latest committed results.json.

``scripts/update_readme_perf.py`` calls :func:`main`; the logic lives here so that
``tests/test_bench_report.py`` can check it on fabricated results in a temporary folder.

Results live in ``benchmarks/results/<device-slug>/<date>/results.json``. "Latest" is the newest
``meta.date``; GPU results are preferred over CPU ones, because the speed targets are set for a GPU.
The section says what our providers measured against eager PyTorch and ``torch.compile`` on that
machine; from GPU results also the speed targets' verdicts, from CPU results one line saying that
they need a GPU.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from . import aggregate

__all__ = ["find_results", "latest_results", "render_perf_md", "main"]


def find_results(root: Path) -> list[Path]:
    """Every ``<root>/<device>/<date>/results.json``."""
    return sorted(Path(root).glob("*/*/results.json"))


def latest_results(root: Path, prefer_device_type: Optional[str] = "cuda") -> Optional[Path]:
    """The newest results file by ``meta.date`` (ties: path), preferring ``prefer_device_type``."""
    found = []
    for path in find_results(root):
        try:
            meta = json.loads(path.read_text()).get("meta", {})
        except (OSError, ValueError):
            continue
        found.append((meta.get("device_type") == prefer_device_type, str(meta.get("date", "")), str(path), path))
    if not found:
        return None
    return max(found)[3]


def _model_rows(rows: Sequence[dict]) -> list[list]:
    out = []
    for r in rows:
        if r["op"] == "model" and r.get("status") == "ok" and r.get("group", "standard") in ("standard", "latency") \
                and int(r.get("k", 7)) == 7:
            out.append([r["mode"], r["shape"][0], r["provider"], f"{r['img_per_s']:.0f}",
                        aggregate.fmt(r.get("peak_mem_mb")), aggregate.fmt(r.get("speedup_vs_eager"), "x"),
                        aggregate.fmt(r.get("speedup_vs_compile"), "x")])
    return out


def render_perf_md(data: dict, source: str = "") -> str:
    """Markdown: where the numbers come from, what was measured there (ours vs eager PyTorch and
    torch.compile), the speed targets (GPU results) and convnext_tiny img/s."""
    m = data.get("meta", {})
    rows = data.get("results", [])
    ceil = data.get("ceilings", {})
    device_type = m.get("device_type", aggregate.TARGET_DEVICE)
    lines = [
        "## Performance",
        "",
        f"Measured on **{m.get('device_name', '?')}** ({device_type}) on {str(m.get('date', '?'))[:10]} "
        f"(torch {m.get('torch', '?')}, triton {m.get('triton', '?')}, CUDA {m.get('cuda', '?')}, "
        f"timm {m.get('timm', '?')}, commit {m.get('git_commit', '?')})"
        + (f", from `{source}`" if source else "") + ".",
    ]
    if ceil.get("copy_gbps") and device_type == aggregate.TARGET_DEVICE:
        mm = ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in (ceil.get("matmul_tflops") or {}).items())
        lines.append(f"Measured ceilings: copy {ceil['copy_gbps']:.0f} GB/s (read + write), matmul {mm}.")
    if not m.get("complete", True) or any(r.get("status") == "budget" for r in rows):
        lines.append("Some cases were not measured in this run (time budget); see the full report.")
    # the kernel-size sweep stays in the full report: the README keeps to the standard set (and latency)
    summary = [s for s in aggregate.measured_summary(rows) if s["group"] != "sweep"]
    lines += ["", "Ours against eager PyTorch (the way timm runs ConvNeXt: channels_last) and `torch.compile` of "
              "the same code: geometric mean over the cases measured, with the range.", "",
              aggregate.summary_markdown(summary), ""]
    if device_type == aggregate.TARGET_DEVICE:
        targets = aggregate.evaluate_targets(rows)
        n_met = sum(t["verdict"] == "met" for t in targets)
        lines += [
            f"Speed targets (GPU, bf16): **{n_met} of {len(targets)} met**. Ops and block: geometric mean over "
            "the four ConvNeXt-T stages at batch 128, our fastest backend per stage; model: batch 256, 224x224, "
            "channels_last + autocast, against timm.",
            "",
            aggregate.targets_markdown(targets),
            "",
        ]
    else:
        lines += [aggregate.targets_section(rows, device_type), ""]
    model = _model_rows(rows)
    if model:
        lines += ["convnext_tiny (`*_optimized`: `optimize_for_inference(model)`; `resnet50*`: torchvision's resnet50, "
                  "an anchor, not a target):", "",
                  aggregate.markdown_table(["mode", "batch", "provider", "img/s", "peak MiB", "x eager", "x compile"],
                                           model), ""]
    lines.append("Reproduce: `python -m convnext_fast.bench --out DIR` (see `benchmarks/results/README.md`).")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Write benchmarks/results/PERF.md from the latest results.json")
    ap.add_argument("--results-root", default="benchmarks/results")
    ap.add_argument("--out", default="", help="default: <results-root>/PERF.md")
    ap.add_argument("--results", default="", help="use this results.json instead of the latest")
    ap.add_argument("--any-device", action="store_true", help="do not prefer GPU results")
    ap.add_argument("--readme", default="",
                    help="also replace the text between the PERF markers of this file (e.g. README.md)")
    args = ap.parse_args(argv)
    root = Path(args.results_root)
    path = Path(args.results) if args.results else latest_results(root, None if args.any_device else "cuda")
    out = Path(args.out) if args.out else root / "PERF.md"
    if path is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("## Performance\n\nNo benchmark results committed yet: nothing has been measured, and every "
                       "speed target is **not measured**.\n")
        print(f"no results under {root}; wrote a placeholder {out}")
        return 0
    data = json.loads(path.read_text())
    try:
        source = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        source = str(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_perf_md(data, source)
    out.write_text(text)
    print(f"wrote {out} from {path}")
    if args.readme and Path(args.readme).exists():
        readme = Path(args.readme)
        readme.write_text(splice_between_markers(readme.read_text(), text))
        print(f"updated the performance section of {readme}")
    return 0


PERF_BEGIN = "<!-- PERF:BEGIN (generated by scripts/update_readme_perf.py; do not edit by hand) -->"
PERF_END = "<!-- PERF:END -->"


def splice_between_markers(document: str, section: str) -> str:
    """Replace what lies between the PERF markers of ``document`` with ``section``.

    Raises ValueError when the markers are missing, so a README that lost them is noticed.
    """
    begin, end = document.find(PERF_BEGIN), document.find(PERF_END)
    if begin < 0 or end < begin:
        raise ValueError("the README has no PERF:BEGIN / PERF:END markers")
    # The generated section's own "## Performance" heading is dropped: the README has its own.
    body = section.split("\n", 1)[1] if section.startswith("## ") else section
    return document[:begin + len(PERF_BEGIN)] + "\n" + body.strip("\n") + "\n" + document[end:]
