// Element types of lfm2engine tensors and bit-exact scalar conversions between them.
// bf16 <-> f32 and f16 <-> f32 here are the reference conversions: round to nearest even,
// NaN kept NaN (bf16 NaN is always 0x7FC0, as torch and checkpoint.f32_to_bf16 write it),
// f16 overflow to inf and gradual underflow. SIMD paths may convert differently only where the
// result is bit-identical (widening bf16/f16 -> f32 is exact). Usable from CUDA (LFM2_HD).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LFM2_HD __host__ __device__
#else
#define LFM2_HD
#endif

namespace lfm2 {

// Q8_0, Q4_0, Q4_K, Q6_K: GGUF's block-quantized weight types (csrc/core/quant.h has the block
// layouts; python/lfm2engine/quant.py the values). A view of such a tensor has the logical shape
// and element strides ([N, K] for N rows of K weights, K a multiple of the block); its bytes are
// dtype_bytes(dtype, numel). Only weight arguments (gemm, embedding, experts) accept them.
enum class DType : uint8_t { F32, F16, BF16, I32, U8, Q8_0, Q4_0, Q4_K, Q6_K };

LFM2_HD inline const char* dtype_name(DType d) {
    switch (d) {
        case DType::F32:
            return "float32";
        case DType::F16:
            return "float16";
        case DType::BF16:
            return "bfloat16 (uint16 bits)";
        case DType::I32:
            return "int32";
        case DType::U8:
            return "uint8";
        case DType::Q8_0:
            return "q8_0";
        case DType::Q4_0:
            return "q4_0";
        case DType::Q4_K:
            return "q4_k";
        case DType::Q6_K:
            return "q6_k";
    }
    return "?";
}

LFM2_HD inline bool is_quantized(DType d) {
    return d == DType::Q8_0 || d == DType::Q4_0 || d == DType::Q4_K || d == DType::Q6_K;
}

// Weights per block (1 for element types) and bytes per block.
LFM2_HD inline int64_t dtype_block(DType d) {
    switch (d) {
        case DType::Q8_0:
        case DType::Q4_0:
            return 32;
        case DType::Q4_K:
        case DType::Q6_K:
            return 256;
        default:
            return 1;
    }
}

// Bytes per element, or per block for the quantized types (see dtype_bytes).
LFM2_HD inline int dtype_size(DType d) {
    switch (d) {
        case DType::F32:
        case DType::I32:
            return 4;
        case DType::F16:
        case DType::BF16:
            return 2;
        case DType::U8:
            return 1;
        case DType::Q8_0:
            return 34;
        case DType::Q4_0:
            return 18;
        case DType::Q4_K:
            return 144;
        case DType::Q6_K:
            return 210;
    }
    return 0;
}

// Bytes of n consecutive elements (n a multiple of the block for quantized types).
LFM2_HD inline int64_t dtype_bytes(DType d, int64_t n) {
    return n / dtype_block(d) * int64_t(dtype_size(d));
}

// Storage tags: the same 16 bits mean different numbers, so the type says which.
struct bf16_t {
    uint16_t bits;
};
struct f16_t {
    uint16_t bits;
};

LFM2_HD inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

LFM2_HD inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// bf16 -> f32: exact (the bf16 bits are the high half of the f32).
LFM2_HD inline float bf16_to_f32(uint16_t b) {
    return f32_from_bits(uint32_t(b) << 16);
}

// f32 -> bf16, round to nearest even; every NaN becomes 0x7FC0.
LFM2_HD inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// f16 -> f32: exact, subnormals included; NaN payload kept.
LFM2_HD inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (mant << 13));
    if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return f32_from_bits(sign);
    // Subnormal: value = mant * 2^-24; shift the leading one into the implicit bit.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
    }
    return f32_from_bits(sign | (e << 23) | ((mant & 0x3FFu) << 13));
}

// f32 -> f16, round to nearest even; overflow -> inf, tiny -> subnormal or signed zero.
LFM2_HD inline uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));  // NaN, quiet
    if (ax >= 0x477FF000u) return uint16_t(sign | 0x7C00u);                         // >= 65520 rounds to inf
    if (ax < 0x38800000u) {                                                         // below 2^-14: subnormal range
        if (ax <= 0x33000000u) return sign;  // <= 2^-25 rounds to zero (tie: even)
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;  // value in units of 2^-24 is m >> shift
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return uint16_t(sign | r);
    }
    uint32_t r = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3FFu);
    uint32_t rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // a carry into the exponent is right
    return uint16_t(sign | r);
}

LFM2_HD inline float to_f32(float v) {
    return v;
}
LFM2_HD inline float to_f32(bf16_t v) {
    return bf16_to_f32(v.bits);
}
LFM2_HD inline float to_f32(f16_t v) {
    return f16_to_f32(v.bits);
}

}  // namespace lfm2
