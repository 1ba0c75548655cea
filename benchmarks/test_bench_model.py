"""Full convnext_tiny at 224x224: inference and a training step (forward, cross-entropy, backward,
SGD step) in channels_last under autocast (bf16 on a GPU; fp32 on CPU). extra_info has img/s and,
on a GPU, the training step's peak memory. The providers include optimize_for_inference(model)
(inference only) and torchvision's resnet50 as an anchor; on a GPU also the batch-1 latency."""
import pytest

from convnext_fast.bench.cases import Case

from bench_config import MODEL_BATCH, MODEL_DTYPE, ON_GPU, PROVIDERS


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_convnext_tiny(run_case, mode, provider):
    run_case(Case("model", mode, (MODEL_BATCH, 3, 224, 224), MODEL_DTYPE, 7), provider)


@pytest.mark.skipif(not ON_GPU, reason="the batch-1 latency rows are measured on a GPU")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_convnext_tiny_latency(run_case, provider):
    run_case(Case("model", "infer", (1, 3, 224, 224), MODEL_DTYPE, 7, "latency"), provider)
