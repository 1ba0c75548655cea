"""Compile every Triton kernel, at the configurations its launcher uses, for a GPU that need not be here.

The Triton interpreter runs code a GPU would refuse or run badly (non-power-of-2 ranges, shared
memory over the limit, register arrays spilled to local memory). Triton's ahead-of-time compiler
catches those on a machine without a GPU: this module compiles each ``aot_configs()`` entry of the
kernel modules for the named targets and reads registers, stack (spills) and shared memory from
the cubin with the ``cuobjdump`` that ships in the triton wheel.

Usage: ``python -m convnext_fast.aot_check [--arch 90 80] [--json] [--mix] [--only REGEX]``.
``--mix`` adds the instruction mix of each kernel's hot loop (``convnext_fast/sass_mix.py``: FFMA
share, moves, memory, conversion, barrier and shuffle instructions, and ``loop_mma``, the
tensor-core MMAs of the GEMM-shaped kernels), the offline measure of how close a kernel can get to
the fp32 FMA rate (or whether its dots reach the tensor cores). Must run with ``TRITON_INTERPRET``
unset (under the interpreter ``@triton.jit`` functions cannot be compiled).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .sass_mix import disassemble, hot_loop_mix
from .shapes import AOT_STAGES

KERNEL_MODULES = (
    "convnext_fast.kernels.depthwise_conv",
    "convnext_fast.kernels.layer_norm",
    "convnext_fast.kernels.dwconv_layer_norm",
    "convnext_fast.kernels.pointwise_mlp",
    "convnext_fast.kernels.block",
    "convnext_fast.kernels.patch_linear",
)

_RESOURCE_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the triton wheel at {path}")
    return str(path)


def compile_config(cfg: dict, arch: int, mix: bool = False) -> dict:
    """Compile one config for sm_<arch>; return name, arch, registers, stack bytes, shared bytes
    (and with ``mix`` the hot loop's instruction mix, ``sass_mix.LoopMix.as_dict()``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # `attrs` carries the alignment hints (tt.divisibility) the JIT would add at launch, so the
    # compiled code is the code a GPU runs.
    src = ASTSource(fn=cfg["kernel"], signature=cfg["signature"], constexprs=cfg.get("constexprs", {}),
                    attrs=cfg.get("attrs"))
    options = {"num_warps": cfg.get("num_warps", 4)}
    if "num_stages" in cfg:
        options["num_stages"] = cfg["num_stages"]
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    match = _RESOURCE_RE.search(out)
    if match is None:
        raise RuntimeError(f"could not read the resource usage of {cfg['name']}:\n{out}")
    regs, stack, shared, local = (int(g) for g in match.groups())
    row = {"name": cfg["name"], "arch": arch, "registers": regs, "stack_bytes": stack,
           "shared_bytes": max(shared, int(compiled.metadata.shared)), "local_bytes": local,
           "spills": stack > 0 or local > 0}
    if mix:
        loop = hot_loop_mix(disassemble(compiled.asm["cubin"]))
        row.update(loop.as_dict() if loop else {"loop_instructions": 0, "loop_mma": 0})
    return row


def all_configs() -> list[dict]:
    configs: list[dict] = []
    for name in KERNEL_MODULES:
        configs.extend(importlib.import_module(name).aot_configs(AOT_STAGES))
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="compute capabilities (90 = Hopper, 80 = Ampere)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    parser.add_argument("--mix", action="store_true",
                        help="also the hot loop's instruction mix (loop instructions, FFMA share, MOV, memory, "
                             "conversion, barrier and shuffle instructions, tensor-core MMAs)")
    parser.add_argument("--only", metavar="REGEX", help="only the configurations whose name matches")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled for a GPU")
    configs = [c for c in all_configs() if not args.only or re.search(args.only, c["name"])]
    rows = [compile_config(cfg, arch, args.mix) for cfg in configs for arch in args.arch]
    if args.json:
        print(json.dumps(rows))
    else:
        head = f"{'kernel config':60s} {'sm':>3s} {'regs':>5s} {'stack':>6s} {'smem':>7s}"
        if args.mix:
            head += (f" {'loop':>5s} {'FFMA%':>6s} {'MOV':>4s} {'mem':>4s} {'cvt':>4s} {'BAR':>4s} {'SHFL':>4s}"
                     f" {'MMA':>4s}")
        print(head)
        for r in rows:
            line = (f"{r['name']:60s} {r['arch']:>3d} {r['registers']:>5d} {r['stack_bytes']:>6d} "
                    f"{r['shared_bytes']:>7d}")
            if args.mix and r["loop_instructions"]:
                line += (f" {r['loop_instructions']:>5d} {100 * r['loop_ffma_share']:>5.1f}% {r['loop_mov']:>4d} "
                         f"{r['loop_memory']:>4d} {r['loop_convert']:>4d} {r['loop_barriers']:>4d} "
                         f"{r['loop_shuffles']:>4d} {r['loop_mma']:>4d}")
            print(line)
    return 1 if any(r["spills"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
