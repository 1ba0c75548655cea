"""Host (Python / dispatcher) overhead per call of the public ops and modules.

On a GPU, a ConvNeXt stage-4 kernel at batch 128 runs for tens of microseconds, about as long as
the Python that launches it; at small batches the host side decides the speed. This script
measures that host side on any machine: each public op on a tiny tensor (2x8x4x4, so the kernel
itself takes a few microseconds) through

* ``functional``: the public function with plain tensors (what eager users get: the route's
  ``torch.autograd.Function`` calling the kernels directly);
* ``module``: the drop-in module (``DepthwiseConv2d`` / ``LayerNorm2d``) holding the same values as
  ``nn.Parameter``s; it should cost the functional call plus an empty ``nn.Module`` call;
* ``registered``: the registered ``torch.library`` ops, the side of the route torch.compile and
  dispatch modes take (forced here);
* ``kernel``: the backend function alone (no validation, no autograd), the floor;

for forward only (inputs that require grad, so autograd records the node) and forward + backward.
Calls are interleaved round-robin, each round starting one place later (so every call follows
every other equally often), so machine load hits every route alike; medians in microseconds.

Baselines come with the rows (``meta``): a bare ``sync()``, one small PyTorch op (``x + 1``)
followed by ``sync()``, and an empty ``nn.Module`` call, so numbers from machines with different
CPUs can be compared. ``--profile FILE`` also writes cProfile's top functions (by own time) of the
public forward and of the backend kernel call of each op: where the host time goes.

Run: ``python benchmarks/bench_host_overhead.py [--backend cpu ...] [--json out.json] [--profile out.txt]``.
The ``cpu`` backend needs the compiled extension; ``triton`` on CPU needs TRITON_INTERPRET=1 and
measures the interpreter, not a GPU launch, so it is not useful here. On a GPU machine pass
``--device cuda --backend triton cuda`` to include the Triton / extension launch cost
(``scripts/gpu_run.sh``'s ``host`` step). Each call is followed by a synchronization there, so the
times include the (tiny) kernels; the differences between routes are host time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import time
from typing import Callable

import torch

import convnext_fast
from convnext_fast import depthwise_conv, dwconv_ln, layer_norm
from convnext_fast.backend import implementation
from convnext_fast.bench.cases import Case, _op_inputs


def _inputs(device: str):
    """The benchmark's own op inputs (convnext_fast.bench.cases) at a tiny shape, requiring grad."""
    case = Case("dwconv_ln", "fwd", (2, 8, 4, 4), "float32", 7)
    return [t.requires_grad_() for t in _op_inputs(case, torch.device(device))]


class _Empty(torch.nn.Module):
    def forward(self, x):
        return x


def _cases(backend: str, device: str) -> dict[str, tuple[Callable, Callable, Callable | None]]:
    """op -> (public call, backend-kernel-only call, module call or None), on fresh inputs."""
    x, w, b, lw, lb = _inputs(device)
    impl = implementation(backend)
    xd, wd, bd, lwd, lbd = (t.detach() for t in (x, w, b, lw, lb))
    conv = convnext_fast.DepthwiseConv2d(w.shape[0], w.shape[-1]).to(device)
    norm = convnext_fast.LayerNorm2d(lw.shape[0]).to(device)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        norm.weight.copy_(lw)
        norm.bias.copy_(lb)
    return {
        "depthwise_conv2d": (lambda: convnext_fast.depthwise_conv2d(x, w, b),
                             lambda: impl.dwconv_forward(xd, wd, bd), lambda: conv(x)),
        "layer_norm_2d": (lambda: convnext_fast.layer_norm_2d(x, lw, lb),
                          lambda: impl.layer_norm_forward(xd, lwd, lbd, 1e-6), lambda: norm(x)),
        "dwconv_layer_norm": (lambda: convnext_fast.dwconv_layer_norm(x, w, b, lw, lb),
                              lambda: impl.dwconv_ln_forward(xd, wd, bd, lwd, lbd, 1e-6), None),
    }


def _median_us(fns: list[Callable], repeats: int, sync: Callable) -> list[float]:
    for _ in range(20):
        for fn in fns:
            fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(repeats):
        # Each round starts one place later, so every call follows every other equally often: a
        # call right after a forward + backward runs measurably slower (allocator and cache state).
        for i in order[r % len(fns):] + order[:r % len(fns)]:
            t0 = time.perf_counter()
            fns[i]()
            sync()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e6 for t in times]


_OP_MODULES = (depthwise_conv, layer_norm, dwconv_ln)


