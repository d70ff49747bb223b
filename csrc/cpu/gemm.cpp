// gemm: out[T, N] = x[T, K] · w[N, K]ᵀ with f32 activations and f32 | bf16 | f16 weights,
// fp32 accumulation. Must match reference.gemm. No BLAS.
// Structure (meant to grow): a register-tile "dot" micro-kernel (MR rows × NR weight rows, one
// SIMD accumulator per output element, full K), a cache-blocked driver (an L2-sized block of
// weight rows is swept by every MR-row tile of x) and a parallel loop over (row chunk, weight
// block) items. For T = 1 it is a GEMV streaming w once at memory bandwidth.
//
// Row-batch invariance, the contract the distributed plans rely on: output element (m, n) is
// always computed the same way, whatever M, the tile it lands in, or the thread: lane l of its
// accumulator sums x[m, k]·w[n, k] for k ≡ l (mod W) in increasing k (the K tail zero-padded),
// then S::hsum's fixed tree reduces the lanes. For K > kKBlock the full MR-row tiles run in K blocks
// (x block packed, lane accumulators spilled between blocks): the same order, the same bits, which
// tests/test_ops_cpu.py::test_gemm_row_batch_invariance checks (single rows take the unblocked tail).
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/threading.h"
#include "gemm_blocks.h"
#include "kernels.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

// Register tile per ISA: MR x-rows × NR w-rows of accumulators (+ MR x vectors + 1 w vector
// must fit the register file: 32 zmm, 16 ymm).
template <class S>
struct Tile {
    static constexpr int MR = 4, NR = 4;
};
template <>
struct Tile<simd::Avx512> {
    static constexpr int MR = 6, NR = 4;
};
template <>
struct Tile<simd::Avx2> {
    static constexpr int MR = 2, NR = 4;
};

// out[i, j] (i < MR, j < NR) = dot(x row i, w row j) over k < K. The blocked form runs one K block:
// x and w point at the block's first column, K is the block's length, and the lane accumulators
// live in spill (W floats per (i, j)) between blocks: loaded unless `first`, stored unless `last`,
// where the tile finishes with the usual hsum. Each lane sums the same products in the same
// increasing-k order as the unblocked tile, so blocking never changes a bit.
template <class S, class WT, int MR, int NR, bool PF = (NR > 1)>
LFM2_KERNEL void dot_tile(const float* x, int64_t ldx, const WT* w, int64_t ldw, float* out, int64_t ldo, int64_t K,
                          float* spill = nullptr, bool first = true, bool last = true) {
    using F = typename S::F;
    F acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = first ? S::zero() : S::load(spill + (i * NR + j) * S::W);
    // PF: prefetch each weight row's stream at least 8 KiB or one tile ahead. One core's demand
    // loads alone keep too few misses in flight to stream weights from DRAM at full rate (GEMV,
    // bf16: 20-25 -> 27-32 GB/s at K = 128..256 on Zen 5), and in a prefill GEMM the next tile's
    // rows arrive from L2 in time (K = 2048: 0.54x -> 0.64x OpenBLAS on one core).
    const int64_t pf = PF ? prefetch_offset(NR, ldw, int64_t(sizeof(WT))) : 0;
    int64_t k = 0;
    for (; k + S::W <= K; k += S::W) {
        F xv[MR];
        for (int i = 0; i < MR; ++i) xv[i] = S::load(x + i * ldx + k);
        for (int j = 0; j < NR; ++j) {
            if constexpr (PF) S::prefetch(w + j * ldw + k + pf);
            F wv = S::load_w(w + j * ldw + k);
            for (int i = 0; i < MR; ++i) acc[i][j] = S::fmadd(xv[i], wv, acc[i][j]);
        }
    }
    if (k < K) {  // zero-padded tail (only in the last block): lanes past K add 0·0
        int r = int(K - k);
        F xv[MR];
        for (int i = 0; i < MR; ++i) xv[i] = S::load_partial(x + i * ldx + k, r);
        for (int j = 0; j < NR; ++j) {
            F wv = S::load_w_partial(w + j * ldw + k, r);
            for (int i = 0; i < MR; ++i) acc[i][j] = S::fmadd(xv[i], wv, acc[i][j]);
        }
    }
    if (!last) {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) S::store(spill + (i * NR + j) * S::W, acc[i][j]);
        return;
    }
    store_tile_sums<S>(acc, out, ldo);
}

// K block of the blocked path (a multiple of every W). The MR × KC block of x is copied to a
// contiguous buffer (6 × 512 f32 = 12 KiB) that stays in L1 while the panel sweeps the weight
// block; unblocked, at K = 2048 the x tile alone fills L1, and x rows 8 KiB apart all map to the
// same L1 sets, so both operands stream from L2.
constexpr int64_t kKBlock = 512;

