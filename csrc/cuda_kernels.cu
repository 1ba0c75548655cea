// CUDA kernels of convnext_fast._C (launcher API in cuda_kernels.h). Plain CUDA, no torch headers
// (they would triple the compile time); ext.cpp validates inputs and passes the current stream.
//
// Liu et al., "A ConvNet for the 2020s", CVPR 2022: depthwise 7x7 conv + channels-first LayerNorm.
//
// Memory is NHWC: one pixel's C channels are contiguous, so a thread owning 8 consecutive channels
// loads them with one 16-byte load (fp16/bf16; two for fp32) when C % 8 == 0 and the pointers are
// 16-byte aligned (the VEC path); otherwise element loads with bounds checks. Accumulation is fp32
// (fp64 for fp64 tensors). Indexing mirrors csrc/cpu_kernels.cpp: output pixel (h, w) reads input
// (h + kh - K/2, w + kw - K/2), zero outside the image; the input gradient is the same conv of
// grad_y with the flipped kernel (kh -> K-1-kh, kw -> K-1-kw) and no bias.
//
// NaN and Inf taps: every conv here multiplies the zero padding like the real pixels (what float64
// F.conv2d computes): 0 * NaN and 0 * Inf are NaN, so an output whose window puts a NaN or Inf tap
// over the padding is NaN. The tile kernel gets this from its zero-filled halo; the kernels that
// skip padding taps mark those outputs from per-block tap masks (PadMasks below).
//
// Kernels:
//  * dwconv_tile_kernel   - 7x7 fast path (and any K whose tile fits): a (TH + K-1) x (TW + K-1) x 32
//                           channel input tile with halo in shared memory, loaded with 16-byte vector
//                           loads, so each input element is read from HBM once per tile (halo re-reads
//                           hit L2); thread = 8 channels of one output column, TH output rows.
//  * dwconv_direct_kernel - any K: thread = 8 channels of one output pixel, taps read through L1/L2.
//  * dwconv_wgrad_partial_kernel + reduce_partials_kernel - weight/bias gradient, deterministic:
//                           each block sums a fixed range of rows into its own fp32 partial, then the
//                           partials are added in block order. No atomics.
//  * ln_forward_kernel / ln_backward_input_kernel / ln_param_partial_kernel - LayerNorm over C, one
//                           warp per pixel (coalesced along C), mean/rstd in fp32.
//  * dwconv_ln_fused_kernel - one pass: conv of a strip of pixels (all C channels) into shared
//                           memory, normalized there, written once.
// The fused backward recomputes the conv output from x into the workspace (the forward saved only
// x, mean and rstd), runs the LayerNorm backward in place on it, then the dwconv backward.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda_kernels.h"

namespace convnext_fast_cuda {
namespace {

constexpr int kVec = 8;         // channels per thread
constexpr int kTileCB = 32;     // channels per tile (4 groups of 8)
constexpr int kTileTW = 32;     // output columns per tile
constexpr int kTileTH = 8;      // output rows per tile
constexpr int kTileThreads = (kTileCB / kVec) * kTileTW;  // 128
constexpr int kDirectThreads = 256;
constexpr int kWgradThreads = 256;
constexpr int kWgradCB = 32;    // channels per weight-gradient block: one warp-wide coalesced load
constexpr int kLnThreads = 256; // 8 warps = 8 pixels per block
constexpr int kFusedThreads = 256;
constexpr size_t kMaxPartialBytes = size_t(64) << 20;
constexpr int kMaxRowBlocks = 1024;

// ------------------------------------------------------------------------------------- types

template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

template <class A> __device__ __forceinline__ A to_acc(float v) { return static_cast<A>(v); }
template <class A> __device__ __forceinline__ A to_acc(double v) { return static_cast<A>(v); }
template <class A> __device__ __forceinline__ A to_acc(__half v) { return static_cast<A>(__half2float(v)); }
template <class A> __device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return static_cast<A>(__bfloat162float(v)); }

template <class T> struct Cvt;
template <> struct Cvt<float> { template <class A> __device__ static float from(A v) { return static_cast<float>(v); } };
template <> struct Cvt<double> { template <class A> __device__ static double from(A v) { return static_cast<double>(v); } };
template <> struct Cvt<__half> { template <class A> __device__ static __half from(A v) { return __float2half_rn(static_cast<float>(v)); } };
template <> struct Cvt<__nv_bfloat16> {
  template <class A> __device__ static __nv_bfloat16 from(A v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};

// 8 consecutive elements: VEC = 16-byte loads/stores (aligned, all 8 valid), else element-wise
// with `n` valid elements (the rest read as 0 / not written).
template <bool VEC, class T, class A>
__device__ __forceinline__ void load8(const T* p, int n, A (&o)[kVec]) {
  if (VEC) {
    constexpr int kChunks = kVec * sizeof(T) / 16;
    uint4 raw[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) raw[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
    const T* v = reinterpret_cast<const T*>(raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) o[i] = to_acc<A>(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) o[i] = i < n ? to_acc<A>(p[i]) : A(0);
  }
}

// 8 elements from shared memory (16-byte aligned by construction of the tile).
template <class T, class A>
__device__ __forceinline__ void load8_shared(const T* p, A (&o)[kVec]) {
  constexpr int kChunks = kVec * sizeof(T) / 16;
  uint4 raw[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) raw[i] = reinterpret_cast<const uint4*>(p)[i];
  const T* v = reinterpret_cast<const T*>(raw);
#pragma unroll
  for (int i = 0; i < kVec; ++i) o[i] = to_acc<A>(v[i]);
}

template <bool VEC, class T, class A>
__device__ __forceinline__ void store8(T* p, int n, const A (&v)[kVec]) {
  if (VEC) {
    constexpr int kChunks = kVec * sizeof(T) / 16;
    uint4 raw[kChunks];
    T* t = reinterpret_cast<T*>(raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) t[i] = Cvt<T>::from(v[i]);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) reinterpret_cast<uint4*>(p)[i] = raw[i];
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      if (i < n) p[i] = Cvt<T>::from(v[i]);
  }
}

// Rounded products that the compiler may not contract into an FMA: the LayerNorm backward subtracts
// the mean of gy * w from the same rounded values it summed (else rstd amplifies the residual).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------------------------- dwconv

// Padding products of NaN / Inf taps, for the kernels that skip padding taps. A block builds, once,
// per 8-channel group g: bit kh of rows[g] (bit kw of cols[g]) is set when a channel of the group has
// a NaN or Inf tap in kernel row kh (column kw), as applied (flipped for the input gradient). That is
// one coalesced pass over the C*K*K weights per block (shared-memory atomics only for non-finite
// taps); per output it is two mask tests, and only a group whose non-finite taps lie over the
// padding looks at its weights again. K <= 31, so a kernel row or column is one bit of 32.
template <class Tw, class A>
__device__ void build_pad_masks(const Tw* __restrict__ w, int C, int K, bool flip, unsigned* rows, unsigned* cols) {
  const int groups = (C + kVec - 1) / kVec, KK = K * K;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) rows[g] = cols[g] = 0u;
  __syncthreads();
  const int64_t n = int64_t(C) * KK;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (isfinite(to_acc<A>(w[i]))) continue;
    const int c = int(i / KK), t = int(i % KK);
    const int kh = flip ? K - 1 - t / K : t / K, kw = flip ? K - 1 - t % K : t % K;
    atomicOr(rows + c / kVec, 1u << kh);
    atomicOr(cols + c / kVec, 1u << kw);
  }
  __syncthreads();
}

