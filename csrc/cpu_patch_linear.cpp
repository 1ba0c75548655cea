// CPU kernel of ConvNeXt's patch convolutions with fused LayerNorms, for inference (API in
// cpu_patch_linear.h).
//
// Liu et al., "A ConvNet for the 2020s", CVPR 2022: the stem is a 4x4 stride-4 conv followed by a
// LayerNorm, each downsampling layer a LayerNorm followed by a 2x2 stride-2 conv. With stride equal
// to the kernel size the patches do not overlap, so the conv is a GEMM over patch rows: output
// pixel p reads its k x k input pixels, (kh, kw, c) in order, a row of K = k*k*C values. Eager
// PyTorch runs the norm and the conv as separate passes (oneDNN's conv also reorders its input and
// weights into blocked layouts on every call); here one pass per block of output rows:
//
//   1. gather the block's patch rows into a per-thread tile P (R x K fp32, sized to stay in L2),
//      normalizing each input pixel over its C channels on the way when in_eps is given (the
//      downsampling layers, their LayerNorm affine folded into the weights by the caller);
//   2. y = P @ weight_t on oneDNN's brgemm micro-kernel, written straight into the output rows:
//      weight_t (K x O) is the B operand as stored (the caller lays the conv weight out this way
//      once, when it folds the model), split into panels of up to kMaxCols output columns and kJ
//      rows that stay in L2 (brgemm does no cache blocking of its own);
//   3. bias, and the output LayerNorm (the stem) over each output row while it is in cache.
//
// Each input pixel is read once (patches do not overlap) and each output written once. Threads
// take (row block, column panel) units; a thread reuses its gathered tile for consecutive panels
// of the same block. At small batches the late layers have fewer row blocks than threads, and the
// column panels keep both busy, each reading its own share of the weights.
//
// Numerics: float32 throughout; LayerNorm statistics in two passes (the mean, then the mean of
// squared deviations, as PyTorch's CPU LayerNorm), biased variance, eps inside the square root.
//
// bfloat16 (brgemm's bf16 path needs VNNI-packed operands, which this oneDNN offers only with AMX):
// with bf16 dot products (native_bf16_dot) the patch rows are gathered (and normalized, in fp32)
// into a bf16 matrix, multiplied on oneDNN's linear with the weight prepacked once and the bias
// inside, and the output LayerNorm runs over each row in fp32; oneDNN's convolution, which eager
// PyTorch runs, reorders its weights on every call. Without bf16 dot products the inputs are
// widened and the float32 kernel runs, its output rounded once: bf16 is never slower than fp32.
#include "cpu_patch_linear.h"
#include "cpu_output_pool.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"  // isa(): one instruction-set choice for all CPU kernels
#include "cpu_onednn.h"
#include "cpu_vec.h"

