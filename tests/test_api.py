"""Behaviour of the public API that does not depend on one op's numerics: backend selection, bad
input, registered-op checks (opcheck, torch.compile), modules, empty batches, very large tensors."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast import backend, reference
from convnext_fast import depthwise_conv as dwc_mod
from convnext_fast import dwconv_ln as fused_mod
from convnext_fast import layer_norm as ln_mod
from convnext_fast.depthwise_conv import dwconv_bwd, dwconv_fwd
from convnext_fast.dwconv_ln import dwconv_ln_bwd, dwconv_ln_fwd
from convnext_fast.layer_norm import ln_bwd, ln_fwd
from convnext_fast.backend import BackendUnavailableError, resolve, resolve_passes

from conftest import DEVICE, ON_GPU, kernel_backends

OP_MODULES = (dwc_mod, ln_mod, fused_mod)
FUNCTIONS = (dwc_mod.DepthwiseConvFunction, ln_mod.LayerNorm2dFunction, fused_mod.DwconvLayerNormFunction)


def _force_registered_ops(monkeypatch):
    """Make every op take the registered-op side of its route, as under tracing or dispatch modes."""
    for module in OP_MODULES:
        monkeypatch.setattr(module, "direct_ok", lambda *tensors: False)


# --------------------------------------------------------------------------- backend selection


def test_set_and_get_backend():
    previous = convnext_fast.get_backend()
    try:
        convnext_fast.set_backend("reference")
        assert convnext_fast.get_backend() == "reference"
        convnext_fast.set_backend("AUTO")
        assert convnext_fast.get_backend() == "auto"
    finally:
        convnext_fast.set_backend(previous)


def test_use_backend_restores_on_error():
    previous = convnext_fast.get_backend()
    with pytest.raises(RuntimeError, match="boom"):
        with convnext_fast.use_backend("reference"):
            assert convnext_fast.get_backend() == "reference"
            raise RuntimeError("boom")
    assert convnext_fast.get_backend() == previous


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown convnext_fast backend 'tpu'.*auto, reference, triton, cuda, cpu"):
        convnext_fast.set_backend("tpu")


def test_explicit_backend_on_wrong_device_raises():
    x = torch.randn(1, 2, 3, 3)
    with convnext_fast.use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match="'cuda' cannot run depthwise_conv2d"):
            convnext_fast.depthwise_conv2d(x, torch.randn(2, 1, 3, 3))


def test_auto_resolves_to_something_that_runs():
    name = resolve("depthwise_conv2d", DEVICE)
    assert name in ("reference", "triton", "cuda", "cpu")
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    w = torch.randn(3, 1, 3, 3, device=DEVICE)
    torch.testing.assert_close(convnext_fast.depthwise_conv2d(x, w), reference.depthwise_conv2d(x, w))


def test_explicit_backend_runs_both_passes():
    for name in ("reference",) + tuple(kernel_backends()):
        with convnext_fast.use_backend(name):
            assert resolve_passes("dwconv_layer_norm", DEVICE, 7 * 7) == (name, name)


def test_auto_defaults_on_cuda_are_per_pass():
    """The shipped defaults behind auto on CUDA when nothing is measured (pure function: checked here
    without a GPU): Triton from the record's min_hw_triton up, the CUDA extension below."""
    from convnext_fast import autotune

    both = ("triton", "cuda")
    first = lambda op, hw, bwd: autotune._default_choice(op, "backward" if bwd else "forward", hw, both, None)  # noqa: E731
    assert first("dwconv_layer_norm", 7 * 7, False) == "triton"
    assert first("dwconv_layer_norm", 7 * 7, True) == "cuda"
    assert first("dwconv_layer_norm", 14 * 14, True) == "cuda"
    assert first("dwconv_layer_norm", 28 * 28, True) == "triton"
    assert first("depthwise_conv2d", 7 * 7, False) == "triton"
    assert first("depthwise_conv2d", 14 * 14, True) == "triton"
    assert first("depthwise_conv2d", 7 * 7, True) == "cuda"
    assert first("layer_norm_2d", 7 * 7, False) == "triton"
    assert first("layer_norm_2d", 28 * 28, True) == "triton"
    assert first("layer_norm_2d", 14 * 14, True) == "cuda"
    assert autotune._default_choice("layer_norm_2d", "forward", 49, (), None) == "reference"
    assert autotune.candidate_order("cpu") == ("cpu",)  # the interpreter is never chosen automatically


