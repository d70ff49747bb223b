// swiglu: out[T, F] = silu(gate) ⊙ up with gu[T, 2F] = (gate | up), silu(a) = a / (1 + e^-a), on
// the GPU; the twin of cpu/ffn.cpp (and the middle of the dense MLP and of every expert, see
// moe.cu). expf is within 2 ulp of the CPU's std::exp. Elementwise, one thread per output.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

__global__ void swiglu_kernel(float* __restrict__ out, const float* __restrict__ gu, int64_t rows, int64_t F) {
    const int64_t n = rows * F, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t r = i / F, f = i % F;
        const float a = gu[r * 2 * F + f], u = gu[r * 2 * F + F + f];
        const float s = a / (1.0f + expf(-a));
        out[i] = s * u;
    }
}

}  // namespace

// Raw entry for moe.cu: out [rows, F] from gu [rows, 2F], both contiguous.
void swiglu_raw(float* out, const float* gu, int64_t rows, int64_t F) {
    if (rows <= 0 || F <= 0) return;
    swiglu_kernel<<<grid_for(rows * F, 256), 256, 0, stream()>>>(out, gu, rows, F);
    LFM2_CUDA_LAUNCH_CHECK();
}

void swiglu(TensorView out, ConstTensorView gu) {
    const SwigluDims d = check_swiglu(out, gu);
    const int64_t T = d.T, F = d.F;
    swiglu_raw(out.ptr<float>(), gu.ptr<float>(), T, F);
}

}  // namespace lfm2::cuda
