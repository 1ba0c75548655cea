"""The instruction mix of a kernel's hot loop, read from its SASS: what a GPU will issue, seen without one.

A depthwise convolution in bf16 with fp32 accumulation is bound by the fp32 FMA rate on a Hopper GPU,
not by memory (``convnext_fast/bench/roofline.py``), and every SM sub-partition issues one warp
instruction per clock: each instruction that is not an FFMA (a load, a bf16 -> fp32 conversion, an
address or mask computation, a register move) takes an issue slot from the FMAs. The FFMA share of
the instructions a kernel's main loop issues is therefore a ceiling on the fraction of the fp32
FMA rate it can reach, and a way to compare kernel variants on a machine with no GPU.

This module disassembles a cubin with the ``nvdisasm`` that ships in the triton wheel, finds the
loops (a branch back to an earlier label), and counts the opcodes of the hot one (the most
tensor-core MMAs, then the most FFMAs; see :func:`hot_loop_mix`). For the GEMM-shaped kernels (the
pointwise MLP) ``loop_mma`` counts the tensor-core instructions of that loop (``HGMMA``, the sm_90
warpgroup MMA, and ``HMMA``, the warp-level MMA of sm_80 and of small sm_90 tiles): zero means the
dot fell back to FMAs. Counts are static: a conditional block inside the loop counts as if it
always ran, and a loop nested in the hot loop counts once (so the mix of a kernel whose FMAs sit in
an inner loop that runs many times per outer iteration, like the fused backward's conv recompute,
understates its FFMA share). ``python -m convnext_fast.aot_check --mix`` prints the table for every
kernel configuration.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoopMix", "disassemble", "hot_loop_mix"]

_LABEL_RE = re.compile(r"^\s*(\.L_x_\d+):")
# "        /*1540*/               @P5 BRA `(.L_x_0) ;"  -> predicate, opcode, operands
_INSTR_RE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_BRANCH_TARGET_RE = re.compile(r"`\((\.L_x_\d+)\)")

# Opcode families reported as columns (base mnemonic, before the first '.').
CONVERT_OPS = ("SHF", "PRMT", "LOP3", "F2F", "F2FP", "I2F", "F2I", "HADD2")
MEMORY_OPS = ("LDG", "STG", "LDS", "STS", "LDSM", "LDL", "STL")
# Tensor-core matrix multiply-accumulate (16-bit and tf32 operands).
MMA_OPS = ("HGMMA", "HMMA")


@dataclass(frozen=True)
class LoopMix:
    """Static opcode counts of one loop body (``opcodes``: base mnemonic -> count)."""

    instructions: int
    opcodes: Counter

    @property
    def ffma(self) -> int:
        return self.opcodes["FFMA"]

    @property
    def ffma_share(self) -> float:
        """FFMAs / instructions: the most of the fp32 FMA rate this loop can reach."""
        return self.ffma / self.instructions if self.instructions else 0.0

    @property
    def mma(self) -> int:
        """Tensor-core MMA instructions (HGMMA / HMMA) in the loop."""
        return self.count(MMA_OPS)

    def count(self, families: tuple[str, ...]) -> int:
        return sum(self.opcodes[f] for f in families)

    def as_dict(self) -> dict:
        return {"loop_instructions": self.instructions, "loop_ffma": self.ffma,
                "loop_ffma_share": round(self.ffma_share, 4), "loop_mov": self.opcodes["MOV"],
                "loop_memory": self.count(MEMORY_OPS), "loop_convert": self.count(CONVERT_OPS),
                "loop_barriers": self.opcodes["BAR"], "loop_shuffles": self.opcodes["SHFL"],
                "loop_mma": self.mma}


def _parse(sass: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(instructions as (opcode, operands), label -> index of the instruction after it)."""
    instrs: list[tuple[str, str]] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        m = _LABEL_RE.match(line)
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = _INSTR_RE.match(line)
        if m:
            instrs.append((m.group(1).split(".")[0], m.group(2)))
    return instrs, labels


def hot_loop_mix(sass: str) -> LoopMix | None:
    """The opcode mix of the hot loop in ``sass`` (nvdisasm output), or None if it has no loop.

    The hot loop is the one holding the most tensor-core MMAs (a GEMM's main loop), then the most
    FFMAs, the innermost of those that hold the same numbers (an outer loop around an inner FMA
    loop holds the same FFMAs plus its own overhead, which runs once per inner loop); without MMAs
    or FFMAs anywhere, the largest loop.
    """
    instrs, labels = _parse(sass)
    loops: list[tuple[int, int]] = []
    for i, (op, operands) in enumerate(instrs):
        if op != "BRA":
            continue
        m = _BRANCH_TARGET_RE.search(operands)
        start = labels.get(m.group(1)) if m else None
        if start is not None and start < i:  # a branch back: a loop (the 1-instruction trap loop has start == i)
            loops.append((start, i))
    if not loops:
        return None

    def weight(loop: tuple[int, int]) -> tuple[int, int]:
        body = instrs[loop[0]:loop[1] + 1]
        return sum(op in MMA_OPS for op, _ in body), sum(op == "FFMA" for op, _ in body)

    counts = {loop: weight(loop) for loop in loops}
    if max(counts.values()) > (0, 0):
        start, end = max(loops, key=lambda lp: (counts[lp], -(lp[1] - lp[0])))
    else:
        start, end = max(loops, key=lambda lp: lp[1] - lp[0])
    body = instrs[start:end + 1]
    return LoopMix(len(body), Counter(op for op, _ in body))


def _nvdisasm() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not path.exists():
        raise FileNotFoundError(f"nvdisasm not found in the triton wheel at {path}")
    return str(path)


def disassemble(cubin: bytes) -> str:
    """The SASS text of a cubin (``nvdisasm -c``: code sections only)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_nvdisasm(), "-c", f.name], capture_output=True, text=True, check=True).stdout
