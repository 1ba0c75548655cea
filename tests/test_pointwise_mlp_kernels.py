"""The Triton kernels of the pointwise MLP (``kernels/pointwise_mlp.py``) against
``reference.pointwise_mlp`` evaluated in float64: the forward (both routes: fused, and the two GEMMs
with fused epilogues), the saved pre-activation, every gradient of ``mlp_backward`` (saved and
recomputed h), each optional term absent, rows not a multiple of the row tile, C not a power of
two, a stride-0 output gradient, and bitwise-deterministic backward passes.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors, where ``tl.dot``
is exact in fp32 and fp16 but wrong in bf16 (triton-lang/triton#11584): bf16 is tested on a GPU.
"""
import pytest
import torch

from convnext_fast import reference
from convnext_fast.kernels import pointwise_mlp as P
from convnext_fast.parity import assert_matches_reference as _assert_matches

ON_GPU = torch.cuda.is_available()
DEV = torch.device("cuda" if ON_GPU else "cpu")
TERMS = ("b1", "b2", "gamma", "shortcut", "s")
GRAD_NAMES = ("grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2", "grad_gamma")
# Forced configurations for the CPU tests: the two-GEMM route with small tiles (several tiles in
# every dimension, K-loop tails, the grouped program order) and the fused route with output slices
# narrower than C (BLOCK_N 16 over C = 40: three slices, the last one partly masked).
GEMM_SMALL = ("gemm", 32, 32, 16, 2, 4, 2)
FUSED_SLICED = ("fused", 32, 64, 16, 32, 4, 2)


def make_case(n, c, h, w, absent=(), hd=None):
    """float64 (N, C, H, W) input and shortcut, fc1 / fc2 parameters (fan-in scaled, so values stay
    O(1)), layer scale and a per-sample scale with a dropped sample; absent terms are None."""
    hd = 4 * c if hd is None else hd
    g = torch.Generator().manual_seed(1234 + c)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    case = {"x": rnd(n, c, h, w), "w1": rnd(hd, c, scale=c ** -0.5), "b1": rnd(hd, scale=0.5),
            "w2": rnd(c, hd, scale=hd ** -0.5), "b2": rnd(c, scale=0.5), "gamma": rnd(c),
            "shortcut": rnd(n, c, h, w),
            "s": torch.tensor([1.25, 0.0, 2.0, 0.5][:n], dtype=torch.float32)}
    for k in absent:
        case[k] = None
    return case