// Rows [m, m + MR) against weight rows [n0, n1).
template <class S, class WT, int MR>
LFM2_KERNEL void row_panel(const float* x, int64_t ldx, const WT* w, int64_t ldw, float* out, int64_t ldo, int64_t n0,
                           int64_t n1, int64_t K) {
    constexpr int NR = Tile<S>::NR;
    if (MR >= 4 && K > kKBlock) {  // full tiles of a prefill GEMM: K-blocked, accumulators spilled
        thread_local std::vector<float> buf;
        const int64_t slot = int64_t(MR) * NR * S::W;  // floats of one tile's accumulators
        float* xp = scratch(buf, MR * kKBlock + (n1 - n0) * slot);
        float* spill = xp + MR * kKBlock;
        for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
            const int64_t kc = std::min(kKBlock, K - k0);
            const bool first = k0 == 0, last = k0 + kc == K;
            for (int i = 0; i < MR; ++i) std::memcpy(xp + i * kKBlock, x + i * ldx + k0, sizeof(float) * size_t(kc));
            int64_t n = n0;
            float* sp = spill;
            for (; n + NR <= n1; n += NR, sp += slot)
                dot_tile<S, WT, MR, NR, true>(xp, kKBlock, w + n * ldw + k0, ldw, out + n, ldo, kc, sp, first, last);
            for (; n < n1; ++n, sp += slot)
                dot_tile<S, WT, MR, 1>(xp, kKBlock, w + n * ldw + k0, ldw, out + n, ldo, kc, sp, first, last);
        }
        return;
    }
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) dot_tile<S, WT, MR, NR>(x, ldx, w + n * ldw, ldw, out + n, ldo, K);
    for (; n < n1; ++n) dot_tile<S, WT, MR, 1>(x, ldx, w + n * ldw, ldw, out + n, ldo, K);
}

// The last `rows` (< MR) rows: a narrower tile with the same per-element arithmetic.
template <class S, class WT, int R>
LFM2_KERNEL void row_tail(int64_t rows, const float* x, int64_t ldx, const WT* w, int64_t ldw, float* out, int64_t ldo,
                          int64_t n0, int64_t n1, int64_t K) {
    if constexpr (R >= 1) {
        if (rows == R)
            row_panel<S, WT, R>(x, ldx, w, ldw, out, ldo, n0, n1, K);
        else
            row_tail<S, WT, R - 1>(rows, x, ldx, w, ldw, out, ldo, n0, n1, K);
    }
}

// One work item: rows [m0, m1) × weight rows [n0, n1). Each MR-row tile of x sweeps the whole
// weight block, which stays cache-resident across the tiles.
template <class S>
struct GemmBlock {
    template <class WT>
    static LFM2_KERNEL void run(const float* x, int64_t ldx, const WT* w, int64_t ldw, float* out, int64_t ldo,
                                int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K) {
        constexpr int MR = Tile<S>::MR;
        int64_t m = m0;
        for (; m + MR <= m1; m += MR) row_panel<S, WT, MR>(x + m * ldx, ldx, w, ldw, out + m * ldo, ldo, n0, n1, K);
        row_tail<S, WT, MR - 1>(m1 - m, x + m * ldx, ldx, w, ldw, out + m * ldo, ldo, n0, n1, K);
    }
};

template <class WT>
void gemm_typed(Isa isa, const float* x, int64_t ldx, const WT* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                int64_t N, int64_t K) {
    const int64_t row_bytes = std::max<int64_t>(K, 1) * int64_t(sizeof(WT));
    for_each_gemm_block(M, N, K, row_bytes, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        run_kernel<GemmBlock>(isa, x, ldx, w, ldw, out, ldo, m0, m1, n0, n1, K);
    });
}

// ----------------------------------------------------------------------------- bf16 dot mode
// Opt-in (dispatch.h: bf16_dot): bf16 weights against bf16-rounded activations, accumulated in
// fp32 by vdpbf16ps. Lane l of a tile accumulator sums the pairs k = 32i + 2l, 32i + 2l + 1 in
// increasing i (vdpbf16ps's own pair sum), the K tail zero-padded, then S::hsum's tree: the same
// for every M, so this mode is row-batch invariant too. x is rounded once per call (RNE,
// dtype.h's f32_to_bf16). It reads the same weight bytes as the exact bf16 path but does half the
// instructions per weight, which matters where the exact path is bound by FMAs (prefill).
#define LFM2_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,f16c")))

template <int MR, int NR>
LFM2_TARGET_AVX512BF16 inline __attribute__((always_inline)) void dotbf_tile(const uint16_t* x, int64_t ldx,
                                                                              const uint16_t* w, int64_t ldw,
                                                                              float* out, int64_t ldo, int64_t K) {
    using S = simd::Avx512;
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    const int64_t pf = prefetch_offset(NR, ldw, 2);
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv[MR];
        for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_loadu_si512(x + i * ldx + k);
        for (int j = 0; j < NR; ++j) {
            _mm_prefetch(reinterpret_cast<const char*>(w + j * ldw + k + pf), _MM_HINT_T0);
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + j * ldw + k);
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
        }
    }
    if (k < K) {
        const __mmask32 m = __mmask32((uint64_t(1) << (K - k)) - 1);
        __m512bh xv[MR];
        for (int i = 0; i < MR; ++i) xv[i] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + i * ldx + k);
        for (int j = 0; j < NR; ++j) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + j * ldw + k);
            for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
        }
    }
    store_tile_sums<S>(acc, out, ldo);
}