// Taps k (bits) that put output o of a dimension of length len over the padding: o + k - K/2 < 0 or
// >= len.
__device__ __forceinline__ unsigned pad_taps(int o, int len, int K) {
  const int P = K / 2;
  const int lo = min(K, max(0, P - o)), hi = max(0, min(K, len - o + P));
  return ((1u << lo) - 1u) | (((1u << K) - 1u) & ~((1u << hi) - 1u));
}

// The rare case of add_pad_products, out of line (it would cost registers in the conv loop):
// nan[j] = 0 * w of the first NaN / Inf tap of channel c + j over the padding, else 0.
template <class Tw, class A>
__device__ __noinline__ void pad_products(A* nan, const Tw* __restrict__ w, int c, int nvalid, int K, bool flip,
                                          unsigned prow, unsigned pcol) {
  const int KK = K * K;
  for (int j = 0; j < nvalid; ++j) {
    nan[j] = A(0);
    for (int t = 0; t < KK; ++t) {
      const A v = to_acc<A>(w[int64_t(c + j) * KK + t]);
      const int kh = flip ? K - 1 - t / K : t / K, kw = flip ? K - 1 - t % K : t % K;
      if (!isfinite(v) && (((prow >> kh) | (pcol >> kw)) & 1u)) {
        nan[j] = A(0) * v;
        break;
      }
    }
  }
}

// Adds the padding products of output (oh, ow), channels c .. c + nvalid - 1, to acc: 0 * w of each
// NaN / Inf tap over the padding (NaN), nothing for finite taps. g_rows / g_cols: the group's masks.
template <class Tw, class A>
__device__ __forceinline__ void add_pad_products(A (&acc)[kVec], const Tw* __restrict__ w, int c, int nvalid, int K,
                                                 bool flip, int oh, int ow, int H, int W, unsigned g_rows,
                                                 unsigned g_cols) {
  const unsigned prow = pad_taps(oh, H, K), pcol = pad_taps(ow, W, K);
  if (((g_rows & prow) | (g_cols & pcol)) == 0u) return;
  A nan[kVec];
  pad_products<Tw, A>(nan, w, c, nvalid, K, flip, prow, pcol);
#pragma unroll
  for (int j = 0; j < kVec; ++j)
    if (j < nvalid) acc[j] += nan[j];
}

