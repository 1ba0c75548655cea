"""ConvNeXt's feature-map shapes: the one definition that benchmarks, the tuner, the ahead-of-time
compile checks and the tests use.

At 224x224 input the four stages of every ConvNeXt run at 56, 28, 14 and 7 pixels square; the
widths grow from 40 (atto) to 2816 (V2 huge, stage 4).
"""
from __future__ import annotations

__all__ = ["CONVNEXT_T_STAGES", "WIDE_STAGES", "AOT_STAGES", "CONVNEXT_WIDTHS"]

# (C, H, W) of ConvNeXt-T's four stages at 224x224 input.
CONVNEXT_T_STAGES: tuple[tuple[int, int, int], ...] = ((96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7))

# The widest stages of the family (ConvNeXt-V2 huge, stages 3 and 4): they exercise the kernels'
# channel-chunk loops.
WIDE_STAGES: tuple[tuple[int, int, int], ...] = ((1408, 14, 14), (2816, 7, 7))

# What the ahead-of-time compile checks cover: every kernel configuration these shapes select.
AOT_STAGES = CONVNEXT_T_STAGES + WIDE_STAGES

# Every stage width of the ConvNeXt V1 and V2 families (atto ... huge), for width-coverage tests.
CONVNEXT_WIDTHS: tuple[int, ...] = (40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 352, 384, 512, 640, 704, 768,
                                    1024, 1408, 1536, 2048, 2816)
