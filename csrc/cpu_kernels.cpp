// CPU kernels of convnext_fast._C (see cpu_kernels.h for the API).
//
// Liu et al., "A ConvNet for the 2020s", CVPR 2022: depthwise 7x7 conv + channels-first LayerNorm.
//
// Structure. All arithmetic runs on small fp32 (fp64 for double tensors) row buffers that stay in
// L1/L2: an input row (one (n, h) line of W pixels x C channels, NHWC) is converted once into a
// zero-padded scratch row of Lp pixels x Cp channels (Cp = C rounded up to 16, K//2 zero pixels on
// the left, zeros on the right), so the inner loops have no bounds checks and no channel tails. A
// per-thread ring of such rows holds the input rows the current output rows need; moving down
// converts each input row once, so every input element is read from memory once per pass.
//
// The conv kernels work on bands of up to 8 output rows of one image (parallel tasks are bands)
// with channel-blocked ring rows (16 channels of a row contiguous), K = 3/5/7 compiled with the
// kernel row's weights and a block of output pixels x channel chunks in registers, each input
// vector loaded once per pixel block (sliding window); the weight gradient's row kernel likewise
// keeps the K tap sums of a kernel row in registers while a block of gradient pixels slides over
// the input. Where the pixel block divides W and C needs no padding, the conv writes its output
// rows straight into the result. Scratch buffers are per thread and reused across calls (no
// allocation or zero-fill per call), 64-byte aligned.
//
// The row kernels (conv_row, wgrad_row, ln_fwd_row, ln_bwd_row, load_blocked) use GCC vector
// extensions and are compiled three times: AVX-512 (V = 16 floats), AVX2+FMA (V = 8) and baseline
// x86-64 / any other architecture (V = 4), chosen at run time from the CPU (no -march flag: the
// binary stays portable). bf16 tensors are widened to fp32 rows and narrowed back by vector code
// of the same three builds (Bf16Ops; c10::BFloat16's rounding, bit for bit); fp16 converts
// element by element (correct, not tuned).
//
// The fused dwconv + LayerNorm forward computes the conv of a band into a cache-resident buffer
// and normalizes it there before the single write of y: the conv output never goes to memory.
//
// Threads: par_for splits work over torch's intra-op threads with at::parallel_for. With torch's
// OpenMP backend that is a header template over `#pragma omp parallel`, so setup.py compiles this
// file with -fopenmp (without it, it would silently run on one thread).
//
// Determinism: weight/bias gradients are reductions over N*H*W. Rows are split into blocks that
// depend only on the shape (never on the thread count); each block writes its own partial sums and
// the partials are added in block order. No atomics, bitwise reproducible.
#include "cpu_kernels.h"
#include "cpu_vec.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <memory>
#include <new>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_memory.h"

#define CF_AI inline __attribute__((always_inline))

namespace convnext_fast_cpu {
namespace {

using namespace mem;

constexpr int64_t kCAlign = 16;  // Cp: channels rounded up to this (a multiple of every V below)
constexpr int kWB = 8;           // output pixels per register block in conv_row
constexpr int kKB = 8;           // kernel taps per register block in wgrad_row

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

template <class A, int V>
struct Vec {
  typedef A type __attribute__((vector_size(V * sizeof(A))));
};

template <class VT, class A>
CF_AI VT ld(const A* p) {
  VT v;
  std::memcpy(&v, p, sizeof(VT));
  return v;
}
template <class VT, class A>
CF_AI void st(A* p, VT v) {
  std::memcpy(p, &v, sizeof(VT));
}
template <class VT, int V>
CF_AI auto hsum(VT v) -> decltype(v[0] + v[0]) {
  decltype(v[0] + v[0]) s = 0;
  for (int i = 0; i < V; ++i) s += v[i];
  return s;
}

// Horizontal sum as a tree (halves added pairwise: log2(V) dependent adds instead of V).
template <class A, int V>
CF_AI A hsum_tree(typename Vec<A, V>::type v) {
  if constexpr (V == 2) {
    return v[0] + v[1];
  } else {
    typedef typename Vec<A, V / 2>::type half;
    half lo, hi;
    std::memcpy(&lo, &v, sizeof(half));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(half), sizeof(half));
    return hsum_tree<A, V / 2>(lo + hi);
  }
}

// Memory the caller touches right after a conv row: the next input row it converts (read) and
// the output row it writes (write). conv_row spreads prefetches for them over its channel chunks,
// so these transfers overlap the arithmetic instead of stalling the row load / LayerNorm store.
struct Prefetch {
  const char* rd;
  int64_t rd_bytes;
  const char* wr;
  int64_t wr_bytes;
};

// Part k of n of the prefetches, spread over the row's work (a burst of many outstanding
// prefetches stalls on the line fill buffers). No divisions: part k covers lines
// [k * per, (k + 1) * per) with per = ceil(lines / n).
struct PrefetchSplit {
  int64_t per_rd, per_wr;
};
CF_AI PrefetchSplit prefetch_split(const Prefetch* pf, int64_t n) {
  if (!pf) return {0, 0};
  const int64_t lr = (pf->rd_bytes + 63) / 64, lw = (pf->wr_bytes + 63) / 64;
  return {(lr + n - 1) / n, (lw + n - 1) / n};
}
CF_AI void prefetch_part(const Prefetch* pf, const PrefetchSplit& sp, int64_t k) {
  const char* e = pf->rd + pf->rd_bytes;
  for (const char *p = pf->rd + k * sp.per_rd * 64, *q = p + sp.per_rd * 64; p < q && p < e; p += 64)
    __builtin_prefetch(p, 0, 3);
  e = pf->wr + pf->wr_bytes;
  for (const char *p = pf->wr + k * sp.per_wr * 64, *q = p + sp.per_wr * 64; p < q && p < e; p += 64)
    __builtin_prefetch(p, 1, 3);
}

// ---------------------------------------------------------------------------------- row kernels
// Buffers: a padded input row holds pixel iw at index iw + K/2 (stride Cp); out/g rows hold pixel w
// at index w. rows[kh] is the padded input row at ih = h + kh - K/2, or null when outside the image.

// Conv input rows are stored channel-blocked: a padded row holds channel c of padded pixel p at
// (c / kCAlign) * Lp * kCAlign + p * kCAlign + c % kCAlign (Lp padded pixels per row). Sweeping one
// V-channel chunk along a row then reads consecutive 64-byte lines (the pixel-major layout read one
// line every Cp * 4 bytes: for C = 384 / 768 these strides alias onto 8 / 4 of the 64 L1 sets, so
// the K x (WB + K - 1) lines of a pixel block did not fit in L1 and every load went to L2).
//
// out[w][c] = bias[c] + sum_{kh,kw} rows[kh][w + kw][c] * wt[kh][kw][c] for w < round_up(W, WB);
// wt is channel-blocked too (see prep_weight): the K*K taps of a kCAlign-channel block contiguous,
// so every weight load of a block is a constant offset from one pointer.
// out is pixel-major (stride Cp). Every output value accumulates bias, then the taps in (kh, kw)
// order with one FMA each, whatever the kernel variant below: all variants give identical bits.

// Fixed K and WB: WB output pixels x NC chunks of V channels of accumulators and the K weights of
// one kernel row per chunk stay in registers; each input vector of the row is loaded once per
// pixel block and feeds up to K FMAs (sliding window), so the loop is FMA-bound instead of
// load-bound. Each accumulator is a chain of K*K dependent FMAs (4-cycle latency): NC * WB >= 14
// independent chains keep both FMA ports busy where WB alone (7 or 8) left them half idle.
// Processes channels [c0, c0 + NC * V); pk counts prefetch slots (one per kernel row).
// ROW: the block is the whole row (W == WB). Then the first and last KK/2 padded input columns
// are zeros by construction, and their loads and FMAs are skipped: at W = 7 that is 12 of the 49
// taps per output on average (adding 0 * w leaves the sum's bits unchanged for finite w).
template <class A, int V, int KK, int WB, int NC, bool ROW = false>
CF_AI void conv_chunks(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp, int64_t Lp,
                       int64_t c0, const Prefetch* pf, const PrefetchSplit& pfs, int64_t& pk, int64_t R,
                       int64_t ors) {
  typedef typename Vec<A, V>::type vec;
  int64_t boff[NC];
  const A* wc[NC];
  vec b0[NC];
#pragma GCC unroll 4
  for (int n = 0; n < NC; ++n) {
    const int64_t c = c0 + n * V;
    boff[n] = (c / kCAlign) * Lp * kCAlign + c % kCAlign;
    wc[n] = wt + (c / kCAlign) * KK * KK * kCAlign + c % kCAlign;
    b0[n] = vec{};
    if (bias) b0[n] = ld<vec>(bias + c);
  }
  for (int64_t w0 = 0; w0 < W; w0 += WB)
  for (int64_t rr = 0; rr < R; ++rr) {
    vec acc[NC][WB];
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) {
#pragma GCC unroll 32
      for (int j = 0; j < WB; ++j) acc[n][j] = b0[n];
    }
    for (int kh = 0; kh < KK; ++kh) {
      if (pf) prefetch_part(pf, pfs, pk);
      ++pk;
      const A* r = rows[rr + kh];
      if (!r) continue;
      vec wv[NC][KK];
      const A* xp[NC];
#pragma GCC unroll 4
      for (int n = 0; n < NC; ++n) {
        const A* wp = wc[n] + kh * KK * kCAlign;
        xp[n] = r + boff[n] + w0 * kCAlign;
        // Opaque base pointers: every load below is then base + constant (GCC otherwise hoists
        // the per-pixel offsets out of the kh loop into registers and spills them).
        asm("" : "+r"(wp), "+r"(xp[n]));
#pragma GCC unroll 32
        for (int kw = 0; kw < KK; ++kw) wv[n][kw] = ld<vec>(wp + kw * kCAlign);
      }
#pragma GCC unroll 64
      for (int i = 0; i < WB + KK - 1; ++i) {
        if (ROW && (i < KK / 2 || i >= WB + KK / 2)) continue;  // compile-time: padding column
#pragma GCC unroll 4
        for (int n = 0; n < NC; ++n) {
          const vec xv = ld<vec>(xp[n] + i * kCAlign);
#pragma GCC unroll 32
          for (int kw = 0; kw < KK; ++kw) {
            const int j = i - kw;
            if (j >= 0 && j < WB) acc[n][j] += xv * wv[n][kw];
          }
        }
      }
    }
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) {
#pragma GCC unroll 32
      for (int j = 0; j < WB; ++j) st(out + rr * ors + (w0 + j) * Cp + c0 + n * V, acc[n][j]);
    }
  }
}