namespace convnext_fast_cpu {
namespace {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;
using namespace simd;

// Patch tile per thread: R x K fp32 values (L2 is 1 MiB per core on the CPUs this was tuned on;
// the weight panel shares it).
constexpr int64_t kTileBytes = 256 * 1024;
// Weight panel per brgemm call: kJ x nJ fp32 values.
constexpr int64_t kPanelBytes = 384 * 1024;
constexpr int64_t kMaxCols = 128;
constexpr int64_t kMaxRows = 256;

// ---------------------------------------------------------------------------------- row kernels

// (mean, rstd) of n floats in two passes, V lanes at a time (lanes past n masked out).
template <int V>
CFM_AI void row_stats(const float* p, int64_t n, float eps, float& mean, float& rstd) {
  typedef typename Vec<V>::f F;
  typedef typename Vec<V>::i I;
  I lane;
  for (int i = 0; i < V; ++i) lane[i] = i;
  F s = bc<F>(0.f);
  for (int64_t c = 0; c < n; c += V) s += load<V>(p + c, n - c);  // zeros past n
  float sum = 0.f;
  for (int i = 0; i < V; ++i) sum += s[i];
  mean = sum / static_cast<float>(n);
  const F m = bc<F>(mean);
  F q = bc<F>(0.f);
  for (int64_t c = 0; c < n; c += V) {
    F d = load<V>(p + c, n - c) - m;
    if (n - c < V) d = lane < static_cast<int32_t>(n - c) ? d : bc<F>(0.f);
    q += d * d;
  }
  float sq = 0.f;
  for (int i = 0; i < V; ++i) sq += q[i];
  rstd = 1.f / std::sqrt(sq / static_cast<float>(n) + eps);
}

// Patch rows [r0, r0 + rows) of x (N, H, W, C) into P (rows x K, K = k*k*C), each input pixel
// normalized over C when norm is set.
template <int V>
CFM_AI void gather_impl(const float* x, int64_t H, int64_t W, int64_t C, int64_t k, int64_t Ho, int64_t Wo,
                        int64_t r0, int64_t rows, bool norm, float eps, float* P) {
  typedef typename Vec<V>::f F;
  const int64_t K = k * k * C;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r0 + r, n = t / (Ho * Wo), i = t / Wo % Ho, j = t % Wo;
    for (int64_t kh = 0; kh < k; ++kh) {
      const float* src = x + ((n * H + i * k + kh) * W + j * k) * C;  // k pixels, k*C contiguous floats
      float* dst = P + r * K + kh * k * C;
      if (!norm) {
        std::memcpy(dst, src, sizeof(float) * k * C);
        continue;
      }
      for (int64_t kw = 0; kw < k; ++kw) {
        float mean, rstd;
        row_stats<V>(src + kw * C, C, eps, mean, rstd);
        const F m = bc<F>(mean), s = bc<F>(rstd);
        for (int64_t c = 0; c < C; c += V)
          store<V>(dst + kw * C + c, (load<V>(src + kw * C + c, C - c) - m) * s, C - c);
      }
    }
  }
}

// Output rows (rows x n, row stride ldy): y += bias; then, with ln_w, LayerNorm over the n = O
// values of each row with affine ln_w / ln_b (zeros when null).
template <int V>
CFM_AI void epilogue_impl(float* y, int64_t ldy, int64_t rows, int64_t n, const float* bias, const float* ln_w,
                          const float* ln_b, float eps) {
  typedef typename Vec<V>::f F;
  for (int64_t r = 0; r < rows; ++r) {
    float* p = y + r * ldy;
    if (bias)
      for (int64_t c = 0; c < n; c += V) store<V>(p + c, load<V>(p + c, n - c) + load<V>(bias + c, n - c), n - c);
    if (!ln_w) continue;
    float mean, rstd;
    row_stats<V>(p, n, eps, mean, rstd);
    const F m = bc<F>(mean), s = bc<F>(rstd);
    for (int64_t c = 0; c < n; c += V) {
      const F v = (load<V>(p + c, n - c) - m) * s * load<V>(ln_w + c, n - c);
      store<V>(p + c, ln_b ? v + load<V>(ln_b + c, n - c) : v, n - c);
    }
  }
}

using BF = c10::BFloat16;

// The bf16 gather: patch rows [r0, r0 + rows) of x (N, H, W, C) into P (rows x K), each input
// pixel normalized over C in fp32 when norm is set (tmp: C floats), then rounded once.
template <int V>
CFM_AI void gather_bf16_impl(const BF* x, int64_t H, int64_t W, int64_t C, int64_t k, int64_t Ho, int64_t Wo,
                             int64_t r0, int64_t rows, bool norm, float eps, BF* P, float* tmp) {
  typedef typename Vec<V>::f F;
  const int64_t K = k * k * C;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r0 + r, n = t / (Ho * Wo), i = t / Wo % Ho, j = t % Wo;
    for (int64_t kh = 0; kh < k; ++kh) {
      const BF* src = x + ((n * H + i * k + kh) * W + j * k) * C;
      BF* dst = P + r * K + kh * k * C;
      if (!norm) {
        std::memcpy(dst, src, sizeof(BF) * k * C);
        continue;
      }
      for (int64_t kw = 0; kw < k; ++kw) {
        for (int64_t c = 0; c < C; c += V) store<V>(tmp + c, load<V>(src + kw * C + c, C - c), C - c);
        float mean, rstd;
        row_stats<V>(tmp, C, eps, mean, rstd);
        const F m = bc<F>(mean), s = bc<F>(rstd);
        for (int64_t c = 0; c < C; c += V) store<V>(dst + kw * C + c, (load<V>(tmp + c, C - c) - m) * s, C - c);
      }
    }
  }
}

