"""examples/train_cifar.py on a tiny dataset generated in CIFAR's python on-disk format: training
runs, resuming is bit-exact, two gloo processes match one, bad files are named."""
import csv
import importlib.util
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convnext_fast

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_cifar.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_cifar", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tc = _script()


def _write(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the published files


def make_cifar10(root: Path, per_batch: int = 4, n_test: int = 8, seed: int = 0) -> Path:
    """cifar-10-batches-py/ with five training batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        _write(d / f"data_batch_{i}", {b"batch_label": b"training batch",
                                       b"labels": rng.integers(0, 10, per_batch).tolist(),
                                       b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                       b"filenames": [b"x.png"] * per_batch})
    _write(d / "test_batch", {b"labels": rng.integers(0, 10, n_test).tolist(),
                              b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)})
    _write(d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                b"num_cases_per_batch": per_batch})
    return d


@pytest.fixture
def data(tmp_path):
    make_cifar10(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def restore_backend():
    before = convnext_fast.get_backend()
    yield
    convnext_fast.set_backend(before)


def _losses(out: Path) -> list:
    return [(int(r["step"]), r["loss"]) for r in csv.DictReader(open(out / "train_log.csv"))]


def _run(data: Path, out: Path, *extra: str) -> None:
    argv = ["--data", str(data), "--dataset", "cifar10", "--batch-size", "4", "--epochs", "2", "--out", str(out),
            "--no-progress", "--warmup-steps", "1", *extra]
    assert tc.main(argv) == 0


def test_loader_checks_and_reads(tmp_path, data):
    x, y, xt, yt, names = tc.load_cifar(str(data), "cifar10")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (20,)
    assert xt.shape == (8, 3, 32, 32) and names[0] == "c0" and int(y.max()) < 10
    # CIFAR-100 layout: train / test / meta, fine labels.
    d = tmp_path / "c100" / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", 12), ("test", 4)):
        _write(d / name, {b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": [0] * n,
                          b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)})
    _write(d / "meta", {b"fine_label_names": [b"f"] * 100, b"coarse_label_names": [b"c"] * 20})
    x, y, xt, yt, names = tc.load_cifar(str(tmp_path / "c100"), "cifar100")
    assert x.shape == (12, 3, 32, 32) and len(names) == 100


@pytest.mark.parametrize("damage", ["missing", "garbage", "shape", "labels", "global"])
def test_bad_dataset_file_is_named(data, damage):
    target = data / "cifar-10-batches-py" / "data_batch_3"
    if damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(b"\x80\x02this is not a pickle")
    elif damage == "shape":
        _write(target, {b"labels": [0] * 8, b"data": np.zeros((8, 1024), np.uint8)})
    elif damage == "labels":
        _write(target, {b"labels": [0] * 7 + [10], b"data": np.zeros((8, 3072), np.uint8)})
    else:  # a pickle that would run code: refused before anything is built
        target.write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(tc.DatasetError, match="data_batch_3"):
        tc.load_cifar(str(data), "cifar10")


@pytest.mark.parametrize("model", ["k7", "convnext_atto"])
def test_two_steps(data, tmp_path, model, restore_backend):
    out = tmp_path / "run"
    _run(data, out, "--model", model, "--max-steps", "2", "--backend", "cpu" if model == "k7" else "auto")
    losses = _losses(out)
    assert [s for s, _ in losses] == [1, 2] and all(np.isfinite(float(v)) for _, v in losses)
    assert (out / "last.pt").is_file() and (out / "eval_log.csv").is_file()
    assert (out / "curves.png").is_file()


def test_resume_is_bit_exact(data, tmp_path, restore_backend):
    common = ("--model", "convnext_atto", "--drop-path", "0.1", "--backend", "cpu")
    _run(data, tmp_path / "full", *common, "--max-steps", "4")
    _run(data, tmp_path / "half", *common, "--max-steps", "2")
    _run(data, tmp_path / "half", *common, "--max-steps", "4", "--resume", str(tmp_path / "half" / "last.pt"))
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "half")
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert resumed == full  # the logged losses are repr() of the float: equal strings, equal bits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one(data, tmp_path):
    common = ["--data", str(data), "--dataset", "cifar10", "--batch-size", "4", "--epochs", "2", "--no-progress",
              "--model", "convnext_atto", "--drop-path", "0", "--max-steps", "3", "--warmup-steps", "1",
              "--backend", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(SCRIPT), *common, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT), *common, "--out",
                          str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es)" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
    for (_, la), (_, lb) in zip(a, b):
        assert abs(float(la) - float(lb)) <= 1e-5 * max(1.0, abs(float(la))), (la, lb)
