"""The CPU engine comparison (convnext_fast.bench.cpu_engines): every engine builds, passes parity
and is timed on a tiny model; the targets, the ceiling and the CPU record are computed as documented;
OpenVINO's telemetry stays off without a file in the home directory; on a CPU restricted to AVX2
our bf16 MLP computes in fp32 (no AVX512_BF16 dot products to run it on).

No assertion here is about speed: timing belongs to the benchmarks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from convnext_fast.bench import cpu_engines as CE
from convnext_fast.bench import env as bench_env

pytest.importorskip("timm")


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _cpu_ext_available() -> bool:
    from convnext_fast import extension

    return not extension.unavailable_reason("cpu")


# The bf16 variants of torch.compile with freezing compile two more graphs (the slowest part of the smoke
# run): their own fixture, marked slow; the fp32 frozen compile stays in the quick set.
SLOW_ENGINES = ("compile_freezing_autocast_bf16", "compile_freezing_bf16")
ALL_ENGINES = CE.FP32_ENGINES + CE.BF16_ENGINES + CE.AVX2_ENGINES


def _available(engine: str) -> bool:
    if engine == "onnxruntime":
        return _has("onnxruntime")
    if engine.startswith("openvino"):
        return CE.openvino_version() is not None
    return True


def _smoke(engines) -> dict:
    """The engines on convnext_atto at 32x32, batch 1, one timed round."""
    ceiling = CE.measure_ceiling(n=256, reps=1)
    return CE.compare("convnext_atto", batches=(1,), size=32, engines=[e for e in engines if _available(e)],
                      runs=1, repeats=1, warmup=0, threads=min(2, os.cpu_count() or 1), ceiling=ceiling,
                      log=lambda s: None)


@pytest.fixture(scope="module")
def smoke() -> dict:
    """Every engine but SLOW_ENGINES (the AVX2 worker included)."""
    return _smoke([e for e in ALL_ENGINES if e not in SLOW_ENGINES])


@pytest.fixture(scope="module")
def smoke_slow() -> dict:
    return _smoke(SLOW_ENGINES)


@pytest.mark.parametrize("engine", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW_ENGINES else e
                                    for e in ALL_ENGINES])
def test_engine_builds_passes_parity_and_is_timed(request, engine):
    if not _available(engine):
        pytest.skip(f"{engine}: its package is not installed")
    if engine.startswith("ours") and not _cpu_ext_available():
        pytest.skip("the CPU extension is not available")
    result = request.getfixturevalue("smoke_slow" if engine in SLOW_ENGINES else "smoke")
    row = next(r for r in result["rows"] if r["engine"] == engine)
    assert row["status"] == "ok", row
    verdict = row["parity"]
    assert verdict["passed"] and verdict["rel_err"] <= verdict["tol"], verdict
    assert row["dtype"] == ("bf16" if "bf16" in engine else "fp32")
    assert len(row["runs"]) == 1 and row["median_ms"] > 0
    assert 0 < row["share_of_ceiling"][0]


def test_smoke_records_cpu_ceiling_and_flops(smoke):
    assert smoke["cpu"]["summary"] and "isa_flags" in smoke["cpu"]
    assert smoke["ceiling"]["fp32"] > 0 and smoke["ceiling"]["bf16"] > 0
    # convnext_atto at 32x32: every conv and matmul counted, about 2% of its 224x224 FLOPs
    assert 10e6 < smoke["flops_per_image"] < 50e6
    assert {t["target"] for t in smoke["targets"]} >= {"fp32: ours_optimized vs the fastest engine",
                                                       "bf16: ours_optimized_bf16 vs the fastest bf16 engine"}


def test_parity_failure_is_not_timed():
    """An engine whose output is wrong is a 'failed parity' row and never reaches the timer."""
    model = CE.build_timm("convnext_atto")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        good = model(x)
    engines = [CE.Engine("right", "fp32", "", lambda: good), CE.Engine("wrong", "fp32", "", lambda: good * 1.01),
               CE.Engine("nan", "bf16", "", lambda: good * float("nan")),
               CE.Engine("raises", "fp32", "", lambda: (_ for _ in ()).throw(RuntimeError("boom")))]
    verdicts = CE.check_engines(engines, model, x)
    assert verdicts["right"]["passed"]
    assert not verdicts["wrong"]["passed"] and not verdicts["nan"]["passed"]
    assert not verdicts["raises"]["passed"] and "boom" in verdicts["raises"]["error"]


def _row(batch, engine, medians):
    return {"batch": batch, "engine": engine, "status": "ok", "runs": [{"median_ms": m} for m in medians]}


def test_targets_take_the_lowest_ratio_against_the_fastest_competitor():
    rows = [_row(1, "ours_optimized", [10.0, 10.0, 10.0]), _row(1, "ours", [10.4, 10.6, 10.0]),
            _row(1, "openvino", [13.0, 12.0, 14.0]), _row(1, "compile_freezing", [12.5, 13.0, 11.0]),
            _row(1, "onnxruntime", [20.0, 20.0, 20.0]),
            _row(1, "ours_optimized_bf16", [5.0, 5.0, 5.0]), _row(1, "ours_autocast_bf16", [5.4, 5.5, 5.5]),
            _row(1, "compile_freezing_bf16", [6.0, 6.0, 6.0]), _row(1, "openvino_bf16", [5.8, 7.0, 7.0])]
    got = {t["target"]: t for t in CE.targets(rows)}
    fp32 = got["fp32: ours_optimized vs the fastest engine"]
    assert fp32["ratios"] == pytest.approx([1.25, 1.2, 1.1]) and fp32["lowest"] == pytest.approx(1.1)
    assert fp32["against"] == ["compile_freezing", "openvino", "compile_freezing"] and fp32["met"] is False
    plain = got["fp32: ours within 5% of ours_optimized"]
    assert plain["lowest"] == pytest.approx(10.0 / 10.6) and plain["met"] is False  # one run 6% behind
    bf16 = got["bf16: ours_optimized_bf16 vs the fastest bf16 engine"]
    assert bf16["lowest"] == pytest.approx(5.8 / 5.0) and bf16["met"] is True
    assert got["bf16: ours_autocast_bf16 at least 0.9x ours_optimized_bf16"]["met"] is True
    # an engine that did not run leaves its target unjudged, never met
    partial = CE.targets([_row(8, "ours_optimized", [1.0])])
    assert all(t["met"] is None for t in partial)


def test_cpu_details_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC 9R14\nstepping\t: 1\nflags\t\t: fpu avx2 fma avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: other\n")
    monkeypatch.setattr(bench_env, "CPUINFO", str(info))
    d = bench_env.cpu_details()
    assert (d["vendor"], d["family"], d["model"], d["name"]) == ("AuthenticAMD", "25", "17", "AMD EPYC 9R14")
    assert d["isa_flags"] == ["avx2", "fma", "avx512f", "avx512_bf16"]
    assert "amx_bf16" in d["isa_flags_missing"] and "fpu" not in d["isa_flags"]
    assert "family 25 model 17" in d["summary"] and "avx512_bf16" in d["summary"]


def test_openvino_telemetry_off_leaves_home_untouched(tmp_path):
    """Converting a model with telemetry off writes nothing under HOME and declines consent; the CI
    variable it sets is restored afterwards."""
    pytest.importorskip("openvino")
    code = textwrap.dedent("""
        import os, torch
        from convnext_fast.bench import cpu_engines as CE
        with CE.openvino_telemetry_off():
            import openvino as ov
            ov.convert_model(torch.nn.Linear(4, 2).eval(), example_input=torch.zeros(1, 4))
        import openvino_telemetry as tm
        assert tm.Telemetry().consent is False, "telemetry consent was not declined"
        assert "CI" not in os.environ, os.environ.get("CI")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert not (tmp_path / "intel").exists(), list(tmp_path.rglob("*"))


