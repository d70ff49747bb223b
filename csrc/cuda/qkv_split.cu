// qkv_split on the GPU, the twin of cpu/qkv_split.cpp: the column blocks q | k | v of the fused
// projection qkv [T, (H + 2 Hkv) Dh] copied into q [T, H, Dh], k, v [T, Hkv, Dh]. A pure copy
// (bit-exact), one thread per element of qkv, coalesced on both sides.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

__global__ void qkv_split_kernel(float* __restrict__ q, float* __restrict__ k, float* __restrict__ v,
                                 const float* __restrict__ qkv, int64_t T, int64_t nq, int64_t nkv) {
    const int64_t row = nq + 2 * nkv, n = T * row, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / row, c = i % row;
        const float x = qkv[i];
        if (c < nq)
            q[t * nq + c] = x;
        else if (c < nq + nkv)
            k[t * nkv + (c - nq)] = x;
        else
            v[t * nkv + (c - nq - nkv)] = x;
    }
}

}  // namespace

void qkv_split(TensorView q, TensorView k, TensorView v, ConstTensorView qkv) {
    const QkvDims d = check_qkv_split(q, k, v, qkv);
    if (d.T == 0 || d.row() == 0) return;
    qkv_split_kernel<<<grid_for(d.T * d.row(), 256), 256, 0, stream()>>>(q.ptr<float>(), k.ptr<float>(),
                                                                          v.ptr<float>(), qkv.ptr<float>(), d.T,
                                                                          d.nq(), d.nkv());
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
