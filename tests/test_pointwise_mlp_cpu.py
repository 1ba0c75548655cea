"""The CPU kernel of the fused pointwise MLP (csrc/cpu_mlp.cpp) through its launchers
``extension.mlp_forward`` / ``extension.mlp_backward``, against ``reference.pointwise_mlp`` in float64.

Token rows are the NHWC view of channels_last (N, C, H, W) tensors, as the op passes them. Covered:
C = 8, 13, 40, 96 (Hd = 4C) and one width past the kernel's hidden-chunk threshold (Hd = 800: chunks
of 448 + 352 hidden units, which with 2 threads and M = 30 go one to each thread and are summed
afterwards); M not a multiple of the row block; every optional term present or None;
the saved and the recomputed pre-activation; float32 (tight) and bfloat16 (within 2x PyTorch's
own bf16 error); 1 and 2 threads; bitwise-repeatable backward; argument errors.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convnext_fast import extension, reference
from conftest import cpu_kernel_unavailable
from convnext_fast.parity import assert_matches_reference


REASON = cpu_kernel_unavailable("mlp_forward")
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"CPU MLP kernel unavailable: {REASON}")

# (N, C, H, W): M = N*H*W = 646 and 105 are not multiples of any row block the kernel picks (it
# splits M into 2-4 blocks here, the last one shorter); C = 200 makes Hd = 800 > 768, the fp32
# path's hidden-chunk threshold; C = 13 leaves a remainder past the 8 x 8 blocks of the tile transposes.
SHAPES = [(2, 8, 17, 19), (3, 40, 5, 7), (2, 96, 17, 19), (2, 200, 3, 5), (2, 13, 5, 3)]
# Which optional terms are present: (b1, b2, gamma, shortcut, sample_scale), and whether the
# forward saves h (else the backward recomputes it).
TERMS = [
    ((True, True, True, True, True), True),
    ((False, False, False, False, False), False),
    ((True, False, True, False, True), False),
    ((False, True, False, True, False), True),
]


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def make_inputs(N, C, H, W, terms, dtype):
    """Float64 masters (4-D activations channels_last) and the optional terms (None where absent)."""
    use_b1, use_b2, use_gamma, use_sc, use_s = terms
    Hd = 4 * C
    x = torch.randn(N, C, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    p = {
        "x": x,
        "w1": torch.randn(Hd, C, dtype=torch.float64) * C ** -0.5,
        "b1": torch.randn(Hd, dtype=torch.float64) * 0.5 if use_b1 else None,
        "w2": torch.randn(C, Hd, dtype=torch.float64) * Hd ** -0.5,
        "b2": torch.randn(C, dtype=torch.float64) * 0.5 if use_b2 else None,
        "gamma": torch.randn(C, dtype=torch.float64) if use_gamma else None,
        "shortcut": (torch.randn(N, C, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
                     if use_sc else None),
    }
    # Round every master to the tested dtype, so that the reference sees exactly our inputs.
    p = {k: (None if v is None else v.to(dtype).to(torch.float64)) for k, v in p.items()}
    s = torch.rand(N, dtype=torch.float32) * 2 if use_s else None  # float32 in the op's contract
    return p, s


def rows(t):
    """(N, C, H, W) channels_last -> (M, C) token rows (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def reference_run(p, s, grad_rows, dtype, with_grad):
    """Reference out (as rows), h (rows), and gradients, computed in dtype (from the float64 masters)."""
    q = {k: (None if v is None else v.to(dtype).detach().requires_grad_(with_grad and k != "shortcut"))
         for k, v in p.items()}
    drop = None if s is None else s.to(dtype)
    out = reference.pointwise_mlp(q["x"], q["w1"], q["b1"], q["w2"], q["b2"], gamma=q["gamma"],
                                  shortcut=q["shortcut"], drop_scale=drop)
    h = torch.nn.functional.linear(rows(q["x"]), q["w1"], q["b1"])
    grads = {}
    if with_grad:
        N, C, H, W = q["x"].shape
        g4 = grad_rows.to(dtype).reshape(N, H, W, C).permute(0, 3, 1, 2)
        out.backward(g4)
        grads = {k: q[k].grad for k in ("x", "w1", "b1", "w2", "b2", "gamma") if q[k] is not None}
        grads["x"] = rows(grads["x"])
    return rows(out.detach()), h.detach(), grads


def call_forward(p, s, dtype, save_hidden):
    c = {k: (None if v is None else v.to(dtype)) for k, v in p.items()}
    x4 = c["x"].contiguous(memory_format=torch.channels_last)
    sc = None if c["shortcut"] is None else rows(c["shortcut"].contiguous(memory_format=torch.channels_last))
    xr = rows(x4)
    assert xr.data_ptr() == x4.data_ptr() and xr.stride(1) == 1  # the NHWC view, no copy
    rps = x4.shape[2] * x4.shape[3]
    out, h = extension.mlp_forward(xr, c["w1"], c["b1"], c["w2"], c["b2"], c["gamma"], sc, s, rps, save_hidden)
    return c, xr, rps, out, h


def check(ours, ref64, lowp, name, dtype):
    scale = max(ref64.abs().max().item(), 1.0)
    if dtype == torch.float32:
        # fp32: elementwise 1e-5 relative, plus 1e-5 of the tensor's scale for entries near zero
        # (gradients are sums over hundreds of rows).
        assert_matches_reference(ours, ref64, name=name, atol=1e-5 * scale, rtol=1e-5)
    else:
        assert_matches_reference(ours, ref64, lowp, name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("terms,save_hidden", TERMS, ids=["all", "none", "b1-gamma-s", "b2-shortcut"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_match_reference(shape, terms, save_hidden, dtype, threads):
    p, s = make_inputs(*shape, terms, dtype)
    c, xr, rps, out, h = call_forward(p, s, dtype, save_hidden)
    M, C = xr.shape
    assert out.shape == (M, C) and out.dtype == dtype
    assert (h is not None) == save_hidden
    grad = torch.randn(M, C, dtype=torch.float64).to(dtype)

    out64, h64, g64 = reference_run(p, s, grad.double(), torch.float64, with_grad=True)
    lowp = reference_run(p, s, grad.double(), dtype, with_grad=dtype != torch.float32)
    check(out, out64, lowp[0], "out", dtype)
    if save_hidden:
        assert h.shape == (M, 4 * C) and h.dtype == dtype
        check(h, h64, lowp[1], "h", dtype)

    grads = extension.mlp_backward(grad, xr, c["w1"], c["b1"], c["w2"], c["b2"], c["gamma"], s, rps, h)
    names = ("x", "w1", "b1", "w2", "b2", "gamma")
    for name, g in zip(names, grads):
        if name in g64:
            assert g is not None, f"grad of {name} missing"
            assert g.dtype == dtype and g.shape == g64[name].shape, (name, g.dtype, g.shape)
            check(g, g64[name], lowp[2].get(name), f"grad {name}", dtype)
        else:
            assert g is None, f"grad of absent {name} should be None"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_backward_is_bitwise_repeatable(dtype, threads):
    p, s = make_inputs(2, 96, 17, 19, TERMS[0][0], dtype)
    c, xr, rps, out, h = call_forward(p, s, dtype, save_hidden=False)
    grad = torch.randn(out.shape).to(dtype)
    args = (grad, xr, c["w1"], c["b1"], c["w2"], c["b2"], c["gamma"], s, rps, None)
    first, second = extension.mlp_backward(*args), extension.mlp_backward(*args)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # the forward too, from a weight's first call on (which converts the weight the later ones reuse)
    w1, w2 = c["w1"].clone(), c["w2"].clone()
    outs = [extension.mlp_forward(xr, w1, c["b1"], w2, c["b2"], c["gamma"], None, s, rps, False)[0] for _ in range(3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_backward_does_not_depend_on_the_thread_count():
    """With the pre-activation saved, every gradient is one fixed sequence of operations: 1, 2 and
    3 threads give the same bits (M = 646 rows: blocks of 64 and 256 with remainders)."""
    p, s = make_inputs(2, 96, 17, 19, TERMS[0][0], torch.float32)
    c, xr, rps, out, h = call_forward(p, s, torch.float32, save_hidden=True)
    grad = torch.randn(out.shape)
    args = (grad, xr, c["w1"], c["b1"], c["w2"], c["b2"], c["gamma"], s, rps, h)
    before = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(extension.mlp_backward(*args))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_strided_rows_and_empty_input():
    """Rows with a stride larger than C (a column slice) and M = 0."""
    big = torch.randn(50, 64)
    x = big[:, :40]
    w1, w2 = torch.randn(160, 40) * 0.1, torch.randn(40, 160) * 0.1
    out, _ = extension.mlp_forward(x, w1, None, w2, None, None, None, None, 1, False)
    ref = torch.nn.functional.linear(torch.nn.functional.gelu(x.double() @ w1.double().T), w2.double())
    assert_matches_reference(out, ref, name="out", atol=1e-5, rtol=1e-5)
    out0, h0 = extension.mlp_forward(x[:0], w1, None, w2, None, None, None, None, 1, True)
    assert out0.shape == (0, 40) and h0.shape == (0, 160)


def test_errors_name_the_numbers():
    x = torch.randn(12, 8)
    w1, w2 = torch.randn(32, 8), torch.randn(8, 32)
    with pytest.raises(RuntimeError, match=r"w2 must have shape \[8, 32\]"):
        extension.mlp_forward(x, w1, None, w2.T.contiguous(), None, None, None, None, 1, False)
    with pytest.raises(RuntimeError, match="N=5 entries and rows_per_sample=2, but x has M=12"):
        extension.mlp_forward(x, w1, None, w2, None, None, None, torch.ones(5), 2, False)
    with pytest.raises(RuntimeError, match="gamma has dtype"):
        extension.mlp_forward(x, w1, None, w2, None, torch.ones(8, dtype=torch.bfloat16), None, None, 1, False)
    with pytest.raises(NotImplementedError, match="float32 and bfloat16"):
        extension.mlp_forward(x.double(), w1.double(), None, w2.double(), None, None, None, None, 1, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["grad_enabled", "inference_mode"])
def test_parameters_requiring_grad_and_inference_mode(dtype, mode, threads):
    """nn.Parameter weights (requires_grad) and torch.inference_mode tensors, with the row blocks on
    worker threads (whose grad mode / inference mode state is the default, not the caller's)."""
    import contextlib

    ctx = torch.inference_mode() if mode == "inference_mode" else contextlib.nullcontext()
    with ctx:
        x = torch.randn(646, 40).to(dtype)
        w1 = torch.nn.Parameter((torch.randn(160, 40) * 0.1).to(dtype))
        b1 = torch.nn.Parameter(torch.zeros(160, dtype=dtype))
        w2 = torch.nn.Parameter((torch.randn(40, 160) * 0.1).to(dtype))
        out, h = extension.mlp_forward(x, w1, b1, w2, None, None, x, None, 1, True)
        ref = x.double() + torch.nn.functional.linear(
            torch.nn.functional.gelu(torch.nn.functional.linear(x.double(), w1.double(), b1.double())), w2.double())
        assert_matches_reference(out, ref.detach(), ref.detach().to(dtype), name="out", atol=1e-5, rtol=1e-5)
        assert not out.requires_grad
        grads = extension.mlp_backward(torch.ones_like(out), x, w1, b1, w2, None, None, None, 1, h)
        assert all(g is None or not g.requires_grad for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("m", [37, 1100], ids=lambda m: f"M{m}")
def test_weights_updated_in_place_are_seen_by_the_next_call(dtype, m):
    """The kernel keeps converted weights between calls (oneDNN's packed layout, fp32 copies for
    bf16 without bf16 dot products), each checked against the weight's version: an in-place update
    (an optimizer step, FSDP refilling a parameter, ``load_state_dict``, a write through a view) is
    seen by the next call, and a new weight at a freed weight's address is never mistaken for it."""
    torch.manual_seed(0)
    x = torch.randn(m, 8).to(dtype)
    w1, w2 = torch.randn(32, 8).to(dtype), torch.randn(8, 32).to(dtype)
    b1, b2 = torch.randn(32).to(dtype), torch.randn(8).to(dtype)

    def check(out, w1, w2):
        ref = F.linear(F.gelu(F.linear(x.double(), w1.double(), b1.double())), w2.double(), b2.double())
        assert_matches_reference(out, ref, F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2), name="out",
                                 atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        for _ in range(2):
            out, _ = extension.mlp_forward(x, w1, b1, w2, b2, None, None, None, m, False)
            check(out, w1, w2)
            w1.mul_(0.5)
            w2[:, :3] = 1.0
        for _ in range(3):  # fresh weights, likely at the address of the ones just freed
            w1, w2 = torch.randn(32, 8).to(dtype), torch.randn(8, 32).to(dtype)
            out, _ = extension.mlp_forward(x, w1, b1, w2, b2, None, None, None, m, False)
            check(out, w1, w2)


def test_inference_forward_does_not_depend_on_the_thread_count():
    """float32 inference (no h kept) gives the same bits on 1, 2 and 3 threads, on either GEMM path
    (oneDNN below 1024 rows, the row-block path from there on)."""
    before = torch.get_num_threads()
    for shape in ((1, 96, 14, 14), (2, 40, 30, 20)):
        p, s = make_inputs(*shape, TERMS[0][0], torch.float32)
        results = []
        try:
            for t in (1, 2, 3):
                torch.set_num_threads(t)
                results.append(call_forward(p, None, torch.float32, save_hidden=False)[3])
        finally:
            torch.set_num_threads(before)
        for other in results[1:]:
            assert torch.equal(results[0], other)


@pytest.mark.parametrize("terms", [TERMS[0][0], (True, True, False, True, False)], ids=["all", "folded"])
def test_bf16_inference_in_row_chunks(terms):
    """bf16 inference runs oneDNN on row chunks whose hidden activation fits 4 MB (here Hd = 2048:
    chunks of 1024 rows over M = 2 * 35 * 36 = 2520, the last one shorter), with the layer scale and
    per-sample scale after the chunks ("all") or the shortcut added by fc2 itself ("folded")."""
    p, s = make_inputs(2, 512, 35, 36, terms, torch.bfloat16)
    _, _, _, out, _ = call_forward(p, s, torch.bfloat16, save_hidden=False)
    out64, _, _ = reference_run(p, s, None, torch.float64, with_grad=False)
    lowp, _, _ = reference_run(p, s, None, torch.bfloat16, with_grad=False)
    assert_matches_reference(out, out64, lowp, name="out")


@pytest.mark.parametrize("shortcut_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_gamma", [True, False], ids=["gamma", "no_gamma"])
@pytest.mark.parametrize("m", [37, 1300])
def test_promoted_forward_is_the_mlp_then_addcmul(shortcut_dtype, with_gamma, m, threads):
    """Autocast's block tail (``mlp_forward_promoted``): a float32 stream over the bf16 MLP has the
    bits of the MLP's bf16 output followed by ``torch.addcmul`` (one rounding), over one row chunk
    and over several (Hd = 4096: chunks of 512 rows), with a shortcut of strided rows."""
    g = torch.Generator().manual_seed(m)
    C, Hd = 16, 4096
    bf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).bfloat16()  # noqa: E731
    x, w1, b1, w2, b2 = bf(m, C), bf(Hd, C, scale=0.25), bf(Hd), bf(C, Hd, scale=0.02), bf(C)
    gamma = torch.randn(C, generator=g) * 0.1 if with_gamma else None
    shortcut = torch.randn(m, 2 * C, generator=g).to(shortcut_dtype)[:, 3:3 + C]  # row stride 2C
    z, _ = extension.mlp_forward(x, w1, b1, w2, b2, None, None, None, m, False)
    expected = torch.addcmul(shortcut, z, gamma) if with_gamma else shortcut.float() + z.float()
    out = extension.mlp_forward_promoted(x, w1, b1, w2, b2, gamma, shortcut)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, expected), (out - expected).abs().max()


def test_promoted_forward_errors_name_the_numbers():
    C, Hd, m = 8, 32, 5
    x, w1, w2 = torch.randn(m, C).bfloat16(), torch.randn(Hd, C).bfloat16(), torch.randn(C, Hd).bfloat16()
    sc = torch.randn(m, C)
    with pytest.raises(RuntimeError, match="bfloat16 x"):
        extension.mlp_forward_promoted(x.float(), w1.float(), None, w2.float(), None, None, sc)
    with pytest.raises(RuntimeError, match="float32 \\(C,\\).*C=8"):
        extension.mlp_forward_promoted(x, w1, None, w2, None, torch.randn(C).bfloat16(), sc)
    with pytest.raises(RuntimeError, match="shortcut must have shape \\(M, C\\) = \\(5, 8\\)"):
        extension.mlp_forward_promoted(x, w1, None, w2, None, None, torch.randn(m + 1, C))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        extension.mlp_forward_promoted(x, w1, None, w2, None, None, sc.double())
