"""Sizes and axes of the pytest-benchmark suite (imported by conftest.py and the test files).

A separate, uniquely named module: test files cannot import ``conftest`` reliably when another
``conftest.py`` (tests/) is on the path too.
"""
from __future__ import annotations

import torch

from convnext_fast.bench import cases as C
from convnext_fast.bench.env import bench_device

DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"
OP_BATCH = 128 if ON_GPU else 8
BLOCK_BATCH = 128 if ON_GPU else 4
MODEL_BATCH = 256 if ON_GPU else 2
DTYPES = ["bfloat16", "float16", "float32"] if ON_GPU else ["float32"]
MODEL_DTYPE = "bfloat16" if ON_GPU else "float32"
PROVIDERS = list(C.PROVIDERS)
STAGE_IDS = [f"{c}x{h}x{w}" for c, h, w in C.STAGES]
SWEEP_K = list(C.SWEEP_K)

if ON_GPU:
    torch.backends.cudnn.benchmark = True  # PyTorch's best setup is the fair baseline


def stage_shape(batch: int, stage_id: str) -> tuple:
    c, h, w = (int(v) for v in stage_id.split("x"))
    return (batch, c, h, w)
