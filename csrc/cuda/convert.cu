// convert: elementwise f32 <-> bf16 <-> f16 on the GPU with the bit-exact scalar conversions of
// core/dtype.h (round to nearest even, NaN kept, f16 overflow to inf), the twin of
// cpu/convert.cpp: every pattern converts to the same bits on both backends.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

__device__ __forceinline__ float to_float(DType d, const void* p, int64_t i) {
    if (d == DType::F32) return static_cast<const float*>(p)[i];
    const uint16_t u = static_cast<const uint16_t*>(p)[i];
    return d == DType::BF16 ? bf16_to_f32(u) : f16_to_f32(u);
}

__global__ void convert_kernel(void* out, DType od, const void* x, DType xd, int64_t n) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (od == xd) {  // identity: copy the bits (NaN payloads included)
            if (od == DType::F32)
                static_cast<uint32_t*>(out)[i] = static_cast<const uint32_t*>(x)[i];
            else
                static_cast<uint16_t*>(out)[i] = static_cast<const uint16_t*>(x)[i];
            continue;
        }
        const float v = to_float(xd, x, i);
        if (od == DType::F32)
            static_cast<float*>(out)[i] = v;
        else if (od == DType::BF16)
            static_cast<uint16_t*>(out)[i] = f32_to_bf16(v);
        else
            static_cast<uint16_t*>(out)[i] = f32_to_f16(v);
    }
}

}  // namespace

void convert(TensorView out, ConstTensorView x) {
    const int64_t n = check_convert(out, x);
    if (n == 0) return;
    convert_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(out.data, out.dtype, x.data, x.dtype, n);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
