"""One ConvNeXt block (timm's ConvNeXtBlock vs ours, same parameters) forward and forward+backward."""
import pytest

from convnext_fast.bench.cases import Case

from bench_config import BLOCK_BATCH, DTYPES, PROVIDERS, STAGE_IDS, stage_shape


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGE_IDS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_block(run_case, mode, stage, dtype, provider):
    run_case(Case("block", mode, stage_shape(BLOCK_BATCH, stage), dtype, 7), provider)
