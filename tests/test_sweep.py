"""The launcher-constant sweep (``python -m convnext_fast.bench.sweep``): every variant must compute
what the default computes; the summary must never call a wrong variant the fastest."""
import pytest
import torch

from conftest import DEVICE, kernel_backends
from convnext_fast.bench import sweep


def test_variants_compute_the_same_as_the_default():
    if "triton" not in kernel_backends():
        pytest.skip("triton backend unavailable here")
    studies = [s for s in sweep.STUDIES if s.name in ("fused_bwd_threads", "dwconv_warps")]
    rows = sweep.run_studies(studies, DEVICE, batch=2, dtype=torch.float32, stages=((16, 7),), timed=False,
                             tol=1e-4, log=lambda line: None)
    assert len(rows) == sum(len(set(s.values) | {getattr(sweep._kernels(s.module), s.attr)}) for s in studies)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    # the constants are restored afterwards
    from convnext_fast.kernels import depthwise_conv, dwconv_layer_norm
    assert dwconv_layer_norm.PX_THREADS == 128 and depthwise_conv._NUM_WARPS == 2


def test_summary_picks_the_fastest_correct_value():
    shape = [128, 96, 56, 56]
    rows = [dict(study="s", shape=shape, value=1, default=True, status="ok", time_ms=2.0),
            dict(study="s", shape=shape, value=2, default=False, status="ok", time_ms=1.0),
            dict(study="s", shape=shape, value=3, default=False, status="wrong", time_ms=None)]
    line = sweep.summary_markdown(rows).splitlines()[-1]
    assert line == "| s | 128x96x56x56 | 1 | 2.0000 | 2 | 1.0000 | 2.00x | 3: wrong |"
