"""Pure logic of the benchmark report: roofline arithmetic, speedups, target verdicts, PERF.md.

Every number here is FABRICATED test data (written into a temporary folder), never a measurement;
no timing is asserted.
"""
import itertools
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convnext_fast.bench import aggregate, perf, roofline
from convnext_fast.bench.cases import STAGES, Case, standard_cases
from convnext_fast.bench.env import device_slug
from convnext_fast.bench.report import final_summary, render_markdown

REPO = Path(__file__).resolve().parents[1]


def test_dwconv_bytes_and_flops_by_hand():
    # (2, 4, 8, 8) bf16, K=3: x and y 512 elements each, w 4*9, b 4 -> (1024 + 40) * 2 bytes
    w = roofline.dwconv_work((2, 4, 8, 8), 3, "bfloat16", "fwd")
    assert w.bytes == (2 * 512 + 4 * 9 + 4) * 2
    assert w.flops == 2 * 512 * 9
    # backward adds gy and x read, gx written, w read, gw + gb written
    wb = roofline.dwconv_work((2, 4, 8, 8), 3, "float32", "fwdbwd")
    assert wb.bytes == (2 * 512 + 40) * 4 + (3 * 512 + 2 * 40) * 4
    assert wb.flops == 3 * 2 * 512 * 9


def test_layer_norm_and_fused_bytes():
    assert roofline.layer_norm_work((1, 8, 2, 2), "float16", "fwd").bytes == (2 * 32 + 16) * 2
    # the fused op never counts its intermediate: same activation bytes as the conv alone
    fused = roofline.dwconv_ln_work((1, 8, 2, 2), 7, "float16", "fwd")
    assert fused.bytes == (2 * 32 + 8 * 49 + 3 * 8) * 2


def test_convnext_tiny_flops_match_published_gmacs():
    # timm/fvcore: convnext_tiny is 4.47 GMACs at 224 -> about 8.9 GFLOP
    assert 8.7e9 < roofline.convnext_flops_per_image() < 9.1e9


def test_roofline_percentages():
    ceil = roofline.Ceilings(copy_gbps=1000.0, matmul_tflops={"bfloat16": 100.0})
    work = roofline.Work(bytes=10**9, flops=10**9)  # 1 ms of memory, 0.01 ms of math
    r = roofline.roofline(work, 2.0, ceil, "bfloat16")
    assert r["gbps"] == pytest.approx(500.0)
    assert r["floor_ms"] == pytest.approx(1.0)
    assert r["pct_roofline"] == pytest.approx(50.0)
    assert r["bound"] == "memory"
    compute = roofline.roofline(roofline.Work(bytes=1, flops=10**12), 20.0, ceil, "float16")
    assert compute["bound"] == "tensor cores"  # fp16 falls back to the bf16 rate: 10 ms floor
    assert compute["pct_roofline"] == pytest.approx(50.0)
    assert roofline.roofline(work, 2.0, None, "bfloat16")["pct_roofline"] is None


def test_fp32_fma_floor_of_a_bf16_7x7_depthwise_conv():
    # ConvNeXt-T stage 1 at batch 128, bf16, with H100-like ceilings (3000 GB/s copy, 738 TFLOP/s
    # bf16 matmul, 51.7 TFLOP/s fp32 FMA): 98 flops per output at the fp32 rate outlast the bytes.
    ceil = roofline.Ceilings(copy_gbps=3000.0, matmul_tflops={"bfloat16": 738.0}, fp32_fma_tflops=51.7)
    act = 128 * 96 * 56 * 56
    w = roofline.dwconv_work((128, 96, 56, 56), 7, "bfloat16", "fwd")
    assert w.fp32_flops == w.flops == 98 * act
    mem_ms, fma_ms = w.bytes / 3e12 * 1e3, 98 * act / 51.7e12 * 1e3
    r = roofline.roofline(w, 0.2, ceil, "bfloat16")
    assert r["bound"] == "fp32 FMA"
    assert r["floor_ms"] == pytest.approx(fma_ms)
    assert r["pct_bandwidth"] == pytest.approx(100 * mem_ms / 0.2)
    assert r["pct_bandwidth_max"] == pytest.approx(100 * mem_ms / fma_ms)  # ~70%: 85% is out of reach
    assert 69 < r["pct_bandwidth_max"] < 72
    # without a separate fp32 FMA ceiling the float32 matmul rate stands in for it
    legacy = roofline.Ceilings(copy_gbps=3000.0, matmul_tflops={"bfloat16": 738.0, "float32": 51.7})
    assert roofline.roofline(w, 0.2, legacy, "bfloat16")["floor_ms"] == pytest.approx(fma_ms)


