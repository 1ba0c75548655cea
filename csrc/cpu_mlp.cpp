// CPU kernel of the pointwise MLP of a ConvNeXt block (see cpu_mlp.h for the API).
//
// Liu et al., "A ConvNet for the 2020s", CVPR 2022: after the depthwise conv and LayerNorm, each
// token runs fc1 (C -> 4C), exact GELU, fc2 (4C -> C), layer scale gamma, drop path, residual.
//
// Forward. Eager PyTorch writes the (M, 4C) hidden activation to memory and reads it back three
// times (fc1 out, GELU in/out, fc2 in), plus two more passes over (M, C) for gamma and the residual.
// Three paths, by what the call needs:
//
// 1. Inference (no h kept for a backward), bfloat16 with bf16 dot products, and float32 below
//    kOneDnnMaxRowsF32 rows: oneDNN's linear (cpu_onednn.h: the ops torch.compile's freezing runs)
//    with each weight prepacked once into oneDNN's blocked layout, GELU as fc1's post-op and the
//    shortcut as fc2's post-op, on row chunks whose hidden activation (<= kHiddenChunkBytes) stays
//    in cache between the two GEMMs (forward_onednn). The post-ops work on the fp32 accumulators:
//    h and the output are rounded once. A layer scale or per-sample scale (the unfolded model)
//    takes one epilogue pass after fc2. Under autocast (mlp_forward_promoted) each chunk's bf16
//    output goes straight into the block's float32 residual add, while it is in cache.
// 2. float32 otherwise (training, and large row counts, where this path is as fast or faster):
//    the token rows are split into blocks of R rows (at::parallel_for, one block at a time per
//    thread); per block, on transposed tiles (token index last): x.T of the block (C x R), fc1 into
//    a per-thread hidden tile h.T = w1 @ x.T (J x R floats, sized to stay in L2), bias + GELU in
//    place on the tile, fc2 out.T = w2 @ GELU(h.T), then b2, gamma and the per-sample scale on
//    out.T and its transposed write, plus the residual, into the output rows. The hidden
//    activation never goes to memory (unless the caller asks for it to be saved for the backward,
//    then it is written once, from the same pass).
// 3. bfloat16 training (h kept): the two GEMMs on whole matrices (at::mm, PyTorch's rounding of h
//    and of fc2's output), the elementwise work fused: b1 + GELU in one pass (fp32 math), b2 / gamma
//    / scale / residual in one pass.
//
// GEMMs of path 2: oneDNN's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm, fp32 in,
// fp32 accumulate/out), which multiplies row-major A (M x K) by row-major B (K x N). Taking the
// weights as A (as nn.Linear stores them) and the transposed token tiles as B, no weight is ever
// copied: at batch 1 a transposed copy of every weight on every call would move more memory than
// the GEMMs read. The transposes are of the small, cache-resident token tiles instead. brgemm runs
// these per-block GEMMs about 2x faster than at::mm on the same tiles (MKL's sgemm, which is also
// what F.linear runs; docs/performance.md, "Kernel constants"). Wide layers (Hd > kMaxChunk) are
// split into hidden chunks of J rows of w1 (flash-attention's loop over key blocks): fc2
// accumulates the chunks into out.T with brgemm's add_C, so the tile stays J x R whatever the width.
// brgemm's bf16 path needs VNNI-packed B, which this oneDNN does not offer without AMX
// (cpublas::could_pack is false: its unpacked fallback ran at ~5 GFLOP/s); hence oneDNN's linear
// for bf16.
// Without bf16 dot products (no AVX512_BF16, or the instruction set held lower by
// CONVNEXT_FAST_CPU_ISA / ONEDNN_MAX_CPU_ISA) oneDNN emulates bf16 GEMMs, slower than fp32: there the
// bf16 forward widens its inputs and runs the fp32 kernel (native_bf16_dot, forward_bf16_via_f32).
//
// Backward: correct and deterministic, less fused than the forward. Everything runs in fp32 (bf16
// inputs are widened once): the GEMMs run on brgemm over whole matrices (mm_nn, mm_reduce: every
// operand as stored or transposed here, each output a fixed sequence of calls, so the result does
// not depend on the thread count), the rest two fused passes over fixed 256-row blocks whose
// column partial sums (bias gradients) are added in block order, never atomically:
//   gs = grad_out * s[row]          (+ column sums: gb2 = gamma * sum gs)
//   ga = gs @ (gamma[:, None] * w2)  (the layer scale folded into the small weight, not the big gradient)
//   a = GELU(h), gh = ga * GELU'(h)  (+ column sums: gb1), h recomputed by fc1 when not saved
//   P = gs.T @ a: gw2 = gamma[:, None] * P, ggamma = rowsum(w2 * P) + b2 * sum gs (no fc2 recompute)
//   gw1 = (x.T @ gh).T, gx = gh @ w1.
// The temporaries (gs, ga, a and a transpose) are the calling thread's memory kept between calls
// (cpu_memory.h, up to 256 MiB each); fusing the backward per row block as the forward is fused
// would make them tile-sized.
//
// Elementwise code (bias + GELU, epilogue, GELU derivative) uses GCC vector extensions compiled
// for AVX-512 (16 floats), AVX2 (8) and baseline x86-64 (4), picked with the other CPU kernels'
// choice (convnext_fast_cpu::isa(), CONVNEXT_FAST_CPU_ISA). Row tails run through the same vector
// code on a zero-padded copy, so every element gets the same arithmetic.
#include "cpu_mlp.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"  // isa(): one instruction-set choice for all CPU kernels
#include "cpu_memory.h"
#include "cpu_onednn.h"
#include "cpu_output_pool.h"
#include "cpu_vec.h"

