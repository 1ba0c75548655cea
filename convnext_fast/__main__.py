"""``python -m convnext_fast info``: versions, GPU, backends available per device, extension build flags."""
from __future__ import annotations

import argparse
import importlib.util
import platform
import sys


def info() -> int:
    import torch

    import convnext_fast
    from convnext_fast import extension
    from convnext_fast.backend import available_backends, get_backend

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
    print(f"requested backend: {get_backend()}")
    for dev in devices:
        print(f"backends for {dev} tensors:")
        for name, reason in available_backends(dev).items():
            print(f"  {name:10s} {'available' if not reason else 'unavailable: ' + reason}")
    print("compiled extension (convnext_fast._C):")
    for key, value in extension.build_info().items():
        print(f"  {key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convnext_fast", description=__doc__)
    parser.add_argument("command", choices=["info"], help="info: print versions, backends and build flags")
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
