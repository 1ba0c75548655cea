"""A block's CPU inference calls straight to its kernels (``convnext_fast/direct_block.py``): the
same bits as the ops' routes, and the routes again wherever a call's context or the block changed."""
import copy
import io

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import convnext_fast
from convnext_fast import direct_block, reference
from convnext_fast.inference import FoldedBlock
from convnext_fast.models import ConvNeXtBlock

from conftest import cpu_kernel_unavailable

pytestmark = pytest.mark.skipif(bool(cpu_kernel_unavailable("mlp_forward")),
                                reason=cpu_kernel_unavailable("mlp_forward") or "")

C = 16


def _count(monkeypatch, name: str) -> list:
    calls = []
    forward = getattr(direct_block, name)

    def counted(*args):
        calls.append(args[0].shape)
        return forward(*args)

    monkeypatch.setattr(direct_block, name, counted)
    return calls


@pytest.fixture
def direct_calls(monkeypatch):
    """Counts the calls that went straight to the kernels (in one dtype)."""
    return _count(monkeypatch, "forward")


@pytest.fixture
def promoted_calls(monkeypatch):
    """Counts the direct calls under autocast (a bf16 branch over a float32 stream)."""
    return _count(monkeypatch, "forward_promoted")


def _block(dtype=torch.float32, **kwargs) -> ConvNeXtBlock:
    torch.manual_seed(0)
    block = ConvNeXtBlock(C, **{"ls_init_value": 0.5, **kwargs}).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return block.to(dtype)


def _folded(dtype=torch.float32) -> FoldedBlock:
    return FoldedBlock(_block(), dtype)


def _x(dtype=torch.float32, shape=(2, C, 9, 7)) -> torch.Tensor:
    return torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("make", [_block, _folded], ids=["plain", "folded"])
def test_direct_call_gives_the_routes_bits(make, dtype, direct_calls):
    block, x = make(dtype), _x(dtype)
    with torch.inference_mode():
        first = block(x)  # through the routes
        assert direct_calls == []
        second = block(x)
    assert direct_calls == [x.shape]
    assert torch.equal(first, second)
    assert second.is_contiguous(memory_format=torch.channels_last)
    expected = block(x.double()) if make is _block else None
    if expected is not None:  # the plain block in float64 runs the reference's math
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        assert torch.allclose(second.double(), expected, rtol=tol, atol=tol)


def test_grad_mode_without_grad_inputs_is_direct_for_the_folded_block(direct_calls):
    block, x = _folded(), _x()
    block(x)
    block(x)  # grad mode on, but nothing requires grad: autograd records nothing
    assert len(direct_calls) == 1


def test_a_new_shape_or_layout_goes_through_the_routes_first(direct_calls):
    block = _block()
    with torch.no_grad():
        block(_x())
        block(_x(shape=(1, C, 5, 5)))
        block(_x().contiguous())  # channels-first: other strides
        assert direct_calls == []
        block(_x(shape=(1, C, 5, 5)))
    assert direct_calls == [torch.Size((1, C, 5, 5))]