namespace convnext_fast_cpu {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using namespace simd;

// Hidden tile budget per thread: R x J fp32 values (a quarter of a 1 MiB per-core L2; the weight
// panels and the output rows share it).
constexpr int64_t kTileBytes = 256 * 1024;
// Hidden chunking (fp32). brgemm is a micro-kernel: it does no cache blocking of its own and
// re-reads its operands for every few rows of the weight panel (J x C of w1, C x J of w2), so each
// call's panel and token tile must stay in L2: up to Hd = kMaxChunk the layer runs unchunked
// (ConvNeXt-T stages 1-2, panels of 144 / 576 KiB), wider ones in chunks of J hidden units with
// C * J floats <= kPanelBytes (stage 3: J = 256, stage 4: 128): unchunked, stage 4's panels
// overflow L2 and the layer runs at about half the speed.
constexpr int64_t kMaxChunk = 768;
constexpr int64_t kPanelBytes = 384 * 1024;
constexpr int64_t kMinRows = 32, kMaxRows = 256;
// Row block of the backward's fused passes: fixed, so their sums do not depend on the threads.
constexpr int64_t kBwdRows = 256;

// erf for float: x * P(x^2) / Q(x^2) on [-4, 4] (outside, erf is +-1 in float), the rational
// approximation of Eigen's and XLA's float erf (max error a few ulp).
template <class F>
CFM_AI F erf_approx(F x) {
  const F lo = bc<F>(-4.f), hi = bc<F>(4.f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const F x2 = x * x;
  F p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  F q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

// exp(x) for x <= 0 (Cephes' expf polynomial after x = n ln2 + r, |r| <= ln2 / 2).
template <int V>
CFM_AI typename Vec<V>::f exp_nonpos(typename Vec<V>::f x) {
  typedef typename Vec<V>::f F;
  const F lo = bc<F>(-87.f);
  x = x < lo ? lo : x;
  // Round to nearest integer: adding 1.5 * 2^23 pushes the fraction out of the mantissa.
  const F magic = bc<F>(12582912.f);
  const F n = (x * 1.44269504088896341f + magic) - magic;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const typename Vec<V>::i e = (__builtin_convertvector(n, typename Vec<V>::i) + 127) << 23;
  F scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

template <class F>
CFM_AI F gelu(F v) {
  return 0.5f * v * (1.f + erf_approx(v * kSqrt1_2));
}

// ---------------------------------------------------------------------------------- row kernels

// The float32 forward works on transposed tiles (token index last) so that both GEMMs read the
// weights as nn.Linear stores them; these move tiles between the two layouts.

// Two-input lane permutation of 8-float vectors (GCC's and Clang's spellings).
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
#if defined(__clang__)
#define CFM_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define CFM_SHUFFLE8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shuffle(a, b, I8{i0, i1, i2, i3, i4, i5, i6, i7})
#endif

// In-register transpose of an 8 x 8 block (three rounds of two-input shuffles: pairs of rows,
// pairs of pairs, halves).
CFM_AI void transpose8x8(F8 r[8]) {
  F8 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = CFM_SHUFFLE8(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = CFM_SHUFFLE8(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = CFM_SHUFFLE8(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = CFM_SHUFFLE8(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  // u[0..3]: columns (0, 4), (1, 5), (2, 6), (3, 7) of rows 0-3; u[4..7] the same of rows 4-7.
  for (int c = 0; c < 4; ++c) {
    r[c] = CFM_SHUFFLE8(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[c + 4] = CFM_SHUFFLE8(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// dst[c * ldd + r] = src[r * lds + c] (+ add[c * lda + r] when add is given) for r < rows,
// c < cols: whole 8 x 8 blocks in registers, the edges one element at a time.
CFM_AI void transpose_impl(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd,
                           const float* add, int64_t lda) {
  const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
  for (int64_t c0 = 0; c0 < cols8; c0 += 8)
    for (int64_t r0 = 0; r0 < rows8; r0 += 8) {
      F8 v[8];
      for (int i = 0; i < 8; ++i) std::memcpy(&v[i], src + (r0 + i) * lds + c0, sizeof(F8));
      transpose8x8(v);
      for (int i = 0; i < 8; ++i) {
        if (add) {
          F8 a;
          std::memcpy(&a, add + (c0 + i) * lda + r0, sizeof(F8));
          v[i] += a;
        }
        std::memcpy(dst + (c0 + i) * ldd + r0, &v[i], sizeof(F8));
      }
    }
  const auto one = [&](int64_t r, int64_t c) {
    dst[c * ldd + r] = src[r * lds + c] + (add ? add[c * lda + r] : 0.f);
  };
  for (int64_t c = 0; c < cols8; ++c)
    for (int64_t r = rows8; r < rows; ++r) one(r, c);
  for (int64_t c = cols8; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) one(r, c);
}

// h.T tile (n hidden rows x `rows` tokens, row stride ldh): h += bias[j] per hidden row, optionally
// saved (token-major: save[r * lds + j], through the tile transpose) before the GELU, then GELU in
// place. One pass over the tile without a save, three with one.
template <int V>
CFM_AI void bias_gelu_t_impl(float* h, int64_t ldh, int64_t n, int64_t rows, const float* bias, float* save,
                             int64_t lds) {
  typedef typename Vec<V>::f F;
  const auto each = [&](auto f) {  // h[j, r] = f(h[j, r], j), V tokens at a time
    for (int64_t j = 0; j < n; ++j) {
      float* hp = h + j * ldh;
      for (int64_t r = 0; r < rows; r += V) {
        const int64_t k = std::min<int64_t>(V, rows - r);
        store<V>(hp + r, f(load<V>(hp + r, k), j), k);
      }
    }
  };
  if (save) {
    each([&](F v, int64_t j) { return v + bias[j]; });
    transpose_impl(h, ldh, n, rows, save, lds, nullptr, 0);
    each([](F v, int64_t) { return gelu(v); });
  } else {
    each([&](F v, int64_t j) { return gelu(v + bias[j]); });
  }
}

// The epilogue from an out.T tile (C x rows, row stride ldt) into token rows:
// o[r, c] = ((t[c, r] + b2[c]) * gamma[c]) * s[r] + shortcut[r, c], in the reference's order. b2 /
// gamma are fp32 vectors (zeros / ones when absent); s: the per-row scale (1 when absent); sc: the
// shortcut rows or null. The scaling runs in place on t (vectors over tokens), the transposed write
// adds the shortcut.
template <int V>
CFM_AI void epilogue_t_impl(float* t, int64_t ldt, int64_t rows, int64_t C, const float* b2, const float* gamma,
                            const float* row_scale, const float* sc, int64_t ldsc, float* o, int64_t ldo) {
  typedef typename Vec<V>::f F;
  for (int64_t c = 0; c < C; ++c) {
    float* tp = t + c * ldt;
    const F b = bc<F>(b2[c]), g = bc<F>(gamma[c]);
    for (int64_t r = 0; r < rows; r += V) {
      const int64_t k = std::min<int64_t>(V, rows - r);
      store<V>(tp + r, ((load<V>(tp + r, k) + b) * g) * load<V>(row_scale + r, k), k);
    }
  }
  transpose_impl(t, ldt, C, rows, o, ldo, sc, ldsc);
}

// bf16 tiles: dst = GELU(src + bias) in fp32, rounded once; bias is an fp32 vector, or null when the
// GEMM added it already.
template <int V>
CFM_AI void gelu_bf16_impl(const c10::BFloat16* src, int64_t lds, c10::BFloat16* dst, int64_t ldd, int64_t rows,
                           int64_t n, const float* bias) {
  typedef typename Vec<V>::f F;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; c += V) {
      F v = load<V>(src + r * lds + c, n - c);
      if (bias) v = v + load<V>(bias + c, n - c);
      store<V>(dst + r * ldd + c, gelu(v), n - c);
    }
}

// The epilogue on a block's output rows (in place): o = ((o + b2) * gamma) * s[row] + shortcut, in
// the reference's order. b2 / gamma are fp32 vectors (zeros / ones when absent); s: the per-row
// scale (1 when absent); sc: the shortcut rows or null.
template <int V, class T>
CFM_AI void epilogue_impl(T* o, int64_t ldo, int64_t rows, int64_t C, const float* b2, const float* gamma,
                          const float* row_scale, const T* sc, int64_t ldsc) {
  typedef typename Vec<V>::f F;
  for (int64_t r = 0; r < rows; ++r) {
    T* op = o + r * ldo;
    const F s = bc<F>(row_scale[r]);
    for (int64_t c = 0; c < C; c += V) {
      const int64_t k = C - c;
      F v = ((load<V>(op + c, k) + load<V>(b2 + c, k)) * load<V>(gamma + c, k)) * s;
      if (sc) v = v + load<V>(sc + r * ldsc + c, k);
      store<V>(op + c, v, k);
    }
  }
}

// Backward: gs = g * s[row] (fp32 rows of n), colsum += gs (this block's partial, fixed row order).
template <int V, class T>
CFM_AI void scale_colsum_impl(const T* g, int64_t ldg, int64_t rows, int64_t n, const float* row_scale, float* gs,
                              float* colsum) {
  typedef typename Vec<V>::f F;
  for (int64_t r = 0; r < rows; ++r) {
    const F s = bc<F>(row_scale[r]);
    for (int64_t c = 0; c < n; c += V) {
      const int64_t k = n - c;
      const F v = load<V>(g + r * ldg + c, k) * s;
      store<V>(gs + r * n + c, v, k);
      store<V>(colsum + c, load<V>(colsum + c, k) + v, k);
    }
  }
}

// Backward: a = GELU(h), gh = ga * GELU'(h) (in place over ga), colsum += gh. h: T rows of n.
template <int V, class T>
CFM_AI void gelu_bwd_impl(const T* h, float* ga, float* a, int64_t rows, int64_t n, float* colsum) {
  typedef typename Vec<V>::f F;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < n; c += V) {
      const int64_t k = n - c, i = r * n + c;
      const F x = load<V>(h + i, k);
      const F cdf = 0.5f * (1.f + erf_approx(x * kSqrt1_2));
      const F pdf = exp_nonpos<V>(-0.5f * x * x) * kInvSqrt2Pi;
      store<V>(a + i, x * cdf, k);
      const F g = load<V>(ga + i, k) * (cdf + x * pdf);
      store<V>(ga + i, g, k);
      store<V>(colsum + c, load<V>(colsum + c, k) + g, k);
    }
}

using BF = c10::BFloat16;

// A float32 residual stream over a bf16 branch, as PyTorch's addcmul computes it (one rounding):
// out = fma(z, gamma, shortcut) over rows of C (z: bf16 bits; shortcut: float32, or bf16 bits).
// Scalar code on purpose: std::fma is exact everywhere, and vectorizes where the ISA has FMA.
template <class S>
CFM_AI void promoted_residual_impl(const uint16_t* z, int64_t ldz, const S* sc, int64_t ldsc, const float* gamma,
                                   int64_t rows, int64_t C, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* zr = z + r * ldz;
    const S* sr = sc + r * ldsc;
    float* o = out + r * ldo;
    for (int64_t c = 0; c < C; ++c) {
      float s;
      if constexpr (std::is_same_v<S, float>)
        s = sr[c];
      else
        s = bf16_bits_to_f32(sr[c]);
      o[c] = std::fma(bf16_bits_to_f32(zr[c]), gamma[c], s);
    }
  }
}

struct MlpOps {
  void (*transpose)(const float*, int64_t, int64_t, int64_t, float*, int64_t);
  void (*bias_gelu_t)(float*, int64_t, int64_t, int64_t, const float*, float*, int64_t);
  void (*epilogue_t)(float*, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*,
                     int64_t, float*, int64_t);
  void (*gelu_bf16)(const BF*, int64_t, BF*, int64_t, int64_t, int64_t, const float*);
  void (*epilogue_f32)(float*, int64_t, int64_t, int64_t, const float*, const float*, const float*,
                       const float*, int64_t);
  void (*epilogue_bf16)(BF*, int64_t, int64_t, int64_t, const float*, const float*, const float*, const BF*,
                        int64_t);
  void (*scale_colsum_f32)(const float*, int64_t, int64_t, int64_t, const float*, float*, float*);
  void (*scale_colsum_bf16)(const BF*, int64_t, int64_t, int64_t, const float*, float*, float*);
  void (*gelu_bwd_f32)(const float*, float*, float*, int64_t, int64_t, float*);
  void (*gelu_bwd_bf16)(const BF*, float*, float*, int64_t, int64_t, float*);
  void (*promoted_residual_f32)(const uint16_t*, int64_t, const float*, int64_t, const float*, int64_t, int64_t,
                                float*, int64_t);
  void (*promoted_residual_bf16)(const uint16_t*, int64_t, const uint16_t*, int64_t, const float*, int64_t, int64_t,
                                 float*, int64_t);
};

#define CFM_DEFINE_OPS(NAME, ATTR, V)                                                                          \
  ATTR void transpose_##NAME(const float* s, int64_t lds, int64_t rows, int64_t cols, float* d, int64_t ldd) {  \
    transpose_impl(s, lds, rows, cols, d, ldd, nullptr, 0);                                                    \
  }                                                                                                            \
  ATTR void bias_gelu_t_##NAME(float* h, int64_t ldh, int64_t n, int64_t rows, const float* b, float* s,        \
                               int64_t lds) {                                                                  \
    bias_gelu_t_impl<V>(h, ldh, n, rows, b, s, lds);                                                           \
  }                                                                                                            \
  ATTR void epilogue_t_##NAME(float* t, int64_t ldt, int64_t rows, int64_t C, const float* b2, const float* g,  \
                              const float* rs, const float* sc, int64_t ldsc, float* o, int64_t ldo) {         \
    epilogue_t_impl<V>(t, ldt, rows, C, b2, g, rs, sc, ldsc, o, ldo);                                          \
  }                                                                                                            \
  ATTR void gelu_bf16_##NAME(const BF* s, int64_t lds, BF* d, int64_t ldd, int64_t rows, int64_t n,             \
                             const float* bias) {                                                              \
    gelu_bf16_impl<V>(s, lds, d, ldd, rows, n, bias);                                                          \
  }                                                                                                            \
  ATTR void epilogue_f32_##NAME(float* o, int64_t ldo, int64_t rows, int64_t C, const float* b2,              \
                                const float* g, const float* rs, const float* sc, int64_t ldsc) {             \
    epilogue_impl<V>(o, ldo, rows, C, b2, g, rs, sc, ldsc);                                                    \
  }                                                                                                            \
  ATTR void epilogue_bf16_##NAME(BF* o, int64_t ldo, int64_t rows, int64_t C, const float* b2, const float* g,  \
                                 const float* rs, const BF* sc, int64_t ldsc) {                                \
    epilogue_impl<V>(o, ldo, rows, C, b2, g, rs, sc, ldsc);                                                    \
  }                                                                                                            \
  ATTR void scale_colsum_f32_##NAME(const float* g, int64_t ldg, int64_t rows, int64_t n, const float* rs,      \
                                    float* gs, float* cs) {                                                    \
    scale_colsum_impl<V>(g, ldg, rows, n, rs, gs, cs);                                                         \
  }                                                                                                            \
  ATTR void scale_colsum_bf16_##NAME(const BF* g, int64_t ldg, int64_t rows, int64_t n, const float* rs,        \
                                     float* gs, float* cs) {                                                   \
    scale_colsum_impl<V>(g, ldg, rows, n, rs, gs, cs);                                                         \
  }                                                                                                            \
  ATTR void gelu_bwd_f32_##NAME(const float* h, float* ga, float* a, int64_t rows, int64_t n, float* cs) {      \
    gelu_bwd_impl<V>(h, ga, a, rows, n, cs);                                                                   \
  }                                                                                                            \
  ATTR void gelu_bwd_bf16_##NAME(const BF* h, float* ga, float* a, int64_t rows, int64_t n, float* cs) {        \
    gelu_bwd_impl<V>(h, ga, a, rows, n, cs);                                                                   \
  }                                                                                                            \
  ATTR void promoted_residual_f32_##NAME(const uint16_t* z, int64_t ldz, const float* sc, int64_t ldsc,         \
                                         const float* g, int64_t rows, int64_t C, float* o, int64_t ldo) {       \
    promoted_residual_impl(z, ldz, sc, ldsc, g, rows, C, o, ldo);                                              \
  }                                                                                                            \
  ATTR void promoted_residual_bf16_##NAME(const uint16_t* z, int64_t ldz, const uint16_t* sc, int64_t ldsc,     \
                                          const float* g, int64_t rows, int64_t C, float* o, int64_t ldo) {      \
    promoted_residual_impl(z, ldz, sc, ldsc, g, rows, C, o, ldo);                                              \
  }                                                                                                            \
  const MlpOps mlp_ops_##NAME = {transpose_##NAME,        bias_gelu_t_##NAME,      epilogue_t_##NAME,          \
                                 gelu_bf16_##NAME,        epilogue_f32_##NAME,     epilogue_bf16_##NAME,    scale_colsum_f32_##NAME,    \
                                 scale_colsum_bf16_##NAME, gelu_bwd_f32_##NAME,    gelu_bwd_bf16_##NAME,       \
                                 promoted_residual_f32_##NAME, promoted_residual_bf16_##NAME};

