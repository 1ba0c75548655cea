// CPU kernels of convnext_fast._C (see cpu_kernels.h for the API).
//
// Liu et al., "A ConvNet for the 2020s", CVPR 2022: depthwise 7x7 conv + channels-first LayerNorm.
//
// Structure. All arithmetic runs on small fp32 (fp64 for double tensors) row buffers that stay in
// L1/L2: an input row (one (n, h) line of W pixels x C channels, NHWC) is converted once into a
// zero-padded scratch row of Lp pixels x Cp channels (Cp = C rounded up to 16, K//2 zero pixels on
// the left, zeros on the right), so the inner loops have no bounds checks and no channel tails. A
// ring of K such rows per thread holds the input rows an output row needs; moving down one output
// row converts exactly one new input row, so every input element is read from memory once per pass.
//
// The row kernels (conv_row, wgrad_row, ln_fwd_row, ln_bwd_row) use GCC vector extensions and are
// compiled three times: AVX-512 (V = 16 floats), AVX2+FMA (V = 8) and baseline x86-64 / any other
// architecture (V = 4), chosen at run time from the CPU (no -march flag: the binary stays portable).
//
// The fused dwconv + LayerNorm forward computes the conv of one output row into a cache-resident
// buffer and normalizes it there before the single write of y: the conv output never goes to memory.
//
// Determinism: weight/bias gradients are reductions over N*H*W. Rows are split into blocks that
// depend only on the shape (never on the thread count); each block writes its own partial sums and
// the partials are added in block order. No atomics, bitwise reproducible.
#include "cpu_kernels.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#define CF_AI inline __attribute__((always_inline))