def test_block_flops_split_between_tensor_cores_and_fp32():
    shape, c = (2, 8, 4, 4), 8
    rows = 2 * 4 * 4
    mlp = 2 * rows * c * 4 * c * 2
    fwd = roofline.block_work(shape, 7, "bfloat16", "fwd")
    assert fwd.flops - fwd.fp32_flops == mlp
    train = roofline.block_work(shape, 7, "bfloat16", "fwdbwd")
    assert train.flops - train.fp32_flops == 3 * mlp
    model = roofline.model_work(2, "bfloat16", "infer")
    assert model.fp32_flops == 2 * roofline.convnext_dwconv_flops_per_image()
    # 18 blocks' 7x7 taps: 2 * 49 * (3*56*56*96 + 3*28*28*192 + 9*14*14*384 + 3*7*7*768) per image
    assert roofline.convnext_dwconv_flops_per_image() == 98 * (3 * 56 * 56 * 96 + 3 * 28 * 28 * 192
                                                               + 9 * 14 * 14 * 384 + 3 * 7 * 7 * 768)


def _row(op, mode, shape, provider, t, **kw):
    r = {"op": op, "mode": mode, "shape": list(shape), "dtype": "bfloat16", "k": 7, "group": "standard",
         "provider": provider, "status": "ok", "time_ms": t}
    r.update(kw)
    return r


def _fake_rows():
    """Fabricated timings: ours 2x eager on every op, block 1.6x eager and 1.1x compile."""
    rows = []
    for c, h, w in STAGES:
        s = (128, c, h, w)
        rows += [_row("dwconv", "fwd", s, "torch", 1.0), _row("dwconv", "fwd", s, "triton", 0.5, pct_bandwidth=90.0),
                 _row("dwconv", "fwd", s, "cuda", 0.6, pct_bandwidth=80.0),
                 _row("dwconv_ln", "fwd", s, "torch", 2.0), _row("dwconv_ln", "fwd", s, "triton", 1.0),
                 _row("block", "fwdbwd", s, "torch", 1.6), _row("block", "fwdbwd", s, "torch_compile", 1.1),
                 _row("block", "fwdbwd", s, "triton", 1.0)]
    m = (256, 3, 224, 224)
    rows += [_row("model", "infer", m, "torch", 40.0, img_per_s=6400.0),
             _row("model", "train", m, "torch", 100.0, img_per_s=2560.0, peak_mem_mb=16000.0),
             _row("model", "train", m, "triton", 70.0, img_per_s=3657.0, peak_mem_mb=15000.0),
             {"op": "model", "mode": "infer", "shape": list(m), "dtype": "bfloat16", "k": 7, "group": "standard",
              "provider": "triton", "status": "budget", "reason": "time budget"}]
    return rows


def test_speedups_and_best_ours():
    rows = aggregate.add_speedups(_fake_rows())
    key = ("dwconv", "fwd", (128, 96, 56, 56), "bfloat16", 7)
    best = aggregate.best_ours(rows, key)
    assert best["provider"] == "triton" and best["speedup_vs_eager"] == pytest.approx(2.0)
    assert best["speedup_vs_compile"] is None  # no compile baseline for this case


def test_target_verdicts():
    t = {x["id"]: x for x in aggregate.evaluate_targets(_fake_rows())}
    assert t["dwconv_roofline"]["verdict"] == "met" and t["dwconv_roofline"]["value"] == pytest.approx(90.0)
    assert t["dwconv_ln_vs_eager"]["verdict"] == "met"
    assert t["block_vs_eager"]["verdict"] == "met"
    assert t["block_vs_compile"]["verdict"] == "not met"  # 1.1x < 1.2x
    assert t["model_infer_vs_eager"]["verdict"] == "not measured"  # ours was cut by the budget
    assert t["model_infer_vs_compile"]["verdict"] == "not measured"
    assert t["model_train_vs_eager"]["verdict"] == "met"  # 100 / 70 = 1.43x
    assert t["model_train_peak_mem"]["verdict"] == "met"  # 15000 / 16000 <= 1


