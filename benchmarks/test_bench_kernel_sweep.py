"""The paper's kernel-size experiment in throughput terms: K = 3..31 for the depthwise op, the block
and the full model, eager PyTorch against ours (stage-1 shape; torch.compile only when asked).

On CPU the sweep is forward-only and skips the model (PyTorch's CPU depthwise backward at K = 31
takes seconds per call)."""
import pytest

from convnext_fast.bench.cases import Case, STAGES

from bench_config import BLOCK_BATCH, DTYPES, MODEL_BATCH, MODEL_DTYPE, ON_GPU, OP_BATCH, PROVIDERS, SWEEP_K

DTYPE = DTYPES[0]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("k", SWEEP_K)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"] if ON_GPU else ["fwd"])
def test_sweep_dwconv(run_case, mode, k, provider):
    run_case(Case("dwconv", mode, (OP_BATCH,) + STAGES[0], DTYPE, k, "sweep"), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("k", SWEEP_K)
def test_sweep_block(run_case, k, provider):
    mode = "fwdbwd" if ON_GPU else "fwd"
    run_case(Case("block", mode, (BLOCK_BATCH,) + STAGES[0], DTYPE, k, "sweep"), provider)


@pytest.mark.skipif(not ON_GPU, reason="the full-model sweep runs on a GPU only (minutes per K on CPU)")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("k", SWEEP_K)
def test_sweep_convnext_tiny(run_case, k, provider):
    run_case(Case("model", "infer", (MODEL_BATCH, 3, 224, 224), MODEL_DTYPE, k, "sweep"), provider)
