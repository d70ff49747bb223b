// Shared CUDA helpers: error checks that throw (never exit), launch checks, the backend's one
// stream, device-side index-error reporting, warp reductions and weight-element loads.
// Every kernel launch is followed by LFM2_CUDA_LAUNCH_CHECK(); every runtime call is wrapped in
// CUDA_CHECK. Exceptions carry file:line and surface in Python as RuntimeError.
// Not here: the Tensor handle and the allocator (tensor.h / tensor.cu), the ops (ops.h).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/check.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "device_error.h"

namespace lfm2::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
    throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                             ") in " + what + " [" + ::lfm2::detail::short_path(file) + ":" + std::to_string(line) +
                             "]");
}

template <class T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
    return (a + b - 1) / b;
}

// The stream every op and copy of the backend is ordered on (created on first use, on the device
// current then; non-blocking, so nothing may use the legacy default stream).
cudaStream_t stream();

// The device-side error record kernels report bad indices into (see device_error.h).
DeviceError* device_error_record();

// Streaming multiprocessors of the backend's device (cached).
int multiprocessor_count();

// Records the first bad index of the stream's work; the host turns it into IndexError at the next
// synchronization (Tensor.to_numpy, synchronize). Later reports are dropped until then.
__device__ inline void report_index_error(DeviceError* e, int code, long long index, long long value, long long bound) {
    if (atomicCAS(&e->code, 0, code) == 0) {
        e->index = index;
        e->value = value;
        e->bound = bound;
    }
}

// ----------------------------------------------------------------------------- warp helpers

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ----------------------------------------------------------------------------- weight elements
// Weights arrive as f32, bf16 bits or f16 bits (core/dtype.h tags); widening is exact.

__device__ __forceinline__ float wload(const float* p) {
    return __ldg(p);
}
__device__ __forceinline__ float wload(const bf16_t* p) {
    return __uint_as_float(uint32_t(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
}
__device__ __forceinline__ float wload(const f16_t* p) {
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// V consecutive weights (16 bytes) starting at p, which must be 16-byte aligned.
template <class WT>
struct Vec16;
template <>
struct Vec16<float> {
    static constexpr int V = 4;
    __device__ __forceinline__ static void load(const float* p, float (&o)[4]) {
        float4 v = __ldg(reinterpret_cast<const float4*>(p));
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
    }
};
template <>
struct Vec16<bf16_t> {
    static constexpr int V = 8;
    __device__ __forceinline__ static void load(const bf16_t* p, float (&o)[8]) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o[2 * i] = __uint_as_float(w[i] << 16);
            o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <>
struct Vec16<f16_t> {
    static constexpr int V = 8;
    __device__ __forceinline__ static void load(const f16_t* p, float (&o)[8]) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            __half2 h = *reinterpret_cast<const __half2*>(&w[i]);
            float2 f = __half22float2(h);
            o[2 * i] = f.x;
            o[2 * i + 1] = f.y;
        }
    }
};

// Grid size for n independent items at `block` threads each, capped (kernels grid-stride).
inline unsigned grid_for(int64_t n, int block, int64_t cap = 65535LL * 16) {
    int64_t g = ceil_div<int64_t>(n, block);
    if (g < 1) g = 1;
    if (g > cap) g = cap;
    return unsigned(g);
}

}  // namespace lfm2::cuda

#define CUDA_CHECK(expr)                                                                          \
    do {                                                                                          \
        cudaError_t err_ = (expr);                                                                \
        if (err_ != cudaSuccess) ::lfm2::cuda::throw_cuda_error(err_, #expr, __FILE__, __LINE__); \
    } while (0)

#define LFM2_CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