namespace convnext_fast_cpu {
namespace {

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

// ---------------------------------------------------------------------------------- row kernels
// Buffers: a padded input row holds pixel iw at index iw + K/2 (stride Cp); out/g rows hold pixel w
// at index w. rows[kh] is the padded input row at ih = h + kh - K/2, or null when outside the image.

// out[w][c] = bias[c] + sum_{kh,kw} rows[kh][w + kw][c] * wt[kh][kw][c] for w < round_up(W, kWB).
// kWB output pixels x V channels of accumulators live in registers across all K*K taps. The channel
// chunk is the outer loop: sweeping one chunk along the row keeps the K x (kWB + K - 1) input cache
// lines of neighbouring pixel blocks in L1 (the other order re-fetched them from L2: 4x slower).
template <class A, int V>
CF_AI void conv_row_impl(const A* const* rows, const A* wt, const A* bias, A* out, int64_t W, int64_t Cp,
                         int64_t K) {
  typedef typename Vec<A, V>::type vec;
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    for (int64_t w0 = 0; w0 < W; w0 += kWB) {
      vec acc[kWB];
      vec b0 = {};
      if (bias) b0 = ld<vec>(bias + c0);
      for (int j = 0; j < kWB; ++j) acc[j] = b0;
      for (int64_t kh = 0; kh < K; ++kh) {
        const A* r = rows[kh];
        if (!r) continue;
        const A* rp = r + w0 * Cp + c0;
        const A* wp = wt + kh * K * Cp + c0;
        for (int64_t kw = 0; kw < K; ++kw) {
          const vec wv = ld<vec>(wp + kw * Cp);
          const A* xp = rp + kw * Cp;
          for (int j = 0; j < kWB; ++j) acc[j] += ld<vec>(xp + j * Cp) * wv;
        }
      }
      for (int j = 0; j < kWB; ++j) st(out + (w0 + j) * Cp + c0, acc[j]);
    }
  }
}

// part[kh][kw][c] += sum_w g[w][c] * rows[kh][w + kw][c] (kw padded to Kp = round_up(K, kKB); the
// extra taps read zeros and are ignored), partb[c] += sum_w g[w][c].
template <class A, int V>
CF_AI void wgrad_row_impl(const A* g, const A* const* rows, A* part, A* partb, int64_t W, int64_t Cp,
                          int64_t K) {
  typedef typename Vec<A, V>::type vec;
  const int64_t Kp = round_up(K, kKB);
  for (int64_t c0 = 0; c0 < Cp; c0 += V) {
    vec sb = ld<vec>(partb + c0);
    for (int64_t w = 0; w < W; ++w) sb += ld<vec>(g + w * Cp + c0);
    st(partb + c0, sb);
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

// LayerNorm over the C channels of each of W pixels of z, in place: z <- (z - mean) * rstd * g + b.
// Two passes over the cache-resident pixel (mean, then centred variance): no E[x^2] - mean^2.
// mask[c] = 1 for c < C, 0 in the padding (whose z is 0 but whose z - mean is not).
template <class A, int V>
CF_AI void ln_fwd_row_impl(A* z, const A* g, const A* b, const A* mask, int64_t W, int64_t C, int64_t Cp,
                           double eps, A* mean, A* rstd) {
  typedef typename Vec<A, V>::type vec;
  for (int64_t w = 0; w < W; ++w) {
    A* zp = z + w * Cp;
    vec s = {};
    for (int64_t c0 = 0; c0 < Cp; c0 += V) s += ld<vec>(zp + c0);
    const A m = hsum<vec, V>(s) / static_cast<A>(C);
    vec q = {};
    for (int64_t c0 = 0; c0 < Cp; c0 += V) {
      const vec d = (ld<vec>(zp + c0) - m) * ld<vec>(mask + c0);
      q += d * d;
    }
    const A var = hsum<vec, V>(q) / static_cast<A>(C);
    const A rs = static_cast<A>(1) / std::sqrt(var + static_cast<A>(eps));
    for (int64_t c0 = 0; c0 < Cp; c0 += V)
      st(zp + c0, (ld<vec>(zp + c0) - m) * rs * ld<vec>(g + c0) + ld<vec>(b + c0));
    mean[w] = m;
    rstd[w] = rs;
  }
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

template <class A>
struct RowOps {
  void (*conv_row)(const A* const*, const A*, const A*, A*, int64_t, int64_t, int64_t);
  void (*wgrad_row)(const A*, const A* const*, A*, A*, int64_t, int64_t, int64_t);
  void (*ln_fwd_row)(A*, const A*, const A*, const A*, int64_t, int64_t, int64_t, double, A*, A*);
  void (*ln_bwd_row)(const A*, const A*, const A*, const A*, const A*, const A*, int64_t, int64_t, int64_t, A*,
                     A*, A*);
  const char* name;
};

#define CF_DEFINE_ROW_OPS(NAME, ATTR, A, V)                                                              \
  ATTR void conv_row_##NAME(const A* const* r, const A* wt, const A* b, A* o, int64_t W, int64_t Cp,       \
                            int64_t K) {                                                                 \
    conv_row_impl<A, V>(r, wt, b, o, W, Cp, K);                                                          \
  }                                                                                                      \
  ATTR void wgrad_row_##NAME(const A* g, const A* const* r, A* p, A* pb, int64_t W, int64_t Cp,            \
                             int64_t K) {                                                                \
    wgrad_row_impl<A, V>(g, r, p, pb, W, Cp, K);                                                         \
  }                                                                                                      \
  ATTR void ln_fwd_row_##NAME(A* z, const A* g, const A* b, const A* m, int64_t W, int64_t C, int64_t Cp, \
                              double eps, A* mean, A* rstd) {                                            \
    ln_fwd_row_impl<A, V>(z, g, b, m, W, C, Cp, eps, mean, rstd);                                        \
  }                                                                                                      \
  ATTR void ln_bwd_row_##NAME(const A* z, const A* gy, const A* g, const A* mk, const A* mean,            \
                              const A* rstd, int64_t W, int64_t C, int64_t Cp, A* gz, A* pw, A* pb) {    \
    ln_bwd_row_impl<A, V>(z, gy, g, mk, mean, rstd, W, C, Cp, gz, pw, pb);                               \
  }                                                                                                      \
  const RowOps<A> row_ops_##NAME = {conv_row_##NAME, wgrad_row_##NAME, ln_fwd_row_##NAME,                \
                                    ln_bwd_row_##NAME, #NAME};

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

