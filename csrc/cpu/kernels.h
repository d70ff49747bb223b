// Raw entry points that one op family offers to another (moe.cpp composes gemm and swiglu).
// Same arithmetic as the public ops, on raw strided pointers, no argument checks: callers have
// validated. Not part of the Python surface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "dispatch.h"

namespace lfm2::cpu {

// out[m, n] = Σ_k x[m, k] · w[n, k] for m < M, n < N; rows strided by ldx / ldw / ldo elements.
// Parallel over output blocks (runs serially when called inside a parallel region).
void gemm_raw(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
              int64_t M, int64_t N, int64_t K);

// out[r, f] = silu(gu[r, f]) · gu[r, F + f] for r < rows, f < F.
void swiglu_raw(Isa isa, float* out, int64_t ldo, const float* gu, int64_t ldg, int64_t rows, int64_t F);

// Grow-only per-call scratch, kept in a caller's thread_local vector. Freshly allocated
// multi-MiB buffers come from mmap and are zero-filled page by page on first touch: allocated per
// call, that page-fault work made the MoE experts 8x slower than their GEMMs.
template <class T>
T* scratch(std::vector<T>& v, int64_t n) {
    if (int64_t(v.size()) < n) v.resize(size_t(n));
    return v.data();
}

// Call after use: a buffer above kKeepScratchBytes is given back (a long prefill of a real-size
// model needs hundreds of MiB, whose page faults are small next to its GEMMs; keeping them would
// pin that memory).
constexpr size_t kKeepScratchBytes = size_t(64) << 20;

template <class T>
void trim_scratch(std::vector<T>& v) {
    if (v.size() * sizeof(T) > kKeepScratchBytes) std::vector<T>().swap(v);
}

}  // namespace lfm2::cpu
