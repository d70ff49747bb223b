// gemm with block-quantized weights (q8_0, q4_0, q4_k, q6_k; core/quant.h), exact numerics mode:
// out[m, n] = Σ_k x[m, k] · w[n, k] where w[n, k] is core/quant.h's dequantized float32 value,
// with fp32 activations and fp32 accumulation.
//
// Numerics (the choice, docs/ops.md "Quantized weights"): BIT-IDENTICAL to gemm with the
// dequantized float32 weights at the same SIMD level. quant_simd.h forms every weight's value bit
// for bit (the formats' products are exact in float32 and q4_k's one rounding happens where the
// reference's does), and the products are accumulated exactly like gemm.cpp's fp32 tiles: lane l
// of one accumulator per output sums x[m, k] · w[n, k] for k ≡ l (mod W) in increasing k (fused
// multiply-add), then S::hsum's tree.
// Row-batch invariance (a row's bits never depend on M, its tile, or the thread count) is
// therefore inherited from the fp32 path, and the tests compare bit for bit.
//
// Two drivers, both giving those bits:
//  - few rows (M <= reg_rows: 16, but 4 for the k-quants on AVX-512; decode and small expert
//    batches): weights decoded in registers.
//    A tile of MR x rows × NR weight rows walks the rows' blocks once; each group of 32 or 64
//    weights is decoded (quant_simd.h) and multiplied into the MR × NR accumulators. Weight rows
//    stream from memory once, prefetched a tile ahead (as gemm.cpp's bf16 GEMV): a decode GEMV
//    reads only the quantized bytes (analysis/cpu_performance.md has the rates per type).
//  - more rows (prefill): each L2-sized block of weight rows is decoded once per row chunk into a
//    per-thread float32 panel with the same SIMD decoders, then swept by gemm.cpp's fp32 register
//    tiles (gemm_f32_block): the decoding is amortized over the chunk's rows and the product runs
//    at the fp32 GEMM's rate.
// The scalar level is the reference path: its decoder is core/quant.h's dequant_block itself
// (quant_simd.h's Deq<Scalar>), then the scalar fp32 arithmetic (two roundings per multiply-add).
#include <algorithm>
#include <vector>

#include "core/quant.h"
#include "gemm_blocks.h"
#include "gemm_qdot.h"
#include "kernels.h"
#include "quant_simd.h"

