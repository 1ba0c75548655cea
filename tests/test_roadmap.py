"""The paper's road from ResNet-50 to ConvNeXt-T (convnext_fast.roadmap): every step builds, runs
forward and backward on every backend matching the reference, counts the paper's multiply-adds,
and ends at convnext_tiny."""
import copy

import pytest
import torch
from torch import nn

import convnext_fast
from convnext_fast import roadmap as R
from convnext_fast.backend import available_backends
from convnext_fast.layers import DepthwiseConv2d, LayerNorm2d
from convnext_fast.models import ConvNeXtBlock

STEP_NAMES = [s.name for s in R.PAPER_STEPS]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _fwd_bwd(model: nn.Module, x: torch.Tensor, r: torch.Tensor, backend: str):
    with convnext_fast.use_backend(backend):
        y = model(x)
        (y * r).sum().backward()
    return y.detach(), {n: p.grad for n, p in model.named_parameters()}


def _assert_match(model: nn.Module, x: torch.Tensor, backend: str) -> None:
    """Output and every parameter gradient of ``backend`` against the reference backend (fp32).

    Gradients that are zero in exact arithmetic (a bias followed by a BatchNorm, which removes any
    per-channel shift) hold only rounding noise, so each gradient is compared against its own norm
    plus a thousandth of the largest gradient norm in the model.
    """
    r = torch.randn(x.shape[0], model.num_classes, generator=torch.Generator().manual_seed(1))
    ref_model = copy.deepcopy(model)
    y0, g0 = _fwd_bwd(ref_model, x, r, "reference")
    y1, g1 = _fwd_bwd(model, x, r, backend)
    assert torch.isfinite(y1).all()
    assert _rel(y1, y0) < 1e-4
    scale = max(g.norm().item() for g in g0.values())
    assert scale > 0
    for name, g in g0.items():
        assert g1[name] is not None, name
        err = (g1[name] - g).norm().item() / (g.norm().item() + 1e-3 * scale)
        assert err < 1e-3, f"{name}: gradient differs from the reference by {err:.2e}"


def test_steps_follow_figure_2():
    assert STEP_NAMES == ["resnet50", "stage_ratio", "patchify_stem", "depthwise_conv", "wider",
                          "inverted_bottleneck", "move_up_dwconv", "k5", "k7", "k9", "k11", "gelu",
                          "fewer_activations", "fewer_norms", "layer_norm", "separate_downsampling"]
    assert R.PAPER_STEPS[0].paper_top1 == 78.8 and R.PAPER_STEPS[-1].paper_top1 == 82.0
    with pytest.raises(ValueError, match="kernel_size"):
        R.larger_kernel(4)
    with pytest.raises(ValueError, match="unknown roadmap step"):
        R.get_step("resnet101")
    with pytest.raises(ValueError, match="stem_stride"):
        R.resnet50(stem_stride=3)


def test_each_step_changes_only_its_part():
    """Spot checks of what each step changes, on the built modules."""
    def mods(step, kind):
        return [m for m in R.get_step(step).build(num_classes=10, img_size=32).modules() if isinstance(m, kind)]

    # The package's depthwise module from the depth-conv step on (the 3 stride-2 blocks excepted).
    assert not mods("patchify_stem", DepthwiseConv2d)
    assert len(mods("depthwise_conv", DepthwiseConv2d)) == 15
    # BatchNorm until BN -> LN, the package's LayerNorm2d from then on.
    assert mods("fewer_norms", nn.BatchNorm2d) and not mods("fewer_norms", LayerNorm2d)
    assert not mods("layer_norm", nn.BatchNorm2d) and mods("layer_norm", LayerNorm2d)
    # The package's ConvNeXt block where the block has ConvNeXt's layout.
    assert len(mods("fewer_norms", ConvNeXtBlock)) == 15 and len(mods("layer_norm", ConvNeXtBlock)) == 15
    assert not mods("fewer_activations", ConvNeXtBlock)
    # ReLU until the GELU step, one GELU per block after "fewer activations".
    assert mods("k11", nn.ReLU) and not mods("gelu", nn.ReLU)
    assert len(mods("gelu", nn.GELU)) == 3 * 18
    assert len(mods("fewer_activations", nn.GELU)) == 18
    # Layer scale only in the last step.
    for step in STEP_NAMES[:-1]:
        assert not any(n.endswith("gamma") for n, _ in R.get_step(step).build(num_classes=10, img_size=32)
                       .named_parameters()), step
    assert all(b.gamma is not None for b in mods("separate_downsampling", ConvNeXtBlock))
    # The kernel-size step: only the depthwise kernels change.
    k3, k9 = R.larger_kernel(3, num_classes=10, img_size=32), R.larger_kernel(9, num_classes=10, img_size=32)
    s3, s9 = k3.state_dict(), k9.state_dict()
    assert s3.keys() == s9.keys()
    changed = {k for k in s3 if s3[k].shape != s9[k].shape}
    assert changed and all(s3[k].shape[-1] == 3 and s9[k].shape[-1] == 9 for k in changed)
    assert {k: v.shape for k, v in R.move_up_dwconv(num_classes=10, img_size=32).state_dict().items()} == \
        {k: v.shape for k, v in s3.items()}


@pytest.mark.parametrize("step", R.PAPER_STEPS, ids=STEP_NAMES)
def test_gmacs_match_paper(step):
    """Multiply-adds at 224x224, 1000 classes, within 0.1 G or 3% of Figure 2's FLOPs column."""
    gmacs = R.count_macs(step.build, img_size=224, num_classes=1000) / 1e9
    assert abs(gmacs - step.paper_gmacs) <= max(0.1, 0.03 * step.paper_gmacs), (step.name, gmacs)


