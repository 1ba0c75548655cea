"""``python -m convnext_fast tune``: fill this device's record ahead of time for a model's shapes, and
print the choices and times.

``auto`` checks and times the kernels on first use (:mod:`convnext_fast.autotune`); this command
does it before a job starts, for containers and clusters: run it once per GPU model with the
model, batch and dtype of the job, then copy the record (its path is printed) into the cache
directory (``CONVNEXT_FAST_CACHE``) of the other machines with that GPU, or ship it beside the job.
Under torch.distributed, where ``auto`` never measures, every rank then reads the same record.

    python -m convnext_fast tune --model convnext_tiny --batch 256 --dtype bfloat16 --train

It verifies every op family's kernels on the device in the dtype, then runs the model (forward,
and backward with ``--train``; without it, the model and its ``optimize_for_inference`` copy in
eval mode) under ``auto`` with measuring on, so that each op's shapes are timed. Without a GPU,
``--device cpu`` with ``TRITON_INTERPRET=1`` runs the same code path through Triton's interpreter
against the compiled CPU kernels (tiny sizes: ``--size 32``; float32: the interpreter's bfloat16
``tl.dot`` is not the GPU's); its times say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Optional, Sequence

import torch

from . import autotune, capabilities, record

__all__ = ["main", "tune"]


def _cpu_identity(device: torch.device) -> tuple[str, str]:
    return f"cpu {platform.machine()} (Triton interpreter)", "cpu"


def tune(model_name: str, batch: int, dtype: torch.dtype, train: bool, size: int, device: torch.device,
         log=print) -> record.Record:
    """Verify every op family on ``device`` in ``dtype``, then run ``model_name`` at ``batch`` x 3 x
    ``size`` x ``size`` under ``auto`` with measuring on. Returns the device's record."""
    from .backend import use_backend
    from .inference import optimize_for_inference
    from .models import create_model

    identity = autotune.config().identity(device)
    rec = autotune.store_for(identity)
    log(f"device: {identity[0]} (capability {identity[1]}); record: {rec.path}")
    t0 = time.perf_counter()
    for op in capabilities.OPS:
        for b in autotune.candidate_order(device.type):
            if capabilities.reason(op, b, dtype) or autotune._backend_reason(op, b, device.type):
                continue
            autotune._verdict(rec, identity, op, str(dtype).removeprefix("torch."), b, device, True)
    log(f"parity checks: {time.perf_counter() - t0:.1f} s")
    torch.manual_seed(0)
    model = create_model(model_name).to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with use_backend("auto"):
        if train:
            model.train()
            model(x).float().sum().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
                optimize_for_inference(model)(x)
    log(f"timing at the model's shapes: {time.perf_counter() - t0:.1f} s")
    return rec


def _report(rec: record.Record, dtype: str, log=print) -> None:
    log("")
    log("parity verdicts (per op, backend):")
    for op, by_dtype in sorted(rec.verdicts.items()):
        for backend, v in sorted(by_dtype.get(dtype, {}).items()):
            state = (f"error: {v['error']}" if v.get("error") else "passed" if v.get("passed")
                     else f"FAILED ({', '.join(v.get('failed', []))})")
            log(f"  {op:<18} {backend:<7} {state}  ({v.get('checks', 0)} checks, {v.get('seconds', 0):.1f} s)")
    log("")
    log("choices (op, pass, shape: chosen; median ms per candidate):")
    for key, entry in sorted(rec.choices.items()):
        op, pass_, dt, shape = key.split("|")
        if dt != dtype:
            continue
        if entry.get("error"):
            log(f"  {op:<18} {pass_:<8} {shape:<24} error: {entry['error']} (defaults used)")
            continue
        times = ", ".join(f"{b} {ms:.3f}" for b, ms in sorted(entry["times_ms"].items(), key=lambda kv: kv[1]))
        log(f"  {op:<18} {pass_:<8} {shape:<24} {entry['choice']:<9} ({times})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_fast tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_tiny", help="a model name (convnext_fast.list_models())")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--train", action="store_true", help="also time the backward passes (a training step)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--device", default=None,
                        help="cuda (default when a GPU is there) or cpu (Triton's interpreter, TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.size < 32:
        parser.error("--batch must be at least 1 and --size at least 32")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    from .backend import available_backends

    if device.type == "cuda" and not torch.cuda.is_available():
        print("convnext_fast tune: no CUDA device is available (use --device cpu with TRITON_INTERPRET=1)",
              file=sys.stderr)
        return 2
    if device.type == "cpu":
        reason = available_backends("cpu")["triton"]
        if reason:
            print(f"convnext_fast tune: cannot run the Triton kernels on the CPU: {reason}", file=sys.stderr)
            return 2
        # The interpreter path: the real code with the CPU as the "device" and the interpreter as
        # its Triton, against the compiled CPU kernels.
        autotune.configure(tuned=frozenset({"cpu"}), identity=_cpu_identity,
                           order={**autotune.config().order, "cpu": ("triton", "cpu")})
    os.environ[autotune.ENV_VAR] = "1"  # tune measures whatever the environment says
    rec = tune(args.model, args.batch, dtype, args.train, args.size, device)
    _report(rec, args.dtype)
    print(f"\nrecord: {rec.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
