"""The hot-loop instruction mix read from SASS (``convnext_fast/sass_mix.py``): the parser on
hand-written listings, and on the real sm_90 code of the 7x7 depthwise forward, whose row loop
must hold exactly the K*K*PW*channels FFMAs its source unrolls."""
import json
import os
import subprocess
import sys

import pytest

from convnext_fast.sass_mix import hot_loop_mix

# nvdisasm's format: "/*addr*/ [@predicate] OPCODE operands ;" and ".L_x_N:" labels.
NESTED = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0020*/                   LDG.E R3, desc[UR4][R4.64] ;
.L_x_1:
        /*0030*/                   FFMA R5, R3, R6, R5 ;
        /*0040*/                   FFMA R7, R3, R8, R7 ;
        /*0050*/                   ISETP.NE.AND P0, PT, R2, R9, PT ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   MOV R10, R5 ;
        /*0080*/              @!P1 BRA `(.L_x_0) ;
        /*0090*/                   EXIT ;
.L_x_2:
        /*00a0*/                   BRA `(.L_x_2);
"""


def test_the_inner_fma_loop_is_the_hot_one():
    mix = hot_loop_mix(NESTED)
    assert mix.instructions == 4  # .L_x_1 .. its branch; not the outer loop, not the trap loop
    assert mix.ffma == 2 and mix.ffma_share == pytest.approx(0.5)
    assert mix.opcodes["ISETP"] == 1 and mix.opcodes["BRA"] == 1


def test_without_ffma_the_largest_loop_counts_and_no_loop_gives_none():
    no_fma = NESTED.replace("FFMA", "FADD")
    mix = hot_loop_mix(no_fma)
    assert mix.instructions == 8 and mix.ffma == 0  # .L_x_0 .. the outer branch
    straight = "\n".join(line for line in NESTED.splitlines() if "BRA" not in line)
    assert hot_loop_mix(straight) is None
    forward_only = NESTED.replace("@P0 BRA `(.L_x_1)", "@P0 BRA `(.L_x_2)").replace("@!P1 BRA `(.L_x_0)", "NOP")
    assert hot_loop_mix(forward_only) is None  # a branch ahead is no loop; the trap loop is skipped


def test_dwconv_forward_row_loop_on_sm90():
    pytest.importorskip("triton")
    import torch

    from convnext_fast.kernels.depthwise_conv import _px_config

    pw = _px_config(96, 56, 7, torch.bfloat16)[0]
    cpt = 2  # channels per thread of the px kernel when K <= 7 and W % 7 == 0 (see _px_config)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "convnext_fast.aot_check", "--json", "--mix", "--arch", "90",
                           "--only", "^dwconv_fwd_C96_HW56_K7_bf16_bias$"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, = json.loads(proc.stdout.strip().splitlines()[-1])
    # one input row per iteration feeds K output rows x K taps x PW columns x cpt channels per thread;
    # the loop body also holds the border rows' 0 * w products (the NaN-weight semantics), which run
    # only where a window overlaps the padding: fewer than one more row's worth
    taps = 7 * 7 * pw * cpt
    assert taps <= row["loop_ffma"] < taps + 7 * pw * cpt
    assert 0 < row["loop_ffma_share"] < 1 and row["loop_instructions"] > row["loop_ffma"]


MMA_LOOPS = """
.L_x_0:
        /*0000*/                   FFMA R5, R3, R6, R5 ;
        /*0010*/                   FFMA R7, R3, R8, R7 ;
        /*0020*/                   FFMA R9, R3, R8, R9 ;
        /*0030*/              @P1 BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0050*/                   FFMA R5, R3, R6, R5 ;
        /*0060*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0070*/              @P0 BRA `(.L_x_1) ;
        /*0080*/                   EXIT ;
"""


def test_the_mma_loop_is_the_hot_one():
    mix = hot_loop_mix(MMA_LOOPS)
    assert mix.instructions == 4 and mix.mma == 2 and mix.ffma == 1  # .L_x_1, not the loop with more FFMAs
    assert mix.as_dict()["loop_mma"] == 2
    assert hot_loop_mix(MMA_LOOPS.replace("HGMMA", "NOP").replace("HMMA", "NOP")).ffma == 3


def test_fused_mlp_forward_hidden_loop_on_sm90():
    """The fused MLP forward's hidden-chunk loop issues wgmma for both dots: fc1 over the padded C
    (BLOCK_K / 16 k-steps) and fc2 over the hidden chunk (BLOCK_H / 16), and spills nothing."""
    pytest.importorskip("triton")
    import torch

    from convnext_fast.kernels.pointwise_mlp import _fwd_config

    route, _, block_k, _, block_h, _, _ = _fwd_config(96, 384, torch.bfloat16)
    assert route == "fused"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "convnext_fast.aot_check", "--json", "--mix", "--arch", "90",
                           "--only", r"^mlp_fwd_fused_bf16_C96_.*H\d+$"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not row["spills"]
    assert row["loop_mma"] == block_k // 16 + block_h // 16
    assert row["loop_ffma"] > 0  # the erf GELU sits in the same loop
