// CPU kernels of convnext_fast._C: depthwise KxK conv, channels-first LayerNorm and the fused
// dwconv + LayerNorm, forward and backward, on NHWC (channels_last) memory.
//
// Plain C++ API (no torch headers here): every pointer is a dense NHWC tensor of the given dtype
// (x, y, gy, gx: N*H*W*C elements, C fastest), weights are contiguous (C, 1, K, K), vectors are (C,),
// mean/rstd are dense (N, H, W) in float (double when dtype is F64). The binding (ext.cpp) checks all
// shapes, dtypes and strides before calling in here.
//
// NaN / Inf depthwise weights: every conv (forward, the fused op's recompute, the input gradient)
// multiplies the zero padding as float64 F.conv2d does (0 * NaN = 0 * Inf = NaN), so an output
// whose window puts a NaN or Inf tap over the padding is NaN.
#pragma once

#include <cstdint>

namespace convnext_fast_cpu {

enum class DType { F32, F64, F16, BF16 };

struct Shape {
  int64_t N, H, W, C;
  int64_t K;  // kernel size (odd); unused by the LayerNorm-only functions
};

void dwconv_forward(DType dt, const void* x, const void* w, const void* b, void* y, Shape s);
void dwconv_backward(DType dt, const void* gy, const void* x, const void* w, void* gx, void* gw, void* gb,
                     Shape s);
void layer_norm_forward(DType dt, const void* x, const void* w, const void* b, double eps, void* y, void* mean,
                        void* rstd, Shape s);
void layer_norm_backward(DType dt, const void* gy, const void* x, const void* w, const void* mean,
                         const void* rstd, void* gx, void* gw, void* gb, Shape s);
void dwconv_ln_forward(DType dt, const void* x, const void* dw_w, const void* dw_b, const void* ln_w,
                       const void* ln_b, double eps, void* y, void* mean, void* rstd, Shape s);
void dwconv_ln_backward(DType dt, const void* gy, const void* x, const void* dw_w, const void* dw_b,
                        const void* ln_w, const void* mean, const void* rstd, void* gx, void* g_dw_w,
                        void* g_dw_b, void* g_ln_w, void* g_ln_b, Shape s);

// The instruction set the fp32 kernels run with here ("avx512", "avx2" or "generic"); chosen once
// from the CPU, overridable with CONVNEXT_FAST_CPU_ISA=generic|avx2|avx512 (lower only).
const char* isa();

}  // namespace convnext_fast_cpu
