// FP32 GEMM on CUDA cores (f32 or bf16 weights, widened exactly; fp32 fma accumulation): the
// skinny kernel for few rows (decode: a warp streams 4 weight rows with 16-byte loads, every
// lane accumulates a k-slice for all rows of the tile, then a warp reduction) and the classic
// shared-memory tiled SGEMM (BK = 16, 256 threads, register blocking) for prefill.
// Per output element the k order is fixed by the kind: lane-strided slices + xor-tree for the
// skinny kind, ascending k for the tiled kinds. Must match cpu::gemm within fp32 rounding.
#include "gemm.cuh"

namespace lfm2::cuda {
namespace {

constexpr int kSkRows = 16, kSkWarps = 4, kSkNW = 4;  // skinny: rows per tile, warps, weight rows per warp

template <class WT, bool VEC>
__global__ void __launch_bounds__(kSkWarps * 32) gemm_simt_skinny(GemmProblem p) {
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, kSkRows, t)) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * kSkWarps + warp) * kSkNW;
    if (n0 >= p.N) return;  // warp-uniform
    const WT* w = static_cast<const WT*>(p.w) + int64_t(t.e) * p.w_estride;
    const WT* wr[kSkNW];
#pragma unroll
    for (int j = 0; j < kSkNW; ++j) wr[j] = w + int64_t(min(n0 + j, p.N - 1)) * p.ldw;  // clamped rows are not stored
    const float* xr[kSkRows];
#pragma unroll
    for (int m = 0; m < kSkRows; ++m) xr[m] = p.x + (m < t.mc ? gemm_xrow(p, t.r0 + m) * p.ldx : 0);
    float acc[kSkRows][kSkNW];
#pragma unroll
    for (int m = 0; m < kSkRows; ++m)
#pragma unroll
        for (int j = 0; j < kSkNW; ++j) acc[m][j] = 0.0f;
    const int64_t K = p.K;
    if constexpr (VEC) {
        constexpr int V = Vec16<WT>::V;
        for (int64_t k = int64_t(lane) * V; k < K; k += 32 * V) {
            float wv[kSkNW][V];
#pragma unroll
            for (int j = 0; j < kSkNW; ++j) Vec16<WT>::load(wr[j] + k, wv[j]);
#pragma unroll
            for (int m = 0; m < kSkRows; ++m) {
                if (m < t.mc) {
                    float xv[V];
#pragma unroll
                    for (int q = 0; q < V / 4; ++q) {
                        float4 f = __ldg(reinterpret_cast<const float4*>(xr[m] + k) + q);
                        xv[4 * q] = f.x, xv[4 * q + 1] = f.y, xv[4 * q + 2] = f.z, xv[4 * q + 3] = f.w;
                    }
#pragma unroll
                    for (int j = 0; j < kSkNW; ++j)
#pragma unroll
                        for (int v = 0; v < V; ++v) acc[m][j] = fmaf(xv[v], wv[j][v], acc[m][j]);
                }
            }
        }
    } else {
        for (int64_t k = lane; k < K; k += 32) {
            float wv[kSkNW];
#pragma unroll
            for (int j = 0; j < kSkNW; ++j) wv[j] = wload(wr[j] + k);
#pragma unroll
            for (int m = 0; m < kSkRows; ++m) {
                if (m < t.mc) {
                    const float xv = __ldg(xr[m] + k);
#pragma unroll
                    for (int j = 0; j < kSkNW; ++j) acc[m][j] = fmaf(xv, wv[j], acc[m][j]);
                }
            }
        }
    }
    warp_store(p, t, acc, n0, lane);
}

// BM x BN output tile, 256 threads as 16 x 16, each TM x TN outputs; k tiles of 16.
template <class WT, int BM, int BN>
__global__ void __launch_bounds__(256) gemm_simt_tiled(GemmProblem p) {
    constexpr int BK = 16, TM = BM / 16, TN = BN / 16;
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, BM, t)) return;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int n_base = blockIdx.x * BN;
    const WT* w = static_cast<const WT*>(p.w) + int64_t(t.e) * p.w_estride;
    // Loader rows: this thread fills column tx (k) of rows ty + 16 j of both tiles.
    const float* xa[TM];
    const WT* wb[TN];
#pragma unroll
    for (int j = 0; j < TM; ++j) {
        const int r = ty + 16 * j;
        xa[j] = r < t.mc ? p.x + gemm_xrow(p, t.r0 + r) * p.ldx : nullptr;
    }
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int n = n_base + ty + 16 * j;
        wb[j] = n < p.N ? w + int64_t(n) * p.ldw : nullptr;
    }
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.K; k0 += BK) {
        const int k = k0 + tx;
        const bool kin = k < p.K;
#pragma unroll
        for (int j = 0; j < TM; ++j) As[tx][ty + 16 * j] = (xa[j] && kin) ? __ldg(xa[j] + k) : 0.0f;
#pragma unroll
        for (int j = 0; j < TN; ++j) Bs[tx][ty + 16 * j] = (wb[j] && kin) ? wload(wb[j] + k) : 0.0f;
        __syncthreads();
        tile_fma<BK>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    tile_store(p, t, acc, n_base, tx, ty);
}

template <class WT>
void launch_typed(GemmKind kind, const GemmProblem& p, unsigned gy) {
    cudaStream_t s = stream();
    switch (kind) {
        case GemmKind::SimtSkinny: {
            const dim3 grid(unsigned(ceil_div(p.N, kSkWarps * kSkNW)), gy);
            const bool vec = vec_ok(p.w, p.ldw, p.w_estride, p.K, Vec16<WT>::V) &&
                             vec_ok(p.x, p.ldx, 0, p.K, Vec16<WT>::V);
            if (vec)
                gemm_simt_skinny<WT, true><<<grid, kSkWarps * 32, 0, s>>>(p);
            else
                gemm_simt_skinny<WT, false><<<grid, kSkWarps * 32, 0, s>>>(p);
            break;
        }
        case GemmKind::SimtTile64:
            gemm_simt_tiled<WT, 64, 64><<<dim3(unsigned(ceil_div(p.N, 64)), gy), 256, 0, s>>>(p);
            break;
        default:
            gemm_simt_tiled<WT, 128, 128><<<dim3(unsigned(ceil_div(p.N, 128)), gy), 256, 0, s>>>(p);
            break;
    }
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace

void launch_gemm_simt(GemmKind kind, DType wdt, const GemmProblem& p, unsigned grid_y) {
    if (wdt == DType::BF16)
        launch_typed<bf16_t>(kind, p, grid_y);
    else
        launch_typed<float>(kind, p, grid_y);
}

}  // namespace lfm2::cuda