// Pointers: x (N,H,W,C) of Tin; w (C,K,K) of Tw (the module's weight, flipped on load when FLIP);
// b (C,) of Tw or null; y (N,H,W,C) of Tout. Grid: x = w-tiles * c-tiles * N, y = h-tiles.
// Dynamic shared memory: (TH+K-1)*(TW+K-1)*32 Tin (input tile with halo) + K*K*32 A (weights).
template <class Tin, class Tw, class Tout, class A, int KS, bool VEC>
__global__ void __launch_bounds__(kTileThreads) dwconv_tile_kernel(const Tin* __restrict__ x, const Tw* __restrict__ w,
                                                                   const Tw* __restrict__ b, Tout* __restrict__ y,
                                                                   int N, int H, int W, int C, int Krt, bool flip) {
  const int K = KS > 0 ? KS : Krt;
  const int P = K / 2;
  const int TWp = kTileTW + K - 1, THp = kTileTH + K - 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Tin* tile = reinterpret_cast<Tin*>(smem_raw);
  A* wsm = reinterpret_cast<A*>(smem_raw + ((size_t(THp) * TWp * kTileCB * sizeof(Tin) + 15) / 16) * 16);

  const int tiles_w = (W + kTileTW - 1) / kTileTW, tiles_c = (C + kTileCB - 1) / kTileCB;
  int bx = blockIdx.x;
  const int tw_idx = bx % tiles_w; bx /= tiles_w;
  const int tc_idx = bx % tiles_c;
  const int n = bx / tiles_c;
  const int w0 = tw_idx * kTileTW, h0 = blockIdx.y * kTileTH, c0 = tc_idx * kTileCB;
  const int cvalid = min(kTileCB, C - c0);

  // Weights of this tile's channels, as wsm[tap][c] in the accumulation type.
  for (int i = threadIdx.x; i < K * K * kTileCB; i += blockDim.x) {
    const int tap = i / kTileCB, cc = i % kTileCB;
    const int kh = tap / K, kw = tap % K;
    const int sh = flip ? K - 1 - kh : kh, sw = flip ? K - 1 - kw : kw;
    wsm[i] = cc < cvalid ? to_acc<A>(w[(int64_t(c0 + cc) * K + sh) * K + sw]) : A(0);
  }
  // Input tile with halo: 8-channel chunks, zero outside the image and beyond C. Every tap below
  // multiplies its tile value, the zeros of the padding included (NaN for a NaN / Inf tap).
  const int chunks = THp * TWp * (kTileCB / kVec);
  for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
    const int g = i % (kTileCB / kVec), pix = i / (kTileCB / kVec);
    const int ty = pix / TWp, tx = pix % TWp;
    const int ih = h0 + ty - P, iw = w0 + tx - P;
    const int c = c0 + g * kVec;
    Tin* dst = tile + size_t(pix) * kTileCB + g * kVec;
    const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W && c < C;
    const Tin* src = x + ((int64_t(n) * H + ih) * W + iw) * C + c;
    if (VEC) {
      constexpr int kChunks = kVec * sizeof(Tin) / 16;
#pragma unroll
      for (int j = 0; j < kChunks; ++j)
        reinterpret_cast<uint4*>(dst)[j] = inside ? __ldg(reinterpret_cast<const uint4*>(src) + j) : make_uint4(0, 0, 0, 0);
    } else {
      for (int j = 0; j < kVec; ++j) dst[j] = (inside && c + j < C) ? src[j] : Cvt<Tin>::from(0.0f);
    }
  }
  __syncthreads();

  const int g = threadIdx.x % (kTileCB / kVec), col = threadIdx.x / (kTileCB / kVec);
  const int ow = w0 + col, c = c0 + g * kVec;
  if (ow >= W || c >= C) return;
  const int nvalid = min(kVec, C - c);
  A bias[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) bias[i] = (b != nullptr && i < nvalid) ? to_acc<A>(b[c + i]) : A(0);
  const A* wg = wsm + g * kVec;
  for (int r = 0; r < kTileTH; ++r) {
    const int oh = h0 + r;
    if (oh >= H) break;
    A acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = bias[i];
    // Unroll the K taps of a row only: unrolling all K*K taps makes ptxas hoist every shared
    // memory load and use ~250 registers.
#pragma unroll 1
    for (int kh = 0; kh < K; ++kh) {
      const Tin* trow = tile + (size_t(r + kh) * TWp + col) * kTileCB + g * kVec;
#pragma unroll(KS > 0 ? KS : 1)
      for (int kw = 0; kw < K; ++kw) {
        A xv[kVec];
        load8_shared(trow + kw * kTileCB, xv);
        const A* wp = wg + (kh * K + kw) * kTileCB;
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[i] += xv[i] * wp[i];
      }
    }
    store8<VEC>(y + ((int64_t(n) * H + oh) * W + ow) * C + c, nvalid, acc);
  }
}

// Any K: thread = 8 channels of one output pixel. Pointers as in dwconv_tile_kernel.
template <class Tin, class Tw, class Tout, class A, bool VEC>
__global__ void __launch_bounds__(kDirectThreads) dwconv_direct_kernel(const Tin* __restrict__ x, const Tw* __restrict__ w,
                                                                       const Tw* __restrict__ b, Tout* __restrict__ y,
                                                                       int N, int H, int W, int C, int K, bool flip) {
  const int groups = (C + kVec - 1) / kVec;
  const int64_t total = int64_t(N) * H * W * groups;
  const int P = K / 2;
  // Dynamic shared memory: the padding masks of build_pad_masks, 2 * groups words.
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned* pad_rows = reinterpret_cast<unsigned*>(smem_raw);
  unsigned* pad_cols = pad_rows + groups;
  build_pad_masks<Tw, A>(w, C, K, flip, pad_rows, pad_cols);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int g = int(i % groups);
    const int64_t pix = i / groups;
    const int ow = int(pix % W), oh = int((pix / W) % H);
    const int64_t n = pix / (int64_t(W) * H);
    const int c = g * kVec, nvalid = min(kVec, C - c);
    A acc[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = (b != nullptr && j < nvalid) ? to_acc<A>(b[c + j]) : A(0);
#pragma unroll 1
    for (int kh = 0; kh < K; ++kh) {
      const int ih = oh + kh - P;
      if (ih < 0 || ih >= H) continue;
#pragma unroll 1
      for (int kw = 0; kw < K; ++kw) {
        const int iw = ow + kw - P;
        if (iw < 0 || iw >= W) continue;
        A xv[kVec];
        load8<VEC>(x + ((n * H + ih) * W + iw) * C + c, nvalid, xv);
        const int sh = flip ? K - 1 - kh : kh, sw = flip ? K - 1 - kw : kw;
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          if (j < nvalid) acc[j] += xv[j] * to_acc<A>(w[(int64_t(c + j) * K + sh) * K + sw]);
      }
    }
    add_pad_products<Tw, A>(acc, w, c, nvalid, K, flip, oh, ow, H, W, pad_rows[g], pad_cols[g]);
    store8<VEC>(y + pix * C + c, nvalid, acc);
  }
}