def test_cifar_stem_keeps_stage_resolutions():
    """At 32x32 every step's stem has stride 1: the stages see 32, 16, 8 and 4 pixel maps (at 224,
    the paper's stride 4 gives 56 .. 7: the MACs test checks that)."""
    for step in R.PAPER_STEPS:
        model = step.build(num_classes=10, img_size=32).to("meta")
        assert model.stem[0].stride == (1, 1), step.name
        with convnext_fast.use_backend("reference"):
            feats = model.forward_features(torch.empty(1, 3, 32, 32, device="meta"))
        assert tuple(feats.shape[-2:]) == (4, 4), (step.name, feats.shape)
    assert R.resnet50(img_size=32, stem_stride=4).stem[0].stride == (2, 2)


def test_listing(capsys):
    assert R._main(["--img-size", "32", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + len(R.PAPER_STEPS)
    assert out[-1].startswith("sep. d.s. conv")


@pytest.mark.parametrize("name", STEP_NAMES)
def test_step_forward_backward_matches_reference(name):
    """Every step, 32x32, batch 2, train mode, forward and backward on the reference backend and on
    the compiled CPU kernels, which must match it."""
    torch.manual_seed(0)
    model = R.get_step(name).build(num_classes=10, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    reason = available_backends("cpu")["cpu"]
    if not reason:
        _assert_match(model, x, "cpu")  # runs the reference too
        return
    with convnext_fast.use_backend("reference"):
        y = model(x)
        y.sum().backward()
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    pytest.skip(f"reference only: {reason}")


@pytest.mark.parametrize("name", ["k7", "separate_downsampling"])
def test_step_under_triton_interpreter(name):
    """The Triton kernels in the kernel-size and final steps: the stem and the first block (the
    interpreter is slow), 16x16 input, batch 2, forward and backward against the reference."""
    if available_backends("cpu")["triton"]:
        pytest.skip(available_backends("cpu")["triton"])
    torch.manual_seed(0)
    model = R.get_step(name).build(num_classes=10, img_size=32, stem_stride=4)
    first = model.stages[0].blocks[0] if name == "separate_downsampling" else model.stages[0][0]
    part = nn.Sequential(model.stem, first)
    assert any(isinstance(m, DepthwiseConv2d) for m in part.modules())
    x = torch.randn(2, 3, 16, 16)
    r = torch.randn(2, 96, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(part)
    outs = {}
    for backend, m in (("reference", ref), ("triton", part)):
        with convnext_fast.use_backend(backend):
            y = m(x)
            (y * r).sum().backward()
        outs[backend] = (y.detach(), [p.grad for p in m.parameters()])
    assert _rel(outs["triton"][0], outs["reference"][0]) < 1e-5
    for g1, g0 in zip(outs["triton"][1], outs["reference"][1]):
        assert _rel(g1, g0) < 1e-4


def test_final_step_is_convnext_tiny():
    final = R.separate_downsampling()
    tiny = convnext_fast.convnext_tiny()
    sd = final.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in tiny.state_dict().items()}
    tiny.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), convnext_fast.use_backend("reference"):
        assert torch.equal(final.eval()(x), tiny.eval()(x))
    timm = pytest.importorskip("timm")
    timm_model = timm.create_model("convnext_tiny", pretrained=False)
    timm_keys = {k: tuple(v.shape) for k, v in timm_model.state_dict().items()}
    assert timm_keys == {k: tuple(v.shape) for k, v in sd.items()}


def test_throughput_bench_runs_and_renders(tmp_path):
    """convnext_fast.bench.roadmap end to end on two steps at 32x32 (the code path; timings unchecked)."""
    pytest.importorskip("matplotlib")
    from convnext_fast.bench import roadmap as B

    data = B.run(budget_s=0, batch=1, train_batch=2, steps=["resnet50", "layer_norm"],
                 providers=("eager", "ours", "ours_optimized"), img_size=32, stem_stride=4, warmup_ms=1,
                 rep_ms=1)
    status = {(r["step"], r["provider"], r["mode"]): r["status"] for r in data["rows"]}
    assert status == {(s, p, m): "ok" for s in ("resnet50", "layer_norm") for p in ("eager", "ours")
                      for m in ("infer", "train")} | {("layer_norm", "ours_optimized", "infer"): "ok"}
    assert [s["name"] for s in data["steps"]] == ["resnet50", "layer_norm"]
    md = B.render_markdown(data)
    assert "| BN → LN |" in md and "ours_optimized img/s" in md
    written = B.write_outputs(data, tmp_path)
    assert (tmp_path / "roadmap.png").stat().st_size > 0 and len(written) == 3


def test_throughput_runs_merge_keeps_the_fastest():
    from convnext_fast.bench import roadmap as B

    steps = [{"name": "resnet50", "title": "ResNet-50", "paper_top1": 78.8, "paper_gmacs": 4.1, "gmacs": 4.09}]

    def run(ips, status="ok"):
        row = {"step": "resnet50", "title": "ResNet-50", "provider": "eager", "mode": "infer", "status": status}
        if status == "ok":
            row["img_per_s"] = ips
        return {"meta": {"elapsed_s": 1.0, "batch": 8, "train_batch": 4}, "steps": steps, "rows": [row]}

    merged = B.merge([run(2.0), run(0, "budget"), run(5.0), run(3.0)])
    (row,) = merged["rows"]
    assert row["img_per_s"] == 5.0 and row["img_per_s_runs"] == [2.0, 5.0, 3.0] and row["runs"] == 3
    assert len(merged["meta"]["merged_runs"]) == 4 and "Merged from 4 runs" in B.render_markdown(merged)
    assert B.merge([run(0, "budget")])["rows"][0]["status"] == "budget"
    with pytest.raises(ValueError):
        B.merge([])