// A band of R output rows: output row rr uses rows[rr .. rr + K - 1] and goes to out + rr * ors.
// For each channel group and pixel block, all R output rows are computed before moving on, so the
// (R + K - 1) rows x (WB + K - 1) pixels slice they read stays in L1: each input line comes from
// L2 about (WB + K - 1) / WB times per band instead of K times (once per output row; the ring of a
// 768-channel row is 300 KB and lives in L2).
template <class A, int V, int KK, int WB, int NC, bool ROW = false>
CF_AI void conv_row_fixed(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp,
                          int64_t Lp, const Prefetch* pf, int64_t R, int64_t ors) {
  const int64_t nch = Cp / V, groups = nch / NC + nch % NC, nwb = (W + WB - 1) / WB;
  const PrefetchSplit pfs = prefetch_split(pf, groups * nwb * KK * R);
  int64_t pk = 0, c0 = 0;
  for (; c0 + NC * V <= Cp; c0 += NC * V)
    conv_chunks<A, V, KK, WB, NC, ROW>(rows, wt, bias, out, W, Cp, Lp, c0, pf, pfs, pk, R, ors);
  for (; c0 < Cp; c0 += V)
    conv_chunks<A, V, KK, WB, 1, ROW>(rows, wt, bias, out, W, Cp, Lp, c0, pf, pfs, pk, R, ors);
}

// Any K: kWB output pixels x V channels of accumulators across all K*K taps, weights reloaded.
template <class A, int V>
CF_AI void conv_row_any1(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp,
                         int64_t K, int64_t Lp, const Prefetch* pf) {
  typedef typename Vec<A, V>::type vec;
  const PrefetchSplit pfs = prefetch_split(pf, Cp / V);
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    if (pf) prefetch_part(pf, pfs, c0 / V);
    const int64_t boff = (c0 / kCAlign) * Lp * kCAlign + c0 % kCAlign;
    for (int64_t w0 = 0; w0 < W; w0 += kWB) {
      vec acc[kWB];
      vec b0 = {};
      if (bias) b0 = ld<vec>(bias + c0);
      for (int j = 0; j < kWB; ++j) acc[j] = b0;
      for (int64_t kh = 0; kh < K; ++kh) {
        const A* r = rows[kh];
        if (!r) continue;
        const A* rp = r + boff + w0 * kCAlign;
        const A* wp = wt + (c0 / kCAlign) * K * K * kCAlign + c0 % kCAlign + kh * K * kCAlign;
        for (int64_t kw = 0; kw < K; ++kw) {
          const vec wv = ld<vec>(wp + kw * kCAlign);
          const A* xp = rp + kw * kCAlign;
          for (int j = 0; j < kWB; ++j) acc[j] += ld<vec>(xp + j * kCAlign) * wv;
        }
      }
      for (int j = 0; j < kWB; ++j) st(out + (w0 + j) * Cp + c0, acc[j]);
    }
  }
}

template <class A, int V>
CF_AI void conv_row_any(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp,
                        int64_t K, int64_t Lp, const Prefetch* pf, int64_t R, int64_t ors) {
  for (int64_t rr = 0; rr < R; ++rr)
    conv_row_any1<A, V>(rows + rr, wt, bias, out + rr * ors, W, Cp, K, Lp, rr == 0 ? pf : nullptr);
}

// Output pixels per register block of conv_row_impl for this W and K: sized to the vector register
// file (32 registers for V = 16 / AVX-512, 16 otherwise) and, for K = 7, to W (multiples of 14 and
// 7, e.g. ConvNeXt's 56, 28, 14, 7, use 14- and 7-pixel blocks: no wasted columns). The conv writes
// round_up(W, block) pixels per output row; conv_rows writes straight into y when block divides W.
template <int V>
int conv_pixel_block(int64_t W, int64_t K) {
  if (K != 7) return kWB;  // K = 3, 5 and conv_row_any
  if (V != 16) return 4;
  if (W % 14 == 0) return 14;
  if (W % 7 == 0) return 7;
  if (W % 16 == 0) return 16;
  return kWB;
}

// Runs the variant conv_pixel_block picked. K = 7, V = 16 blocks of 7 or 14 pixels (2 or 1 chunks
// of channels: 14 accumulators either way) that cover the whole row skip its padding columns.
template <class A, int V>
CF_AI void conv_row_impl(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp,
                         int64_t K, int64_t Lp, const Prefetch* pf, int64_t R, int64_t ors) {
  const int wb = conv_pixel_block<V>(W, K);
  if (K == 7 && V == 16) {
    if (wb == 14 && W == 14)
      conv_row_fixed<A, V, 7, 14, 1, true>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
    else if (wb == 14)
      conv_row_fixed<A, V, 7, 14, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
    else if (wb == 7 && W == 7)
      conv_row_fixed<A, V, 7, 7, 2, true>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
    else if (wb == 7)
      conv_row_fixed<A, V, 7, 7, 2>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
    else if (wb == 16)
      conv_row_fixed<A, V, 7, 16, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
    else
      conv_row_fixed<A, V, 7, kWB, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
  } else if (K == 7) {
    conv_row_fixed<A, V, 7, 4, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
  } else if (K == 3) {
    conv_row_fixed<A, V, 3, kWB, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
  } else if (K == 5) {
    conv_row_fixed<A, V, 5, kWB, 1>(rows, wt, bias, out, W, Cp, Lp, pf, R, ors);
  } else {
    conv_row_any<A, V>(rows, wt, bias, out, W, Cp, K, Lp, pf, R, ors);
  }
}

// part[kh][kw][c] += sum_w g[w][c] * rows[kh][w + kw][c] (kw padded to Kp = round_up(K, kKB); the
// extra taps read zeros and are ignored); the bias partial is wgrad_row_impl's.
// g holds round_up(W, kWB) pixels (stride Cp), zero past W; rows are pixel-major padded rows.
//
// Any K: kKB tap sums in registers per pass over the row; every tap re-loads its input vector.
template <class A, int V>
CF_AI void wgrad_row_any(const A* g, const A* const* rows, A* part, int64_t W, int64_t Cp, int64_t K) {
  typedef typename Vec<A, V>::type vec;
  const int64_t Kp = round_up(K, kKB);
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    for (int64_t kh = 0; kh < K; ++kh) {
      const A* r = rows[kh];
      if (!r) continue;
      for (int64_t kw0 = 0; kw0 < Kp; kw0 += kKB) {
        A* pp = part + (kh * Kp + kw0) * Cp + c0;
        vec acc[kKB];
        for (int t = 0; t < kKB; ++t) acc[t] = ld<vec>(pp + t * Cp);
        const A* rp = r + kw0 * Cp + c0;
        for (int64_t w = 0; w < W; ++w) {
          const vec gv = ld<vec>(g + w * Cp + c0);
          const A* xp = rp + w * Cp;
          for (int t = 0; t < kKB; ++t) acc[t] += gv * ld<vec>(xp + t * Cp);
        }
        for (int t = 0; t < kKB; ++t) st(pp + t * Cp, acc[t]);
      }
    }
  }
}

