// The GEMM family shared by gemm.cu (the op) and moe.cu (grouped expert GEMMs): one problem
// description, the kernel kinds and their launchers. Internal to csrc/cuda.
//
// A problem computes out[orow(r), n] = Σ_k x[xrow(r), k] · w_e[n, k] for logical rows r of one
// or many "tiles". Without a schedule it is one plain GEMM of M rows (tile y = rows
// [y·BM, y·BM + BM)). With a schedule (grouped GEMM, MoE) tile y is sched[y] = (expert e, first
// logical row r0, row count mc): every row of a tile uses expert e's weights w + e·w_estride, and
// tiles y >= *n_sched are empty. xrow / orow (optional) gather the activation rows and scatter
// the output rows. Each output element depends only on its own x row and weight row: never on
// the tile it lands in or its position there (a fixed k order per kernel kind).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace lfm2::cuda {

struct GemmProblem {
    const float* x = nullptr;  // [*, ldx] f32
    int64_t ldx = 0;
    const void* w = nullptr;  // [E][N, ldw] f32 | bf16 | f16 | block-quantized (quant.cuh addressing)
    int64_t ldw = 0;          // in weights (elements), also for block types (a multiple of the block)
    int64_t w_estride = 0;  // elements (weights) between experts' matrices
    float* out = nullptr;   // [*, ldo] f32
    int64_t ldo = 0;
    int M = 0, N = 0, K = 0;      // M: rows of a plain problem (unused with a schedule)
    const int* xrow = nullptr;    // logical row -> x row (null: identity)
    const int* orow = nullptr;    // logical row -> out row (null: identity)
    const int4* sched = nullptr;  // tiles (e, r0, mc, 0)
    const int* n_sched = nullptr;  // number of valid tiles
    int max_rows = 0;  // if > 0: no tile holds more rows than this (lets skinny kinds use fewer registers)
};

struct GemmTile {
    int e, r0, mc;
};

__device__ __forceinline__ bool gemm_tile(const GemmProblem& p, int y, int bm, GemmTile& t) {
    if (p.sched) {
        if (y >= *p.n_sched) return false;
        const int4 s = p.sched[y];
        t.e = s.x;
        t.r0 = s.y;
        t.mc = s.z;
        return true;
    }
    t.e = 0;
    t.r0 = y * bm;
    t.mc = min(bm, p.M - t.r0);
    return t.mc > 0;
}

__device__ __forceinline__ int64_t gemm_xrow(const GemmProblem& p, int r) {
    return p.xrow ? int64_t(p.xrow[r]) : int64_t(r);
}
__device__ __forceinline__ int64_t gemm_orow(const GemmProblem& p, int r) {
    return p.orow ? int64_t(p.orow[r]) : int64_t(r);
}

// The fp32 tile step of the shared-memory kernels (gemm_f32.cu's float weights,
// gemm_quant_kernels.cuh's dequantized blocks): acc[i][j] += As[kk][ty TM + i] · Bs[kk][tx TN + j]
// for kk < BK in increasing kk with fmaf, so both kernels round alike.
template <int BK, int TM, int TN, int LDA, int LDB>
__device__ __forceinline__ void tile_fma(const float (*As)[LDA], const float (*Bs)[LDB], float (&acc)[TM][TN], int tx,
                                         int ty) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        float a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; i += 4) {
            const float4 v = *reinterpret_cast<const float4*>(&As[kk][ty * TM + i]);
            a[i] = v.x, a[i + 1] = v.y, a[i + 2] = v.z, a[i + 3] = v.w;
        }
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
            const float4 v = *reinterpret_cast<const float4*>(&Bs[kk][tx * TN + j]);
            b[j] = v.x, b[j + 1] = v.y, b[j + 2] = v.z, b[j + 3] = v.w;
        }
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

