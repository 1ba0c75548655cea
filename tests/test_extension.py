"""Tests specific to the compiled extension (csrc/, compiled by convnext_fast/build.py).

The shared parity suites cover the ``cpu`` backend through the ``kernel_backend`` fixture; here:
the build itself (CPU part when a compiler is there, CUDA part when it was requested), ``python -m
convnext_fast info``, the six launchers called directly at small ConvNeXt-like shapes against the
float64 reference (fp32 and bf16/fp16 on CPU), every CPU instruction-set variant, determinism of the
weight gradients, and the errors of a backend that cannot run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import convnext_fast
from convnext_fast import backend, extension, reference
from convnext_fast.parity import assert_matches_reference

INFO = extension.build_info()
CPU_OK = extension.unavailable_reason("cpu") == ""
needs_cpu_ext = pytest.mark.skipif(not CPU_OK, reason=f"cpu backend unavailable: {extension.unavailable_reason('cpu')}")

# Small ConvNeXt-like shapes: (N, C, H, W, K). C=96 is ConvNeXt-T stage 1; 40 and 13 are not
# multiples of the 16-channel vector blocks; 3x5 images are smaller than the kernel.
SHAPES = [(2, 96, 14, 14, 7), (1, 40, 9, 7, 7), (2, 13, 3, 5, 7), (1, 24, 6, 5, 3), (1, 16, 8, 9, 31)]


def _switch(name: str) -> str:
    return os.environ.get(name, "auto").strip().lower()


# ------------------------------------------------------------------------------------------ build


def test_cpu_part_built_when_a_compiler_is_present():
    if _switch("CONVNEXT_FAST_BUILD_CPU") == "0":
        pytest.skip("CONVNEXT_FAST_BUILD_CPU=0: the CPU part was not requested")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler here: the pure-Python install without the extension is expected")
    assert INFO["built"], INFO.get("reason")
    assert INFO["cpu"], INFO
    assert CPU_OK


def test_cuda_part_built_when_requested():
    """CI sets CONVNEXT_FAST_BUILD_CUDA=1 with the CUDA build of torch and nvcc: the CUDA sources must
    have compiled and linked even without a GPU (a compile error leaves the extension unavailable)."""
    from convnext_fast import build

    want = _switch("CONVNEXT_FAST_BUILD_CUDA")
    if want == "0":
        pytest.skip("CONVNEXT_FAST_BUILD_CUDA=0")
    if want != "1" and (build._cuda_reason() or not torch.cuda.is_available()):
        pytest.skip("no GPU, nvcc or CUDA build of torch: the CUDA part is not expected in auto mode")
    assert INFO["built"], INFO.get("reason")
    assert INFO["cuda"], f"the CUDA kernels were not built: {INFO}"
    archs = os.environ.get("CONVNEXT_FAST_CUDA_ARCHS", "80;90").replace(".", "")
    assert INFO["cuda_archs"] == ";".join(a.strip() for a in archs.split(";") if a.strip())


@pytest.mark.skipif(not INFO["built"], reason="extension not built")
def test_build_flags_reported():
    for key in ("cpu", "cuda", "cuda_archs", "cuda_version", "torch_version", "cxx_flags", "nvcc_flags", "cpu_isa"):
        assert key in INFO, key
    assert INFO["torch_version"] == torch.__version__, "the extension was built against another torch: rebuild it"
    assert "-march" not in INFO["cxx_flags"], "the CPU binary must stay portable"
    if INFO["cpu"]:
        assert INFO["cpu_isa"] in ("avx512", "avx2", "generic")
    if INFO["cuda"]:
        assert INFO["cuda_version"] and "-gencode" in INFO["nvcc_flags"]


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "convnext_fast", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"torch {torch.__version__}" in out.stdout
    assert "backends for cpu tensors" in out.stdout
    assert "compiled extension" in out.stdout
    assert "built:" in out.stdout
    waiting = [op for op, ok in backend.dispatch_table()["cuda"]["kernels_verified"].items() if not ok]
    assert ("python -m convnext_fast verify" in out.stdout) == bool(torch.cuda.is_available() and waiting)


# ------------------------------------------------------------------------------------------ parity


def _inputs(shape, dtype, bias=True):
    n, c, h, w, k = shape
    x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    dw_w = (torch.randn(c, 1, k, k) / k).to(dtype)
    dw_b = torch.randn(c).to(dtype) if bias else None
    ln_w = (1 + 0.5 * torch.randn(c)).to(dtype)
    ln_b = (0.5 * torch.randn(c)).to(dtype)
    gy = torch.randn(n, c, h, w).to(dtype)  # NCHW-contiguous on purpose: the launcher must convert
    return x, dw_w, dw_b, ln_w, ln_b, gy


def _reference_grads(fn, tensors, gy, dtype):
    """Outputs and gradients of the reference computed in `dtype` (None entries pass through)."""
    leaves = [None if t is None else t.detach().to(dtype).clone().requires_grad_() for t in tensors]
    y = fn(*leaves)
    y.backward(gy.to(dtype))
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _check(ours, ref64, lowp, name):
    if ours.dtype == torch.float32:
        scale = max(1.0, ref64.abs().max().item())
        assert_matches_reference(ours, ref64, name=name, atol=1e-5 * scale)
    else:
        assert_matches_reference(ours, ref64, lowp, name=name, atol=2e-3)


def _lowp_ok(dtype):
    if dtype == torch.float32:
        return True
    try:
        reference.depthwise_conv2d(torch.randn(1, 2, 3, 3, dtype=dtype), torch.randn(2, 1, 3, 3, dtype=dtype))
    except RuntimeError:
        return False
    return True


@needs_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_launchers_match_reference(shape, dtype):
    if not _lowp_ok(dtype):
        pytest.skip(f"PyTorch has no CPU depthwise conv in {dtype} to compare with")
    x, dw_w, dw_b, ln_w, ln_b, gy = _inputs(shape, dtype)
    lowp = None if dtype == torch.float32 else dtype

    def both(fn, tensors):
        r64 = _reference_grads(fn, tensors, gy, torch.float64)
        rlp = _reference_grads(fn, tensors, gy, lowp) if lowp else (None, [None] * len(tensors))
        return r64, rlp

    # depthwise conv
    (y64, g64), (ylp, glp) = both(reference.depthwise_conv2d, [x, dw_w, dw_b])
    y = extension.dwconv_forward(x, dw_w, dw_b)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype
    _check(y, y64, ylp, "dwconv y")
    gx, gw, gb = extension.dwconv_backward(gy, x, dw_w)
    for name, ours, r, rl in (("gx", gx, g64[0], glp[0]), ("gw", gw, g64[1], glp[1]), ("gb", gb, g64[2], glp[2])):
        _check(ours, r, rl, f"dwconv {name}")

    # LayerNorm over C
    (y64, g64), (ylp, glp) = both(lambda a, w, b: reference.layer_norm_2d(a, w, b, 1e-6), [x, ln_w, ln_b])
    y, mean, rstd = extension.layer_norm_forward(x, ln_w, ln_b, 1e-6)
    _check(y, y64, ylp, "ln y")
    assert mean.dtype == torch.float32 and mean.shape == (shape[0], shape[2], shape[3]) and mean.is_contiguous()
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd.double(), (x64.var(1, unbiased=False) + 1e-6).rsqrt(), atol=1e-4, rtol=1e-4)
    gx, gw, gb = extension.layer_norm_backward(gy, x, ln_w, mean, rstd)
    for name, ours, r, rl in (("gx", gx, g64[0], glp[0]), ("gw", gw, g64[1], glp[1]), ("gb", gb, g64[2], glp[2])):
        _check(ours, r, rl, f"ln {name}")

    # fused dwconv + LayerNorm
    fused = lambda a, w, b, lw, lb: reference.dwconv_layer_norm(a, w, b, lw, lb, 1e-6)  # noqa: E731
    (y64, g64), (ylp, glp) = both(fused, [x, dw_w, dw_b, ln_w, ln_b])
    y, mean, rstd = extension.dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, 1e-6)
    _check(y, y64, ylp, "fused y")
    z64 = reference.depthwise_conv2d(x.double(), dw_w.double(), dw_b.double())
    torch.testing.assert_close(mean.double(), z64.mean(1), atol=1e-3 if lowp else 1e-5, rtol=1e-3 if lowp else 1e-5)
    grads = extension.dwconv_ln_backward(gy, x, dw_w, dw_b, ln_w, mean, rstd)
    for name, ours, r, rl in zip(("gx", "g_dw_w", "g_dw_b", "g_ln_w", "g_ln_b"), grads, g64, glp):
        _check(ours, r, rl, f"fused {name}")


@needs_cpu_ext
def test_fp64_and_no_bias_through_public_api():
    x, dw_w, _, ln_w, ln_b, gy = _inputs((2, 20, 6, 7, 5), torch.float64, bias=False)
    leaves = [t.clone().requires_grad_() for t in (x, dw_w, ln_w, ln_b)]
    with convnext_fast.use_backend("cpu"):
        y = convnext_fast.dwconv_layer_norm(leaves[0], leaves[1], None, leaves[2], leaves[3])
    y.backward(gy)
    ref = [t.clone().requires_grad_() for t in (x, dw_w, ln_w, ln_b)]
    reference.dwconv_layer_norm(ref[0], ref[1], None, ref[2], ref[3]).backward(gy)
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10)


@needs_cpu_ext
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_cpu_instruction_set_variant(isa):
    """The row kernels (conv, LayerNorm, the MLP's elementwise passes) are compiled for AVX-512, AVX2
    and baseline x86-64 and picked at run time; force the lower ones (in a subprocess: the choice
    is made once per process)."""
    code = (
        "import torch\n"
        "from convnext_fast import extension, reference\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(2, 40, 9, 11).contiguous(memory_format=torch.channels_last)\n"
        "w = torch.randn(40, 1, 7, 7) / 7; b = torch.randn(40); g = torch.randn(40); bb = torch.randn(40)\n"
        "gy = torch.randn(2, 40, 9, 11)\n"
        "y, m, r = extension.dwconv_ln_forward(x, w, b, g, bb, 1e-6)\n"
        "torch.testing.assert_close(y, reference.dwconv_layer_norm(x, w, b, g, bb), atol=1e-4, rtol=1e-4)\n"
        "ref = [t.double().requires_grad_() for t in (x, w, b, g, bb)]\n"
        "reference.dwconv_layer_norm(*ref).backward(gy.double())\n"
        "for o, t in zip(extension.dwconv_ln_backward(gy, x, w, b, g, m, r), ref):\n"
        "    torch.testing.assert_close(o.double(), t.grad, atol=1e-3, rtol=1e-4)\n"
        # C = 32 (no channel padding) and W = 8 (a multiple of the 4-pixel blocks of AVX2 and
        # baseline): the conv writes its output rows in place.
        "x = torch.randn(2, 32, 6, 8).contiguous(memory_format=torch.channels_last)\n"
        "w = torch.randn(32, 1, 7, 7) / 7; b = torch.randn(32); gy = torch.randn(2, 32, 6, 8)\n"
        "ref = [t.double().requires_grad_() for t in (x, w, b)]\n"
        "y = reference.depthwise_conv2d(*ref); y.backward(gy.double())\n"
        "torch.testing.assert_close(extension.dwconv_forward(x, w, b).double(), y.detach(), atol=1e-4, rtol=1e-4)\n"
        "for o, t in zip(extension.dwconv_backward(gy, x, w), ref):\n"
        "    torch.testing.assert_close(o.double(), t.grad, atol=1e-3, rtol=1e-4)\n"
        # the MLP's elementwise passes and tile transposes: C = 13 and M = 29 leave remainders
        "if hasattr(extension._ext(), 'mlp_forward'):\n"
        "    x = torch.randn(29, 13); w1 = torch.randn(52, 13) / 4; b1 = torch.randn(52)\n"
        "    w2 = torch.randn(13, 52) / 8; b2 = torch.randn(13); g = torch.randn(13); sc = torch.randn(29, 13)\n"
        "    out, h = extension.mlp_forward(x, w1, b1, w2, b2, g, sc, None, 29, True)\n"
        "    d = lambda t: t.double()\n"
        "    ref = d(sc) + d(g) * (torch.nn.functional.gelu(d(x) @ d(w1).T + d(b1)) @ d(w2).T + d(b2))\n"
        "    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)\n"
        "    torch.testing.assert_close(h.double(), d(x) @ d(w1).T + d(b1), atol=1e-4, rtol=1e-4)\n"
        "print(extension.build_info()['cpu_isa'])\n"
    )
    env = dict(os.environ, CONVNEXT_FAST_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    used = out.stdout.strip().splitlines()[-1]
    assert used in (isa, "generic"), used  # a CPU without AVX2 falls back to generic


@needs_cpu_ext
@pytest.mark.parametrize("width", [7, 14, 16, 21, 28, 32, 9])
def test_every_cpu_conv_register_block(width):
    """The CPU conv picks its register block from W at K = 7 (csrc/cpu_kernels.cpp, conv_row_impl):
    W = 7 and 14 (a block is the whole row: the padding columns' FMAs are skipped), other multiples
    of 14 and 7, multiples of 16, and 8-pixel blocks otherwise; the weight gradient likewise
    (7-pixel blocks when 7 divides W, else 8). Each against the float64 reference: forward, every
    gradient (the input gradient is the same conv with the flipped kernel) and fused forward.
    C = 48: three 16-channel chunks, so the 2-chunk blocks also run their 1-chunk remainder; and
    C is a multiple of 16, so where the block divides W the conv writes straight into the output."""
    shape = (2, 48, 5, width, 7)
    x, dw_w, dw_b, ln_w, ln_b, gy = _inputs(shape, torch.float32)
    ref = [t.double().requires_grad_() for t in (x, dw_w, dw_b)]
    y_ref = reference.depthwise_conv2d(*ref)
    y_ref.backward(gy.double())
    assert_matches_reference(extension.dwconv_forward(x, dw_w, dw_b), y_ref.detach(), name=f"y (W={width})")
    grads = extension.dwconv_backward(gy, x, dw_w)
    for name, ours, theirs in zip(("grad_x", "grad_w", "grad_b"), grads, (t.grad for t in ref)):
        # grad_w / grad_b sum N*H*W products: the reduction's rounding grows with its length.
        atol = 1e-5 if name == "grad_x" else 1e-5 * (2 * 5 * width) ** 0.5
        assert_matches_reference(ours, theirs, name=f"{name} (W={width})", atol=atol)
    fused_ref = reference.dwconv_layer_norm(*[t.double() for t in (x, dw_w, dw_b, ln_w, ln_b)])
    fused = extension.dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, 1e-6)[0]
    assert_matches_reference(fused, fused_ref, name=f"fused y (W={width})", atol=1e-4)


@needs_cpu_ext
@pytest.mark.parametrize("channels", [48, 13], ids=["C48", "C13"])
def test_cpu_bf16_conversions_round_like_torch(channels):
    """bf16 rows are widened and narrowed with vector code (csrc/cpu_kernels.cpp, "bf16 rows"); it
    must give c10::BFloat16's bits: a conv whose only tap is the centre one computes x * w rounded
    once to fp32 (like torch's fp32 product) and then rounded to bf16 (nearest even), so the result
    is bit-equal to ``(x.float() * w.float()).to(bfloat16)``. Forward (load and store of blocked
    rows) and input gradient (pixel-major rows); C = 13 runs the scalar tails only, C = 48 the
    vectors; a NaN stores the canonical 0x7FC0."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, channels, 5, 9, generator=g) * 3).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.zeros(channels, 1, 7, 7, dtype=torch.bfloat16)
    centre = (torch.rand(channels, generator=g) + 0.1).to(torch.bfloat16)
    w[:, 0, 3, 3] = centre
    expected = (x.float() * centre.float().view(1, -1, 1, 1)).to(torch.bfloat16)
    y = extension.dwconv_forward(x, w, None)
    assert torch.equal(y.view(torch.int16), expected.view(torch.int16))
    gy = (torch.randn(2, channels, 5, 9, generator=g) * 3).to(torch.bfloat16)
    gx = extension.dwconv_backward(gy, x, w)[0]
    assert torch.equal(gx.view(torch.int16), (gy.float() * centre.float().view(1, -1, 1, 1)).to(torch.bfloat16)
                       .view(torch.int16))
    x_nan = x.clone()
    x_nan[0, 0, 2, 4] = float("nan")
    y_nan = extension.dwconv_forward(x_nan, w, None)
    assert y_nan.view(torch.int16)[0, 0, 2, 4].item() == 0x7FC0
    assert torch.equal(y_nan.view(torch.int16)[1], expected.view(torch.int16)[1])


# ------------------------------------------------------------------------------------------ determinism


@needs_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_gradients_are_deterministic(dtype):
    x, dw_w, dw_b, ln_w, ln_b, gy = _inputs((3, 48, 17, 13, 7), dtype)
    runs = []
    for _ in range(2):
        _, gw, gb = extension.dwconv_backward(gy, x, dw_w)
        _, mean, rstd = extension.layer_norm_forward(x, ln_w, ln_b, 1e-6)
        _, lw, lb = extension.layer_norm_backward(gy, x, ln_w, mean, rstd)
        _, mean, rstd = extension.dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, 1e-6)
        fused = extension.dwconv_ln_backward(gy, x, dw_w, dw_b, ln_w, mean, rstd)
        runs.append([gw, gb, lw, lb, *fused[1:]])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_cpu_ext
def test_weight_gradients_do_not_depend_on_the_thread_count():
    x, dw_w, _, _, _, gy = _inputs((2, 32, 16, 16, 7), torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = extension.dwconv_backward(gy, x, dw_w)[1:]
        torch.set_num_threads(max(2, threads))
        many = extension.dwconv_backward(gy, x, dw_w)[1:]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ errors


def test_backend_for_the_wrong_device_says_why():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 1, 3, 3)
    with convnext_fast.use_backend("cuda"), pytest.raises(backend.BackendUnavailableError, match="CUDA tensors only"):
        convnext_fast.depthwise_conv2d(x, w)


def test_missing_extension_says_why(monkeypatch):
    """Simulate an install without the binary: an explicit ``cpu`` request raises with the reason,
    ``auto`` falls back quietly to the reference."""
    monkeypatch.setattr(extension, "_load", lambda: (None, "simulated: the extension is not built"))
    caches = (extension.unavailable_reason, backend._extension_reason)
    for c in caches:
        c.cache_clear()
    try:
        x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
        with convnext_fast.use_backend("cpu"), pytest.raises(backend.BackendUnavailableError, match="simulated"):
            convnext_fast.depthwise_conv2d(x, w)
        assert backend.resolve("depthwise_conv2d", x.device) != "cpu"
        assert extension.build_info() == {"built": False, "reason": "simulated: the extension is not built"}
    finally:
        monkeypatch.undo()
        for c in caches:
            c.cache_clear()


_CPP_CHECKS_SCRIPT = r"""
import re, torch
from convnext_fast import extension
C = extension._ext()
x = torch.randn(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
y = torch.empty_like(x)
calls = [
    ("must have shape", lambda: C.dwconv_forward(x, torch.randn(6, 1, 3, 3), None, y)),
    ("odd kernel size", lambda: C.dwconv_forward(x, torch.randn(8, 1, 4, 4), None, y)),
    ("channels_last", lambda: C.dwconv_forward(x.contiguous(), torch.randn(8, 1, 3, 3), None, y)),
    ("dtype", lambda: C.dwconv_forward(x, torch.randn(8, 1, 3, 3, dtype=torch.float64), None, y)),
    ("eps must be positive", lambda: C.layer_norm_forward(x, torch.ones(8), torch.zeros(8), 0.0, y,
                                                           torch.empty(1, 5, 5), torch.empty(1, 5, 5))),
]
for expected, call in calls:
    print("calling:", expected, flush=True)
    try:
        call()
    except RuntimeError as e:
        assert re.search(expected, str(e)), f"{expected!r} not in {e}"
    else:
        raise AssertionError(f"no error for {expected!r}")
print("ok")
"""


@needs_cpu_ext
def test_cpp_checks_raise_instead_of_crashing():
    """Bad input given to the extension directly raises RuntimeError with a message (Python validates first in
    normal use). In a subprocess: with a static copy of libstdc++ inside the extension (see
    test_extension_links_the_shared_libstdcxx), the first TORCH_CHECK thrown killed the process with
    SIGSEGV, which would take the whole pytest session with it; here it fails this test instead, with
    the last call reached."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _CPP_CHECKS_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}")


@pytest.mark.skipif(not INFO["built"], reason="extension not built")
@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="needs Linux and ldd")
def test_extension_links_the_shared_libstdcxx():
    """The extension must use the libstdc++.so.6 torch has loaded, not a private static copy: a
    compiler that links libstdc++ statically gave a binary whose first TORCH_CHECK message crashed
    the process. build.py links the libstdc++.so.6 of the building process by its path; this checks
    the built file."""
    so = extension._ext().__file__
    out = subprocess.run(["ldd", so], capture_output=True, text=True, timeout=60).stdout
    assert "libstdc++.so" in out, f"{so} does not link libstdc++ dynamically:\n{out}"


@needs_cpu_ext
def test_large_outputs_reuse_the_blocks_of_freed_ones():
    """The CPU kernels' large outputs come from the output pool: a freed output's block serves the
    next output of its size (no fresh, page-faulting memory), the values are the kernel's, the
    tensors behave as any other (resizable, freed by the last reference), and release_cpu_memory
    frees what the pool keeps."""
    x = torch.randn(2, 64, 48, 48).contiguous(memory_format=torch.channels_last)  # 1.2 MB outputs
    w, b = torch.randn(64, 1, 7, 7) * 0.1, torch.randn(64)
    first = extension.dwconv_forward(x, w, b)
    ptr = first.data_ptr()
    assert first.is_contiguous(memory_format=torch.channels_last)
    expected = first.clone()
    del first
    again = extension.dwconv_forward(x, w, b)
    assert again.data_ptr() == ptr
    assert torch.equal(again, expected)
    torch.testing.assert_close(again, torch.nn.functional.conv2d(x, w, b, padding=3, groups=64), rtol=1e-5, atol=1e-5)
    again.resize_(4, 64, 48, 48)  # a larger storage: still an ordinary, resizable tensor
    del again
    assert extension.release_cpu_memory() > 0
    assert extension.release_cpu_memory() == 0