@pytest.mark.parametrize("route", ["eager", "custom_op"])
def test_auto_may_run_the_two_passes_on_different_backends(monkeypatch, route):
    """Every backend saves the same tensors (x, weights, fp32 mean/rstd), so a forward on one and a
    backward on another must give the reference gradients: triton forward, cpu backward here."""
    if not {"triton", "cpu"} <= set(kernel_backends()):
        pytest.skip("needs the triton (interpreter) and cpu backends on this device")
    from convnext_fast import autotune

    monkeypatch.setattr(autotune, "candidate_order", lambda device_type: ("triton", "cpu"))
    monkeypatch.setattr(autotune, "choose", lambda op, pass_, *args: "cpu" if pass_ == "backward" else "triton")
    from convnext_fast import extension

    calls: list = []
    for name in ("dwconv_forward", "layer_norm_forward", "dwconv_ln_forward", "dwconv_backward",
                 "layer_norm_backward", "dwconv_ln_backward"):
        def spy(*args, _name=name, _fn=getattr(extension, name)):
            calls.append(_name)
            return _fn(*args)
        monkeypatch.setattr(extension, name, spy)
    if route == "custom_op":
        _force_registered_ops(monkeypatch)
    with convnext_fast.use_backend("auto"):
        assert resolve_passes("dwconv_layer_norm", DEVICE, 20) == ("triton", "cpu")
        inputs = _small_inputs(DEVICE)
        out = _three_ops(*inputs)
        gy = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out)
        grads = torch.autograd.grad(out, inputs, gy)
    # the cpu extension ran the three backward passes and none of the forward ones
    assert sorted(calls) == ["dwconv_backward", "dwconv_ln_backward", "layer_norm_backward"], calls
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    x, w, b, lw, lb = ref_inputs
    y = reference.depthwise_conv2d(x, w, b)
    y = reference.layer_norm_2d(y, lw, lb, 1e-6)
    ref_out = reference.dwconv_layer_norm(y, w, b, lw, lb, 1e-6) * 2.0
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, gy.double())
    torch.testing.assert_close(out.double(), ref_out, atol=1e-4, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def _run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_environment_variable_selects_backend():
    proc = _run_python("import convnext_fast; print(convnext_fast.get_backend())", CONVNEXT_FAST_BACKEND="reference")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reference"
    empty = _run_python("import convnext_fast; print(convnext_fast.get_backend())", CONVNEXT_FAST_BACKEND="")
    assert empty.returncode == 0 and empty.stdout.strip() == "auto", empty.stderr


def test_a_bad_environment_value_breaks_neither_import_nor_info_and_the_first_op_names_it():
    code = ("import torch, convnext_fast\n"
            "print(convnext_fast.get_backend())\n"
            "try:\n"
            "    convnext_fast.layer_norm_2d(torch.randn(1, 2, 3, 3), torch.ones(2), torch.zeros(2))\n"
            "except ValueError as e:\n"
            "    print('raised:', e)\n"
            "with convnext_fast.use_backend('reference'):\n"
            "    convnext_fast.layer_norm_2d(torch.randn(1, 2, 3, 3), torch.ones(2), torch.zeros(2))\n"
            "convnext_fast.set_backend('auto')\n"
            "convnext_fast.layer_norm_2d(torch.randn(1, 2, 3, 3), torch.ones(2), torch.zeros(2))\n"
            "print('fixed')\n")
    bad = _run_python(code, CONVNEXT_FAST_BACKEND="gpu")
    assert bad.returncode == 0, bad.stderr
    lines = bad.stdout.splitlines()
    assert lines[0] == "auto"
    assert lines[1].startswith("raised:") and "CONVNEXT_FAST_BACKEND='gpu'" in lines[1]
    assert lines[2] == "fixed"  # use_backend and set_backend take precedence over the bad value
    env = dict(os.environ, CONVNEXT_FAST_BACKEND="gpu")
    info = subprocess.run([sys.executable, "-m", "convnext_fast", "info"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert info.returncode == 0, info.stderr
    assert "CONVNEXT_FAST_BACKEND='gpu'" in info.stdout and "backends for cpu tensors" in info.stdout


def test_import_works_without_triton_and_does_not_touch_the_gpu():
    # sys.modules["triton"] = None makes every `import triton` fail, as on a machine without it.
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, convnext_fast\n"
            "y = convnext_fast.LayerNorm2d(4)(torch.randn(1, 4, 3, 3))\n"
            "print(torch.cuda.is_initialized(), convnext_fast.available_backends('cpu')['triton'])")
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False Triton is not installed (pip install triton)"


@pytest.mark.skipif(ON_GPU, reason="checks the CPU-only behaviour of the triton backend")
def test_triton_on_cpu_without_interpreter_explains():
    code = ("import torch, convnext_fast\n"
            "convnext_fast.set_backend('triton')\n"
            "try:\n    convnext_fast.layer_norm_2d(torch.randn(1,2,2,2), torch.ones(2), torch.zeros(2))\n"
            "except convnext_fast.BackendUnavailableError as e:\n    print(e)\n")
    proc = _run_python(code, TRITON_INTERPRET=None)
    assert "TRITON_INTERPRET=1" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- bad input


def _dw_args(**changes):
    args = dict(x=torch.randn(2, 4, 5, 5), weight=torch.randn(4, 1, 3, 3), bias=torch.randn(4))
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, error, message", [
    (dict(x=torch.randn(4, 5, 5)), ValueError, r"expects x of shape \(N, C, H, W\), got a 3-D tensor of shape \(4, 5, 5\)"),
    (dict(weight=torch.randn(6, 1, 3, 3)), ValueError, r"weight of shape \(C, 1, K, K\) with C=4, got \(6, 1, 3, 3\)"),
    (dict(weight=torch.randn(4, 1, 4, 4)), ValueError, r"odd kernel size between 1 and 31, got 4"),
    (dict(weight=torch.randn(4, 1, 33, 33)), ValueError, r"odd kernel size between 1 and 31, got 33"),
    (dict(weight=torch.randn(4, 1, 3, 5)), ValueError, r"square kernel.*\(3x5\)"),
    (dict(bias=torch.randn(5)), ValueError, r"bias of shape \(4,\), got \(5,\)"),
    (dict(x=torch.randint(0, 5, (2, 4, 5, 5))), TypeError, r"got x of dtype torch.int64"),
    (dict(weight=torch.randn(4, 1, 3, 3, dtype=torch.float64)), TypeError, r"weight to have the dtype of x \(torch.float32\), got torch.float64"),
    (dict(weight=torch.randn(4, 1, 3, 3, device="meta")), ValueError, r"one device: x is on cpu, weight on meta"),
    (dict(x=[1.0, 2.0]), TypeError, r"x to be a torch.Tensor, got list"),
])
def test_depthwise_bad_input(changes, error, message):
    with pytest.raises(error, match=message):
        convnext_fast.depthwise_conv2d(**_dw_args(**changes))