CFV_FOR_EACH_ISA(CFM_DEFINE_OPS)

const MlpOps& ops() {
  static const MlpOps& o = pick_isa(isa(), mlp_ops_generic, CFV_ISA(mlp_ops_avx2), CFV_ISA(mlp_ops_avx512));
  return o;
}

// ---------------------------------------------------------------------------------- checks

int64_t row_stride(const Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

void check_rows(const Tensor& t, const char* name, int64_t M, int64_t C, const Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == M && t.size(1) == C, "convnext_fast mlp (CPU): ", name,
              " must have shape (M, C) = (", M, ", ", C, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "convnext_fast mlp (CPU): ", name, " has dtype ",
              t.scalar_type(), ", expected x's ", x.scalar_type());
  TORCH_CHECK(t.is_cpu(), "convnext_fast mlp (CPU): ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(C <= 1 || t.stride(1) == 1, "convnext_fast mlp (CPU): ", name,
              " must have contiguous rows (column stride 1), got strides ", t.strides());
  TORCH_CHECK(row_stride(t) >= C, "convnext_fast mlp (CPU): ", name, " rows overlap (strides ", t.strides(), ")");
}

void check_param(const Tensor& t, const char* name, at::IntArrayRef shape, const Tensor& x) {
  TORCH_CHECK(t.sizes() == shape, "convnext_fast mlp (CPU): ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "convnext_fast mlp (CPU): ", name, " has dtype ",
              t.scalar_type(), ", expected x's ", x.scalar_type());
  TORCH_CHECK(t.is_cpu(), "convnext_fast mlp (CPU): ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), "convnext_fast mlp (CPU): ", name, " must be contiguous, got strides ",
              t.strides());
}

