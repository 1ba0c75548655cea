// The CPU kernels' GEMMs on oneDNN's linear, and the weights they derive from a model's weights
// (cpu_onednn.cpp): used by the MLP (cpu_mlp.cpp) and the patch convolutions (cpu_patch_linear.cpp).
#pragma once

#include <ATen/ATen.h>

namespace convnext_fast_cpu {

// True when bf16 GEMMs run on bf16 dot-product instructions here (AVX512_BF16, the AVX-512 code
// path, oneDNN not held below its bf16 instruction sets); elsewhere the kernels widen bf16 to fp32.
bool native_bf16_dot();

// An fp32 copy of a (bf16) weight, kept between calls while the weight is unchanged.
at::Tensor widened(const at::Tensor& w);

// float32 GEMMs of the MLP and the patch convolutions take oneDNN's linear below this many rows
// (ConvNeXt-T's late stages at small batches), where the kernels' own row-block brgemm paths have
// too few row blocks to keep the threads busy; from here on those paths (the MLP's hidden tile never
// leaves L2) are as fast or faster (docs/performance.md, "Kernel constants").
constexpr int64_t kOneDnnMaxRowsF32 = 1024;

// Whether this PyTorch has oneDNN's linear ops (mkldnn::_linear_pointwise and its weight reorder).
bool onednn_linear_available();

// The (out, in) weight in oneDNN's blocked layout, kept between calls while the weight is
// unchanged (an inference tensor, which has no version to check, is used as stored).
at::Tensor onednn_weight(const at::Tensor& w);

// y = x @ w.T + b, then GELU (exact) when gelu is set; x (M, in) contiguous, w from onednn_weight.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, bool gelu);

// y = x @ w.T + b + other, other (M, out) contiguous.
at::Tensor onednn_linear_add(const at::Tensor& x, const at::Tensor& other, const at::Tensor& w,
                             const c10::optional<at::Tensor>& b);

}  // namespace convnext_fast_cpu