// Writes a thread's TM x TN outputs (rows ty TM + i of tile t, columns n_base + tx TN + j), skipping
// rows past the tile and columns past N.
template <int TM, int TN>
__device__ __forceinline__ void tile_store(const GemmProblem& p, const GemmTile& t, const float (&acc)[TM][TN],
                                           int n_base, int tx, int ty) {
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = ty * TM + i;
        if (r >= t.mc) continue;
        float* o = p.out + gemm_orow(p, t.r0 + r) * p.ldo;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = n_base + tx * TN + j;
            if (n < p.N) o[n] = acc[i][j];
        }
    }
}

// The skinny kernels' epilogue: each lane holds partial sums acc[m][j] for rows m < MR of tile t and
// weight rows n0 + j (j < NW); the warp sums them (warp_sum's fixed tree) and lane j writes row m's
// output n0 + j, skipping rows past the tile and columns past N.
template <int MR, int NW>
__device__ __forceinline__ void warp_store(const GemmProblem& p, const GemmTile& t, const float (&acc)[MR][NW], int n0,
                                           int lane) {
#pragma unroll
    for (int m = 0; m < MR; ++m) {
        if (m < t.mc) {
            float* o = p.out + gemm_orow(p, t.r0 + m) * p.ldo;
#pragma unroll
            for (int j = 0; j < NW; ++j) {
                const float s = warp_sum(acc[m][j]);
                if (lane == j && n0 + j < p.N) o[n0 + j] = s;
            }
        }
    }
}

// Kernel kinds. Skinny kinds stream the weights once per tile with few rows (decode, small
// expert groups); tiled kinds stage x and w tiles in shared memory (prefill).
enum class GemmKind {
    SimtSkinny,   // f32 | bf16 weights, 16 rows per tile, warp per 4 weight rows
    SimtTile64,   // 64 x 64 tiles, 256 threads, 4 x 4 per thread
    SimtTile128,  // 128 x 128 tiles, 256 threads, 8 x 8 per thread
    TcSkinny16,   // f16 weights, mma.sync, 16 rows per tile, K split over 4 warps
    TcSkinny64,   // same with 64 rows per tile
    TcTile64,     // f16, 64 x 64 tiles, 4 warps of 32 x 32
    TcTile128,    // f16, 128 x 128 tiles, 8 warps of 64 x 32
    QSkinny,      // block-quantized weights (gemm_quant.cu), 16 rows per tile, warp per 4 weight rows
    QTile64,      // block-quantized, 64 x 64 tiles dequantized into shared memory, k tiles of 32
    QTile128,     // block-quantized, 128 x 128 tiles
};

// Rows per tile (BM) of a kind: the schedule of a grouped GEMM must be built with it.
int gemm_rows_per_tile(GemmKind k);

// The kind for weights of dtype wdt, about `rows` rows per problem, N outputs and `problems`
// independent problems (experts) sharing the launch.
GemmKind choose_gemm(DType wdt, int64_t rows, int64_t N, int64_t problems);

// Enqueue `kind` over grid_y tile slots (plain problems: ceil(M / BM), chunked if needed).
void launch_gemm(GemmKind kind, DType wdt, const GemmProblem& p, int64_t grid_y);

// The SIMT (gemm_f32.cu), Tensor Core (gemm_f16_tc.cu) and block-quantized (gemm_quant.cu)
// parts of launch_gemm.
void launch_gemm_simt(GemmKind kind, DType wdt, const GemmProblem& p, unsigned grid_y);
void launch_gemm_tc(GemmKind kind, const GemmProblem& p, unsigned grid_y);
void launch_gemm_quant(GemmKind kind, DType wdt, const GemmProblem& p, unsigned grid_y);

// True when rows of `ld` elements of `elem` bytes starting at `ptr` allow 16-byte vector loads
// of `vec` elements (ld and the offset multiples of vec, base aligned).
inline bool vec_ok(const void* ptr, int64_t ld, int64_t extra_stride, int64_t K, int vec) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && ld % vec == 0 && extra_stride % vec == 0 && K % vec == 0;
}

}  // namespace lfm2::cuda