struct Dims {
  int64_t M, C, Hd;
};

Dims check_inputs(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                  const OptTensor& gamma, const OptTensor& sample_scale, int64_t rows_per_sample) {
  TORCH_CHECK(x.dim() == 2, "convnext_fast mlp (CPU): x must be 2-D (M, C) token rows, got ", x.dim(), "-D");
  TORCH_CHECK(x.is_cpu(), "convnext_fast mlp (CPU): x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_NOT_IMPLEMENTED(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                              "convnext_fast mlp (CPU): supports float32 and bfloat16, got ", x.scalar_type());
  TORCH_CHECK(w1.dim() == 2, "convnext_fast mlp (CPU): w1 must be 2-D (Hd, C), got shape ", w1.sizes());
  const Dims d{x.size(0), x.size(1), w1.size(0)};
  check_rows(x, "x", d.M, d.C, x);
  check_param(w1, "w1", {d.Hd, d.C}, x);
  check_param(w2, "w2", {d.C, d.Hd}, x);
  if (b1) check_param(*b1, "b1", {d.Hd}, x);
  if (b2) check_param(*b2, "b2", {d.C}, x);
  if (gamma) check_param(*gamma, "gamma", {d.C}, x);
  if (sample_scale) {
    const Tensor& s = *sample_scale;
    TORCH_CHECK(s.dim() == 1 && s.scalar_type() == at::kFloat && s.is_cpu() && s.is_contiguous(),
                "convnext_fast mlp (CPU): sample_scale must be a contiguous float32 (N,) CPU tensor, got ",
                s.scalar_type(), " of shape ", s.sizes());
    TORCH_CHECK(rows_per_sample >= 1 && s.size(0) * rows_per_sample == d.M,
                "convnext_fast mlp (CPU): sample_scale has N=", s.size(0), " entries and rows_per_sample=",
                rows_per_sample, ", but x has M=", d.M, " rows (need N * rows_per_sample == M)");
  }
  return d;
}

// fp32 copy of an optional vector, or `fill` repeated n times when absent.
std::vector<float> vec_f32(const OptTensor& t, int64_t n, float fill) {
  std::vector<float> v(static_cast<size_t>(n), fill);
  if (t) {
    const Tensor f = t->to(at::kFloat).contiguous();
    std::memcpy(v.data(), f.data_ptr<float>(), sizeof(float) * n);
  }
  return v;
}

// The per-row scale s[row / rows_per_sample] for rows [r0, r0 + rows), or ones.
void row_scales(const float* s, int64_t rps, int64_t r0, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = s ? s[(r0 + r) / rps] : 1.f;
}

// The float32 forward's work split. Token rows go in blocks of about `target` rows (the hidden
// tile's budget), their count a multiple of the thread count when there are only a few per thread
// (so no thread idles at the end). When there are fewer blocks than threads (a small batch at the
// late stages, where the weights are most of the memory read), the threads split the hidden chunks
// instead: each reads only its share of w1 and w2 and sums its share of fc2 into its own out.T; the
// shares are added in a fixed order afterwards (repeatable; the last bits depend on the thread
// count there, as at::mm's do).
struct WorkSplit {
  int64_t rows, blocks, groups;  // rows per block, row blocks, hidden-chunk groups per block
};
WorkSplit work_split(int64_t M, int64_t target, int64_t chunks) {
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  int64_t nb = (M + target - 1) / target;
  const int64_t groups = nb < T ? std::min(chunks, T / nb) : 1;
  if (groups == 1 && nb < 8 * T) nb = (nb + T - 1) / T * T;
  // A multiple of 16 tokens: the GEMMs' N dimension, whole AVX-512 vectors (tails ran ~10% slower).
  const int64_t R = std::min(M, ((M + nb - 1) / nb + 15) / 16 * 16);
  return {R, (M + R - 1) / R, groups};
}

// ---------------------------------------------------------------------------------- forward

void forward_f32(const Tensor& x, const Tensor& w1, const std::vector<float>& b1, const Tensor& w2,
                 const std::vector<float>& b2, const std::vector<float>& gamma, const OptTensor& shortcut,
                 const float* s, int64_t rps, const Dims& d, Tensor& out, float* hsave) {
  const int64_t M = d.M, C = d.C, Hd = d.Hd;
  const int64_t J = Hd <= kMaxChunk ? Hd : std::clamp<int64_t>(kPanelBytes / (4 * C) / 64 * 64, 64, Hd);
  const int64_t chunks = (Hd + J - 1) / J;
  const WorkSplit w = work_split(M, std::clamp<int64_t>(kTileBytes / (4 * J), kMinRows, kMaxRows), chunks);
  const int64_t R = w.rows, G = w.groups;
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  // Per thread: x.T (C x R), h.T (J x R), the row scales (R), out.T (C x R). With hidden groups,
  // each (block, group) unit has its own out.T instead, after the threads' scratch.
  const int64_t per_thread = R * (2 * C + J + 1);
  const Tensor scratch = at::empty({T * per_thread + (G > 1 ? w.blocks * G * C * R : 0)}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W1 = w1.data_ptr<float>();
  const float* W2 = w2.data_ptr<float>();
  const float* SC = shortcut ? shortcut->data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  float* S = scratch.data_ptr<float>();
  float* shares = S + T * per_thread;
  const int64_t ldx = row_stride(x), ldsc = shortcut ? row_stride(*shortcut) : C;
  const MlpOps& o = ops();
  const auto epilogue = [&](float* ot, float* rs, int64_t blk) {
    const int64_t r0 = blk * R, rows = std::min(R, M - r0);
    row_scales(s, rps, r0, rows, rs);
    o.epilogue_t(ot, R, rows, C, b2.data(), gamma.data(), rs, SC ? SC + r0 * ldsc : nullptr, ldsc, O + r0 * C, C);
  };
  at::parallel_for(0, w.blocks * G, 1, [&](int64_t first, int64_t last) {
    float* xt = S + at::get_thread_num() * per_thread;
    float* ht = xt + C * R;
    float* rs = ht + J * R;
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t blk = unit / G, g = unit % G;
      const int64_t r0 = blk * R, rows = std::min(R, M - r0);
      float* ot = G > 1 ? shares + unit * C * R : rs + R;
      o.transpose(X + r0 * ldx, ldx, rows, C, xt, R);
      const int64_t j_begin = g * chunks / G * J, j_end = std::min(Hd, (g + 1) * chunks / G * J);
      for (int64_t j0 = j_begin; j0 < j_end; j0 += J) {
        const int64_t n = std::min(J, Hd - j0);
        // h.T = w1[j0:j0+n] @ x.T ; out.T (+)= w2[:, j0:j0+n] @ GELU(h.T + b1)
        at::native::cpublas::brgemm(n, rows, C, C, R, R, false, W1 + j0 * C, xt, ht, false);
        o.bias_gelu_t(ht, R, n, rows, b1.data() + j0, hsave ? hsave + r0 * Hd + j0 : nullptr, Hd);
        at::native::cpublas::brgemm(C, rows, n, Hd, R, R, j0 > j_begin, W2 + j0, ht, ot, false);
      }
      if (G == 1) epilogue(ot, rs, blk);
    }
    at::native::cpublas::brgemm_release(false);
  });
  if (G == 1) return;
  at::parallel_for(0, w.blocks, 1, [&](int64_t first, int64_t last) {
    float* rs = S + at::get_thread_num() * per_thread + R * (C + J);
    for (int64_t blk = first; blk < last; ++blk) {
      float* ot = shares + blk * G * C * R;
      for (int64_t g = 1; g < G; ++g) {
        const float* share = ot + g * C * R;
        for (int64_t i = 0; i < C * R; ++i) ot[i] += share[i];
      }
      epilogue(ot, rs, blk);
    }
  });
}

// a = GELU(h + bias) over all rows (bf16, in parallel row blocks; bias null: already in h); a may
// be h. Returns a.
const Tensor& a_after_gelu(const Tensor& h, const Tensor& a, const Dims& d, const float* bias) {
  const BF* src = h.data_ptr<BF>();
  BF* dst = a.data_ptr<BF>();
  const MlpOps& o = ops();
  at::parallel_for(0, (d.M + kBwdRows - 1) / kBwdRows, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t r0 = b * kBwdRows, rows = std::min(kBwdRows, d.M - r0);
      o.gelu_bf16(src + r0 * d.Hd, d.Hd, dst + r0 * d.Hd, d.Hd, rows, d.Hd, bias);
    }
  });
  return a;
}