@pytest.mark.parametrize("changes, error, message", [
    (dict(weight=torch.randn(5)), ValueError, r"weight of shape \(4,\) \(the channel count of x\), got \(5,\)"),
    (dict(bias=None), TypeError, r"bias to be a torch.Tensor, got None"),
    (dict(eps=0.0), ValueError, r"eps to be a positive number, got 0.0"),
    (dict(x=torch.randn(2, 4, 5, dtype=torch.float16)), ValueError, r"3-D tensor"),
    (dict(bias=torch.randn(4, dtype=torch.bfloat16)), TypeError, r"bias to have the dtype of x"),
])
def test_layer_norm_bad_input(changes, error, message):
    args = dict(x=torch.randn(2, 4, 5, 5), weight=torch.randn(4), bias=torch.randn(4), eps=1e-6)
    args.update(changes)
    with pytest.raises(error, match=message):
        convnext_fast.layer_norm_2d(**args)


def test_fused_bad_input_names_the_argument():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match=r"dw_weight of shape \(C, 1, K, K\) with C=4, got \(4, 1, 3\)"):
        convnext_fast.dwconv_layer_norm(x, torch.randn(4, 1, 3), None, torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"ln_weight of shape \(4,\)"):
        convnext_fast.dwconv_layer_norm(x, torch.randn(4, 1, 3, 3), None, torch.ones(3), torch.zeros(4))
    with pytest.raises(TypeError, match=r"ln_bias to have the dtype of x"):
        convnext_fast.dwconv_layer_norm(x, torch.randn(4, 1, 3, 3), None, torch.ones(4), torch.zeros(4).half())