size_t tile_smem_bytes(int K, size_t in_size, size_t acc_size) {
  const size_t tile = size_t(kTileTH + K - 1) * (kTileTW + K - 1) * kTileCB * in_size;
  return (tile + 15) / 16 * 16 + size_t(K) * K * kTileCB * acc_size;
}
constexpr size_t kTileSmemLimit = 96 * 1024;  // fits sm_80 (164 KB) and sm_90 (228 KB) with room

template <class Tin, class Tw, class Tout, class A, int KS, bool VEC>
cudaError_t launch_tile(const Tin* x, const Tw* w, const Tw* b, Tout* y, const Shape& s, bool flip, cudaStream_t st) {
  const size_t smem = tile_smem_bytes(int(s.K), sizeof(Tin), sizeof(A));
  auto kernel = dwconv_tile_kernel<Tin, Tw, Tout, A, KS, VEC>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const int64_t gx = cdiv(s.W, kTileTW) * cdiv(s.C, kTileCB) * s.N, gy = cdiv(s.H, kTileTH);
  if (gx > 0x7fffffff || gy > 65535) return cudaErrorInvalidConfiguration;
  kernel<<<dim3(unsigned(gx), unsigned(gy)), kTileThreads, smem, st>>>(x, w, b, y, int(s.N), int(s.H), int(s.W),
                                                                       int(s.C), int(s.K), flip);
  return cudaGetLastError();
}

// y = dwconv(x) (flip: with the flipped kernel, for the input gradient). Picks the tile kernel when
// its shared memory fits, the direct kernel otherwise.
template <class Tin, class Tw, class Tout, class A>
cudaError_t conv(const Tin* x, const Tw* w, const Tw* b, Tout* y, const Shape& s, bool flip, cudaStream_t st) {
  const bool vec = s.C % kVec == 0 && aligned16(x) && aligned16(y);
  if (tile_smem_bytes(int(s.K), sizeof(Tin), sizeof(A)) <= kTileSmemLimit) {
    // The fully unrolled 7x7 instance only for the vector path (unrolled with element-wise
    // bounds checks it spills registers).
    // (fp64 tiles never fit at K = 7, so that instance is not compiled.)
    if constexpr (sizeof(Tin) <= 4) {
      if (s.K == 7 && vec) return launch_tile<Tin, Tw, Tout, A, 7, true>(x, w, b, y, s, flip, st);
    }
    return vec ? launch_tile<Tin, Tw, Tout, A, 0, true>(x, w, b, y, s, flip, st)
               : launch_tile<Tin, Tw, Tout, A, 0, false>(x, w, b, y, s, flip, st);
  }
  const int64_t groups = cdiv(s.C, kVec), total = s.N * s.H * s.W * groups;
  // Each block reads all C*K*K weights once for its padding masks: give a thread about C/256 outputs
  // (grid-stride), so that pass stays near 1/8 of the weight loads of its conv work.
  const int64_t per_thread = std::max<int64_t>(1, s.C / 256);
  const unsigned blocks = unsigned(std::max<int64_t>(1, std::min<int64_t>(cdiv(total, kDirectThreads * per_thread),
                                                                          int64_t(1) << 20)));
  const size_t smem = size_t(2 * groups) * sizeof(unsigned);
  auto launch = [&](auto kernel) -> cudaError_t {
    if (smem > 48 * 1024) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (err != cudaSuccess) return err;
    }
    kernel<<<blocks, kDirectThreads, smem, st>>>(x, w, b, y, int(s.N), int(s.H), int(s.W), int(s.C), int(s.K), flip);
    return cudaGetLastError();
  };
  return vec ? launch(dwconv_direct_kernel<Tin, Tw, Tout, A, true>) : launch(dwconv_direct_kernel<Tin, Tw, Tout, A, false>);
}

// ------------------------------------------------------------------------------------- reductions

struct RowBlocks {
  int64_t count, rows_per;
};
// Shape-only split of `rows` rows into blocks (so results never depend on the GPU or the timing).
RowBlocks row_blocks(int64_t rows, size_t partial_bytes_per_block) {
  const int64_t by_mem = std::max<int64_t>(1, int64_t(kMaxPartialBytes / std::max<size_t>(1, partial_bytes_per_block)));
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>({rows, int64_t(kMaxRowBlocks), by_mem}));
  const int64_t per = cdiv(rows, want);
  return {cdiv(rows, per), per};
}

// out[i] = sum_b part[b * stride + i] (block order, deterministic), written as T through the index
// map: gw layout when taps > 0 (part index tap * C + c -> out index c * taps + tap), else identity.
template <class A, class T>
__global__ void reduce_partials_kernel(const A* __restrict__ part, int64_t nblk, int64_t stride, int64_t n, int taps,
                                       int C, T* __restrict__ out, T* __restrict__ out_tail) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int64_t k = 0; k < nblk; ++k) s += part[k * stride + i];
    if (taps > 0) {
      const int64_t tap = i / C, c = i % C;
      if (tap < taps) out[c * taps + tap] = Cvt<T>::from(s);
      else out_tail[c] = Cvt<T>::from(s);  // the bias-gradient row after the taps
    } else {
      if (i < C) out[i] = Cvt<T>::from(s);
      else out_tail[i - C] = Cvt<T>::from(s);
    }
  }
}

