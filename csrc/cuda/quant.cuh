// Block-quantized weights on the GPU (q8_0, q4_0, q4_k, q6_k; layouts in core/quant.h): the
// in-kernel dequantization of 8 consecutive weights of a row, shared by the quantized GEMM kinds
// (gemm_quant.cu) and the embedding gather. Internal to csrc/cuda.
//
// Values are core/quant.h's dequant_block, bit for bit: the f16 scales widen exactly, products
// d · sc are rounded to fp32 first, and every multiply / subtract is an explicit _rn intrinsic so
// that nvcc's default FMA contraction cannot fuse (d · sc) · q − dmin · m into one rounding.
// Row addresses: a matrix [E][N, ld] of type QT has its row (e, n) at byte
// (e · estride + n · ld) / block · bytes, all in weights (multiples of the block).
// Alignment: blocks are 2-byte aligned (q8_0 34, q4_0 18, q6_k 210 bytes) and read with 16-bit
// loads; q4_k blocks (144 bytes) are 16-byte aligned when the tensor is (cuda::Tensor storage
// always is, launchers check) and their 8 codes per call are read with one 8-byte load.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "core/quant.h"

namespace lfm2::cuda {

template <DType QT>
struct QTraits;
template <>
struct QTraits<DType::Q8_0> {
    static constexpr int kBlock = 32, kBytes = 34;
};
template <>
struct QTraits<DType::Q4_0> {
    static constexpr int kBlock = 32, kBytes = 18;
};
template <>
struct QTraits<DType::Q4_K> {
    static constexpr int kBlock = 256, kBytes = 144;
};
template <>
struct QTraits<DType::Q6_K> {
    static constexpr int kBlock = 256, kBytes = 210;
};

// Byte offset of the weight at element offset `elems` (a multiple of the block) of a QT matrix.
template <DType QT>
__host__ __device__ __forceinline__ int64_t qbyte_offset(int64_t elems) {
    return elems / QTraits<QT>::kBlock * QTraits<QT>::kBytes;
}

__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p) {
    return __ldg(reinterpret_cast<const unsigned short*>(p));
}

__device__ __forceinline__ float ld_f16(const uint8_t* p) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(ld_u16(p))));
}

// 8 bytes from a 2-byte aligned address, as two little-endian words.
__device__ __forceinline__ uint2 ld_8_u16(const uint8_t* p) {
    const uint32_t a = ld_u16(p), b = ld_u16(p + 2), c = ld_u16(p + 4), d = ld_u16(p + 6);
    return make_uint2(a | (b << 16), c | (d << 16));
}

__device__ __forceinline__ uint32_t byte_of(const uint2& v, int i) {
    return ((i < 4 ? v.x : v.y) >> (8 * (i & 3))) & 0xFFu;
}

// o[0..8) = weights k .. k + 7 of the row starting at `row` (k a multiple of 8).
template <DType QT>
__device__ __forceinline__ void qload8(const uint8_t* __restrict__ row, int64_t k, float (&o)[8]);

template <>
__device__ __forceinline__ void qload8<DType::Q8_0>(const uint8_t* __restrict__ row, int64_t k, float (&o)[8]) {
    const uint8_t* blk = row + (k >> 5) * 34;
    const int i = int(k & 31);
    const float d = ld_f16(blk);
    const uint2 q = ld_8_u16(blk + 2 + i);
#pragma unroll
    for (int v = 0; v < 8; ++v) o[v] = __fmul_rn(d, float(int8_t(byte_of(q, v))));
}

template <>
__device__ __forceinline__ void qload8<DType::Q4_0>(const uint8_t* __restrict__ row, int64_t k, float (&o)[8]) {
    const uint8_t* blk = row + (k >> 5) * 18;
    const int i = int(k & 31);
    const float d = ld_f16(blk);
    const uint2 q = ld_8_u16(blk + 2 + (i & 15));  // weight i < 16: low nibble of qs[i]; else high of qs[i - 16]
    const int shift = i < 16 ? 0 : 4;
#pragma unroll
    for (int v = 0; v < 8; ++v) o[v] = __fmul_rn(d, float(int((byte_of(q, v) >> shift) & 0x0Fu) - 8));
}

template <>
__device__ __forceinline__ void qload8<DType::Q4_K>(const uint8_t* __restrict__ row, int64_t k, float (&o)[8]) {
    const uint8_t* blk = row + (k >> 8) * 144;
    const int r = int(k & 255), j = r >> 5, l = r & 31;
    int sc, m;
    k4_scale_min(blk + 4, j, sc, m);  // core/quant.h's unpacking, on the block's scale bytes (cached loads)
    const float d = ld_f16(blk), dmin = ld_f16(blk + 2);
    const float ds = __fmul_rn(d, float(sc)), dm = __fmul_rn(dmin, float(m));
    const uint2 q = __ldg(reinterpret_cast<const uint2*>(blk + 16 + 32 * (j >> 1) + l));
    const int shift = 4 * (j & 1);
#pragma unroll
    for (int v = 0; v < 8; ++v) o[v] = __fsub_rn(__fmul_rn(ds, float((byte_of(q, v) >> shift) & 0x0Fu)), dm);
}

template <>
__device__ __forceinline__ void qload8<DType::Q6_K>(const uint8_t* __restrict__ row, int64_t k, float (&o)[8]) {
    const uint8_t* blk = row + (k >> 8) * 210;
    const int r = int(k & 255), half = r >> 7, g = (r & 127) >> 5, l = r & 31;
    const uint2 ql = ld_8_u16(blk + 64 * half + 32 * (g & 1) + l);
    const uint2 qh = ld_8_u16(blk + 128 + 32 * half + l);
    const int sc = int(int8_t(__ldg(blk + 192 + (r >> 4))));  // the 8 weights share sub-block r / 16
    const float ds = __fmul_rn(ld_f16(blk + 208), float(sc));
    const int lshift = 4 * (g >> 1), hshift = 2 * g;
#pragma unroll
    for (int v = 0; v < 8; ++v) {
        const int code = int((byte_of(ql, v) >> lshift) & 0x0Fu) | (int((byte_of(qh, v) >> hshift) & 3u) << 4);
        o[v] = __fmul_rn(ds, float(code - 32));
    }
}

}  // namespace lfm2::cuda
