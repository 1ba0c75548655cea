"""CPU benchmark of whole-model inference: convnext_fast against timm eager and ONNX Runtime, side by side.

For each model (default ``convnext_tiny``) at ``--size`` x ``--size`` (default 224) and each batch
size (default 1 and 8), the providers, all fed the same random images:

* ``timm_eager``: ``timm.create_model(name, pretrained=False)``, eval, channels_last weights and
  input, under ``torch.no_grad`` (how timm serves a ConvNeXt on the CPU). The baseline.
* ``onnxruntime`` (when installed): that timm model exported with ``torch.onnx.export``
  (TorchScript exporter, opset 17, once per batch size so ONNX Runtime sees static shapes), run by
  the CPU execution provider with ``intra_op_num_threads = torch.get_num_threads()`` and thread
  spinning off (spinning threads would steal the cores from the provider timed next).
* ``ours``: ``convnext_fast.create_model(name)`` with the timm model's weights (same parameter
  names), eval, channels_last, ``torch.no_grad``; on the CPU this runs the compiled extension's
  fused depthwise conv + LayerNorm and fused pointwise MLP.
* ``ours_optimized``: ``convnext_fast.optimize_for_inference(model)`` of a copy of that model, when
  the package has that function.
* with ``--bf16``: ``timm_autocast_bf16`` and ``ours_autocast_bf16`` (the fp32 models under
  ``torch.autocast("cpu", torch.bfloat16)``) and ``ours_optimized_bf16``
  (``optimize_for_inference(model, dtype=torch.bfloat16)``, fed bf16 images).

Parity first: every provider's output is compared with timm eager's fp32 output on the timed
images, as ``||out - ref|| / ||ref||`` (fp32 providers within 1e-4, bf16 within 5e-2). A provider
that fails, or raises while it is built or run, is reported as such and not timed.

Timing: warm-up rounds, then ``--repeats`` rounds in which each provider runs once in turn
(round-robin, so a change in the machine's load hits all alike); medians in ms and images/s, and
speedups over timm eager and over ONNX Runtime (baseline's median / provider's median, so > 1 is
faster) from the medians of the same run.

Run: ``python benchmarks/bench_cpu_model.py [--model convnext_tiny] [--batch 1 8] [--bf16]
[--threads 2] [--repeats 10] [--size 224] [--out result.json]``
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import subprocess
import tempfile
import time
import warnings
from typing import Callable, Optional

import torch

import convnext_fast
from convnext_fast import backend, extension
from convnext_fast.bench.env import cpu_name, git_commit, write_json

# Output parity with timm eager fp32 (norm-wise relative error). fp32: the providers reorder the
# same fp32 sums (fused kernels, oneDNN vs MKL GEMMs, ONNX Runtime's own kernels), which leaves
# ~1e-6 on convnext_tiny's logits; bf16: rounding activations to 8 mantissa bits through 18 blocks.
PARITY_RTOL = {"fp32": 1e-4, "bf16": 5e-2}
BASELINE = "timm_eager"
ORT = "onnxruntime"


def work_tree_changes() -> list[str]:
    """``git status --porcelain`` of the package: uncommitted code a ``+dirty`` commit measured."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "convnext_fast", "benchmarks/bench_cpu_model.py"],
                             capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return out.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def onnxruntime_version() -> Optional[str]:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


class Provider:
    """One way of running the model: a name, the dtype its parity is held to, and ``run()``."""

    def __init__(self, name: str, dtype: str, run: Callable[[], torch.Tensor], what: str):
        self.name, self.dtype, self.run, self.what = name, dtype, run, what


def eager_runner(model: torch.nn.Module, x: torch.Tensor, autocast: bool = False) -> Callable[[], torch.Tensor]:
    """``model(x)`` under ``torch.no_grad`` (and CPU bf16 autocast when asked)."""

    def run() -> torch.Tensor:
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return model(x)

    return run