def _registered(fn: Callable) -> Callable:
    """fn, run with every op forced onto the registered-op side of its route."""
    def run():
        saved = [m.direct_ok for m in _OP_MODULES]
        for m in _OP_MODULES:
            m.direct_ok = lambda *t: False
        try:
            return fn()
        finally:
            for m, d in zip(_OP_MODULES, saved):
                m.direct_ok = d
    return run


def _measure_backend(backend: str, device: str, repeats: int, sync: Callable, empty_us: float) -> list[dict]:
    rows = []
    with convnext_fast.use_backend(backend):
        for op, (public, kernel, module) in _cases(backend, device).items():
            fwdbwd = lambda: public().sum().backward()  # noqa: E731
            fns = [public, _registered(public), kernel, fwdbwd, _registered(fwdbwd)]
            if module is not None:
                fns += [module, lambda: module().sum().backward()]
            res = _median_us(fns, repeats, sync)
            row = {"backend": backend, "op": op, "fwd_functional_us": res[0], "fwd_registered_us": res[1],
                   "fwd_kernel_only_us": res[2], "fwdbwd_functional_us": res[3], "fwdbwd_registered_us": res[4]}
            line = (f"{backend:6s} {op:18s} fwd: functional {res[0]:6.1f} us, registered {res[1]:6.1f} us, kernel only "
                    f"{res[2]:6.1f} us | fwd+bwd: functional {res[3]:6.1f} us, registered {res[4]:6.1f} us")
            if module is not None:
                # The module's budget: the functional call plus an empty nn.Module call.
                row.update(fwd_module_us=res[5], fwdbwd_module_us=res[6],
                           fwd_module_ratio=res[5] / (res[0] + empty_us), fwdbwd_module_ratio=res[6] / (res[3] + empty_us))
                line += (f"\n{'':25s}module: fwd {res[5]:6.1f} us (x{row['fwd_module_ratio']:.2f} of functional + empty "
                         f"module), fwd+bwd {res[6]:6.1f} us (x{row['fwdbwd_module_ratio']:.2f})")
            rows.append(row)
            print(line, flush=True)
    return rows


def _baselines(device: str, repeats: int, sync: Callable) -> dict[str, float]:
    """Median host time of a bare sync(), one small PyTorch op + sync() and an empty nn.Module call,
    in microseconds."""
    x = torch.ones(2, 8, 4, 4, device=device)
    empty = _Empty()
    sync_us, add_us, empty_us = _median_us([sync, lambda: x + 1, lambda: empty(x)], repeats, sync)
    return {"sync_only_us": sync_us, "torch_add_us": add_us, "empty_module_us": empty_us}


def _profile_text(backend: str, device: str, calls: int, sync: Callable, top: int = 18) -> str:
    """cProfile of ``calls`` public forwards and ``calls`` kernel calls per op: top functions by own time."""
    out = io.StringIO()
    with convnext_fast.use_backend(backend):
        for op, (public, kernel, _) in _cases(backend, device).items():
            for route, fn in (("public forward", public), ("kernel only", kernel)):
                for _ in range(20):
                    fn()
                sync()
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(calls):
                    fn()
                sync()
                prof.disable()
                out.write(f"\n===== {backend} {op} {route}: per call, {calls} calls =====\n")
                out.write(f"{'own us':>8s} {'cum us':>8s} {'calls':>6s}  function\n")
                stats = pstats.Stats(prof).stats  # (file, line, name) -> (prim calls, calls, own s, cum s, callers)
                rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
                for (file, line, name), (_, ncalls, own, cum, _) in rows:
                    where = name if file == "~" else f"{file.split('site-packages/')[-1]}:{line}({name})"
                    out.write(f"{own / calls * 1e6:8.2f} {cum / calls * 1e6:8.2f} {ncalls / calls:6.1f}  {where}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["cpu"], choices=["cpu", "cuda", "triton"],
                        help="one or more backends, measured in turn")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--profile", help="also write cProfile's top functions per op and route to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    baselines = _baselines(args.device, args.repeats, sync)
    print(f"baselines: sync only {baselines['sync_only_us']:.1f} us, x + 1 and sync {baselines['torch_add_us']:.1f} us, "
          f"empty nn.Module call {baselines['empty_module_us']:.1f} us")
    rows = []
    for backend in args.backend:
        rows += _measure_backend(backend, args.device, args.repeats, sync, baselines["empty_module_us"])
    if args.profile:
        with open(args.profile, "w") as f:
            for backend in args.backend:
                f.write(_profile_text(backend, args.device, min(args.repeats, 500), sync))
    if args.json:
        meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                "processor": platform.processor(), "backends": args.backend, "device": args.device,
                "threads": args.threads, "repeats": args.repeats, "shape": [2, 8, 4, 4], "kernel_size": 7,
                **baselines}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
