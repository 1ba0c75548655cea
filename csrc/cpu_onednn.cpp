// The CPU kernels' GEMMs on oneDNN's linear, and the weights they derive from a model's weights
// (API in cpu_onednn.h).
#include "cpu_onednn.h"

#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cpu_kernels.h"  // isa(): one instruction-set choice for all CPU kernels

namespace convnext_fast_cpu {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// True when bf16 GEMMs run on bf16 dot-product instructions here: the CPU has AVX512_BF16, the CPU
// kernels run their AVX-512 code (CONVNEXT_FAST_CPU_ISA not lower) and oneDNN is not held below
// its bf16 instruction sets (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA). Elsewhere oneDNN emulates the
// bf16 products (a bf16 GEMM then ran ~3x slower than the fp32 one), so bf16 inputs are widened and
// run through the fp32 kernel instead: bf16 is never slower than fp32 there, only its memory is smaller.
bool native_bf16_dot() {
  static const bool native = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (std::strcmp(isa(), "avx512") != 0 || !__builtin_cpu_supports("avx512bf16")) return false;
    for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
      const char* cap = std::getenv(name);
      if (!cap || !*cap) continue;
      std::string v(cap);
      std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      // oneDNN's ISA names with bf16 dot products: AVX512_CORE_BF16 and every level above it.
      const bool has_bf16 = v == "ALL" || v.find("BF16") != std::string::npos || v.find("AMX") != std::string::npos ||
                            v.find("FP16") != std::string::npos || v.find("AVX10") != std::string::npos;
      if (!has_bf16) return false;
    }
    return true;
#else
    return false;
#endif
  }();
  return native;
}

namespace {

// Weights derived from a model's weights (fp32 copies of bf16 weights for the fp32 fallback,
// oneDNN's prepacked bf16 weights), kept between calls so that a forward does not convert every
// weight on every call (at batch 1 a conversion costs about as much as the GEMMs). An entry is
// reused only for the same kind, storage (held weakly: a freed storage's address is never mistaken
// for a new one), data pointer, shape, strides and version counter: an in-place update of the weight
// or of any view of it bumps the version and the next call converts again. Inference tensors have
// no version counter and are converted on every call. Writes that bypass the version counter
// (``.data``, raw pointers) are not seen, as by autograd's own saved-tensor checks.
enum class Derived { kWidened, kPacked };
struct DerivedWeight {
  Derived kind;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  std::vector<int64_t> sizes, strides;
  uint32_t version;
  Tensor value;
};
constexpr size_t kMaxDerivedBytes = size_t(1) << 30;  // whole models up to ~250M MLP weights

template <class Make>
Tensor derived(const Tensor& w, Derived kind, const Make& make) {
  if (w.is_inference()) return make(w);
  static std::mutex mu;
  static std::vector<DerivedWeight> cache;  // most recently used last
  const c10::StorageImpl* storage = w.storage().unsafeGetStorageImpl();
  const uint32_t version = w.unsafeGetTensorImpl()->version_counter().current_version();
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 0; i < cache.size(); ++i) {
    DerivedWeight& e = cache[i];
    if (e.kind != kind || e.storage.expired() || e.storage._unsafe_get_target() != storage ||
        e.data != w.data_ptr() || e.sizes != w.sizes().vec() || e.strides != w.strides().vec())
      continue;
    if (e.version != version) {  // updated in place: this entry is stale
      cache.erase(cache.begin() + static_cast<std::ptrdiff_t>(i));
      break;
    }
    std::rotate(cache.begin() + static_cast<std::ptrdiff_t>(i), cache.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                cache.end());
    return cache.back().value;
  }
  // drop the weights of freed models, then the least recently used until the new one fits
  cache.erase(std::remove_if(cache.begin(), cache.end(), [](const DerivedWeight& e) { return e.storage.expired(); }),
              cache.end());
  Tensor value = make(w);
  const auto bytes_of = [](const Tensor& t) { return static_cast<size_t>(t.numel()) * t.element_size(); };
  size_t bytes = bytes_of(value);
  for (const DerivedWeight& e : cache) bytes += bytes_of(e.value);
  while (!cache.empty() && bytes > kMaxDerivedBytes) {
    bytes -= bytes_of(cache.front().value);
    cache.erase(cache.begin());
  }
  cache.push_back({kind, c10::weak_intrusive_ptr<c10::StorageImpl>(w.storage().getWeakStorageImpl()), w.data_ptr(),
                   w.sizes().vec(), w.strides().vec(), version, value});
  return value;
}


// bf16 GEMMs on oneDNN's linear with its weights prepacked once (the ops torch.compile's freezing
// uses on the CPU: mkldnn::_reorder_linear_weight, mkldnn::_linear_pointwise), GELU and the
// residual add as the GEMMs' post-ops: fc1's hidden tile gets its bias and GELU while it is in
// cache, and fc2 adds the shortcut the same way, so the bf16 forward makes no elementwise pass over
// the hidden activation and, in inference, none over the output. The post-ops work on the fp32
// accumulators, so h and fc2's output are rounded once, not twice as by a GEMM and a later pass.
// Called through the dispatcher, boxed: these are PyTorch's internal ops (no public C++ API); a
// PyTorch without them (no oneDNN) takes the whole-matrix path below.
struct OneDnnLinear {
  c10::OperatorHandle pointwise, binary, reorder;
};

const OneDnnLinear* onednn_ops() {
  static const std::optional<OneDnnLinear> ops = []() -> std::optional<OneDnnLinear> {
    if (!at::hasMKLDNN()) return std::nullopt;
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto pointwise = dispatcher.findOp({"mkldnn::_linear_pointwise", ""});
    const auto binary = dispatcher.findOp({"mkldnn::_linear_pointwise", "binary"});
    const auto reorder = dispatcher.findOp({"mkldnn::_reorder_linear_weight", ""});
    if (!pointwise || !binary || !reorder) return std::nullopt;
    return OneDnnLinear{*pointwise, *binary, *reorder};
  }();
  return ops ? &*ops : nullptr;
}

Tensor call_boxed(const c10::OperatorHandle& op, std::vector<c10::IValue> stack) {
  op.callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

bool onednn_linear_available() { return onednn_ops() != nullptr; }

Tensor widened(const Tensor& w) {
  return derived(w, Derived::kWidened, [](const Tensor& t) { return t.to(at::kFloat).contiguous(); });
}

Tensor onednn_weight(const Tensor& w) {
  // An inference tensor has no version to check a kept copy against: it is multiplied as stored
  // (oneDNN reorders it inside the call), the same way on every call.
  if (w.is_inference()) return w.contiguous();
  const OneDnnLinear& dnn = *onednn_ops();
  return derived(w, Derived::kPacked,
                 [&](const Tensor& t) { return call_boxed(dnn.reorder, {t.contiguous(), c10::IValue()}); });
}

Tensor onednn_linear(const Tensor& x, const Tensor& w, const OptTensor& b, bool gelu) {
  return call_boxed(onednn_ops()->pointwise,
                    {x, w, b ? c10::IValue(*b) : c10::IValue(), std::string(gelu ? "gelu" : "none"),
                     c10::List<std::optional<at::Scalar>>(), gelu ? c10::IValue(std::string("none")) : c10::IValue()});
}

Tensor onednn_linear_add(const Tensor& x, const Tensor& other, const Tensor& w, const OptTensor& b) {
  return call_boxed(onednn_ops()->binary, {x, other, w, b ? c10::IValue(*b) : c10::IValue(), std::string("add")});
}

}  // namespace convnext_fast_cpu
