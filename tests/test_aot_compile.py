"""Every Triton kernel, at the launcher configurations used for ConvNeXt shapes, compiles for sm_90
(H100) and sm_80 (A100) without spilling registers to local memory.

Runs in a subprocess with TRITON_INTERPRET unset: interpreted kernels cannot be compiled for a GPU.
Register allocation differs between Triton versions (3.6 spilled where 3.8 did not, 2026-11-22), so
besides the installed Triton the check runs once per directory in CONVNEXT_FAST_AOT_EXTRA_TRITON
(os.pathsep-separated; each holds another triton package, e.g. ``pip install --target DIR
triton==3.6.0``, the GPU machine's version). .ci/run sets it up.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (90, 80)


EXTRA_TRITON = [d for d in os.environ.get("CONVNEXT_FAST_AOT_EXTRA_TRITON", "").split(os.pathsep) if d]


@pytest.fixture(scope="module", params=["installed", *EXTRA_TRITON])
def resource_rows(request):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if request.param != "installed":
        assert os.path.isdir(os.path.join(request.param, "triton")), f"no triton package in {request.param}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (request.param, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                          text=True, env=env, timeout=300)
    version = proc.stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "convnext_fast.aot_check", "--json", "--arch", *map(str, ARCHS)],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.stdout.strip(), f"aot_check (triton {version}) produced no output:\n{proc.stderr[-4000:]}"
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in rows:
        r["name"] = f"{r['name']} (triton {version})"
    return rows


def test_every_module_has_configs(resource_rows):
    names = {r["name"] for r in resource_rows}
    for family in ("dwconv", "layer_norm", "dwconv_ln", "mlp_fwd_fused", "mlp_linear", "mlp_dgelu", "mlp_wgrad",
                   "block_fwd"):
        assert any(family in n for n in names), f"no AOT configuration for the {family} kernels: {sorted(names)}"
    assert {r["arch"] for r in resource_rows} == set(ARCHS)


def test_no_register_spills(resource_rows):
    spilled = [f"{r['name']} sm_{r['arch']}: {r['registers']} regs, stack {r['stack_bytes']} B"
               for r in resource_rows if r["spills"]]
    assert not spilled, "kernels spill registers to local memory:\n" + "\n".join(spilled)


def test_shared_memory_fits(resource_rows):
    # 227 KB is the per-block maximum on H100, 163 KB on A100 (opt-in limits).
    limits = {90: 227 * 1024, 80: 163 * 1024}
    over = [f"{r['name']} sm_{r['arch']}: {r['shared_bytes']} B" for r in resource_rows
            if r["shared_bytes"] > limits[r["arch"]]]
    assert not over, "shared memory over the per-block limit:\n" + "\n".join(over)
