// Memory for the outputs of the CPU kernels (cpu_output_pool.cpp).
#pragma once

#include <ATen/ATen.h>

namespace convnext_fast_cpu {

// An uninitialized tensor whose memory, when it is large, comes from the blocks earlier outputs
// gave back when they were freed (see cpu_output_pool.cpp). Otherwise an ordinary CPU tensor:
// resizable, shareable, freed like any other.
at::Tensor empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype,
                        at::MemoryFormat memory_format = at::MemoryFormat::Contiguous);

// Frees every block the pool keeps; returns the bytes freed.
int64_t release_pooled_memory();

}  // namespace convnext_fast_cpu
