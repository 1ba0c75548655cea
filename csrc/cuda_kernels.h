// CUDA kernels of convnext_fast._C: a plain C++ launcher API (no torch headers), so the .cu file
// compiles quickly; ext.cpp checks every precondition, allocates outputs and the workspace, and
// passes the current stream.
//
// Pointers: x, y, gy, gx are dense NHWC (channels_last) tensors of N*H*W*C elements of `dtype`;
// depthwise weights are contiguous (C, 1, K, K); vectors are (C,); mean/rstd are dense (N, H, W) in
// float (double when dtype is F64). `workspace` is device memory of at least the size the matching
// *_workspace_bytes function returns (fp32/fp64 partial sums for the deterministic reductions).
// Every launcher returns the first CUDA error it saw (cudaSuccess otherwise).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace convnext_fast_cuda {

enum class DType { F32, F64, F16, BF16 };

struct Shape {
  int64_t N, H, W, C;
  int64_t K;  // depthwise kernel size (odd, 1..31); unused by the LayerNorm-only launchers
};

size_t dwconv_backward_workspace_bytes(DType dt, Shape s);
size_t layer_norm_backward_workspace_bytes(DType dt, Shape s);
size_t dwconv_ln_backward_workspace_bytes(DType dt, Shape s);

cudaError_t dwconv_forward(DType dt, const void* x, const void* w, const void* b, void* y, Shape s,
                           cudaStream_t stream);
cudaError_t dwconv_backward(DType dt, const void* gy, const void* x, const void* w, void* gx, void* gw, void* gb,
                            void* workspace, Shape s, cudaStream_t stream);
cudaError_t layer_norm_forward(DType dt, const void* x, const void* w, const void* b, double eps, void* y,
                               void* mean, void* rstd, Shape s, cudaStream_t stream);
cudaError_t layer_norm_backward(DType dt, const void* gy, const void* x, const void* w, const void* mean,
                                const void* rstd, void* gx, void* gw, void* gb, void* workspace, Shape s,
                                cudaStream_t stream);
cudaError_t dwconv_ln_forward(DType dt, const void* x, const void* dw_w, const void* dw_b, const void* ln_w,
                              const void* ln_b, double eps, void* y, void* mean, void* rstd, Shape s,
                              cudaStream_t stream);
cudaError_t dwconv_ln_backward(DType dt, const void* gy, const void* x, const void* dw_w, const void* dw_b,
                               const void* ln_w, const void* mean, const void* rstd, void* gx, void* g_dw_w,
                               void* g_dw_b, void* g_ln_w, void* g_ln_b, void* workspace, Shape s,
                               cudaStream_t stream);

}  // namespace convnext_fast_cuda
