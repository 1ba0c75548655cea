"""Benchmark cases and providers: one setup factory per op, shared by the pytest suite and the report.

A *case* is (op, mode, shape, dtype, kernel size); a *provider* is who computes it:

* ``torch``         eager PyTorch the way timm runs ConvNeXt: channels_last input, depthwise
                    ``F.conv2d(groups=C)``, ``permute`` to NHWC, ``F.layer_norm``, Linear MLP
                    (``F.linear`` -> ``F.gelu`` -> ``F.linear`` on the NHWC view, then layer scale and
                    residual); the model is timm's ``convnext_tiny`` in channels_last under
                    ``torch.autocast`` (bf16).
* ``torch_compile`` the same code under ``torch.compile`` (mode ``default``; ``max-autotune`` on request).
* ``triton``, ``cuda``, ``cpu``  ours, through ``convnext_fast.use_backend(name)``: the backend is
                    chosen by name, never ``auto`` (on CUDA ``auto`` still runs PyTorch for the MLP,
                    ``dispatch.json`` ``kernels_verified``). A backend without a kernel for an op
                    (``cuda`` has no MLP kernel) is skipped with the library's reason.
* ``triton_compile`` ours (triton backend) under ``torch.compile``: our ops stay opaque custom ops,
                    Inductor fuses what is around them (MLP bias + GELU, layer scale, residual).
                    Block and model only: an op alone is one custom op, nothing to fuse.
* ``triton_optimized``, ``cpu_optimized``  ``convnext_fast.optimize_for_inference(model, dtype=)`` of
                    our convnext_tiny (folded weights, run in the case dtype without autocast), through
                    that backend; ``triton_optimized_compile`` the same under ``torch.compile``. Model
                    inference only.
* ``resnet50``, ``resnet50_compile``  torchvision's ``resnet50`` in channels_last under autocast, eager
                    and compiled: an anchor for the convnext_tiny numbers (images/s of a model every
                    reader knows), reported, never a target, never "ours".

Every provider that cannot run raises :class:`Skip` with the reason (the Triton interpreter is never
used for timing: it would measure numpy, not a kernel); :func:`provider_skip_reason` says up front
which providers do not measure a case at all. Ops: ``dwconv`` (fwd, fwdbwd), ``layer_norm`` (fwd,
bwd), ``dwconv_ln`` (fwd, fwdbwd), ``mlp`` (fwd, fwdbwd: the MLP half of a block, fc1 -> GELU ->
fc2 -> layer scale -> residual), ``block`` (fwd, fwdbwd), ``model`` (infer, train).
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import parity
from ..shapes import CONVNEXT_T_STAGES
from .deps import MissingDependency, require

__all__ = [
    "Case", "Prepared", "Skip", "PROVIDERS", "OURS", "STAGES", "SWEEP_K", "MODES", "ANCHORS", "OPTIMIZED",
    "provider_unavailable", "provider_skip_reason", "prepare", "check_parity", "standard_cases", "dtype_of",
    "backend_of", "eager_twin", "COMPILED",
]

PROVIDERS = ("torch", "torch_compile", "triton", "cuda", "cpu", "triton_compile", "triton_optimized", "cpu_optimized",
             "triton_optimized_compile", "resnet50", "resnet50_compile")
OURS = ("triton", "cuda", "cpu", "triton_compile", "triton_optimized", "cpu_optimized", "triton_optimized_compile")
COMPILED = ("torch_compile", "triton_compile", "triton_optimized_compile", "resnet50_compile")
# optimize_for_inference(model) of our convnext_tiny: model inference only.
OPTIMIZED = ("triton_optimized", "cpu_optimized", "triton_optimized_compile")
# torchvision's resnet50, eager and compiled: a yardstick in the model table, never a target.
ANCHORS = ("resnet50", "resnet50_compile")
# ConvNeXt-T stage shapes (C, H, W) at 224x224 input: the one definition, convnext_fast.shapes.
STAGES = CONVNEXT_T_STAGES
SWEEP_K = (3, 5, 7, 9, 11, 13, 31)
MODES = {"dwconv": ("fwd", "fwdbwd"), "layer_norm": ("fwd", "bwd"), "dwconv_ln": ("fwd", "fwdbwd"),
         "mlp": ("fwd", "fwdbwd"), "block": ("fwd", "fwdbwd"), "model": ("infer", "train")}
MLP_RATIO = 4  # ConvNeXt's inverted bottleneck: hidden width Hd = 4C
LN_EPS = 1e-6


class Skip(Exception):
    """The provider cannot run this case here; ``str(exc)`` says why."""


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass(frozen=True)
class Case:
    """One measurement: op, mode, (N, C, H, W) shape (model: (N, 3, 224, 224)), dtype, kernel size."""

    op: str
    mode: str
    shape: tuple
    dtype: str
    k: int = 7
    group: str = "standard"  # "standard", "sweep" or "latency" (the model at batch 1, GPU)

    @property
    def key(self) -> tuple:
        """Identifies the case across providers (for speedups)."""
        return (self.op, self.mode, tuple(self.shape), self.dtype, self.k)

    @property
    def stage(self) -> Optional[int]:
        """1..4 when (C, H, W) is a ConvNeXt-T stage shape, else None."""
        chw = tuple(self.shape[1:])
        return STAGES.index(chw) + 1 if chw in STAGES else None

    @property
    def label(self) -> str:
        n, c, h, w = self.shape
        return f"{self.op}-{self.mode}-{n}x{c}x{h}x{w}-{self.dtype}-k{self.k}"


@dataclass
class Prepared:
    """A case ready to time: ``fn()`` does one call (no synchronization inside)."""

    fn: Callable[[], object]
    compile_s: float = 0.0
    peak_mem_mb: Optional[float] = None
    notes: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Availability
# ------------------------------------------------------------------------------------------------

def eager_twin(provider: str) -> str:
    """The provider a compiled one is the ``torch.compile`` of (``triton_optimized_compile`` ->
    ``triton_optimized``): the compiled provider carries its parity, checked eagerly."""
    return provider.removesuffix("_compile")


def backend_of(provider: str) -> str:
    """The convnext_fast backend one of our providers runs (``triton_compile`` -> ``triton``,
    ``cpu_optimized`` -> ``cpu``)."""
    return eager_twin(provider).removesuffix("_optimized")


def provider_unavailable(provider: str, device: torch.device) -> str:
    """'' when ``provider`` can be timed on ``device``, else the reason it cannot."""
    if provider in ("torch", "torch_compile"):
        return ""
    if provider in ANCHORS:
        from .deps import INSTALL_HINT, missing

        return f"torchvision is not installed ({INSTALL_HINT})" if missing("torchvision") else ""
    if provider not in OURS:
        return f"unknown provider {provider!r}"
    provider = backend_of(provider)
    if provider == "triton" and device.type != "cuda":
        return "triton is benchmarked on CUDA only (the CPU interpreter is for tests, not timing)"
    try:
        from convnext_fast.backend import available_backends
    except Exception as exc:  # noqa: BLE001
        return f"convnext_fast.backend does not import: {exc}"
    reason = available_backends(device.type).get(provider, f"unknown backend {provider}")
    return reason


def _mlp_backend_reason(provider: str, device: torch.device) -> str:
    """'' when our ``provider``'s backend has a pointwise_mlp kernel for ``device``, else the library's
    reason (asked through the public dispatch, so the benchmark never second-guesses it)."""
    import convnext_fast
    from convnext_fast.backend import BackendUnavailableError, resolve_passes

    try:
        with convnext_fast.use_backend(backend_of(provider)):
            resolve_passes("pointwise_mlp", device)
    except BackendUnavailableError as exc:
        return str(exc)
    return ""


def provider_skip_reason(provider: str, case: Case, device: Optional[torch.device] = None) -> str:
    """'' when ``provider`` measures ``case`` at all, else why not (a fact of the provider, not of
    this machine: optimized models do inference only, the anchor is a whole model, ...). With
    ``device``, also whether our backend has a kernel for the MLP there."""
    if provider in OPTIMIZED and (case.op != "model" or case.mode != "infer"):
        return "optimize_for_inference makes an inference-only convnext_tiny: measured for model inference only"
    if provider in ANCHORS:
        if case.op != "model":
            return "the resnet50 anchor is measured in the convnext_tiny table only"
        if case.group == "sweep":
            return "the resnet50 anchor has no depthwise kernel size to sweep"
    if provider == "triton_compile" and case.op not in ("block", "model"):
        return f"{provider} is measured for block and model only (an op alone is one opaque custom op)"
    if device is not None and case.op == "mlp" and provider in OURS and not provider_unavailable(provider, device):
        return _mlp_backend_reason(provider, device)
    return ""


def _require(provider: str, device: torch.device, case: Optional[Case] = None) -> None:
    reason = provider_unavailable(provider, device) or (provider_skip_reason(provider, case, device) if case else "")
    if reason:
        raise Skip(reason)


@contextlib.contextmanager
def _backend_errors_skip():
    """A backend asked for by name that cannot run an op inside a module (``cuda`` has no MLP
    kernel, and a ConvNeXt block runs its MLP through one) raises BackendUnavailableError: that
    provider does not measure the case; the message says why."""
    from convnext_fast.backend import BackendUnavailableError

    try:
        yield
    except BackendUnavailableError as exc:
        raise Skip(str(exc)) from exc


def _set_compile_limits() -> None:
    """Each case compiles its own shapes; raise Dynamo's recompile limit so none falls back to eager."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 1024))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4096)


