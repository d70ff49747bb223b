// GGUF's block-quantized weight layouts (bit-compatible with GGML's block_q8_0, block_q4_0,
// block_q4_K, block_q6_K) and the scalar dequantization of one block: the definition every
// kernel (CPU SIMD, CUDA) must reproduce. python/lfm2engine/quant.py::dequantize is the same
// definition in NumPy (and the tests check both against the `gguf` package's dequantizers).
// Products d · sc are formed in float32 first, then multiplied by the code, as GGML does.
// Usable from CUDA (LFM2_HD).
#pragma once

#include <cstdint>

#include "dtype.h"

namespace lfm2 {

struct BlockQ8_0 {  // 32 weights: d · qs[i]
    uint16_t d;     // f16
    int8_t qs[32];
};
struct BlockQ4_0 {   // 32 weights: d · (nibble − 8); qs[i] low nibble = weight i, high = weight i + 16
    uint16_t d;      // f16
    uint8_t qs[16];
};
struct BlockQ4_K {        // 256 weights in 8 sub-blocks j of 32: (d · sc[j]) · q − (dmin · m[j])
    uint16_t d, dmin;     // f16
    uint8_t scales[12];   // 6-bit sc[8], m[8], packed (k4_scale_min)
    uint8_t qs[128];      // 4 chunks of 32 bytes: low nibbles = sub-block 2c, high = 2c + 1
};
struct BlockQ6_K {        // 256 weights in 16 sub-blocks j of 16: (d · sc[j]) · (q − 32), q 6 bits
    uint8_t ql[128];      // low 4 bits
    uint8_t qh[64];       // high 2 bits
    int8_t scales[16];
    uint16_t d;           // f16
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_K) == 144 &&
                  sizeof(BlockQ6_K) == 210,
              "GGUF block sizes");

// q4_k: the six-bit scale and min of sub-block j (< 8).
LFM2_HD inline void k4_scale_min(const uint8_t* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// q6_k: the code (0..63) of weight i (< 256) of a block.
LFM2_HD inline int q6_code(const BlockQ6_K& b, int i) {
    const int half = i >> 7, r = i & 127, g = r >> 5, l = r & 31;
    const uint8_t ql = b.ql[64 * half + l + 32 * (g & 1)];
    const int low = (g >> 1) ? (ql >> 4) : (ql & 0x0F);
    const int high = (b.qh[32 * half + l] >> (2 * g)) & 3;
    return low | (high << 4);
}

// out[0 .. block) = the weights of one block.
LFM2_HD inline void dequant_block(const BlockQ8_0& b, float* out) {
    const float d = f16_to_f32(b.d);
    for (int i = 0; i < 32; ++i) out[i] = d * float(b.qs[i]);
}
LFM2_HD inline void dequant_block(const BlockQ4_0& b, float* out) {
    const float d = f16_to_f32(b.d);
    for (int i = 0; i < 16; ++i) {
        out[i] = d * float(int(b.qs[i] & 0x0F) - 8);
        out[i + 16] = d * float(int(b.qs[i] >> 4) - 8);
    }
}
LFM2_HD inline void dequant_block(const BlockQ4_K& b, float* out) {
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        k4_scale_min(b.scales, j, sc, m);
        const float ds = d * float(sc), dm = dmin * float(m);
        const uint8_t* q = b.qs + 32 * (j >> 1);
        const int shift = 4 * (j & 1);
        for (int l = 0; l < 32; ++l) out[32 * j + l] = ds * float((q[l] >> shift) & 0x0F) - dm;
    }
}
LFM2_HD inline void dequant_block(const BlockQ6_K& b, float* out) {
    const float d = f16_to_f32(b.d);
    for (int j = 0; j < 16; ++j) {
        const float ds = d * float(b.scales[j]);
        for (int l = 0; l < 16; ++l) out[16 * j + l] = ds * float(q6_code(b, 16 * j + l) - 32);
    }
}

// out[0 .. K) = one row of K weights of quantized type dt starting at `row` (K a multiple of the block).
LFM2_HD inline void dequant_row(DType dt, const void* row, float* out, int64_t K) {
    const int64_t nb = K / dtype_block(dt);
    switch (dt) {
        case DType::Q8_0:
            for (int64_t i = 0; i < nb; ++i) dequant_block(static_cast<const BlockQ8_0*>(row)[i], out + 32 * i);
            break;
        case DType::Q4_0:
            for (int64_t i = 0; i < nb; ++i) dequant_block(static_cast<const BlockQ4_0*>(row)[i], out + 32 * i);
            break;
        case DType::Q4_K:
            for (int64_t i = 0; i < nb; ++i) dequant_block(static_cast<const BlockQ4_K*>(row)[i], out + 256 * i);
            break;
        case DType::Q6_K:
            for (int64_t i = 0; i < nb; ++i) dequant_block(static_cast<const BlockQ6_K*>(row)[i], out + 256 * i);
            break;
        default:
            break;
    }
}

}  // namespace lfm2