// Weight/bias gradient partials. Block (blockIdx.x = row block, blockIdx.y = 32-channel chunk);
// thread item = (tap, channel) with the channel fastest, so a warp reads 32 consecutive channels
// (coalesced). part[blk][tap][c] for tap < K*K, part[blk][K*K][c] = sum of g (bias gradient).
// g (N,H,W,C) of Tg is the gradient of the conv output, x (N,H,W,C) of Tx the conv input.
template <class Tx, class Tg, class A>
__global__ void __launch_bounds__(kWgradThreads) dwconv_wgrad_partial_kernel(const Tg* __restrict__ g, const Tx* __restrict__ x,
                                                                             A* __restrict__ part, int H, int W, int C, int K,
                                                                             int64_t rows, int64_t rows_per) {
  const int P = K / 2, taps = K * K;
  const int64_t r0 = blockIdx.x * rows_per, r1 = min(rows, r0 + rows_per);
  const int cbase = blockIdx.y * kWgradCB;
  A* pp = part + int64_t(blockIdx.x) * (taps + 1) * C;
  for (int item = threadIdx.x; item < (taps + 1) * kWgradCB; item += blockDim.x) {
    const int tap = item / kWgradCB, c = cbase + item % kWgradCB;
    if (c >= C) continue;
    const int kh = tap / K, kw = tap % K;
    A acc = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int h = int(r % H);
      const int64_t n = r / H;
      const Tg* grow = g + r * W * C + c;
      if (tap == taps) {
        for (int ww = 0; ww < W; ++ww) acc += to_acc<A>(grow[int64_t(ww) * C]);
        continue;
      }
      const int ih = h + kh - P;
      if (ih < 0 || ih >= H) continue;
      const Tx* xrow = x + (n * H + ih) * W * C + c;
      const int wlo = max(0, P - kw), whi = min(W, W + P - kw);
      for (int ww = wlo; ww < whi; ++ww)
        acc += to_acc<A>(grow[int64_t(ww) * C]) * to_acc<A>(xrow[int64_t(ww + kw - P) * C]);
    }
    pp[int64_t(tap) * C + c] = acc;
  }
}

template <class Tx, class Tg, class A>
cudaError_t wgrad(const Tg* g, const Tx* x, Tx* gw, Tx* gb, void* ws, const Shape& s, cudaStream_t st) {
  const int taps = int(s.K * s.K);
  const size_t per_block = size_t(taps + 1) * s.C * sizeof(A);
  const RowBlocks rb = row_blocks(s.N * s.H, per_block);
  A* part = static_cast<A*>(ws);
  const dim3 grid(unsigned(rb.count), unsigned(cdiv(s.C, kWgradCB)));
  dwconv_wgrad_partial_kernel<Tx, Tg, A><<<grid, kWgradThreads, 0, st>>>(g, x, part, int(s.H), int(s.W), int(s.C),
                                                                        int(s.K), s.N * s.H, rb.rows_per);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t n = int64_t(taps + 1) * s.C;
  reduce_partials_kernel<A, Tx><<<unsigned(std::min<int64_t>(cdiv(n, 256), 4096)), 256, 0, st>>>(
      part, rb.count, n, n, taps, int(s.C), gw, gb);
  return cudaGetLastError();
}

size_t wgrad_ws_bytes(const Shape& s, size_t acc) {
  const size_t per_block = size_t(s.K * s.K + 1) * s.C * acc;
  return size_t(row_blocks(s.N * s.H, per_block).count) * per_block;
}

// ------------------------------------------------------------------------------------- LayerNorm

// One warp per pixel: mean, then centred variance (two passes over the pixel's C values, the
// second from L1), then y = (z - mean) * rstd * w + b. z (P,C) of Tz, y (P,C) of Ty, w/b (C,) of Tw,
// mean/rstd (P,) of A.
template <class Tz, class Tw, class Ty, class A, bool VEC>
__global__ void __launch_bounds__(kLnThreads) ln_forward_kernel(const Tz* __restrict__ z, const Tw* __restrict__ w,
                                                                const Tw* __restrict__ b, Ty* __restrict__ y,
                                                                A* __restrict__ mean, A* __restrict__ rstd, int64_t P,
                                                                int C, double eps) {
  const int lane = threadIdx.x % 32;
  const int64_t p = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (p >= P) return;
  const Tz* zp = z + p * C;
  A s = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    A v[kVec];
    load8<VEC>(zp + c, min(kVec, C - c), v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) s += v[i];
  }
  const A m = warp_sum(s) / A(C);
  A q = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    A v[kVec];
    const int n = min(kVec, C - c);
    load8<VEC>(zp + c, n, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      if (i < n) q += (v[i] - m) * (v[i] - m);
  }
  const A rs = A(1) / sqrt(warp_sum(q) / A(C) + A(eps));
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    A v[kVec];
    const int n = min(kVec, C - c);
    load8<VEC>(zp + c, n, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      v[i] = i < n ? (v[i] - m) * rs * to_acc<A>(w[c + i]) + to_acc<A>(b[c + i]) : A(0);
    store8<VEC>(y + p * C + c, n, v);
  }
  if (lane == 0) {
    mean[p] = m;
    rstd[p] = rs;
  }
}

