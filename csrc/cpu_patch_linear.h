// CPU kernel of a patch convolution with fused LayerNorms (cpu_patch_linear.cpp): ConvNeXt's
// non-overlapping k x k, stride-k convolutions (the stem and the downsampling layers), for
// inference, on NHWC memory:
//
//   u   = x, or LN0(x): each input pixel normalized over its C channels (no affine), when in_eps is given
//   y   = patches(u) @ weight_t + bias    (patch row: the k x k pixels in (kh, kw, c) order)
//   out = y, or LayerNorm over O with out_weight / out_bias / out_eps, when out_weight is given
//
// x: (N, H, W, C) contiguous float32 (other dtypes raise NotImplementedError); weight_t (k*k*C, O)
// contiguous, row (kh*k + kw)*C + c; bias, out_weight, out_bias (O,) contiguous or None; all
// float32. Returns a new (N, H/k, W/k, O) contiguous tensor (trailing rows / columns beyond a
// multiple of k are ignored, as nn.Conv2d does). Shapes, dtypes and devices are checked here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace convnext_fast_cpu {

at::Tensor patch_linear_forward(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                                int64_t k, c10::optional<double> in_eps, const c10::optional<at::Tensor>& out_weight,
                                const c10::optional<at::Tensor>& out_bias, double out_eps);

}  // namespace convnext_fast_cpu
