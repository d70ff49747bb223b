// What every GEMM driver shares (gemm.cpp: float weights; gemm_quant.cpp: block-quantized weights):
// the parallel work split, the weight-row prefetch distance, the register tiles' final lane sums,
// and the fp32 register-tile block. Internal to csrc/cpu.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/threading.h"
#include "dispatch.h"

namespace lfm2::cpu {

constexpr int64_t kPrefetchBytes = 8192;

// Elements from a weight row's current position to its prefetch target: at least
// kPrefetchBytes, or one tile of NR rows (ldw elements of elem_bytes each) ahead.
inline int64_t prefetch_offset(int NR, int64_t ldw, int64_t elem_bytes) {
    return std::max<int64_t>(NR, kPrefetchBytes / std::max<int64_t>(1, ldw * elem_bytes)) * ldw;
}

// out[i * ldo + j] = S::hsum(acc[i][j]) for a register tile's lane accumulators (hsum4 over each
// group of 4 weight rows: the same tree per vector, so the same bits).
template <class S, int MR, int NR>
LFM2_KERNEL void store_tile_sums(const typename S::F (&acc)[MR][NR], float* out, int64_t ldo) {
    if constexpr (NR % 4 == 0) {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; j += 4)
                S::hsum4(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3], out + i * ldo + j);
    } else {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) out[i * ldo + j] = S::hsum(acc[i][j]);
    }
}

constexpr int64_t kWeightBlockBytes = 512 * 1024;  // half of a 1-2 MiB L2
// x rows per work item (multiples of every MR): 48, or 96 for a long prefill, where each weight
// block is then reused by twice as many tiles (K = 2048, T = 1024: 0.64 -> 0.70x OpenBLAS); short
// inputs keep 48 so that both threads get equal shares.
constexpr int64_t kRowChunk = 48, kRowChunkLong = 96;

// The parallel loop over (row chunk, weight block) work items shared by every GEMM driver:
// run(m0, m1, n0, n1) for rows [m0, m1) × weight rows [n0, n1). Weight block: as many rows of
// row_bytes as fit kWeightBlockBytes, a multiple of 16 (every NR divides it), shrunk when there
// would be too few items to keep the threads busy. The split never changes a result.
template <class Run>
void for_each_gemm_block(int64_t M, int64_t N, int64_t K, int64_t row_bytes, Run&& run) {
    if (M <= 0 || N <= 0) return;
    int64_t nb = std::max<int64_t>(16, kWeightBlockBytes / std::max<int64_t>(row_bytes, 1) / 16 * 16);
    const int64_t rc = M >= 8 * kRowChunkLong ? kRowChunkLong : kRowChunk;
    const int64_t m_chunks = (M + rc - 1) / rc, min_items = 4 * int64_t(num_threads());
    if (m_chunks * ((N + nb - 1) / nb) < min_items) {
        const int64_t want_blocks = (min_items + m_chunks - 1) / m_chunks;
        nb = std::max<int64_t>(16, ((N + want_blocks - 1) / want_blocks + 15) / 16 * 16);
    }
    const int64_t n_blocks = (N + nb - 1) / nb;
    parallel_for(
        m_chunks * n_blocks,
        [&](int64_t item) {
            const int64_t m0 = item / n_blocks * rc, n0 = item % n_blocks * nb;
            run(m0, std::min(M, m0 + rc), n0, std::min(N, n0 + nb));
        },
        M * N * std::max<int64_t>(K, 1), min_parallel_gemm());
}

// Rows [m0, m1) × weight rows [n0, n1) of the float32 GEMM (gemm.cpp's register tiles): out[m, n] for
// w rows n of ldw floats. Row-batch invariant like every gemm path.
void gemm_f32_block(Isa isa, const float* x, int64_t ldx, const float* w, int64_t ldw, float* out, int64_t ldo,
                    int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K);

// gemm_raw for the block-quantized weight types (gemm_quant.cpp); ldw is in weights (a multiple of the block).
void gemm_quant(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
                int64_t M, int64_t N, int64_t K);

}  // namespace lfm2::cpu