// gx = rstd * (gy*w - mean_c(gy*w) - xhat * mean_c(gy*w*xhat)), xhat = (z - mean) * rstd; one warp
// per pixel. gx may alias z (each element is read before it is written, by the same thread).
template <class Tz, class Tg, class Tw, class Tx, class A, bool VEC>
__global__ void __launch_bounds__(kLnThreads) ln_backward_input_kernel(const Tz* z, const Tg* __restrict__ gy,
                                                                       const Tw* __restrict__ w, const A* __restrict__ mean,
                                                                       const A* __restrict__ rstd, Tx* gx, int64_t P, int C) {
  const int lane = threadIdx.x % 32;
  const int64_t p = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (p >= P) return;
  const A m = mean[p], rs = rstd[p];
  A s1 = 0, s2 = 0;
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    A v[kVec], gv[kVec];
    const int n = min(kVec, C - c);
    load8<VEC>(z + p * C + c, n, v);
    load8<VEC>(gy + p * C + c, n, gv);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      if (i >= n) continue;
      const A gx = mul_rn(gv[i], to_acc<A>(w[c + i]));
      s1 += gx;
      s2 += gx * (v[i] - m) * rs;
    }
  }
  const A c1 = warp_sum(s1) / A(C), c2 = warp_sum(s2) / A(C);
  for (int c = lane * kVec; c < C; c += 32 * kVec) {
    A v[kVec], gv[kVec];
    const int n = min(kVec, C - c);
    load8<VEC>(z + p * C + c, n, v);
    load8<VEC>(gy + p * C + c, n, gv);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      v[i] = i < n ? rs * (mul_rn(gv[i], to_acc<A>(w[c + i])) - c1 - (v[i] - m) * rs * c2) : A(0);
    store8<VEC>(gx + p * C + c, n, v);
  }
}

// LayerNorm weight/bias gradient partials: block (blockIdx.x = pixel block, blockIdx.y = channel
// chunk), thread = one channel (coalesced); part[blk][0][c] = sum gy * xhat, part[blk][1][c] = sum gy.
template <class Tz, class Tg, class A>
__global__ void __launch_bounds__(256) ln_param_partial_kernel(const Tz* __restrict__ z, const Tg* __restrict__ gy,
                                                               const A* __restrict__ mean, const A* __restrict__ rstd,
                                                               A* __restrict__ part, int64_t P, int C, int64_t per) {
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t p0 = blockIdx.x * per, p1 = min(P, p0 + per);
  A sw = 0, sb = 0;
  for (int64_t p = p0; p < p1; ++p) {
    const A g = to_acc<A>(gy[p * C + c]);
    sw += g * (to_acc<A>(z[p * C + c]) - mean[p]) * rstd[p];
    sb += g;
  }
  part[int64_t(blockIdx.x) * 2 * C + c] = sw;
  part[int64_t(blockIdx.x) * 2 * C + C + c] = sb;
}

size_t ln_ws_bytes(const Shape& s, size_t acc) {
  const size_t per_block = size_t(2) * s.C * acc;
  return size_t(row_blocks(s.N * s.H * s.W, per_block).count) * per_block;
}

template <class Tz, class Tg, class Tw, class Tx, class A>
cudaError_t ln_backward(const Tz* z, const Tg* gy, const Tw* w, const A* mean, const A* rstd, Tx* gx, Tw* gw, Tw* gb,
                        void* ws, const Shape& s, cudaStream_t st) {
  const int64_t P = s.N * s.H * s.W;
  const size_t per_block = size_t(2) * s.C * sizeof(A);
  const RowBlocks rb = row_blocks(P, per_block);
  A* part = static_cast<A*>(ws);
  // Parameter gradients first: in the fused backward gx aliases z.
  ln_param_partial_kernel<Tz, Tg, A><<<dim3(unsigned(rb.count), unsigned(cdiv(s.C, 256))), 256, 0, st>>>(
      z, gy, mean, rstd, part, P, int(s.C), rb.rows_per);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t n = 2 * s.C;
  reduce_partials_kernel<A, Tw><<<unsigned(std::min<int64_t>(cdiv(n, 256), 4096)), 256, 0, st>>>(
      part, rb.count, n, n, 0, int(s.C), gw, gb);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const bool vec = s.C % kVec == 0 && aligned16(z) && aligned16(gy) && aligned16(gx);
  const unsigned blocks = unsigned(cdiv(P, kLnThreads / 32));
  if (vec)
    ln_backward_input_kernel<Tz, Tg, Tw, Tx, A, true><<<blocks, kLnThreads, 0, st>>>(z, gy, w, mean, rstd, gx, P, int(s.C));
  else
    ln_backward_input_kernel<Tz, Tg, Tw, Tx, A, false><<<blocks, kLnThreads, 0, st>>>(z, gy, w, mean, rstd, gx, P, int(s.C));
  return cudaGetLastError();
}

// ------------------------------------------------------------------------------------- fused forward

