"""ConvNeXt inference on the CPU in every engine a user would pick, side by side with ours.

One module for the report (``python -m convnext_fast.bench``, batch 1 and 8) and
``benchmarks/bench_cpu_model.py`` (any batch, training step, several runs). Engines, all fed the
same random images, all built from one timm model with random weights (every parameter random,
layer scale included, so that no block hides behind its 1e-6 initial scale):

fp32
  * ``timm_eager``: timm, eval, channels_last, ``torch.no_grad`` (the baseline, and the parity reference);
  * ``onnxruntime``: that model exported (TorchScript exporter, opset 17, static shape), CPU execution
    provider, ``intra_op_num_threads`` = torch's threads, thread spinning off (a spinning pool steals
    the cores from the engine timed next);
  * ``openvino``: ``openvino.convert_model(model, example_input=x)``, compiled for ``"CPU"`` with
    ``PERFORMANCE_HINT: LATENCY``, ``INFERENCE_NUM_THREADS`` = torch's threads and
    ``INFERENCE_PRECISION_HINT: f32``;
  * ``compile_freezing``: ``torch.compile`` of the timm model with ``torch._inductor.config.freezing``
    (weights prepacked for oneDNN, constants folded);
  * ``ours`` (``convnext_fast.create_model`` with timm's weights) and ``ours_optimized``
    (``optimize_for_inference`` of it).

bf16
  * ``timm_autocast_bf16``, ``ours_autocast_bf16``: the fp32 models under ``torch.autocast("cpu", bfloat16)``;
  * ``openvino_bf16``: ``INFERENCE_PRECISION_HINT: bf16``;
  * ``compile_freezing_autocast_bf16`` (autocast) and ``compile_freezing_bf16`` (the model cast with
    ``.to(torch.bfloat16)``, bf16 input): the faster of the two is torch.compile's bf16 engine;
  * ``ours_optimized_bf16``: ``optimize_for_inference(model, dtype=torch.bfloat16)``, bf16 input.

Optionally (``avx2=True``) ``ours_optimized_avx2`` and ``ours_optimized_bf16_avx2``: the same two
optimized models in a worker process restricted to AVX2 (``CONVNEXT_FAST_CPU_ISA=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``), as on a CPU without AVX-512 and
AVX512_BF16. The worker answers each call with its own wall time, so it is interleaved like the rest.

Parity before timing: every engine's output against timm in float64 with
:func:`convnext_fast.parity.compare`, next to PyTorch's own error in that dtype (fp32: timm eager;
bf16: timm cast to bf16, the loosest of PyTorch's own bf16 runs). An engine that fails, or raises
while it is built or run, is a row with the reason, never timed.

Timing: warm-up rounds, then ``repeats`` rounds in which each engine runs once in turn (round-robin,
so a change in the machine's load hits all alike); ``runs`` such blocks, each giving its own
medians, 20th / 80th percentiles and ratios. A target holds only if the lowest ratio over the runs
clears it.

The ceiling (:func:`measure_ceiling`): the best rate of large GEMMs through oneDNN / MKL (fp32 and
bf16), the attainable FMA / dot-product rate of these cores; every row reports its share of it.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .. import parity
from .env import cpu_details

__all__ = [
    "FP32_ENGINES", "BF16_ENGINES", "AVX2_ENGINES", "COMPETITORS", "Engine", "openvino_telemetry_off",
    "measure_ceiling", "model_flops", "build_timm", "build_engines", "check_engines", "time_interleaved", "stats",
    "compare", "targets", "format_table",
]

FP32_ENGINES = ("timm_eager", "onnxruntime", "openvino", "compile_freezing", "ours", "ours_optimized")
BF16_ENGINES = ("timm_autocast_bf16", "openvino_bf16", "compile_freezing_autocast_bf16", "compile_freezing_bf16",
                "ours_autocast_bf16", "ours_optimized_bf16")
AVX2_ENGINES = ("ours_optimized_avx2", "ours_optimized_bf16_avx2")
# The engines a user would pick instead of ours, per dtype (the speed targets compare against the fastest).
COMPETITORS = {"fp32": ("compile_freezing", "openvino", "onnxruntime"),
               "bf16": ("compile_freezing_autocast_bf16", "compile_freezing_bf16", "openvino_bf16")}
BASELINE = "timm_eager"
# Names of engines that compile a model with torch.compile + freezing (about a minute each on two cores).
COMPILED = ("compile_freezing", "compile_freezing_autocast_bf16", "compile_freezing_bf16")
_AVX2_ENV = {"CONVNEXT_FAST_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@dataclass
class Engine:
    """One way of running the model: ``run()`` does one inference on the case's images."""

    name: str
    dtype: str  # "fp32" or "bf16": the ceiling and the parity rule it is held to
    what: str
    run: Callable[[], Tensor]
    setup_s: float = 0.0
    # A worker process's own time for its last call (seconds), when the engine runs in one.
    last_seconds: Optional[Callable[[], float]] = None
    close: Callable[[], None] = field(default=lambda: None)


