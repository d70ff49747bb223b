// Host stand-in for csrc/cuda/common.cuh (tests/test_cuda_kernels_host.py): just enough of CUDA
// for the block-quantized GEMM kernels (csrc/cuda/gemm_quant_kernels.cuh) to compile as C++ and
// run on the CPU, one std::thread per CUDA thread, one block at a time: __shared__ arrays become
// statics (shared by the block's threads), __syncthreads a block barrier, warp_sum an exchange
// through a per-warp slot array between two warp barriers, __ldg a plain load, the _rn
// intrinsics unfused float operations (compiled with -ffp-contract=off). Not a CUDA emulator:
// only what these kernels use.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "core/tensor.h"

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct int4 {
    int x, y, z, w;
};
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }
struct uint2 {
    uint32_t x, y;
};
inline uint2 make_uint2(uint32_t a, uint32_t b) { return {a, b}; }
struct alignas(16) float4 {
    float x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

template <class T>
inline T host_ldg(const T* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}
#define __ldg(p) host_ldg(p)
inline float host_half2float(uint32_t h) { return lfm2::f16_to_f32(uint16_t(h)); }
#define __half2float(x) host_half2float(x)
#define __ushort_as_half(x) (x)
inline float host_fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float host_fsub_rn(float a, float b) {
    volatile float r = a - b;
    return r;
}
#define __fmul_rn host_fmul_rn
#define __fsub_rn host_fsub_rn

namespace host_emu {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float warp_slots[32][32];
}  // namespace host_emu

inline void __syncthreads() { host_emu::block_barrier->arrive_and_wait(); }

namespace lfm2::cuda {

template <class T>
constexpr T ceil_div(T a, T b) {
    return (a + b - 1) / b;
}

// common.cuh's xor-butterfly warp sum (v += shfl_xor(v, o) for o = 16 .. 1): every lane publishes
// its value, then computes the butterfly over all 32 itself, with the same additions in the same
// order as the shuffles do, and keeps its own lane's result.
inline float warp_sum(float v) {
    const unsigned t = threadIdx.x, w = t >> 5, l = t & 31;
    host_emu::warp_slots[w][l] = v;
    host_emu::warp_barriers[w]->arrive_and_wait();
    float a[32], b[32];
    for (int i = 0; i < 32; ++i) a[i] = host_emu::warp_slots[w][i];
    host_emu::warp_barriers[w]->arrive_and_wait();
    for (int o = 16; o > 0; o >>= 1) {
        for (int i = 0; i < 32; ++i) b[i] = a[i] + a[i ^ o];
        std::memcpy(a, b, sizeof a);
    }
    return a[l];
}

// Runs kernel() for every thread of every block of `grid` (threads a multiple of 32, <= 1024): one
// std::thread per CUDA thread walks the blocks in order, with a barrier between blocks (the
// __shared__ statics are reused by the next block).
template <class F>
void host_launch(dim3 grid, unsigned threads, F kernel) {
    gridDim = grid;
    blockDim = dim3(threads);
    std::barrier<> block(threads);
    host_emu::block_barrier = &block;
    host_emu::warp_barriers.clear();
    for (unsigned w = 0; w < threads / 32; ++w) host_emu::warp_barriers.emplace_back(new std::barrier<>(32));
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
            threadIdx = dim3(t);
            for (unsigned by = 0; by < grid.y; ++by)
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    blockIdx = dim3(bx, by);
                    kernel();
                    block.arrive_and_wait();
                }
        });
    for (auto& th : ts) th.join();
}

}  // namespace lfm2::cuda
