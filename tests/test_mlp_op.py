"""The public op ``convnext_fast.pointwise_mlp`` (``convnext_fast/mlp.py``) on every backend that can run
it here, against ``reference.pointwise_mlp`` evaluated in float64: the forward and every gradient,
each optional term absent or given, both weight storages ((Hd, C) and (Hd, C, 1, 1)), contiguous and
channels_last inputs, empty inputs, argument errors; the registered ops (opcheck, torch.compile
fullgraph); the modes that fall back to the reference (double backward, torch.func, forward AD, GRN,
dtypes a kernel lacks); and the backend choice (``auto`` runs the reference on CUDA until a GPU
parity run is recorded).

Kernel backends: ``triton`` (through Triton's interpreter on CPU, float32 and float16 only: the
interpreter's bf16 ``tl.dot`` is wrong, triton-lang/triton#11584) and ``cpu`` (the compiled
extension, float32 and bfloat16). A backend without the op's launchers is skipped with the reason.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import convnext_fast
from convnext_fast.fused_elementwise import mlp_composite
from convnext_fast import backend, mlp, reference
from convnext_fast.backend import BackendUnavailableError, resolve_passes
from convnext_fast.mlp import mlp_bwd, mlp_fwd

from conftest import DEVICE, ON_GPU
from convnext_fast.parity import assert_matches_reference, lowp_atol

OP = "pointwise_mlp"
TERMS = ("b1", "b2", "gamma", "shortcut", "drop_scale")
GRADS = ("x", "w1", "b1", "w2", "b2", "gamma", "shortcut")


def _reason(name: str) -> str:
    """'' when backend ``name`` can run pointwise_mlp on DEVICE, else why not."""
    return "" if name == "reference" else backend._op_unavailable_reason(OP, name, DEVICE.type)


@pytest.fixture(params=["reference", "triton", "cpu"])
def any_backend(request):
    reason = _reason(request.param)
    if reason:
        pytest.skip(f"{request.param} cannot run {OP} here: {reason}")
    with convnext_fast.use_backend(request.param):
        yield request.param


@pytest.fixture(params=["triton", "cpu"])
def kernel(request):
    reason = _reason(request.param)
    if reason:
        pytest.skip(f"{request.param} cannot run {OP} here: {reason}")
    with convnext_fast.use_backend(request.param):
        yield request.param


def _skip_unsupported(name: str, dtype: torch.dtype) -> None:
    if name == "triton" and dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("Triton's interpreter computes bf16 tl.dot wrongly (triton-lang/triton#11584)")
    if name in mlp.KERNEL_DTYPES and dtype not in mlp.KERNEL_DTYPES[name]:
        pytest.skip(f"the {name} kernel does not compute in {dtype} (that call runs the reference)")


def make_case(present=TERMS, storage="linear", layout="channels_last", dtype=torch.float32, shape=(2, 8, 3, 5),
              hd=None):
    """float64 masters already rounded to ``dtype`` (the reference sees exactly our inputs), as a dict;
    absent terms are None. drop_scale keeps sample 0 (x1.25) and drops sample 1."""
    n, c, h, w = shape
    hd = 4 * c if hd is None else hd
    g = torch.Generator().manual_seed(1000 + c + 7 * n)

    def rnd(*size, scale=1.0):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype).to(torch.float64)

    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tail = (1, 1) if storage == "conv" else ()
    case = {
        "x": rnd(n, c, h, w).contiguous(memory_format=memory),
        "w1": rnd(hd, c, *tail, scale=max(c, 1) ** -0.5),
        "b1": rnd(hd, scale=0.5),
        "w2": rnd(c, hd, *tail, scale=max(hd, 1) ** -0.5),
        "b2": rnd(c, scale=0.5),
        "gamma": rnd(c),
        "shortcut": rnd(n, c, h, w).contiguous(memory_format=memory),
        "drop_scale": torch.tensor([1.25, 0.0, 2.0, 0.5][:n] + [1.0] * max(0, n - 4), dtype=torch.float64),
    }
    for k in TERMS:
        if k not in present:
            case[k] = None
    return case


def to(case, dtype, requires_grad=False):
    """Fresh copies of the case's tensors on DEVICE in ``dtype``, memory layout kept (drop_scale
    stays float64 and never requires grad: the op rounds it to x's dtype)."""
    out = {}
    for k, v in case.items():
        if v is None or k == "drop_scale":
            out[k] = None if v is None else v.to(DEVICE, copy=True)
        else:
            out[k] = v.to(DEVICE, dtype, copy=True).requires_grad_(requires_grad)
    return out