// ---------------------------------------------------------------------------------- conversions

template <class T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

// dst[w][c] = src[w][c] for c < C (dst stride Cp; the padding of dst is left untouched, i.e. zero).
template <class S, class A>
void load_row(const S* src, int64_t W, int64_t C, A* dst, int64_t Cp) {
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

// Depthwise weight (C, 1, K, K) -> wt[kh][kw][c] (Cp padded with zeros); flipped (wt[kh][kw] =
// w[K-1-kh][K-1-kw]) for the input gradient, which is the conv of gy with the flipped kernel.
template <class T, class A>
std::vector<A> prep_weight(const T* w, int64_t C, int64_t Cp, int64_t K, bool flip) {
  std::vector<A> wt(K * K * Cp, A(0));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t kh = 0; kh < K; ++kh)
      for (int64_t kw = 0; kw < K; ++kw) {
        const int64_t sh = flip ? K - 1 - kh : kh, sw = flip ? K - 1 - kw : kw;
        wt[(kh * K + kw) * Cp + c] = static_cast<A>(w[(c * K + sh) * K + sw]);
      }
  return wt;
}

template <class T, class A>
std::vector<A> prep_vec(const T* v, int64_t C, int64_t Cp, A fill_absent = A(0)) {
  std::vector<A> out(Cp, A(0));
  for (int64_t c = 0; c < C; ++c) out[c] = v ? static_cast<A>(v[c]) : fill_absent;
  return out;
}

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

// Fixed, shape-only split of the N*H rows into blocks for deterministic partial sums.
struct Blocks {
  int64_t count, rows_per;
};
Blocks make_blocks(int64_t rows, int64_t partial_elems) {
  const int64_t max_by_mem = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(1, partial_elems));
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>({rows, 64, max_by_mem}));
  const int64_t per = (rows + want - 1) / want;
  return {(rows + per - 1) / per, per};
}

// out[i] = sum_b part[b * stride + i] in block order (deterministic), for i < n.
template <class A>
void reduce_partials(const A* part, int64_t nblk, int64_t stride, int64_t n, A* out) {
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      A s = 0;
      for (int64_t k = 0; k < nblk; ++k) s += part[k * stride + i];
      out[i] = s;
    }
  });
}

// ---------------------------------------------------------------------------------- drivers

