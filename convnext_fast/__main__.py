"""``python -m convnext_fast info``: versions, GPU, backends available per device, how the extension
was obtained. ``python -m convnext_fast build``: compile the extension now (it is otherwise compiled
on first use). ``python -m convnext_fast verify``: the full parity check of the GPU kernels on this
GPU (``verify --help``). ``python -m convnext_fast tune``: check and time the kernels on this GPU for
a model's shapes ahead of time, into the device record ``auto`` reads (``tune --help``)."""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys


def info() -> int:
    import torch

    import convnext_fast
    from convnext_fast import extension
    from convnext_fast import autotune
    from convnext_fast.backend import available_backends, dispatch_table, env_backend, get_backend

    print(f"convnext_fast {convnext_fast.__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    if importlib.util.find_spec("triton") is not None:
        try:
            import triton

            print(f"triton {triton.__version__}")
        except Exception as e:  # noqa: BLE001 - report, do not fail
            print(f"triton: installed but does not import ({e})")
    else:
        print("triton: not installed")
    # Probing the GPU is fine here: this is a command run on purpose, not an import.
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            print(f"GPU {i}: {torch.cuda.get_device_name(i)} (sm_{cap[0]}{cap[1]})")
        devices.append("cuda")
    else:
        print("GPU: none")
    bad_env = env_backend()[1]
    print(f"requested backend: {get_backend()}" + (f" (ignored: {bad_env}; op calls raise until it is fixed)"
                                                   if bad_env else ""))
    for dev in devices:
        print(f"backends for {dev} tensors:")
        for name, reason in available_backends(dev).items():
            print(f"  {name:10s} {'available' if not reason else 'unavailable: ' + reason}")
    if "cuda" in devices:
        for i in range(torch.cuda.device_count()):
            _, what = autotune.record_in_use(torch.device("cuda", i))
            print(f"device record for GPU {i}: {what}")
        if not autotune.measuring_enabled():
            print(f"{autotune.ENV_VAR}=0: auto does not measure; it reads the records above")
        waiting = [op for op, ok in dispatch_table()["cuda"]["kernels_verified"].items() if not ok]
        if waiting:
            print(f"GPU kernels auto takes only after they pass on this GPU (checked on first use, or ahead of "
                  f"time by python -m convnext_fast tune): {', '.join(waiting)}; the full parity check: "
                  "python -m convnext_fast verify")
    print("compiled extension:")
    for key, value in extension.build_info().items():
        print(f"  {key}: {value}")
    return 0


def build(cuda: bool | None, verbose: bool) -> int:
    from convnext_fast import build as builder

    try:
        # load() checks the cache first and builds (replacing a damaged library) only when needed.
        module, p, how = builder.load(verbose=verbose, cuda=cuda)
    except builder.BuildError as e:
        print(f"convnext_fast build: {e}", file=sys.stderr)
        return 1
    info = dict(module.build_info())
    print(f"extension {how}: {p.describe()} in {p.directory()}")
    print(f"  cpu: {info['cpu']}, cuda: {info['cuda']} ({info['cuda_archs'] or '-'}), cpu_isa: {info['cpu_isa']}")
    for part, why in p.skipped.items():
        print(f"  {part} left out: {why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_fast", description=__doc__)
    parser.add_argument("command", choices=["info", "build", "verify", "tune"],
                        help="info: versions, backends, extension; build: compile the extension now; verify: "
                             "parity of the GPU kernels (its own options: verify --help); tune: check and time "
                             "the kernels for a model's shapes into the device record (tune --help)")
    cuda = parser.add_mutually_exclusive_group()
    cuda.add_argument("--cuda", dest="cuda", action="store_true", default=None,
                      help="build: include the CUDA kernels even without a GPU (fails if they cannot be built)")
    cuda.add_argument("--no-cuda", dest="cuda", action="store_false", help="build: CPU kernels only")
    parser.add_argument("--verbose", action="store_true", help="build: show the compiler commands")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:
        from convnext_fast import verify

        return verify.main(argv[1:])
    if argv[:1] == ["tune"]:
        from convnext_fast import tune

        return tune.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return build(args.cuda, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