// Fixed K (the fast path; the same sums in another order): per V-channel chunk and kernel row, the
// K tap sums stay in registers while WB pixels of g (a sliding window) meet the WB + K - 1 input
// vectors they touch: each input and gradient vector is loaded once per pixel block and feeds up
// to K FMAs, where wgrad_row_any loads an input vector per FMA. NS sets of tap sums (pixels
// alternate between them)
// make NS * K independent FMA chains; the sets are added at the end of the row, in a fixed order.
// Pixels past W have g = 0 (and padded input 0), so blocks may run past the row.
// The input rows are channel-blocked (BlockRing, Lp padded pixels; see conv_row_fixed): a chunk's
// pixels are consecutive 64-byte lines. Pixel-major rows put them C * 4 bytes apart, which for
// C = 384 / 768 maps the 7 rows' lines onto 8 / 4 of the 64 L1 sets (every load from L2).
template <class A, int V, int KK, int WB, int NS>
CF_AI void wgrad_row_fixed(const A* g, const A* const* rows, A* part, int64_t W, int64_t Cp, int64_t Lp) {
  typedef typename Vec<A, V>::type vec;
  const int64_t Kp = round_up(KK, kKB);
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    for (int kh = 0; kh < KK; ++kh) {
      const A* r = rows[kh];
      if (!r) continue;
      A* pp = part + kh * Kp * Cp + c0;
      vec acc[NS][KK];
#pragma GCC unroll 32
      for (int kw = 0; kw < KK; ++kw) {
        acc[0][kw] = ld<vec>(pp + kw * Cp);
#pragma GCC unroll 4
        for (int n = 1; n < NS; ++n) acc[n][kw] = vec{};
      }
      for (int64_t w0 = 0; w0 < W; w0 += WB) {
        const A* gp = g + w0 * Cp + c0;
        const A* xp = r + (c0 / kCAlign) * Lp * kCAlign + c0 % kCAlign + w0 * kCAlign;
        vec gv[WB];
#pragma GCC unroll 32
        for (int j = 0; j < WB; ++j) gv[j] = ld<vec>(gp + j * Cp);
#pragma GCC unroll 64
        for (int i = 0; i < WB + KK - 1; ++i) {
          const vec xv = ld<vec>(xp + i * kCAlign);
#pragma GCC unroll 32
          for (int kw = 0; kw < KK; ++kw) {
            const int j = i - kw;
            if (j >= 0 && j < WB) acc[j % NS][kw] += gv[j] * xv;
          }
        }
      }
#pragma GCC unroll 32
      for (int kw = 0; kw < KK; ++kw) {
        vec t = acc[0][kw];
#pragma GCC unroll 4
        for (int n = 1; n < NS; ++n) t += acc[n][kw];
        st(pp + kw * Cp, t);
      }
    }
  }
}

// Whether wgrad_row_impl runs wgrad_row_fixed for this K (its input rows are then channel-blocked,
// else pixel-major: dwconv_wgrad builds the matching ring).
inline bool wgrad_fixed_k(int64_t K) { return K == 3 || K == 5 || K == 7; }

// Picks the variant: with 32 vector registers (V = 16) two sets of tap sums and 7- or 8-pixel
// blocks (K = 7: 14 sums + 8 gradients + 1 input = 23 registers); with 16, one set of 4 pixels.
// The bias partial (partb[c] += sum_w g[w][c]) is summed here, then the taps by either kernel.
template <class A, int V>
CF_AI void wgrad_row_impl(const A* g, const A* const* rows, A* part, A* partb, int64_t W, int64_t Cp,
                          int64_t K, int64_t Lp) {
  typedef typename Vec<A, V>::type vec;
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    vec sb = ld<vec>(partb + c0);
    for (int64_t w = 0; w < W; ++w) sb += ld<vec>(g + w * Cp + c0);
    st(partb + c0, sb);
  }
  constexpr bool wide = V == 16;
  if (K == 7) {
    if (wide && W % 7 == 0)
      wgrad_row_fixed<A, V, 7, 7, 2>(g, rows, part, W, Cp, Lp);
    else if (wide)
      wgrad_row_fixed<A, V, 7, 8, 2>(g, rows, part, W, Cp, Lp);
    else
      wgrad_row_fixed<A, V, 7, 4, 1>(g, rows, part, W, Cp, Lp);
  } else if (K == 5) {
    wgrad_row_fixed<A, V, 5, wide ? 8 : 4, wide ? 2 : 1>(g, rows, part, W, Cp, Lp);
  } else if (K == 3) {
    wgrad_row_fixed<A, V, 3, wide ? 8 : 4, wide ? 2 : 1>(g, rows, part, W, Cp, Lp);
  } else {
    wgrad_row_any<A, V>(g, rows, part, W, Cp, K);
  }
}

// LayerNorm over the C channels of each of W pixels of z, in place: z <- (z - mean) * rstd * g + b.
// Two passes over the cache-resident pixel (mean, then centred variance): no E[x^2] - mean^2.
// mask[c] = 1 for c < C, 0 in the padding (whose z is 0 but whose z - mean is not).
// P pixels at a time: their sums are P independent dependency chains (one pixel's chain of Cp / V
// dependent adds is latency-bound); each pixel's own summation order is unchanged.
template <class A, int V, int P>
CF_AI void ln_fwd_pixels(A* z, const A* g, const A* b, const A* mask, int64_t C, int64_t Cp, double eps, A* mean,
                         A* rstd, A* dst, int64_t ds) {
  typedef typename Vec<A, V>::type vec;
  vec s[P], q[P];
  A m[P], rs[P];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) s[p] = vec{};
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) s[p] += ld<vec>(z + p * Cp + c0);
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    m[p] = hsum_tree<A, V>(s[p]) / static_cast<A>(C);
    q[p] = vec{};
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    const vec mk = ld<vec>(mask + c0);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const vec d = (ld<vec>(z + p * Cp + c0) - m[p]) * mk;
      q[p] += d * d;
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    const A var = hsum_tree<A, V>(q[p]) / static_cast<A>(C);
    rs[p] = static_cast<A>(1) / std::sqrt(var + static_cast<A>(eps));
    mean[p] = m[p];
    rstd[p] = rs[p];
  }
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    const vec gv = ld<vec>(g + c0), bv = ld<vec>(b + c0);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) st(dst + p * ds + c0, (ld<vec>(z + p * Cp + c0) - m[p]) * rs[p] * gv + bv);
  }
}

// The result goes to dst (pixel stride ds; dst = z, ds = Cp: in place).
template <class A, int V>
CF_AI void ln_fwd_row_impl(A* z, const A* g, const A* b, const A* mask, int64_t W, int64_t C, int64_t Cp,
                           double eps, A* mean, A* rstd, A* dst, int64_t ds) {
  int64_t w = 0;
#define CF_LN_PIX(P) \
  ln_fwd_pixels<A, V, P>(z + w * Cp, g, b, mask, C, Cp, eps, mean + w, rstd + w, dst + w * ds, ds)
  for (; w + 8 <= W; w += 8) CF_LN_PIX(8);
  switch (W - w) {
    case 7: CF_LN_PIX(7); break;
    case 6: CF_LN_PIX(6); break;
    case 5: CF_LN_PIX(5); break;
    case 4: CF_LN_PIX(4); break;
    case 3: CF_LN_PIX(3); break;
    case 2: CF_LN_PIX(2); break;
    case 1: CF_LN_PIX(1); break;
    default: break;
  }
#undef CF_LN_PIX
}

// LayerNorm backward for W pixels: xhat = (z - mean) * rstd, gxhat = gy * g,
// gz = rstd * (gxhat - mean_c(gxhat) - xhat * mean_c(gxhat * xhat)) (written to gz, zero padding),
// pw[c] += gy * xhat, pb[c] += gy.
template <class A, int V>
CF_AI void ln_bwd_row_impl(const A* z, const A* gy, const A* g, const A* mask, const A* mean, const A* rstd,
                           int64_t W, int64_t C, int64_t Cp, A* gz, A* pw, A* pb) {
  typedef typename Vec<A, V>::type vec;
  const A inv_c = static_cast<A>(1) / static_cast<A>(C);
  for (int64_t w = 0; w < W; ++w) {
    const A* zp = z + w * Cp;
    const A* gp = gy + w * Cp;
    const A m = mean[w], rs = rstd[w];
    A* op = gz + w * Cp;
    vec s1 = {}, s2 = {};
    for (int64_t c0 = 0; c0 < Cp; c0 += V) {
      const vec xh = (ld<vec>(zp + c0) - m) * rs;
      const vec gv = ld<vec>(gp + c0);
      const vec gx = gv * ld<vec>(g + c0);
      // Park the rounded gy * g in gz: the second pass must subtract its mean from exactly the
      // values that were summed (an FMA-contracted recomputation leaves a residual that rstd
      // amplifies, e.g. for C = 1 where the exact gradient is 0).
      st(op + c0, gx);
      s1 += gx;
      s2 += gx * xh;
      st(pw + c0, ld<vec>(pw + c0) + gv * xh);
      st(pb + c0, ld<vec>(pb + c0) + gv);
    }
    const A c1 = hsum<vec, V>(s1) * inv_c, c2 = hsum<vec, V>(s2) * inv_c;
    for (int64_t c0 = 0; c0 < Cp; c0 += V) {
      const vec xh = (ld<vec>(zp + c0) - m) * rs;
      const vec gx = ld<vec>(op + c0);
      st(op + c0, (gx - c1 - xh * c2) * rs * ld<vec>(mask + c0));
    }
  }
}

// bfloat16 <-> fp32, V lanes at a time, bit for bit what c10::BFloat16 does (widening is a 16-bit
// shift; narrowing rounds to nearest even, NaN -> 0x7FC0); bf16 travels as its uint16_t bits.
using simd::bf16_bits_to_f32;

template <int V>
CF_AI typename Vec<float, V>::type bf16_to_f32(const uint16_t* p) {
  typedef typename Vec<uint16_t, V>::type h16;  // (a vector_size typedef inside a template
  typedef typename Vec<uint32_t, V>::type w32;  // function is not a vector to GCC 12)
  h16 h;
  std::memcpy(&h, p, sizeof(h));
  const w32 w = __builtin_convertvector(h, w32) << 16;
  typename Vec<float, V>::type f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}