// For every output row r = n*H + h: out = conv of src rows (padded ring) with wt (+ bias), then
// epi(r, out) consumes the row buffer (W pixels x Cp channels).
template <class S, class A, class Epi>
void conv_rows(const S* src, const A* wt, const A* bias, const Shape& s, int64_t Cp, Epi epi) {
  const RowOps<A>& ops = row_ops<A>();
  at::parallel_for(0, s.N * s.H, 1, [&](int64_t b, int64_t e) {
    RowRing<S, A> ring(src, s.H, s.W, s.C, Cp, s.K);
    std::vector<A> out(static_cast<size_t>(round_up(s.W, kWB) * Cp), A(0));
    for (int64_t r = b; r < e; ++r) {
      ops.conv_row(ring.rows_for(r / s.H, r % s.H), wt, bias, out.data(), s.W, Cp, s.K);
      epi(r, out.data());
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
  const Blocks blk = make_blocks(s.N * s.H, stride);
  std::vector<A> part(static_cast<size_t>(blk.count * stride), A(0));
  at::parallel_for(0, blk.count, 1, [&](int64_t b, int64_t e) {
    RowRing<T, A> ring(x, s.H, s.W, s.C, Cp, K);
    std::vector<A> g(static_cast<size_t>(s.W * Cp), A(0));
    for (int64_t bi = b; bi < e; ++bi) {
      A* pp = part.data() + bi * stride;
      const int64_t r1 = std::min(s.N * s.H, (bi + 1) * blk.rows_per);
      for (int64_t r = bi * blk.rows_per; r < r1; ++r) {
        load_row(gy + r * s.W * s.C, s.W, s.C, g.data(), Cp);
        ops.wgrad_row(g.data(), ring.rows_for(r / s.H, r % s.H), pp, pp + K * Kp * Cp, s.W, Cp, K);
      }
    }
  });
  std::vector<A> tot(static_cast<size_t>(stride));
  reduce_partials(part.data(), blk.count, stride, stride, tot.data());
  for (int64_t c = 0; c < s.C; ++c) {
    for (int64_t kh = 0; kh < K; ++kh)
      for (int64_t kw = 0; kw < K; ++kw) gw[(c * K + kh) * K + kw] = static_cast<T>(tot[(kh * Kp + kw) * Cp + c]);
    gb[c] = static_cast<T>(tot[K * Kp * Cp + c]);
  }
}

// Input gradient of the depthwise conv: the conv of gy (element type S) with the flipped kernel.
template <class T, class S, class A>
void dwconv_igrad(const S* gy, const T* w, const Shape& s, int64_t Cp, T* gx) {
  const std::vector<A> wt = prep_weight<T, A>(w, s.C, Cp, s.K, /*flip=*/true);
  conv_rows<S, A>(gy, wt.data(), nullptr, s, Cp,
                  [&](int64_t r, const A* out) { store_row(out, s.W, s.C, Cp, gx + r * s.W * s.C); });
}

template <class T>
void dwconv_forward_t(const T* x, const T* w, const T* b, T* y, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const std::vector<A> wt = prep_weight<T, A>(w, s.C, Cp, s.K, false);
  const std::vector<A> bias = prep_vec<T, A>(b, s.C, Cp);
  conv_rows<T, A>(x, wt.data(), b ? bias.data() : nullptr, s, Cp,
                  [&](int64_t r, const A* out) { store_row(out, s.W, s.C, Cp, y + r * s.W * s.C); });
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
  const std::vector<A> wt = prep_weight<T, A>(dw_w, s.C, Cp, s.K, false);
  const std::vector<A> bias = prep_vec<T, A>(dw_b, s.C, Cp);
  const std::vector<A> g = prep_vec<T, A>(ln_w, s.C, Cp), bb = prep_vec<T, A>(ln_b, s.C, Cp);
  const std::vector<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const RowOps<A>& ops = row_ops<A>();
  conv_rows<T, A>(x, wt.data(), dw_b ? bias.data() : nullptr, s, Cp, [&](int64_t r, const A* out) {
    A* z = const_cast<A*>(out);  // the row buffer is ours to normalize in place
    ops.ln_fwd_row(z, g.data(), bb.data(), mask.data(), s.W, s.C, Cp, eps, mean + r * s.W, rstd + r * s.W);
    store_row(z, s.W, s.C, Cp, y + r * s.W * s.C);
  });
}

template <class T>
void layer_norm_forward_t(const T* x, const T* w, const T* b, double eps, T* y, acc_t<T>* mean, acc_t<T>* rstd,
                          const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const std::vector<A> g = prep_vec<T, A>(w, s.C, Cp), bb = prep_vec<T, A>(b, s.C, Cp);
  const std::vector<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const RowOps<A>& ops = row_ops<A>();
  at::parallel_for(0, s.N * s.H, 1, [&](int64_t b0, int64_t e) {
    std::vector<A> z(static_cast<size_t>(s.W * Cp), A(0));
    for (int64_t r = b0; r < e; ++r) {
      load_row(x + r * s.W * s.C, s.W, s.C, z.data(), Cp);
      ops.ln_fwd_row(z.data(), g.data(), bb.data(), mask.data(), s.W, s.C, Cp, eps, mean + r * s.W,
                     rstd + r * s.W);
      store_row(z.data(), s.W, s.C, Cp, y + r * s.W * s.C);
    }
  });
}

// LayerNorm backward over rows; z_row(r, buf) yields the normalized layer's input row r (W x Cp)
// and sink(r, gz) receives the gradient with respect to it. g_ln_w/g_ln_b are deterministic.
template <class T, class A, class ZRow, class Sink>
void ln_backward_rows(const T* gy, const T* w, const A* mean, const A* rstd, const Shape& s, int64_t Cp,
                      T* gw_out, T* gb_out, ZRow z_row, Sink sink) {
  const RowOps<A>& ops = row_ops<A>();
  const std::vector<A> g = prep_vec<T, A>(w, s.C, Cp);
  const std::vector<A> mask = prep_vec<T, A>(nullptr, s.C, Cp, A(1));
  const int64_t stride = 2 * Cp;
  const Blocks blk = make_blocks(s.N * s.H, stride);
  std::vector<A> part(static_cast<size_t>(blk.count * stride), A(0));
  at::parallel_for(0, blk.count, 1, [&](int64_t b, int64_t e) {
    std::vector<A> gyb(static_cast<size_t>(s.W * Cp), A(0)), gz(gyb.size(), A(0));
    auto zstate = z_row.make_state();
    for (int64_t bi = b; bi < e; ++bi) {
      A* pp = part.data() + bi * stride;
      const int64_t r1 = std::min(s.N * s.H, (bi + 1) * blk.rows_per);
      for (int64_t r = bi * blk.rows_per; r < r1; ++r) {
        const A* z = z_row(zstate, r);
        load_row(gy + r * s.W * s.C, s.W, s.C, gyb.data(), Cp);
        ops.ln_bwd_row(z, gyb.data(), g.data(), mask.data(), mean + r * s.W, rstd + r * s.W, s.W, s.C, Cp,
                       gz.data(), pp, pp + Cp);
        sink(r, gz.data());
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

// z rows for the plain LayerNorm: the input row itself, converted.
template <class T, class A>
struct LoadedRows {
  const T* x;
  int64_t W, C, Cp;
  std::vector<A> make_state() const { return std::vector<A>(static_cast<size_t>(W * Cp), A(0)); }
  const A* operator()(std::vector<A>& buf, int64_t r) const {
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
  struct State {
    RowRing<T, A> ring;
    std::vector<A> out;
  };
  State make_state() const {
    return State{RowRing<T, A>(x, s.H, s.W, s.C, Cp, s.K),
                 std::vector<A>(static_cast<size_t>(round_up(s.W, kWB) * Cp), A(0))};
  }
  const A* operator()(State& st, int64_t r) const {
    row_ops<A>().conv_row(st.ring.rows_for(r / s.H, r % s.H), wt, bias, st.out.data(), s.W, Cp, s.K);
    return st.out.data();
  }
};

template <class T>
void layer_norm_backward_t(const T* gy, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd, T* gx,
                           T* gw, T* gb, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  ln_backward_rows<T, A>(gy, w, mean, rstd, s, Cp, gw, gb, LoadedRows<T, A>{x, s.W, s.C, Cp},
                         [&](int64_t r, const A* gz) { store_row(gz, s.W, s.C, Cp, gx + r * s.W * s.C); });
}

template <class T>
void dwconv_ln_backward_t(const T* gy, const T* x, const T* dw_w, const T* dw_b, const T* ln_w,
                          const acc_t<T>* mean, const acc_t<T>* rstd, T* gx, T* g_dw_w, T* g_dw_b, T* g_ln_w,
                          T* g_ln_b, const Shape& s) {
  using A = acc_t<T>;
  const int64_t Cp = round_up(s.C, kCAlign);
  const std::vector<A> wt = prep_weight<T, A>(dw_w, s.C, Cp, s.K, false);
  const std::vector<A> bias = prep_vec<T, A>(dw_b, s.C, Cp);
  // Gradient with respect to the conv output, kept in the accumulation type (not rounded to T).
  std::vector<A> gz(static_cast<size_t>(s.N * s.H * s.W * s.C));
  ln_backward_rows<T, A>(gy, ln_w, mean, rstd, s, Cp, g_ln_w, g_ln_b,
                         ConvRows<T, A>{x, wt.data(), dw_b ? bias.data() : nullptr, s, Cp},
                         [&](int64_t r, const A* g) { store_row(g, s.W, s.C, Cp, gz.data() + r * s.W * s.C); });
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
