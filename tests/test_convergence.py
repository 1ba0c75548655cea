"""Convergence parity (Liger-Kernel's convergence tests are the model): a small ConvNeXt trained in
float32 on real data that ships inside a package, scikit-learn's 8x8 digits upsampled to 16x16,
once with the compiled CPU kernels and once with the reference backend, from the same seed and the
same batches. The two loss curves must agree, and both models must learn the task."""
import pytest
import torch
import torch.nn.functional as F

import convnext_fast
from convnext_fast.backend import available_backends
from convnext_fast.models import ConvNeXt

STEPS = 300
BATCH = 32
SEED = 0


def _digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is needed (pip install scikit-learn)")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    test, train = perm[:360], perm[360:]
    return x[train], y[train], x[test], y[test]


def _train(backend: str, data) -> tuple[list[float], float]:
    """Losses of every step and the final test accuracy (%) of one run on ``backend``."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(SEED)
    model = ConvNeXt(depths=(2, 2), dims=(32, 64), kernel_size=7, in_chans=1, num_classes=10, patch_size=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    order = torch.Generator().manual_seed(SEED + 1)
    losses: list[float] = []
    with convnext_fast.use_backend(backend):
        model.train()
        idx = torch.empty(0, dtype=torch.long)
        for _ in range(STEPS):
            if len(idx) < BATCH:
                idx = torch.cat([idx, torch.randperm(len(y_train), generator=order)])
            batch, idx = idx[:BATCH], idx[BATCH:]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item() * 100
    return losses, acc


def test_cpu_kernels_converge_like_reference():
    reason = available_backends("cpu")["cpu"]
    if reason:
        pytest.skip(reason)
    data = _digits()
    threads = torch.get_num_threads()
    # A model this small is dominated by per-op overhead, which extra threads only add to.
    torch.set_num_threads(1)
    try:
        ref_losses, ref_acc = _train("reference", data)
        cpu_losses, cpu_acc = _train("cpu", data)
    finally:
        torch.set_num_threads(threads)
    assert len(ref_losses) == len(cpu_losses) == STEPS
    for step, (a, b) in enumerate(zip(cpu_losses[:50], ref_losses[:50])):
        assert abs(a - b) <= 1e-3 * abs(b), f"step {step}: loss {a} on cpu vs {b} on reference"
    # The run learned something: the loss fell well below chance (ln 10 = 2.3).
    assert ref_losses[0] > 2.0 and sum(ref_losses[-20:]) / 20 < 0.5
    assert ref_acc >= 90.0 and cpu_acc >= 90.0, (ref_acc, cpu_acc)
    assert abs(ref_acc - cpu_acc) <= 1.5, (ref_acc, cpu_acc)
