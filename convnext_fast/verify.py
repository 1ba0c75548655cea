"""``python -m convnext_fast verify``: the full parity check, on this machine's GPU, of the Triton
kernels that ``auto`` takes there only after they passed, against the float64 reference.

``auto`` checks each op family's kernels on first use on a GPU at small sizes (the device record,
:mod:`convnext_fast.autotune`; ``python -m convnext_fast tune`` does it ahead of time). This command
is the full check at ConvNeXt's real sizes: it tells you in a minute or two whether the kernels
compute the right thing on your GPU, with your torch and Triton. A kernel that fails here is marked
failed in the device record, so that ``auto`` does not use it on this GPU:

* ``pointwise_mlp``: the fused MLP half (fc1, GELU, fc2, layer scale, residual), the output and
  every gradient, at ConvNeXt-T's four stages and at widths that are not powers of two;
* ``patch_linear``: the stem, downsampling and head patch GEMM with its LayerNorms;
* ``folded_block``: :func:`~convnext_fast.optimize_for_inference` under the ``triton`` backend (the
  one-kernel block up to width 256, the two fused ops beyond and for V2, the patch layers)
  against the model it was made from.

Each output must pass both of :mod:`convnext_fast.parity`'s criteria against the float64 reference:
its error over the norm and its largest elementwise error, each at most twice PyTorch's own in that
dtype plus a small allowance (one wrong tile can hide inside a norm).

Without a GPU, ``--device cpu`` with ``TRITON_INTERPRET=1`` runs the same checks at sizes Triton's
interpreter finishes in seconds (bfloat16 is left out there: the interpreter's bf16 ``tl.dot`` is
not the GPU's). Exit status: 0 when every check passed, 1 when one failed, 2 when the checks cannot
run here.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from . import parity, reference
from .backend import available_backends, use_backend
from .inference import FoldedBlock, FoldedHead, FoldedPatchConv, optimize_for_inference
from .mlp import pointwise_mlp
from .models import create_model
from .patch_linear import kernel_backend, patch_linear, patch_linear_composite
from .shapes import CONVNEXT_T_STAGES

__all__ = ["OPS", "Check", "checks_for", "run_checks", "summarize", "randomized", "main"]

# The ops a check speaks for (the ops the shipped defaults do not trust without a check on the GPU).
OPS = ("pointwise_mlp", "patch_linear", "folded_block")
GPU_DTYPES = ("bfloat16", "float16", "float32")
INTERPRETER_DTYPES = ("float32", "float16")

# output name -> (ours, PyTorch's own result in the dtype, float64 reference)
Outputs = dict[str, tuple[Tensor, Tensor, Tensor]]


@dataclass(frozen=True)
class Check:
    """One parity check: ``run(device, dtype)`` returns the outputs to compare and a note on what ran."""

    op: str
    what: str
    dtype: str
    run: Callable[[torch.device, torch.dtype], tuple[Outputs, str]]


def _randn(g: torch.Generator, device: torch.device, *size: int, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(size, generator=g, dtype=torch.float64)).to(device)


def _around_one(g: torch.Generator, device: torch.device, n: int) -> Tensor:
    """Scales in [0.5, 1.5): a layer scale or LayerNorm weight that a wrong fold cannot hide behind."""
    return (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).to(device)


def _mlp_outputs(shape: tuple[int, int, int, int], layer_scale: bool, residual: bool, device: torch.device,
                 dtype: torch.dtype) -> tuple[Outputs, str]:
    """pointwise_mlp on the triton backend: the output and the gradient of every input."""
    n, c, h, w = shape
    hidden = 4 * c
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    inputs = {"x": _randn(g, device, n, c, h, w).contiguous(memory_format=cl),
              "fc1_weight": _randn(g, device, hidden, c, scale=c ** -0.5),
              "fc1_bias": _randn(g, device, hidden, scale=0.1),
              "fc2_weight": _randn(g, device, c, hidden, scale=hidden ** -0.5),
              "fc2_bias": _randn(g, device, c, scale=0.1)}
    if layer_scale:
        inputs["gamma"] = _around_one(g, device, c)
    if residual:
        inputs["shortcut"] = _randn(g, device, n, c, h, w).contiguous(memory_format=cl)
    grad_out = _randn(g, device, n, c, h, w)

    def outputs(fn: Callable[..., Tensor], dt: torch.dtype) -> dict[str, Tensor]:
        leaves = {k: v.detach().to(dt).requires_grad_(True) for k, v in inputs.items()}
        y = fn(**leaves)
        grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
        return {"y": y, **{f"grad_{k}": gr for k, gr in zip(leaves, grads)}}

    ref = outputs(reference.pointwise_mlp, torch.float64)
    low = outputs(reference.pointwise_mlp, dtype)
    with use_backend("triton"):
        ours = outputs(pointwise_mlp, dtype)
    return {k: (ours[k], low[k], ref[k]) for k in ref}, "triton kernels, forward and backward"


def _patch_outputs(shape: tuple[int, int, int, int], k: int, out_channels: int, in_norm: bool, out_norm: bool,
                   device: torch.device, dtype: torch.dtype) -> tuple[Outputs, str]:
    """patch_linear on the triton backend (inference: forward only)."""
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = _randn(g, device, n, c, h, w).contiguous(memory_format=torch.channels_last)
    weight_t = _randn(g, device, k * k * c, out_channels, scale=(k * k * c) ** -0.5)
    bias = _randn(g, device, out_channels, scale=0.1)
    out_weight = _around_one(g, device, out_channels) if out_norm else None
    out_bias = _randn(g, device, out_channels, scale=0.1) if out_norm else None

    def output(fn: Callable[..., Tensor], dt: torch.dtype) -> Tensor:
        cast = lambda t: None if t is None else t.to(dt)  # noqa: E731
        with torch.no_grad():
            return fn(cast(x), cast(weight_t), cast(bias), k, in_eps=1e-6 if in_norm else None,
                      out_weight=cast(out_weight), out_bias=cast(out_bias), out_eps=1e-6)

    with use_backend("triton"):
        runs = kernel_backend(device, dtype)
        if runs != "triton":
            raise RuntimeError(f"the triton patch kernel does not run for {dtype} on {device.type} here")
        ours = output(patch_linear, dtype)
    return {"y": (ours, output(patch_linear_composite, dtype), output(patch_linear_composite, torch.float64))}, \
        "triton kernel"


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in eval mode with non-trivial LayerNorm affines, layer scales and GRN parameters
    (in place), so that a wrong fold of them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or ".norm." in name or "grn" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _model_outputs(name: str, depths: Optional[tuple[int, ...]], batch: int, resolution: int,
                   device: torch.device, dtype: torch.dtype) -> tuple[Outputs, str]:
    """optimize_for_inference(model, dtype) made and run under the triton backend, against the
    model itself (reference backend) in float64 and in the dtype."""
    g = torch.Generator().manual_seed(0)
    kwargs = {} if depths is None else {"depths": depths}
    model = randomized(create_model(name, **kwargs)).to(device).to(memory_format=torch.channels_last)
    x = _randn(g, device, batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with use_backend("reference"):
            ref = copy.deepcopy(model).double()(x)
            low = copy.deepcopy(model).to(dtype)(x.to(dtype))
        with use_backend("triton"):
            optimized = optimize_for_inference(model, dtype=dtype)
            ours = optimized(x.to(dtype))
    blocks = [m for m in optimized.modules() if isinstance(m, FoldedBlock)]
    patches = sum(isinstance(m, FoldedPatchConv) for m in optimized.modules())
    head = sum(isinstance(m, FoldedHead) for m in optimized.modules())
    if not patches or not head:
        raise RuntimeError(f"optimize_for_inference folded {patches} patch layers and {head} heads under the "
                           "triton backend: the patch kernel was not taken")
    one_kernel = sum(b.one_kernel_ok for b in blocks)
    note = f"{len(blocks)} blocks ({one_kernel} as one kernel), {patches} patch layers, folded head"
    return {"logits": (ours, low, ref)}, note


def checks_for(device_type: str, dtypes: Optional[Sequence[str]] = None, ops: Sequence[str] = OPS) -> list[Check]:
    """The checks for ``ops`` in ``dtypes``: ConvNeXt's real sizes on a GPU; on the CPU (Triton's
    interpreter) the same code paths at tiny sizes."""
    gpu = device_type == "cuda"
    dtypes = tuple(dtypes or (GPU_DTYPES if gpu else INTERPRETER_DTYPES))
    if gpu:
        # batch 4 at the four ConvNeXt-T stages; widths that are no power of two (atto 40, 100,
        # V2-huge 352); the op without layer scale and residual
        mlp = [((4,) + s, True, True) for s in CONVNEXT_T_STAGES]
        mlp += [((2, 40, 13, 13), True, True), ((3, 100, 9, 11), True, True), ((2, 352, 7, 7), True, True),
                ((2,) + CONVNEXT_T_STAGES[0], False, False)]
        # stems of ConvNeXt-T, atto and V2-huge (output LayerNorm); downsamplings (input LayerNorm)
        # at the first and last ConvNeXt-T transition and at odd sizes; a 1000-class head
        patch = [((2, 3, 224, 224), 4, 96, False, True), ((2, 3, 64, 64), 4, 40, False, True),
                 ((2, 3, 64, 64), 4, 352, False, True), ((2, 96, 56, 56), 2, 192, True, False),
                 ((2, 384, 14, 14), 2, 768, True, False), ((3, 100, 10, 13), 2, 200, True, False),
                 ((4, 768, 1, 1), 1, 1000, False, False)]
        models = [("convnext_tiny", None, 2, 224), ("convnext_atto", None, 2, 224), ("convnextv2_atto", None, 2, 128)]
    else:
        mlp = [((1, 96, 4, 4), True, True), ((2, 40, 3, 5), True, True), ((1, 100, 3, 3), False, False)]
        patch = [((1, 3, 16, 16), 4, 40, False, True), ((1, 40, 6, 7), 2, 80, True, False),
                 ((2, 320, 1, 1), 1, 10, False, False)]
        models = [("convnext_atto", (1, 1, 1, 1), 1, 32), ("convnextv2_atto", (1, 1, 1, 1), 1, 32)]
    shape_text = lambda s: "x".join(map(str, s))  # noqa: E731
    out: list[Check] = []
    for dtype in dtypes:
        if "pointwise_mlp" in ops:
            for shape, layer_scale, residual in mlp:
                terms = "gamma, shortcut" if layer_scale else "no gamma, no shortcut"
                out.append(Check("pointwise_mlp", f"{shape_text(shape)} {terms}", dtype,
                                 functools.partial(_mlp_outputs, shape, layer_scale, residual)))
        if "patch_linear" in ops:
            for shape, k, o, in_norm, out_norm in patch:
                norms = "input LN" if in_norm else "output LN" if out_norm else "no LN"
                out.append(Check("patch_linear", f"{shape_text(shape)} k={k} O={o} {norms}", dtype,
                                 functools.partial(_patch_outputs, shape, k, o, in_norm, out_norm)))
        if "folded_block" in ops:
            for name, depths, batch, res in models:
                depth_text = "" if depths is None else f" depths {depths}"
                out.append(Check("folded_block", f"{name}{depth_text} {batch}x3x{res}x{res}", dtype,
                                 functools.partial(_model_outputs, name, depths, batch, res)))
    return out


@contextlib.contextmanager
def _true_fp32():
    """PyTorch's float32 results in true float32: cuDNN convolutions default to TF32 on GPUs since
    Ampere, which would loosen the float32 tolerance (set from PyTorch's own error) tenfold."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_checks(checks: Sequence[Check], device: torch.device, *, log: Callable[[str], None] = print) -> list[dict]:
    """Run each check (an exception is a failed check, recorded with its message) and log a line
    per check as it ends. Returns one row per check: op, what, dtype, passed, outputs (per output:
    :func:`convnext_fast.parity.compare`'s numbers), note, error, seconds."""
    with _true_fp32():
        return [_run_one(check, device, log) for check in checks]


def _run_one(check: Check, device: torch.device, log: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    row = {"op": check.op, "what": check.what, "dtype": check.dtype, "passed": False, "outputs": {}, "note": "",
           "error": None}
    try:
        outputs, row["note"] = check.run(device, getattr(torch, check.dtype))
        verdicts = {name: parity.compare(*triple, check.dtype) for name, triple in outputs.items()}
        row["outputs"] = verdicts
        row["passed"] = all(v["passed"] for v in verdicts.values())
        name, worst = max(verdicts.items(), key=lambda kv: max(kv[1]["rel_err"] / kv[1]["tol"],
                                                                kv[1]["max_abs_err"] / kv[1]["max_abs_tol"]))
        detail = (f"worst {name}: {worst['rel_err']:.2e} (tol {worst['tol']:.2e}), max abs "
                  f"{worst['max_abs_err']:.2e} (tol {worst['max_abs_tol']:.2e})")
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported with the others
        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        detail = row["error"]
    row["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"{'ok' if row['passed'] else 'FAILED':>6}  {check.op:<14} {check.dtype:<9} {check.what:<46} {detail}  "
        f"({row['seconds']:.1f} s)")
    return row


def summarize(results: Sequence[dict]) -> dict[str, dict]:
    """Per op: checks passed, checks run, and whether every one passed."""
    summary: dict[str, dict] = {}
    for row in results:
        s = summary.setdefault(row["op"], {"passed": 0, "checks": 0})
        s["checks"] += 1
        s["passed"] += bool(row["passed"])
    for s in summary.values():
        s["all_passed"] = s["passed"] == s["checks"]
    return summary


def _machine(device: torch.device) -> dict:
    from .bench.env import cpu_name, git_commit

    import convnext_fast

    meta = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "device_type": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda or "n/a",
            "convnext_fast": convnext_fast.__version__, "git_commit": git_commit(),
            "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1"}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = "n/a"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        meta["compute_capability"] = f"{major}.{minor}"
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_fast verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None,
                        help="cuda (default when a GPU is there) or cpu (Triton's interpreter, TRITON_INTERPRET=1)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {', '.join(OPS)} (default: all)")
    parser.add_argument("--dtypes", default=None,
                        help=f"comma-separated (default: {','.join(GPU_DTYPES)} on a GPU, "
                             f"{','.join(INTERPRETER_DTYPES)} on the interpreter)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write every check's numbers here")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown or not ops:
        parser.error(f"--ops: unknown {unknown or 'empty list'}; choose from {', '.join(OPS)}")
    dtypes = None if args.dtypes is None else [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes or () if d not in GPU_DTYPES]
    if bad or dtypes == []:
        parser.error(f"--dtypes: unknown {bad or 'empty list'}; choose from {', '.join(GPU_DTYPES)}")
    reason = available_backends(device.type).get("triton", "no triton backend")
    if reason:
        print(f"convnext_fast verify: cannot run the Triton kernels on {device.type} here: {reason}", file=sys.stderr)
        return 2

    meta = _machine(device)
    print(f"convnext_fast {meta['convnext_fast']} ({meta['git_commit']}), torch {meta['torch']}, "
          f"triton {meta['triton']}, on {meta['device_name']}")
    print("each output against the float64 reference: error over the norm and largest error, each <= 2 x "
          "PyTorch's own in the dtype + a small allowance (convnext_fast.parity)")
    results = run_checks(checks_for(device.type, dtypes, ops), device)
    summary = summarize(results)
    print()
    for op, s in summary.items():
        print(f"{op:<14} {'passed' if s['all_passed'] else 'FAILED'} {s['passed']}/{s['checks']}")
    if device.type == "cuda":
        from . import autotune

        where = autotune.record_failures(device, results)
        if where:
            print(f"the failed kernels are marked in the device record ({where}): auto does not use them here")
    if args.json:
        from .bench.env import write_json

        write_json(args.json, {"meta": meta, "summary": summary, "checks": results})
        print(f"written: {args.json}")
    failed = [op for op, s in summary.items() if not s["all_passed"]]
    if failed:
        print(f"\nFailed: {', '.join(failed)}. Please report the output above (with --json) as an issue; keep the "
              "default backend (auto), which does not run a kernel that failed on this GPU.")
        return 1
    if device.type == "cuda":
        print("\nAll passed on this GPU. auto takes these kernels where they are timed faster than PyTorch "
              "(python -m convnext_fast tune prints where); to run them everywhere: convnext_fast.set_backend('triton').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