// The output LayerNorm on bf16 rows (rows x n, in place), in fp32 (tmp: n floats): epilogue_impl
// on each row's fp32 copy.
template <int V>
CFM_AI void norm_rows_bf16_impl(BF* y, int64_t rows, int64_t n, const float* ln_w, const float* ln_b, float eps,
                                float* tmp) {
  for (int64_t r = 0; r < rows; ++r) {
    BF* p = y + r * n;
    for (int64_t c = 0; c < n; c += V) store<V>(tmp + c, load<V>(p + c, n - c), n - c);
    epilogue_impl<V>(tmp, n, 1, n, nullptr, ln_w, ln_b, eps);
    for (int64_t c = 0; c < n; c += V) store<V>(p + c, load<V>(tmp + c, n - c), n - c);
  }
}

struct PatchOps {
  void (*gather)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, float,
                 float*);
  void (*epilogue)(float*, int64_t, int64_t, int64_t, const float*, const float*, const float*, float);
  void (*gather_bf16)(const BF*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, float,
                      BF*, float*);
  void (*norm_rows_bf16)(BF*, int64_t, int64_t, const float*, const float*, float, float*);
};

#define CPL_DEFINE_OPS(NAME, ATTR, V)                                                                             \
  ATTR void gather_##NAME(const float* x, int64_t H, int64_t W, int64_t C, int64_t k, int64_t Ho, int64_t Wo,     \
                          int64_t r0, int64_t rows, bool norm, float eps, float* P) {                             \
    gather_impl<V>(x, H, W, C, k, Ho, Wo, r0, rows, norm, eps, P);                                                \
  }                                                                                                               \
  ATTR void epilogue_##NAME(float* y, int64_t ldy, int64_t rows, int64_t n, const float* b, const float* w,       \
                            const float* lb, float eps) {                                                         \
    epilogue_impl<V>(y, ldy, rows, n, b, w, lb, eps);                                                             \
  }                                                                                                               \
  ATTR void gather_bf16_##NAME(const BF* x, int64_t H, int64_t W, int64_t C, int64_t k, int64_t Ho, int64_t Wo,   \
                               int64_t r0, int64_t rows, bool norm, float eps, BF* P, float* tmp) {               \
    gather_bf16_impl<V>(x, H, W, C, k, Ho, Wo, r0, rows, norm, eps, P, tmp);                                      \
  }                                                                                                               \
  ATTR void norm_rows_bf16_##NAME(BF* y, int64_t rows, int64_t n, const float* w, const float* b, float eps,       \
                                  float* tmp) {                                                                   \
    norm_rows_bf16_impl<V>(y, rows, n, w, b, eps, tmp);                                                           \
  }                                                                                                               \
  const PatchOps patch_ops_##NAME = {gather_##NAME, epilogue_##NAME, gather_bf16_##NAME, norm_rows_bf16_##NAME};

CFV_FOR_EACH_ISA(CPL_DEFINE_OPS)

const PatchOps& ops() {
  static const PatchOps& o = pick_isa(isa(), patch_ops_generic, CFV_ISA(patch_ops_avx2), CFV_ISA(patch_ops_avx512));
  return o;
}

// ---------------------------------------------------------------------------------- checks

void check_vector(const OptTensor& t, const char* name, int64_t O, at::ScalarType dtype) {
  if (!t) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == O, "convnext_fast patch_linear (CPU): ", name,
              " must have shape (O,) = (", O, ",), got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == dtype && t->is_cpu() && t->is_contiguous(),
              "convnext_fast patch_linear (CPU): ", name, " must be a contiguous ", dtype, " CPU tensor (x's dtype), got ",
              t->scalar_type(), " on ", t->device());
}

OptTensor to_f32(const OptTensor& t) { return t ? OptTensor(t->to(at::kFloat)) : OptTensor(); }

Tensor forward_f32(const Tensor& x, const Tensor& weight_t, const OptTensor& bias, int64_t k,
                   c10::optional<double> in_eps, const OptTensor& out_weight, const OptTensor& out_bias, double out_eps);

