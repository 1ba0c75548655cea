// Memory the CPU kernels keep between calls (cpu_kernels.cpp, cpu_mlp.cpp). Fresh memory of an
// activation's size costs a page fault per 4 KB (and the kernel's zero fill) on every call: at
// ConvNeXt-T stage 1, batch 8, fp32 that was half of the fused dwconv + LayerNorm backward's time
// and half of the MLP backward's. Buffers here are thread-local and reused by the next call.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace convnext_fast_cpu {
namespace mem {

// 64-byte aligned storage: with rows a multiple of 16 floats every vector load is then aligned (a
// 16-byte aligned std::vector split every zmm load in two).
template <class A>
struct AlignedAlloc {
  using value_type = A;
  AlignedAlloc() = default;
  template <class B>
  AlignedAlloc(const AlignedAlloc<B>&) {}
  A* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(A) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<A*>(p);
  }
  void deallocate(A* p, size_t) { std::free(p); }
  template <class B>
  bool operator==(const AlignedAlloc<B>&) const { return true; }
  template <class B>
  bool operator!=(const AlignedAlloc<B>&) const { return false; }
};
template <class A>
using avec = std::vector<A, AlignedAlloc<A>>;

// Per-thread scratch that outlives the call (no allocation, page faults or zero-fill per call).
// Each slot is used by one driver at a time and never across nested parallel regions. Slots 0-4:
// cpu_kernels.cpp; 8-13: cpu_mlp.cpp.
template <class A, int Slot>
A* scratch(size_t n) {
  thread_local avec<A> buf;
  if (buf.size() < n) {
    buf.clear();
    buf.shrink_to_fit();
    buf.resize(n);
  }
  return buf.data();
}

// A whole-tensor temporary of the calling thread. Up to kKeepWorkspaceBytes the buffer is kept for
// the next call (scratch slot Slot: the calling thread's, never a worker's); larger ones are
// allocated, uninitialized, per call, so one huge call does not pin its memory for the life of the
// thread.
constexpr size_t kKeepWorkspaceBytes = size_t(256) << 20;
template <class A, int Slot = 3>
struct Workspace {
  struct Free {
    void operator()(A* p) const { std::free(p); }
  };
  std::unique_ptr<A, Free> owned;
  A* ptr;
  explicit Workspace(size_t n) {
    if (n * sizeof(A) <= kKeepWorkspaceBytes) {
      ptr = scratch<A, Slot>(n);
    } else {
      owned.reset(AlignedAlloc<A>().allocate(n));
      ptr = owned.get();
    }
  }
  A* data() const { return ptr; }
};

}  // namespace mem
}  // namespace convnext_fast_cpu