def onnx_runner(timm_model: torch.nn.Module, x: torch.Tensor, directory: str) -> Callable[[], torch.Tensor]:
    """Export ``timm_model`` at x's shape and return a call running it in ONNX Runtime on x."""
    import onnxruntime as ort

    path = os.path.join(directory, f"model_{'x'.join(map(str, x.shape))}.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter on purpose (as bench_cpu_mlp.py and the ONNX tests); its deprecation notice is noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(timm_model, (x.contiguous(),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"x": x.contiguous().numpy()}

    def run() -> torch.Tensor:
        return torch.from_numpy(sess.run(None, feed)[0])

    return run


def build_models(name: str, bf16: bool) -> dict:
    """timm's model, ours with timm's weights, and ours optimized for inference (or why not)."""
    import timm

    torch.manual_seed(0)
    timm_model = timm.create_model(name, pretrained=False).eval().to(memory_format=torch.channels_last)
    ours = convnext_fast.create_model(name)
    ours.load_state_dict(timm_model.state_dict())
    ours = ours.eval().to(memory_format=torch.channels_last)
    models = {"timm": timm_model, "ours": ours, "optimized": {}, "optimized_error": {}}
    optimize = getattr(convnext_fast, "optimize_for_inference", None)
    if optimize is None:
        return models
    # A copy each: the function may rewrite the model it is given, and `ours` must stay as built.
    variants = {"fp32": {}, "bf16": {"dtype": torch.bfloat16}} if bf16 else {"fp32": {}}
    for dtype, kwargs in variants.items():
        try:
            models["optimized"][dtype] = optimize(copy.deepcopy(ours), **kwargs).eval()
        except Exception as e:  # raised again when that provider is built: a failed row, the others still run
            models["optimized_error"][dtype] = e
    return models


def provider_specs(models: dict, x: torch.Tensor, bf16: bool, use_onnx: bool, directory: str):
    """(name, dtype, description, builder) of every provider, in round-robin order."""
    specs = [
        (BASELINE, "fp32", "timm, eval, channels_last, no_grad", lambda: eager_runner(models["timm"], x)),
    ]
    if use_onnx:
        specs.append((ORT, "fp32", "timm exported (TorchScript exporter, opset 17), CPU execution provider",
                      lambda: onnx_runner(models["timm"], x, directory)))
    specs.append(("ours", "fp32", "convnext_fast.create_model + timm weights, eval, channels_last, no_grad",
                  lambda: eager_runner(models["ours"], x)))

    def optimized(dtype: str, inp: torch.Tensor):
        def build():
            if dtype in models["optimized_error"]:
                raise models["optimized_error"][dtype]
            return eager_runner(models["optimized"][dtype], inp)
        return build

    has_optimize = hasattr(convnext_fast, "optimize_for_inference")
    if has_optimize:
        specs.append(("ours_optimized", "fp32", "convnext_fast.optimize_for_inference(ours)", optimized("fp32", x)))
    if bf16:
        specs.append(("timm_autocast_bf16", "bf16", "timm under torch.autocast('cpu', bfloat16)",
                      lambda: eager_runner(models["timm"], x, autocast=True)))
        specs.append(("ours_autocast_bf16", "bf16", "ours under torch.autocast('cpu', bfloat16)",
                      lambda: eager_runner(models["ours"], x, autocast=True)))
        if has_optimize:
            x_bf16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            specs.append(("ours_optimized_bf16", "bf16",
                          "convnext_fast.optimize_for_inference(ours, dtype=torch.bfloat16), bf16 input",
                          optimized("bf16", x_bf16)))
    return specs


def interleaved_seconds(providers: list, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Per-call wall times of each provider, called round-robin ``repeats`` times after warm-up."""
    for _ in range(warmup):
        for p in providers:
            p.run()
    times = {p.name: [] for p in providers}
    for r in range(repeats):
        for p in providers:
            t0 = time.perf_counter()
            p.run()
            times[p.name].append(time.perf_counter() - t0)
        print(f"    round {r + 1}/{repeats}: " + ", ".join(f"{p.name} {times[p.name][-1] * 1e3:.1f} ms"
                                                        for p in providers), flush=True)
    return times


def run_case(name: str, models: dict, batch: int, size: int, a, directory: str) -> list[dict]:
    """Parity, then timing, of every provider at one batch size; one row per provider."""
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    rows, ready = [], []
    ref = None
    print(f"{name} batch {batch} {size}x{size} (load average {os.getloadavg()[0]:.2f})", flush=True)
    for pname, dtype, what, build in provider_specs(models, x, a.bf16, not a.no_onnx, directory):
        row = {"model": name, "batch": batch, "size": size, "provider": pname, "dtype": dtype, "what": what,
               "parity_rtol": PARITY_RTOL[dtype]}
        rows.append(row)
        t0 = time.perf_counter()
        try:
            p = Provider(pname, dtype, build(), what)
            out = p.run()
        except Exception as e:  # one provider's failure is a row, not the end of the run
            row.update(status="error", error=f"{type(e).__name__}: {e}")
            print(f"  {pname:<20} ERROR ({row['error']}); not timed", flush=True)
            continue
        row["setup_s"] = time.perf_counter() - t0
        if ref is None:  # the baseline comes first: its output is the reference
            ref = out.float()
        err = relative_error(out, ref)
        row["parity_rel_err"] = err
        if err <= PARITY_RTOL[dtype] and torch.isfinite(out).all():
            row["status"] = "ok"
            ready.append(p)
        else:
            row["status"] = "failed parity"
        print(f"  {pname:<20} ready in {row['setup_s']:.1f} s, rel. error vs timm eager fp32 {err:.2e} "
              f"(<= {PARITY_RTOL[dtype]:g}): {'ok' if row['status'] == 'ok' else 'FAILED, not timed'}", flush=True)
    print(f"  timing {len(ready)} providers: {a.warmup} warm-up + {a.repeats} rounds, round-robin", flush=True)
    times = interleaved_seconds(ready, a.warmup, a.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    for row in rows:
        if row["provider"] not in med:
            continue
        m = med[row["provider"]]
        row.update(median_ms=m * 1e3, min_ms=min(times[row["provider"]]) * 1e3,
                   times_ms=[t * 1e3 for t in times[row["provider"]]], images_per_s=batch / m)
        for base, key in ((BASELINE, "speedup_vs_timm_eager"), (ORT, "speedup_vs_onnxruntime")):
            if base in med:
                row[key] = med[base] / m
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<14} {'batch':>5} {'provider':<20} {'dtype':<5} {'rel err':>8} {'median ms':>10} "
          f"{'img/s':>8} {'x timm':>7} {'x ORT':>7}")
    for r in rows:
        head = f"{r['model']:<14} {r['batch']:>5} {r['provider']:<20} {r['dtype']:<5} "
        err = f"{r['parity_rel_err']:8.1e}" if "parity_rel_err" in r else f"{'-':>8}"
        if "median_ms" not in r:
            print(f"{head}{err} {r['status'].upper()}{': ' + r['error'] if 'error' in r else ''}")
            continue
        vs = [f"{r[k]:6.2f}x" if k in r else f"{'-':>7}" for k in ("speedup_vs_timm_eager", "speedup_vs_onnxruntime")]
        print(f"{head}{err} {r['median_ms']:10.2f} {r['images_per_s']:8.1f} {vs[0]} {vs[1]}")
    print("x timm / x ORT: the baseline's median time over the provider's (> 1: faster than the baseline)")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["convnext_tiny"],
                   help="model names known to both timm and convnext_fast (default convnext_tiny)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--size", type=int, default=224, help="image height and width (default 224)")
    p.add_argument("--bf16", action="store_true", help="also the bf16 providers (autocast, optimized bf16)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads and ONNX Runtime's intra-op threads (default: torch's count)")
    p.add_argument("--repeats", type=int, default=10, help="timed round-robin rounds (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--out", help="write the environment and the rows as JSON to this path")
    a = p.parse_args(argv)
    for flag, value in (("--threads", a.threads), ("--repeats", a.repeats), ("--size", a.size)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    if a.warmup < 0 or min(a.batch) < 1:
        p.error(f"--warmup must be >= 0 and every --batch >= 1, got {a.warmup} and {a.batch}")
    torch.set_num_threads(a.threads)
    if not a.no_onnx and onnxruntime_version() is None:
        print("onnxruntime is not installed: no ONNX Runtime provider (pip install onnxruntime onnx)")
        a.no_onnx = True
    import timm

    cpu = torch.device("cpu")
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": onnxruntime_version(),
        "timm": timm.__version__, "convnext_fast": convnext_fast.__version__, "commit": git_commit(),
        "work_tree_changes": work_tree_changes(),
        "python": platform.python_version(),
        "extension_cpu": extension.unavailable_reason("cpu") or "available",
        "extension_isa": extension.build_info().get("cpu_isa"),
        "backend_cpu": {op: backend.resolve(op, cpu) for op in ("dwconv_layer_norm", "pointwise_mlp")},
        "optimize_for_inference": hasattr(convnext_fast, "optimize_for_inference"),
        "loadavg_start": os.getloadavg(),
    }
    print(f"{env['cpu_model']}, {env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
          f"convnext_fast {env['convnext_fast']} ({env['commit']}), CPU kernels: {env['backend_cpu']}")
    result = {"benchmark": "whole-model inference on the CPU: timm eager, ONNX Runtime, convnext_fast",
              "settings": {"models": a.model, "batch": a.batch, "size": a.size, "bf16": a.bf16,
                           "repeats": a.repeats, "warmup": a.warmup},
              "environment": env, "rows": []}
    with tempfile.TemporaryDirectory() as directory:
        for name in a.model:
            models = build_models(name, a.bf16)
            for batch in a.batch:
                result["rows"] += run_case(name, models, batch, a.size, a, directory)
            del models
    env["loadavg_end"] = os.getloadavg()
    print_table(result["rows"])
    if a.out:
        write_json(a.out, result)
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
