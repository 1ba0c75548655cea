"""Timing that is fair to every provider: synchronized, warmed up, medians with their spread.

* GPU: CUDA events around each call, a 256 MB L2 flush between calls (larger than any current GPU's
  L2, so every call reads its inputs from HBM, as it would inside a real network), warm-up first, the median of
  many calls. Optionally the call is captured in a CUDA graph and the graph replayed, which removes
  launch gaps for small batches. The host time to issue one call is measured too (``host_ms``),
  to tell a slow kernel from a call the GPU spends waiting for Python and launches.
* CPU: ``time.perf_counter`` around each call, median.

The caller warms up (and compiles) *before* handing ``fn`` over; ``measure`` warms up again by time.

A busy machine shows up as spread: on a loaded CPU, calls land on multiples of the scheduler's tick
and a neighbour's burst slows a few of them. ``measure_steady`` retries a measurement whose p80 / p20
exceeds :data:`SPREAD_LIMIT` and marks it ``unstable`` when it stays spread; the report shows such a
row but leaves it out of every summary and target.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

__all__ = ["SPREAD_LIMIT", "Timing", "measure", "measure_steady"]

_L2_FLUSH_BYTES = 256 * 2**20
_HOST_REPS = 20  # calls timed on the host clock alone (GPU), for Timing.host_ms
_flush_buffers: dict = {}
#: A measurement whose 80th / 20th percentile ratio exceeds this is retried, then marked unstable.
SPREAD_LIMIT = 1.10


@dataclass(frozen=True)
class Timing:
    """Median and spread (20th/80th percentile) of one measured call, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    cuda_graph: bool = False
    # GPU only: median host time to issue one call from an idle stream (Python, dispatch, launches;
    # no synchronization inside). When it is close to or above median_ms the call is host-bound:
    # at this size the GPU waits for the launches, and the time measured includes that wait.
    host_ms: Optional[float] = None
    attempts: int = 1  # measurements made (measure_steady retries a spread one)

    @property
    def spread(self) -> float:
        """p80 / p20: 1.0 for a perfectly steady call."""
        return self.p80_ms / self.p20_ms if self.p20_ms > 0 else float("inf")

    @property
    def unstable(self) -> bool:
        return self.spread > SPREAD_LIMIT


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    idx = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[idx]


def _summary(times: list[float], graph: bool = False, host_ms: Optional[float] = None) -> Timing:
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times), graph,
                  host_ms)


def _host_issue_ms(fn: Callable[[], object], reps: int) -> float:
    """Median host time of ``fn()`` started on an idle stream (synchronized before, not after)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def _flush_buffer(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _flush_buffers:
        _flush_buffers[key] = torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    return _flush_buffers[key]


def _capture_graph(fn: Callable[[], object]) -> Callable[[], object]:
    """Capture ``fn`` in a CUDA graph (after a warm-up on a side stream, as PyTorch requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay


def measure(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            min_reps: int = 5, max_reps: int = 500, cuda_graph: bool = False,
            max_total_s: Optional[float] = None) -> Timing:
    """Median time of ``fn()`` in milliseconds.

    Args:
        fn: the work to time; it must not synchronize itself (the timer does).
        device: where ``fn`` runs (``cuda`` uses events, anything else the host clock).
        warmup_ms, rep_ms: how long to warm up and to measure (as triton.testing.do_bench);
            the number of calls follows from a first estimate, clamped to [min_reps, max_reps].
        cuda_graph: replay a CUDA graph of ``fn`` (falls back to plain calls if capture fails).
        max_total_s: cap on the measuring time for slow calls (at least ``min_reps`` calls still run).
    """
    graph = False
    if device.type == "cuda":
        if cuda_graph:
            try:
                fn = _capture_graph(fn)
                graph = True
            except Exception:  # noqa: BLE001 - not every call can be captured; time it plainly
                torch.cuda.synchronize()
        flush = _flush_buffer(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        est = max(start.elapsed_time(end), 1e-3)
        if est < 20.0:  # short calls: a better estimate from a few more (slow calls: one is enough)
            start.record()
            for _ in range(3):
                fn()
            end.record()
            torch.cuda.synchronize()
            est = max(start.elapsed_time(end) / 3, 1e-3)
        n_warm = max(1, int(warmup_ms / est))
        n_rep = max(min_reps, min(max_reps, int(rep_ms / est)))
        if max_total_s is not None:
            n_rep = max(min_reps, min(n_rep, int(max_total_s * 1e3 / est)))
        for _ in range(n_warm):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            flush.zero_()  # evict the previous call's data from L2 (outside the timed region)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        # at most ~0.5 s of extra calls for slow ones (a training step), 20 for fast ones
        host_ms = _host_issue_ms(fn, max(3, min(_HOST_REPS, n_rep, int(500.0 / est))))
        return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], graph, host_ms)

    # Host timing: CPU work is synchronous, so perf_counter around the call is exact.
    t0 = time.perf_counter()
    fn()
    est = max((time.perf_counter() - t0) * 1e3, 1e-3)
    n_warm = max(1, min(10, int(warmup_ms / est)))
    n_rep = max(min_reps, min(max_reps, int(rep_ms / est)))
    if max_total_s is not None:
        n_rep = max(min_reps, min(n_rep, int(max_total_s * 1e3 / est)))
    for _ in range(n_warm - 1):
        fn()
    times = []
    for _ in range(n_rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summary(times)


def measure_steady(fn: Callable[[], object], device: torch.device, *, retries: int = 2,
                   measure_fn: Callable[..., Timing] = measure, **kwargs) -> Timing:
    """:func:`measure`, retried at most ``retries`` times while its p80 / p20 exceeds
    :data:`SPREAD_LIMIT`. Returns the steadiest attempt (``attempts`` says how many were made; its
    ``unstable`` is true when even that one is spread). ``kwargs`` go to ``measure_fn``."""
    best: Optional[Timing] = None
    for attempt in range(1, retries + 2):
        t = measure_fn(fn, device, **kwargs)
        if best is None or t.spread < best.spread:
            best = t
        if not t.unstable:
            break
    assert best is not None
    return replace(best, attempts=attempt)