def composite(x, w1, b1, w2, b2, gamma=None, shortcut=None, grn_weight=None, grn_bias=None, drop_scale=None,
              grn_eps=1e-6):
    """What the op runs where no kernel serves the call: the reference's math in PyTorch's fewest
    passes (``fused_elementwise.mlp_composite``); bitwise what those calls must return."""
    return mlp_composite(x, w1, b1, w2, b2, gamma, shortcut, grn_weight, grn_bias, drop_scale, grn_eps)


def run(fn, t, grad_y=None):
    """fn's output for the tensors ``t`` and, with ``grad_y``, the gradients named in GRADS."""
    y = fn(t["x"], t["w1"], t["b1"], t["w2"], t["b2"], gamma=t["gamma"], shortcut=t["shortcut"],
           drop_scale=t["drop_scale"])
    if grad_y is None:
        return y, {}
    names = [k for k in GRADS if t[k] is not None and t[k].requires_grad]
    grads = torch.autograd.grad(y, [t[k] for k in names], grad_y)
    return y, dict(zip(names, grads))


def check_against_reference(name, case, dtype, grad_y64):
    """Forward and every gradient of the op (current backend) against the float64 reference, with
    PyTorch's own result in ``dtype`` setting the low-precision tolerance."""
    y, grads = run(convnext_fast.pointwise_mlp, to(case, dtype, True), grad_y64.to(dtype))
    y_ref, grads_ref = run(reference.pointwise_mlp, to(case, torch.float64, True), grad_y64)
    assert y.dtype == dtype and set(grads) == set(grads_ref)
    results = [("out", y, y_ref)] + [(f"grad_{k}", grads[k], grads_ref[k]) for k in grads_ref]
    if dtype == torch.float32:
        for label, ours, ref in results:
            # Weight gradients are sums over all rows: allow 1e-5 of the tensor's scale near zero.
            scale = max(ref.abs().max().item(), 1.0)
            assert_matches_reference(ours.detach(), ref.detach(), name=label, atol=1e-5 * scale, rtol=1e-5)
        return y, grads
    y_lowp, grads_lowp = run(reference.pointwise_mlp, to(case, dtype, True), grad_y64.to(dtype))
    lowp = dict([("out", y_lowp)] + [(f"grad_{k}", g) for k, g in grads_lowp.items()])
    for label, ours, ref in results:
        assert_matches_reference(ours.detach(), ref.detach(), lowp[label].detach(), name=label,
                                 atol=lowp_atol(name, dtype))
    return y, grads