template <int V>
CF_AI void f32_to_bf16(uint16_t* p, typename Vec<float, V>::type f) {
  typedef typename Vec<uint16_t, V>::type h16;
  typedef typename Vec<uint32_t, V>::type w32;
  w32 u;
  std::memcpy(&u, &f, sizeof(u));
  const w32 rounded = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16;
  const w32 qnan = w32{} + 0x7FC0u;
  const w32 r = f != f ? qnan : rounded;  // f != f: all-ones lanes where f is NaN
  const h16 h = __builtin_convertvector(r, h16);
  std::memcpy(p, &h, sizeof(h));
}

// V source elements (S = A: as they are; S = uint16_t: bf16 bits, widened) as accumulation values.
template <class A, int V, class S>
CF_AI typename Vec<A, V>::type load_as(const S* p) {
  if constexpr (std::is_same<S, A>::value)
    return ld<typename Vec<A, V>::type>(p);
  else
    return bf16_to_f32<V>(p);
}
template <class A, class S>
CF_AI A widen(S v) {
  if constexpr (std::is_same<S, A>::value)
    return v;
  else
    return bf16_bits_to_f32(v);
}

// Input row (W pixels x C channels, NHWC; element type A, or bf16 bits for A = float) ->
// channel-blocked padded row (see conv_row_fixed): real pixels and channels only; the zero padding
// around them is left as it is.
template <class A, int V, class S = A>
CF_AI void load_blocked_impl(const S* src, int64_t W, int64_t C, A* dst, int64_t Lp, int64_t p) {
  const int64_t Cf = C / kCAlign * kCAlign;
  for (int64_t w = 0; w < W; ++w) {
    const S* sp = src + w * C;
    A* dp = dst + (p + w) * kCAlign;
    for (int64_t cb = 0; cb < Cf; cb += kCAlign) {
#pragma GCC unroll 16
      for (int64_t l = 0; l < kCAlign; l += V) st(dp + cb * Lp + l, load_as<A, V>(sp + cb + l));
    }
    for (int64_t c = Cf; c < C; ++c) dp[Cf * Lp + c - Cf] = widen<A>(sp[c]);
  }
}

template <class A>
struct RowOps {
  void (*conv_row)(const A* const*, const A*, const A*, A*, int64_t, int64_t, int64_t, int64_t, const Prefetch*,
                   int64_t, int64_t);
  void (*wgrad_row)(const A*, const A* const*, A*, A*, int64_t, int64_t, int64_t, int64_t);
  void (*ln_fwd_row)(A*, const A*, const A*, const A*, int64_t, int64_t, int64_t, double, A*, A*, A*, int64_t);
  void (*ln_bwd_row)(const A*, const A*, const A*, const A*, const A*, const A*, int64_t, int64_t, int64_t, A*,
                     A*, A*);
  void (*load_blocked)(const A*, int64_t, int64_t, A*, int64_t, int64_t);
  int (*conv_block)(int64_t, int64_t);
  const char* name;
};

#define CF_DEFINE_ROW_OPS(NAME, ATTR, A, V)                                                              \
  ATTR void conv_row_##NAME(const A* const* r, const A* wt, const A* b, A* o, int64_t W, int64_t Cp,       \
                            int64_t K, int64_t Lp, const Prefetch* pf, int64_t R, int64_t ors) {         \
    conv_row_impl<A, V>(r, wt, b, o, W, Cp, K, Lp, pf, R, ors);                                          \
  }                                                                                                      \
  ATTR void wgrad_row_##NAME(const A* g, const A* const* r, A* p, A* pb, int64_t W, int64_t Cp,            \
                             int64_t K, int64_t Lp) {                                                    \
    wgrad_row_impl<A, V>(g, r, p, pb, W, Cp, K, Lp);                                                     \
  }                                                                                                      \
  ATTR void ln_fwd_row_##NAME(A* z, const A* g, const A* b, const A* m, int64_t W, int64_t C, int64_t Cp, \
                              double eps, A* mean, A* rstd, A* dst, int64_t ds) {                        \
    ln_fwd_row_impl<A, V>(z, g, b, m, W, C, Cp, eps, mean, rstd, dst, ds);                               \
  }                                                                                                      \
  ATTR void ln_bwd_row_##NAME(const A* z, const A* gy, const A* g, const A* mk, const A* mean,            \
                              const A* rstd, int64_t W, int64_t C, int64_t Cp, A* gz, A* pw, A* pb) {    \
    ln_bwd_row_impl<A, V>(z, gy, g, mk, mean, rstd, W, C, Cp, gz, pw, pb);                               \
  }                                                                                                      \
  ATTR void load_blocked_##NAME(const A* s, int64_t W, int64_t C, A* d, int64_t Lp, int64_t p) {         \
    load_blocked_impl<A, V>(s, W, C, d, Lp, p);                                                          \
  }                                                                                                      \
  const RowOps<A> row_ops_##NAME = {conv_row_##NAME,    wgrad_row_##NAME,        ln_fwd_row_##NAME,      \
                                    ln_bwd_row_##NAME,  load_blocked_##NAME,     conv_pixel_block<V>,    \
                                    #NAME};

CF_DEFINE_ROW_OPS(generic, , float, 4)
CF_DEFINE_ROW_OPS(f64, , double, 2)
#if defined(__x86_64__) && defined(__GNUC__)
#define CF_X86_ISA 1
CF_DEFINE_ROW_OPS(avx2, __attribute__((target("arch=x86-64-v3"))), float, 8)
CF_DEFINE_ROW_OPS(avx512, __attribute__((target("arch=x86-64-v4"))), float, 16)
#endif

const RowOps<float>& pick_float_ops() {
  const char* env = std::getenv("CONVNEXT_FAST_CPU_ISA");
  const std::string want = env ? env : "";
#ifdef CF_X86_ISA
  __builtin_cpu_init();
  const bool v4 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (v4 && (want.empty() || want == "avx512")) return row_ops_avx512;
  if (v3 && (want.empty() || want == "avx512" || want == "avx2")) return row_ops_avx2;
#endif
  return row_ops_generic;
}

template <class A>
const RowOps<A>& row_ops();
template <>
const RowOps<float>& row_ops<float>() {
  static const RowOps<float>& ops = pick_float_ops();
  return ops;
}
template <>
const RowOps<double>& row_ops<double>() {
  return row_ops_f64;
}

// ---------------------------------------------------------------------------------- bf16 rows

// Whole bf16 rows converted with the vector primitives above (the channel-blocked load is
// load_blocked_impl's). Element by element, these conversions with the channel-blocked index math
// took most of the bf16 conv's time.

// load_row for bf16: W pixels x C channels -> fp32 rows of stride Cp.
template <int V>
CF_AI void bf16_load_row_impl(const uint16_t* src, int64_t W, int64_t C, float* dst, int64_t Cp) {
  typedef typename Vec<float, V>::type vec;
  const int64_t Cv = C / V * V;
  for (int64_t w = 0; w < W; ++w) {
    const uint16_t* sp = src + w * C;
    float* dp = dst + w * Cp;
    for (int64_t c = 0; c < Cv; c += V) st<vec>(dp + c, bf16_to_f32<V>(sp + c));
    for (int64_t c = Cv; c < C; ++c) dp[c] = bf16_bits_to_f32(sp[c]);
  }
}

// store_row for bf16: fp32 rows of stride Cp -> W pixels x C channels.
template <int V>
CF_AI void bf16_store_row_impl(const float* src, int64_t W, int64_t C, int64_t Cp, uint16_t* dst) {
  typedef typename Vec<float, V>::type vec;
  const int64_t Cv = C / V * V;
  for (int64_t w = 0; w < W; ++w) {
    const float* sp = src + w * Cp;
    uint16_t* dp = dst + w * C;
    for (int64_t c = 0; c < Cv; c += V) f32_to_bf16<V>(dp + c, ld<vec>(sp + c));
    for (int64_t c = Cv; c < C; ++c) dp[c] = c10::BFloat16(sp[c]).x;
  }
}

struct Bf16Ops {
  void (*load_blocked)(const uint16_t*, int64_t, int64_t, float*, int64_t, int64_t);
  void (*load_row)(const uint16_t*, int64_t, int64_t, float*, int64_t);
  void (*store_row)(const float*, int64_t, int64_t, int64_t, uint16_t*);
};

#define CF_DEFINE_BF16_OPS(NAME, ATTR, V)                                                                \
  ATTR void bf16_load_blocked_##NAME(const uint16_t* s, int64_t W, int64_t C, float* d, int64_t Lp,       \
                                     int64_t p) {                                                        \
    load_blocked_impl<float, V>(s, W, C, d, Lp, p);                                                        \
  }                                                                                                      \
  ATTR void bf16_load_row_##NAME(const uint16_t* s, int64_t W, int64_t C, float* d, int64_t Cp) {         \
    bf16_load_row_impl<V>(s, W, C, d, Cp);                                                               \
  }                                                                                                      \
  ATTR void bf16_store_row_##NAME(const float* s, int64_t W, int64_t C, int64_t Cp, uint16_t* d) {        \
    bf16_store_row_impl<V>(s, W, C, Cp, d);                                                              \
  }                                                                                                      \
  const Bf16Ops bf16_ops_##NAME = {bf16_load_blocked_##NAME, bf16_load_row_##NAME, bf16_store_row_##NAME};