# ------------------------------------------------------------------------------------------------
# OpenVINO without telemetry
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def openvino_telemetry_off():
    """Import and convert with OpenVINO while its anonymous telemetry is declined, without a consent
    file in the user's home directory.

    OpenVINO's converter builds its telemetry with ``disable_in_ci=True`` (``openvino.tools.ovc.
    telemetry_utils.init_ovc_telemetry``), and ``openvino_telemetry`` then declines whenever the
    ``CI`` environment variable is ``true``: the consent is decided when the telemetry object is
    (re)initialized, on ``import openvino`` and at each ``convert_model``, so the variable is set
    around those calls only and restored afterwards (the user's environment is left as it was).
    """
    old = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = old


def openvino_version() -> Optional[str]:
    """OpenVINO's version, or None when it is not installed (importing it with telemetry off)."""
    try:
        with openvino_telemetry_off():
            import openvino
    except ImportError:
        return None
    return str(openvino.__version__)


def onnxruntime_version() -> Optional[str]:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


# ------------------------------------------------------------------------------------------------
# The ceiling
# ------------------------------------------------------------------------------------------------

def measure_ceiling(n: int = 2048, reps: int = 5, threads: Optional[int] = None) -> dict:
    """The attainable fp32 FMA and bf16 dot-product rates of this CPU, in GFLOP/s.

    A large square GEMM is bound by the FMA (fp32) or dot-product (bf16: ``vdpbf16ps`` where the CPU
    has AVX512_BF16) units, not by memory: each is run through ``torch.mm`` (MKL or oneDNN, as
    PyTorch picks) and oneDNN directly (``torch.ops.mkldnn._linear_pointwise``), ``reps`` times,
    and the best rate of any counts (a ceiling is what the machine can reach, so the fastest call,
    not the median). Returns {"fp32": GFLOP/s, "bf16": GFLOP/s, "detail": {...}, "n", "threads"}.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    out: dict = {"n": n, "threads": torch.get_num_threads(), "detail": {}}
    g = torch.Generator().manual_seed(0)
    for key, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, generator=g).to(dt)
        b = torch.randn(n, n, generator=g).to(dt)
        ways: dict[str, Callable[[], Tensor]] = {"torch.mm": lambda: torch.mm(a, b)}
        if hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            ways["mkldnn._linear_pointwise"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        best = 0.0
        for way, fn in ways.items():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a path this build lacks is a fact, not a failure
                out["detail"][f"{key} {way}"] = f"n/a ({type(exc).__name__})"
                continue
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            rate = 2 * n ** 3 / min(times) / 1e9
            out["detail"][f"{key} {way}"] = round(rate, 1)
            best = max(best, rate)
        out[key] = round(best, 1) if best else None
    return out


def model_flops(model: nn.Module, size: int) -> float:
    """FLOPs of one image through ``model`` (2 per multiply-add of its convolutions and matrix
    products, as ``torch.utils.flop_counter`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------
# Engines
# ------------------------------------------------------------------------------------------------

def build_timm(name: str, seed: int = 0) -> nn.Module:
    """timm's ``name`` with random weights (nothing downloaded), every parameter random, eval, channels_last."""
    import timm

    from .cases import _randomize_

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    _randomize_(model, seed)
    return model.to(memory_format=torch.channels_last)


def _ours(timm_model: nn.Module, name: str) -> nn.Module:
    import convnext_fast

    ours = convnext_fast.create_model(name)
    ours.load_state_dict(timm_model.state_dict())
    return ours.eval().to(memory_format=torch.channels_last)


def _eager(model: nn.Module, x: Tensor, autocast: bool = False) -> Callable[[], Tensor]:
    def run() -> Tensor:
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return model(x)
    return run


def _onnxruntime(model: nn.Module, x: Tensor, directory: str) -> Callable[[], Tensor]:
    import onnxruntime as ort

    path = os.path.join(directory, f"model_{'x'.join(map(str, x.shape))}.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter on purpose (static shapes, as the ONNX tests); its deprecation notice is noise.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x.contiguous(),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"x": x.contiguous().numpy()}

    def run() -> Tensor:
        return torch.from_numpy(sess.run(None, feed)[0])
    return run


def _openvino(model: nn.Module, x: Tensor, precision: str, cache: dict) -> Callable[[], Tensor]:
    with openvino_telemetry_off():
        import openvino as ov

        key = tuple(x.shape)
        if key not in cache:  # one conversion per input shape, compiled once per precision
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[key] = ov.convert_model(model, example_input=x.contiguous())
    core = cache.setdefault("core", ov.Core())
    compiled = core.compile_model(cache[key], "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                      "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    feed = x.contiguous().numpy()

    def run() -> Tensor:
        request.infer({0: feed})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return run


def _compile_freezing(model: nn.Module, x: Tensor, autocast: bool) -> Callable[[], Tensor]:
    """``torch.compile`` with freezing; compiled here (the first call), so the timing sees none of it."""
    from .cases import _set_compile_limits

    _set_compile_limits()
    compiled = torch.compile(model, dynamic=False)

    def run() -> Tensor:
        ctx = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            return compiled(x)

    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        run()
    return run


class _Avx2Worker:
    """A process restricted to AVX2 running our optimized model in fp32 and bf16, one call per request.

    Protocol (lines on stdin / stdout): ``run <dtype>`` -> the call's wall time in seconds;
    ``out <dtype> <path>`` -> runs once, saves the output to ``path``, answers ``ok``; ``quit``.
    """

    def __init__(self, timm_model: nn.Module, name: str, x: Tensor, directory: str) -> None:
        self.weights = os.path.join(directory, "avx2_weights.pt")
        self.inp = os.path.join(directory, f"avx2_x_{x.shape[0]}.pt")
        torch.save(timm_model.state_dict(), self.weights)
        torch.save(x, self.inp)
        env = dict(os.environ, **_AVX2_ENV)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convnext_fast.bench.cpu_engines", "--avx2-worker", name, self.weights, self.inp,
             str(torch.get_num_threads())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        ready = self._read()
        if ready != "ready":
            raise RuntimeError(f"the AVX2 worker did not start: {ready!r}")
        self.seconds = 0.0

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the AVX2 worker exited (status {self.proc.returncode}); its stderr says why")
        return line.strip()

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if answer.startswith("error"):
            raise RuntimeError(f"AVX2 worker: {answer}")
        return answer

    def runner(self, dtype: str, directory: str) -> tuple[Callable[[], Tensor], Callable[[], float]]:
        path = os.path.join(directory, f"avx2_out_{dtype}.pt")
        state = {"first": True, "seconds": 0.0}

        def run() -> Tensor:
            if state["first"]:  # the parity call brings the output back; timed calls only the time
                state["first"] = False
                self._ask(f"out {dtype} {path}")
                return torch.load(path)
            state["seconds"] = float(self._ask(f"run {dtype}"))
            return torch.empty(0)

        return run, lambda: state["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask("quit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _avx2_worker_main(name: str, weights: str, inp: str, threads: int) -> None:
    """The worker's loop (see :class:`_Avx2Worker`); everything but the answers goes to stderr."""
    answer = sys.stdout
    sys.stdout = sys.stderr
    torch.set_num_threads(threads)
    try:
        import convnext_fast

        ours = convnext_fast.create_model(name)
        ours.load_state_dict(torch.load(weights))
        ours = ours.eval().to(memory_format=torch.channels_last)
        x = torch.load(inp).contiguous(memory_format=torch.channels_last)
        models = {"fp32": (convnext_fast.optimize_for_inference(copy.deepcopy(ours)), x),
                  "bf16": (convnext_fast.optimize_for_inference(copy.deepcopy(ours), dtype=torch.bfloat16),
                           x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))}
    except Exception as exc:  # noqa: BLE001 - the parent reports it
        print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), file=answer, flush=True)
        return
    print("ready", file=answer, flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        try:
            model, xin = models[parts[1]]
            with torch.no_grad():
                t0 = time.perf_counter()
                y = model(xin)
                seconds = time.perf_counter() - t0
            if parts[0] == "out":
                torch.save(y, parts[2])
                print("ok", file=answer, flush=True)
            else:
                print(f"{seconds:.9f}", file=answer, flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"error {type(exc).__name__}: {exc}".replace("\n", " "), file=answer, flush=True)


def _specs(name: str, timm_model: nn.Module, x: Tensor, wanted: Sequence[str], directory: str,
           shared: dict) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(name, dtype, description, builder) of each wanted engine, in round-robin order."""
    import convnext_fast

    x16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)

    def ours() -> nn.Module:
        if "ours" not in shared:
            shared["ours"] = _ours(timm_model, name)
        return shared["ours"]

    def optimized(dtype: Optional[torch.dtype]) -> nn.Module:
        key = f"optimized_{dtype}"
        if key not in shared:
            shared[key] = convnext_fast.optimize_for_inference(copy.deepcopy(ours()), dtype=dtype).eval()
        return shared[key]

    def avx2(dtype: str):
        # One worker per input shape: a worker holds its input, so a later batch size needs its own.
        key = ("avx2", tuple(x.shape))

        def build():
            if key not in shared:
                shared[key] = _Avx2Worker(timm_model, name, x, directory)
            return shared[key].runner(dtype, directory)
        return build

    table: dict[str, tuple[str, str, Callable[[], Any]]] = {
        "timm_eager": ("fp32", "timm, eval, channels_last, no_grad", lambda: _eager(timm_model, x)),
        "onnxruntime": ("fp32", "timm exported (TorchScript exporter, opset 17); ORT CPU provider, spinning off",
                        lambda: _onnxruntime(timm_model, x, directory)),
        "openvino": ("fp32", "openvino.convert_model(timm); CPU, LATENCY, precision hint f32",
                     lambda: _openvino(timm_model, x, "f32", shared.setdefault("ov", {}))),
        "compile_freezing": ("fp32", "torch.compile(timm) with inductor freezing",
                             lambda: _compile_freezing(copy.deepcopy(timm_model), x, autocast=False)),
        "ours": ("fp32", "convnext_fast.create_model + timm weights, channels_last, no_grad", lambda: _eager(ours(), x)),
        "ours_optimized": ("fp32", "convnext_fast.optimize_for_inference(ours)", lambda: _eager(optimized(None), x)),
        "timm_autocast_bf16": ("bf16", "timm under torch.autocast('cpu', bfloat16)",
                               lambda: _eager(timm_model, x, autocast=True)),
        "openvino_bf16": ("bf16", "openvino.convert_model(timm); CPU, LATENCY, precision hint bf16",
                          lambda: _openvino(timm_model, x, "bf16", shared.setdefault("ov", {}))),
        "compile_freezing_autocast_bf16": ("bf16", "torch.compile(timm) with freezing, under bf16 autocast",
                                           lambda: _compile_freezing(copy.deepcopy(timm_model), x, autocast=True)),
        "compile_freezing_bf16": ("bf16", "torch.compile(timm.to(bfloat16)) with freezing, bf16 input",
                                  lambda: _compile_freezing(copy.deepcopy(timm_model).to(torch.bfloat16), x16,
                                                            autocast=False)),
        "ours_autocast_bf16": ("bf16", "ours under torch.autocast('cpu', bfloat16)",
                               lambda: _eager(ours(), x, autocast=True)),
        "ours_optimized_bf16": ("bf16", "optimize_for_inference(ours, dtype=torch.bfloat16), bf16 input",
                                lambda: _eager(optimized(torch.bfloat16), x16)),
        "ours_optimized_avx2": ("fp32", "optimize_for_inference(ours) in a process restricted to AVX2 "
                                        "(CONVNEXT_FAST_CPU_ISA=avx2, ONEDNN_MAX_CPU_ISA=AVX2)", avx2("fp32")),
        "ours_optimized_bf16_avx2": ("bf16", "optimize_for_inference(ours, dtype=torch.bfloat16) in a process "
                                             "restricted to AVX2 (no AVX512_BF16)", avx2("bf16")),
    }
    unknown = [w for w in wanted if w not in table]
    if unknown:
        raise ValueError(f"unknown engines {unknown}; known: {list(table)}")
    return [(w,) + table[w] for w in wanted]


def build_engines(name: str, timm_model: nn.Module, x: Tensor, wanted: Sequence[str], directory: str,
                  shared: Optional[dict] = None, log: Callable[[str], None] = print) -> tuple[list[Engine], dict]:
    """Build each wanted engine for input ``x``. Returns (engines built, {name: error text} of the
    others). ``shared`` carries what engines of one model share across batch sizes (ours, the
    OpenVINO conversions, the AVX2 worker); close it with :func:`close_shared`."""
    shared = {} if shared is None else shared
    engines, errors = [], {}
    for ename, dtype, what, build in _specs(name, timm_model, x, wanted, directory, shared):
        t0 = time.perf_counter()
        try:
            built = build()
        except Exception as exc:  # noqa: BLE001 - one engine's failure is a row, not the end of the run
            errors[ename] = f"{type(exc).__name__}: {exc}"[:400]
            log(f"  {ename:<32} not built: {errors[ename]}")
            continue
        run, last = built if isinstance(built, tuple) else (built, None)
        engines.append(Engine(ename, dtype, what, run, time.perf_counter() - t0, last))
        log(f"  {ename:<32} built in {engines[-1].setup_s:.1f} s")
    return engines, errors


def close_shared(shared: dict) -> None:
    """Stop the AVX2 workers (if any were started) and drop compiled graphs."""
    for key in [k for k in shared if isinstance(k, tuple) and k[0] == "avx2"]:
        shared.pop(key).close()
    shared.clear()


# ------------------------------------------------------------------------------------------------
# Parity and timing
# ------------------------------------------------------------------------------------------------

def check_engines(engines: list[Engine], timm_model: nn.Module, x: Tensor) -> dict[str, dict]:
    """Run each engine once on ``x`` and compare with timm in float64 (:func:`convnext_fast.parity.compare`,
    next to PyTorch's own fp32 or bf16 error). Returns {engine: verdict (+ "error" when it raised)}."""
    with torch.no_grad():
        ref64 = copy.deepcopy(timm_model).double()(x.double())
        lowp = {"fp32": timm_model(x).float(),
                "bf16": copy.deepcopy(timm_model).to(torch.bfloat16)(x.to(torch.bfloat16)).float()}
    verdicts = {}
    for e in engines:
        try:
            out = e.run()
            verdicts[e.name] = parity.compare(out.float(), lowp[e.dtype], ref64,
                                              "float32" if e.dtype == "fp32" else "bfloat16")
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check
            verdicts[e.name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
    return verdicts


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def time_interleaved(engines: list[Engine], repeats: int, warmup: int,
                     log: Optional[Callable[[str], None]] = None) -> dict[str, list[float]]:
    """Per-call wall times (ms) of each engine, called round-robin ``repeats`` times after
    ``warmup`` untimed rounds. A worker-process engine reports its own time for the call."""
    for _ in range(warmup):
        for e in engines:
            e.run()
    times: dict[str, list[float]] = {e.name: [] for e in engines}
    for r in range(repeats):
        for e in engines:
            t0 = time.perf_counter()
            e.run()
            wall = time.perf_counter() - t0
            times[e.name].append((e.last_seconds() if e.last_seconds else wall) * 1e3)
        if log:
            log(f"    round {r + 1}/{repeats}: " + ", ".join(f"{e.name} {times[e.name][-1]:.1f}" for e in engines))
    return times


def stats(times: list[float]) -> dict:
    """Median, 20th / 80th percentile and minimum (ms) of one engine's times in one block."""
    return {"median_ms": statistics.median(times), "p20_ms": _quantile(times, 0.2), "p80_ms": _quantile(times, 0.8),
            "min_ms": min(times), "reps": len(times)}


def compare(name: str = "convnext_tiny", batches: Sequence[int] = (1, 8), size: int = 224,
            engines: Optional[Sequence[str]] = None, runs: int = 1, repeats: int = 10, warmup: int = 3,
            threads: Optional[int] = None, ceiling: Optional[dict] = None, avx2: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Parity, then interleaved timing, of the engines at each batch size; one row per (batch, engine).

    Args:
        name: a model both timm and convnext_fast know.
        batches: batch sizes, each with its own inputs, engines and compilations.
        size: image height and width.
        engines: engine names (default: every fp32 and bf16 engine; with ``avx2``, the AVX2 pair too).
        runs: interleaved timing blocks per batch (each gives its own medians and ratios).
        repeats, warmup: timed and untimed round-robin rounds per block.
        threads: torch's threads (ONNX Runtime's and OpenVINO's follow); default: as set.
        ceiling: :func:`measure_ceiling`'s result (measured here when None).
        avx2: add the AVX2-restricted worker's two engines.

    Returns:
        {"cpu": cpu_details(), "ceiling", "flops_per_image", "versions", "rows": [...], "runs": [...],
        "targets": :func:`targets`}. Each row: batch, engine, dtype, what, status, parity verdict,
        setup_s, and per run its stats; ``median_ms`` etc. of the first run, ``share_of_ceiling``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    wanted = list(engines) if engines else list(FP32_ENGINES + BF16_ENGINES) + (list(AVX2_ENGINES) if avx2 else [])
    if BASELINE not in wanted:
        wanted.insert(0, BASELINE)
    if not onnxruntime_version() and "onnxruntime" in wanted:
        log("onnxruntime is not installed (pip install onnxruntime onnx): no ONNX Runtime rows")
    ceiling = ceiling or measure_ceiling()
    timm_model = build_timm(name)
    flops = model_flops(timm_model, size)
    result: dict = {"model": name, "size": size, "threads": torch.get_num_threads(), "cpu": cpu_details(),
                    "ceiling": ceiling, "flops_per_image": flops, "loadavg_start": list(os.getloadavg()),
                    "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime_version(),
                                 "openvino": openvino_version()},
                    "rows": []}
    shared: dict = {}
    try:
        with tempfile.TemporaryDirectory() as directory:
            for batch in batches:
                g = torch.Generator().manual_seed(batch)
                x = torch.randn(batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
                log(f"{name} batch {batch} {size}x{size}, {torch.get_num_threads()} threads "
                    f"(load average {os.getloadavg()[0]:.2f})")
                built, errors = build_engines(name, timm_model, x, wanted, directory, shared, log)
                verdicts = check_engines(built, timm_model, x)
                ready = [e for e in built if verdicts[e.name].get("passed")]
                for e in built:
                    v = verdicts[e.name]
                    log(f"  {e.name:<32} parity {'ok' if v.get('passed') else 'FAILED, not timed'}"
                        + (f" (rel err {v['rel_err']:.1e} <= {v['tol']:.1e})" if "rel_err" in v else "")
                        + (f": {v['error']}" if "error" in v else ""))
                blocks = []
                for r in range(runs):
                    log(f"  run {r + 1}/{runs}: {len(ready)} engines, {warmup} warm-up + {repeats} rounds, round-robin")
                    blocks.append(time_interleaved(ready, repeats, warmup if r == 0 else 1, log))
                for ename in wanted:
                    row: dict = {"model": name, "batch": batch, "size": size, "engine": ename}
                    e = next((e for e in built if e.name == ename), None)
                    if e is None:
                        row.update(status="error", error=errors.get(ename, "not built"),
                                   dtype="bf16" if "bf16" in ename else "fp32")
                        result["rows"].append(row)
                        continue
                    row.update(dtype=e.dtype, what=e.what, setup_s=round(e.setup_s, 2),
                               parity={k: v for k, v in verdicts[ename].items()})
                    if e not in ready:
                        row["status"] = "failed parity"
                        result["rows"].append(row)
                        continue
                    row["status"] = "ok"
                    row["runs"] = [stats(b[ename]) for b in blocks]
                    row["times_ms"] = [b[ename] for b in blocks]
                    row.update(row["runs"][0])
                    rate = ceiling.get(e.dtype)
                    if rate:
                        row["share_of_ceiling"] = [flops * batch / (s["median_ms"] / 1e3) / 1e9 / rate
                                                   for s in row["runs"]]
                    result["rows"].append(row)
                for e in built:
                    e.close()
                if any(w in COMPILED for w in wanted):
                    torch._dynamo.reset()  # this batch's frozen graphs are done with
    finally:
        close_shared(shared)
    result["loadavg_end"] = list(os.getloadavg())
    result["targets"] = targets(result["rows"])
    return result


# ------------------------------------------------------------------------------------------------
# Targets and tables
# ------------------------------------------------------------------------------------------------

def _medians(rows: list[dict], batch: int) -> dict[str, list[float]]:
    return {r["engine"]: [s["median_ms"] for s in r["runs"]] for r in rows
            if r["batch"] == batch and r.get("status") == "ok"}


def targets(rows: list[dict]) -> list[dict]:
    """The speed targets per batch, each as the lowest ratio over the runs (a ratio > 1: ours faster).

    * fp32: ``ours_optimized`` at least 1.15x (batch 1) / 1.2x (other batches) the fastest of
      torch.compile with freezing, OpenVINO and ONNX Runtime; ``ours`` within 5% of ``ours_optimized``;
    * bf16: ``ours_optimized_bf16`` at least 1.1x the fastest bf16 engine; ``ours_autocast_bf16`` at
      least 0.9x ``ours_optimized_bf16``;
    * AVX2 only: bf16 never slower than fp32 (``ours_optimized_avx2`` / ``ours_optimized_bf16_avx2`` >= 1.0).
    """
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        med = _medians(rows, batch)

        def add(what: str, num: str | Sequence[str], den: str, goal: float) -> None:
            nums = [num] if isinstance(num, str) else [n for n in num if n in med]
            if den not in med or not nums or any(n not in med for n in nums):
                out.append({"batch": batch, "target": what, "goal": goal, "met": None,
                            "reason": "an engine it needs did not run"})
                return
            per_run = []
            leaders = []
            for i in range(len(med[den])):
                best = min(nums, key=lambda n: med[n][i])
                leaders.append(best)
                per_run.append(med[best][i] / med[den][i])
            out.append({"batch": batch, "target": what, "goal": goal, "ratios": per_run, "lowest": min(per_run),
                        "against": leaders, "met": min(per_run) >= goal})

        add("fp32: ours_optimized vs the fastest engine", COMPETITORS["fp32"], "ours_optimized",
            1.15 if batch == 1 else 1.2)
        add("fp32: ours within 5% of ours_optimized", "ours_optimized", "ours", 1 / 1.05)
        add("bf16: ours_optimized_bf16 vs the fastest bf16 engine", COMPETITORS["bf16"], "ours_optimized_bf16", 1.1)
        add("bf16: ours_autocast_bf16 at least 0.9x ours_optimized_bf16", "ours_optimized_bf16",
            "ours_autocast_bf16", 0.9)
        if "ours_optimized_bf16_avx2" in med:
            add("AVX2: bf16 not slower than fp32", "ours_optimized_avx2", "ours_optimized_bf16_avx2", 1.0)
    return out


def format_table(result: dict) -> str:
    """The rows as a markdown table (ms median of each run, p80/p20 spread, share of the ceiling, x
    the fastest competitor of the same dtype), then the targets."""
    lines = [f"CPU: {result['cpu'].get('summary', '?')}; {result['threads']} threads; ceiling fp32 "
             f"{result['ceiling'].get('fp32')} GFLOP/s, bf16 {result['ceiling'].get('bf16')} GFLOP/s; "
             f"{result['flops_per_image'] / 1e9:.2f} GFLOP per image", "",
             "| batch | engine | dtype | median ms (each run) | spread p80/p20 | % of ceiling | x fastest competitor |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['batch']} | {r['engine']} | {r['dtype']} | {r['status']}: "
                         f"{r.get('error') or r.get('parity', {}).get('error') or ''} | | | |")
            continue
        med = _medians(result["rows"], r["batch"])
        comp = [c for c in COMPETITORS[r["dtype"]] if c in med]
        vs = ""
        if comp:
            vs = " / ".join(f"{min(med[c][i] for c in comp) / m:.2f}" for i, m in enumerate(med[r["engine"]]))
        lines.append(f"| {r['batch']} | {r['engine']} | {r['dtype']} | "
                     f"{' / '.join(format(s['median_ms'], '.1f') for s in r['runs'])} | "
                     f"{max(s['p80_ms'] / s['p20_ms'] for s in r['runs']):.2f} | "
                     f"{' / '.join(f'{100 * s:.0f}' for s in r.get('share_of_ceiling', []))} | {vs} |")
    lines += ["", "| batch | target | goal | lowest ratio (each run) | met |", "|---|---|---|---|---|"]
    for t in result.get("targets", []):
        if t["met"] is None:
            lines.append(f"| {t['batch']} | {t['target']} | {t['goal']:.2f} | {t['reason']} | n/a |")
        else:
            lines.append(f"| {t['batch']} | {t['target']} | {t['goal']:.2f} | {t['lowest']:.2f} "
                         f"({' / '.join(f'{v:.2f}' for v in t['ratios'])}; vs {', '.join(sorted(set(t['against'])))})"
                         f" | {'met' if t['met'] else 'MISSED'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--avx2-worker":
        _avx2_worker_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        print("convnext_fast.bench.cpu_engines is a library: run benchmarks/bench_cpu_model.py or "
              "python -m convnext_fast.bench", file=sys.stderr)
        sys.exit(2)
