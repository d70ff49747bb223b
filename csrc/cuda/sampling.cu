// argmax: out[t] = first index of the maximum of logits[t, :], NaN counting as the maximum (the
// first NaN wins), exactly as numpy.argmax and cpu/sampling.cpp. A block per row: each thread
// keeps the best (value, index) of its strided elements, then a warp and block reduction with the
// same total order (NaN > everything, then larger value, then lower index).
#include <climits>

#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

// a beats b; index < 0 marks "nothing yet".
__device__ __forceinline__ bool argmax_better(float va, int ia, float vb, int ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    const bool na = va != va, nb = vb != vb;
    if (na != nb) return na;
    if (!na && va != vb) return va > vb;
    return ia < ib;
}

__global__ void argmax_kernel(int32_t* __restrict__ out, const float* __restrict__ logits, int64_t T, int64_t V) {
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const float* x = logits + t * V;
        float bv = 0.0f;
        int bi = -1;
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
            const float a = x[v];
            if (argmax_better(a, int(v), bv, bi)) bv = a, bi = int(v);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
        }
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
        if (lane == 0) sv[warp] = bv, si[warp] = bi;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int i = 1; i < nw; ++i)
                if (argmax_better(sv[i], si[i], bv, bi)) bv = sv[i], bi = si[i];
            out[t] = bi;
        }
        __syncthreads();
    }
}

}  // namespace

void argmax(TensorView out, ConstTensorView logits) {
    const ArgmaxDims d = check_argmax(out, logits);
    const int64_t T = d.T, V = d.V;
    if (T == 0) return;
    argmax_kernel<<<grid_for(T, 1, 65535), 256, 0, stream()>>>(out.ptr<int32_t>(), logits.ptr<float>(), T, V);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
