"""optimize_for_inference: the folded model computes the original's function for every factory (V1
and V2, reduced depths, tiny inputs), on every backend that runs here; keeps the feature APIs;
refuses training; leaves the input model untouched; works on a convert()ed timm model and under
torch.compile(fullgraph=True)."""
from __future__ import annotations

import pytest
import torch

import convnext_fast
from convnext_fast.inference import FoldedBlock, FoldedHead, FoldedPatchConv
from convnext_fast.verify import randomized

from conftest import DEVICE


def rel_err(a, e):
    return ((a.double() - e.double()).norm() / e.double().norm()).item()


def _small(name):
    depths = (1, 1, 1, 1)
    return randomized(convnext_fast.create_model(name, depths=depths, num_classes=7)).to(DEVICE)


ALL = convnext_fast.list_models()


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("name", ALL)
def test_every_factory_fp32(name, backend):
    """32x32, every width from atto to V2 huge: ``auto`` (the compiled CPU kernels here) and the
    Triton kernels (through the interpreter on a machine without a GPU) for every folded layer."""
    if convnext_fast.available_backends(DEVICE.type).get(backend):
        pytest.skip(f"the {backend} backend cannot run here")
    model = _small(name)
    x = torch.randn(2 if backend == "auto" else 1, 3, 32, 32, device=DEVICE)
    with convnext_fast.use_backend(backend), torch.no_grad():
        optimized = convnext_fast.optimize_for_inference(model)
        assert sum(isinstance(m, FoldedBlock) for m in optimized.modules()) == 4
        if DEVICE.type == "cpu" or backend == "triton":  # where the patch kernel runs (auto on CUDA: once verified)
            assert sum(isinstance(m, FoldedPatchConv) for m in optimized.modules()) == 4  # stem, 3 downsamplings
            assert isinstance(optimized.head, FoldedHead)
        assert rel_err(optimized(x), model(x)) < 1e-5


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_kernel_backends_and_intermediates(kernel_backend, name):
    model = _small(name)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    optimized = convnext_fast.optimize_for_inference(model)
    with torch.no_grad():
        assert rel_err(optimized(x), model(x)) < 1e-5
        ours = optimized.forward_intermediates(x, intermediates_only=True)
        expected = model.forward_intermediates(x, intermediates_only=True)
        for a, e in zip(ours, expected):
            assert rel_err(a, e) < 1e-5
        assert rel_err(optimized.forward_head(optimized.forward_features(x)), model(x)) < 1e-5
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        assert rel_err(optimized.forward_head(optimized.forward_features(x), pre_logits=True), features) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_within_its_rounding(dtype):
    """bf16 weights and activations: within 2x of PyTorch's own bf16 error on the same model."""
    model = _small("convnext_atto")
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    optimized = convnext_fast.optimize_for_inference(model, dtype=dtype)
    with torch.no_grad():
        expected = model.double()(x.double())
        torch_err = rel_err(convnext_fast.to_reference(_small("convnext_atto").to(dtype))(x.to(dtype)), expected)
        ours = optimized(x)  # the stem casts fp32 input to the model's dtype
    assert ours.dtype == dtype
    assert rel_err(ours, expected) <= 2 * torch_err + 1e-3
    # The patch kernels serve bf16 as well: the stem, downsampling layers and head are folded.
    assert any(isinstance(m, FoldedPatchConv) for m in optimized.modules())
    assert any(isinstance(m, FoldedHead) for m in optimized.modules())


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", ""])
def test_head_fold_for_every_pool_type(pool):
    """The head's LayerNorm folds into its Linear after any global pool; without pooling (a
    classifier at every position) the head is kept as it is."""
    model = randomized(convnext_fast.create_model("convnext_atto", depths=(1, 1, 1, 1), num_classes=7,
                                                   global_pool=pool)).to(DEVICE)
    optimized = convnext_fast.optimize_for_inference(model)
    assert isinstance(optimized.head, FoldedHead) == (pool != "")
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    with torch.no_grad():
        assert rel_err(optimized(x), model(x)) < 1e-5


def test_float16_under_triton_folds_every_layer():
    """fp16 on the Triton kernels (the interpreter here): blocks, stem, downsampling layers and head
    all folded, the output within 2x PyTorch's own fp16 error of the float64 model."""
    if convnext_fast.available_backends(DEVICE.type)["triton"]:
        pytest.skip("the triton backend cannot run here")
    model = _small("convnext_atto")
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    with convnext_fast.use_backend("triton"), torch.no_grad():
        optimized = convnext_fast.optimize_for_inference(model, dtype=torch.float16)
        assert sum(isinstance(m, FoldedPatchConv) for m in optimized.modules()) == 4
        assert isinstance(optimized.head, FoldedHead)
        ours = optimized(x)
    with torch.no_grad():
        expected = model.double()(x.double())
        torch_err = rel_err(convnext_fast.to_reference(_small("convnext_atto").half())(x.half()), expected)
    assert ours.dtype == torch.float16
    assert rel_err(ours, expected) <= 2 * torch_err + 1e-3