@pytest.mark.skipif(not _cpu_ext_available(), reason="the CPU extension is not available")
def test_bf16_mlp_falls_back_to_fp32_compute_without_avx512_bf16():
    """With the CPU kernels held to AVX2 (and oneDNN to AVX2), the bf16 MLP reports fp32 compute
    and returns exactly the fp32 kernel's result on the widened inputs, rounded once to bf16."""
    code = textwrap.dedent("""
        import torch
        from convnext_fast import extension
        ext = extension._ext()
        assert ext.cpu_bf16_compute() == "fp32", ext.cpu_bf16_compute()
        g = torch.Generator().manual_seed(0)
        C, Hd = 24, 96
        bf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).bfloat16()
        f = lambda t: t.float()
        for M in (37, 1100):  # the float32 kernel's two GEMM paths (oneDNN below 1024 rows)
            x, w1, b1 = bf(M, C), bf(Hd, C, scale=0.2), bf(Hd)
            w2, b2, gamma, sc = bf(C, Hd, scale=0.1), bf(C), bf(C), bf(M, C)
            out, _ = extension.mlp_forward(x, w1, b1, w2, b2, gamma, sc, None, M, False)
            ref, _ = extension.mlp_forward(f(x), f(w1), f(b1), f(w2), f(b2), f(gamma), f(sc), None, M, False)
            assert out.dtype == torch.bfloat16
            assert torch.equal(out, ref.bfloat16()), (M, (out.float() - ref).abs().max())
            # an in-place weight update is seen by the next call (no stale converted weights)
            with torch.no_grad():
                w1.mul_(2)
            out2, _ = extension.mlp_forward(x, w1, b1, w2, b2, gamma, sc, None, M, False)
            ref2, _ = extension.mlp_forward(f(x), f(w1), f(b1), f(w2), f(b2), f(gamma), f(sc), None, M, False)
            assert torch.equal(out2, ref2.bfloat16()) and not torch.equal(out2, out), M
            # autocast's block tail over the widened MLP: still the MLP's output, then addcmul
            z, _ = extension.mlp_forward(x, w1, b1, w2, b2, None, None, None, M, False)
            for shortcut in (f(sc), sc):
                tail = extension.mlp_forward_promoted(x, w1, b1, w2, b2, f(gamma), shortcut)
                assert torch.equal(tail, torch.addcmul(shortcut, z, f(gamma))), M
        print("ok")
    """)
    env = dict(os.environ, CONVNEXT_FAST_CPU_ISA="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.skipif(not _cpu_ext_available(), reason="the CPU extension is not available")
def test_bf16_compute_matches_the_cpu():
    """Unrestricted, the bf16 MLP uses bf16 dot products exactly when the CPU has AVX512_BF16."""
    from convnext_fast import extension

    if os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("CONVNEXT_FAST_CPU_ISA"):
        pytest.skip("the instruction set is restricted from the environment")
    flags = bench_env.cpu_details()["isa_flags"]
    native = "avx512_bf16" in flags and extension.build_info().get("cpu_isa") == "avx512"
    assert extension._ext().cpu_bf16_compute() == ("bf16" if native else "fp32")