// The gathered patch rows through oneDNN's linear (see the file comment), the output LayerNorm
// after it: bf16 with bf16 dot products, and float32 below kOneDnnMaxRowsF32 output pixels.
template <class T>
Tensor forward_onednn(const Tensor& x, const Tensor& weight_t, const OptTensor& bias, int64_t k,
                      c10::optional<double> in_eps, const OptTensor& out_weight, const OptTensor& out_bias,
                      double out_eps) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t K = k * k * C, O = weight_t.size(1), Ho = H / k, Wo = W / k, M = N * Ho * Wo;
  const Tensor P = empty_pooled({M, K}, x.scalar_type());
  const T* X = x.data_ptr<T>();
  T* Pp = P.data_ptr<T>();
  const bool norm = in_eps.has_value();
  const float eps_in = norm ? static_cast<float>(*in_eps) : 0.f;
  const PatchOps& o = ops();
  at::parallel_for(0, M, 16, [&](int64_t first, int64_t last) {
    if constexpr (std::is_same_v<T, float>) {
      o.gather(X, H, W, C, k, Ho, Wo, first, last - first, norm, eps_in, Pp + first * K);
    } else {
      std::vector<float> tmp(static_cast<size_t>(C));
      o.gather_bf16(X, H, W, C, k, Ho, Wo, first, last - first, norm, eps_in, Pp + first * K, tmp.data());
    }
  });
  // (O, K) view of weight_t: onednn_weight keeps its packed copy, keyed by this view's strides.
  Tensor y = onednn_linear(P, onednn_weight(weight_t.t()), bias, /*gelu=*/false);
  if (out_weight) {
    const Tensor lw = out_weight->to(at::kFloat), lb = out_bias ? out_bias->to(at::kFloat) : at::zeros({O}, lw.options());
    T* Y = y.data_ptr<T>();
    at::parallel_for(0, M, 16, [&](int64_t first, int64_t last) {
      if constexpr (std::is_same_v<T, float>) {
        o.epilogue(Y + first * O, O, last - first, O, nullptr, lw.data_ptr<float>(), lb.data_ptr<float>(),
                   static_cast<float>(out_eps));
      } else {
        std::vector<float> tmp(static_cast<size_t>(O));
        o.norm_rows_bf16(Y + first * O, last - first, O, lw.data_ptr<float>(), lb.data_ptr<float>(),
                         static_cast<float>(out_eps), tmp.data());
      }
    });
  }
  return y.view({N, Ho, Wo, O});
}

}  // namespace

Tensor patch_linear_forward(const Tensor& x, const Tensor& weight_t, const OptTensor& bias, int64_t k,
                            c10::optional<double> in_eps, const OptTensor& out_weight, const OptTensor& out_bias,
                            double out_eps) {
  TORCH_CHECK(x.dim() == 4 && x.is_cpu() && x.is_contiguous(),
              "convnext_fast patch_linear (CPU): x must be a contiguous (N, H, W, C) CPU tensor, got shape ",
              x.sizes(), " on ", x.device());
  const at::ScalarType dtype = x.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(dtype == at::kFloat || dtype == at::kBFloat16,
                              "convnext_fast patch_linear (CPU): supports float32 and bfloat16, got ", dtype);
  const int64_t H = x.size(1), W = x.size(2), C = x.size(3);
  TORCH_CHECK(k >= 1 && H >= k && W >= k, "convnext_fast patch_linear (CPU): patch size k=", k,
              " must be >= 1 and fit in the input's H=", H, ", W=", W);
  TORCH_CHECK(C >= 1, "convnext_fast patch_linear (CPU): x has no channels");
  const int64_t K = k * k * C;
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.size(0) == K && weight_t.scalar_type() == dtype &&
                  weight_t.is_cpu() && weight_t.is_contiguous(),
              "convnext_fast patch_linear (CPU): weight_t must be a contiguous (k*k*C, O) CPU tensor of x's dtype ",
              dtype, " with k*k*C = ", K, ", got ", weight_t.scalar_type(), " of shape ", weight_t.sizes());
  const int64_t O = weight_t.size(1);
  check_vector(bias, "bias", O, dtype);
  check_vector(out_weight, "out_weight", O, dtype);
  check_vector(out_bias, "out_bias", O, dtype);
  TORCH_CHECK(!out_bias || out_weight, "convnext_fast patch_linear (CPU): out_bias given without out_weight");
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: nothing here is differentiated
  const int64_t M = x.size(0) * (H / k) * (W / k);
  const bool dnn = M > 0 && onednn_linear_available();
  if (dtype == at::kFloat) {
    if (dnn && M < kOneDnnMaxRowsF32)
      return forward_onednn<float>(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps);
    return forward_f32(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps);
  }
  if (dnn && native_bf16_dot())
    return forward_onednn<BF>(x, weight_t, bias, k, in_eps, out_weight, out_bias, out_eps);
  // Without bf16 dot products: the float32 kernel on a widened copy (from the output pool, as is
  // the rounded result), its output rounded once.
  Tensor xf = empty_pooled(x.sizes(), at::kFloat);
  xf.copy_(x);
  const Tensor yf = forward_f32(xf, widened(weight_t), to_f32(bias), k, in_eps, to_f32(out_weight), to_f32(out_bias),
                                out_eps);
  Tensor y = empty_pooled(yf.sizes(), at::kBFloat16);
  y.copy_(yf);
  return y;
}