// The epilogue pass over contiguous output rows (M x C), in place, in parallel 256-row blocks:
// o = ((o + b2) * gamma) * s[row // rps] + shortcut (sc: rows of stride ldsc, or null).
template <class T>
void epilogue_rows(T* O, int64_t M, int64_t C, const float* b2, const std::vector<float>& gamma, const float* s,
                   int64_t rps, const T* sc, int64_t ldsc) {
  const MlpOps& o = ops();
  at::parallel_for(0, (M + kBwdRows - 1) / kBwdRows, 1, [&](int64_t first, int64_t last) {
    float rs[kBwdRows];
    for (int64_t b = first; b < last; ++b) {
      const int64_t r0 = b * kBwdRows, rows = std::min(kBwdRows, M - r0);
      row_scales(s, rps, r0, rows, rs);
      const T* scb = sc ? sc + r0 * ldsc : nullptr;
      if constexpr (std::is_same_v<T, float>)
        o.epilogue_f32(O + r0 * C, C, rows, C, b2, gamma.data(), rs, scb, ldsc);
      else
        o.epilogue_bf16(O + r0 * C, C, rows, C, b2, gamma.data(), rs, scb, ldsc);
    }
  });
}

// Rows of hidden activation per oneDNN call: the hidden chunk (rows x Hd) stays in L2 / L3 between
// fc1 and fc2, and one buffer of this size is reused call after call (a whole-matrix hidden
// activation, tens of MB at batch 8, was fresh memory every call, a page fault per 4 KB).
constexpr int64_t kHiddenChunkBytes = 4 << 20;

// Whether a float32 forward (or a bf16 one widened to float32) runs forward_onednn: inference
// (no h kept) below kOneDnnMaxRowsF32 rows.
bool f32_on_onednn(int64_t M, bool save_hidden) {
  return !save_hidden && M < kOneDnnMaxRowsF32 && onednn_linear_available();
}