# --------------------------------------------------------------------------- registered ops


def _small_inputs(device, dtype=torch.float32, requires_grad=True):
    x = torch.randn(2, 3, 4, 5, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(3, 1, 3, 3, device=device, dtype=dtype)
    b = torch.randn(3, device=device, dtype=dtype)
    lw = torch.randn(3, device=device, dtype=dtype)
    lb = torch.randn(3, device=device, dtype=dtype)
    for t in (x, w, b, lw, lb):
        t.requires_grad_(requires_grad)
    return x, w, b, lw, lb


def test_opcheck_forward_ops(kernel_backend, device):
    # Inputs without grad: the ops' autograd is the route's one Function, not a registered formula.
    x, w, b, lw, lb = _small_inputs(device, requires_grad=False)
    torch.library.opcheck(dwconv_fwd, (x, w, b, kernel_backend))
    torch.library.opcheck(dwconv_fwd, (x, w, None, kernel_backend))
    torch.library.opcheck(ln_fwd, (x, lw, lb, 1e-6, kernel_backend))
    torch.library.opcheck(dwconv_ln_fwd, (x, w, b, lw, lb, 1e-6, kernel_backend))


def test_opcheck_backward_ops(kernel_backend, device):
    x, w, b, lw, lb = _small_inputs(device, requires_grad=False)
    gy = torch.randn_like(x)
    _, mean, rstd = ln_fwd(x, lw, lb, 1e-6, kernel_backend)
    torch.library.opcheck(dwconv_bwd, (gy, x, w, kernel_backend))
    torch.library.opcheck(ln_bwd, (gy, x, lw, mean, rstd, kernel_backend))
    _, mean, rstd = dwconv_ln_fwd(x, w, b, lw, lb, 1e-6, kernel_backend)
    torch.library.opcheck(dwconv_ln_bwd, (gy, x, w, b, lw, mean, rstd, kernel_backend))


def _three_ops(x, w, b, lw, lb):
    y = convnext_fast.depthwise_conv2d(x, w, b)
    y = convnext_fast.layer_norm_2d(y, lw, lb)
    return convnext_fast.dwconv_layer_norm(y, w, b, lw, lb) * 2.0


def test_compile_fullgraph_forward_and_backward(kernel_backend, device):
    torch._dynamo.reset()
    inputs = _small_inputs(device)
    expected = _three_ops(*inputs)
    expected_grads = torch.autograd.grad(expected.square().sum(), inputs)
    compiled = torch.compile(_three_ops, fullgraph=True)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.square().sum(), inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_compile_recompiles_when_backend_changes(kernel_backend, device):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(convnext_fast.layer_norm_2d, backend=counter, fullgraph=True)
    x, _, _, lw, lb = _small_inputs(device, requires_grad=False)
    fn(x, lw, lb)
    with convnext_fast.use_backend("reference"):
        fn(x, lw, lb)
    assert counter.frame_count == 2


# --------------------------------------------------------------------------- eager fast path


def _grad_fn_names(x, w, b, lw, lb):
    return [type(convnext_fast.depthwise_conv2d(x, w, b).grad_fn).__name__,
            type(convnext_fast.layer_norm_2d(x, lw, lb).grad_fn).__name__,
            type(convnext_fast.dwconv_layer_norm(x, w, b, lw, lb).grad_fn).__name__]


def test_one_function_per_op_and_dispatch_modes_see_the_registered_ops(kernel_backend, device):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.name()))
            return func(*args, **(kwargs or {}))

    inputs = _small_inputs(device)
    expected = ["DepthwiseConvFunctionBackward", "LayerNorm2dFunctionBackward", "DwconvLayerNormFunctionBackward"]
    assert _grad_fn_names(*inputs) == expected
    with Seen() as mode:  # a TorchDispatchMode must see the registered ops, forward and backward
        assert _grad_fn_names(*inputs) == expected
        out = convnext_fast.dwconv_layer_norm(*inputs)
        torch.autograd.grad(out.sum(), inputs[0])
    assert {"convnext_fast::dwconv_fwd", "convnext_fast::ln_fwd", "convnext_fast::dwconv_ln_fwd",
            "convnext_fast::dwconv_ln_bwd"} <= mode.names, sorted(mode.names)


