"""``auto`` learns the device it runs on (``autotune.py``, ``record.py``): the real code path on the CPU,
with an injected device identity, Triton's interpreter as the kernel, a fake clock and tiny checks.

The fake clock advances by a fixed cost per backend each time a timed call runs (the real timing
loop and the real calls run), so the choice each test expects follows from the costs it sets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import convnext_fast
from convnext_fast import autotune, autotune_cases, backend, record, verify
from convnext_fast.kernels import launchers
from convnext_fast.models import ConvNeXtBlock

from conftest import kernel_backends

pytestmark = pytest.mark.skipif(not {"triton", "cpu"} <= set(kernel_backends()) or torch.cuda.is_available(),
                                reason="needs the triton interpreter and the cpu backend on a machine without a GPU")

IDENTITY = ("Fake GPU 9000", "8.9")
OP = "layer_norm_2d"


class FakeClock:
    """Seconds that advance only when a timed call runs: by ``costs[backend]``."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs = dict(costs)
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tiny_checks(op: str, dtype: torch.dtype, backend_name: str) -> list:
    """One check per op family at a tiny shape (the real set takes minutes in the interpreter)."""
    shapes = {"layer_norm_2d": (1, 4, 3, 3), "depthwise_conv2d": (1, 4, 3, 3, 3), "dwconv_layer_norm": (1, 4, 3, 3, 3),
              "pointwise_mlp": (1, 8, 2, 2, 16)}
    if op not in shapes:
        return []
    name = str(dtype).removeprefix("torch.")
    run = lambda device, dt: autotune_cases._op_outputs(op, shapes[op], backend_name, device, dt)  # noqa: E731
    return [verify.Check(op, "tiny", name, run)]


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """CPU tensors treated as a tuned device, a private cache, a fake clock; restores everything."""
    monkeypatch.setenv("CONVNEXT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(autotune.ENV_VAR, raising=False)
    clock = FakeClock({"triton": 1.0, "cpu": 2.0, "reference": 3.0})
    real_runners = autotune_cases.runners

    def runners(op, pass_, dtype, shape, device, backends):
        def timed(b, fn):
            def run():
                fn()
                clock.now += clock.costs[b]
            return run
        return {b: timed(b, fn) for b, fn in real_runners(op, pass_, dtype, shape, device, backends).items()}

    monkeypatch.setattr(autotune_cases, "runners", runners)
    previous = autotune.configure(tuned=frozenset({"cpu"}), identity=lambda device: IDENTITY,
                                  order={"cpu": ("triton", "cpu"), "cuda": ("triton", "cuda")}, clock=clock,
                                  sync=lambda device: None, checks=tiny_checks)
    try:
        with convnext_fast.use_backend("auto"):
            yield clock
    finally:
        autotune.configure(**vars(previous))


def _ln(shape=(2, 4, 3, 5), dtype=torch.float32):
    x = torch.randn(shape, dtype=dtype)
    c = shape[1]
    return convnext_fast.layer_norm_2d(x, torch.ones(c, dtype=dtype), torch.zeros(c, dtype=dtype))


def _record_file() -> dict:
    with open(record.record_path(*IDENTITY)) as f:
        return json.load(f)


def _key(shape, pass_="forward", dtype="float32"):
    return record.choice_key(OP, pass_, dtype, shape)


def test_first_call_verifies_and_times_then_reuses(tuned, capsys):
    _ln()
    assert autotune.stats == {"verifications": 2, "timings": 1}  # triton and cpu checked, one shape timed
    _ln()
    _ln()
    assert autotune.stats == {"verifications": 2, "timings": 1}
    _ln((1, 4, 7, 7))  # another shape: timed once more, not verified again
    assert autotune.stats == {"verifications": 2, "timings": 2}
    data = _record_file()
    assert data["device"] == IDENTITY[0] and data["capability"] == IDENTITY[1]
    assert data["kernels_hash"] == record.kernels_hash() and data["versions"]["torch"] == torch.__version__
    assert data["verdicts"][OP]["float32"]["triton"]["passed"] is True
    entry = data["choices"][_key((2, 4, 3, 5))]
    assert entry["choice"] == "triton" and set(entry["times_ms"]) == {"triton", "cpu", "reference"}
    assert entry["times_ms"]["triton"] == pytest.approx(1e3)  # the median of the fake clock's runs
    err = capsys.readouterr().err
    assert err.count("convnext_fast: checking and timing") == 1 and str(record.record_path(*IDENTITY)) in err
    assert backend.resolve(OP, torch.device("cpu"), dtype=torch.float32, shape=(2, 4, 3, 5)) == "triton"


def test_a_kernel_must_beat_pytorch_by_three_percent(tuned):
    tuned.costs.update(triton=2.95, cpu=5.0, reference=3.0)
    _ln()
    assert _record_file()["choices"][_key((2, 4, 3, 5))]["choice"] == "reference"
    tuned.costs.update(triton=2.9)
    _ln((1, 4, 2, 2))
    assert _record_file()["choices"][_key((1, 4, 2, 2))]["choice"] == "triton"


def test_backward_is_timed_at_the_first_backward_only(tuned):
    x = torch.randn(2, 4, 3, 5, requires_grad=True)
    w, b = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    y = convnext_fast.layer_norm_2d(x, w, b)
    assert _key((2, 4, 3, 5), "backward") not in _record_file()["choices"]
    y.sum().backward()
    assert _record_file()["choices"][_key((2, 4, 3, 5), "backward")]["choice"] == "triton"
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    expected = torch.autograd.grad(convnext_fast.reference.layer_norm_2d(*leaves).sum(), leaves)
    for got, want in zip((x.grad, w.grad, b.grad), expected):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)