CF_DEFINE_BF16_OPS(generic, , 4)
#ifdef CF_X86_ISA
CF_DEFINE_BF16_OPS(avx2, __attribute__((target("arch=x86-64-v3"))), 8)
CF_DEFINE_BF16_OPS(avx512, __attribute__((target("arch=x86-64-v4"))), 16)
#endif

// The same instruction set as the fp32 row kernels (row_ops<float>, CONVNEXT_FAST_CPU_ISA).
const Bf16Ops& bf16_ops() {
  static const Bf16Ops& ops = [] () -> const Bf16Ops& {
    const std::string isa = row_ops<float>().name;
#ifdef CF_X86_ISA
    if (isa == "avx512") return bf16_ops_avx512;
    if (isa == "avx2") return bf16_ops_avx2;
#endif
    return bf16_ops_generic;
  }();
  return ops;
}

template <class S>
constexpr bool is_bf16 = std::is_same<S, c10::BFloat16>::value;

inline const uint16_t* bf16_bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
inline uint16_t* bf16_bits(c10::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }

// ---------------------------------------------------------------------------------- memory, threads

// f(begin, end) over [0, n) split into one contiguous range per thread (torch's intra-op thread
// count). The split does not affect results: every kernel's reductions are shape-only.
template <class F>
void par_for(int64_t n, const F& f) {
  if (n <= 0) return;
  at::parallel_for(0, n, 1, f);
}

// ---------------------------------------------------------------------------------- conversions

template <class T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

// dst[w][c] = src[w][c] for c < C (dst stride Cp; the padding of dst is left untouched, i.e. zero).
template <class S, class A>
void load_row(const S* src, int64_t W, int64_t C, A* dst, int64_t Cp) {
  if constexpr (is_bf16<S> && std::is_same<A, float>::value) {
    bf16_ops().load_row(bf16_bits(src), W, C, dst, Cp);
    return;
  }
  for (int64_t w = 0; w < W; ++w) {
    const S* s = src + w * C;
    A* d = dst + w * Cp;
    if constexpr (std::is_same<S, A>::value) {
      std::memcpy(d, s, sizeof(A) * C);
    } else {
      for (int64_t c = 0; c < C; ++c) d[c] = static_cast<A>(s[c]);
    }
  }
}

template <class A, class T>
void store_row(const A* src, int64_t W, int64_t C, int64_t Cp, T* dst) {
  if constexpr (is_bf16<T> && std::is_same<A, float>::value) {
    bf16_ops().store_row(src, W, C, Cp, bf16_bits(dst));
    return;
  }
  for (int64_t w = 0; w < W; ++w) {
    const A* s = src + w * Cp;
    T* d = dst + w * C;
    if constexpr (std::is_same<T, A>::value) {
      std::memcpy(d, s, sizeof(A) * C);
    } else {
      for (int64_t c = 0; c < C; ++c) d[c] = static_cast<T>(s[c]);
    }
  }
}

// Depthwise weight (C, 1, K, K) -> channel-blocked taps: tap t = kh * K + kw of channel c at
// (c / kCAlign) * K*K * kCAlign + t * kCAlign + c % kCAlign (channels C..Cp-1 zero); flipped
// (tap t takes w's tap K*K-1-t, i.e. kh -> K-1-kh and kw -> K-1-kw) for the input gradient, which
// is the conv of gy with the flipped kernel.
template <class T, class A>
void prep_weight_into(const T* w, int64_t C, int64_t Cp, int64_t K, bool flip, A* wt) {
  const int64_t KK = K * K;
  for (int64_t c0 = 0; c0 < Cp; c0 += kCAlign) {
    const int64_t c1 = std::min(C, c0 + kCAlign);
    A* blk = wt + c0 * KK;
    if (c1 - c0 < kCAlign) std::memset(blk, 0, sizeof(A) * KK * kCAlign);  // channels >= C: zero
    for (int64_t c = c0; c < c1; ++c) {
      const T* src = w + c * KK;
      A* d = blk + (c - c0);
      for (int64_t t = 0; t < KK; ++t) d[(flip ? KK - 1 - t : t) * kCAlign] = static_cast<A>(src[t]);
    }
  }
}

template <class T, class A>
avec<A> prep_weight(const T* w, int64_t C, int64_t Cp, int64_t K, bool flip) {
  avec<A> wt(K * K * Cp);
  prep_weight_into<T, A>(w, C, Cp, K, flip, wt.data());
  return wt;
}

template <class T, class A>
avec<A> prep_vec(const T* v, int64_t C, int64_t Cp, A fill_absent = A(0)) {
  avec<A> out(Cp, A(0));
  for (int64_t c = 0; c < C; ++c) out[c] = v ? static_cast<A>(v[c]) : fill_absent;
  return out;
}

// NaN and Inf taps. The conv multiplies the zero padding like the real pixels (what float64
// F.conv2d computes): 0 * NaN and 0 * Inf are NaN, so an output whose window puts a NaN or Inf tap
// over the padding is NaN. The row kernels skip the padding rows (and the padding columns of
// whole-row blocks) for speed, so PadNaN finds the channels with a non-finite tap in the prepared
// weights and marks those outputs afterwards: output (h, w) of such a channel is NaN when a
// non-finite tap's kernel row lies over a padding row, or its kernel column over a padding column.
// For finite weights (the normal case) it is one pass over the C*K*K taps and holds nothing.
template <class A>
struct PadNaN {
  int64_t H, W;
  std::vector<int64_t> chans;       // channels with a NaN or Inf tap
  std::vector<uint8_t> rows, cols;  // [i][H], [i][W]: the padding products of chans[i] are NaN there

  // wt: channel-blocked taps (prep_weight, flipped or not: the flags follow the taps as applied).
  PadNaN(const A* wt, int64_t C, int64_t H_, int64_t W_, int64_t K) : H(H_), W(W_) {
    const int64_t KK = K * K, P = K / 2;
    std::vector<uint8_t> bad_kh(static_cast<size_t>(K)), bad_kw(static_cast<size_t>(K));
    for (int64_t c = 0; c < C; ++c) {
      const A* taps = wt + (c / kCAlign) * KK * kCAlign + c % kCAlign;
      bool any = false;
      std::fill(bad_kh.begin(), bad_kh.end(), 0);
      std::fill(bad_kw.begin(), bad_kw.end(), 0);
      for (int64_t t = 0; t < KK; ++t) {
        if (std::isfinite(taps[t * kCAlign])) continue;
        bad_kh[t / K] = bad_kw[t % K] = 1;
        any = true;
      }
      if (!any) continue;
      chans.push_back(c);
      auto flags = [&](int64_t len, const std::vector<uint8_t>& bad, std::vector<uint8_t>& out) {
        for (int64_t i = 0; i < len; ++i) {
          uint8_t f = 0;
          for (int64_t k = 0; k < K; ++k) f |= bad[k] & uint8_t(i + k - P < 0 || i + k - P >= len);
          out.push_back(f);
        }
      };
      flags(H, bad_kh, rows);
      flags(W, bad_kw, cols);
    }
  }

  // Marks row h (of any image): W pixels at a stride of ps elements, channel c at offset c.
  template <class T>
  void mark_row(int64_t h, T* row, int64_t ps) const {
    for (size_t i = 0; i < chans.size(); ++i) {
      const bool in_row = rows[i * H + h];
      const uint8_t* in_col = cols.data() + i * W;
      for (int64_t w = 0; w < W; ++w)
        if (in_row || in_col[w]) row[w * ps + chans[i]] = static_cast<T>(std::numeric_limits<float>::quiet_NaN());
    }
  }

  // Marks a whole (N, H, W, C) output of type T.
  template <class T>
  void mark(T* out, int64_t N, int64_t C) const {
    if (chans.empty()) return;
    par_for(N * H, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) mark_row(r % H, out + r * W * C, C);
    });
  }
};

// A ring of K zero-padded input rows for one thread; row(n, ih) converts input row (n, ih) into its
// slot (ih mod K) unless it is already there. Consecutive output rows reuse K-1 of the K rows.
template <class S, class A>
struct RowRing {
  const S* src;
  int64_t H, W, C, Cp, K, Lp;
  std::vector<A> buf;
  std::vector<int64_t> held;
  std::vector<const A*> ptrs;

  RowRing(const S* src_, int64_t H_, int64_t W_, int64_t C_, int64_t Cp_, int64_t K_)
      : src(src_), H(H_), W(W_), C(C_), Cp(Cp_), K(K_),
        Lp(round_up(W_, kWB) + round_up(K_, kKB) + kKB),
        buf(static_cast<size_t>(K_ * Lp * Cp_), A(0)), held(K_, -1), ptrs(K_, nullptr) {}

  // Pointers to the K padded rows output row (n, h) needs (null outside the image).
  const A* const* rows_for(int64_t n, int64_t h) {
    const int64_t p = K / 2;
    for (int64_t kh = 0; kh < K; ++kh) {
      const int64_t ih = h + kh - p;
      if (ih < 0 || ih >= H) {
        ptrs[kh] = nullptr;
        continue;
      }
      const int64_t slot = ih % K, id = n * H + ih;
      A* dst = buf.data() + slot * Lp * Cp;
      if (held[slot] != id) {
        load_row(src + id * W * C, W, C, dst + p * Cp, Cp);
        held[slot] = id;
      }
      ptrs[kh] = dst;
    }
    return ptrs.data();
  }
};