def test_refuses_training_and_backward_and_leaves_the_original():
    model = _small("convnext_atto")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = convnext_fast.optimize_for_inference(model)
    assert not optimized.training and not any(p.requires_grad for p in optimized.parameters())
    with pytest.raises(RuntimeError, match="inference only"):
        optimized.train()
    optimized.eval()  # allowed
    with pytest.raises(RuntimeError, match="does not support backward"):
        optimized(torch.randn(1, 3, 32, 32, device=DEVICE, requires_grad=True))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FoldedBlock) for m in model.modules())
    with pytest.raises(ValueError, match="no ConvNeXt block"):
        convnext_fast.optimize_for_inference(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="floating dtype"):
        convnext_fast.optimize_for_inference(model, dtype=torch.int8)


def test_converted_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    original = timm.create_model("convnext_atto", pretrained=False, num_classes=5, depths=(1, 1, 1, 1)).eval()
    randomized(original)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
        optimized = convnext_fast.optimize_for_inference(convnext_fast.convert(original))
        assert sum(isinstance(m, FoldedPatchConv) for m in optimized.modules()) == 4
        assert rel_err(optimized(x), expected) < 1e-5


def test_compile_fullgraph():
    model = _small("convnext_atto")
    optimized = convnext_fast.optimize_for_inference(model)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    compiled = torch.compile(optimized, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) < 1e-5


def test_cuda_graph_needs_a_cuda_model_and_input():
    from convnext_fast.cuda_graph import GraphedForward

    model = _small("convnext_atto").cpu()
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        convnext_fast.optimize_for_inference(model, cuda_graph=True)
    graphed = GraphedForward(model.forward)
    with pytest.raises(ValueError, match="takes a CUDA tensor, got cpu"):
        graphed(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="warmup >= 1"):
        GraphedForward(model.forward, warmup=0)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_the_optimized_forward():
    """Each input shape gets its own graph; replays follow new inputs, return fresh tensors, and
    equal the eager optimized model; shapes beyond max_graphs and grad inputs are refused."""
    model = _small("convnext_atto")
    eager = convnext_fast.optimize_for_inference(model, dtype=torch.bfloat16)
    graphed = convnext_fast.optimize_for_inference(model, dtype=torch.bfloat16, cuda_graph=True)
    graphed.forward.max_graphs = 2
    with torch.no_grad():
        for batch in (1, 2, 1):
            for _ in range(2):
                x = torch.randn(batch, 3, 32, 32, device=DEVICE, dtype=torch.bfloat16)
                first = graphed(x)
                second = graphed(x * 2)
                assert first.data_ptr() != second.data_ptr()
                assert rel_err(first, eager(x)) < 1e-2
                assert rel_err(second, eager(x * 2)) < 1e-2
        assert graphed.forward.captured == 2
        with pytest.raises(RuntimeError, match="max_graphs=2"):
            graphed(torch.randn(3, 3, 32, 32, device=DEVICE, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="does not support backward"):
        graphed(torch.randn(1, 3, 32, 32, device=DEVICE, requires_grad=True))
    assert rel_err(graphed.forward_features(x), eager.forward_features(x)) < 1e-2


@pytest.mark.parametrize("name,one_kernel", [("convnext_atto", True), ("convnextv2_atto", False)])
def test_one_kernel_blocks_under_triton(name, one_kernel, monkeypatch):
    """With triton asked for by name, V1 blocks (C <= 256, K <= 7) run as one kernel and give the
    original's output; V2 blocks (GRN) take the two fused ops."""
    from convnext_fast import backend

    if backend.available_backends(DEVICE.type)["triton"]:
        pytest.skip("the triton backend cannot run here (on CPU it needs TRITON_INTERPRET=1)")
    impl = backend.implementation("triton")
    calls = []
    real = impl.block_forward
    monkeypatch.setattr(impl, "block_forward", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    model = convnext_fast.create_model(name, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=3)
    model = randomized(model).to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    optimized = convnext_fast.optimize_for_inference(model)
    with torch.no_grad(), convnext_fast.use_backend("triton"):
        assert rel_err(optimized(x), model(x)) < 1e-5
    assert len(calls) == (4 if one_kernel else 0)


def test_one_kernel_block_op_is_registered():
    from convnext_fast.inference import block_fwd

    c, hd = 8, 32
    args = (torch.randn(1, c, 5, 4).contiguous(memory_format=torch.channels_last), torch.randn(c, 1, 3, 3),
            torch.randn(c), 1e-6, torch.randn(hd, c), torch.randn(hd), torch.randn(c, hd), torch.randn(c))
    from convnext_fast import backend

    if backend.available_backends("cpu")["triton"]:
        pytest.skip("the triton backend cannot run here (on CPU it needs TRITON_INTERPRET=1)")
    torch.library.opcheck(block_fwd, args)
