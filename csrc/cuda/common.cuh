// Shared CUDA helpers: error checks that throw (never exit), launch checks, small math.
// Every kernel launch is followed by LFM2_CUDA_LAUNCH_CHECK(); every runtime call is wrapped in
// CUDA_CHECK. Exceptions carry file:line and surface in Python as RuntimeError.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/check.h"
#include "core/dtype.h"
#include "core/tensor.h"

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

}  // namespace lfm2::cuda

#define CUDA_CHECK(expr)                                                                          \
    do {                                                                                          \
        cudaError_t err_ = (expr);                                                                \
        if (err_ != cudaSuccess) ::lfm2::cuda::throw_cuda_error(err_, #expr, __FILE__, __LINE__); \
    } while (0)

#define LFM2_CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
