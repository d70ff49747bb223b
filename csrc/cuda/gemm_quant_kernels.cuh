// The block-quantized GEMM kernels (device code only; launched by gemm_quant.cu, which describes
// the kinds). In a header of their own so that tests/test_cuda_kernels_host.py can compile this
// very code for the CPU under a thread-per-CUDA-thread emulation (tests/cuda_host/) and check it
// where no GPU exists. Internal to csrc/cuda.
#pragma once

#include "gemm.cuh"
#include "quant.cuh"

namespace lfm2::cuda::qgemm {

constexpr int kQRows = 16, kQWarps = 4, kQNW = 4;  // skinny: rows per tile, warps, weight rows per warp

template <DType QT>
__device__ __forceinline__ const uint8_t* qrow(const GemmProblem& p, int e, int n) {
    return static_cast<const uint8_t*>(p.w) + qbyte_offset<QT>(int64_t(e) * p.w_estride + int64_t(n) * p.ldw);
}

// MR: rows of x the registers are sized for (t.mc <= MR: 4 for decode-sized calls, else 16).
template <DType QT, int MR, bool XVEC>
__global__ void __launch_bounds__(kQWarps * 32) gemm_q_skinny(GemmProblem p) {
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, kQRows, t)) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * kQWarps + warp) * kQNW;
    if (n0 >= p.N) return;  // warp-uniform
    const uint8_t* wr[kQNW];
#pragma unroll
    for (int j = 0; j < kQNW; ++j) wr[j] = qrow<QT>(p, t.e, min(n0 + j, p.N - 1));  // clamped rows are not stored
    const float* xr[MR];
#pragma unroll
    for (int m = 0; m < MR; ++m) xr[m] = p.x + (m < t.mc ? gemm_xrow(p, t.r0 + m) * p.ldx : 0);
    float acc[MR][kQNW];
#pragma unroll
    for (int m = 0; m < MR; ++m)
#pragma unroll
        for (int j = 0; j < kQNW; ++j) acc[m][j] = 0.0f;
    const int64_t K = p.K;
#pragma unroll 1
    for (int64_t k = int64_t(lane) * 8; k < K; k += 256) {
        float wv[kQNW][8];
#pragma unroll
        for (int j = 0; j < kQNW; ++j) qload8<QT>(wr[j], k, wv[j]);
#pragma unroll
        for (int m = 0; m < MR; ++m) {
            if (m < t.mc) {
                float xv[8];
                if constexpr (XVEC) {
                    const float4 a = __ldg(reinterpret_cast<const float4*>(xr[m] + k));
                    const float4 b = __ldg(reinterpret_cast<const float4*>(xr[m] + k) + 1);
                    xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w, xv[4] = b.x, xv[5] = b.y, xv[6] = b.z,
                    xv[7] = b.w;
                } else {
#pragma unroll
                    for (int v = 0; v < 8; ++v) xv[v] = __ldg(xr[m] + k + v);
                }
#pragma unroll
                for (int j = 0; j < kQNW; ++j)
#pragma unroll
                    for (int v = 0; v < 8; ++v) acc[m][j] = fmaf(xv[v], wv[j][v], acc[m][j]);
            }
        }
    }
    warp_store(p, t, acc, n0, lane);
}

// BM x BN output tile, 256 threads as 16 x 16, each TM x TN outputs; k tiles of 32 (K is a
// multiple of 32 for every block type, so there is no k tail).
template <DType QT, int BM, int BN>
__global__ void __launch_bounds__(256) gemm_q_tiled(GemmProblem p) {
    constexpr int BK = 32, TM = BM / 16, TN = BN / 16, WL = BN * (BK / 8) / 256;  // weight octets per thread
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, BM, t)) return;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int n_base = blockIdx.x * BN;
    // Activation loader: this thread fills columns tx, tx + 16 (k) of rows ty + 16 j.
    const float* xa[TM];
#pragma unroll
    for (int j = 0; j < TM; ++j) {
        const int r = ty + 16 * j;
        xa[j] = r < t.mc ? p.x + gemm_xrow(p, t.r0 + r) * p.ldx : nullptr;
    }
    // Weight loader: octet o of row n for idx = tid + 256 i (consecutive threads: consecutive rows,
    // so the shared-memory stores of a warp hit distinct banks).
    const uint8_t* wl[WL];
    int wn[WL], wo[WL];
#pragma unroll
    for (int i = 0; i < WL; ++i) {
        const int idx = tid + 256 * i;
        wn[i] = idx % BN;
        wo[i] = idx / BN;
        const int n = n_base + wn[i];
        wl[i] = n < p.N ? qrow<QT>(p, t.e, n) : nullptr;
    }
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < p.K; k0 += BK) {
#pragma unroll
        for (int h = 0; h < BK; h += 16)
#pragma unroll
            for (int j = 0; j < TM; ++j) As[tx + h][ty + 16 * j] = xa[j] ? __ldg(xa[j] + k0 + tx + h) : 0.0f;
#pragma unroll
        for (int i = 0; i < WL; ++i) {
            float w8[8];
            if (wl[i]) {
                qload8<QT>(wl[i], k0 + 8 * wo[i], w8);
            } else {
#pragma unroll
                for (int v = 0; v < 8; ++v) w8[v] = 0.0f;
            }
#pragma unroll
            for (int v = 0; v < 8; ++v) Bs[8 * wo[i] + v][wn[i]] = w8[v];
        }
        __syncthreads();
        tile_fma<BK>(As, Bs, acc, tx, ty);
        __syncthreads();
    }
    tile_store(p, t, acc, n_base, tx, ty);
}

}  // namespace lfm2::cuda::qgemm
