// rmsnorm: out[R, D] = w ⊙ x / sqrt(mean(x²) + eps) on the GPU, the twin of cpu/rmsnorm.cpp
// (weight as stored, eps inside the sqrt, x / den then * w as the CPU op). A warp per row when
// there are many rows (q/k norms: R = T·H), a 256-thread block per row when there are few long
// rows (decode), so both fill the GPU. out may alias x exactly: every element is read before it
// is written by the same thread, and the sum is complete before any write.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

// cpu/rmsnorm.cpp's overflow rule (a finite row whose float sum of squares is +inf is rescaled by
// max|x|), computed serially by every thread of the row: a rare path, the same order as the CPU.
__device__ float overflow_den(const float* xr, int64_t D, float ss, float eps) {
    float m = 0.0f;
    for (int64_t d = 0; d < D; ++d) m = fmaxf(m, fabsf(xr[d]));
    if (!isfinite(m) || m == 0.0f) return sqrtf(ss / float(D) + eps);
    float s = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
        const float v = xr[d] / m;
        s = fmaf(v, v, s);
    }
    return m * sqrtf(s / float(D) + eps / (m * m));
}

template <int TPR>  // threads per row: 32 (a warp) or 256 (a block)
__global__ void rmsnorm_kernel(float* out, const float* x, const float* __restrict__ w, int64_t R, int64_t D,
                               float eps) {
    constexpr int kRowsPerBlock = TPR == 32 ? 8 : 1;  // blockDim = 256
    __shared__ float part[8];
    const int sub = threadIdx.x / TPR, lt = threadIdx.x % TPR, lane = threadIdx.x & 31;
    for (int64_t r0 = int64_t(blockIdx.x) * kRowsPerBlock; r0 < R; r0 += int64_t(gridDim.x) * kRowsPerBlock) {
        const int64_t r = r0 + sub;
        const bool live = r < R;
        const float* xr = x + (live ? r : 0) * D;
        float ss = 0.0f;
        if (live)
            for (int64_t d = lt; d < D; d += TPR) ss = fmaf(xr[d], xr[d], ss);
        ss = warp_sum(ss);
        if constexpr (TPR == 256) {
            if (lane == 0) part[threadIdx.x >> 5] = ss;
            __syncthreads();
            ss = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += part[i];
            __syncthreads();  // part is reused by the next row
        }
        if (!live) continue;
        const float den = isinf(ss) ? overflow_den(xr, D, ss, eps) : sqrtf(ss / float(D) + eps);
        float* o = out + r * D;
        for (int64_t d = lt; d < D; d += TPR) o[d] = (xr[d] / den) * w[d];
    }
}

}  // namespace

void rmsnorm(TensorView out, ConstTensorView x, ConstTensorView w, float eps) {
    const RowDims d = check_rmsnorm(out, x, w, eps);
    const int64_t R = d.R, D = d.D;
    if (R == 0 || D == 0) return;
    const bool few_long_rows = D >= 512 && R < 4 * int64_t(multiprocessor_count());
    if (few_long_rows)
        rmsnorm_kernel<256><<<grid_for(R, 1, 65535), 256, 0, stream()>>>(out.ptr<float>(), x.ptr<float>(),
                                                                          w.ptr<float>(), R, D, eps);
    else
        rmsnorm_kernel<32><<<grid_for(R, 8, 65535), 256, 0, stream()>>>(out.ptr<float>(), x.ptr<float>(),
                                                                         w.ptr<float>(), R, D, eps);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