def _perturbed(fn):
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        with torch.no_grad():
            first.mul_(1.05).add_(0.05)
        return out
    return wrong


def test_a_wrong_kernel_fails_parity_is_never_chosen_and_warns_once(tuned, monkeypatch):
    monkeypatch.setattr(launchers, "layer_norm_forward", _perturbed(launchers.layer_norm_forward))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ln()
        _ln((1, 4, 7, 7))
        _ln((1, 4, 2, 9))
    messages = [str(w.message) for w in caught if "failed their parity check" in str(w.message)]
    assert len(messages) == 1 and "python -m convnext_fast verify" in messages[0] and "triton" in messages[0]
    data = _record_file()
    verdict = data["verdicts"][OP]["float32"]
    assert verdict["triton"]["passed"] is False and verdict["triton"]["failed"] and verdict["cpu"]["passed"]
    for key, entry in data["choices"].items():
        assert entry["choice"] != "triton" and "triton" not in entry["times_ms"], key  # cheapest, never chosen
    assert autotune.stats["verifications"] == 2


def test_nothing_is_measured_under_torch_compile_or_export(tuned):
    w, b = torch.ones(4), torch.zeros(4)
    fn = torch.compile(lambda x: convnext_fast.layer_norm_2d(x, w, b), fullgraph=True, backend="eager")
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(fn(x), convnext_fast.reference.layer_norm_2d(x, w, b), atol=1e-5, rtol=1e-5)

    class M(torch.nn.Module):
        def forward(self, t):
            return convnext_fast.layer_norm_2d(t, torch.ones(4), torch.zeros(4))

    torch.export.export(M(), (torch.randn(1, 4, 3, 3),))
    assert autotune.stats == {"verifications": 0, "timings": 0}
    assert not record.record_path(*IDENTITY).exists()


def test_the_variable_turns_measuring_off(tuned, monkeypatch):
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    _ln()
    assert autotune.stats == {"verifications": 0, "timings": 0}
    # the shipped defaults: the LayerNorm kernels are trusted without a parity run, Triton preferred
    assert backend.resolve(OP, torch.device("cpu"), dtype=torch.float32, shape=(2, 4, 3, 5)) == "triton"
    assert not record.record_path(*IDENTITY).exists()


