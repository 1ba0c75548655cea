"""CPU benchmark of the fused pointwise MLP (``convnext_fast.extension.mlp_forward``, the C++ kernel
in ``csrc/cpu_mlp.cpp``) against eager PyTorch and ONNX Runtime.

The MLP half of a ConvNeXt block on the (M, C) token rows of each ConvNeXt-T stage
(``convnext_fast.shapes``; M = batch * H * W): fc1 (C -> 4C), exact GELU, fc2, layer scale gamma,
residual. Providers, all on the same inputs:

* ``eager``: what timm runs, ``shortcut + gamma * F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)``
  (under ``torch.inference_mode``);
* ``ours``: ``extension.mlp_forward`` (row blocks, the hidden tile kept in cache, fused epilogues);
* ``onnxruntime`` (when installed, float32 only): the same MLP exported with ``torch.onnx.export``
  (TorchScript exporter, opset 17), ``intra_op_num_threads = torch.get_num_threads()`` and thread
  spinning off (spinning threads would steal the cores from the provider timed next).

Each provider's output is checked against eager first. Then they are timed round-robin (eager,
ours, onnxruntime, eager, ...) after warm-up, so a change in the machine's load hits all alike; the
report gives medians and minima and the speedups of ours over each provider from the medians of
the same run. Targets (float32, batch 8): >= 1.3x eager at stages 1-2, >= 1.0x at stages 3-4.

Run: ``python benchmarks/bench_cpu_mlp.py [--batch 8] [--dtype float32] [--threads 1 2] [--out result.json]``
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from convnext_fast import extension
from convnext_fast.bench.env import write_json
from convnext_fast.shapes import CONVNEXT_T_STAGES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Parity of each provider's output with eager's, relative to the output's largest magnitude: fp32
# rounding of two 4C-long dot products; bf16: a few bf16 ulps (eager rounds h, GELU, fc2, gamma*y).
PARITY_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2.0 ** -5}
TARGETS = {1: 1.3, 2: 1.3, 3: 1.0, 4: 1.0}  # stage -> speedup over eager wanted (float32, batch 8)


class _Mlp(torch.nn.Module):
    """The MLP as a module, for the ONNX export."""

    def __init__(self, w1, b1, w2, b2, gamma):
        super().__init__()
        self.w1, self.b1, self.w2, self.b2, self.gamma = (torch.nn.Parameter(t, requires_grad=False)
                                                          for t in (w1, b1, w2, b2, gamma))

    def forward(self, x, shortcut):
        return eager(x, self.w1, self.b1, self.w2, self.b2, self.gamma, shortcut)


def eager(x, w1, b1, w2, b2, gamma, shortcut):
    return shortcut + gamma * F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def ours(x, w1, b1, w2, b2, gamma, shortcut):
    return extension.mlp_forward(x, w1, b1, w2, b2, gamma, shortcut, None, 1, False)[0]


def onnx_provider(args, directory: str):
    """A callable running the MLP in ONNX Runtime on args' shapes, or (None, why not)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return None, f"onnxruntime is not installed ({e})"
    x, w1, b1, w2, b2, gamma, shortcut = args
    path = os.path.join(directory, f"mlp_{x.shape[0]}x{x.shape[1]}.onnx")
    torch.onnx.export(_Mlp(w1, b1, w2, b2, gamma), (x, shortcut), path, dynamo=False, opset_version=17,
                      input_names=["x", "shortcut"], output_names=["out"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy(), "shortcut": shortcut.numpy()}

    def run(*_):
        return torch.from_numpy(sess.run(None, feed)[0])

    return run, ""


def make_args(batch: int, C: int, H: int, W: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    M, Hd = batch * H * W, 4 * C

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    # x is the LayerNorm's output (unit scale); weights at their init scale; gamma as trained.
    return (rnd(M, C), rnd(Hd, C, scale=C ** -0.5), rnd(Hd, scale=0.1), rnd(C, Hd, scale=Hd ** -0.5),
            rnd(C, scale=0.1), rnd(C, scale=0.5), rnd(M, C))


def interleaved_seconds(fns: dict, args, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Per-call wall times of each provider, called round-robin `repeats` times after warm-up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(*args)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)
    return times


def run_stage(stage: int, C: int, H: int, W: int, batch: int, dtype: torch.dtype, warmup: int, repeats: int,
              use_onnx: bool, directory: str) -> dict:
    args = make_args(batch, C, H, W, dtype)
    M, Hd = args[0].shape[0], 4 * C
    fns = {"eager": eager, "ours": ours}
    notes = {}
    if use_onnx and dtype == torch.float32:
        fn, why = onnx_provider(args, directory)
        if fn is None:
            notes["onnxruntime"] = why
        else:
            fns["onnxruntime"] = fn
    elif use_onnx:
        notes["onnxruntime"] = "float32 only"
    ref = eager(*args).float()
    parity = {}
    for name, fn in fns.items():
        err = ((fn(*args).float() - ref).abs().max() / ref.abs().max()).item()
        parity[name] = err
        if err > PARITY_RTOL[dtype]:
            raise AssertionError(f"stage {stage}: {name} differs from eager by {err:.3g} (relative), more than "
                                 f"{PARITY_RTOL[dtype]:g}")
    times = interleaved_seconds(fns, args, warmup, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = 4.0 * M * C * Hd
    rec = {
        "stage": stage, "C": C, "H": H, "W": W, "M": M, "hidden": Hd, "flops": flops,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "min_ms": {k: min(v) * 1e3 for k, v in times.items()},
        "gflops_median": {k: flops / v / 1e9 for k, v in med.items()},
        "speedup_vs": {k: med[k] / med["ours"] for k in med if k != "ours"},
        "parity_rel_err": parity,
        "notes": notes,
    }
    if stage in TARGETS and dtype == torch.float32 and batch == 8:  # the targets' setting
        rec["target_vs_eager"] = TARGETS[stage]
    return rec


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="torch.set_num_threads values to run (default: torch's current count)")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3, 4], help="ConvNeXt-T stages (1-4)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per provider (default 15)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--out", help="write the results as JSON to this path")
    a = p.parse_args(argv)
    dtype = DTYPES[a.dtype]
    reason = extension.unavailable_reason("cpu")
    if reason:
        raise SystemExit(f"the extension's CPU kernels are not available: {reason}")
    result = {
        "benchmark": "pointwise MLP forward (fc1, GELU, fc2, layer scale, residual), ConvNeXt-T stages",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "dtype": a.dtype, "batch": a.batch, "repeats": a.repeats,
        "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "extension_isa": extension.build_info().get("cpu_isa"),
        "loadavg_start": os.getloadavg(), "runs": [],
    }
    with tempfile.TemporaryDirectory() as directory, torch.inference_mode():
        for threads in a.threads:
            torch.set_num_threads(threads)
            print(f"threads={threads} dtype={a.dtype} batch={a.batch} (load average {os.getloadavg()[0]:.1f})")
            print(f"{'stage':>5} {'C':>4} {'M':>6} {'eager ms':>9} {'ours ms':>8} {'ort ms':>8} {'vs eager':>8} "
                  f"{'vs ort':>7} {'ours GF/s':>9} target")
            for stage in a.stages:
                C, H, W = CONVNEXT_T_STAGES[stage - 1]
                rec = run_stage(stage, C, H, W, a.batch, dtype, a.warmup, a.repeats, not a.no_onnx, directory)
                rec["threads"] = threads
                result["runs"].append(rec)
                med, sp = rec["median_ms"], rec["speedup_vs"]
                ort_ms = f"{med['onnxruntime']:8.2f}" if "onnxruntime" in med else f"{'-':>8}"
                ort_sp = f"{sp['onnxruntime']:6.2f}x" if "onnxruntime" in sp else f"{'-':>7}"
                target = rec.get("target_vs_eager")
                met = "" if target is None else f">= {target}x {'met' if sp['eager'] >= target else 'NOT met'}"
                print(f"{stage:>5} {C:>4} {rec['M']:>6} {med['eager']:9.2f} {med['ours']:8.2f} {ort_ms} "
                      f"{sp['eager']:7.2f}x {ort_sp} {rec['gflops_median']['ours']:9.1f} {met}", flush=True)
    result["loadavg_end"] = os.getloadavg()
    if a.out:
        write_json(a.out, result)
        print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