def test_bandwidth_target_detail_says_when_arithmetic_caps_it():
    rows = _fake_rows()
    for r in rows:
        if r["op"] == "dwconv" and r["provider"] == "triton":
            r.update(pct_bandwidth_max=70.4, bound="fp32 FMA")
    t = {x["id"]: x for x in aggregate.evaluate_targets(rows)}["dwconv_roofline"]
    assert "128x96x56x56: 90.0% (triton, at most 70.4% (fp32 FMA bound))" in t["detail"]
    plain = {x["id"]: x for x in aggregate.evaluate_targets(_fake_rows())}["dwconv_roofline"]
    assert "at most" not in plain["detail"]


def test_parity_failure_fails_the_target():
    rows = _fake_rows()
    for r in rows:
        if r["op"] == "dwconv_ln" and r["provider"] == "triton":
            r["parity"] = "failed"
    t = {x["id"]: x for x in aggregate.evaluate_targets(rows)}
    assert t["dwconv_ln_vs_eager"]["verdict"].startswith("not met")


def _fake_results(device_type, date, rows):
    return {"schema": 1, "meta": {"device_type": device_type, "device_name": f"FAKE {device_type} device",
                                  "date": date, "torch": "0.0-fake", "triton": "0.0-fake", "cuda": "n/a",
                                  "complete": True},
            "ceilings": {"copy_gbps": 1000.0, "matmul_tflops": {"bfloat16": 100.0}, "notes": []},
            "parity": [], "results": rows, "notes": []}


def test_latest_results_prefers_gpu_then_newest(tmp_path):
    files = {("gpu-a", "2026-01-01"): ("cuda", "2026-01-01T00:00:00Z"),
             ("gpu-a", "2026-02-01"): ("cuda", "2026-02-01T00:00:00Z"),
             ("cpu-b", "2026-03-01"): ("cpu", "2026-03-01T00:00:00Z")}
    for (dev, day), (dt, date) in files.items():
        p = tmp_path / dev / day
        p.mkdir(parents=True)
        (p / "results.json").write_text(json.dumps(_fake_results(dt, date, [])))
    assert perf.latest_results(tmp_path).parent.name == "2026-02-01"
    assert perf.latest_results(tmp_path, None).parent.name == "2026-03-01"
    assert perf.latest_results(tmp_path / "missing") is None