def _compile(fn: Any, compile_mode: str) -> Any:
    _set_compile_limits()
    return torch.compile(fn, mode=None if compile_mode == "default" else compile_mode, dynamic=False)


@contextlib.contextmanager
def _backend(provider: str):
    if provider in OURS:
        import convnext_fast

        with convnext_fast.use_backend(backend_of(provider)):
            yield
    else:
        yield


# ------------------------------------------------------------------------------------------------
# Op definitions
# ------------------------------------------------------------------------------------------------

def _eager_dwconv(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])


def _eager_ln(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # timm's LayerNorm2d: permute to NHWC (a free view of a channels_last tensor), F.layer_norm, back.
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, LN_EPS).permute(0, 3, 1, 2)


def _eager_dwconv_ln(x: Tensor, w: Tensor, b: Tensor, lw: Tensor, lb: Tensor) -> Tensor:
    return _eager_ln(_eager_dwconv(x, w, b), lw, lb)


def _eager_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, gamma: Tensor, shortcut: Tensor) -> Tensor:
    # timm's ConvNeXtBlock after its norm (conv_mlp=False): Mlp on the NHWC view (a free view of a
    # channels_last tensor; fc1, exact GELU, fc2), permute back, layer scale, residual. The 4C-wide
    # hidden activation goes through memory between the GEMMs: what a fused kernel avoids.
    y = F.linear(F.gelu(F.linear(x.permute(0, 2, 3, 1), w1, b1)), w2, b2).permute(0, 3, 1, 2)
    return y.mul(gamma.reshape(1, -1, 1, 1)) + shortcut


