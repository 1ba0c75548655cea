// CPU kernel of the fused pointwise MLP of a ConvNeXt block (cpu_mlp.cpp), on token rows:
//
//   h = x @ w1.T + b1 ; a = GELU_erf(h) ; out = shortcut + s[row / rows_per_sample] * gamma * (a @ w2.T + b2)
//
// Unlike cpu_kernels.h this API takes ATen tensors: the kernel calls ATen's GEMMs (oneDNN's brgemm
// micro-kernel through at::native::cpublas, or at::addmm on tile views) and allocates its outputs.
//
// x (M, C) and shortcut (M, C): 2-D with unit column stride (rows may be strided); w1 (Hd, C) and
// w2 (C, Hd) contiguous; b1 (Hd,), b2 (C,), gamma (C,) contiguous; all of x's dtype (float32 or
// bfloat16; other dtypes raise NotImplementedError). sample_scale: float32 (N,) with
// N * rows_per_sample == M. Every optional term is skipped when absent. Shapes, dtypes, devices
// and strides are checked here (TORCH_CHECK, the numbers named).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace convnext_fast_cpu {

// Returns (out (M, C), h (M, Hd) pre-activation when save_hidden, else None). New tensors.
std::tuple<at::Tensor, c10::optional<at::Tensor>> mlp_forward(
    const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
    const c10::optional<at::Tensor>& b2, const c10::optional<at::Tensor>& gamma,
    const c10::optional<at::Tensor>& shortcut, const c10::optional<at::Tensor>& sample_scale,
    int64_t rows_per_sample, bool save_hidden);

// Inference under autocast, where the residual stream is float32 and the branch bfloat16: out (M, C)
// float32 = shortcut + gamma * z, z the MLP's bfloat16 output (no layer scale, no shortcut), as
// PyTorch's addcmul computes it (one rounding). x and the weights bfloat16; gamma float32 (C,) or
// None; shortcut (M, C) float32 or bfloat16 rows. The same z as mlp_forward's, so the same bits as
// mlp_forward followed by torch.addcmul(shortcut, z, gamma).
at::Tensor mlp_forward_promoted(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                                const c10::optional<at::Tensor>& gamma, const at::Tensor& shortcut);

// Returns (gx, gw1, gb1, gw2, gb2, ggamma), None for an absent optional input. h: the forward's
// pre-activation (M, Hd) or None (recomputed). grad_out (M, C) of x's dtype, any strides.
std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>, at::Tensor, c10::optional<at::Tensor>,
           c10::optional<at::Tensor>>
mlp_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
             const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
             const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& sample_scale,
             int64_t rows_per_sample, const c10::optional<at::Tensor>& h);

// How the bf16 forward computes here: "bf16" (bf16 GEMMs on the CPU's bf16 dot products, AVX512_BF16)
// or "fp32" (inputs widened, the fp32 kernel, outputs rounded to bf16) where the CPU, the
// CONVNEXT_FAST_CPU_ISA choice or oneDNN's ONEDNN_MAX_CPU_ISA leaves no bf16 dot products.
const char* bf16_compute();

}  // namespace convnext_fast_cpu