def grad_fn_names(y):
    """Names of every node in y's autograd graph."""
    seen, stack, names = set(), [y.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return names


# ------------------------------------------------------------------------------------------ parity

PARITY = [
    # (present terms, weight storage, layout of x / shortcut / grad)
    (TERMS, "linear", "channels_last"),
    ((), "conv", "contiguous"),
    (("b1", "gamma", "drop_scale"), "conv", "channels_last"),
    (("b2", "shortcut"), "linear", "contiguous"),
]


@pytest.mark.parametrize("present,storage,layout", PARITY, ids=["all-linear-cl", "none-conv-nchw",
                                                                "b1-gamma-scale-conv-cl", "b2-shortcut-linear-nchw"])
def test_fp32_forward_and_every_gradient_match_float64_reference(any_backend, present, storage, layout):
    case = make_case(present, storage, layout)
    grad_y = torch.randn(case["x"].shape, dtype=torch.float64, device=DEVICE)
    if layout == "channels_last":
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    y, grads = check_against_reference(any_backend, case, torch.float32, grad_y)
    nodes = grad_fn_names(y)
    if any_backend == "reference":
        assert "PointwiseMlpFunctionBackward" not in nodes
    else:
        # The kernels ran (one Function, no view nodes around it) and the output is channels_last.
        assert nodes[0] == "PointwiseMlpFunctionBackward", nodes
        assert y.is_contiguous(memory_format=torch.channels_last)
        if "shortcut" in present:
            assert torch.equal(grads["shortcut"], grad_y.to(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_within_twice_pytorch_error(any_backend, dtype):
    _skip_unsupported(any_backend, dtype)
    case = make_case(TERMS, "conv", "channels_last", dtype=dtype, shape=(2, 16, 3, 3))
    grad_y = torch.randn(case["x"].shape, dtype=torch.float64, device=DEVICE)
    y, _ = check_against_reference(any_backend, case, dtype, grad_y)
    if any_backend != "reference":
        assert grad_fn_names(y)[0] == "PointwiseMlpFunctionBackward"


def test_expanded_output_gradient_and_c_not_a_power_of_two(kernel):
    """y.sum() hands the backward a stride-0 gradient; C = 20, Hd = 72 (not 4C), odd rows."""
    case = make_case(TERMS, "linear", "contiguous", shape=(3, 20, 3, 3), hd=72)

    def grads(fn, dtype):
        t = to(case, dtype, True)
        y = run(fn, t)[0]
        assert y.sum().grad_fn is not None
        return torch.autograd.grad(y.sum(), [t[k] for k in GRADS])

    for k, a, e in zip(GRADS, grads(convnext_fast.pointwise_mlp, torch.float32),
                       grads(reference.pointwise_mlp, torch.float64)):
        assert_matches_reference(a, e, name=f"grad_{k}", atol=1e-5 * max(e.abs().max().item(), 1.0), rtol=1e-5)


def test_drop_scale_shapes_and_dtype(kernel):
    """(N,) and (N, 1, 1, 1) give the same result; a float64 factor is rounded to x's dtype as the
    reference rounds it."""
    case = make_case(TERMS)
    t = to(case, torch.float32)
    s = torch.tensor([1 / 3, 0.7], dtype=torch.float64, device=DEVICE)
    a = convnext_fast.pointwise_mlp(t["x"], t["w1"], t["b1"], t["w2"], t["b2"], gamma=t["gamma"], drop_scale=s)
    b = convnext_fast.pointwise_mlp(t["x"], t["w1"], t["b1"], t["w2"], t["b2"], gamma=t["gamma"],
                                    drop_scale=s.view(2, 1, 1, 1))
    assert torch.equal(a, b)
    e = reference.pointwise_mlp(*(t[k].double() for k in ("x", "w1", "b1", "w2", "b2")), gamma=t["gamma"].double(),
                                drop_scale=s.float().double())
    assert_matches_reference(a, e, atol=1e-5 * max(e.abs().max().item(), 1.0))


# ----------------------------------------------------------------------- what the route calls


def _spy(monkeypatch, name):
    """Record the calls of backend ``name``'s launchers: (launcher, save_hidden or h given)."""
    impl = backend.implementation(name)
    calls = []
    real_fwd, real_bwd = impl.mlp_forward, impl.mlp_backward

    def fwd(*args):
        calls.append(("mlp_forward", args[9]))
        return real_fwd(*args)

    def bwd(*args):
        calls.append(("mlp_backward", args[9] is not None))
        return real_bwd(*args)

    monkeypatch.setattr(impl, "mlp_forward", fwd)
    monkeypatch.setattr(impl, "mlp_backward", bwd)
    return calls


def test_training_saves_hidden_and_inference_does_not(kernel, monkeypatch):
    calls = _spy(monkeypatch, kernel)
    t = to(make_case(TERMS), torch.float32, True)
    y, _ = run(convnext_fast.pointwise_mlp, t, torch.ones_like(t["x"]))
    assert calls == [("mlp_forward", True), ("mlp_backward", True)]
    calls.clear()
    with torch.no_grad():
        y2, _ = run(convnext_fast.pointwise_mlp, t)
    assert calls == [("mlp_forward", False)] and y2.grad_fn is None
    assert y2.is_contiguous(memory_format=torch.channels_last)
    # The same function; not always the same bits: without h to keep, the CPU kernel may run other
    # GEMMs (oneDNN's, with GELU fused; csrc/cpu_mlp.cpp).
    torch.testing.assert_close(y2, y.detach(), rtol=2e-6, atol=2e-6)
    # In-place updates of the output are allowed (the Function's output is not a view to autograd).
    y3, _ = run(convnext_fast.pointwise_mlp, t)
    y3 += 1
    y3.sum().backward()


def test_only_the_shortcut_needs_grad_skips_the_kernel_backward(kernel, monkeypatch):
    calls = _spy(monkeypatch, kernel)
    t = to(make_case(TERMS), torch.float32)
    t["shortcut"].requires_grad_()
    y, grads = run(convnext_fast.pointwise_mlp, t, torch.full_like(t["x"], 3.0))
    assert [c[0] for c in calls] == ["mlp_forward"]
    assert torch.equal(grads["shortcut"], torch.full_like(t["x"], 3.0))


@pytest.mark.parametrize("shape", [(0, 8, 3, 5), (2, 8, 0, 5)], ids=["N0", "H0"])
def test_empty_input(any_backend, shape):
    case = make_case(TERMS, "conv", shape=shape)
    t = to(case, torch.float32, True)
    y, grads = run(convnext_fast.pointwise_mlp, t, torch.ones(shape, device=DEVICE))
    assert y.shape == shape
    for k in ("w1", "b1", "w2", "b2", "gamma"):
        assert grads[k].shape == t[k].shape and torch.count_nonzero(grads[k]) == 0, k
    assert grads["x"].shape == shape and grads["shortcut"].shape == shape


def test_float64_and_grn_run_the_reference(kernel, monkeypatch):
    calls = _spy(monkeypatch, kernel)
    # float64: the launchers do not compute in it
    t = to(make_case(TERMS), torch.float64, True)
    y, grads = run(convnext_fast.pointwise_mlp, t, torch.ones_like(t["x"]))
    y_ref, grads_ref = run(composite, t, torch.ones_like(t["x"]))
    assert calls == [] and torch.equal(y, y_ref)
    # GRN (ConvNeXt V2): reference GEMMs, PyTorch's autograd, every gradient right
    t = to(make_case(TERMS, "conv", "contiguous"), torch.float32, True)
    g = torch.Generator().manual_seed(5)
    hd = t["w1"].shape[0]
    grn_w = torch.randn(hd, generator=g).to(DEVICE).requires_grad_()
    grn_b = torch.randn(hd, generator=g).to(DEVICE).requires_grad_()
    inputs = [t["x"], t["w1"], t["b1"], t["w2"], t["b2"], t["gamma"], grn_w, grn_b]

    def grn(f):
        y = f(t["x"], t["w1"], t["b1"], t["w2"], t["b2"], gamma=t["gamma"], shortcut=t["shortcut"],
              grn_weight=grn_w, grn_bias=grn_b, drop_scale=t["drop_scale"], grn_eps=1e-5)
        return y, torch.autograd.grad(y.square().sum(), inputs)

    (y, grads), (y_ref, grads_ref) = grn(convnext_fast.pointwise_mlp), grn(composite)
    assert calls == []
    assert torch.equal(y, y_ref)
    for a, e in zip(grads, grads_ref):
        assert torch.equal(a, e)
    assert grads_ref[6].abs().sum() > 0  # GRN's own parameters get gradients


def test_kernel_dtype_gaps_run_the_reference(monkeypatch):
    """float16 on the cpu kernel (it computes in float32 and bfloat16) takes the reference quietly."""
    if _reason("cpu"):
        pytest.skip(f"cpu cannot run {OP} here: {_reason('cpu')}")
    calls = _spy(monkeypatch, "cpu")
    t = to(make_case(TERMS), torch.float16)
    with convnext_fast.use_backend("cpu"):
        y, _ = run(convnext_fast.pointwise_mlp, t)
    assert calls == [] and y.dtype == torch.float16
    assert torch.equal(y, run(composite, t)[0])


def test_drop_scale_requiring_grad_runs_the_reference(kernel, monkeypatch):
    calls = _spy(monkeypatch, kernel)
    t = to(make_case(TERMS), torch.float32)
    t["drop_scale"] = t["drop_scale"].float().requires_grad_()
    (gs,) = torch.autograd.grad(run(composite, t)[0].sum(), t["drop_scale"])
    (gs_ours,) = torch.autograd.grad(run(convnext_fast.pointwise_mlp, t)[0].sum(), t["drop_scale"])
    assert calls == [] and torch.equal(gs, gs_ours) and gs.abs().sum() > 0


# ----------------------------------------------------------------------------- autograd modes


def test_double_backward_differentiates_the_reference(kernel):
    """A gradient penalty through the kernels' Function equals the float64 reference's."""
    case = make_case(TERMS, "conv", "contiguous")
    names = ("x", "w1", "b1", "w2", "b2", "gamma", "shortcut")

    def penalty(fn, dtype):
        t = to(case, dtype, True)
        y = fn(t["x"], t["w1"], t["b1"], t["w2"], t["b2"], gamma=t["gamma"], shortcut=t["shortcut"],
               drop_scale=t["drop_scale"])
        gy = torch.linspace(-1, 1, y.numel(), dtype=dtype, device=DEVICE).view_as(y)
        first = torch.autograd.grad((y * gy).sum(), [t[k] for k in names], create_graph=True)
        total = sum((g * g).sum() for g in first)
        return y, [g.detach() for g in first], torch.autograd.grad(total, [t[k] for k in names], allow_unused=True)

    y, first, second = penalty(convnext_fast.pointwise_mlp, torch.float32)
    assert grad_fn_names(y)[0] == "PointwiseMlpFunctionBackward"
    _, first_ref, second_ref = penalty(reference.pointwise_mlp, torch.float64)
    for k, a, e in zip(names, first, first_ref):
        assert_matches_reference(a, e, name=f"grad_{k}", atol=1e-5 * max(e.abs().max().item(), 1.0))
    for k, a, e in zip(names, second, second_ref):
        if e is None:
            assert a is None or torch.count_nonzero(a) == 0, k
        else:
            assert_matches_reference(a, e, name=f"second_{k}", atol=1e-5 * max(e.abs().max().item(), 1.0))
    assert second_ref[1].abs().sum() > 0


def test_func_transforms_and_forward_ad_run_the_reference(kernel, monkeypatch):
    calls = _spy(monkeypatch, kernel)
    t = to(make_case(TERMS), torch.float32)
    args = (t["x"], t["w1"], t["b1"], t["w2"], t["b2"], t["gamma"], t["shortcut"])

    def call(f):
        return lambda x, w1, b1, w2, b2, gamma, sc: f(x, w1, b1, w2, b2, gamma=gamma, shortcut=sc,
                                                      drop_scale=t["drop_scale"])

    ours, ref = call(convnext_fast.pointwise_mlp), call(composite)
    loss = lambda f: (lambda *a: f(*a).square().sum())  # noqa: E731
    for a, e in zip(torch.func.grad(loss(ours), argnums=tuple(range(7)))(*args),
                    torch.func.grad(loss(ref), argnums=tuple(range(7)))(*args)):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    tangents = tuple(torch.randn_like(a) for a in args)
    _, tan = torch.func.jvp(ours, args, tangents)
    _, tan_ref = torch.func.jvp(ref, args, tangents)
    assert tan_ref.abs().sum() > 0
    torch.testing.assert_close(tan, tan_ref, rtol=0, atol=0)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.unpack_dual(ours(fwAD.make_dual(args[0], tangents[0]), *args[1:])).tangent
        dual_ref = fwAD.unpack_dual(ref(fwAD.make_dual(args[0], tangents[0]), *args[1:])).tangent
    assert dual_ref.abs().sum() > 0
    torch.testing.assert_close(dual, dual_ref, rtol=0, atol=0)
    assert calls == []


# -------------------------------------------------------------------------- registered ops


def _rows_args(case, dtype):
    t = to(case, dtype)
    n, c, h, w = t["x"].shape
    rows = lambda v: None if v is None else v.permute(0, 2, 3, 1).reshape(-1, c).contiguous()  # noqa: E731
    s = None if t["drop_scale"] is None else t["drop_scale"].float()
    return (rows(t["x"]), t["w1"], t["b1"], t["w2"], t["b2"], t["gamma"], rows(t["shortcut"]), s, h * w)


@pytest.mark.parametrize("present", [TERMS, ()], ids=["all", "none"])
def test_opcheck_registered_ops(kernel, present):
    # Inputs without grad: the ops' autograd is the route's one Function, not a registered formula.
    x, w1, b1, w2, b2, gamma, sc, s, rps = _rows_args(make_case(present, shape=(2, 8, 2, 3)), torch.float32)
    for save in (True, False):
        torch.library.opcheck(mlp_fwd, (x, w1, b1, w2, b2, gamma, sc, s, rps, save, kernel))
    out, h = mlp_fwd(x, w1, b1, w2, b2, gamma, sc, s, rps, True, kernel)
    assert out.shape == x.shape and h.shape == (x.shape[0], w1.shape[0])
    gy = torch.randn_like(out)
    for hidden in (h, None):
        torch.library.opcheck(mlp_bwd, (gy, x, w1, b1, w2, b2, gamma, s, rps, hidden, kernel))


def test_compile_fullgraph_forward_and_backward(kernel):
    case = make_case(TERMS, "conv", "channels_last")

    def block(x, w1, b1, w2, b2, gamma, sc, s):
        return convnext_fast.pointwise_mlp(x, w1, b1, w2, b2, gamma=gamma, shortcut=sc, drop_scale=s) * 2.0

    def go(fn):
        t = to(case, torch.float32, True)
        args = [t[k] for k in ("x", "w1", "b1", "w2", "b2", "gamma", "shortcut", "drop_scale")]
        y = fn(*args)
        return y, torch.autograd.grad(y.square().sum(), args[:7])

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    y, grads = go(torch.compile(block, backend=counter, fullgraph=True))
    y_eager, grads_eager = go(block)
    assert counter.frame_count == 1
    assert y.stride() == y_eager.stride()
    torch.testing.assert_close(y, y_eager, rtol=1e-6, atol=1e-6)
    for a, e in zip(grads, grads_eager):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference under compile: the forward op without the hidden activation
        torch.testing.assert_close(torch.compile(block, backend="aot_eager", fullgraph=True)(
            *[to(case, torch.float32)[k] for k in ("x", "w1", "b1", "w2", "b2", "gamma", "shortcut", "drop_scale")]),
            y_eager.detach(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- arguments

X = torch.randn(2, 8, 3, 5)
W1, B1, W2, B2 = torch.randn(32, 8), torch.randn(32), torch.randn(8, 32), torch.randn(8)

BAD = [
    (dict(x=X[0]), ValueError, r"x of shape \(N, C, H, W\), got a 3-D"),
    (dict(x=X.long()), TypeError, "dtype torch.int64"),
    (dict(fc1_weight=torch.randn(32, 6)), ValueError, r"fc1_weight of shape \(Hd, C\) or \(Hd, C, 1, 1\) with C=8"),
    (dict(fc1_weight=torch.randn(32, 8, 3, 3)), ValueError, r"with Hd=32 and C=8, got \(32, 8, 3, 3\)"),
    (dict(fc1_weight=None), TypeError, "fc1_weight to be a torch.Tensor, got None"),
    (dict(fc2_weight=torch.randn(8, 24)), ValueError,
     r"Hd=32 \(the hidden width of fc1_weight \(32, 8\)\), got \(8, 24\)"),
    (dict(fc2_weight=torch.randn(6, 32)), ValueError, r"fc2_weight of shape \(C, Hd\) .* C=8 and Hd=32, got \(6, 32\)"),
    (dict(fc1_bias=torch.randn(8)), ValueError, r"fc1_bias of shape \(32,\) \(the hidden width Hd\), got \(8,\)"),
    (dict(fc2_bias=torch.randn(32)), ValueError, r"fc2_bias of shape \(8,\)"),
    (dict(gamma=torch.randn(1, 8, 1, 1)), ValueError,
     r"gamma of shape \(8,\) \(the channel count of x\), got \(1, 8, 1, 1\)"),
    (dict(gamma=torch.randn(8, dtype=torch.float64)), TypeError, r"gamma to have the dtype of x \(torch.float32\)"),
    (dict(fc2_bias=[0.0] * 8), TypeError, "fc2_bias to be a torch.Tensor, got list"),
    (dict(shortcut=torch.randn(2, 8, 3, 4)), ValueError,
     r"shortcut of the shape of x \(2, 8, 3, 5\), got \(2, 8, 3, 4\)"),
    (dict(grn_weight=torch.randn(32)), ValueError, "grn_weight without grn_bias"),
    (dict(grn_weight=torch.randn(8), grn_bias=torch.randn(8)), ValueError, r"grn_weight of shape \(32,\)"),
    (dict(grn_weight=torch.randn(32), grn_bias=torch.randn(32), grn_eps=0.0), ValueError, "grn_eps to be a positive"),
    (dict(drop_scale=torch.ones(3)), ValueError, r"drop_scale of shape \(2,\) or \(2, 1, 1, 1\) .* got \(3,\)"),
    (dict(drop_scale=torch.ones(2, dtype=torch.int64)), TypeError, "floating-point drop_scale, got dtype torch.int64"),
    (dict(drop_scale=[1.0, 1.0]), TypeError, "drop_scale to be a torch.Tensor, got list"),
    (dict(fc1_bias=torch.randn(32, device="meta")), ValueError, "x is on cpu, fc1_bias on meta"),
]


@pytest.mark.parametrize("change,exc,match", BAD, ids=[f"{i}-{'-'.join(c)}" for i, (c, _, _) in enumerate(BAD)])
def test_bad_arguments_name_the_numbers(change, exc, match):
    kw = dict(x=X, fc1_weight=W1, fc1_bias=B1, fc2_weight=W2, fc2_bias=B2)
    kw.update(change)
    with pytest.raises(exc, match=match):
        convnext_fast.pointwise_mlp(kw.pop("x"), kw.pop("fc1_weight"), kw.pop("fc1_bias"), kw.pop("fc2_weight"),
                                    kw.pop("fc2_bias"), **kw)


# ---------------------------------------------------------------------------- backend choice


def test_auto_on_cuda_runs_the_reference_until_a_gpu_parity_run(monkeypatch):
    """Pure resolution, no GPU needed: every backend reported available on 'cuda'."""
    assert backend.dispatch_table()["cuda"]["kernels_verified"]["pointwise_mlp"] is False
    assert OP in backend.OPS and OP in backend._UNVERIFIED_ON_CUDA
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name, device_type: "")
    cuda = torch.device("cuda")
    with convnext_fast.use_backend("auto"):
        for hw in (7 * 7, 56 * 56):
            assert resolve_passes(OP, cuda, hw) == ("reference", "reference")
        assert resolve_passes("depthwise_conv2d", cuda, 56 * 56)[0] == "triton"  # the other ops still pick kernels
        monkeypatch.setattr(backend, "_UNVERIFIED_ON_CUDA", frozenset())  # once verified: the kernels
        assert resolve_passes(OP, cuda, 56 * 56) != ("reference", "reference")
    if not backend._kernel_reason(OP, "triton"):  # the Triton launchers exist
        with convnext_fast.use_backend("triton"):  # asked for by name, the kernels run: that is the parity run
            assert resolve_passes(OP, cuda, 49) == ("triton", "triton")
    with convnext_fast.use_backend("cuda"), pytest.raises(BackendUnavailableError, match="no pointwise_mlp kernel"):
        resolve_passes(OP, cuda, 49)


def test_auto_on_cpu_picks_the_cpu_kernel_when_it_exists(monkeypatch):
    expected = "reference" if _reason("cpu") else "cpu"
    with convnext_fast.use_backend("auto"):
        assert resolve_passes(OP, torch.device("cpu"), 15) == (expected, expected)
    # Without the launchers (an extension from before the op): auto falls back, a request by name says why.
    from convnext_fast import extension

    monkeypatch.delattr(extension, "mlp_backward", raising=False)
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name, device_type: "")
    backend._kernel_reason.cache_clear()
    try:
        with convnext_fast.use_backend("auto"):
            assert resolve_passes(OP, torch.device("cpu"), 15) == ("reference", "reference")
        with convnext_fast.use_backend("cpu"), pytest.raises(BackendUnavailableError, match="mlp_backward"):
            resolve_passes(OP, torch.device("cpu"), 15)
    finally:
        backend._kernel_reason.cache_clear()
