"""The capability table (``capabilities.py``) and the one resolver (``backend.resolve``): the table agrees
with the kernels' own limits, every check reads it, a backend asked for by name without a kernel for
a call runs PyTorch for that call, and ``available_backends`` says what can run here."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import convnext_fast
from convnext_fast import backend, capabilities, mlp, patch_linear
from convnext_fast.backend import BackendUnavailableError
from convnext_fast.models import ConvNeXtBlock

from conftest import DEVICE, ON_GPU, kernel_backends


def test_the_table_agrees_with_the_kernels_own_limits():
    from convnext_fast.kernels import block, patch_linear as patch_kernel, pointwise_mlp

    assert capabilities.capability("patch_linear", "triton").max_out_norm == patch_kernel.MAX_OUT_NORM_O
    folded = capabilities.capability("folded_block", "triton")
    assert (folded.max_c, folded.max_k) == (block.MAX_C, block.MAX_K)
    assert folded.dtypes == set(block._TRITON_DTYPE)
    assert capabilities.capability("pointwise_mlp", "triton").dtypes == set(pointwise_mlp._TRITON_DTYPE)
    assert capabilities.capability("patch_linear", "triton").dtypes == set(patch_kernel._TRITON_DTYPE)
    # the ops' dtype tables are read from it, not copied
    assert set(mlp.KERNEL_DTYPES["cpu"]) == capabilities.capability("pointwise_mlp", "cpu").dtypes
    assert set(patch_linear.KERNEL_DTYPES["cpu"]) == {torch.float32, torch.bfloat16}


def test_reasons_name_what_is_missing():
    assert capabilities.reason("pointwise_mlp", "reference", torch.float64) == ""
    assert "no pointwise_mlp kernel" in capabilities.reason("pointwise_mlp", "cuda")
    assert "triton, cpu" in capabilities.reason("pointwise_mlp", "cuda")
    assert "no patch_linear backward kernel" in capabilities.reason("patch_linear", "triton", pass_="backward")
    assert "not float64" in capabilities.reason("pointwise_mlp", "triton", torch.float64)
    assert "C <= 256" in capabilities.reason("folded_block", "triton", c=384, k=7)
    assert "K <= 7" in capabilities.reason("folded_block", "triton", c=96, k=9)
    assert "O <= 512" in capabilities.reason("patch_linear", "triton", out_norm=1024)
    assert capabilities.reason("folded_block", "triton", torch.bfloat16, c=96, k=7) == ""
    with pytest.raises(ValueError, match="unknown convnext_fast op"):
        capabilities.reason("conv3d", "triton")


def test_the_table_needs_neither_triton_nor_the_extension():
    """capabilities.py stands alone: loaded by path with Triton made unimportable, nothing else of the
    package loaded."""
    code = ("import importlib.util, sys\n"
            "sys.modules['triton'] = None\n"
            f"spec = importlib.util.spec_from_file_location('caps', {capabilities.__file__!r})\n"
            "caps = sys.modules['caps'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(caps)\n"
            "print(caps.reason('pointwise_mlp', 'cuda'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('convnext_fast')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert "no pointwise_mlp kernel" in first and second == "[]"


def test_available_backends_lists_triton_for_cuda_only_with_a_gpu():
    status = convnext_fast.available_backends("cuda")
    assert status["reference"] == ""
    if ON_GPU:
        pytest.skip("a GPU is present")
    assert status["triton"] == "no CUDA device is available"
    assert status["cuda"]  # and the extension's CUDA kernels cannot run either


def test_a_named_backend_runs_pytorch_for_a_call_its_kernels_do_not_serve(monkeypatch):
    """The resolver gives 'reference' (the op's composite) to a call outside the named backend's
    table, raises for a backend that cannot run on the device at all."""
    cpu = torch.device("cpu")
    for name in kernel_backends():
        with convnext_fast.use_backend(name):
            assert backend.resolve("pointwise_mlp", cpu, dtype=torch.float64) == "reference"
            assert backend.resolve("folded_block", cpu, dtype=torch.float32, c=512, k=7) == "reference"
    with convnext_fast.use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="CUDA tensors only"):
            backend.resolve("pointwise_mlp", cpu, dtype=torch.float32)
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name, device_type: "")
    with convnext_fast.use_backend("cuda"):  # as on a GPU: the extension has no MLP kernel
        assert backend.resolve("pointwise_mlp", torch.device("cuda"), dtype=torch.bfloat16) == "reference"
        assert backend.resolve("depthwise_conv2d", torch.device("cuda"), dtype=torch.bfloat16) == "cuda"
        with pytest.raises(BackendUnavailableError, match="no pointwise_mlp kernel"):
            backend.resolve("pointwise_mlp", torch.device("cuda"), dtype=torch.bfloat16, fallback=False)


def test_the_mlp_route_runs_the_composite_for_a_backend_without_an_mlp_kernel(monkeypatch):
    """What models.py used to decide itself: a block under a backend with no MLP kernel runs its MLP
    half in PyTorch, the same outputs, and never calls an MLP launcher."""
    if "cpu" not in kernel_backends():
        pytest.skip("the compiled CPU kernels are not available here")
    torch.manual_seed(0)
    block = ConvNeXtBlock(8, ls_init_value=0.5).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad(), convnext_fast.use_backend("reference"):
        expected = block(x)
    from convnext_fast import extension

    monkeypatch.delitem(capabilities.TABLE, ("pointwise_mlp", "cpu"))
    backend._kernel_reason.cache_clear()
    monkeypatch.setattr(extension, "mlp_forward", lambda *a: pytest.fail("an MLP launcher was called"))
    try:
        with torch.no_grad(), convnext_fast.use_backend("cpu"):
            torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    finally:
        backend._kernel_reason.cache_clear()


def test_every_op_resolves_through_the_one_resolver(monkeypatch):
    asked: list[str] = []
    real = backend._resolve

    def spy(op, *args):
        asked.append(op)
        return real(op, *args)

    monkeypatch.setattr(backend, "_resolve", spy)
    model = convnext_fast.convnext_atto(depths=(1, 1, 1, 1), num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    model = model.to(DEVICE)
    with torch.no_grad(), convnext_fast.use_backend("reference"):
        convnext_fast.optimize_for_inference(model)(x)
    with torch.no_grad():
        with convnext_fast.use_backend("auto"):
            convnext_fast.optimize_for_inference(model)(x)
            model(x)
    assert {"dwconv_layer_norm", "pointwise_mlp", "layer_norm_2d"} <= set(asked)
    assert "patch_linear" in asked
