"""Roofline arithmetic: the fewest bytes each benchmark case must move and the operations it must do.

Pure functions (no timing, no device): the report and the pytest suite both use them, and
``tests/test_bench_report.py`` checks them by hand-computed numbers.

Conventions:

* bytes: every input read once + every output written once, at the dtype's element size. The
  hidden activations of the MLP (in the ``mlp`` op and the block), the LayerNorm statistics and the
  permute copies eager PyTorch makes are *not* counted: they are what a fused implementation
  avoids, so counting them would flatter the slow path.
* flops: multiply-adds count 2. Depthwise conv 2*K^2 per output element; a Linear 2*in*out per row;
  elementwise work (LayerNorm, GELU, residual) is counted roughly.
* Two kinds of flops. The Linear layers and the stem/downsampling convolutions run on tensor
  cores (the matmul rate of the dtype). The depthwise taps, LayerNorm and GELU have no tensor-core
  formulation in any provider measured here: they are fp32 FMAs on the CUDA cores (the kernels
  accumulate in fp32 whatever the input dtype), so they are held to the fp32 FMA rate, measured as
  an fp32 matrix product with TF32 off. That matters: a bf16 7x7 depthwise conv does 98 flops per
  output for 4 bytes moved (x in, y out), and on an H100 its fp32 FMAs alone take longer than
  moving its bytes.
* floor time = max(bytes / copy bandwidth, tensor-core flops / matmul rate, fp32 flops / fp32 FMA
  rate) (a lower bound: the three can overlap); % of roofline = floor / measured. The ceilings are
  measured on the machine itself (a device-to-device copy counting read + write; large matrix
  products), never taken from a datasheet. On a GPU only: a CPU has no measurable fp32 FMA
  ceiling from Python (a matrix product is not one) and its caches hold the benchmark's tensors,
  so a CPU run reports achieved GB/s and TFLOP/s without a roofline.
* No percentage above 100% is ever reported: it would mean a ceiling is wrong, not a fast kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = [
    "DTYPE_BYTES",
    "Ceilings",
    "Work",
    "block_work",
    "convnext_dwconv_flops_per_image",
    "convnext_flops_per_image",
    "dwconv_ln_work",
    "dwconv_work",
    "layer_norm_work",
    "mlp_work",
    "model_work",
    "op_work",
    "resnet50_work",
    "roofline",
    "checked_pct",
]

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}

# Rough elementwise flop counts per element (they never set the floor; kept so TFLOP/s is not 0).
_LN_FWD_FLOPS = 8   # mean, centred square, scale, shift
_LN_BWD_FLOPS = 12
_GELU_FLOPS = 8


@dataclass(frozen=True)
class Work:
    """Minimum bytes moved through memory and arithmetic operations for one call of a case.

    ``fp32_flops`` is the part of ``flops`` that runs as fp32 FMAs on the CUDA cores (depthwise
    taps, normalization, activation); the rest runs on tensor cores.
    """

    bytes: int
    flops: int
    fp32_flops: int = 0


@dataclass(frozen=True)
class Ceilings:
    """The measured ceilings: copy bandwidth in GB/s (read + write), matmul rate per dtype, and the
    fp32 FMA rate of the CUDA cores (``fp32_fma_tflops``; None: the float32 matmul rate, which is
    the same thing when TF32 was off)."""

    copy_gbps: float
    matmul_tflops: dict  # dtype name -> TFLOP/s
    fp32_fma_tflops: Optional[float] = None

    def fp32_rate(self) -> Optional[float]:
        """TFLOP/s of fp32 FMAs without tensor cores."""
        return self.fp32_fma_tflops or self.matmul_tflops.get("float32")

    def tflops_for(self, dtype: str) -> Optional[float]:
        """The matmul rate for ``dtype``; fp16 falls back to bf16 (same tensor-core rate on H100)."""
        if dtype in self.matmul_tflops:
            return self.matmul_tflops[dtype]
        if dtype == "float16" and "bfloat16" in self.matmul_tflops:
            return self.matmul_tflops["bfloat16"]
        return max(self.matmul_tflops.values()) if self.matmul_tflops else None


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def dwconv_work(shape: Sequence[int], k: int, dtype: str, mode: str) -> Work:
    """Depthwise KxK conv with bias on (N, C, H, W).

    fwd: read x, w, b; write y.  fwdbwd: fwd + read gy, x, w; write gx, gw, gb.
    """
    e, c = DTYPE_BYTES[dtype], int(shape[1])
    act, params = _numel(shape), c * k * k + c
    fwd_b, fwd_f = (2 * act + params) * e, 2 * act * k * k
    if mode == "fwd":
        return Work(fwd_b, fwd_f, fwd_f)
    if mode == "fwdbwd":
        # backward: grad-input is a (flipped) depthwise conv, grad-weight a K^2 reduction: 2x fwd flops
        return Work(fwd_b + (3 * act + 2 * params) * e, 3 * fwd_f, 3 * fwd_f)
    raise ValueError(f"dwconv has modes fwd/fwdbwd, got {mode!r}")


def layer_norm_work(shape: Sequence[int], dtype: str, mode: str) -> Work:
    """Channels-first LayerNorm on (N, C, H, W).

    fwd: read x, w, b; write y.  bwd (backward alone): read gy, x, w (+ fp32 mean/rstd); write gx, gw, gb.
    """
    e, c = DTYPE_BYTES[dtype], int(shape[1])
    act = _numel(shape)
    rows = act // c
    if mode == "fwd":
        return Work((2 * act + 2 * c) * e, _LN_FWD_FLOPS * act, _LN_FWD_FLOPS * act)
    if mode == "bwd":
        return Work((3 * act + 3 * c) * e + 2 * rows * 4, _LN_BWD_FLOPS * act, _LN_BWD_FLOPS * act)
    if mode == "fwdbwd":
        fwd, bwd = layer_norm_work(shape, dtype, "fwd"), layer_norm_work(shape, dtype, "bwd")
        return Work(fwd.bytes + bwd.bytes, fwd.flops + bwd.flops, fwd.fp32_flops + bwd.fp32_flops)
    raise ValueError(f"layer_norm has modes fwd/bwd/fwdbwd, got {mode!r}")


def dwconv_ln_work(shape: Sequence[int], k: int, dtype: str, mode: str) -> Work:
    """Fused depthwise conv + LayerNorm: the intermediate conv output never counts (it need not exist)."""
    e, c = DTYPE_BYTES[dtype], int(shape[1])
    act = _numel(shape)
    params = c * k * k + 3 * c
    fwd_f = 2 * act * k * k + _LN_FWD_FLOPS * act
    fwd_b = (2 * act + params) * e
    if mode == "fwd":
        return Work(fwd_b, fwd_f, fwd_f)
    if mode == "fwdbwd":
        # backward recomputes the conv (1x) then grad-input and grad-weight (2x)
        flops = fwd_f + 3 * 2 * act * k * k + _LN_BWD_FLOPS * act
        return Work(fwd_b + (3 * act + 2 * params) * e, flops, flops)
    raise ValueError(f"dwconv_ln has modes fwd/fwdbwd, got {mode!r}")


def mlp_work(shape: Sequence[int], dtype: str, mode: str, mlp_ratio: float = 4.0) -> Work:
    """The MLP half of a ConvNeXt block on (N, C, H, W): fc1 (C -> Hd), exact GELU, fc2 (Hd -> C),
    layer scale, residual; M = N*H*W token rows, Hd = ``mlp_ratio`` * C.

    flops: the two GEMMs, 4*M*C*Hd (tensor cores), plus GELU, layer scale and residual (fp32, CUDA
    cores). Bytes: x and the shortcut read, the output written, the parameters (fc1, fc2, their
    biases, gamma) once. The (M, Hd) hidden activation is NOT counted: a fused kernel keeps it on
    chip, which is the point of fusing (an unfused pipeline moves it 3-5 times). So stages 1-2 sit
    near the ridge (bf16, H100: the bytes and the GEMMs take about as long) and stages 3-4 are
    tensor-core bound; :func:`roofline` names the bound per case.

    fwdbwd: the backward does twice the forward's GEMM flops (grad input and grad weight of each
    Linear) and recomputes GELU; it reads gy and x again and writes gx, reads the parameters again
    and writes their gradients. The shortcut's gradient is gy itself: nothing more to write.
    """
    e, c = DTYPE_BYTES[dtype], int(shape[1])
    act = _numel(shape)
    rows = act // c if c else 0
    hidden = int(c * mlp_ratio)
    params = c * hidden + hidden + hidden * c + c + c
    gemm_f = 2 * 2 * rows * c * hidden
    elem_f = _GELU_FLOPS * rows * hidden + 2 * act
    fwd_b = (3 * act + params) * e
    if mode == "fwd":
        return Work(fwd_b, gemm_f + elem_f, elem_f)
    if mode == "fwdbwd":
        return Work(fwd_b + (3 * act + 2 * params) * e, 3 * (gemm_f + elem_f), 3 * elem_f)
    raise ValueError(f"mlp has modes fwd/fwdbwd, got {mode!r}")


def block_work(shape: Sequence[int], k: int, dtype: str, mode: str, mlp_ratio: float = 4.0) -> Work:
    """One ConvNeXt block (dwconv, LN, Linear C->4C, GELU, Linear 4C->C, layer scale, residual).

    Bytes: x in, y out, parameters once (fwdbwd: + gy in, gx out, parameters read again and their
    gradients written). The 4C-wide hidden activation is not counted (see module docstring).
    """
    e, c = DTYPE_BYTES[dtype], int(shape[1])
    act = _numel(shape)
    rows = act // c
    hidden = int(c * mlp_ratio)
    params = c * k * k + c + 2 * c + (c * hidden + hidden) + (hidden * c + c) + c
    mlp_f = 2 * rows * c * hidden * 2
    fwd_f = 2 * act * k * k + _LN_FWD_FLOPS * act + mlp_f + _GELU_FLOPS * rows * hidden + 2 * act
    fwd_b = (2 * act + params) * e
    if mode == "fwd":
        return Work(fwd_b, fwd_f, fwd_f - mlp_f)
    if mode == "fwdbwd":
        return Work(fwd_b + (3 * act + 2 * params) * e, 3 * fwd_f, 3 * (fwd_f - mlp_f))
    raise ValueError(f"block has modes fwd/fwdbwd, got {mode!r}")


def convnext_flops_per_image(depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                             kernel_size: int = 7, image_size: int = 224, num_classes: int = 1000) -> int:
    """Forward flops of one image through a ConvNeXt (patchify stem, stages, downsamples, head).

    convnext_tiny at 224 gives about 8.9 GFLOP (the usual "4.5 GMACs").
    """
    hw = image_size // 4
    flops = 2 * hw * hw * dims[0] * 3 * 16  # 4x4 stride-4 stem
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            hw //= 2
            flops += 2 * hw * hw * dim * dims[i - 1] * 4  # 2x2 stride-2 downsample
        per_block = 2 * hw * hw * dim * kernel_size ** 2 + 2 * 2 * hw * hw * dim * 4 * dim
        flops += depth * per_block
    return flops + 2 * dims[-1] * num_classes


def convnext_dwconv_flops_per_image(depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                                    kernel_size: int = 7, image_size: int = 224) -> int:
    """The depthwise-conv part of :func:`convnext_flops_per_image` (fp32 FMAs, no tensor cores)."""
    hw, flops = image_size // 4, 0
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            hw //= 2
        flops += depth * 2 * hw * hw * dim * kernel_size ** 2
    return flops


def model_work(batch: int, dtype: str, mode: str, kernel_size: int = 7, image_size: int = 224,
               n_params: int = 28_589_128) -> Work:
    """convnext_tiny: images in + logits out + parameters (training: + gradients, read twice)."""
    e = DTYPE_BYTES[dtype]
    fwd_f = batch * convnext_flops_per_image(kernel_size=kernel_size, image_size=image_size)
    dw_f = batch * convnext_dwconv_flops_per_image(kernel_size=kernel_size, image_size=image_size)
    io = batch * 3 * image_size * image_size * e + batch * 1000 * e
    if mode == "infer":
        return Work(io + n_params * e, fwd_f, dw_f)
    if mode == "train":
        # fp32 master weights: read (fwd, bwd), gradient written, updated weight written
        return Work(io + 4 * n_params * 4, 3 * fwd_f, 3 * dw_f)
    raise ValueError(f"model has modes infer/train, got {mode!r}")


# torchvision's ResNet-50 at 224x224: 4.09 GMACs per image (its model card's "GFLOPS"), 25,557,032 parameters.
RESNET50_MACS_PER_IMAGE = 4_089_184_256
RESNET50_PARAMS = 25_557_032


def resnet50_work(batch: int, dtype: str, mode: str, image_size: int = 224) -> Work:
    """torchvision's resnet50 (the model table's anchor), counted as :func:`model_work` counts
    convnext_tiny: images in + logits out + parameters; its convolutions run on tensor cores
    (no fp32-FMA part)."""
    e = DTYPE_BYTES[dtype]
    fwd_f = batch * 2 * RESNET50_MACS_PER_IMAGE * (image_size / 224) ** 2
    io = batch * 3 * image_size * image_size * e + batch * 1000 * e
    if mode == "infer":
        return Work(int(io + RESNET50_PARAMS * e), int(fwd_f), 0)
    if mode == "train":
        return Work(int(io + 4 * RESNET50_PARAMS * 4), int(3 * fwd_f), 0)
    raise ValueError(f"model has modes infer/train, got {mode!r}")


def op_work(op: str, shape: Sequence[int], k: int, dtype: str, mode: str) -> Work:
    """Dispatch on the op name used by the benchmark cases."""
    if op == "dwconv":
        return dwconv_work(shape, k, dtype, mode)
    if op == "layer_norm":
        return layer_norm_work(shape, dtype, mode)
    if op == "dwconv_ln":
        return dwconv_ln_work(shape, k, dtype, mode)
    if op == "mlp":
        return mlp_work(shape, dtype, mode)
    if op == "block":
        return block_work(shape, k, dtype, mode)
    if op == "model":
        return model_work(int(shape[0]), dtype, mode, kernel_size=k, image_size=int(shape[2]))
    raise ValueError(f"unknown op {op!r}")


def roofline(work: Work, time_ms: float, ceilings: Optional[Ceilings], dtype: str) -> dict:
    """Achieved GB/s and TFLOP/s, the floor time and the % of roofline (floor / measured).

    A call measured faster than the floor (which only a ceiling measured too low allows) gets no
    percentage: ``pct_roofline`` and ``pct_bandwidth`` stay None and ``ceiling_exceeded`` is True.
    ``bound`` names the ceiling that sets the floor ('memory', 'tensor cores' or 'fp32 FMA');
    ``pct_bandwidth_max`` is the highest % of the bandwidth roofline (``pct_bandwidth``) an
    implementation can reach at all when the floor is set by arithmetic rather than bytes.
    Returns a dict of plain floats (None where a ceiling is unknown), ready for JSON/extra_info.
    """
    seconds = time_ms / 1e3
    out = {
        "bytes": work.bytes,
        "flops": work.flops,
        "gbps": work.bytes / seconds / 1e9 if seconds > 0 else None,
        "tflops": work.flops / seconds / 1e12 if seconds > 0 else None,
        "floor_ms": None,
        "pct_roofline": None,
        "pct_bandwidth": None,
        "pct_bandwidth_max": None,
        "bound": None,
        "ceiling_exceeded": False,
    }
    if ceilings is None or seconds <= 0:
        return out
    mem_ms = work.bytes / (ceilings.copy_gbps * 1e9) * 1e3 if ceilings.copy_gbps else 0.0
    rate = ceilings.tflops_for(dtype)
    fp32_rate = ceilings.fp32_rate() or rate
    mma_ms = (work.flops - work.fp32_flops) / (rate * 1e12) * 1e3 if rate else 0.0
    fp32_ms = work.fp32_flops / (fp32_rate * 1e12) * 1e3 if fp32_rate else 0.0
    floor = max(mem_ms, mma_ms, fp32_ms)
    out["floor_ms"] = floor
    out["pct_bandwidth_max"] = 100.0 * mem_ms / floor if mem_ms > 0 else None
    out["bound"] = "memory" if mem_ms >= max(mma_ms, fp32_ms) else ("fp32 FMA" if fp32_ms >= mma_ms else "tensor cores")
    if floor > time_ms:
        # Faster than the floor: a ceiling was measured too low (or the data sat in a cache the copy
        # did not fit in). Any percentage would say more than 100%, so none is given.
        out["ceiling_exceeded"] = True
        return out
    out["pct_roofline"] = 100.0 * floor / time_ms if floor > 0 else None
    out["pct_bandwidth"] = 100.0 * mem_ms / time_ms if mem_ms > 0 else None
    return out


def checked_pct(row: dict, key: str = "pct_roofline") -> Optional[float]:
    """``row[key]`` when it is a percentage a roofline can give (0-100), else None.

    Result files written before :func:`roofline` refused impossible percentages, and rows of CPU
    runs (whose ceilings are not a roofline, see ``report.measure_ceilings``), may hold values above
    100%: they are read as "no roofline", never printed.
    """
    v = row.get(key)
    if v is None or row.get("ceiling_exceeded") or not (0.0 <= float(v) <= 100.0):
        return None
    return float(v)