class _OpNames(TorchDispatchMode):
    """Records the names of the ops dispatched under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def _key(x: torch.Tensor):
    """The key of a call on x under torch.no_grad()."""
    with torch.no_grad():
        return direct_block.DirectCalls.key(x)


def _learned(block: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        block(x)
    assert block._direct.ready(_key(x))
    return block


@pytest.mark.parametrize("context", ["reference_backend", "autocast", "dispatch_mode", "grad", "vmap", "jvp"])
def test_contexts_that_change_the_route_leave_the_direct_call(context, direct_calls):
    block, x = _block(), _x()
    _learned(block, x)
    if context == "reference_backend":
        with convnext_fast.use_backend("reference"), torch.no_grad():
            out = block(x)
        with torch.no_grad():
            assert torch.allclose(out, block(x), rtol=1e-5, atol=1e-5)
        assert len(direct_calls) == 1  # only the call after the context
        return
    if context == "autocast":  # another dtype to compute in: another signature, the routes first
        with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
            out = block(x)
        assert out.dtype == torch.float32  # timm's promotion: the residual stream stays float32
    elif context == "dispatch_mode":
        with _OpNames() as seen, torch.no_grad():
            block(x)
        assert "convnext_fast.mlp_fwd.default" in seen.names  # the mode saw the registered ops
    elif context == "grad":
        xg = x.clone().requires_grad_(True)
        block(xg).sum().backward()
        assert xg.grad is not None and block.mlp.fc1.weight.grad is not None
    elif context == "vmap":
        out = torch.func.vmap(block)(x[None])  # each call inside sees x's shape
        assert direct_calls == []
        with torch.no_grad():
            assert torch.allclose(out[0], block(x), rtol=1e-5, atol=1e-5)
        direct_calls.clear()
    elif context == "jvp":
        _, tangent = torch.func.jvp(block, (x,), (torch.ones_like(x),))
        assert tangent.abs().sum() > 0
    assert direct_calls == []


def test_training_with_drop_path_is_never_direct(direct_calls):
    block, x = _block(drop_path=0.5), _x()
    _learned(block, x)
    block.train()
    with torch.no_grad():
        torch.manual_seed(1)
        a = block(x)
    assert direct_calls == []
    block.eval()
    with torch.no_grad():
        block(x)
    assert len(direct_calls) == 1
    assert a.shape == x.shape


def test_in_place_and_replaced_parameters_are_read_on_every_call(direct_calls):
    block, x = _block(), _x()
    _learned(block, x)
    with torch.no_grad():
        block.mlp.fc1.weight.mul_(2.0)
        block.norm.bias.add_(0.25)
        block.mlp.fc2.weight = nn.Parameter(torch.randn_like(block.mlp.fc2.weight))
        out = block(x)
        assert len(direct_calls) == 1
        expected = block(x.double())
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_a_parameter_that_no_longer_fits_raises_in_the_kernel():
    block, x = _block(), _x()
    _learned(block, x)
    block.mlp.fc1.weight = nn.Parameter(torch.randn(3 * C, C))  # another hidden width than fc2 takes
    with torch.no_grad(), pytest.raises(RuntimeError, match="w2|Hd|shape"):
        block(x)


def test_moving_the_block_forgets_its_direct_calls(direct_calls):
    block, x = _block(), _x()
    _learned(block, x)
    block.to(torch.bfloat16)
    assert not block._direct.ready(_key(x))
    with torch.no_grad():
        out = block(x)  # float32 input, bfloat16 parameters: the route casts them
    assert direct_calls == [] and out.dtype == torch.float32
    folded = _learned(_folded(), x)
    folded.to("cpu")
    assert not folded._direct.ready(_key(x))


def test_never_direct_for_grn_or_dilation(direct_calls):
    with torch.no_grad():
        for block in (_block(use_grn=True, ls_init_value=None), _block(dilation=2)):
            x = _x()
            block(x)
            block(x)
            assert not block._direct.ready(_key(x))
    assert direct_calls == []


def test_copies_and_saved_models_keep_working(direct_calls):
    model = convnext_fast.optimize_for_inference(
        convnext_fast.convnext_atto(num_classes=5).eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(model(x), expected)
    assert direct_calls  # the second forward's blocks
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        with torch.inference_mode():
            assert torch.equal(other(x), expected)
            assert torch.equal(other(x), expected)


def test_a_block_pickled_without_the_memo_gets_one():
    block = _block()
    state = block.__dict__.copy()
    del state["_direct"]
    fresh = ConvNeXtBlock.__new__(ConvNeXtBlock)
    fresh.__setstate__(state)
    x = _x()
    with torch.no_grad():
        expected = block(x)
        fresh(x)
        assert fresh._direct.ready(_key(x))
        assert torch.equal(fresh(x), expected)


def test_reference_math_of_the_direct_call():
    """The direct call against the float64 reference ops, with the layer scale and biases."""
    block, x = _block(), _x()
    with torch.no_grad():
        block(x)
        out = block(x)
        xd = x.double()
        p = {n: t.double() for n, t in block.named_parameters()}
        y = reference.dwconv_layer_norm(xd, p["conv_dw.weight"], p["conv_dw.bias"], p["norm.weight"], p["norm.bias"],
                                        block.norm.eps)
        expected = reference.pointwise_mlp(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"], p["mlp.fc2.weight"],
                                           p["mlp.fc2.bias"], gamma=p["gamma"]) + xd
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=["f32_stream", "bf16_input"])
@pytest.mark.parametrize("ls_init_value", [0.5, None], ids=["gamma", "no_gamma"])
def test_autocast_direct_call_gives_the_routes_bits(x_dtype, ls_init_value, promoted_calls, direct_calls):
    """Under autocast the branch runs in bf16 and the stream stays float32 (timm's promotion): the
    direct call (the cast of x into the pool, the two kernels, the residual in the MLP's chunks)
    gives the bits of the route's cast, ops and ``torch.addcmul``. A bf16 input without a layer
    scale is one dtype throughout: the one-dtype direct call."""
    block, x = _block(ls_init_value=ls_init_value), _x(x_dtype)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        first = block(x)
        second = block(x)
    one_dtype = x_dtype == torch.bfloat16 and ls_init_value is None
    assert (direct_calls, promoted_calls) == (([x.shape], []) if one_dtype else ([], [x.shape]))
    assert torch.equal(first, second)
    assert second.dtype == (torch.bfloat16 if one_dtype else torch.float32)
    with torch.no_grad():
        expected = block(x.double())
    assert torch.allclose(second.double(), expected, rtol=3e-2, atol=3e-2)


def test_autocast_model_forwards_repeat_their_bits(promoted_calls):
    model = convnext_fast.convnext_atto(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", torch.bfloat16), torch.inference_mode():
        first = model(x)
        assert promoted_calls == []
        second = model(x)
    assert len(promoted_calls) == sum(len(s.blocks) for s in model.stages)
    assert torch.equal(first, second)


def test_autocast_in_place_parameter_updates_are_seen(promoted_calls):
    """The kept bf16 casts of the parameters are made again after an in-place change."""
    block, x = _block(), _x()
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        block(x)
        block.mlp.fc1.weight.mul_(-1.5)
        block.gamma.add_(1.0)
        out = block(x)
        assert len(promoted_calls) == 1
        block._direct.clear()
        expected = block(x)  # through the routes
    assert torch.equal(out, expected)


def test_parameters_that_need_grad_take_the_routes_in_grad_mode(direct_calls):
    """A signature learned under no_grad, then the same input in grad mode with parameters that
    need gradients (fine-tuning in eval mode, or a frozen block unfrozen): the routes record the
    graph and every parameter gets its gradient."""
    block, x = _block(), _x()
    block.requires_grad_(False)
    block(x)  # grad mode, nothing needs a gradient: learned
    block(x)
    assert len(direct_calls) == 1
    block.requires_grad_(True)
    block(x).sum().backward()
    assert len(direct_calls) == 1
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    folded = _folded()
    folded(x)
    folded.fc1_weight.requires_grad_(True)
    folded(x).sum().backward()
    assert folded.fc1_weight.grad is not None and len(direct_calls) == 1


def test_the_memo_stays_bounded():
    block = _block()
    with torch.no_grad():
        for w in range(1, 2 + direct_block._MAX_SIGNATURES):
            block(_x(shape=(1, C, 3, w)))
    assert 1 <= len(block._direct._seen) <= direct_block._MAX_SIGNATURES
    assert block._direct.ready(_key(_x(shape=(1, C, 3, 1 + direct_block._MAX_SIGNATURES))))
