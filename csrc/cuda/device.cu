// Device queries and a smoke-test kernel for the CUDA backend, so the build, the fat binary
// (CMAKE_CUDA_ARCHITECTURES) and the runtime link are exercised on every machine with nvcc.
// Not here: the ops (csrc/cuda/<op>.cu, declared in ops.h) and the runtime (tensor.cu).
// Import must work without a GPU: nothing here runs at load time.
#include <cmath>
#include <vector>

#include "common.cuh"
#include "device.h"

namespace lfm2::cuda {
namespace {

__global__ void axpy_kernel(float a, const float* __restrict__ x, float* __restrict__ y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaf(a, x[i], y[i]);
}

}  // namespace

int device_count() {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device / no driver" error
        return 0;
    }
    return n;
}

DeviceInfo device_info(int device) {
    int n = device_count();
    LFM2_CHECK_INDEX(device >= 0 && device < n, "cuda.device_info", "device ", device, " does not exist (", n,
                     " CUDA devices)");
    cudaDeviceProp p{};
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    DeviceInfo info;
    info.name = p.name;
    info.major = p.major;
    info.minor = p.minor;
    info.multiprocessors = p.multiProcessorCount;
    info.total_memory = p.totalGlobalMem;
    auto attr = [device](cudaDeviceAttr a) {
        int v = 0;
        if (cudaDeviceGetAttribute(&v, a, device) != cudaSuccess) {
            (void)cudaGetLastError();
            v = 0;
        }
        return v;
    };
    info.l2_cache = attr(cudaDevAttrL2CacheSize);
    info.clock_khz = attr(cudaDevAttrClockRate);
    info.memory_clock_khz = attr(cudaDevAttrMemoryClockRate);
    info.memory_bus_width = attr(cudaDevAttrGlobalMemoryBusWidth);
    return info;
}

int runtime_version() {
    int v = 0;
    CUDA_CHECK(cudaRuntimeGetVersion(&v));
    return v;
}

int driver_version() {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return v;
}

double selftest(int device, int n) {
    int count = device_count();
    LFM2_CHECK_INDEX(device >= 0 && device < count, "cuda.selftest", "device ", device, " does not exist (", count,
                     " CUDA devices)");
    LFM2_CHECK(n > 0, "cuda.selftest", "n must be positive, got ", n);
    CUDA_CHECK(cudaSetDevice(device));
    std::vector<float> hx(n), hy(n);
    for (int i = 0; i < n; ++i) {
        hx[i] = float(i % 97) * 0.5f;
        hy[i] = float(i % 13);
    }
    float *dx = nullptr, *dy = nullptr;
    const size_t bytes = size_t(n) * sizeof(float);
    CUDA_CHECK(cudaMalloc(&dx, bytes));
    try {
        CUDA_CHECK(cudaMalloc(&dy, bytes));
        CUDA_CHECK(cudaMemcpy(dx, hx.data(), bytes, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(dy, hy.data(), bytes, cudaMemcpyHostToDevice));
        const int block = 256;
        axpy_kernel<<<ceil_div(n, block), block>>>(2.0f, dx, dy, n);
        LFM2_CUDA_LAUNCH_CHECK();
        std::vector<float> out(n);
        CUDA_CHECK(cudaMemcpy(out.data(), dy, bytes, cudaMemcpyDeviceToHost));
        double err = 0.0;
        for (int i = 0; i < n; ++i) err = std::fmax(err, std::fabs(double(out[i]) - (2.0 * hx[i] + hy[i])));
        cudaFree(dx);
        cudaFree(dy);
        return err;
    } catch (...) {
        cudaFree(dx);
        if (dy) cudaFree(dy);
        throw;
    }
}

}  // namespace lfm2::cuda