def test_corrupt_and_partial_records_are_ignored_and_rebuilt(tuned):
    path = record.record_path(*IDENTITY)
    path.parent.mkdir(parents=True)
    for junk in ("{not json", '{"format": 1, "device": "Fake GPU 9000", "choices": {"a": 3}}'):
        path.write_text(junk)
        autotune.reset()
        with pytest.warns(RuntimeWarning, match="ignoring the unreadable device record"):
            _ln()
        assert autotune.stats["timings"] == 1
        assert _record_file()["choices"][_key((2, 4, 3, 5))]["choice"] == "triton"


def test_a_record_of_another_version_is_ignored(tuned):
    path = record.record_path(*IDENTITY)
    path.parent.mkdir(parents=True)
    stale = {"format": 1, "device": IDENTITY[0], "capability": IDENTITY[1],
             "versions": {**record.versions(), "torch": "0.0.1"}, "kernels_hash": record.kernels_hash(),
             "verdicts": {}, "choices": {_key((2, 4, 3, 5)): {"choice": "cpu", "times_ms": {}, "error": None}}}
    path.write_text(json.dumps(stale))
    _ln()
    assert autotune.stats["timings"] == 1
    data = _record_file()
    assert data["versions"]["torch"] == torch.__version__ and data["choices"][_key((2, 4, 3, 5))]["choice"] == "triton"