// Block = a strip of S pixels of one image row, all C channels. Phase 1: direct conv of (pixel,
// 8-channel group) items into shared memory zs[S][C] (fp32/fp64); phase 2: one warp per pixel
// normalizes from shared memory and writes y, mean, rstd. The conv output never touches HBM.
template <class T, class A, bool VEC>
__global__ void __launch_bounds__(kFusedThreads) dwconv_ln_fused_kernel(const T* __restrict__ x, const T* __restrict__ dw_w,
                                                                        const T* __restrict__ dw_b, const T* __restrict__ ln_w,
                                                                        const T* __restrict__ ln_b, T* __restrict__ y,
                                                                        A* __restrict__ mean, A* __restrict__ rstd, int H,
                                                                        int W, int C, int K, int S, double eps) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* zs = reinterpret_cast<A*>(smem_raw);
  const int strips = (W + S - 1) / S;
  const int64_t row = blockIdx.x / strips;  // n * H + h
  const int w0 = int(blockIdx.x % strips) * S;
  const int h = int(row % H);
  const int64_t n = row / H;
  const int P = K / 2, groups = (C + kVec - 1) / kVec;
  const int npix = min(S, W - w0);
  // Padding masks (build_pad_masks) after zs, for strips with an output whose window meets the
  // padding (the same for the whole block, so the barriers inside are uniform).
  unsigned* pad_rows = reinterpret_cast<unsigned*>(zs + size_t(S) * C);
  unsigned* pad_cols = pad_rows + groups;
  const bool at_border = h < P || h >= H - P || w0 < P || w0 + npix > W - P;
  if (at_border) build_pad_masks<T, A>(dw_w, C, K, false, pad_rows, pad_cols);
  for (int item = threadIdx.x; item < npix * groups; item += blockDim.x) {
    const int g = item % groups, j = item / groups;
    const int ow = w0 + j, c = g * kVec, nvalid = min(kVec, C - c);
    A acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = (dw_b != nullptr && i < nvalid) ? to_acc<A>(dw_b[c + i]) : A(0);
    for (int kh = 0; kh < K; ++kh) {
      const int ih = h + kh - P;
      if (ih < 0 || ih >= H) continue;
      for (int kw = 0; kw < K; ++kw) {
        const int iw = ow + kw - P;
        if (iw < 0 || iw >= W) continue;
        A xv[kVec];
        load8<VEC>(x + ((n * H + ih) * W + iw) * C + c, nvalid, xv);
#pragma unroll
        for (int i = 0; i < kVec; ++i)
          if (i < nvalid) acc[i] += xv[i] * to_acc<A>(dw_w[(int64_t(c + i) * K + kh) * K + kw]);
      }
    }
    if (at_border) add_pad_products<T, A>(acc, dw_w, c, nvalid, K, false, h, ow, H, W, pad_rows[g], pad_cols[g]);
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      if (i < nvalid) zs[j * C + c + i] = acc[i];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32;
  for (int j = threadIdx.x / 32; j < npix; j += blockDim.x / 32) {
    const A* zp = zs + j * C;
    A s = 0;
    for (int c = lane; c < C; c += 32) s += zp[c];
    const A m = warp_sum(s) / A(C);
    A q = 0;
    for (int c = lane; c < C; c += 32) q += (zp[c] - m) * (zp[c] - m);
    const A rs = A(1) / sqrt(warp_sum(q) / A(C) + A(eps));
    T* yp = y + (row * W + w0 + j) * C;
    for (int c = lane; c < C; c += 32) yp[c] = Cvt<T>::from((zp[c] - m) * rs * to_acc<A>(ln_w[c]) + to_acc<A>(ln_b[c]));
    if (lane == 0) {
      mean[row * W + w0 + j] = m;
      rstd[row * W + w0 + j] = rs;
    }
  }
}

constexpr size_t kFusedSmemLimit = 160 * 1024;

// ------------------------------------------------------------------------------------- typed ops

template <class T>
struct Ops {
  using A = typename AccOf<T>::type;

  static cudaError_t dwconv_forward(const void* x, const void* w, const void* b, void* y, const Shape& s,
                                    cudaStream_t st) {
    return conv<T, T, T, A>(static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b),
                            static_cast<T*>(y), s, false, st);
  }

  static cudaError_t dwconv_backward(const void* gy, const void* x, const void* w, void* gx, void* gw, void* gb,
                                     void* ws, const Shape& s, cudaStream_t st) {
    cudaError_t err = conv<T, T, T, A>(static_cast<const T*>(gy), static_cast<const T*>(w), nullptr,
                                       static_cast<T*>(gx), s, true, st);
    if (err != cudaSuccess) return err;
    return wgrad<T, T, A>(static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<T*>(gw),
                          static_cast<T*>(gb), ws, s, st);
  }

  static cudaError_t layer_norm_forward(const void* x, const void* w, const void* b, double eps, void* y, void* mean,
                                        void* rstd, const Shape& s, cudaStream_t st) {
    const int64_t P = s.N * s.H * s.W;
    const bool vec = s.C % kVec == 0 && aligned16(x) && aligned16(y);
    const unsigned blocks = unsigned(cdiv(P, kLnThreads / 32));
    auto args = [&](auto kernel) {
      kernel<<<blocks, kLnThreads, 0, st>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                             static_cast<const T*>(b), static_cast<T*>(y), static_cast<A*>(mean),
                                             static_cast<A*>(rstd), P, int(s.C), eps);
    };
    if (vec) args(ln_forward_kernel<T, T, T, A, true>);
    else args(ln_forward_kernel<T, T, T, A, false>);
    return cudaGetLastError();
  }

  static cudaError_t layer_norm_backward(const void* gy, const void* x, const void* w, const void* mean,
                                         const void* rstd, void* gx, void* gw, void* gb, void* ws, const Shape& s,
                                         cudaStream_t st) {
    return ln_backward<T, T, T, T, A>(static_cast<const T*>(x), static_cast<const T*>(gy), static_cast<const T*>(w),
                                      static_cast<const A*>(mean), static_cast<const A*>(rstd), static_cast<T*>(gx),
                                      static_cast<T*>(gw), static_cast<T*>(gb), ws, s, st);
  }

  static cudaError_t dwconv_ln_forward(const void* x, const void* dw_w, const void* dw_b, const void* ln_w,
                                       const void* ln_b, double eps, void* y, void* mean, void* rstd, const Shape& s,
                                       cudaStream_t st) {
    const size_t row_bytes = size_t(s.C) * sizeof(A);
    if (row_bytes > kFusedSmemLimit) return cudaErrorInvalidValue;  // C beyond any ConvNeXt: say so
    const int S = int(std::max<int64_t>(1, std::min<int64_t>({16, s.W, int64_t(48 * 1024 / row_bytes)})));
    const size_t smem = size_t(S) * row_bytes + size_t(2 * cdiv(s.C, kVec)) * sizeof(unsigned);  // zs, padding masks
    const bool vec = s.C % kVec == 0 && aligned16(x);
    auto launch = [&](auto kernel) -> cudaError_t {
      cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (err != cudaSuccess) return err;
      const int64_t blocks = s.N * s.H * cdiv(s.W, S);
      if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
      kernel<<<unsigned(blocks), kFusedThreads, smem, st>>>(
          static_cast<const T*>(x), static_cast<const T*>(dw_w), static_cast<const T*>(dw_b),
          static_cast<const T*>(ln_w), static_cast<const T*>(ln_b), static_cast<T*>(y), static_cast<A*>(mean),
          static_cast<A*>(rstd), int(s.H), int(s.W), int(s.C), int(s.K), S, eps);
      return cudaGetLastError();
    };
    return vec ? launch(dwconv_ln_fused_kernel<T, A, true>) : launch(dwconv_ln_fused_kernel<T, A, false>);
  }

  // Workspace: z / gz (N,H,W,C) in A, then the larger of the LayerNorm and dwconv partials.
  static size_t fused_bwd_ws(const Shape& s) {
    const size_t act = (size_t(s.N * s.H * s.W * s.C) * sizeof(A) + 255) / 256 * 256;
    return act + std::max(ln_ws_bytes(s, sizeof(A)), wgrad_ws_bytes(s, sizeof(A)));
  }

  static cudaError_t dwconv_ln_backward(const void* gy, const void* x, const void* dw_w, const void* dw_b,
                                        const void* ln_w, const void* mean, const void* rstd, void* gx, void* g_dw_w,
                                        void* g_dw_b, void* g_ln_w, void* g_ln_b, void* ws, const Shape& s,
                                        cudaStream_t st) {
    A* z = static_cast<A*>(ws);
    void* part = static_cast<unsigned char*>(ws) + (size_t(s.N * s.H * s.W * s.C) * sizeof(A) + 255) / 256 * 256;
    // 1. Recompute the conv output z in the accumulation type (not rounded to T).
    cudaError_t err = conv<T, T, A, A>(static_cast<const T*>(x), static_cast<const T*>(dw_w),
                                       static_cast<const T*>(dw_b), z, s, false, st);
    if (err != cudaSuccess) return err;
    // 2. LayerNorm backward: ln weight/bias gradients, then gz written over z.
    err = ln_backward<A, T, T, A, A>(z, static_cast<const T*>(gy), static_cast<const T*>(ln_w),
                                     static_cast<const A*>(mean), static_cast<const A*>(rstd), z,
                                     static_cast<T*>(g_ln_w), static_cast<T*>(g_ln_b), part, s, st);
    if (err != cudaSuccess) return err;
    // 3. dwconv backward with grad = gz.
    err = conv<A, T, T, A>(z, static_cast<const T*>(dw_w), nullptr, static_cast<T*>(gx), s, true, st);
    if (err != cudaSuccess) return err;
    return wgrad<T, A, A>(z, static_cast<const T*>(x), static_cast<T*>(g_dw_w), static_cast<T*>(g_dw_b), part, s, st);
  }
};

}  // namespace

