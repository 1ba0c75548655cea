"""pytest-benchmark suite for convnext_fast: ``pytest benchmarks/ --benchmark-only``.

The cases, providers and roofline arithmetic come from ``convnext_fast.bench`` (the same as the
report, ``python -m convnext_fast.bench``), so both measure the same things. Each test:

* skips cleanly when its provider cannot run here (the reason is the skip message);
* builds its inputs and warms up (and compiles) *before* timing, outside pytest-benchmark;
* times a function that synchronizes the GPU inside (pytest-benchmark reads the host clock);
* puts bytes moved, GB/s, TFLOP/s, % of the measured roofline (GPU only), device and versions in
  ``extra_info``; on a GPU also the CUDA-event median with an L2 flush between calls
  (``device_median_ms``), which is the number the report uses.

Shapes: on a GPU the ConvNeXt-T stages at batch 128 (ops, block) and 256 (model), bf16/fp16/fp32.
On a CPU-only machine: fp32, batch 8 (ops), 4 (block), 2 (model), no torch.compile unless asked,
never the Triton interpreter; the whole suite takes a few minutes.
"""
from __future__ import annotations

import os
from typing import Optional

# Timing the Triton interpreter would measure numpy: make sure an exported TRITON_INTERPRET (CI sets
# it for the tests) cannot turn the triton provider on for CPU tensors here.
os.environ.pop("TRITON_INTERPRET", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from convnext_fast.bench import cases as C  # noqa: E402
from convnext_fast.bench import roofline  # noqa: E402
from convnext_fast.bench.env import environment  # noqa: E402
from convnext_fast.bench.timing import measure  # noqa: E402

from bench_config import DEVICE, ON_GPU  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("convnext_fast benchmarks")
    group.addoption("--bench-compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode of the compiled providers (max-autotune: slow to compile)")
    group.addoption("--bench-compile-all", action="store_true",
                    help="run the compiled providers for every dtype (GPU) and on CPU too (slow to compile)")
    group.addoption("--bench-cuda-graphs", action="store_true",
                    help="replay forward/inference calls from a CUDA graph (removes launch gaps)")


@pytest.fixture(scope="session")
def ceilings() -> Optional[roofline.Ceilings]:
    """The measured ceilings of this machine (copy GB/s, matmul and fp32 FMA TFLOP/s), once per session;
    None on a CPU, where they are no roofline (``report.measure_ceilings``): no % of roofline there."""
    if not ON_GPU:
        return None
    from convnext_fast.bench.report import measure_ceilings, roofline_ceilings

    return roofline_ceilings(measure_ceilings(DEVICE, quick=True))


@pytest.fixture
def run_case(benchmark, request, ceilings):
    """``run_case(case, provider)``: skip or time one case under pytest-benchmark, fill extra_info."""

    def _run(case: C.Case, provider: str) -> None:
        reason = C.provider_unavailable(provider, DEVICE)
        if reason:
            pytest.skip(reason)
        compile_all = request.config.getoption("--bench-compile-all")
        if provider in C.COMPILED and not compile_all:
            if not ON_GPU:
                pytest.skip("torch.compile on CPU compiles for tens of seconds per graph (--bench-compile-all)")
            if case.dtype != "bfloat16":
                pytest.skip("torch.compile only in bf16 by default (compile time; --bench-compile-all)")
            if case.group == "sweep":
                pytest.skip("the sweep compares eager PyTorch with ours (--bench-compile-all)")
            if provider == "triton_compile" and case.op != "model":
                pytest.skip("ours under torch.compile: the model only by default (--bench-compile-all)")
        try:
            prep = C.prepare(case, provider, DEVICE, compile_mode=request.config.getoption("--bench-compile-mode"))
        except C.Skip as exc:
            pytest.skip(str(exc))
        fn = prep.fn
        if ON_GPU:
            def timed() -> None:
                fn()
                torch.cuda.synchronize()  # pytest-benchmark reads the host clock
        else:
            timed = fn
        # rounds from one timed call: ~0.3 s of timing per test, at least 3 rounds
        import time

        t0 = time.perf_counter()
        timed()
        once = max(time.perf_counter() - t0, 1e-6)
        rounds = max(3, min(200 if ON_GPU else 20, int(0.3 / once)))
        benchmark.group = f"{case.op}-{case.mode}-{'x'.join(map(str, case.shape))}-{case.dtype}-k{case.k}"
        benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)

        info = benchmark.extra_info
        env = environment()
        info.update(op=case.op, mode=case.mode, shape=list(case.shape), dtype=case.dtype, k=case.k,
                    provider=provider, device=env["device_name"], torch=env["torch"], triton=env["triton"],
                    cuda=env["cuda"], setup_s=round(prep.compile_s, 3))
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: the function ran once, nothing was timed
            return
        median_ms = stats.stats.median * 1e3
        if ON_GPU:
            dev = measure(fn, DEVICE, rep_ms=100,
                          cuda_graph=request.config.getoption("--bench-cuda-graphs") and case.mode in ("fwd", "infer"))
            info["device_median_ms"] = dev.median_ms
            median_ms = dev.median_ms  # events + L2 flush: the fairer number for the roofline
        work = roofline.op_work(case.op, case.shape, case.k, case.dtype, case.mode)
        info.update(roofline.roofline(work, median_ms, ceilings, case.dtype))
        info["median_ms"] = median_ms
        if case.op == "model":
            info["img_per_s"] = case.shape[0] / (median_ms / 1e3)
            info["peak_mem_mb"] = prep.peak_mem_mb

    return _run
