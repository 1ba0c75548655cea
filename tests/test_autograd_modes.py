"""Every autograd mode a user can reach gives the reference's answer: forward-mode AD and the
torch.func transforms (grad, vjp, jacrev, jvp, vmap of grad) through each op and a small model,
double backward (gradient penalties); plus what the one route promises: modules take the same
route as the functional calls, use_backend() is per thread, launches run under the input's device,
and a public call reaches its kernel within four frames of package code."""
from __future__ import annotations

import contextlib
import threading
import traceback

import pytest
import torch

import convnext_fast
from convnext_fast import depthwise_conv, dwconv_ln, layer_norm, reference
from convnext_fast.kernels import layout

from conftest import DEVICE

F64 = dict(dtype=torch.float64, device=DEVICE)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=g).to(**F64)
    w = torch.randn(3, 1, 3, 3, generator=g).to(**F64)
    b = torch.randn(3, generator=g).to(**F64)
    lw = (1 + 0.3 * torch.randn(3, generator=g)).to(**F64)
    lb = torch.randn(3, generator=g).to(**F64)
    return x, w, b, lw, lb


# (name, our op, the reference), each as a function of (x, w, b, lw, lb)
OPS = [
    ("depthwise_conv2d", lambda x, w, b, lw, lb: convnext_fast.depthwise_conv2d(x, w, b),
     lambda x, w, b, lw, lb: reference.depthwise_conv2d(x, w, b)),
    ("layer_norm_2d", lambda x, w, b, lw, lb: convnext_fast.layer_norm_2d(x, lw, lb),
     lambda x, w, b, lw, lb: reference.layer_norm_2d(x, lw, lb)),
    ("dwconv_layer_norm", lambda x, w, b, lw, lb: convnext_fast.dwconv_layer_norm(x, w, b, lw, lb),
     lambda x, w, b, lw, lb: reference.dwconv_layer_norm(x, w, b, lw, lb)),
]
IDS = [name for name, _, _ in OPS]


def _close(a, e):
    torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,op,ref", OPS, ids=IDS)
def test_func_transforms_through_each_op(kernel_backend, name, op, ref):
    inputs = _inputs()
    t = tuple(torch.randn_like(i) for i in inputs)
    loss = lambda f: (lambda *a: (f(*a) * torch.linspace(-1, 1, 60, **F64).view(2, 3, 5, 2).repeat(1, 1, 1, 2)).sum())  # noqa: E731
    # grad over every input
    for g_ours, g_ref in zip(torch.func.grad(loss(op), argnums=(0, 1, 2, 3, 4))(*inputs),
                             torch.func.grad(loss(ref), argnums=(0, 1, 2, 3, 4))(*inputs)):
        _close(g_ours, g_ref)
    # vjp
    out, pullback = torch.func.vjp(op, *inputs)
    out_ref, pullback_ref = torch.func.vjp(ref, *inputs)
    _close(out, out_ref)
    cot = torch.randn_like(out)
    for a, e in zip(pullback(cot), pullback_ref(cot)):
        _close(a, e)
    # jvp: the right tangent, never zeros
    _, tangent = torch.func.jvp(op, inputs, t)
    _, tangent_ref = torch.func.jvp(ref, inputs, t)
    assert tangent_ref.abs().sum() > 0
    _close(tangent, tangent_ref)
    # jacrev with respect to x
    small = tuple(i[:1] for i in inputs[:1]) + inputs[1:]
    _close(torch.func.jacrev(op)(*small), torch.func.jacrev(ref)(*small))


@pytest.mark.parametrize("name,op,ref", OPS, ids=IDS)
def test_forward_ad_dual_tensors(kernel_backend, name, op, ref):
    import torch.autograd.forward_ad as fwAD

    inputs = _inputs()
    t = torch.randn_like(inputs[0])
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(op(fwAD.make_dual(inputs[0], t), *inputs[1:])).tangent
        expected = fwAD.unpack_dual(ref(fwAD.make_dual(inputs[0], t), *inputs[1:])).tangent
    _close(ours, expected)