// The MLP on oneDNN's prepacked GEMMs (onednn_linear) in row chunks: fc1 with GELU as its post-op,
// fc2 with its bias (and `add` as a binary-add post-op when given); done(r0, rows, part) takes each
// chunk's (rows, C) output, in row order.
template <class T, class Done>
void onednn_chunks(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                   const OptTensor& add, const Dims& d, const Done& done) {
  const Tensor xc = x.contiguous(), p1 = onednn_weight(w1), p2 = onednn_weight(w2);
  const int64_t chunk = std::max<int64_t>(256, kHiddenChunkBytes / (d.Hd * static_cast<int64_t>(sizeof(T))));
  for (int64_t r0 = 0; r0 < d.M; r0 += chunk) {
    const int64_t rows = std::min(chunk, d.M - r0);
    const Tensor a = onednn_linear(xc.narrow(0, r0, rows), p1, b1, /*gelu=*/true);
    done(r0, rows, add ? onednn_linear_add(a, add->narrow(0, r0, rows), p2, b2) : onednn_linear(a, p2, b2, false));
  }
}

// The forward without a saved h on oneDNN's prepacked GEMMs with fused post-ops (onednn_linear),
// in row chunks. With no layer scale and no per-sample scale (inference of a folded block) fc2 adds
// the shortcut itself; otherwise the epilogue pass applies them (fc2's bias is already in its output).
template <class T>
void forward_onednn(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                    const OptTensor& b2, const std::vector<float>& gamma, const OptTensor& shortcut, const float* s,
                    int64_t rps, const Dims& d, Tensor& out) {
  const int64_t M = d.M, C = d.C;
  const bool plain_epilogue = s == nullptr && std::all_of(gamma.begin(), gamma.end(), [](float g) { return g == 1.f; });
  const OptTensor sc = shortcut ? OptTensor(shortcut->contiguous()) : OptTensor();
  onednn_chunks<T>(x, w1, b1, w2, b2, plain_epilogue ? sc : OptTensor(), d,
                   [&](int64_t r0, int64_t rows, const Tensor& part) {
                     if (rows == M)
                       out = part;
                     else
                       out.narrow(0, r0, rows).copy_(part);
                   });
  if (plain_epilogue) return;
  const std::vector<float> zeros(static_cast<size_t>(C), 0.f);  // fc2's bias is in out already
  epilogue_rows<T>(out.data_ptr<T>(), M, C, zeros.data(), gamma, s, rps, sc ? sc->data_ptr<T>() : nullptr, C);
}

void forward_bf16(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                  const std::vector<float>& gamma, const OptTensor& shortcut, const float* s, int64_t rps,
                  const Dims& d, Tensor& out, const OptTensor& hsave) {
  const int64_t M = d.M, C = d.C, Hd = d.Hd;
  // Whole-matrix GEMMs (see the file comment): h -> GELU (one fused pass) -> fc2 -> epilogue (one
  // fused pass instead of eager's gamma and residual passes). The biases go into those passes, not
  // into the GEMMs: a bf16 at::addmm_out first copies the broadcast bias into its whole output (a slow
  // strided pass, then read again by the GEMM), while the passes read each element anyway. Only a
  // kept h (training) must hold its bias, so fc1 adds it there.
  Tensor h = hsave ? *hsave : at::empty({M, Hd}, x.options());
  std::vector<float> b1v;
  if (b1 && hsave) {
    at::addmm_out(h, *b1, x, w1.t());
  } else {
    at::mm_out(h, x, w1.t());
    if (b1) b1v = vec_f32(b1, Hd, 0.f);
  }
  Tensor a = hsave ? at::empty({M, Hd}, x.options()) : h;  // GELU in place unless h is kept
  at::mm_out(out, a_after_gelu(h, a, d, b1v.empty() ? nullptr : b1v.data()), w2.t());
  const std::vector<float> b2v = vec_f32(b2, C, 0.f);
  epilogue_rows<BF>(out.data_ptr<BF>(), M, C, b2v.data(), gamma, s, rps, shortcut ? shortcut->data_ptr<BF>() : nullptr,
                    shortcut ? row_stride(*shortcut) : C);
}

// ---------------------------------------------------------------------------------- backward

// Fixed 256-row blocks over M; fn(block, r0, rows) runs each once, in parallel; the caller sums the
// per-block partials in block order.
template <class Fn>
void for_row_blocks(int64_t M, const Fn& fn) {
  const int64_t nb = (M + kBwdRows - 1) / kBwdRows;
  at::parallel_for(0, nb, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) fn(b, b * kBwdRows, std::min(kBwdRows, M - b * kBwdRows));
  });
}

// The backward's GEMMs on brgemm (MKL's sgemm, what at::mm runs, reached a third of its speed on an
// AVX-512 AMD CPU), every operand as stored or as made by this file, results repeatable and
// independent of the thread count: each output element is one fixed sequence of brgemm calls.

// C (M x N) = A (M x K) @ B (K x N), row-major fp32. Threads take blocks of rows; each walks B in
// panels that stay in L2 (N and K chunks; the K chunks accumulate in order) over its blocks.
void mm_nn(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
           int64_t ldc) {
  constexpr int64_t kRows = 64;
  const int64_t nJ = std::min<int64_t>(N, 256), kJ = std::clamp<int64_t>(kPanelBytes / (4 * nJ), 16, K);
  at::parallel_for(0, (M + kRows - 1) / kRows, 1, [&](int64_t first, int64_t last) {
    for (int64_t n0 = 0; n0 < N; n0 += nJ)
      for (int64_t k0 = 0; k0 < K; k0 += kJ)
        for (int64_t b = first; b < last; ++b) {
          const int64_t r0 = b * kRows;
          at::native::cpublas::brgemm(std::min(kRows, M - r0), std::min(nJ, N - n0), std::min(kJ, K - k0), lda, ldb,
                                      ldc, k0 > 0, A + r0 * lda + k0, B + k0 * ldb + n0, C + r0 * ldc + n0, false);
        }
    at::native::cpublas::brgemm_release(false);
  });
}

// C (P x N) = At (P x K) @ B (K x N), a sum over K tokens (the weight gradients, At a transposed
// activation). Threads take tiles of C, each summing its K chunks in order: no cross-thread sums.
void mm_reduce(int64_t P, int64_t N, int64_t K, const float* At, int64_t ldat, const float* B, int64_t ldb,
               float* C, int64_t ldc) {
  constexpr int64_t pJ = 256, nJ = 64, kJ = 256;
  const int64_t pt = (P + pJ - 1) / pJ, nt = (N + nJ - 1) / nJ;
  at::parallel_for(0, pt * nt, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t p0 = t / nt * pJ, n0 = t % nt * nJ;
      for (int64_t k0 = 0; k0 < K; k0 += kJ)
        at::native::cpublas::brgemm(std::min(pJ, P - p0), std::min(nJ, N - n0), std::min(kJ, K - k0), ldat, ldb,
                                    ldc, k0 > 0, At + p0 * ldat + k0, B + k0 * ldb + n0, C + p0 * ldc + n0, false);
    }
    at::native::cpublas::brgemm_release(false);
  });
}

// dst (cols x rows) = the transpose of a contiguous fp32 (rows x cols) matrix, in parallel row blocks.
void transpose_into(const float* src, int64_t rows, int64_t cols, float* dst) {
  const MlpOps& o = ops();
  at::parallel_for(0, (rows + kBwdRows - 1) / kBwdRows, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t r0 = b * kBwdRows;
      o.transpose(src + r0 * cols, cols, std::min(kBwdRows, rows - r0), cols, dst + r0, rows);
    }
  });
}

