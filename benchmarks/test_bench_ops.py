"""Ops: depthwise 7x7 conv (fwd, fwd+bwd), channels-first LayerNorm (fwd, bwd), fused dwconv+LN
(fwd, fwd+bwd) and the MLP half of a block (fc1 -> GELU -> fc2 -> layer scale -> residual; fwd,
fwd+bwd) at the ConvNeXt-T stage shapes, every provider (those that do not measure an op skip with
the reason)."""
import pytest

from convnext_fast.bench.cases import Case

from bench_config import DTYPES, OP_BATCH, PROVIDERS, STAGE_IDS, stage_shape


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGE_IDS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_dwconv(run_case, mode, stage, dtype, provider):
    run_case(Case("dwconv", mode, stage_shape(OP_BATCH, stage), dtype, 7), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGE_IDS)
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_layer_norm(run_case, mode, stage, dtype, provider):
    run_case(Case("layer_norm", mode, stage_shape(OP_BATCH, stage), dtype, 7), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGE_IDS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_dwconv_layer_norm(run_case, mode, stage, dtype, provider):
    run_case(Case("dwconv_ln", mode, stage_shape(OP_BATCH, stage), dtype, 7), provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", STAGE_IDS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_pointwise_mlp(run_case, mode, stage, dtype, provider):
    run_case(Case("mlp", mode, stage_shape(OP_BATCH, stage), dtype, 7), provider)