// The same ring for the conv kernels, channel-blocked (see conv_row_fixed): slot kh holds padded
// pixels 0..Lp-1 (Lp = round_up(W, kWB) + K - 1, every register block variant reads below it),
// each kCAlign-channel block of a row contiguous. Loading a row writes only its W x C real values:
// the zero padding around them is written once, when the buffer is set up for this geometry (see
// conv_scratch), and never overwritten.
template <class S, class A>
struct BlockRing {
  const S* src;
  int64_t H, W, C, Cp, K, Lp, NS;  // NS slots: K + (band rows - 1)
  A* buf;            // NS * Lp * Cp elements, 64-byte aligned
  int64_t* held;     // NS
  const A** ptrs;    // NS

  static int64_t padded_len(int64_t W_, int64_t K_) { return round_up(W_, kWB) + K_ - 1; }
  static size_t elems(int64_t W_, int64_t Cp_, int64_t K_, int64_t NS_) {
    return static_cast<size_t>(NS_ * padded_len(W_, K_) * Cp_);
  }

  BlockRing(const S* src_, int64_t H_, int64_t W_, int64_t C_, int64_t Cp_, int64_t K_, int64_t NS_, A* buf_,
            int64_t* held_, const A** ptrs_)
      : src(src_), H(H_), W(W_), C(C_), Cp(Cp_), K(K_), Lp(padded_len(W_, K_)), NS(NS_), buf(buf_), held(held_),
        ptrs(ptrs_) {
    for (int64_t k = 0; k < NS; ++k) held[k] = -1;
  }

  void load(const S* s, A* dst) const {
    const int64_t p = K / 2;
    if constexpr (std::is_same<S, A>::value) {
      row_ops<A>().load_blocked(s, W, C, dst, Lp, p);
    } else if constexpr (is_bf16<S> && std::is_same<A, float>::value) {
      bf16_ops().load_blocked(bf16_bits(s), W, C, dst, Lp, p);
    } else {
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c)
          dst[(c / kCAlign) * Lp * kCAlign + (p + w) * kCAlign + c % kCAlign] = static_cast<A>(s[w * C + c]);
    }
  }

  // Pointers to the R + K - 1 padded rows output rows (n, h0 .. h0 + R - 1) need (null outside the
  // image; R + K - 1 <= NS).
  const A* const* rows_for_band(int64_t n, int64_t h0, int64_t R) {
    const int64_t p = K / 2;
    for (int64_t k = 0; k < R + K - 1; ++k) {
      const int64_t ih = h0 + k - p;
      if (ih < 0 || ih >= H) {
        ptrs[k] = nullptr;
        continue;
      }
      const int64_t slot = ih % NS, id = n * H + ih;
      A* dst = buf + slot * Lp * Cp;
      if (held[slot] != id) {
        load(src + id * W * C, dst);
        held[slot] = id;
      }
      ptrs[k] = dst;
    }
    return ptrs;
  }
  const A* const* rows_for(int64_t n, int64_t h) { return rows_for_band(n, h, 1); }
};

// Per-thread buffers of a BlockRing plus one conv output row (round_up(W, kWB) x Cp). They persist
// across calls; the ring is zeroed only when its geometry (or storage) differs from this thread's
// previous call, since rows only ever overwrite the real pixels x channels of their geometry.
template <class A>
struct ConvBuffers {
  A* ring;
  A* out;
  int64_t* held;
  const A** ptrs;
};
template <class A>
ConvBuffers<A> conv_scratch(int64_t W, int64_t C, int64_t Cp, int64_t K, int64_t R = 1) {
  struct Key {
    const void* base;
    int64_t W, C, K, NS;
  };
  thread_local Key last{nullptr, -1, -1, -1, -1};
  const int64_t NS = K + R - 1;
  const size_t nring = BlockRing<A, A>::elems(W, Cp, K, NS), nout = static_cast<size_t>(R * round_up(W, kWB) * Cp);
  A* base = scratch<A, 0>(nring + nout);
  if (last.base != base || last.W != W || last.C != C || last.K != K || last.NS != NS) {
    std::memset(base, 0, sizeof(A) * nring);
    last = Key{base, W, C, K, NS};
  }
  int64_t* held = scratch<int64_t, 1>(static_cast<size_t>(NS));
  const A** ptrs = const_cast<const A**>(scratch<A*, 2>(static_cast<size_t>(NS)));
  return {base, base + nring, held, ptrs};
}

// Output rows per band of conv_rows: at most 8 (the L1 slice of conv_row_fixed, 14 rows x 14
// pixels x 2 x 64 bytes = 25 KB; the out rows, R x W x Cp floats, stay in L2), bands of one image
// split evenly (56 -> 7 x 8, 28 -> 4 x 7, 14 -> 2 x 7, 7 -> 1 x 7).
inline int64_t band_rows(int64_t H) {
  const int64_t nb = (H + 7) / 8;
  return (H + nb - 1) / nb;
}

// Fixed, shape-only split of the N*H rows into blocks for deterministic partial sums. Each block's
// partial row (partial_elems) is zeroed, accumulated and summed once: at most max_blocks blocks, at
// most 16 MB of partials, and (from 16 blocks on) no more blocks than keep the partial row under
// 1/16 of a block's work (row_work per row: elements, or multiply-adds). Small maps with wide
// partials (the 7x7 stage's weight gradient: 44K floats per block) would otherwise spend as long on
// partials as on the rows. The block count is also the most threads a pass can use.
struct Blocks {
  int64_t count, rows_per;
};
Blocks make_blocks(int64_t rows, int64_t partial_elems, int64_t row_work, int64_t max_blocks = 64) {
  const int64_t part = std::max<int64_t>(1, partial_elems);
  const int64_t max_by_mem = std::max<int64_t>(1, (int64_t(16) << 20) / part);
  const int64_t max_by_work = std::max<int64_t>(16, rows * row_work / (16 * part));
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>({rows, max_blocks, max_by_mem, max_by_work}));
  const int64_t per = (rows + want - 1) / want;
  return {(rows + per - 1) / per, per};
}

// out[i] = sum_b part[b * stride + i] in block order (deterministic), for i < n.
// Block by block over a contiguous range of i (vectorized, each block's partial row read once in
// order); every out[i] still adds its partials in block order, so the bits do not change. (Summing
// one i at a time read one float per block at a stride of a whole partial row: at ConvNeXt's
// 14x14 stage that loop was a quarter of the CPU conv backward.)
template <class A>
void reduce_partials(const A* part, int64_t nblk, int64_t stride, int64_t n, A* out) {
  par_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = 0;
    for (int64_t k = 0; k < nblk; ++k) {
      const A* pk = part + k * stride;
      for (int64_t i = b; i < e; ++i) out[i] += pk[i];
    }
  });
}

// ---------------------------------------------------------------------------------- drivers

// For every output row r = n*H + h: out = conv of src rows (padded ring) with wt (+ bias), then
// epi(r, out) consumes the row buffer (W pixels x Cp channels).
// out_base/out_row_bytes: where epi writes row r (out_base + r * out_row_bytes), for prefetching.
// direct: if not null, the (N, H, W, C) output in the accumulation type with C == Cp; when the
// conv's pixel block divides W the conv then writes its rows there and epi is not called (one pass
// over the output instead of a row buffer copied out: a plain memcpy of the whole output was 16%
// of the CPU conv backward's time).
// Work is split into bands of R output rows of one image (see band_rows); epi(r, row) is called
// for every output row r = n*H + h of the band, in order, after the whole band is convolved.
template <class S, class A, class Epi>
void conv_rows(const S* src, const A* wt, const A* bias, const Shape& s, int64_t Cp, const void* out_base,
               int64_t out_row_bytes, Epi epi, A* direct = nullptr) {
  const RowOps<A>& ops = row_ops<A>();
  const int64_t rows = s.N * s.H, in_row = s.W * s.C;
  const int64_t R = band_rows(s.H), nb = (s.H + R - 1) / R;
  const int64_t ors = round_up(s.W, kWB) * Cp;
  const bool to_out = direct != nullptr && s.W % ops.conv_block(s.W, s.K) == 0;
  par_for(s.N * nb, [&](int64_t b, int64_t e) {
    const ConvBuffers<A> sb = conv_scratch<A>(s.W, s.C, Cp, s.K, R);
    BlockRing<S, A> ring(src, s.H, s.W, s.C, Cp, s.K, s.K + R - 1, sb.ring, sb.held, sb.ptrs);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / nb, h0 = (t % nb) * R, Rb = std::min(R, s.H - h0), r0 = n * s.H + h0;
      // The next band needs input rows from r0 + Rb + K/2 on (within an image; across the boundary
      // the next image's first rows, close enough).
      const int64_t nxt = std::min(r0 + Rb + s.K / 2, rows - 1), nrd = std::min(Rb, rows - nxt);
      const Prefetch pf{reinterpret_cast<const char*>(src + nxt * in_row), nrd * in_row * int64_t(sizeof(S)),
                        static_cast<const char*>(out_base) + r0 * out_row_bytes, Rb * out_row_bytes};
      const A* const* rp = ring.rows_for_band(n, h0, Rb);
      if (to_out) {
        ops.conv_row(rp, wt, bias, direct + r0 * in_row, s.W, Cp, s.K, ring.Lp, &pf, Rb, in_row);
        continue;
      }
      ops.conv_row(rp, wt, bias, sb.out, s.W, Cp, s.K, ring.Lp, &pf, Rb, ors);
      for (int64_t rr = 0; rr < Rb; ++rr) epi(r0 + rr, sb.out + rr * ors);
    }
  });
}