def test_eager_fast_path_matches_the_custom_op_bitwise(kernel_backend, device, monkeypatch):
    """The two sides of the route (kernels directly in eager, registered ops otherwise) run the same
    kernels."""
    base = _small_inputs(device, requires_grad=False)

    def run():
        inputs = [t.clone().requires_grad_() for t in base]
        x, w, b, lw, lb = inputs
        out = _three_ops(x, w, b, lw, lb)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).view_as(out))
        return [out.detach()] + [t.grad for t in inputs]

    fast = run()
    _force_registered_ops(monkeypatch)
    slow = run()
    for a, e in zip(fast, slow):
        assert torch.equal(a, e)


def test_no_graph_to_record_calls_the_kernels_directly(kernel_backend, device, monkeypatch):
    """no_grad / inputs without grad: the eager route skips the autograd.Function (less host time)
    and gives the same bits; an open forward-AD level takes the reference, so dual inputs keep
    their tangents."""
    import torch.autograd.forward_ad as fwAD

    x, w, b, lw, lb = _small_inputs(device)
    with_graph = [t.detach() for t in (convnext_fast.depthwise_conv2d(x, w, b), convnext_fast.layer_norm_2d(x, lw, lb),
                                       convnext_fast.dwconv_layer_norm(x, w, b, lw, lb))]
    applied = []
    for cls in FUNCTIONS:
        monkeypatch.setattr(cls, "apply", lambda *a, _cls=cls: applied.append(_cls) or pytest.fail("Function used"))
    with torch.no_grad():
        direct = [convnext_fast.depthwise_conv2d(x, w, b), convnext_fast.layer_norm_2d(x, lw, lb),
                  convnext_fast.dwconv_layer_norm(x, w, b, lw, lb)]
    plain = [t.detach() for t in (x, w, b, lw, lb)]
    direct.append(convnext_fast.layer_norm_2d(plain[0], plain[3], plain[4]))  # grad mode on, nothing requires grad
    assert not applied
    for a, e in zip(direct, with_graph + [with_graph[1]]):
        assert a.grad_fn is None and not a.requires_grad
        assert torch.equal(a, e)
    monkeypatch.undo()
    with fwAD.dual_level(), torch.no_grad():
        xd = fwAD.make_dual(plain[0], torch.ones_like(plain[0]))
        tangent = fwAD.unpack_dual(convnext_fast.depthwise_conv2d(xd, plain[1], plain[2])).tangent
    assert torch.allclose(tangent, reference.depthwise_conv2d(torch.ones_like(plain[0]), plain[1]), atol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_and_replay(kernel_backend, device):
    """Forward and backward of the three ops captured in one CUDA graph and replayed on new inputs
    give the eager results bit for bit: the launchers never wait for the host (no .item(), no
    sync), which graph capture and torch.compile(mode="reduce-overhead") need, and which cuts the
    per-call host time that bounds the small ConvNeXt stages."""
    static = [t.detach().clone().requires_grad_() for t in _small_inputs(device)]

    def step():
        out = _three_ops(*static)
        return [out] + list(torch.autograd.grad(out.sum(), static))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: Triton compiles, the allocator pools
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        for t in static:
            t.copy_(torch.randn_like(t))
    graph.replay()
    eager = step()
    torch.cuda.synchronize()
    for name, a, e in zip(("out", "grad_x", "grad_w", "grad_b", "grad_lw", "grad_lb"), captured, eager):
        assert torch.equal(a, e), name


# --------------------------------------------------------------------------- empty batch, modules


def test_empty_batch(kernel_backend, device):
    x, w, b, lw, lb = _small_inputs(device)
    x0 = x.detach()[:0].requires_grad_(True)
    for out in (convnext_fast.depthwise_conv2d(x0, w, b), convnext_fast.layer_norm_2d(x0, lw, lb),
                convnext_fast.dwconv_layer_norm(x0, w, b, lw, lb)):
        assert out.shape == (0, 3, 4, 5)
        out.sum().backward()
    assert x0.grad.shape == x0.shape
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0


def test_modules_keep_state_dict_and_repr():
    conv = convnext_fast.DepthwiseConv2d(8, kernel_size=7)
    plain = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8)
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.state_dict().keys() == plain.state_dict().keys()
    conv.load_state_dict(plain.state_dict())
    assert repr(conv) == "DepthwiseConv2d(8, kernel_size=7, bias=True)"
    norm = convnext_fast.LayerNorm2d(8)
    assert isinstance(norm, torch.nn.LayerNorm)
    assert norm.state_dict().keys() == torch.nn.LayerNorm(8).state_dict().keys()
    assert "LayerNorm2d((8,), eps=1e-06" in repr(norm)
    with pytest.raises(ValueError, match="odd kernel size between 1 and 31, got 4"):
        convnext_fast.DepthwiseConv2d(8, kernel_size=4)