@pytest.mark.parametrize("name,op,ref", OPS, ids=IDS)
def test_double_backward_gradient_penalty(kernel_backend, name, op, ref):
    """grad(grad(loss) . v) through the kernels' Function equals the reference's."""
    def penalty(f):
        inputs = [i.clone().requires_grad_() for i in _inputs()]
        y = f(*inputs)
        gy = torch.linspace(-1, 1, y.numel(), **F64).view_as(y)
        first = torch.autograd.grad((y * gy).sum(), inputs, create_graph=True, allow_unused=True)
        total = sum((g * g).sum() for g in first if g is not None)
        return ([None if g is None else g.detach() for g in first],
                torch.autograd.grad(total, inputs, allow_unused=True))

    first, second = penalty(op)
    first_ref, second_ref = penalty(ref)
    for a, e in zip(first, first_ref):
        assert (a is None) == (e is None)
        if e is not None:
            _close(a, e)
    for a, e in zip(second, second_ref):
        if e is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            _close(a, e)
    # the first-order pass still ran the kernels' backward (grad_fn is the route's Function)
    x = _inputs()[0].requires_grad_()
    assert type(op(x, *_inputs()[1:]).grad_fn).__name__.endswith("FunctionBackward")


def _tiny_model(**kw):
    torch.manual_seed(0)
    model = convnext_fast.ConvNeXt(depths=(1, 1), dims=(8, 16), num_classes=3, **{"ls_init_value": 0.5, **kw})
    return model.to(**F64).eval()


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_model_func_grad_jvp_and_double_backward(kernel_backend, v2):
    kw = dict(use_grn=True, ls_init_value=None) if v2 else {}
    model = _tiny_model(**kw)
    ref_model = convnext_fast.to_reference(model)
    x = torch.randn(2, 3, 16, 16, **F64)
    params = dict(model.named_parameters())
    ref_params = dict(ref_model.named_parameters())
    assert params.keys() == ref_params.keys()

    def loss(m):
        return lambda p, x: torch.func.functional_call(m, p, (x,)).square().sum()

    g = torch.func.grad(loss(model))(params, x)
    g_ref = torch.func.grad(loss(ref_model))(ref_params, x)
    for k in g:
        _close(g[k], g_ref[k])
    t = torch.randn_like(x)
    _close(torch.func.jvp(lambda x: model(x), (x,), (t,))[1], torch.func.jvp(lambda x: ref_model(x), (x,), (t,))[1])
    # double backward: a gradient penalty on the input
    for m in (model, ref_model):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(m(xi).sum(), xi, create_graph=True)
        gx.square().sum().backward()
    for (k, p), (_, p_ref) in zip(model.named_parameters(), ref_model.named_parameters()):
        _close(p.grad, p_ref.grad)


def test_vmap_per_sample_gradients_match_a_loop(kernel_backend):
    """Per-sample gradients (as differential-privacy training computes them) with vmap(grad(...))."""
    model = _tiny_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(3, 3, 16, 16, **F64)
    target = torch.tensor([0, 2, 1], device=DEVICE)

    def loss(p, xi, ti):
        out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, ti.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), target[i:i + 1]).backward()
        for k, p in model.named_parameters():
            _close(per_sample[k][i], p.grad)


# --------------------------------------------------------------------------- the route itself