// Depthwise weight/bias gradient of y = conv(x) given gy (S: gy element type), into gw (C,1,K,K)
// and gb (C,) of type T.
template <class T, class S, class A>
void dwconv_wgrad(const S* gy, const T* x, const Shape& s, int64_t Cp, T* gw, T* gb) {
  const RowOps<A>& ops = row_ops<A>();
  const int64_t K = s.K, Kp = round_up(K, kKB);
  const int64_t stride = K * Kp * Cp + Cp;  // per block: taps, then the bias partial
  // At most 16 blocks: the weight gradient's partial rows are wide (K * round_up(K, 8) + 1 floats per
  // channel), and zeroing and summing them grows with the block count: at the late stages that
  // cost outweighs more parallelism. The price: this pass uses at most 16 threads.
  const Blocks blk = make_blocks(s.N * s.H, stride, s.W * Cp * K * K, /*max_blocks=*/16);
  // The partial rows (at most 16 MB, see make_blocks) live in the calling thread's scratch slot 4:
  // reused across calls instead of fresh, page-faulted memory each time; zeroed here.
  A* part = scratch<A, 4>(static_cast<size_t>(blk.count * stride));
  std::memset(part, 0, sizeof(A) * blk.count * stride);
  // Runs the rows of this thread's blocks with `ring` (rows_for(n, h) and its padded length Lp).
  auto run_blocks = [&](int64_t b, int64_t e, auto& ring, int64_t Lp) {
    // round_up(W, kWB) pixels, zero past W: wgrad_row_fixed's pixel blocks may run past the row.
    std::vector<A> g(static_cast<size_t>(round_up(s.W, kWB) * Cp), A(0));
    for (int64_t bi = b; bi < e; ++bi) {
      A* pp = part + bi * stride;
      const int64_t r1 = std::min(s.N * s.H, (bi + 1) * blk.rows_per);
      for (int64_t r = bi * blk.rows_per; r < r1; ++r) {
        load_row(gy + r * s.W * s.C, s.W, s.C, g.data(), Cp);
        ops.wgrad_row(g.data(), ring.rows_for(r / s.H, r % s.H), pp, pp + K * Kp * Cp, s.W, Cp, K, Lp);
      }
    }
  };
  par_for(blk.count, [&](int64_t b, int64_t e) {
    if (wgrad_fixed_k(K)) {  // channel-blocked rows, in the thread's conv scratch
      const ConvBuffers<A> sb = conv_scratch<A>(s.W, s.C, Cp, K);
      BlockRing<T, A> ring(x, s.H, s.W, s.C, Cp, K, K, sb.ring, sb.held, sb.ptrs);
      run_blocks(b, e, ring, ring.Lp);
    } else {
      RowRing<T, A> ring(x, s.H, s.W, s.C, Cp, K);
      run_blocks(b, e, ring, ring.Lp);
    }
  });
  std::vector<A> tot(static_cast<size_t>(stride));
  reduce_partials(part, blk.count, stride, stride, tot.data());
  for (int64_t c = 0; c < s.C; ++c) {
    for (int64_t kh = 0; kh < K; ++kh)
      for (int64_t kw = 0; kw < K; ++kw) gw[(c * K + kh) * K + kw] = static_cast<T>(tot[(kh * Kp + kw) * Cp + c]);
    gb[c] = static_cast<T>(tot[K * Kp * Cp + c]);
  }
}

// Input gradient of the depthwise conv: the conv of gy (element type S) with the flipped kernel.
template <class T, class S, class A>
void dwconv_igrad(const S* gy, const T* w, const Shape& s, int64_t Cp, T* gx) {
  const avec<A> wt = prep_weight<T, A>(w, s.C, Cp, s.K, /*flip=*/true);
  A* direct = std::is_same<T, A>::value && Cp == s.C ? reinterpret_cast<A*>(gx) : nullptr;
  conv_rows<S, A>(gy, wt.data(), nullptr, s, Cp, gx, s.W * s.C * int64_t(sizeof(T)),
                  [&](int64_t r, const A* out) { store_row(out, s.W, s.C, Cp, gx + r * s.W * s.C); }, direct);
  PadNaN<A>(wt.data(), s.C, s.H, s.W, s.K).mark(gx, s.N, s.C);  // the same conv semantics as the forward
}

template <class T>
void dwconv_forward_t(const T* x, const T* w, const T* b, T* y, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const avec<A> wt = prep_weight<T, A>(w, s.C, Cp, s.K, false);
  const avec<A> bias = prep_vec<T, A>(b, s.C, Cp);
  A* direct = std::is_same<T, A>::value && Cp == s.C ? reinterpret_cast<A*>(y) : nullptr;
  conv_rows<T, A>(x, wt.data(), b ? bias.data() : nullptr, s, Cp, y, s.W * s.C * int64_t(sizeof(T)),
                  [&](int64_t r, const A* out) { store_row(out, s.W, s.C, Cp, y + r * s.W * s.C); }, direct);
  PadNaN<A>(wt.data(), s.C, s.H, s.W, s.K).mark(y, s.N, s.C);
}

template <class T>
void dwconv_backward_t(const T* gy, const T* x, const T* w, T* gx, T* gw, T* gb, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  dwconv_igrad<T, T, A>(gy, w, s, Cp, gx);
  dwconv_wgrad<T, T, A>(gy, x, s, Cp, gw, gb);
}

template <class T>
void dwconv_ln_forward_t(const T* x, const T* dw_w, const T* dw_b, const T* ln_w, const T* ln_b, double eps, T* y,
                         acc_t<T>* mean, acc_t<T>* rstd, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const avec<A> wt = prep_weight<T, A>(dw_w, s.C, Cp, s.K, false);
  const avec<A> bias = prep_vec<T, A>(dw_b, s.C, Cp);
  const avec<A> g = prep_vec<T, A>(ln_w, s.C, Cp), bb = prep_vec<T, A>(ln_b, s.C, Cp);
  const avec<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const RowOps<A>& ops = row_ops<A>();
  const PadNaN<A> pad_nan(wt.data(), s.C, s.H, s.W, s.K);
  // Without channel padding (C % 16 == 0) and in the accumulation type, normalize straight into y.
  const bool direct = std::is_same<T, A>::value && Cp == s.C;
  conv_rows<T, A>(x, wt.data(), dw_b ? bias.data() : nullptr, s, Cp, y, s.W * s.C * int64_t(sizeof(T)),
                  [&](int64_t r, const A* out) {
    A* z = const_cast<A*>(out);  // the row buffer is ours to normalize in place
    pad_nan.mark_row(r % s.H, z, Cp);  // before the LayerNorm, which spreads a NaN over the pixel
    T* yr = y + r * s.W * s.C;
    A* dst = direct ? reinterpret_cast<A*>(yr) : z;
    ops.ln_fwd_row(z, g.data(), bb.data(), mask.data(), s.W, s.C, Cp, eps, mean + r * s.W, rstd + r * s.W, dst,
                   direct ? s.C : Cp);
    if (!direct) store_row(z, s.W, s.C, Cp, yr);
  });
}

template <class T>
void layer_norm_forward_t(const T* x, const T* w, const T* b, double eps, T* y, acc_t<T>* mean, acc_t<T>* rstd,
                          const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const avec<A> g = prep_vec<T, A>(w, s.C, Cp), bb = prep_vec<T, A>(b, s.C, Cp);
  const avec<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const RowOps<A>& ops = row_ops<A>();
  // fp32 / fp64 rows with C a multiple of kCAlign already are what the row kernel reads: no copy
  // in (ln_fwd_row only reads z when dst is another buffer) and none out.
  const bool direct = std::is_same<T, A>::value && Cp == s.C;
  par_for(s.N * s.H, [&](int64_t b0, int64_t e) {
    std::vector<A> z(direct ? 0 : static_cast<size_t>(s.W * Cp), A(0));
    for (int64_t r = b0; r < e; ++r) {
      T* yr = y + r * s.W * s.C;
      if (direct) {
        A* xr = const_cast<A*>(reinterpret_cast<const A*>(x + r * s.W * s.C));
        ops.ln_fwd_row(xr, g.data(), bb.data(), mask.data(), s.W, s.C, Cp, eps, mean + r * s.W, rstd + r * s.W,
                       reinterpret_cast<A*>(yr), s.C);
        continue;
      }
      load_row(x + r * s.W * s.C, s.W, s.C, z.data(), Cp);
      ops.ln_fwd_row(z.data(), g.data(), bb.data(), mask.data(), s.W, s.C, Cp, eps, mean + r * s.W,
                     rstd + r * s.W, z.data(), Cp);
      store_row(z.data(), s.W, s.C, Cp, yr);
    }
  });
}

