"""Full convnext_tiny at 224x224: inference and a training step (forward, cross-entropy, backward,
SGD step) in channels_last under autocast (bf16 on a GPU; fp32 on CPU). extra_info has img/s and,
on a GPU, the training step's peak memory."""
import pytest

from convnext_fast.bench.cases import Case

from bench_config import MODEL_BATCH, MODEL_DTYPE, PROVIDERS


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_convnext_tiny(run_case, mode, provider):
    run_case(Case("model", mode, (MODEL_BATCH, 3, 224, 224), MODEL_DTYPE, 7), provider)