// Sum of the (nb, n) partials over blocks, in block order, accumulated in double.
Tensor sum_partials(const std::vector<float>& partials, int64_t nb, int64_t n) {
  std::vector<double> acc(static_cast<size_t>(n), 0.0);
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t c = 0; c < n; ++c) acc[c] += partials[b * n + c];
  Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  float* p = out.data_ptr<float>();
  for (int64_t c = 0; c < n; ++c) p[c] = static_cast<float>(acc[c]);
  return out;
}

// ---------------------------------------------------------------------------------- bf16 on CPUs without bf16 dot products

// The bf16 forward without bf16 dot products: the fp32 kernel on widened inputs, each output
// rounded once to bf16 (the result is the fp32 kernel's, to bf16's precision).
void forward_bf16_via_f32(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                          const OptTensor& b2, const std::vector<float>& gamma, const OptTensor& shortcut,
                          const float* s, int64_t rps, const Dims& d, Tensor& out, const OptTensor& hsave) {
  // The fp32 copies come from the output pool: at batch 8 fresh memory for them cost more than
  // the conversions themselves.
  const auto widen_rows = [](const Tensor& t) {
    Tensor f = empty_pooled(t.sizes(), at::kFloat);
    f.copy_(t);
    return f;
  };
  const Tensor xf = widen_rows(x);
  const OptTensor scf = shortcut ? OptTensor(widen_rows(*shortcut)) : OptTensor();
  Tensor outf = empty_pooled({d.M, d.C}, at::kFloat);
  Tensor hf = hsave ? empty_pooled({d.M, d.Hd}, at::kFloat) : Tensor();
  if (f32_on_onednn(d.M, hsave.has_value())) {  // as a float32 call would run
    const auto f32 = [](const OptTensor& t) { return t ? OptTensor(t->to(at::kFloat)) : OptTensor(); };
    forward_onednn<float>(xf, widened(w1), f32(b1), widened(w2), f32(b2), gamma, scf, s, rps, d, outf);
  } else {
    forward_f32(xf, widened(w1), vec_f32(b1, d.Hd, 0.f), widened(w2), vec_f32(b2, d.C, 0.f), gamma, scf, s, rps, d,
                outf, hsave ? hf.data_ptr<float>() : nullptr);
  }
  out.copy_(outf);
  if (hsave) hsave->copy_(hf);
}

}  // namespace

std::tuple<Tensor, OptTensor> mlp_forward(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                                          const OptTensor& b2, const OptTensor& gamma, const OptTensor& shortcut,
                                          const OptTensor& sample_scale, int64_t rows_per_sample, bool save_hidden) {
  const Dims d = check_inputs(x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample);
  if (shortcut) check_rows(*shortcut, "shortcut", d.M, d.C, x);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: nothing here is differentiated
  Tensor out = empty_pooled({d.M, d.C}, x.scalar_type());
  OptTensor hsave;
  if (save_hidden) hsave = at::empty({d.M, d.Hd}, x.options());
  if (d.M == 0) return {out, hsave};
  const float* s = sample_scale ? sample_scale->data_ptr<float>() : nullptr;
  const std::vector<float> gvec = vec_f32(gamma, d.C, 1.f);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (bf16 ? !save_hidden && native_bf16_dot() && onednn_linear_available() : f32_on_onednn(d.M, save_hidden)) {
    if (bf16)
      forward_onednn<BF>(x, w1, b1, w2, b2, gvec, shortcut, s, rows_per_sample, d, out);
    else
      forward_onednn<float>(x, w1, b1, w2, b2, gvec, shortcut, s, rows_per_sample, d, out);
  } else if (x.scalar_type() == at::kFloat) {
    forward_f32(x, w1, vec_f32(b1, d.Hd, 0.f), w2, vec_f32(b2, d.C, 0.f), gvec, shortcut, s, rows_per_sample, d,
                out, hsave ? hsave->data_ptr<float>() : nullptr);
  } else if (native_bf16_dot()) {
    forward_bf16(x, w1, b1, w2, b2, gvec, shortcut, s, rows_per_sample, d, out, hsave);
  } else {
    forward_bf16_via_f32(x, w1, b1, w2, b2, gvec, shortcut, s, rows_per_sample, d, out, hsave);
  }
  return {out, hsave};
}

Tensor mlp_forward_promoted(const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
                            const OptTensor& b2, const OptTensor& gamma, const Tensor& shortcut) {
  const Dims d = check_inputs(x, w1, b1, w2, b2, OptTensor(), OptTensor(), 1);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "convnext_fast mlp (CPU): the promoted forward takes bfloat16 x, got ",
              x.scalar_type());
  TORCH_CHECK(shortcut.scalar_type() == at::kFloat || shortcut.scalar_type() == at::kBFloat16,
              "convnext_fast mlp (CPU): shortcut must be float32 or bfloat16, got ", shortcut.scalar_type());
  check_rows(shortcut, "shortcut", d.M, d.C, shortcut);
  if (gamma) {
    TORCH_CHECK(gamma->scalar_type() == at::kFloat && gamma->dim() == 1 && gamma->size(0) == d.C && gamma->is_cpu(),
                "convnext_fast mlp (CPU): gamma must be a float32 (C,) CPU tensor with C=", d.C, ", got ",
                gamma->scalar_type(), " of shape ", gamma->sizes());
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Tensor out = empty_pooled({d.M, d.C}, at::kFloat);
  if (d.M == 0) return out;
  const std::vector<float> g = vec_f32(gamma, d.C, 1.f);
  const MlpOps& o = ops();
  const bool f32_sc = shortcut.scalar_type() == at::kFloat;
  const int64_t ldsc = row_stride(shortcut);
  // out rows [r0, r0 + rows) from the branch's rows z (bf16, row stride d.C).
  const auto residual = [&](int64_t r0, int64_t rows, const Tensor& z) {
    const uint16_t* zb = reinterpret_cast<const uint16_t*>(z.data_ptr<BF>());
    at::parallel_for(0, (rows + kBwdRows - 1) / kBwdRows, 1, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t q0 = b * kBwdRows, n = std::min(kBwdRows, rows - q0), r = r0 + q0;
        float* dst = out.data_ptr<float>() + r * d.C;
        if (f32_sc)
          o.promoted_residual_f32(zb + q0 * d.C, d.C, shortcut.data_ptr<float>() + r * ldsc, ldsc, g.data(), n, d.C,
                                  dst, d.C);
        else
          o.promoted_residual_bf16(zb + q0 * d.C, d.C,
                                   reinterpret_cast<const uint16_t*>(shortcut.data_ptr<BF>()) + r * ldsc, ldsc,
                                   g.data(), n, d.C, dst, d.C);
      }
    });
  };
  if (native_bf16_dot() && onednn_linear_available()) {
    onednn_chunks<BF>(x, w1, b1, w2, b2, OptTensor(), d, residual);  // each chunk's branch still in cache
  } else {
    const Tensor z = std::get<0>(mlp_forward(x, w1, b1, w2, b2, OptTensor(), OptTensor(), OptTensor(), 1, false));
    residual(0, d.M, z);
  }
  return out;
}

