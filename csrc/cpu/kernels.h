// Raw entry points that one op family offers to another (moe.cpp composes gemm and swiglu).
// Same arithmetic as the public ops, on raw strided pointers, no argument checks: callers have
// validated. Not part of the Python surface.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "dispatch.h"

namespace lfm2::cpu {

// out[m, n] = Σ_k x[m, k] · w[n, k] for m < M, n < N; rows strided by ldx / ldw / ldo elements.
// Parallel over output blocks (runs serially when called inside a parallel region).
void gemm_raw(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
              int64_t M, int64_t N, int64_t K);

// out[r, f] = silu(gu[r, f]) · gu[r, F + f] for r < rows, f < F.
void swiglu_raw(Isa isa, float* out, int64_t ldo, const float* gu, int64_t ldg, int64_t rows, int64_t F);

}  // namespace lfm2::cpu
