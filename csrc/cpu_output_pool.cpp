// The outputs of the CPU kernels' forwards (the fused depthwise conv + LayerNorm, the MLP, the patch
// convolutions) are activations of several MB at batch 8 and up. Memory that large comes from the
// C library straight from the operating system (mmap) and goes back to it when freed, so every
// forward paid a page fault and a zero fill per 4 KB of every output: about 6% of a float32
// ConvNeXt-T forward at batch 8 (docs/performance.md). Here a freed output of 1 MiB or more keeps
// its block, and the next output of the same rounded size takes it: a model run on inputs of one
// shape reuses the same few blocks forward after forward.
//
// At most kMaxKeptBytes are kept in all and kMaxKeptPerSize blocks of one size; a block given back
// beyond that is freed. release_pooled_memory() (convnext_fast.extension.release_cpu_memory) frees
// every kept block.
#include "cpu_output_pool.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace convnext_fast_cpu {
namespace {

constexpr size_t kMinPooledBytes = size_t(1) << 20;
constexpr size_t kRoundBytes = size_t(64) << 10;  // sizes rounded up to 64 KiB: nearby sizes share blocks
constexpr size_t kMaxKeptBytes = size_t(256) << 20;
constexpr size_t kMaxKeptPerSize = 4;

struct Block {
  void* ptr;
  size_t bytes;
};

class OutputPool final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinPooledBytes) return c10::GetCPUAllocator()->allocate(n);
    const size_t bytes = (n + kRoundBytes - 1) / kRoundBytes * kRoundBytes;
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        kept_ -= bytes;
      }
    }
    if (!ptr) {
      ptr = std::aligned_alloc(64, bytes);
      if (!ptr) throw std::bad_alloc();
    }
    return {ptr, new Block{ptr, bytes}, &OutputPool::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }

  int64_t release() {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t freed = kept_;
    for (auto& entry : free_)
      for (void* p : entry.second) std::free(p);
    free_.clear();
    kept_ = 0;
    return static_cast<int64_t>(freed);
  }

  static OutputPool& instance() {
    static OutputPool* pool = new OutputPool();  // never destroyed: tensors may outlive static teardown
    return *pool;
  }

 private:
  static void give_back(void* ctx) {
    Block* b = static_cast<Block*>(ctx);
    OutputPool& pool = instance();
    bool kept = false;
    {
      std::lock_guard<std::mutex> lock(pool.mu_);
      std::vector<void*>& same = pool.free_[b->bytes];
      if (pool.kept_ + b->bytes <= kMaxKeptBytes && same.size() < kMaxKeptPerSize) {
        same.push_back(b->ptr);
        pool.kept_ += b->bytes;
        kept = true;
      }
    }
    if (!kept) std::free(b->ptr);
    delete b;
  }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t kept_ = 0;
};

}  // namespace

at::Tensor empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype, at::MemoryFormat memory_format) {
  return at::detail::empty_generic(sizes, &OutputPool::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   memory_format);
}

int64_t release_pooled_memory() { return OutputPool::instance().release(); }

}  // namespace convnext_fast_cpu