std::tuple<Tensor, Tensor, OptTensor, Tensor, OptTensor, OptTensor> mlp_backward(
    const Tensor& grad_out, const Tensor& x, const Tensor& w1, const OptTensor& b1, const Tensor& w2,
    const OptTensor& b2, const OptTensor& gamma, const OptTensor& sample_scale, int64_t rows_per_sample,
    const OptTensor& h) {
  const Dims d = check_inputs(x, w1, b1, w2, b2, gamma, sample_scale, rows_per_sample);
  const int64_t M = d.M, C = d.C, Hd = d.Hd;
  check_rows(grad_out, "grad_out", M, C, x);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: nothing here is differentiated
  if (h) check_rows(*h, "h", M, Hd, x);
  const auto f32 = [](const Tensor& t) { return t.to(at::kFloat); };
  const at::TensorOptions fopt = at::TensorOptions().dtype(at::kFloat);
  const float* s = sample_scale ? sample_scale->data_ptr<float>() : nullptr;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const MlpOps& o = ops();

  // gs = grad_out * s[row] and its column sums.
  const int64_t nb = (M + kBwdRows - 1) / kBwdRows;
  // Every (M, C) and (M, Hd) temporary is the calling thread's memory kept between calls
  // (cpu_memory.h: fresh memory of this size cost a page fault per 4 KB, half of the backward's
  // time at ConvNeXt-T stage 1).
  const mem::Workspace<float, 8> gs_ws(static_cast<size_t>(M * C));
  float* const gs = gs_ws.data();
  std::vector<float> part_gs(static_cast<size_t>(nb * C), 0.f);
  {
    const int64_t ldg = row_stride(grad_out);
    for_row_blocks(M, [&](int64_t b, int64_t r0, int64_t rows) {
      std::vector<float> rs(static_cast<size_t>(rows));
      row_scales(s, rows_per_sample, r0, rows, rs.data());
      float* dst = gs + r0 * C;
      if (bf16)
        o.scale_colsum_bf16(grad_out.data_ptr<BF>() + r0 * ldg, ldg, rows, C, rs.data(), dst, &part_gs[b * C]);
      else
        o.scale_colsum_f32(grad_out.data_ptr<float>() + r0 * ldg, ldg, rows, C, rs.data(), dst, &part_gs[b * C]);
    });
  }
  const Tensor sum_gs = sum_partials(part_gs, nb, C);

  const Tensor xf = f32(x).contiguous(), w1f = f32(w1), w2f = f32(w2);
  const OptTensor gf = gamma ? OptTensor(f32(*gamma)) : OptTensor();
  // Pre-activation: saved, or fc1 again.
  Tensor hf;
  if (h) {
    hf = h->contiguous();
  } else {
    hf = b1 ? at::addmm(f32(*b1), xf, w1f.t()) : at::mm(xf, w1f.t());
  }
  // ga = gs @ (gamma * w2): gamma folded into the (C, Hd) weight.
  const float* w2g = w2f.data_ptr<float>();
  const mem::Workspace<float, 12> w2g_ws(static_cast<size_t>(gf ? C * Hd : 0));
  if (gf) {
    const float* gp = gf->data_ptr<float>();
    float* dst = w2g_ws.data();
    at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t j = 0; j < Hd; ++j) dst[c * Hd + j] = w2g[c * Hd + j] * gp[c];
    });
    w2g = dst;
  }
  const mem::Workspace<float, 9> ga_ws(static_cast<size_t>(M * Hd));
  const mem::Workspace<float, 10> a_ws(static_cast<size_t>(M * Hd));
  float* const ga = ga_ws.data();
  float* const a = a_ws.data();
  mm_nn(M, Hd, C, gs, C, w2g, Hd, ga, Hd);
  std::vector<float> part_gh(static_cast<size_t>(nb * Hd), 0.f);
  for_row_blocks(M, [&](int64_t b, int64_t r0, int64_t rows) {
    float* gap = ga + r0 * Hd;
    float* ap = a + r0 * Hd;
    if (hf.scalar_type() == at::kBFloat16)
      o.gelu_bwd_bf16(hf.data_ptr<BF>() + r0 * Hd, gap, ap, rows, Hd, &part_gh[b * Hd]);
    else
      o.gelu_bwd_f32(hf.data_ptr<float>() + r0 * Hd, gap, ap, rows, Hd, &part_gh[b * Hd]);
  });
  const float* const gh = ga;  // ga * GELU'(h), in place
  // P = gs.T @ a (C, Hd) and gw1 = gh.T @ x = (x.T @ gh).T, both sums over the M tokens. P is
  // made in gw2's memory: gw2 = gamma[:, None] * P, in place once ggamma has read P.
  Tensor gw2 = at::empty({C, Hd}, fopt);
  float* const P = gw2.data_ptr<float>();
  const mem::Workspace<float, 13> gw1t_ws(static_cast<size_t>(C * Hd));
  const mem::Workspace<float, 11> t_ws(static_cast<size_t>(M * C));  // gs.T, then x.T
  transpose_into(gs, M, C, t_ws.data());
  mm_reduce(C, Hd, M, t_ws.data(), M, a, Hd, P, Hd);
  transpose_into(xf.data_ptr<float>(), M, C, t_ws.data());
  mm_reduce(C, Hd, M, t_ws.data(), M, gh, Hd, gw1t_ws.data(), Hd);
  const Tensor gb2 = gf ? sum_gs * *gf : sum_gs;
  OptTensor ggamma;
  if (gf) {
    // ggamma[c] = sum_j w2[c, j] * P[c, j] (+ b2[c] * sum gs[:, c]); each row's dot in float64,
    // then the row of P scaled into gw2.
    Tensor gg = at::empty({C}, fopt);
    const float* w2p = w2f.data_ptr<float>();
    const float* gp = gf->data_ptr<float>();
    float* ggp = gg.data_ptr<float>();
    at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double dot = 0.0;
        for (int64_t j = 0; j < Hd; ++j) dot += static_cast<double>(w2p[c * Hd + j]) * P[c * Hd + j];
        ggp[c] = static_cast<float>(dot);
        for (int64_t j = 0; j < Hd; ++j) P[c * Hd + j] *= gp[c];
      }
    });
    if (b2) gg = gg + f32(*b2) * sum_gs;
    ggamma = gg;
  }
  Tensor gw1 = at::empty({Hd, C}, fopt);
  transpose_into(gw1t_ws.data(), C, Hd, gw1.data_ptr<float>());
  Tensor gx = at::empty({M, C}, fopt);  // gh @ w1
  mm_nn(M, C, Hd, gh, Hd, w1f.data_ptr<float>(), C, gx.data_ptr<float>(), C);
  const auto back = [&](const Tensor& t) { return t.to(x.scalar_type()); };
  OptTensor gb1_out, gb2_out, gg_out;
  if (b1) gb1_out = back(sum_partials(part_gh, nb, Hd));
  if (b2) gb2_out = back(gb2);
  if (ggamma) gg_out = back(*ggamma);
  return {back(gx), back(gw1), gb1_out, back(gw2), gb2_out, gg_out};
}

const char* bf16_compute() { return native_bf16_dot() ? "bf16" : "fp32"; }

}  // namespace convnext_fast_cpu