def test_modules_match_the_layers_they_replace(kernel_backend, device):
    conv = convnext_fast.DepthwiseConv2d(5, kernel_size=3).to(device)
    plain = torch.nn.Conv2d(5, 5, 3, padding=1, groups=5).to(device)
    plain.load_state_dict(conv.state_dict())
    norm = convnext_fast.LayerNorm2d(5).to(device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, 4, 6, device=device)
    torch.testing.assert_close(conv(x), plain(x), atol=1e-5, rtol=1e-5)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason="autocast bf16 of the kernel backends is exercised on the GPU")
def test_modules_under_autocast(kernel_backend, device):
    conv = convnext_fast.DepthwiseConv2d(16).to(device)
    norm = convnext_fast.LayerNorm2d(16).to(device)
    x = torch.randn(2, 16, 9, 9, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = norm(conv(x))
    assert y.dtype == torch.bfloat16
    ref = reference.layer_norm_2d(reference.depthwise_conv2d(x, conv.weight, conv.bias), norm.weight, norm.bias)
    assert (y.float() - ref).abs().max() < 0.1


# --------------------------------------------------------------------------- beyond 2^31 elements


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a GPU with > 10 GB free")
def test_more_than_2_pow_31_elements(kernel_backend, device):
    # 1 x 64 x 5800 x 5800 = 2.15e9 elements > 2^31: offsets past the last int32 must not wrap.
    x = torch.randn(1, 64, 5800, 5800, device=device, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w = torch.randn(64, 1, 7, 7, device=device, dtype=torch.bfloat16)
    y = convnext_fast.depthwise_conv2d(x, w)
    tail = (slice(None), slice(None), slice(-16, None), slice(None))
    ref = F.conv2d(x[:, :, -22:].float(), w.float(), padding=3, groups=64)[:, :, -16:]
    # bf16 output of magnitude up to ~40: one rounding is up to 2^-8 of the value (0.125 at 32),
    # so the bound is relative; a wrapped offset would give garbage, far outside it.
    torch.testing.assert_close(y[tail].float(), ref, atol=1e-2, rtol=2.0 ** -7)
    del y
    lw, lb = torch.randn(64, device=device, dtype=torch.bfloat16), torch.randn(64, device=device, dtype=torch.bfloat16)
    z = convnext_fast.layer_norm_2d(x, lw, lb)
    ref = reference.layer_norm_2d(x[tail].float(), lw.float(), lb.float())
    torch.testing.assert_close(z[tail].float(), ref, atol=2e-2, rtol=2.0 ** -7)
