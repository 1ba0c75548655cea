"""Training: gradients against timm, optimizer steps across backends, stochastic depth, gradient
checkpointing, autocast (bf16), torch.compile(fullgraph=True) and DDP (gloo, two processes, on the
reference and on the device's default kernels). Tests run on the reference backend unless they say
otherwise."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast import models
from convnext_fast.models import ConvNeXt
from convnext_fast.weights import load_weights

from model_helpers import randomize_, rel_err, timm_convnext, timm_model

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=5)


@pytest.fixture(autouse=True)
def _reference_backend():
    with convnext_fast.use_backend("reference"):
        yield


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_training_step_gradients_match_timm(name):
    ref = timm_model(name).train()
    model = getattr(models, name)(pretrained=ref.state_dict()).train()
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 1000, (2,))
    grads_x = []
    for m in (ref, model):
        xi = x.clone().requires_grad_()
        F.cross_entropy(m(xi), target).backward()
        grads_x.append(xi.grad)
    assert rel_err(grads_x[1], grads_x[0]) < 1e-4
    g_ref, g = _grads(ref), _grads(model)
    assert g.keys() == g_ref.keys()
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) < 1e-4, k


def _sgd_losses(model, steps=3, device="cpu"):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, t = torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 5, (2,), generator=g)
        x, t = x.to(device), t.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_sgd_steps_match_timm():
    ref = timm_convnext(**SMALL).train()
    model = ConvNeXt(**SMALL).train()
    load_weights(model, ref.state_dict())
    assert _sgd_losses(model) == pytest.approx(_sgd_losses(ref), rel=1e-4)


def test_sgd_steps_kernel_backend_match_reference(kernel_backend, device):
    """The same optimizer steps on each kernel backend (Triton interpreter on CPU) and on reference."""
    arch = dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 24), num_classes=5)
    base = ConvNeXt(**arch)
    randomize_(base)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    losses = {}
    for backend in ("reference", kernel_backend):
        model = ConvNeXt(**arch).to(device).train()
        model.load_state_dict(state)
        with convnext_fast.use_backend(backend):
            losses[backend] = _sgd_losses(model, steps=2, device=device)
    assert losses[kernel_backend] == pytest.approx(losses["reference"], rel=1e-4)


def test_stochastic_depth_matches_timm_with_same_rng():
    """Same seed, same per-sample Bernoulli draws in the same order: identical training outputs."""
    ref = timm_convnext(**SMALL, drop_path_rate=0.5).train()
    model = ConvNeXt(**SMALL, drop_path_rate=0.5).train()
    load_weights(model, ref.state_dict())
    x = torch.randn(8, 3, 32, 32)
    torch.manual_seed(123)
    expected = ref(x)
    torch.manual_seed(123)
    out = model(x)
    assert rel_err(out, expected) < 2e-5
    torch.manual_seed(7)
    assert rel_err(model(x), expected) > 1e-3  # other draws drop other blocks
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_gradient_checkpointing_same_gradients_and_recomputes():
    model = ConvNeXt(**SMALL).train()
    randomize_(model)
    x = torch.randn(2, 3, 32, 32)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    expected = _grads(model)
    model.zero_grad()
    calls = []
    block = model.stages[2].blocks[0]
    block_forward = block.forward

    def counting_forward(*args):
        calls.append(1)
        return block_forward(*args)

    block.forward = counting_forward
    model.set_grad_checkpointing(True)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    del block.forward
    assert len(calls) == 2  # forward, and recomputed in backward
    for k, g in _grads(model).items():
        assert rel_err(g, expected[k]) < 1e-5, k
    model.set_grad_checkpointing(False, stages=[0])
    assert [s.grad_checkpointing for s in model.stages] == [False, True, True, True]


def test_autocast_bf16_within_low_precision_tolerance():
    """bf16 autocast: our error against float64 is at most 2x timm's own bf16 error (+ small atol)."""
    ref = timm_model("convnext_atto")
    model = models.convnext_atto(pretrained=ref.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exact = ref.double()(x.double())
        ref.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_ref, out = ref(x), model(x)
    assert torch.isfinite(out).all()
    err_ref = (out_ref.double() - exact).abs().max().item()
    err = (out.double() - exact).abs().max().item()
    assert err <= 2 * err_ref + 1e-2 * exact.abs().max().item(), (err, err_ref)

    # and a training step runs, with finite float32 parameter gradients
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), torch.tensor([3, 4]))
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_autocast_inference_keeps_casts_until_a_parameter_changes(mode):
    """Autocast inference keeps each parameter's bf16 cast between forwards (``layers._as_param``):
    the outputs are those of a fresh cast every call, bit for bit, and an in-place update of a
    parameter (an optimizer step, ``load_state_dict``) or a parameter given new memory is seen by the
    next forward. Grad mode on casts every call, so gradients reach the float32 parameters."""
    from convnext_fast import layers

    model = models.convnext_atto().eval()
    with torch.no_grad():
        randomize_(model)
    x = torch.randn(1, 3, 32, 32)
    ctx = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run():
        with ctx(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    def fresh():  # the same forward with nothing kept
        layers._PARAMETER_CASTS.clear()
        return run()

    first = fresh()
    assert len(layers._PARAMETER_CASTS) > 0
    assert torch.equal(run(), first)
    block = model.stages[1].blocks[0]
    with torch.no_grad():
        block.mlp.fc1.weight.mul_(2.0)
    changed = run()
    assert not torch.equal(changed, first)
    assert torch.equal(changed, fresh())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["stages.1.blocks.0.mlp.fc2.weight"].mul_(-1.0)
    model.load_state_dict(state)
    assert torch.equal(run(), fresh())
    block.conv_dw.weight = torch.nn.Parameter(block.conv_dw.weight.detach() * 0.5)
    assert torch.equal(run(), fresh())

    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert block.mlp.fc1.weight.grad is not None and block.mlp.fc1.weight.grad.dtype == torch.float32


def test_compile_fullgraph_whole_model_no_graph_break():
    """torch.compile(fullgraph=True) traces convnext_atto forward + backward with no graph break
    (aot_eager: the graph capture and autograd tracing without inductor's long CPU compile)."""
    torch._dynamo.reset()
    model = models.convnext_atto(num_classes=10).train()
    randomize_(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 3, 32, 32)
    out = compiled(x)
    out.sum().backward()
    expected_grads = _grads(model)
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    assert rel_err(out, ref) < 1e-5
    for k, g in _grads(model).items():
        assert rel_err(expected_grads[k], g) < 1e-4, k


@pytest.mark.slow
def test_compile_inductor_tiny_model():
    """Inductor (CPU, gcc) over a tiny ConvNeXt V2 with checkpointing: forward and backward match eager."""
    torch._dynamo.reset()
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=3, use_grn=True, ls_init_value=None).train()
    randomize_(model)
    model.set_grad_checkpointing(True, stages=[1])
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    ref.sum().backward()
    expected = _grads(model)
    model.zero_grad()
    out = torch.compile(model, fullgraph=True)(x)
    out.sum().backward()
    assert rel_err(out, ref) < 1e-4
    for k, g in _grads(model).items():
        assert rel_err(g, expected[k]) < 1e-3, k