def test_a_read_only_cache_keeps_the_choices_in_memory_and_warns_once(tuned, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("CONVNEXT_FAST_CACHE", str(blocker / "cache"))  # cannot be created, even by root
    autotune.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ln()
        _ln()
        _ln((1, 4, 7, 7))
    assert sum("cannot write the device record" in str(w.message) for w in caught) == 1
    assert autotune.stats == {"verifications": 2, "timings": 2}
    assert backend.resolve(OP, torch.device("cpu"), dtype=torch.float32, shape=(2, 4, 3, 5)) == "triton"


def test_an_exception_while_timing_falls_back_to_the_defaults_and_is_recorded(tuned, monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("simulated: out of memory")

    monkeypatch.setattr(autotune_cases, "runners", out_of_memory)
    _ln()
    entry = _record_file()["choices"][_key((2, 4, 3, 5))]
    assert entry["choice"] is None and "out of memory" in entry["error"]
    assert backend.resolve(OP, torch.device("cpu"), dtype=torch.float32, shape=(2, 4, 3, 5)) == "triton"


def test_parity_inputs_leave_the_users_random_stream_alone(tuned):
    torch.manual_seed(7)
    _ln()
    after_first_use = torch.rand(3)
    torch.manual_seed(7)
    _ln((1, 4, 6, 5))  # measured again (a new shape, as many random numbers)
    again = torch.rand(3)
    torch.manual_seed(7)
    torch.randn(2, 4, 3, 5)  # what _ln itself draws
    plain = torch.rand(3)
    assert torch.equal(after_first_use, plain) and torch.equal(again, plain)


_CHILD = textwrap.dedent("""
    import json, sys, torch
    import convnext_fast
    from convnext_fast import autotune, autotune_cases, backend, verify

    mode, shape = sys.argv[1], tuple(int(s) for s in sys.argv[2].split("x"))
    now = [0.0]

    def tiny_checks(op, dtype, backend_name):
        if mode == "reuse":
            raise AssertionError("verified again in the second process")
        run = lambda device, dt: autotune_cases._op_outputs(op, (1, 4, 3, 3), backend_name, device, dt)
        return [verify.Check(op, "tiny", "float32", run)]

    def runners(*args):
        if mode == "reuse":
            raise AssertionError("timed again in the second process")
        return {{b: (lambda b=b: now.__setitem__(0, now[0] + {{"triton": 1.0, "reference": 3.0}}[b]))
                for b in args[-1]}}

    autotune_cases.runners = runners
    # Triton alone as the kernel backend: the children need not load the compiled extension.
    autotune.configure(tuned=frozenset({{"cpu"}}), identity=lambda d: {identity!r}, sync=lambda d: None,
                       order={{"cpu": ("triton",)}}, clock=lambda: now[0], checks=tiny_checks)
    x = torch.randn(shape)
    with convnext_fast.use_backend("auto"):
        convnext_fast.layer_norm_2d(x, torch.ones(shape[1]), torch.zeros(shape[1]))
        print(json.dumps({{"stats": autotune.stats,
                          "choice": backend.resolve("layer_norm_2d", x.device, dtype=x.dtype, shape=shape)}}))
""")


def _child(mode: str, shape: str) -> subprocess.Popen:
    code = _CHILD.format(identity=IDENTITY)
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.Popen([sys.executable, "-c", code, mode, shape], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_the_record_is_reused_by_a_second_process_and_two_writers_leave_a_valid_record(tuned):
    racing = [_child("measure", "2x4x3x5"), _child("measure", "1x4x6x6")]  # two processes measuring at once
    results = [_result(p) for p in racing]
    assert all(r["stats"]["timings"] == 1 and r["choice"] == "triton" for r in results)
    data = _record_file()  # valid JSON, with both processes' choices
    assert {_key((2, 4, 3, 5)), _key((1, 4, 6, 6))} <= set(data["choices"])
    again = _result(_child("reuse", "2x4x3x5"))
    assert again["stats"] == {"verifications": 0, "timings": 0} and again["choice"] == "triton"


def test_a_shipped_record_applies_its_choices_across_versions_and_its_verdicts_where_the_hash_matches(
        tuned, monkeypatch):
    monkeypatch.setenv(autotune.ENV_VAR, "0")
    shipped = record.Record(device=IDENTITY[0], capability=IDENTITY[1], versions={"torch": "0.0.1"},
                            kernels_hash="another hash",
                            verdicts={OP: {"float32": {"triton": {"passed": False, "error": None}}}},
                            choices={_key((2, 4, 3, 5)): {"choice": "cpu", "times_ms": {}, "error": None}})
    monkeypatch.setattr(record, "_shipped", lambda: (shipped,))
    cpu = torch.device("cpu")
    assert backend.resolve(OP, cpu, dtype=torch.float32, shape=(2, 4, 3, 5)) == "cpu"  # its timed choice
    assert backend.resolve(OP, cpu, dtype=torch.float32, shape=(1, 1, 2, 2)) == "triton"  # defaults elsewhere
    shipped.kernels_hash = record.kernels_hash()  # same kernel sources: its failed verdict counts
    autotune.reset()
    assert backend.resolve(OP, cpu, dtype=torch.float32, shape=(1, 1, 2, 2)) == "cpu"


def test_an_inference_forward_never_resolves_or_loads_a_backward_backend(monkeypatch):
    asked: list[tuple[str, str]] = []
    loaded: list[str] = []
    real_resolve, real_impl = backend._resolve, backend.implementation

    def spy_resolve(op, pass_, *args):
        asked.append((op, pass_))
        return real_resolve(op, pass_, *args)

    def spy_impl(name):
        loaded.append(name)
        return real_impl(name)

    monkeypatch.setattr(backend, "_resolve", spy_resolve)
    monkeypatch.setattr(autotune, "choose", lambda op, pass_, *args: "cpu" if pass_ == "forward" else "triton")
    for module in ("depthwise_conv", "layer_norm", "dwconv_ln", "mlp"):
        monkeypatch.setattr(f"convnext_fast.{module}.implementation", spy_impl)
    model = convnext_fast.convnext_atto(depths=(1, 1, 1, 1), num_classes=3)
    x = torch.randn(1, 3, 32, 32)
    with convnext_fast.use_backend("auto"):
        with torch.no_grad():
            model.eval()(x)
        model.train()(x)  # a graph recorded, no backward yet
        assert asked and all(pass_ == "forward" for _, pass_ in asked)
        assert "triton" not in loaded  # the backward's backend: never asked, never loaded
        block = ConvNeXtBlock(8, kernel_size=3)
        block(torch.randn(1, 8, 3, 3)).sum().backward()
    assert ("dwconv_layer_norm", "backward") in asked and ("pointwise_mlp", "backward") in asked
    assert "triton" in loaded


def test_no_rank_measures_under_torch_distributed(tuned, monkeypatch):
    """Every rank must make the same choices: with more than one process, auto reads the record (or
    the defaults) and measures nothing."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    _ln()
    assert autotune.stats == {"verifications": 0, "timings": 0}
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)
    _ln()
    assert autotune.stats["timings"] == 1


def test_info_names_the_record_in_use(tuned):
    cpu = torch.device("cpu")
    rec, what = autotune.record_in_use(cpu)
    assert rec is record.default_record() and "shipped defaults" in what and str(record.record_path(*IDENTITY)) in what
    _ln()
    rec, what = autotune.record_in_use(cpu)
    assert rec.path == record.record_path(*IDENTITY) and "1 timed choices" in what


def test_a_kernel_that_fails_verify_is_marked_in_the_record(tuned, monkeypatch):
    _ln()
    assert _record_file()["verdicts"][OP]["float32"]["triton"]["passed"] is True
    rows = [{"op": OP, "dtype": "float32", "what": "2x96x56x56", "passed": False},
            {"op": OP, "dtype": "float32", "what": "2x40x9x11", "passed": True}]
    assert autotune.record_failures(torch.device("cpu"), rows) == str(record.record_path(*IDENTITY))
    verdict = _record_file()["verdicts"][OP]["float32"]["triton"]
    assert verdict["passed"] is False and verdict["failed"] == ["2x96x56x56"] and verdict["source"] == "verify"
    _ln((1, 4, 6, 6))
    assert _record_file()["choices"][_key((1, 4, 6, 6))]["choice"] == "cpu"
    assert autotune.record_failures(torch.device("cpu"), rows[1:]) is None


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "autocast"])
def test_first_use_inside_no_grad_inference_mode_or_autocast_checks_the_same(tuned, mode):
    context = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
               "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[mode]
    with context:
        _ln()
    verdicts = _record_file()["verdicts"][OP]["float32"]
    assert all(v["passed"] and v["error"] is None for v in verdicts.values()), verdicts
    assert _record_file()["choices"][_key((2, 4, 3, 5))]["choice"] == "triton"


def test_the_tune_command_reports_verdicts_and_choices(capsys):
    from convnext_fast import tune
    from convnext_fast.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["tune", "--help"])
    assert info.value.code == 0 and "--train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tune.main(["--batch", "0"])
    assert tune.main(["--device", "cuda"]) == 2 and "no CUDA device" in capsys.readouterr().err
    rec = record.Record(device=IDENTITY[0], capability=IDENTITY[1],
                        verdicts={OP: {"float32": {"triton": {"passed": False, "error": None, "failed": ["tiny"],
                                                              "checks": 1, "seconds": 0.5}}}},
                        choices={_key((2, 4, 3, 5)): {"choice": "cpu", "error": None,
                                                      "times_ms": {"cpu": 2.0, "reference": 3.0}},
                                 _key((1, 4, 3, 5)): {"choice": None, "error": "OutOfMemoryError: x", "times_ms": {}}})
    lines: list[str] = []
    tune._report(rec, "float32", log=lines.append)
    text = "\n".join(lines)
    assert "FAILED (tiny)" in text and "2x4x3x5" in text and "cpu 2.000, reference 3.000" in text
    assert "error: OutOfMemoryError: x (defaults used)" in text


def test_optimize_for_inference_checks_the_patch_kernel_before_it_decides_to_fold(tuned):
    """On a device where nothing was measured yet, deciding whether to fold the stem and downsampling
    layers checks the patch kernel there first (the defaults alone would not trust it)."""
    from convnext_fast import patch_linear

    checked: list[str] = []
    real = autotune.config().checks

    def spy(op, dtype, backend_name):
        checked.append(op)
        if op == "patch_linear":
            def run(device, dt):
                return {"y": (torch.ones(2), torch.ones(2), torch.ones(2, dtype=torch.float64))}, "stub"
            return [verify.Check(op, "stub", "float32", run)]
        return real(op, dtype, backend_name)

    autotune.configure(checks=spy)
    assert patch_linear.kernel_backend(torch.device("cpu"), torch.float32) == "triton"
    assert checked.count("patch_linear") == 2  # triton and the cpu kernel, each once
    assert _record_file()["verdicts"]["patch_linear"]["float32"]["triton"]["passed"] is True
