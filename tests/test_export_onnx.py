"""Export for deployment: ``convnext_fast.to_reference(model)`` -> ``torch.onnx.export`` -> ONNX
Runtime gives the outputs the fast model gave in PyTorch (fp32, eval).

The exported graph holds standard ONNX operators only (no ``convnext_fast`` custom ops), so any ONNX
runtime can serve it. Both exporters are covered: the TorchScript-based one (``dynamo=False``,
opset 17, what most deployment pipelines still call) and the ``torch.export``-based one.
"""
from __future__ import annotations

import io

import pytest
import torch

import convnext_fast

from model_helpers import randomize_, rel_err

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-5  # fp32: ONNX Runtime's kernels sum in their own order, the results agree to ~1e-6


def _model(name: str) -> torch.nn.Module:
    model = getattr(convnext_fast, name)(num_classes=10).eval()
    return randomize_(model)  # layer scale / GRN away from their init values, which would hide them


def _session(model_bytes: bytes) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    # ONNX Runtime's own pool would otherwise take every core and spin between ops, competing
    # with PyTorch's threads (and any other test process) on a shared machine.
    so.intra_op_num_threads = torch.get_num_threads()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _run(session: "ort.InferenceSession", x: torch.Tensor) -> torch.Tensor:
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _assert_standard_ops(proto) -> None:
    """Every node is a standard ONNX operator (default domain), and the depthwise convolutions are
    grouped Convs: nothing of ours is left for a runtime to resolve."""
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    groups = [attr.i for node in proto.graph.node if node.op_type == "Conv"
              for attr in node.attribute if attr.name == "group"]
    assert any(g > 1 for g in groups), "no depthwise (grouped) Conv in the exported graph"


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_torchscript_export_onnxruntime_matches_pytorch(name):
    """TorchScript exporter, opset 17, dynamic batch: ONNX Runtime at batch 2 (the traced size) and
    3 matches the fast model's PyTorch output."""
    model = _model(name)
    x2, x3 = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        expected = [model(x2), model(x3)]  # the default backend's kernels, before to_reference
    convnext_fast.to_reference(model)
    buf = io.BytesIO()
    torch.onnx.export(model, (x2,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    _assert_standard_ops(proto)
    session = _session(buf.getvalue())
    for x, exp in zip((x2, x3), expected):
        out = _run(session, x)
        assert out.shape == exp.shape
        assert rel_err(out, exp) < TOL, (name, tuple(x.shape))


def test_dynamo_export_onnxruntime_matches_pytorch():
    """The torch.export-based exporter (the default since torch 2.9) over ConvNeXt V2 (GRN):
    ONNX Runtime matches the fast model's PyTorch output."""
    pytest.importorskip("onnxscript")
    model = _model("convnextv2_atto")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    convnext_fast.to_reference(model)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    _assert_standard_ops(proto)
    out = _run(_session(proto.SerializeToString()), x)
    assert out.shape == expected.shape
    assert rel_err(out, expected) < TOL