namespace {

// float32 (see the file comment): x (N, H, W, C), weight_t (k*k*C, O) and the vectors checked.
Tensor forward_f32(const Tensor& x, const Tensor& weight_t, const OptTensor& bias, int64_t k,
                   c10::optional<double> in_eps, const OptTensor& out_weight, const OptTensor& out_bias,
                   double out_eps) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t K = k * k * C, O = weight_t.size(1);
  const int64_t Ho = H / k, Wo = W / k, M = N * Ho * Wo;
  Tensor out = empty_pooled({N, Ho, Wo, O}, x.scalar_type());
  if (M == 0 || O == 0) return out;

  // Column panels: all O at once when the output LayerNorm needs whole rows, else equal panels of
  // at most kMaxCols (a multiple of 16 columns: whole AVX-512 vectors in brgemm's N dimension).
  const int64_t panels = out_weight ? 1 : (O + kMaxCols - 1) / kMaxCols;
  const int64_t nJ = out_weight ? O : std::min(O, ((O + panels - 1) / panels + 15) / 16 * 16);
  const int64_t kJ = std::clamp<int64_t>(kPanelBytes / (4 * nJ), 16, K);
  // Row blocks: about kTileBytes of patch rows, their count rounded up to a multiple of the threads
  // when there are only a few per thread (no thread idles at the end); a multiple of 16 rows.
  const int64_t T = std::max<int64_t>(1, at::get_num_threads());
  const int64_t target = std::clamp<int64_t>(kTileBytes / (4 * K), 16, kMaxRows);
  int64_t nb = (M + target - 1) / target;
  if (nb * panels < 8 * T) {
    const int64_t units = (nb * panels + T - 1) / T * T;
    nb = (units + panels - 1) / panels;
  }
  const int64_t R = std::min(M, ((M + nb - 1) / nb + 15) / 16 * 16);
  const int64_t blocks = (M + R - 1) / R;

  const Tensor scratch = at::empty({T * R * K}, x.options());
  const float* X = x.data_ptr<float>();
  const float* Wt = weight_t.data_ptr<float>();
  const float* B = bias ? bias->data_ptr<float>() : nullptr;
  const float* LW = out_weight ? out_weight->data_ptr<float>() : nullptr;
  const float* LB = out_bias ? out_bias->data_ptr<float>() : nullptr;
  float* Y = out.data_ptr<float>();
  const bool norm = in_eps.has_value();
  const float eps_in = norm ? static_cast<float>(*in_eps) : 0.f;
  const PatchOps& o = ops();
  at::parallel_for(0, blocks * panels, 1, [&](int64_t first, int64_t last) {
    float* P = scratch.data_ptr<float>() + at::get_thread_num() * R * K;
    int64_t gathered = -1;
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t blk = unit / panels, j0 = unit % panels * nJ;
      const int64_t r0 = blk * R, rows = std::min(R, M - r0), n = std::min(nJ, O - j0);
      if (n <= 0) continue;
      if (blk != gathered) {
        o.gather(X, H, W, C, k, Ho, Wo, r0, rows, norm, eps_in, P);
        gathered = blk;
      }
      for (int64_t k0 = 0; k0 < K; k0 += kJ)
        at::native::cpublas::brgemm(rows, n, std::min(kJ, K - k0), K, O, O, k0 > 0, P + k0, Wt + k0 * O + j0,
                                    Y + r0 * O + j0, false);
      o.epilogue(Y + r0 * O + j0, O, rows, n, B ? B + j0 : nullptr, LW, LB, static_cast<float>(out_eps));
    }
    at::native::cpublas::brgemm_release(false);
  });
  return out;
}

}  // namespace

}  // namespace convnext_fast_cpu
