"""Train a step of the ResNet-50 -> ConvNeXt road (convnext_fast.roadmap) or a ConvNeXt on CIFAR-10/100.

    python examples/train_cifar.py --data ~/data --dataset cifar100 --model k7 --epochs 100
    torchrun --nproc_per_node 2 examples/train_cifar.py --data ~/data --model convnext_atto

``--data`` holds ``cifar-10-batches-py/`` or ``cifar-100-python/`` (the python-format archives,
unpacked); nothing is downloaded. The files are pickles: they are read by a restricted unpickler
that builds only numpy arrays and plain containers, and their keys, shapes and labels are checked.
At 32x32 the stem downsamples 4x less than at 224 (the roadmap's ``stem_stride=1``; ConvNeXt's
``patch_size=1``), the same for every model. AdamW with linear warm-up and a cosine schedule,
optional autocast (bf16 / fp16), ``torch.compile``, the convnext_fast backend, checkpoints every
``--ckpt-every`` steps (``--resume`` continues bit for bit on the CPU), ``train_log.csv`` /
``eval_log.csv`` and ``curves.png`` in ``--out``. Under ``torchrun`` it trains data-parallel (DDP,
gloo on CPU, NCCL on GPUs); ``--batch-size`` is the global batch, split evenly over processes.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import convnext_fast
from convnext_fast import roadmap

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LAYOUT = {  # dataset -> (folder, train files, test files, meta file, label key, label-names key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                b"labels", b"label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names", 100),
}
# What the pickles may construct: numpy arrays and dtypes (and bytes, which Python 3 pickles of
# protocol 2 rebuild through _codecs.encode). Anything else is refused before it runs.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or not in CIFAR's python format (the message names it)."""


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain containers")
        return super().find_class(module, name)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected CIFAR's python format, unpacked)")
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnly(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def load_cifar(root: str, dataset: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """(train images uint8 (N, 3, 32, 32), train labels, test images, test labels, class names)."""
    folder, train, test, meta, label_key, names_key, classes = LAYOUT[dataset]
    base = Path(root) / folder if (Path(root) / folder).is_dir() else Path(root)
    names = _load(base / meta).get(names_key)
    if not isinstance(names, list) or len(names) != classes:
        raise DatasetError(f"{base / meta}: expected {classes} names under {names_key!r}")

    def read(files: list) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in files:
            d = _load(base / name)
            x, y = d.get(b"data"), d.get(label_key)
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
                raise DatasetError(f"{base / name}: b'data' must be a uint8 array (N, 3072), got "
                                   f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
            y = np.asarray(y if isinstance(y, (list, np.ndarray)) else [], dtype=np.int64)
            if y.shape != (x.shape[0],) or (y.size and (y.min() < 0 or y.max() >= classes)):
                raise DatasetError(f"{base / name}: {label_key!r} must hold {x.shape[0]} labels in [0, {classes})")
            xs.append(torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()))
            ys.append(torch.from_numpy(y))
        return torch.cat(xs), torch.cat(ys)

    return (*read(train), *read(test), [n.decode() if isinstance(n, bytes) else str(n) for n in names])


def build_model(name: str, num_classes: int, drop_path: float) -> torch.nn.Module:
    """A roadmap step (``python -m convnext_fast.roadmap`` lists them) or a ConvNeXt family name."""
    if name in [s.name for s in roadmap.PAPER_STEPS]:
        return roadmap.get_step(name).build(num_classes=num_classes, img_size=32, drop_path_rate=drop_path)
    if name in convnext_fast.list_models():
        return convnext_fast.create_model(name, num_classes=num_classes, drop_path_rate=drop_path,
                                          patch_size=roadmap.default_stem_stride(32))
    raise SystemExit(f"unknown model {name!r}: a roadmap step ({', '.join(s.name for s in roadmap.PAPER_STEPS)}) "
                     f"or one of {', '.join(convnext_fast.list_models())}")


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip, per image."""
    n = x.shape[0]
    off = torch.randint(0, 9, (n, 2), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    out = torch.stack([padded[i, :, off[i, 0]:off[i, 0] + 32, off[i, 1]:off[i, 1] + 32] for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def normalize(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float().div_(255)
    mean, std = torch.tensor(MEAN, device=device), torch.tensor(STD, device=device)
    return ((x - mean[:, None, None]) / std[:, None, None]).contiguous(memory_format=torch.channels_last)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder holding cifar-10-batches-py/ or cifar-100-python/")
    ap.add_argument("--dataset", default="cifar100", choices=sorted(LAYOUT))
    ap.add_argument("--model", default="separate_downsampling", help="roadmap step or ConvNeXt name")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps (the schedule still spans --epochs; 0: all epochs)")
    ap.add_argument("--batch-size", type=int, default=128, help="global batch (split over processes)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup-steps", type=int, default=500)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                    help="autocast dtype; auto: bf16 on a GPU, off on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--backend", default="auto", help="convnext_fast backend (auto, reference, triton, cuda, cpu)")
    ap.add_argument("--out", default="runs/cifar", help="checkpoints, CSV logs and the plot")
    ap.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (and one at the end)")
    ap.add_argument("--resume", default="", help="checkpoint to continue from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    convnext_fast.set_backend(args.backend)
    amp = ("bf16" if device.type == "cuda" else "off") if args.amp == "auto" else args.amp
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    x_train, y_train, x_test, y_test, classes = load_cifar(args.data, args.dataset)
    torch.manual_seed(args.seed)
    model = build_model(args.model, len(classes), args.drop_path).to(device).to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(y_train) // args.batch_size
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(y_train)} training images")
    total = args.epochs * steps_per_epoch  # the schedule's length; --max-steps only stops early
    stop = min(args.max_steps, total) if args.max_steps else total
    warm = min(args.warmup_steps, max(total // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    step, out = 0, Path(args.out)
    if args.resume:
        ck = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"][rank] if len(ck["rng"]) == world else ck["rng"][0])
        step = ck["step"]
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    net = torch.compile(net) if args.compile else net
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{args.model} on {args.dataset} ({len(y_train)} / {len(y_test)} images), {world} process(es) on "
              f"{device}, backend {args.backend}, amp {amp}, steps {step}..{stop} of {total}", flush=True)

    def save(path: Path) -> None:
        rng = [torch.get_rng_state()]
        if world > 1:
            rng = [torch.empty_like(rng[0]) for _ in range(world)]
            dist.all_gather_object(rng, torch.get_rng_state())
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng, "step": step, "args": vars(args)}, path)

    def evaluate() -> tuple[float, float]:
        net.eval()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            for i in range(rank * 250, len(y_test), 250 * world):
                x, y = normalize(x_test[i:i + 250], device), y_test[i:i + 250].to(device)
                logits = net(x).float()
                loss_sum += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                         (logits.argmax(1) == y).sum().double()])
        if world > 1:
            dist.all_reduce(loss_sum)
        net.train()
        return loss_sum[0].item() / len(y_test), 100 * loss_sum[1].item() / len(y_test)

    mode = "a" if args.resume else "w"
    logf = open(out / "train_log.csv", mode, newline="") if rank == 0 else None
    evalf = open(out / "eval_log.csv", mode, newline="") if rank == 0 else None
    if rank == 0 and not args.resume:
        csv.writer(logf).writerow(["step", "epoch", "lr", "loss", "img_per_s"])
        csv.writer(evalf).writerow(["step", "epoch", "test_loss", "test_acc"])
    bar = None
    if rank == 0 and not args.no_progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=stop, initial=step, unit="step", dynamic_ncols=True)
        except ImportError:
            pass
    net.train()
    t_last = time.perf_counter()
    while step < stop:
        epoch, i = divmod(step, steps_per_epoch)
        # Order and augmentation follow from (seed, epoch, step) alone: resuming, and any number of
        # processes, see the same global batches.
        perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(args.seed * 100003 + epoch))
        idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
        gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
        xb = augment(x_train[idx], gen)[rank::world]
        x, y = normalize(xb, device), y_train[idx][rank::world].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        loss_d = loss.detach().double()
        if world > 1:
            dist.all_reduce(loss_d)
            loss_d /= world
        now = time.perf_counter()
        ips = args.batch_size / (now - t_last)
        t_last = now
        if rank == 0:
            csv.writer(logf).writerow([step, epoch, repr(sched.get_last_lr()[0]), repr(loss_d.item()), f"{ips:.1f}"])
            logf.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{loss_d.item():.4f}", img_s=f"{ips:.0f}")
                bar.update(1)
            elif step % 20 == 0 or step == stop:
                print(f"step {step}/{stop} loss {loss_d.item():.4f} {ips:.0f} img/s", flush=True)
        if step % steps_per_epoch == 0 or step == stop:
            test_loss, acc = evaluate()
            if rank == 0:
                csv.writer(evalf).writerow([step, epoch, f"{test_loss:.5f}", f"{acc:.2f}"])
                evalf.flush()
                print(f"\nepoch {epoch} step {step}: test loss {test_loss:.4f}, top-1 {acc:.2f}%", flush=True)
        if step % args.ckpt_every == 0 or step == stop:
            save(out / "last.pt")
    if bar is not None:
        bar.close()
    if rank == 0:
        logf.close()
        evalf.close()
        plot(out)
    if world > 1:
        dist.destroy_process_group()
    return 0


def plot(out: Path) -> None:
    """curves.png: training loss per step, test loss and accuracy per evaluation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png", file=sys.stderr)
        return
    tr = list(csv.DictReader(open(out / "train_log.csv")))
    ev = list(csv.DictReader(open(out / "eval_log.csv")))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([int(r["step"]) for r in tr], [float(r["loss"]) for r in tr], lw=0.8, label="train")
    a.plot([int(r["step"]) for r in ev], [float(r["test_loss"]) for r in ev], "o-", label="test")
    a.set(xlabel="step", ylabel="loss", title="loss")
    a.legend()
    b.plot([int(r["step"]) for r in ev], [float(r["test_acc"]) for r in ev], "o-")
    b.set(xlabel="step", ylabel="top-1 (%)", title="test accuracy")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