def _ours(op: str) -> Callable[..., Tensor]:
    import convnext_fast

    return {"dwconv": convnext_fast.depthwise_conv2d,
            "layer_norm": lambda x, w, b: convnext_fast.layer_norm_2d(x, w, b, LN_EPS),
            "dwconv_ln": lambda x, w, b, lw, lb: convnext_fast.dwconv_layer_norm(x, w, b, lw, lb, LN_EPS),
            "mlp": lambda x, w1, b1, w2, b2, g, s: convnext_fast.pointwise_mlp(x, w1, b1, w2, b2, gamma=g,
                                                                               shortcut=s)}[op]


def _reference(op: str) -> Callable[..., Tensor]:
    from convnext_fast import reference

    return {"dwconv": reference.depthwise_conv2d,
            "layer_norm": lambda x, w, b: reference.layer_norm_2d(x, w, b, LN_EPS),
            "dwconv_ln": lambda x, w, b, lw, lb: reference.dwconv_layer_norm(x, w, b, lw, lb, LN_EPS),
            "mlp": lambda x, w1, b1, w2, b2, g, s: reference.pointwise_mlp(x, w1, b1, w2, b2, gamma=g,
                                                                           shortcut=s)}[op]


_EAGER = {"dwconv": _eager_dwconv, "layer_norm": _eager_ln, "dwconv_ln": _eager_dwconv_ln, "mlp": _eager_mlp}
# Gradient names in the parity records (ops not listed: grad_0, grad_1, ... in argument order).
_ARG_NAMES = {"mlp": ("x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "gamma", "shortcut")}


def _op_inputs(case: Case, device: torch.device, batch: Optional[int] = None, seed: int = 0) -> list[Tensor]:
    """x (channels_last) and the op's parameters, drawn fresh (never zeros)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, c, h, w = case.shape
    n = n if batch is None else batch
    dt = dtype_of(case.dtype)

    def rnd(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dt)

    x = rnd(n, c, h, w).contiguous(memory_format=torch.channels_last)
    if case.op == "mlp":
        # fan-in scaled weights keep the hidden activation O(1); layer scale around 1, not its 1e-6
        # init, which would hide the MLP's errors under the residual
        hd = MLP_RATIO * c
        return [x, rnd(hd, c, scale=max(c, 1) ** -0.5), rnd(hd, scale=0.1), rnd(c, hd, scale=max(hd, 1) ** -0.5),
                rnd(c, scale=0.1), rnd(c, scale=0.5, shift=1.0),
                rnd(n, c, h, w).contiguous(memory_format=torch.channels_last)]
    k = case.k
    dw_w, dw_b = rnd(c, 1, k, k, scale=1.0 / k), rnd(c, scale=0.1)
    ln_w, ln_b = rnd(c, scale=0.1, shift=1.0), rnd(c, scale=0.1)
    if case.op == "dwconv":
        return [x, dw_w, dw_b]
    if case.op == "layer_norm":
        return [x, ln_w, ln_b]
    return [x, dw_w, dw_b, ln_w, ln_b]


def _op_callable(case: Case, provider: str, compile_mode: str) -> Callable[..., Tensor]:
    if provider == "torch":
        return _EAGER[case.op]
    if provider == "torch_compile":
        return _compile(_EAGER[case.op], compile_mode)
    if provider in COMPILED or provider in OPTIMIZED or provider in ANCHORS:
        raise Skip(provider_skip_reason(provider, case) or f"{provider} does not measure {case.op}")
    fn = _ours(case.op)

    def run(*args: Tensor) -> Tensor:
        with _backend(provider):
            return fn(*args)

    return run


# ------------------------------------------------------------------------------------------------
# Block and model definitions
# ------------------------------------------------------------------------------------------------

class _EagerBlock(nn.Module):
    """timm's ConvNeXtBlock forward (used only when timm is not installed)."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return y.mul(self.gamma.reshape(1, -1, 1, 1)) + x


def _timm_block(dim: int, k: int) -> nn.Module:
    try:
        convnext = require("timm.models.convnext", "the ConvNeXt block baseline")
    except MissingDependency:  # the same computation written out (the report notes that timm is missing)
        return _EagerBlock(dim, k)
    return convnext.ConvNeXtBlock(dim, kernel_size=k, ls_init_value=1e-6, conv_mlp=False)


def _ours_module(name: str) -> Any:
    """convnext_fast.<name>, else convnext_fast.models.<name>; Skip if neither exists yet."""
    import convnext_fast

    if hasattr(convnext_fast, name):
        return getattr(convnext_fast, name)
    try:
        models = importlib.import_module("convnext_fast.models")
    except Exception as exc:  # noqa: BLE001
        raise Skip(f"convnext_fast.models does not import: {type(exc).__name__}: {exc}") from exc
    if not hasattr(models, name):
        raise Skip(f"convnext_fast.models has no {name} yet")
    return getattr(models, name)


def _randomize_(module: nn.Module, seed: int) -> None:
    """Every parameter random, layer scale included (its 1e-6 init would hide errors in the block)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() <= 1:
                base = 1.0 if ("norm" in name and name.endswith("weight")) or "gamma" in name else 0.0
                scale = 0.5 if "gamma" in name else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * scale + base)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` the parameters of ``src``: by state dict when the keys agree, else in order of
    definition when the shapes agree (block layouts differ in names, not in order), else via
    ``convnext_fast.load_weights`` (models)."""
    sd = src.state_dict()
    try:
        dst.load_state_dict(sd, strict=True)
        return
    except Exception:  # noqa: BLE001 - try the next way
        pass
    try:
        import convnext_fast

        if hasattr(convnext_fast, "load_weights"):
            convnext_fast.load_weights(dst, sd)
            return
    except Exception:  # noqa: BLE001
        pass
    sp, dp = list(src.parameters()), list(dst.parameters())
    if len(sp) != len(dp) or any(a.numel() != b.numel() for a, b in zip(sp, dp)):
        raise Skip("cannot map the reference module's parameters onto ours (different layouts)")
    with torch.no_grad():
        for a, b in zip(sp, dp):
            b.copy_(a.reshape(b.shape))


def _timm_convnext_tiny(k: int) -> nn.Module:
    try:
        convnext = require("timm.models.convnext", "the convnext_tiny baseline")
    except MissingDependency as exc:
        raise Skip(str(exc)) from exc
    return convnext.ConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), kernel_sizes=k)


