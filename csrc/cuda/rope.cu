// rope: in-place NeoX (rotate-half) RoPE of x[T, H, Dh] at positions[T] on the GPU, the twin of
// cpu/rope.cpp. A thread per (token, pair j) computes inv_freq_j = theta^(-2j/Dh), the angle and
// its cos / sin in double and rounds them to f32 once, as the CPU op, then rotates the pair
// (j, j + Dh/2) of every head with separately rounded products (__fmul_rn: no fused multiply-add),
// so the result equals the CPU op's bits wherever the double cos / sin round to the same f32.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

__global__ void rope_kernel(float* x, const int32_t* __restrict__ pos, int64_t T, int64_t H, int64_t Dh,
                            double theta) {
    const int64_t half = Dh / 2, n = T * half;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / half, j = i % half;
        const double inv_freq = pow(theta, -double(j) * 2.0 / double(Dh));
        const double ang = double(pos[t]) * inv_freq;
        double sd, cd;
        sincos(ang, &sd, &cd);
        const float c = float(cd), s = float(sd);
        float* xt = x + t * H * Dh;
        for (int64_t h = 0; h < H; ++h) {
            float* x1 = xt + h * Dh + j;
            float* x2 = x1 + half;
            const float a = *x1, b = *x2;
            *x1 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
            *x2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
        }
    }
}

}  // namespace

void rope(TensorView x, ConstTensorView positions, double theta) {
    const RopeDims d = check_rope(x, positions, theta);
    const int64_t T = d.T, H = d.H, Dh = d.Dh;
    if (T == 0 || H == 0 || Dh == 0) return;
    rope_kernel<<<grid_for(T * (Dh / 2), 128), 128, 0, stream()>>>(x.ptr<float>(), positions.ptr<int32_t>(), T, H, Dh,
                                                                    theta);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
