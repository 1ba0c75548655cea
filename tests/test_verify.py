"""``python -m convnext_fast verify``: its checks pass on the kernels as they are, and fail when a
kernel is wrong (each op's launcher broken in turn); the parity rule never passes a non-finite
result; clear exits for what it cannot run."""
from __future__ import annotations

import json

import pytest
import torch

import convnext_fast
from convnext_fast import parity, verify
from convnext_fast.kernels import launchers

from conftest import DEVICE

needs_triton = pytest.mark.skipif(bool(convnext_fast.available_backends(DEVICE.type)["triton"]),
                                  reason="the triton backend cannot run here")
# On a GPU, bf16 (the other dtypes compile as many kernels again); on the interpreter, its default
# set (fp32, fp16) at its tiny sizes.
DTYPES = ["bfloat16"] if DEVICE.type == "cuda" else None


@needs_triton
def test_every_check_passes_and_is_recorded(tmp_path, capsys):
    path = tmp_path / "verify.json"
    args = ["--device", DEVICE.type, "--json", str(path)] + (["--dtypes", ",".join(DTYPES)] if DTYPES else [])
    assert verify.main(args) == 0
    record = json.loads(path.read_text())
    assert set(record["summary"]) == set(verify.OPS)
    assert all(s["all_passed"] and s["checks"] > 0 for s in record["summary"].values())
    for row in record["checks"]:
        assert row["passed"] and row["error"] is None and row["outputs"]
        for numbers in row["outputs"].values():
            assert numbers["rel_err"] <= numbers["tol"]
    grads = record["checks"][0]["outputs"]
    assert {"y", "grad_x", "grad_fc1_weight", "grad_fc2_bias", "grad_gamma", "grad_shortcut"} <= set(grads)
    assert record["meta"]["device_type"] == DEVICE.type
    assert "passed" in capsys.readouterr().out


def _perturbed(fn):
    """``fn`` with its (first) output off by 1% of its norm, in random directions: what a wrong kernel
    looks like (a constant offset would not do: the LayerNorm after a block takes it out)."""
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(first.shape, generator=g).to(first.device, first.dtype)
        with torch.no_grad():
            first.add_(0.01 * noise * first.float().norm().item() / first.numel() ** 0.5)
        return out
    return wrong


@needs_triton
@pytest.mark.parametrize("op, launcher", [("pointwise_mlp", "mlp_forward"), ("pointwise_mlp", "mlp_backward"),
                                          ("patch_linear", "patch_linear_forward"),
                                          ("folded_block", "block_forward")])
def test_a_wrong_kernel_fails(monkeypatch, capsys, op, launcher):
    monkeypatch.setattr(launchers, launcher, _perturbed(getattr(launchers, launcher)))
    rows = verify.run_checks(verify.checks_for(DEVICE.type, ["float32"], [op]), DEVICE)
    assert rows and not all(row["passed"] for row in rows)
    assert "FAILED" in capsys.readouterr().out


@needs_triton
def test_exit_status_one_on_failure(monkeypatch):
    monkeypatch.setattr(launchers, "patch_linear_forward", _perturbed(launchers.patch_linear_forward))
    assert verify.main(["--device", DEVICE.type, "--ops", "patch_linear", "--dtypes", "float32"]) == 1


def test_non_finite_never_passes():
    ref = torch.ones(4, dtype=torch.float64)
    bad = torch.tensor([1.0, float("inf"), 1.0, 1.0])
    assert not parity.compare(bad, bad, ref, "float16")["passed"]  # PyTorch's own result overflowing too
    assert not parity.compare(torch.full((4,), float("nan")), ref.float(), ref, "float32")["passed"]
    assert not parity.compare(torch.ones(2, 2), ref.float(), ref, "float32")["passed"]  # wrong shape
    assert parity.compare(ref.float(), ref.float(), ref, "float32")["passed"]


def test_cannot_run_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(verify, "available_backends", lambda device_type: {"triton": "no Triton here"})
    assert verify.main(["--device", "cpu"]) == 2
    assert "no Triton here" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--ops", "dwconv"], ["--dtypes", "float64"], ["--ops", ""]])
def test_bad_arguments(args):
    with pytest.raises(SystemExit) as info:
        verify.main(args)
    assert info.value.code == 2


def test_reached_from_the_package_command(capsys):
    from convnext_fast.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["verify", "--help"])
    assert info.value.code == 0
    assert "device record" in capsys.readouterr().out
