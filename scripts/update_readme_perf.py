#!/usr/bin/env python
"""Write benchmarks/results/PERF.md (the README's performance section) from the latest results.

    python scripts/update_readme_perf.py [--results-root benchmarks/results] [--out PATH] [--results FILE]

and replaces the README's performance section (between its PERF markers) with the same text.

Picks the newest benchmarks/results/<device>/<date>/results.json (GPU results first), and writes the
device, date, versions, what our providers measured there against eager PyTorch and torch.compile,
and (from GPU results) each speed target, named by what it measures (e.g. "convnext_tiny inference
(batch 256) vs timm torch.compile"), as met / not met / not measured. Logic and tests:
convnext_fast/bench/perf.py, tests/test_bench_report.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from convnext_fast.bench.perf import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["--readme", "README.md", *sys.argv[1:]]))