def rows(t):
    """(M, C) rows of an (N, C, H, W) tensor: its channels_last view, flattened."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def cast(case, dtype):
    out = {}
    for k, v in case.items():
        if v is None or k == "s":
            out[k] = None if v is None else v.to(DEV)
        elif k in ("x", "shortcut"):
            out[k] = rows(v).to(DEV, dtype).contiguous()
        else:
            out[k] = v.to(DEV, dtype)
    return out


def reference_rows(case, dtype=torch.float64, grad_out=None):
    """The reference in ``dtype`` as (M, C) rows; with ``grad_out`` also the gradients of
    (x, w1, b1, w2, b2, gamma) (None where absent) by autograd."""
    leaves = {k: (v.to(dtype).requires_grad_(grad_out is not None) if v is not None and k not in ("s", "shortcut")
                  else v) for k, v in case.items()}
    sc = case["shortcut"].to(dtype) if case["shortcut"] is not None else None
    y = reference.pointwise_mlp(leaves["x"], leaves["w1"], leaves["b1"], leaves["w2"], leaves["b2"],
                                gamma=leaves["gamma"], shortcut=sc, drop_scale=case["s"])
    y = rows(y)
    if grad_out is None:
        return y.detach()
    names = ("x", "w1", "b1", "w2", "b2", "gamma")
    inputs = [leaves[k] for k in names if leaves[k] is not None]
    grads = iter(torch.autograd.grad(y, inputs, grad_out.to(dtype)))
    out = [next(grads) if leaves[k] is not None else None for k in names]
    out[0] = rows(out[0])
    return y.detach(), out


def run_forward(cd, rps, save_hidden=False, cfg=None):
    args = (cd["x"], cd["w1"], cd["b1"], cd["w2"], cd["b2"], cd["gamma"], cd["shortcut"], cd["s"], rps, save_hidden)
    if cfg is None:
        return P.mlp_forward(*args)
    return P._forward(*args, cfg)


def run_backward(cd, go, rps, h=None):
    return P.mlp_backward(go, cd["x"], cd["w1"], cd["b1"], cd["w2"], cd["b2"], cd["gamma"], cd["s"], rps, h)


def assert_matches_reference(ours, ref64, lowp=None, **kw):
    """convnext_fast.parity.assert_matches_reference with every tensor brought to the CPU first."""
    _assert_matches(ours.cpu(), ref64.cpu(), None if lowp is None else lowp.cpu(), **kw)


def scaled_atol(ref, rel=1e-5):
    return rel * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("route", ["auto", "gemm"])
@pytest.mark.parametrize("c,shape", [(8, (2, 5, 7)), (40, (3, 5, 4)), (96, (2, 7, 5))])
def test_forward_fp32(c, shape, route):
    n, h, w = shape  # M = 70, 60, 70 rows: never a multiple of the row tile
    case = make_case(n, c, h, w)
    cd = cast(case, torch.float32)
    out, hid = run_forward(cd, h * w, save_hidden=True, cfg=GEMM_SMALL if route == "gemm" else None)
    ref = reference_rows(case)
    assert_matches_reference(out, ref, name="out", atol=scaled_atol(ref))
    h_ref = rows(case["x"]) @ case["w1"].T + case["b1"]
    assert_matches_reference(hid, h_ref, name="h", atol=scaled_atol(h_ref))


@pytest.mark.parametrize("absent", [(t,) for t in TERMS] + [TERMS])
def test_forward_optional_terms_fp32(absent):
    case = make_case(2, 40, 3, 6, absent=absent)
    cd = cast(case, torch.float32)
    out, hid = run_forward(cd, 18)
    assert hid is None
    ref = reference_rows(case)
    assert_matches_reference(out, ref, name=f"out without {absent}", atol=scaled_atol(ref))


def test_forward_fused_output_slices_fp32():
    case = make_case(3, 40, 3, 7)
    cd = cast(case, torch.float32)
    out, hid = run_forward(cd, 21, save_hidden=True, cfg=FUSED_SLICED)
    ref = reference_rows(case)
    assert_matches_reference(out, ref, name="out", atol=scaled_atol(ref))
    h_ref = rows(case["x"]) @ case["w1"].T + case["b1"]
    assert_matches_reference(hid, h_ref, name="h (written once, by the first slice)", atol=scaled_atol(h_ref))


def test_forward_hidden_not_four_c_fp32():
    case = make_case(2, 40, 4, 5, hd=72)  # Hd not a multiple of the hidden chunk
    cd = cast(case, torch.float32)
    ref = reference_rows(case)
    for cfg in (None, GEMM_SMALL):
        out, _ = run_forward(cd, 20, cfg=cfg)
        assert_matches_reference(out, ref, name=f"out ({cfg})", atol=scaled_atol(ref))


@pytest.mark.parametrize("route", ["auto", "gemm"])
def test_forward_fp16_within_twice_pytorch(route):
    case = make_case(2, 96, 5, 6)
    cd = cast(case, torch.float16)
    out, hid = run_forward(cd, 30, save_hidden=True, cfg=GEMM_SMALL if route == "gemm" else None)
    assert out.dtype == hid.dtype == torch.float16
    ref = reference_rows(case)
    lowp = reference_rows({k: (v.to(DEV) if v is not None else None) for k, v in case.items()}, torch.float16)
    assert_matches_reference(out, ref, lowp, name="out")
    h_ref = rows(case["x"]) @ case["w1"].T + case["b1"]
    h_lowp = torch.nn.functional.linear(cd["x"], cd["w1"], cd["b1"])
    assert_matches_reference(hid, h_ref, h_lowp, name="h")


def test_forward_empty_and_fp64():
    case = make_case(2, 40, 3, 3)
    cd = cast(case, torch.float32)
    cd["x"], cd["shortcut"] = cd["x"][:0], cd["shortcut"][:0]
    out, hid = run_forward(cd, 9, save_hidden=True)
    assert out.shape == (0, 40) and hid.shape == (0, 160)
    cd = cast(case, torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        run_forward(cd, 9)
    with pytest.raises(NotImplementedError, match="float64"):
        run_backward(cd, cd["x"], 9)


# ----------------------------------------------------------------------------------- backward


def check_grads(ours, ref, dtype=torch.float32, lowp=None, what=""):
    for i, name in enumerate(GRAD_NAMES):
        o, r = ours[i], ref[i]
        if r is None:
            assert o is None, f"{name}{what}: expected None for an absent input"
            continue
        if lowp is None:
            assert o.dtype == dtype, f"{name}{what}: dtype {o.dtype}"
            assert_matches_reference(o, r, name=name + what, atol=scaled_atol(r))
        else:
            assert_matches_reference(o, r, lowp[i], name=name + what)


@pytest.mark.parametrize("saved_h", [True, False])
@pytest.mark.parametrize("c,shape", [(8, (2, 5, 7)), (40, (3, 4, 5)), (96, (2, 7, 5))])
def test_backward_fp32(c, shape, saved_h):
    n, h, w = shape
    case = make_case(n, c, h, w)
    cd = cast(case, torch.float32)
    go = torch.randn(n * h * w, c, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, ref = reference_rows(case, grad_out=go)
    _, hid = run_forward(cd, h * w, save_hidden=True)
    ours = run_backward(cd, go.to(DEV, torch.float32), h * w, hid if saved_h else None)
    check_grads(ours, ref)


@pytest.mark.parametrize("absent", [("b1", "gamma"), ("b2", "s"), TERMS])
def test_backward_optional_terms_fp32(absent):
    case = make_case(2, 40, 3, 5, absent=absent)
    cd = cast(case, torch.float32)
    go = torch.randn(30, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, ref = reference_rows(case, grad_out=go)
    check_grads(run_backward(cd, go.to(DEV, torch.float32), 15), ref, what=f" without {absent}")


def test_backward_expanded_stride0_grad_fp32():
    case = make_case(2, 40, 4, 4)
    cd = cast(case, torch.float32)
    go = torch.randn(1, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64).expand(32, 40)
    _, ref = reference_rows(case, grad_out=go)
    go_ours = go[:1].to(DEV, torch.float32).expand(32, 40)
    assert go_ours.stride() == (0, 1)
    check_grads(run_backward(cd, go_ours, 16), ref, what=" (stride-0 grad_out)")


def test_backward_fp16_within_twice_pytorch():
    case = make_case(2, 40, 5, 6)
    cd = cast(case, torch.float16)
    go = torch.randn(60, 40, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    _, ref = reference_rows(case, grad_out=go)
    _, lowp = reference_rows({k: v for k, v in case.items()}, torch.float16, grad_out=go)
    check_grads(run_backward(cd, go.to(DEV, torch.float16), 30), ref, lowp=lowp, what=" (fp16)")


def test_backward_deterministic():
    case = make_case(3, 40, 5, 5)  # M = 75: two row-splits of the weight gradient, two dgelu row tiles
    cd = cast(case, torch.float16)
    go = torch.randn(75, 40, generator=torch.Generator().manual_seed(11)).to(DEV, torch.float16)
    assert P._bwd_config(40, 160, 75, torch.float16)[10] > 1, "the test should exercise a split reduction"
    first = run_backward(cd, go, 25)
    second = run_backward(cd, go, 25)
    for name, a, b in zip(GRAD_NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two identical backward passes"


# ----------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("c,hw", [(96, 56), (192, 28), (384, 14), (1408, 14)])
def test_bf16_stage_shapes_gpu(c, hw):
    """bf16 (tensor-core dots, both forward routes) at ConvNeXt stage shapes, batch 4."""
    case = make_case(4, c, hw, hw)
    cd = cast(case, torch.bfloat16)
    rps = hw * hw
    out, hid = run_forward(cd, rps, save_hidden=True)
    ref = reference_rows(case)
    lowp = reference_rows({k: (v.to(DEV) if v is not None else None) for k, v in case.items()}, torch.bfloat16)
    assert_matches_reference(out.cpu(), ref, lowp.cpu(), name="out")
    go = torch.randn(4 * rps, c, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    _, ref_g = reference_rows(case, grad_out=go)
    _, lowp_g = reference_rows({k: (v.to(DEV) if v is not None else None) for k, v in case.items()}, torch.bfloat16,
                               grad_out=go.to(DEV))
    for h in (hid, None):
        ours = run_backward(cd, go.to(DEV, torch.bfloat16), rps, h)
        check_grads([o.cpu() for o in ours], ref_g, lowp=[g.cpu() for g in lowp_g], what=" (bf16)")