def _ours_convnext_tiny(k: int) -> nn.Module:
    factory = _ours_module("convnext_tiny")
    return factory(kernel_size=k) if k != 7 else factory()


def _resnet50() -> nn.Module:
    try:
        models = require("torchvision.models", "the resnet50 anchor")
    except MissingDependency as exc:
        raise Skip(str(exc)) from exc
    return models.resnet50()  # random weights: nothing is downloaded, the speed is the same


def _optimized(model: nn.Module, dtype: torch.dtype, backend: str) -> nn.Module:
    """``convnext_fast.optimize_for_inference`` of ``model`` (channels_last first, as it will run),
    made under the backend it will run with (which layers it folds depends on it)."""
    import convnext_fast

    if not hasattr(convnext_fast, "optimize_for_inference"):
        raise Skip("convnext_fast has no optimize_for_inference yet")
    with convnext_fast.use_backend(backend):
        return convnext_fast.optimize_for_inference(model.to(memory_format=torch.channels_last), dtype=dtype)


def _modules(case: Case, provider: str, device: torch.device, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(the reference module in float32 with random parameters, the provider's module sharing them);
    the resnet50 anchor has no reference: (it, it)."""
    c, k = case.shape[1], case.k
    if provider in ANCHORS:
        anchor = _resnet50().to(device)
        return anchor, anchor
    if case.op == "block":
        ref = _timm_block(c, k)
    else:
        ref = _timm_convnext_tiny(k)
    _randomize_(ref, seed)
    ref = ref.to(device)
    if provider in ("torch", "torch_compile"):
        return ref, ref
    if case.op == "block":
        ours = _ours_module("ConvNeXtBlock")(c, kernel_size=k)
    else:
        ours = _ours_convnext_tiny(k)
    ours = ours.to(device)
    _copy_params(ref, ours)
    if provider in OPTIMIZED:
        ours = _optimized(ours, dtype_of(case.dtype), backend_of(provider))
    return ref, ours


# ------------------------------------------------------------------------------------------------
# prepare(): build the timed callable
# ------------------------------------------------------------------------------------------------

def _grad_inputs(args: Sequence[Tensor]) -> list[Tensor]:
    return [a.detach().requires_grad_(True) for a in args]


def prepare(case: Case, provider: str, device: torch.device, *, compile_mode: str = "default",
            warmup_calls: int = 2) -> Prepared:
    """Build inputs, module and callable for ``case`` under ``provider``, warm it up (and compile).

    Raises:
        Skip: the provider cannot run here, or does not measure this case (reason in the message).
    """
    _require(provider, device, case)
    notes: list = []
    if case.op in _EAGER:
        fn_op = _op_callable(case, provider, compile_mode)
        args = _op_inputs(case, device)
        if case.mode == "fwd":
            def fn() -> object:
                return fn_op(*args)
        else:
            gargs = _grad_inputs(args)
            with torch.no_grad():
                gy = torch.randn_like(args[0]).contiguous(memory_format=torch.channels_last)
            if case.mode == "fwdbwd":
                def fn() -> object:
                    return torch.autograd.grad(fn_op(*gargs), gargs, gy)
            elif case.mode == "bwd":
                holder: dict = {}

                def fn() -> object:
                    # backward alone: the graph from one forward, replayed (retain_graph)
                    if "y" not in holder:
                        holder["y"] = fn_op(*gargs)
                    return torch.autograd.grad(holder["y"], gargs, gy, retain_graph=True)
            else:
                raise ValueError(f"{case.op} has no mode {case.mode!r}")
    elif case.op in ("block", "model"):
        fn = _module_fn(case, provider, device, compile_mode, notes)
    else:
        raise ValueError(f"unknown op {case.op!r}")

    t0 = time.perf_counter()
    with _backend_errors_skip():
        for _ in range(max(1, warmup_calls)):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    peak = None
    if case.op == "model" and case.mode == "train" and device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return Prepared(fn=fn, compile_s=compile_s, peak_mem_mb=peak, notes=notes)


def _module_fn(case: Case, provider: str, device: torch.device, compile_mode: str, notes: list) -> Callable:
    dt = dtype_of(case.dtype)
    ref, mod = _modules(case, provider, device)
    if case.op == "block":
        # Blocks run in the dtype itself (parameters cast once), as a module inside an AMP model sees it.
        mod = mod.to(dt)
        x = torch.randn(case.shape, device=device, dtype=dt).contiguous(memory_format=torch.channels_last)
        if provider in COMPILED:
            mod = _compile(mod, compile_mode)
        if case.mode == "fwd":
            mod.eval()

            def fn() -> object:
                with torch.no_grad(), _backend(provider):
                    return mod(x)
            return fn
        xg = x.detach().requires_grad_(True)
        params = [p for p in mod.parameters()]
        with torch.no_grad():
            gy = torch.randn_like(x).contiguous(memory_format=torch.channels_last)

        def fn() -> object:
            with _backend(provider):
                return torch.autograd.grad(mod(xg), [xg, *params], gy)
        return fn

    # Full model: float32 parameters, channels_last, autocast to the case dtype (timm's AMP recipe).
    # An optimized model holds its folded weights in the case dtype and runs in it without autocast
    # (its stem casts the same float32 input).
    mod = mod.to(memory_format=torch.channels_last)
    n = case.shape[0]
    x = torch.randn(case.shape, device=device).contiguous(memory_format=torch.channels_last)
    amp = dt != torch.float32 and provider not in OPTIMIZED
    if provider in OPTIMIZED:
        notes.append(f"convnext_fast.optimize_for_inference(model, dtype={case.dtype}): folded weights, "
                     "no autocast")
    if provider in ANCHORS:
        notes.append(f"anchor: torchvision resnet50 (channels_last{' + autocast' if amp else ''}), not a ConvNeXt; "
                     "reported, not a target")
    if provider in COMPILED:
        mod = _compile(mod, compile_mode)
    autocast = (lambda: torch.autocast(device.type, dtype=dt)) if amp else contextlib.nullcontext
    if case.mode == "infer":
        mod.eval()

        def fn() -> object:
            with torch.no_grad(), autocast(), _backend(provider):
                return mod(x)
        return fn
    mod.train()
    labels = torch.randint(0, 1000, (n,), device=device)
    opt = torch.optim.SGD(mod.parameters(), lr=1e-4, momentum=0.9)
    notes.append("train step = forward + cross-entropy + backward + SGD(momentum) step")

    def fn() -> object:
        with _backend(provider):
            with autocast():
                out = mod(x)
            loss = F.cross_entropy(out.float(), labels)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return fn


# ------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------

def check_parity(case: Case, provider: str, device: torch.device, *, batch: int = 2, seed: int = 1) -> dict:
    """Run ``provider`` and eager PyTorch on the same random inputs (batch ``batch``) against a
    float64 reference: forward output and, for the ops in gradient modes, every gradient (block and
    model: the forward output, against the module in float64 with the same parameters).

    An optimized model runs in the dtype itself (no autocast): PyTorch's own error for it is timm's
    model cast to that dtype. The resnet50 anchor has no parity (it is not a ConvNeXt).

    Returns a dict: passed, outputs {name: :func:`convnext_fast.parity.compare`'s numbers}, error.
    Raises Skip when the provider cannot run here or does not measure the case. Never raises for a
    wrong answer.
    """
    _require(provider, device, case)
    if provider in ANCHORS or provider in ("torch", "torch_compile"):
        raise Skip(f"{provider} is a baseline: parity is checked for our providers")
    dt = case.dtype
    small = Case(case.op, case.mode, (batch,) + tuple(case.shape[1:]), dt, case.k, case.group)
    grads = case.mode in ("fwdbwd", "bwd", "train") and case.op != "model"
    result: dict = {"op": case.op, "mode": case.mode, "shape": list(small.shape), "dtype": dt, "k": case.k,
                    "provider": provider, "passed": False, "outputs": {}, "error": None}

    def run(fn: Callable[..., Tensor], args: list[Tensor], gy: Optional[Tensor], ctx: Callable) -> list[Tensor]:
        args = [a.detach().requires_grad_(grads) for a in args]
        with ctx():
            y = fn(*args)
        outs = [y.float() if y.dtype != torch.float64 else y]
        if grads:
            outs += list(torch.autograd.grad(y, args, gy.to(y.dtype)))
        return outs

    try:
        if case.op in _EAGER:
            args = _op_inputs(small, device, seed=seed)
            gy = torch.randn(small.shape, device=device, dtype=torch.float64) if grads else None
            ref = run(_reference(case.op), [a.double() for a in args], gy, contextlib.nullcontext)
            low = run(_EAGER[case.op], args, gy, contextlib.nullcontext)
            with _backend_errors_skip():
                ours = run(_ours(case.op), args, gy, lambda: _backend(provider))
            arg_names = _ARG_NAMES.get(case.op, [str(i) for i in range(len(args))])
            names = ["y"] + [f"grad_{a}" for a in arg_names] if grads else ["y"]
        else:
            ref_mod, ours_mod = _modules(small, provider, device, seed=seed)
            x = torch.randn(small.shape, device=device, dtype=torch.float64)
            x = x.contiguous(memory_format=torch.channels_last)
            ref_mod.eval()
            ours_mod.eval()
            lowdt = dtype_of(dt)
            with torch.no_grad():
                ref = [copy.deepcopy(ref_mod).double()(x)]
                if case.op == "block":
                    low = [copy.deepcopy(ref_mod).to(lowdt)(x.to(lowdt)).float()]
                    with _backend(provider), _backend_errors_skip():
                        ours = [copy.deepcopy(ours_mod).to(lowdt)(x.to(lowdt)).float()]
                elif provider in OPTIMIZED:
                    low = [copy.deepcopy(ref_mod).to(lowdt)(x.to(lowdt)).float()]
                    with _backend(provider), _backend_errors_skip():
                        ours = [ours_mod(x.float()).float()]
                else:
                    amp = (lambda: torch.autocast(device.type, dtype=lowdt)) if lowdt != torch.float32 \
                        else contextlib.nullcontext
                    with amp():
                        low = [ref_mod(x.float()).float()]
                    with amp(), _backend(provider), _backend_errors_skip():
                        ours = [ours_mod(x.float()).float()]
            names = ["y"]
        verdicts = {name: parity.compare(o, lo, r, dt) for name, o, lo, r in zip(names, ours, low, ref)}
        result["outputs"] = {name: {k: v for k, v in verdict.items() if k != "passed"}
                             for name, verdict in verdicts.items()}
        result["passed"] = all(verdict["passed"] for verdict in verdicts.values())
    except Skip:
        raise
    except Exception as exc:  # noqa: BLE001 - a crash is a parity failure, recorded, not raised
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
    return result


# ------------------------------------------------------------------------------------------------
# The standard set
# ------------------------------------------------------------------------------------------------

def standard_cases(device_type: str, *, quick: bool = False, sweep_k: Sequence[int] = SWEEP_K,
                   stages: Optional[Sequence[int]] = None) -> list[Case]:
    """The report's cases, most important first (so a time budget cuts the least important).

    GPU: ops (the MLP half among them) and blocks at batch 128, model at batch 256, bf16 first (the
    targets' dtype), then the model's batch-1 latency (group ``latency``), the kernel-size sweep,
    then fp16/fp32. CPU: fp32, batch 8 (quick: 2), model at batch 2 (quick: 1, inference only),
    forward-only sweep.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``.
        quick: the reduced set (GPU: bf16 only, stages 1 and 3; CPU: smaller batches).
        sweep_k: the kernel sizes of the sweep.
        stages: ConvNeXt-T stage numbers (1-4) of the op and block cases, replacing the default
            choice (``--stages``); the model and the sweep are not affected.

    Raises:
        ValueError: a stage number outside 1-4.
    """
    gpu = device_type == "cuda"
    if gpu:
        op_batch, model_batch = 128, 256
        dtypes = ("bfloat16",) if quick else ("bfloat16", "float16", "float32")
        chosen = STAGES if not quick else (STAGES[0], STAGES[2])
    else:
        op_batch, model_batch = (2, 1) if quick else (8, 2)
        dtypes = ("float32",)
        chosen = STAGES
    if stages is not None:
        bad = [s for s in stages if not (isinstance(s, int) and 1 <= s <= len(STAGES))]
        if bad or not stages:
            raise ValueError(f"stages are ConvNeXt-T stage numbers 1-{len(STAGES)}, got {list(stages)}")
        chosen = tuple(STAGES[s - 1] for s in sorted(set(stages)))
    first, rest = dtypes[0], dtypes[1:]
    model_dtype = "bfloat16" if gpu else "float32"

    def ops_for(dtype: str) -> list[Case]:
        out = []
        order = [("dwconv", "fwd"), ("dwconv_ln", "fwd"), ("mlp", "fwd"), ("mlp", "fwdbwd"), ("dwconv_ln", "fwdbwd"),
                 ("dwconv", "fwdbwd"), ("layer_norm", "fwd"), ("layer_norm", "bwd"), ("block", "fwd"),
                 ("block", "fwdbwd")]
        for op, mode in order:
            for chw in chosen:
                out.append(Case(op, mode, (op_batch,) + chw, dtype))
        return out

    cases = ops_for(first)
    cases.append(Case("model", "infer", (model_batch, 3, 224, 224), model_dtype))
    if gpu or not quick:
        cases.append(Case("model", "train", (model_batch, 3, 224, 224), model_dtype))
    if gpu:
        # one image at a time: what serving sees (reported; no target reads it)
        cases.append(Case("model", "infer", (1, 3, 224, 224), model_dtype, 7, "latency"))
    ks = [k for k in sweep_k if k != 7] if not quick else [k for k in sweep_k if k in (3, 13, 31)]
    sweep_shape = (op_batch,) + STAGES[0]
    # On CPU the sweep is forward-only: PyTorch's CPU depthwise backward at K = 31 takes seconds a call.
    sweep_ops = (("dwconv", "fwd"), ("dwconv", "fwdbwd"), ("block", "fwdbwd")) if gpu else \
        (("dwconv", "fwd"), ("block", "fwd"))
    for op, mode in sweep_ops:
        cases += [Case(op, mode, sweep_shape, first, k, "sweep") for k in ks]
    if gpu or not quick:
        cases += [Case("model", "infer", (model_batch, 3, 224, 224), model_dtype, k, "sweep") for k in ks]
    for dtype in rest:
        cases += ops_for(dtype)
    return cases