template <int R>
LFM2_TARGET_AVX512BF16 inline __attribute__((always_inline)) void dotbf_rows(const uint16_t* x, int64_t ldx,
                                                                              const uint16_t* w, int64_t ldw,
                                                                              float* out, int64_t ldo, int64_t n0,
                                                                              int64_t n1, int64_t K) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) dotbf_tile<R, 4>(x, ldx, w + n * ldw, ldw, out + n, ldo, K);
    for (; n < n1; ++n) dotbf_tile<R, 1>(x, ldx, w + n * ldw, ldw, out + n, ldo, K);
}

// Rows [m0, m1) × weight rows [n0, n1) of the bf16-dot GEMM (x already bf16).
LFM2_TARGET_AVX512BF16 __attribute__((noinline)) void dotbf_block(const uint16_t* x, int64_t ldx, const uint16_t* w,
                                                                  int64_t ldw, float* out, int64_t ldo, int64_t m0,
                                                                  int64_t m1, int64_t n0, int64_t n1, int64_t K) {
    constexpr int MR = 6;
    int64_t m = m0;
    for (; m + MR <= m1; m += MR) dotbf_rows<MR>(x + m * ldx, ldx, w, ldw, out + m * ldo, ldo, n0, n1, K);
    const uint16_t* xt = x + m * ldx;
    float* ot = out + m * ldo;
    switch (m1 - m) {
        case 5: dotbf_rows<5>(xt, ldx, w, ldw, ot, ldo, n0, n1, K); break;
        case 4: dotbf_rows<4>(xt, ldx, w, ldw, ot, ldo, n0, n1, K); break;
        case 3: dotbf_rows<3>(xt, ldx, w, ldw, ot, ldo, n0, n1, K); break;
        case 2: dotbf_rows<2>(xt, ldx, w, ldw, ot, ldo, n0, n1, K); break;
        case 1: dotbf_rows<1>(xt, ldx, w, ldw, ot, ldo, n0, n1, K); break;
        default: break;
    }
}

void gemm_bf16_dot(const float* x, int64_t ldx, const bf16_t* w, int64_t ldw, float* out, int64_t ldo, int64_t M,
                   int64_t N, int64_t K) {
    if (M <= 0 || N <= 0) return;
    thread_local std::vector<uint16_t> xb_buf;
    uint16_t* xb = scratch(xb_buf, M * K);
    parallel_ranges(M, K, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m)
            for (int64_t k = 0; k < K; ++k) xb[m * K + k] = f32_to_bf16(x[m * ldx + k]);
    });
    const uint16_t* wb = reinterpret_cast<const uint16_t*>(w);
    for_each_gemm_block(M, N, K, 2 * K, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        dotbf_block(xb, K, wb, ldw, out, ldo, m0, m1, n0, n1, K);
    });
    trim_scratch(xb_buf);
}

}  // namespace

void gemm_f32_block(Isa isa, const float* x, int64_t ldx, const float* w, int64_t ldw, float* out, int64_t ldo,
                    int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K) {
    run_kernel<GemmBlock>(isa, x, ldx, w, ldw, out, ldo, m0, m1, n0, n1, K);
}

void gemm_raw(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
              int64_t M, int64_t N, int64_t K) {
    switch (wdt) {
        case DType::BF16:
            if (isa == Isa::Avx512 && bf16_dot())
                gemm_bf16_dot(x, ldx, static_cast<const bf16_t*>(w), ldw, out, ldo, M, N, K);
            else
                gemm_typed(isa, x, ldx, static_cast<const bf16_t*>(w), ldw, out, ldo, M, N, K);
            break;
        case DType::F16:
            gemm_typed(isa, x, ldx, static_cast<const f16_t*>(w), ldw, out, ldo, M, N, K);
            break;
        case DType::Q8_0:
        case DType::Q4_0:
        case DType::Q4_K:
        case DType::Q6_K:
            gemm_quant(isa, x, ldx, w, wdt, ldw, out, ldo, M, N, K);
            break;
        default:
            gemm_typed(isa, x, ldx, static_cast<const float*>(w), ldw, out, ldo, M, N, K);
            break;
    }
}

void gemm(TensorView out, ConstTensorView x, ConstTensorView w) {
    const GemmDims d = check_gemm(out, x, w);
    const int64_t T = d.T, N = d.N, K = d.K;
    gemm_raw(active_isa(), x.ptr<float>(), K, w.data, w.dtype, K, out.ptr<float>(), N, T, N, K);
}

}  // namespace lfm2::cpu
