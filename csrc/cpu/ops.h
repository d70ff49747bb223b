// The CPU op library: one function per op of core/contracts.h (signatures, semantics and argument
// checks are written there, once for every backend), outputs first (STYLE.md 4). A CUDA twin
// with the same signature lives in lfm2::cuda. Every op starts with its check_<op>() (dtype ->
// TypeError, rank/shape/contiguity -> ValueError, host-memory indices -> IndexError) before
// touching memory, then runs the active SIMD path (dispatch.h) on the engine's threads
// (threading.h). Reference: python/lfm2engine/reference.py (the NumPy oracle).
//
// Row-batch invariance (all ops): the value computed for one row (token) is bit-identical
// whatever other rows share the call, wherever it sits, and whatever the thread count. Paths
// (scalar / avx2 / avx512) may differ from each other within rounding.
#pragma once

#include "core/contracts.h"

namespace lfm2::cpu {

LFM2_OP_SIGNATURES(LFM2_DECLARE_OP)

}  // namespace lfm2::cpu
