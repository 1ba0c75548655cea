"""The two parity criteria (convnext_fast.parity): each catches what the other lets through, and
compare() needs both."""
from __future__ import annotations

import pytest
import torch

from convnext_fast import parity


def _outputs(dtype: torch.dtype = torch.float16, n: int = 65536):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(n, generator=g, dtype=torch.float64)
    return ref, ref.to(dtype)  # PyTorch's own result: the reference rounded once


def test_one_wrong_tile_hides_in_the_norm_but_not_in_the_max():
    ref, torch_lowp = _outputs()
    ours = torch_lowp.clone()
    ours[:16] += 0.1  # one wrong 16-element tile out of 65536
    norm, peak = parity.norm_check(ours, torch_lowp, ref, "float16"), parity.max_abs_check(ours, torch_lowp, ref,
                                                                                          "float16")
    assert norm["passed"] and not peak["passed"]
    verdict = parity.compare(ours, torch_lowp, ref, "float16")
    assert not verdict["passed"] and verdict["norm_passed"] and not verdict["max_abs_passed"]
    with pytest.raises(AssertionError, match="max error"):
        parity.assert_matches_reference(ours, ref, torch_lowp)


def test_spread_drift_passes_the_max_but_not_the_norm():
    ref, torch_lowp = _outputs(torch.float32)
    # Every element off by 6e-6 of the largest magnitude: within the elementwise allowance (1e-5 of
    # max |ref|) but, spread over all elements, far above the norm's tolerance.
    ours = (ref + 6e-6 * ref.abs().max() * torch.sign(ref)).float()
    verdict = parity.compare(ours, torch_lowp, ref, "float32")
    assert verdict["max_abs_passed"] and not verdict["norm_passed"] and not verdict["passed"]


def test_right_results_pass_both_and_bad_ones_never_pass():
    ref, torch_lowp = _outputs(torch.bfloat16)
    assert parity.compare(torch_lowp, torch_lowp, ref, torch.bfloat16)["passed"]
    parity.assert_matches_reference(torch_lowp, ref, torch_lowp)
    nan = torch_lowp.clone()
    nan[3] = float("nan")
    assert not parity.compare(nan, torch_lowp, ref, "bfloat16")["passed"]
    assert not parity.compare(torch_lowp[:10], torch_lowp, ref, "bfloat16")["passed"]  # wrong shape
    with pytest.raises(AssertionError, match="non-finite"):
        parity.assert_matches_reference(nan, ref, torch_lowp)