namespace lfm2::cpu {
namespace {

using qsimd::Deq;

// Rows of x up to which the in-register driver runs (above: the fp32 panel). A register tile
// decodes each weight vector once per 4 x rows. q8_0 / q4_0 decode cheaply enough that their
// tiles stay FMA-bound up to T = 16 (and 1.1-1.6x the panel there); the k-quants' decoding costs
// more than 4 multiply-adds, so from T = 5 their panels win on AVX-512 (one core, K = 2048,
// T = 16: q4_k 3.2 vs 4.7 ns, q6_k 3.3 vs 5.9 ns per 16 weights; T = 4 even, T = 2 registers 2x
// ahead). On AVX2 (2-row tiles, a slower fp32 panel GEMM) registers are ahead or even up to T = 16.
inline int64_t reg_rows(Isa isa, DType wdt) { return isa == Isa::Avx512 && dtype_block(wdt) == 256 ? 4 : 16; }

// In-register tile per ISA: MR x rows × NR weight rows of accumulators. Measured no faster (one
// core, K = 2048): NR = 8 for a single row (the decoding, not the FMA chains, bounds a GEMV), and
// 8- or 16-row tiles for T = 8..16 even with x packed block-major (their x no longer fits L1).
template <class S>
struct QTile {
    static constexpr int MR = 4, NR = 4;
};
template <>
struct QTile<simd::Avx2> {
    static constexpr int MR = 2, NR = 4;
};

// out[i, j] (i < MR, j < NR) = Σ_k x[i, k] · w_j[k] over nb blocks; w_j = the block row at
// w + j · rs bytes. The same per-lane order as gemm.cpp's dot_tile (K is a multiple of 32, so no tail).
template <class S, class B, int MR, int NR>
LFM2_KERNEL void qdot_tile(const float* x, int64_t ldx, const char* w, int64_t rs, float* out, int64_t ldo,
                           int64_t nb) {
    using D = Deq<S, B>;
    using F = typename S::F;
    constexpr int GW = D::kWeights, V = GW / S::W;  // weights and vectors per group
    F acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = S::zero();
    const int64_t pf = prefetch_offset(NR, rs, 1);  // bytes: rows of rs bytes
    for (int64_t ib = 0; ib < nb; ++ib) {
        typename D::Prep p[NR];
        const B* blk[NR];
        for (int j = 0; j < NR; ++j) {
            blk[j] = reinterpret_cast<const B*>(w + j * rs) + ib;
            const char* next = reinterpret_cast<const char*>(blk[j]) + pf;
            for (int o = 0; o < int(sizeof(B)); o += 64) S::prefetch(next + o);
            p[j] = D::prep(*blk[j]);
        }
        const float* xb = x + ib * qsimd::kBlock<B>;
#pragma GCC unroll 8
        for (int g = 0; g < D::kGroups; ++g) {
            for (int j = 0; j < NR; ++j) {
                F wv[V];
                D::group(*blk[j], p[j], g, wv);
                for (int v = 0; v < V; ++v)
                    for (int i = 0; i < MR; ++i)
                        acc[i][j] = S::fmadd(S::load(xb + i * ldx + GW * g + v * S::W), wv[v], acc[i][j]);
            }
        }
    }
    store_tile_sums<S>(acc, out, ldo);
}

// Rows [m, m + MR) × weight rows [n0, n1).
template <class S, class B, int MR>
LFM2_KERNEL void qrow_panel(const float* x, int64_t ldx, const char* w, int64_t rs, float* out, int64_t ldo,
                            int64_t n0, int64_t n1, int64_t nb) {
    constexpr int NR = QTile<S>::NR;
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) qdot_tile<S, B, MR, NR>(x, ldx, w + n * rs, rs, out + n, ldo, nb);
    for (; n < n1; ++n) qdot_tile<S, B, MR, 1>(x, ldx, w + n * rs, rs, out + n, ldo, nb);
}

template <class S, class B, int R>
LFM2_KERNEL void qrow_tail(int64_t rows, const float* x, int64_t ldx, const char* w, int64_t rs, float* out,
                           int64_t ldo, int64_t n0, int64_t n1, int64_t nb) {
    if constexpr (R >= 1) {
        if (rows == R)
            qrow_panel<S, B, R>(x, ldx, w, rs, out, ldo, n0, n1, nb);
        else
            qrow_tail<S, B, R - 1>(rows, x, ldx, w, rs, out, ldo, n0, n1, nb);
    }
}

// Float32 weights of rows [0, rows) (rs bytes apart, K weights each) into panel (K floats per row).
template <class S, class B>
LFM2_KERNEL void decode_rows(const char* w, int64_t rs, int64_t rows, int64_t K, float* panel) {
    using D = Deq<S, B>;
    constexpr int GW = D::kWeights, V = GW / S::W;
    const int64_t nb = K / qsimd::kBlock<B>;
    for (int64_t r = 0; r < rows; ++r) {
        const B* row = reinterpret_cast<const B*>(w + r * rs);
        float* o = panel + r * K;
        for (int64_t ib = 0; ib < nb; ++ib, o += qsimd::kBlock<B>) {
            const typename D::Prep p = D::prep(row[ib]);
#pragma GCC unroll 8
            for (int g = 0; g < D::kGroups; ++g) {
                typename S::F wv[V];
                D::group(row[ib], p, g, wv);
                for (int v = 0; v < V; ++v) S::store(o + GW * g + v * S::W, wv[v]);
            }
        }
    }
}

// run(): rows [m0, m1) × weight rows [n0, n1) in registers, or decode rows [n0, n1) into a panel.
template <class S>
struct QuantRegs {
    template <class B>
    static LFM2_KERNEL void run(const float* x, int64_t ldx, const B* w, int64_t rs, float* out, int64_t ldo,
                                int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K) {
        constexpr int MR = QTile<S>::MR;
        const char* wb = reinterpret_cast<const char*>(w);
        const int64_t nb = K / qsimd::kBlock<B>;
        int64_t m = m0;
        for (; m + MR <= m1; m += MR) qrow_panel<S, B, MR>(x + m * ldx, ldx, wb, rs, out + m * ldo, ldo, n0, n1, nb);
        qrow_tail<S, B, MR - 1>(m1 - m, x + m * ldx, ldx, wb, rs, out + m * ldo, ldo, n0, n1, nb);
    }
};

template <class S>
struct QuantPanel {
    template <class B>
    static LFM2_KERNEL void run(const B* w, int64_t rs, int64_t rows, int64_t K, float* panel) {
        decode_rows<S, B>(reinterpret_cast<const char*>(w), rs, rows, K, panel);
    }
};

// f(typed block pointer) for the block type of dt.
template <class Fn>
void with_block(DType dt, const void* w, Fn&& f) {
    switch (dt) {
        case DType::Q8_0: f(static_cast<const BlockQ8_0*>(w)); break;
        case DType::Q4_0: f(static_cast<const BlockQ4_0*>(w)); break;
        case DType::Q4_K: f(static_cast<const BlockQ4_K*>(w)); break;
        default: f(static_cast<const BlockQ6_K*>(w)); break;
    }
}

}  // namespace

void gemm_quant(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
                int64_t M, int64_t N, int64_t K) {
    if (quant_dot()) return gemm_qdot(isa, x, ldx, w, wdt, ldw, out, ldo, M, N, K);  // the fast mode (gemm_qdot.h)
    const char* wb = static_cast<const char*>(w);
    const int64_t rs = dtype_bytes(wdt, ldw);
    if (M <= reg_rows(isa, wdt)) {
        for_each_gemm_block(M, N, K, dtype_bytes(wdt, K), [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
            with_block(wdt, w, [&](auto* wt) {
                run_kernel<QuantRegs>(isa, x, ldx, wt, rs, out, ldo, m0, m1, n0, n1, K);
            });
        });
        return;
    }
    for_each_gemm_block(M, N, K, 4 * K, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        thread_local std::vector<float> panel_buf;
        float* panel = scratch(panel_buf, (n1 - n0) * K);
        const char* rows = wb + n0 * rs;
        with_block(wdt, rows, [&](auto* wt) { run_kernel<QuantPanel>(isa, wt, rs, n1 - n0, K, panel); });
        gemm_f32_block(isa, x, ldx, panel, K, out + n0, ldo, m0, m1, 0, n1 - n0, K);
        trim_scratch(panel_buf);
    });
}

}  // namespace lfm2::cpu
