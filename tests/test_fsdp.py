"""Sharded training: FSDP2 (``torch.distributed.fsdp.fully_shard``) over our ConvNeXt, the way the
largest models (convnext_xlarge, convnextv2_huge) are trained past one GPU's memory.

Two gloo processes on the CPU, each holding half of every parameter and seeing half of the batch,
take the same optimizer steps as one process on the whole batch: same losses, same updated
parameters. The ranks run the reference, then the default backend (``auto``: the compiled CPU
kernels where they are built); the single-process run is the reference. CPU only, also on a GPU
machine: two ranks cannot share one GPU under NCCL, and the CPU is what every CI machine has.
"""
from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast.models import ConvNeXt

from model_helpers import randomize_, rel_err

if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with the gloo backend is not available", allow_module_level=True)

# V1 (layer scale) and V2 (GRN, no layer scale); num_classes=5 makes the head's parameters (5, 64)
# and (5,) split unevenly over two ranks (3 + 2 rows), which FSDP2 pads.
ARCHS = {
    "v1": dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=5),
    "v2": dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=5, use_grn=True, ls_init_value=None),
}
STEPS = 2
BATCH = 4
TIMEOUT_S = 120  # a hung collective must fail the test, not stall the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 3, 32, 32, generator=g), torch.randint(0, 5, (BATCH,), generator=g))
            for _ in range(STEPS)]


def _optimizer(model):
    # SGD with momentum and weight decay: the update is linear in the gradient, so a parameter
    # mismatch measures the sharded gradients (Adam's first step, ~lr * sign(grad), would turn
    # rounding noise in near-zero gradients into full-size differences).
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)


def _single_process(state, batches, arch):
    """Losses and final parameters of one process on the whole batch, on the reference backend."""
    model = ConvNeXt(**arch).train()
    model.load_state_dict(state)
    opt = _optimizer(model)
    losses = []
    with convnext_fast.use_backend("reference"):
        for x, t in batches:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, {k: p.detach().clone() for k, p in model.named_parameters()}


def _fsdp_worker(rank, world, port, states, batches, out_dir, backends):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        mesh = init_device_mesh("cpu", (world,))
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        results = {}
        # Every backend and model in one pair of processes: starting them (importing torch) costs
        # more than the training steps.
        for backend_name in backends:
            convnext_fast.set_backend(backend_name)
            results[backend_name] = {"ran": convnext_fast.backend.resolve("dwconv_layer_norm", torch.device("cpu"), 64)}
            for name, arch in ARCHS.items():
                model = ConvNeXt(**arch).train()
                model.load_state_dict(states[name])
                # One FSDP unit per stage and the root (stem + head), as large models are wrapped:
                # each stage's parameters are all-gathered just before it runs and freed after.
                for stage in model.stages:
                    fully_shard(stage, mesh=mesh)
                fully_shard(model, mesh=mesh)
                sharded = all(isinstance(p, DTensor) and p.placements == (Shard(0),) for p in model.parameters())
                opt = _optimizer(model)
                losses = []
                for x, t in batches:
                    opt.zero_grad()
                    loss = F.cross_entropy(model(x[shard]), t[shard])
                    loss.backward()  # gradients reduce-scattered: each rank gets the mean over ranks of its shard
                    opt.step()
                    # the whole batch's mean loss is the mean of the equal-sized shards' losses
                    total = loss.detach().clone()
                    dist.all_reduce(total)
                    losses.append(total.item() / world)
                params = {k: p.full_tensor() for k, p in model.named_parameters()}  # a collective: every rank
                local = {k: p.to_local().shape for k, p in model.named_parameters()}
                results[backend_name][name] = {"sharded": sharded, "losses": losses, "params": params,
                                               "local_shapes": local}
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "fsdp.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(worker, args, nprocs):
    """torch.multiprocessing.spawn with a hard time limit: a rank that hangs in a collective is
    killed and the test fails instead of blocking the suite."""
    import torch.multiprocessing as mp

    ctx = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    start = time.monotonic()
    while not ctx.join(timeout=1):  # raises if a rank failed
        if time.monotonic() - start > TIMEOUT_S:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join()
            pytest.fail(f"FSDP2 workers did not finish within {TIMEOUT_S} s")


def test_fsdp2_two_processes_match_single_process(tmp_path):
    """Two FSDP2 ranks (parameters sharded on dim 0, half the batch each) take the single-process
    optimizer steps: same loss at each step, same parameters after the last. The ranks run the
    reference, then the default backend (``auto``: the compiled CPU kernels), whose sums run in
    another order than PyTorch's, which stays far inside fp32's 1e-5."""
    with convnext_fast.use_backend("auto"):
        kernels = convnext_fast.backend.resolve("dwconv_layer_norm", torch.device("cpu"), 64) != "reference"
    backends = ["reference", "auto"] if kernels else ["reference"]
    states, expected = {}, {}
    batches = _batches()
    for name, arch in ARCHS.items():
        model = ConvNeXt(**arch)
        randomize_(model)
        states[name] = {k: v.clone() for k, v in model.state_dict().items()}
        expected[name] = _single_process(states[name], batches, arch)

    _spawn(_fsdp_worker, (2, _free_port(), states, batches, str(tmp_path), backends), nprocs=2)
    results = torch.load(tmp_path / "fsdp.pt", weights_only=True)

    tol = 1e-5
    for backend_name in backends:
        ran = results[backend_name]["ran"]
        assert (ran == "reference") == (backend_name == "reference"), (backend_name, ran)
        for name in ARCHS:
            got = results[backend_name][name]
            exp_losses, exp_params = expected[name]
            where = (backend_name, ran, name)
            assert got["sharded"], f"{where}: fully_shard left a parameter unsharded"
            assert got["local_shapes"]["head.fc.weight"] == (3, 64), where  # rank 0's rows of the 5 classes
            assert got["losses"] == pytest.approx(exp_losses, rel=tol), where
            assert got["params"].keys() == exp_params.keys()
            for k, p in exp_params.items():
                assert rel_err(got["params"][k], p) < tol, (*where, k)
    for name in ARCHS:
        # the steps moved the parameters far beyond the tolerance, so lost updates cannot pass above
        assert rel_err(expected[name][1]["head.fc.weight"], states[name]["head.fc.weight"]) > 1e-3
    if not kernels:
        pytest.skip("the reference ranks passed; no kernel backend runs CPU tensors by default here "
                    "(compiled extension not built)")
