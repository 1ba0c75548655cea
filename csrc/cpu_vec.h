// Short fixed-width float vectors for the CPU kernels written with GCC / Clang vector extensions
// (cpu_mlp.cpp, cpu_patch_linear.cpp; cpu_kernels.cpp takes only the bf16 widening): V floats per
// vector, compiled for AVX-512 (V = 16), AVX2 (8) or baseline x86-64 (4) by the caller's target
// attribute. Loads and stores of n < V elements touch only those n (row tails), so every element
// of a row gets the same vector arithmetic.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace convnext_fast_cpu {
namespace simd {

#define CFM_AI inline __attribute__((always_inline))

template <int V>
struct Vec {
  typedef float f __attribute__((vector_size(V * 4)));
  typedef int32_t i __attribute__((vector_size(V * 4)));
  typedef uint32_t u __attribute__((vector_size(V * 4)));
  typedef uint16_t h __attribute__((vector_size(V * 2)));
};

// One bf16 value (its uint16_t bits) as a float: a 16-bit shift, bit for bit what c10::BFloat16 does.
inline float bf16_bits_to_f32(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <class T>
CFM_AI T bc(float v) {
  return T{} + v;
}

// V floats from p (n < V: the first n, zeros after).
template <int V>
CFM_AI typename Vec<V>::f load(const float* p, int64_t n) {
  typename Vec<V>::f v{};
  // Full vectors take the constant-size copy (one vector load); only row tails the variable one.
  if (n >= V)
    std::memcpy(&v, p, sizeof(v));
  else
    std::memcpy(&v, p, sizeof(float) * n);
  return v;
}
template <int V>
CFM_AI void store(float* p, typename Vec<V>::f v, int64_t n) {
  if (n >= V)
    std::memcpy(p, &v, sizeof(v));
  else
    std::memcpy(p, &v, sizeof(float) * n);
}
// bf16 bits -> float: the bits are the high half of the float.
template <int V>
CFM_AI typename Vec<V>::f load(const c10::BFloat16* p, int64_t n) {
  typename Vec<V>::h b{};
  if (n >= V)
    std::memcpy(&b, p, sizeof(b));
  else
    std::memcpy(&b, p, sizeof(uint16_t) * n);
  const typename Vec<V>::u u = __builtin_convertvector(b, typename Vec<V>::u) << 16;
  typename Vec<V>::f v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}
// float -> bf16, round to nearest even, NaN stays NaN (c10::BFloat16's rounding, bit for bit).
template <int V>
CFM_AI void store(c10::BFloat16* p, typename Vec<V>::f v, int64_t n) {
  typedef typename Vec<V>::u u32;
  u32 u;
  std::memcpy(&u, &v, sizeof(u));
  const u32 rounded = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16;
  const u32 r = v != v ? u32{} + 0x7FC0u : rounded;
  const typename Vec<V>::h b = __builtin_convertvector(r, typename Vec<V>::h);
  if (n >= V)
    std::memcpy(p, &b, sizeof(b));
  else
    std::memcpy(p, &b, sizeof(uint16_t) * n);
}

// Instruction-set dispatch. A kernel file writes its elementwise functions once, as templates on V,
// and a macro DEFINE(NAME, ATTR, V) that defines a table of them compiled with the target attribute
// ATTR; then
//   CFV_FOR_EACH_ISA(DEFINE)
//   const Ops& ops() {
//     static const Ops& o = pick_isa(isa(), ops_generic, CFV_ISA(ops_avx2), CFV_ISA(ops_avx512));
//     return o;
//   }
// picks the table of the instruction set isa() names (one choice for all CPU kernels).
#if defined(__x86_64__) && defined(__GNUC__)
#define CFV_FOR_EACH_ISA(DEFINE)                               \
  DEFINE(generic, , 4)                                         \
  DEFINE(avx2, __attribute__((target("arch=x86-64-v3"))), 8) \
  DEFINE(avx512, __attribute__((target("arch=x86-64-v4"))), 16)
#define CFV_ISA(table) (&(table))
#else
#define CFV_FOR_EACH_ISA(DEFINE) DEFINE(generic, , 4)
#define CFV_ISA(table) nullptr
#endif

template <class Ops>
const Ops& pick_isa(const std::string& name, const Ops& generic, const Ops* avx2, const Ops* avx512) {
  if (name == "avx512" && avx512) return *avx512;
  if (name == "avx2" && avx2) return *avx2;
  return generic;
}

}  // namespace simd
}  // namespace convnext_fast_cpu