// LayerNorm backward over rows; z_row(r, buf) yields the normalized layer's input row r (W x Cp)
// and sink(r, gz) receives the gradient with respect to it, unless out_row(r) returns the place to
// write that row directly (a dense W x Cp row of A; then sink is not called). g_ln_w/g_ln_b are
// deterministic. grad_y rows that already are dense A rows (Cp == C) are read in place.
template <class T, class A, class ZRow, class Sink, class OutRow>
void ln_backward_rows(const T* gy, const T* w, const A* mean, const A* rstd, const Shape& s, int64_t Cp,
                      T* gw_out, T* gb_out, ZRow z_row, Sink sink, OutRow out_row) {
  const RowOps<A>& ops = row_ops<A>();
  const avec<A> g = prep_vec<T, A>(w, s.C, Cp);
  const avec<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const int64_t stride = 2 * Cp;
  const Blocks blk = make_blocks(s.N * s.H, stride, s.W * Cp);
  std::vector<A> part(static_cast<size_t>(blk.count * stride), A(0));
  const bool gy_direct = std::is_same<T, A>::value && Cp == s.C;
  par_for(blk.count, [&](int64_t b, int64_t e) {
    std::vector<A> gyb(gy_direct ? 0 : static_cast<size_t>(s.W * Cp), A(0));
    std::vector<A> gz(static_cast<size_t>(s.W * Cp), A(0));
    auto zstate = z_row.make_state();
    for (int64_t bi = b; bi < e; ++bi) {
      A* pp = part.data() + bi * stride;
      const int64_t r1 = std::min(s.N * s.H, (bi + 1) * blk.rows_per);
      for (int64_t r = bi * blk.rows_per; r < r1; ++r) {
        const A* z = z_row(zstate, r);
        const A* gyr = gy_direct ? reinterpret_cast<const A*>(gy + r * s.W * s.C) : gyb.data();
        if (!gy_direct) load_row(gy + r * s.W * s.C, s.W, s.C, gyb.data(), Cp);
        A* direct = out_row(r);
        ops.ln_bwd_row(z, gyr, g.data(), mask.data(), mean + r * s.W, rstd + r * s.W, s.W, s.C, Cp,
                       direct ? direct : gz.data(), pp, pp + Cp);
        if (!direct) sink(r, gz.data());
      }
    }
  });
  std::vector<A> tot(static_cast<size_t>(stride));
  reduce_partials(part.data(), blk.count, stride, stride, tot.data());
  for (int64_t c = 0; c < s.C; ++c) {
    gw_out[c] = static_cast<T>(tot[c]);
    gb_out[c] = static_cast<T>(tot[Cp + c]);
  }
}

// z rows for the plain LayerNorm: the input row itself, converted (read in place when it already
// is a dense row of A).
template <class T, class A>
struct LoadedRows {
  const T* x;
  int64_t W, C, Cp;
  bool direct() const { return std::is_same<T, A>::value && Cp == C; }
  std::vector<A> make_state() const { return std::vector<A>(direct() ? 0 : static_cast<size_t>(W * Cp), A(0)); }
  const A* operator()(std::vector<A>& buf, int64_t r) const {
    if (direct()) return reinterpret_cast<const A*>(x + r * W * C);
    load_row(x + r * W * C, W, C, buf.data(), Cp);
    return buf.data();
  }
};

// z rows for the fused op: the depthwise conv output, recomputed from x (never stored).
template <class T, class A>
struct ConvRows {
  const T* x;
  const A* wt;
  const A* bias;
  Shape s;
  int64_t Cp;
  const PadNaN<A>* pad_nan;  // the forward's NaN outputs (see PadNaN)
  struct State {
    BlockRing<T, A> ring;
    A* out;
  };
  State make_state() const {
    const ConvBuffers<A> sb = conv_scratch<A>(s.W, s.C, Cp, s.K);
    return State{BlockRing<T, A>(x, s.H, s.W, s.C, Cp, s.K, s.K, sb.ring, sb.held, sb.ptrs), sb.out};
  }
  const A* operator()(State& st, int64_t r) const {
    row_ops<A>().conv_row(st.ring.rows_for(r / s.H, r % s.H), wt, bias, st.out, s.W, Cp, s.K, st.ring.Lp,
                          nullptr, 1, 0);
    pad_nan->mark_row(r % s.H, st.out, Cp);
    return st.out;
  }
};

template <class T>
void layer_norm_backward_t(const T* gy, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd, T* gx,
                           T* gw, T* gb, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const bool direct = std::is_same<T, A>::value && Cp == s.C;
  ln_backward_rows<T, A>(gy, w, mean, rstd, s, Cp, gw, gb, LoadedRows<T, A>{x, s.W, s.C, Cp},
                         [&](int64_t r, const A* gz) { store_row(gz, s.W, s.C, Cp, gx + r * s.W * s.C); },
                         [&](int64_t r) -> A* { return direct ? reinterpret_cast<A*>(gx + r * s.W * s.C) : nullptr; });
}

template <class T>
void dwconv_ln_backward_t(const T* gy, const T* x, const T* dw_w, const T* dw_b, const T* ln_w,
                          const acc_t<T>* mean, const acc_t<T>* rstd, T* gx, T* g_dw_w, T* g_dw_b, T* g_ln_w,
                          T* g_ln_b, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const avec<A> wt = prep_weight<T, A>(dw_w, s.C, Cp, s.K, false);
  const avec<A> bias = prep_vec<T, A>(dw_b, s.C, Cp);
  const PadNaN<A> pad_nan(wt.data(), s.C, s.H, s.W, s.K);
  // Gradient with respect to the conv output, kept in the accumulation type (not rounded to T).
  // Every element is written by ln_backward_rows before igrad and wgrad read it.
  const Workspace<A> gz(static_cast<size_t>(s.N * s.H * s.W * s.C));
  ln_backward_rows<T, A>(gy, ln_w, mean, rstd, s, Cp, g_ln_w, g_ln_b,
                         ConvRows<T, A>{x, wt.data(), dw_b ? bias.data() : nullptr, s, Cp, &pad_nan},
                         [&](int64_t r, const A* g) { store_row(g, s.W, s.C, Cp, gz.data() + r * s.W * s.C); },
                         [&](int64_t r) -> A* { return Cp == s.C ? gz.data() + r * s.W * s.C : nullptr; });
  dwconv_igrad<T, A, A>(gz.data(), dw_w, s, Cp, gx);
  dwconv_wgrad<T, A, A>(gz.data(), x, s, Cp, g_dw_w, g_dw_b);
}

}  // namespace

// ---------------------------------------------------------------------------------- public API

#define CF_DISPATCH(DT, ...)                     \
  switch (DT) {                                  \
    case DType::F32: {                           \
      using T = float;                           \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
    case DType::F64: {                           \
      using T = double;                          \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
    case DType::F16: {                           \
      using T = c10::Half;                       \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
    case DType::BF16: {                          \
      using T = c10::BFloat16;                   \
      __VA_ARGS__;                               \
      break;                                     \
    }                                            \
  }

#define P(ptr) static_cast<const T*>(ptr)
#define M(ptr) static_cast<T*>(ptr)
#define PA(ptr) static_cast<const acc_t<T>*>(ptr)
#define MA(ptr) static_cast<acc_t<T>*>(ptr)

void dwconv_forward(DType dt, const void* x, const void* w, const void* b, void* y, Shape s) {
  CF_DISPATCH(dt, dwconv_forward_t<T>(P(x), P(w), P(b), M(y), s));
}

void dwconv_backward(DType dt, const void* gy, const void* x, const void* w, void* gx, void* gw, void* gb,
                     Shape s) {
  CF_DISPATCH(dt, dwconv_backward_t<T>(P(gy), P(x), P(w), M(gx), M(gw), M(gb), s));
}

void layer_norm_forward(DType dt, const void* x, const void* w, const void* b, double eps, void* y, void* mean,
                        void* rstd, Shape s) {
  CF_DISPATCH(dt, layer_norm_forward_t<T>(P(x), P(w), P(b), eps, M(y), MA(mean), MA(rstd), s));
}

void layer_norm_backward(DType dt, const void* gy, const void* x, const void* w, const void* mean,
                         const void* rstd, void* gx, void* gw, void* gb, Shape s) {
  CF_DISPATCH(dt, layer_norm_backward_t<T>(P(gy), P(x), P(w), PA(mean), PA(rstd), M(gx), M(gw), M(gb), s));
}

void dwconv_ln_forward(DType dt, const void* x, const void* dw_w, const void* dw_b, const void* ln_w,
                       const void* ln_b, double eps, void* y, void* mean, void* rstd, Shape s) {
  CF_DISPATCH(dt, dwconv_ln_forward_t<T>(P(x), P(dw_w), P(dw_b), P(ln_w), P(ln_b), eps, M(y), MA(mean),
                                         MA(rstd), s));
}

void dwconv_ln_backward(DType dt, const void* gy, const void* x, const void* dw_w, const void* dw_b,
                        const void* ln_w, const void* mean, const void* rstd, void* gx, void* g_dw_w,
                        void* g_dw_b, void* g_ln_w, void* g_ln_b, Shape s) {
  CF_DISPATCH(dt, dwconv_ln_backward_t<T>(P(gy), P(x), P(dw_w), P(dw_b), P(ln_w), PA(mean), PA(rstd), M(gx),
                                          M(g_dw_w), M(g_dw_b), M(g_ln_w), M(g_ln_b), s));
}

const char* isa() { return row_ops<float>().name; }

}  // namespace convnext_fast_cpu