def test_perf_md_from_fabricated_results(tmp_path):
    d = tmp_path / "fake-gpu" / "2026-01-01"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(_fake_results("cuda", "2026-01-01T00:00:00Z", _fake_rows())))
    out = tmp_path / "PERF.md"
    assert perf.main(["--results-root", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "FAKE cuda device" in text and "2026-01-01" in text
    assert "**met**" in text and "**not met**" in text and "**not measured**" in text
    assert "5 of 8 met" in text


def test_perf_md_placeholder_without_results(tmp_path):
    out = tmp_path / "PERF.md"
    perf.main(["--results-root", str(tmp_path), "--out", str(out)])
    assert "not measured" in out.read_text()


def test_report_markdown_renders_fabricated_results():
    md = render_markdown(_fake_results("cuda", "2026-01-01T00:00:00Z", _fake_rows()))
    assert "## Speed targets" in md and "| dwconv | fwd | 128x96x56x56 | bfloat16 | 7 | triton |" in md
    assert "2.00x" in md  # speedup over eager of the fabricated triton dwconv


def test_report_flags_host_bound_calls():
    rows = [_row("layer_norm", "fwd", (128, 768, 7, 7), "torch", 0.02, host_ms=0.005),
            _row("layer_norm", "fwd", (128, 768, 7, 7), "triton", 0.10, host_ms=0.09),
            _row("layer_norm", "fwd", (128, 96, 56, 56), "triton", 0.13, host_ms=0.09)]
    md = render_markdown(_fake_results("cuda", "2026-01-01T00:00:00Z", rows))
    lines = [ln for ln in md.splitlines() if ln.startswith("| layer_norm | fwd |")]
    assert len(lines) == 3
    assert "host-bound" not in lines[0] and "| 0.005 |" in lines[0]
    assert lines[1].rstrip().endswith("host-bound |")  # 0.09 >= 80% of 0.10
    assert "host-bound" not in lines[2]  # 0.09 < 80% of 0.13


def test_report_names_an_arithmetic_floor_and_the_fp32_ceiling():
    rows = [_row("dwconv", "fwd", (128, 96, 56, 56), "triton", 0.2, bound="fp32 FMA"),
            _row("layer_norm", "fwd", (128, 96, 56, 56), "triton", 0.1, bound="memory")]
    data = _fake_results("cuda", "2026-01-01T00:00:00Z", rows)
    data["ceilings"]["fp32_fma_tflops"] = 51.7
    md = render_markdown(data)
    assert "fp32 FMA 51.7 TFLOP/s." in md
    dw, = (ln for ln in md.splitlines() if ln.startswith("| dwconv | fwd |"))
    ln_, = (ln for ln in md.splitlines() if ln.startswith("| layer_norm | fwd |"))
    assert dw.rstrip().endswith("floor: fp32 FMA |") and "floor" not in ln_


def test_cpu_timing_has_no_host_issue_time():
    import torch

    from convnext_fast.bench.timing import measure

    t = measure(lambda: torch.ones(8).sum(), torch.device("cpu"), warmup_ms=1, rep_ms=2)
    assert t.host_ms is None and t.median_ms > 0 and t.reps >= 5


def test_cpu_ceilings_are_recorded_but_are_no_roofline():
    import torch

    from convnext_fast.bench.report import measure_ceilings, roofline_ceilings

    c = measure_ceilings(torch.device("cpu"), quick=True)
    assert c["copy_gbps"] > 0 and c["matmul_tflops"]["float32"] > 0  # for the record
    assert c["roofline"] is False and c["fp32_fma_tflops"] is None  # a matmul is no FMA ceiling
    assert roofline_ceilings(c) is None
    gpu_like = {"copy_gbps": 3000.0, "matmul_tflops": {"bfloat16": 700.0, "float32": 51.0},
                "fp32_fma_tflops": 51.0, "roofline": True}
    assert roofline_ceilings(gpu_like) == roofline.Ceilings(3000.0, {"bfloat16": 700.0, "float32": 51.0}, 51.0)


def test_roofline_gives_no_percentage_above_100():
    # 1 ms of bytes at the measured copy rate, done in 0.8 ms: the ceiling was measured too low
    ceil = roofline.Ceilings(copy_gbps=1000.0, matmul_tflops={"float32": 1.0}, fp32_fma_tflops=1.0)
    fast = roofline.roofline(roofline.Work(bytes=10**9, flops=10), 0.8, ceil, "float32")
    assert fast["ceiling_exceeded"] is True
    assert fast["pct_roofline"] is None and fast["pct_bandwidth"] is None
    assert fast["floor_ms"] == pytest.approx(1.0) and fast["gbps"] == pytest.approx(1250.0)
    exact = roofline.roofline(roofline.Work(bytes=10**9, flops=10), 1.0, ceil, "float32")
    assert exact["ceiling_exceeded"] is False and exact["pct_roofline"] == pytest.approx(100.0)
    # rows of older result files: a stored 136% is read as no roofline
    assert roofline.checked_pct({"pct_roofline": 136.2}) is None
    assert roofline.checked_pct({"pct_roofline": 99.0}) == 99.0
    assert roofline.checked_pct({"pct_roofline": 99.0, "ceiling_exceeded": True}) is None


def _cpu_rows():
    """Fabricated CPU run: the fused op 1.7x eager at every stage, 1.8x torch.compile at stage 1 only,
    and a stored 136% roofline (as the old fp32-matmul 'FMA ceiling' produced)."""
    rows = []
    for i, (c, h, w) in enumerate(STAGES):
        s = (8, c, h, w)
        rows += [_row("dwconv_ln", "fwd", s, "torch", 1.7), _row("dwconv_ln", "fwd", s, "cpu", 1.0),
                 _row("dwconv", "fwd", s, "torch", 1.0), _row("dwconv", "fwd", s, "cpu", 0.5, pct_roofline=136.0,
                                                              bound="fp32 FMA")]
        if i == 0:
            rows.append(_row("dwconv_ln", "fwd", s, "torch_compile", 1.8))
    rows += [_row("model", "infer", (2, 3, 224, 224), "torch", 80.0, img_per_s=25.0),
             _row("model", "infer", (2, 3, 224, 224), "cpu", 64.0, img_per_s=31.25)]
    for r in rows:
        r["dtype"] = "float32"
    return rows


def _no_issue_numbers(text):
    assert not re.search(r"issue[\s-]*#?\d", text, re.IGNORECASE), text


def test_cpu_run_summarizes_what_it_measured_and_skips_gpu_targets():
    data = _fake_results("cpu", "2026-01-01T00:00:00Z", _cpu_rows())
    text = final_summary(data)
    fused, = (ln for ln in text.splitlines() if ln.startswith("| fused depthwise conv + LayerNorm forward |"))
    assert "| cpu | 1.70x (1.70x-1.70x, 4 stages) | 1.80x (96x56x56) |" in fused
    model, = (ln for ln in text.splitlines() if ln.startswith("| convnext_tiny inference |"))
    assert "| 1.25x | not measured |" in model
    # the GPU targets: one line, no table of "not measured" verdicts
    assert "need a GPU run" in text and "| target |" not in text and "**not measured**" not in text
    _no_issue_numbers(text)
    md = render_markdown(data)
    _no_issue_numbers(md)
    assert "need a GPU run" in md and "1.70x (1.70x-1.70x, 4 stages)" in md
    perf_md = perf.render_perf_md(data)
    _no_issue_numbers(perf_md)
    assert "need a GPU run" in perf_md and "of 8 met" not in perf_md


def test_gpu_run_lists_targets_by_what_they_measure():
    text = final_summary(_fake_results("cuda", "2026-01-01T00:00:00Z", _fake_rows()))
    assert "| convnext_tiny inference (batch 256) vs timm torch.compile | >= 1.50x |" in text
    assert "| depthwise conv forward | bfloat16, batch 128 | triton | 2.00x (2.00x-2.00x, 4 stages) |" in text
    _no_issue_numbers(text)
    for tid, desc, *_ in aggregate.TARGETS:
        _no_issue_numbers(desc)


def test_no_printed_roofline_percentage_exceeds_100():
    cpu_md = render_markdown(_fake_results("cpu", "2026-01-01T00:00:00Z", _cpu_rows()))
    gpu_rows = [_row("dwconv", "fwd", (128, 96, 56, 56), "torch", 1.0, pct_roofline=40.0),
                _row("dwconv", "fwd", (128, 96, 56, 56), "triton", 0.3, pct_roofline=133.3, bound="fp32 FMA")]
    gpu_md = render_markdown(_fake_results("cuda", "2026-01-01T00:00:00Z", gpu_rows))
    for md in (cpu_md, gpu_md):
        pcts = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?)%", md)]
        assert all(v <= 100.0 for v in pcts), pcts
    assert "136" not in cpu_md
    cpu_dw = [ln for ln in cpu_md.splitlines() if ln.startswith("| dwconv | fwd |")]
    assert len(cpu_dw) == 8 and all(ln.split("|")[10].strip() == "-" for ln in cpu_dw)  # % roofline column
    tri, = (ln for ln in gpu_md.splitlines() if ln.startswith("| dwconv | fwd |") and "| triton |" in ln)
    assert tri.split("|")[10].strip() == "n/a" and "a ceiling is too low" in tri
    eager, = (ln for ln in gpu_md.splitlines() if ln.startswith("| dwconv | fwd |") and "| torch |" in ln)
    assert eager.split("|")[10].strip() == "40.0%"
    # the bandwidth target ignores an impossible percentage instead of calling it met
    rows = _fake_rows()
    for r in rows:
        if r["op"] == "dwconv" and r["provider"] in ("triton", "cuda"):
            r["pct_bandwidth"] = 120.0
    t = {x["id"]: x for x in aggregate.evaluate_targets(rows)}
    assert t["dwconv_roofline"]["verdict"] == "not measured"


def test_stage_shapes_have_one_definition():
    from convnext_fast import shapes
    from convnext_fast.bench import cases, tune

    assert cases.STAGES is shapes.CONVNEXT_T_STAGES and aggregate.STAGE_SHAPES is shapes.CONVNEXT_T_STAGES
    assert tune.STAGES == tuple((c, h) for c, h, _ in shapes.CONVNEXT_T_STAGES)
    # nothing under bench/ or benchmarks/ spells a stage out again
    files = sorted((REPO / "convnext_fast" / "bench").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    assert files
    for f in files:
        assert not re.search(r"\(\s*96\s*,\s*56\b", f.read_text()), f"{f} defines a ConvNeXt stage again"


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------

def _synthetic_all_providers(device_type="cuda", narrow=False):
    """Fabricated results: every provider, op, mode and stage, the model, and a kernel-size sweep;
    ``narrow``: one op, one swept case and one model mode (one panel per figure: the narrowest
    figures, where a long title or a six-entry legend could run off the edge)."""
    from convnext_fast.bench import cases as C

    speed = {p: 1.0 + 0.3 * i for i, p in enumerate(C.PROVIDERS)}
    rows = []

    def add(op, mode, shape, k, group, base):
        for p in C.PROVIDERS:
            r = _row(op, mode, shape, p, base / speed[p], k=k, group=group)
            if op == "model":
                r.update(img_per_s=shape[0] / (r["time_ms"] / 1e3), peak_mem_mb=15000.0)
            rows.append(r)

    op_modes = [(op, mode) for op, modes in C.MODES.items() for mode in modes]
    swept = [("dwconv", "fwd"), ("dwconv", "fwdbwd"), ("block", "fwdbwd"), ("model", "infer")]
    if narrow:
        op_modes, swept = [("dwconv", "fwd"), ("model", "infer")], [("dwconv", "fwd")]
    for op, mode in op_modes:
        for chw in ((C.STAGES if op != "model" else [(3, 224, 224)])):
            add(op, mode, ((256 if op == "model" else 128),) + chw, 7, "standard", 1.0 + chw[0] / 100)
    for op, mode in swept:
        shape = (256, 3, 224, 224) if op == "model" else (128,) + C.STAGES[0]
        for k in C.SWEEP_K:
            if k != 7:
                add(op, mode, shape, k, "sweep", 0.02 * k * k)
    data = _fake_results(device_type, "2026-01-01T00:00:00Z", rows)
    data["meta"]["device_name"] = "NVIDIA H100 80GB HBM3 (fabricated)" if device_type == "cuda" else \
        "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz (fabricated, 2 of 112 cores)"
    return data


def _text_overlaps(fig, gap_px=5.0):
    """Pairs of drawn texts (tick labels within the view, titles, axis labels, annotations, legend
    entries) whose rendered bounding boxes come closer than ``gap_px`` (about a space at 10 pt:
    labels that merely touch read as one word, "torchtorch_compile"), and texts that reach
    outside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if lo - 1e-9 * abs(hi) <= tick.get_loc() <= hi + 1e-9 * abs(hi):
                    texts.append(tick.label1)
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    texts += [t for t in [fig._suptitle] if t is not None]
    texts += [t for legend in fig.legends for t in legend.get_texts()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    width, height = fig.canvas.get_width_height()
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
               if ba.padded(gap_px / 2).overlaps(bb.padded(gap_px / 2))]
    outside = [a for a, bb in boxes if bb.x0 < 0 or bb.y0 < 0 or bb.x1 > width or bb.y1 > height]
    return clashes, outside


def test_overlap_check_catches_crowded_provider_names():
    # the check itself must fail on what model.png used to draw: five provider names under bars
    plt = pytest.importorskip("matplotlib.pyplot")
    from convnext_fast.bench import cases as C

    gpu_providers = [p for p in C.PROVIDERS if p != "cpu"]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, mode in zip(axes, ("infer", "train")):
        ax.bar(gpu_providers, [7662, 15133, 12760, 5912, 15813])
        ax.set_ylabel("images / s")
        ax.set_title(f"convnext_tiny {mode}, batch 256, bfloat16", fontsize=9)
    fig.suptitle("NVIDIA H100 80GB HBM3", fontsize=10)
    fig.tight_layout()
    clashes, _ = _text_overlaps(fig)
    plt.close(fig)
    assert ("cuda", "triton_compile") in clashes


@pytest.mark.parametrize("device_type,narrow", [("cuda", False), ("cpu", False), ("cpu", True)])
def test_every_plot_renders_with_every_provider_and_no_text_overlaps(tmp_path, device_type, narrow):
    plt = pytest.importorskip("matplotlib.pyplot")
    from convnext_fast.bench.report import make_figures, write_plots

    data = _synthetic_all_providers(device_type, narrow)
    figs = make_figures(data)
    assert sorted(figs) == ["model.png", "speedup.png", "sweep.png"]
    for name, fig in figs.items():
        clashes, outside = _text_overlaps(fig)
        assert not clashes, f"{name}: overlapping texts {clashes}"
        assert not outside, f"{name}: texts outside the figure {outside}"
        # every provider has its own entry: a legend (speedup, sweep) or a bar label (model)
        labels = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
        labels |= {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
        from convnext_fast.bench import cases as C
        expected = set(C.PROVIDERS) - ({"torch"} if name == "speedup.png" else set())
        assert expected <= labels, (name, expected - labels)
        plt.close(fig)
    paths = write_plots(data, tmp_path)
    assert sorted(p.name for p in paths) == ["model.png", "speedup.png", "sweep.png"]
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# ------------------------------------------------------------------------------------------------
# optional dependencies
# ------------------------------------------------------------------------------------------------

_BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = ("timm", "matplotlib")
    tried = []

    class _Block:
        # stands in for an environment without timm and matplotlib, and records who asked for them
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                tried.append(name)
                raise ImportError(f"No module named {name!r} (blocked)")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, _Block())
""")


def _run_blocked(body, tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(_BLOCKER + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bench_imports_and_helps_without_timm_and_matplotlib(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_fake_results("cpu", "2026-01-01T00:00:00Z", _cpu_rows())))
    out = _run_blocked(f"""
        import runpy
        import convnext_fast.bench
        from convnext_fast.bench import aggregate, cases, perf, report, roofline, tune  # noqa: F401
        sys.argv = ["python -m convnext_fast.bench", "--help"]
        try:
            runpy.run_module("convnext_fast.bench", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert tried == [], tried  # nothing so far even tried to import them
        print("HELP-OK")

        # where they are needed, the message names the install command
        try:
            cases._timm_convnext_tiny(7)
        except cases.Skip as exc:
            print("SKIP:", exc)
        report.main(["--out", {str(tmp_path / "out")!r}, "--from-json", {str(results)!r}])
    """, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HELP-OK" in out.stdout and "usage: python -m convnext_fast.bench" in out.stdout
    skip, = (ln for ln in out.stdout.splitlines() if ln.startswith("SKIP:"))
    assert "timm" in skip and "pip install -e .[bench]" in skip
    assert "plots not written: matplotlib is not installed (pip install -e .[bench])" in out.stdout
    assert (tmp_path / "out" / "report.md").exists() and not list((tmp_path / "out").glob("*.png"))


def test_standard_cases_most_important_first():
    gpu = standard_cases("cuda")
    assert gpu[0] == Case("dwconv", "fwd", (128, 96, 56, 56), "bfloat16", 7)
    order = [c.op for c in gpu]
    assert order.index("dwconv_ln") < order.index("layer_norm") < order.index("block") < order.index("model")
    first_sweep = next(i for i, c in enumerate(gpu) if c.group == "sweep")
    assert all(c.dtype == "bfloat16" for c in gpu[:first_sweep])  # other dtypes come last
    assert {c.k for c in gpu if c.group == "sweep"} == {3, 5, 9, 11, 13, 31}
    cpu = standard_cases("cpu", quick=True)
    assert all(c.dtype == "float32" and c.shape[0] <= 8 for c in cpu)


def test_device_slug():
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_slug("///") == "unknown-device"


def test_readme_splice_replaces_only_the_marked_section():
    doc = f"# title\n\nintro\n\n## Performance\n\n{perf.PERF_BEGIN}\nold numbers\n{perf.PERF_END}\n\n## Next\n"
    out = perf.splice_between_markers(doc, "## Performance\n\nnew numbers\n")
    assert "old numbers" not in out and "new numbers" in out
    assert out.startswith("# title\n\nintro\n\n## Performance\n") and out.endswith(f"{perf.PERF_END}\n\n## Next\n")
    assert out.count("## Performance") == 1
    with pytest.raises(ValueError, match="no PERF:BEGIN"):
        perf.splice_between_markers("# no markers\n", "x")


def test_compiled_ours_provider():
    """triton_compile = our kernels (triton backend) under torch.compile, for block and model only."""
    import torch

    from convnext_fast.bench import cases as C

    assert C.backend_of("triton_compile") == "triton" and C.backend_of("cuda") == "cuda"
    assert "triton_compile" in C.OURS and "triton_compile" in aggregate.OURS
    cpu = torch.device("cpu")
    assert C.provider_unavailable("triton_compile", cpu) == C.provider_unavailable("triton", cpu) != ""
    rows = [_row("block", "fwdbwd", (128, 96, 56, 56), "torch", 1.0),
            _row("block", "fwdbwd", (128, 96, 56, 56), "triton", 0.9),
            _row("block", "fwdbwd", (128, 96, 56, 56), "triton_compile", 0.6)]
    best = aggregate.best_ours(rows, aggregate.row_key(rows[0]))
    assert best["provider"] == "triton_compile"