// ------------------------------------------------------------------------------------- public API

#define CF_CUDA_DISPATCH(DT, CALL)                      \
  switch (DT) {                                         \
    case DType::F32: return Ops<float>::CALL;           \
    case DType::F64: return Ops<double>::CALL;          \
    case DType::F16: return Ops<__half>::CALL;          \
    case DType::BF16: return Ops<__nv_bfloat16>::CALL;  \
  }                                                     \
  return cudaErrorInvalidValue;

size_t dwconv_backward_workspace_bytes(DType dt, Shape s) {
  return wgrad_ws_bytes(s, dt == DType::F64 ? sizeof(double) : sizeof(float));
}
size_t layer_norm_backward_workspace_bytes(DType dt, Shape s) {
  return ln_ws_bytes(s, dt == DType::F64 ? sizeof(double) : sizeof(float));
}
size_t dwconv_ln_backward_workspace_bytes(DType dt, Shape s) {
  return dt == DType::F64 ? Ops<double>::fused_bwd_ws(s) : Ops<float>::fused_bwd_ws(s);
}

cudaError_t dwconv_forward(DType dt, const void* x, const void* w, const void* b, void* y, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, dwconv_forward(x, w, b, y, s, st))
}
cudaError_t dwconv_backward(DType dt, const void* gy, const void* x, const void* w, void* gx, void* gw, void* gb,
                            void* ws, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, dwconv_backward(gy, x, w, gx, gw, gb, ws, s, st))
}
cudaError_t layer_norm_forward(DType dt, const void* x, const void* w, const void* b, double eps, void* y, void* mean,
                               void* rstd, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, layer_norm_forward(x, w, b, eps, y, mean, rstd, s, st))
}
cudaError_t layer_norm_backward(DType dt, const void* gy, const void* x, const void* w, const void* mean,
                                const void* rstd, void* gx, void* gw, void* gb, void* ws, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, layer_norm_backward(gy, x, w, mean, rstd, gx, gw, gb, ws, s, st))
}
cudaError_t dwconv_ln_forward(DType dt, const void* x, const void* dw_w, const void* dw_b, const void* ln_w,
                              const void* ln_b, double eps, void* y, void* mean, void* rstd, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, dwconv_ln_forward(x, dw_w, dw_b, ln_w, ln_b, eps, y, mean, rstd, s, st))
}
cudaError_t dwconv_ln_backward(DType dt, const void* gy, const void* x, const void* dw_w, const void* dw_b,
                               const void* ln_w, const void* mean, const void* rstd, void* gx, void* g_dw_w,
                               void* g_dw_b, void* g_ln_w, void* g_ln_b, void* ws, Shape s, cudaStream_t st) {
  CF_CUDA_DISPATCH(dt, dwconv_ln_backward(gy, x, dw_w, dw_b, ln_w, mean, rstd, gx, g_dw_w, g_dw_b, g_ln_w, g_ln_b, ws,
                                          s, st))
}

}  // namespace convnext_fast_cuda