# ------------------------------------------------------------------------------------------ DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, state, x, t, out_dir, backend_name, device):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # gloo: two ranks on one machine, CPU or a single GPU (NCCL needs one GPU per rank).
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as conftest.py
        convnext_fast.set_backend(backend_name)
        model = ConvNeXt(**SMALL).train()
        model.load_state_dict(state)
        ddp = DDP(model.to(device))
        shard = slice(rank * x.shape[0] // world, (rank + 1) * x.shape[0] // world)
        F.cross_entropy(ddp(x[shard].to(device)), t[shard].to(device)).backward()
        if rank == 0:
            ran = convnext_fast.backend.resolve("dwconv_layer_norm", torch.device(device), 64)
            torch.save({"backend": ran, "grads": {k: p.grad.cpu() for k, p in model.named_parameters()}},
                       os.path.join(out_dir, "grads.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend_name", ["reference", "kernels"])
def test_ddp_two_processes_match_single_process(tmp_path, backend_name, device):
    """Two DDP ranks, each on half the batch, give the single-process gradients of the whole batch
    (computed with the reference). ``kernels``: the ranks run the default backend for the device
    (``auto``: the compiled CPU kernels, or Triton / CUDA on a GPU)."""
    import torch.multiprocessing as mp

    with convnext_fast.use_backend("auto"):  # what the workers will run (this file defaults to reference)
        if backend_name == "kernels" and convnext_fast.backend.resolve("dwconv_layer_norm", device, 64) == "reference":
            pytest.skip(f"no kernel backend runs {device} tensors by default here")
    model = ConvNeXt(**SMALL).train()
    randomize_(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, t = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    with convnext_fast.use_backend("reference"):
        F.cross_entropy(model(x), t).backward()  # mean over the full batch = DDP's average of shard means
    expected = _grads(model)
    worker_backend = "reference" if backend_name == "reference" else "auto"
    mp.spawn(_ddp_worker, args=(2, _free_port(), state, x, t, str(tmp_path), worker_backend, str(device)),
             nprocs=2, join=True)
    saved = torch.load(tmp_path / "grads.pt", weights_only=True)
    grads = saved["grads"]
    assert (saved["backend"] == "reference") == (backend_name == "reference"), saved["backend"]
    tol = 1e-5 if backend_name == "reference" else 1e-4  # kernels sum in another order than PyTorch
    for k, g in expected.items():
        assert rel_err(grads[k], g) < tol, k