def test_modules_take_the_direct_route(kernel_backend):
    """An nn.Parameter is a plain tensor to the route: module calls use the Function in eager mode
    (not the registered op), and call the kernels directly without grad."""
    conv = convnext_fast.DepthwiseConv2d(4, 3).to(DEVICE)
    norm = convnext_fast.LayerNorm2d(4).to(DEVICE)
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    assert type(conv(x).grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    assert type(norm(x).grad_fn).__name__ == "LayerNorm2dFunctionBackward"
    calls = []
    real = layout.device_guard
    for module in (depthwise_conv, layer_norm):
        module_guard = lambda t, _real=real: calls.append(t.device) or _real(t)  # noqa: E731
        setattr(module, "device_guard", module_guard)
    try:
        with torch.no_grad():
            conv(x), norm(x)
    finally:
        depthwise_conv.device_guard = layer_norm.device_guard = real
    assert calls == [x.device, x.device]


def test_launches_run_under_the_input_device_guard(kernel_backend, monkeypatch):
    """Each launch is entered under the guard of its input's device (a model on cuda:1 must not
    launch on cuda:0): the launcher runs inside the guard, forward and backward."""
    state = {"inside": None, "seen": []}

    @contextlib.contextmanager
    def recording_guard(t):
        state["inside"] = t.device
        try:
            yield
        finally:
            state["inside"] = None

    impl = convnext_fast.backend.implementation(kernel_backend)
    for module, names in ((depthwise_conv, ("dwconv_forward", "dwconv_backward")),
                          (dwconv_ln, ("dwconv_ln_forward", "dwconv_ln_backward"))):
        monkeypatch.setattr(module, "device_guard", recording_guard)
        for name in names:
            def spy(*args, _fn=getattr(impl, name), _name=name):
                state["seen"].append((_name, state["inside"]))
                return _fn(*args)
            monkeypatch.setattr(impl, name, spy)
    x, w, b, lw, lb = (i.float().requires_grad_() for i in _inputs())
    convnext_fast.depthwise_conv2d(x, w, b).sum().backward()
    convnext_fast.dwconv_layer_norm(x, w, b, lw, lb).sum().backward()
    assert [s[0] for s in state["seen"]] == ["dwconv_forward", "dwconv_backward", "dwconv_ln_forward",
                                            "dwconv_ln_backward"]
    assert all(dev == x.device for _, dev in state["seen"]), state["seen"]


def test_device_guard_switches_only_when_needed(monkeypatch):
    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: entered.append(index) or contextlib.nullcontext())

    class FakeCuda:
        def __init__(self, index):
            self.device = torch.device("cuda", index)

    with layout.device_guard(FakeCuda(1)):
        pass
    with layout.device_guard(FakeCuda(0)):
        pass
    with layout.device_guard(torch.zeros(1)):
        pass
    assert entered == [1]


def test_use_backend_is_per_thread(kernel_backend):
    seen = {}
    ready, release = threading.Event(), threading.Event()
    baseline = []
    probe = threading.Thread(target=lambda: baseline.append(convnext_fast.get_backend()))
    probe.start()
    probe.join(30)

    def other():
        ready.wait(30)
        seen["other"] = convnext_fast.get_backend()
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    previous = convnext_fast.get_backend()
    with convnext_fast.use_backend("reference"):
        ready.set()
        release.wait(30)
        seen["inside"] = convnext_fast.get_backend()
    thread.join(30)
    assert seen == {"inside": "reference", "other": baseline[0]}
    assert convnext_fast.get_backend() == previous


def test_a_call_reaches_its_kernel_within_four_package_frames(kernel_backend, monkeypatch):
    """public function -> Function.forward -> the op's _forward -> the backend's launcher."""
    impl = convnext_fast.backend.implementation(kernel_backend)
    stacks = []
    real = impl.dwconv_ln_forward

    def spy(*args):
        stacks.append(traceback.extract_stack())
        return real(*args)

    monkeypatch.setattr(impl, "dwconv_ln_forward", spy)
    x, w, b, lw, lb = (i.float().requires_grad_() for i in _inputs())
    convnext_fast.dwconv_layer_norm(x, w, b, lw, lb)
    package = [f for f in stacks[0][:-1] if "/convnext_fast/" in f.filename and "/tests/" not in f.filename]
    assert [f.name for f in package] == ["dwconv_layer_norm", "forward", "_forward"], package
