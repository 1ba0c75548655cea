"""Shared test setup.

On a machine without a GPU the Triton kernels run through Triton's CPU interpreter; the variable
must be set before triton is imported, so it is set here, before anything imports convnext_fast.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import convnext_fast  # noqa: E402
from convnext_fast.backend import available_backends  # noqa: E402

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

if ON_GPU:
    # cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa): timm's stem,
    # downsampling and depthwise convolutions would then carry ~1e-3 relative error while our
    # kernels compute in fp32, and fp32 parity against them would measure TF32, not us. The parity
    # tests compare true fp32; TF32 is what users get by default and is left alone outside tests.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def cpu_kernel_unavailable(launcher: str) -> str:
    """'' when the compiled extension's CPU-only kernel ``launcher`` (``mlp_forward``,
    ``patch_linear_forward``) can run here, else why not."""
    from convnext_fast import extension

    reason = extension.unavailable_reason("cpu")
    if reason:
        return reason
    if not hasattr(extension._ext(), launcher):
        return f"the compiled extension has no {launcher} (built without its CPU kernels)"
    return ""


def kernel_backends() -> list[str]:
    """The non-reference backends that can run on DEVICE here (triton via the interpreter on CPU)."""
    status = available_backends(DEVICE.type)
    return [b for b in ("triton", "cuda", "cpu") if status[b] == ""]


@pytest.fixture(params=kernel_backends() or ["<none>"])
def kernel_backend(request):
    """Each kernel backend in turn, selected with use_backend for the duration of the test."""
    if request.param == "<none>":
        pytest.skip("no kernel backend can run here")
    with convnext_fast.use_backend(request.param):
        yield request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
