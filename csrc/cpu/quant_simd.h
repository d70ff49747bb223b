// Block-quantized weights decoded in SIMD registers (AVX-512, AVX2), bit-identical to
// core/quant.h's scalar dequant_block, so a kernel that multiplies these vectors is exactly a
// kernel on the dequantized float32 weights. Internal to csrc/cpu (gemm_quant.cpp).
// Every product here is exact in float32 (d, an f16, has at most 11 significant bits; d · sc
// and (d · sc) · code at most 23: docs/ops.md, tests/test_quant.py); only q4_k's final
// − dmin · m rounds. So q4_k's (d · sc) · q − dmin · m may be one fused multiply-subtract: it
// rounds once, exactly where the reference's separate subtraction does.
//
// Deq<S, Block> for S = simd::Avx512 | simd::Avx2 (and simd::Scalar: dequant_block itself) exposes:
//   kGroups, kWeights        groups per block, weights per group (32; 64 for q6_k on AVX-512)
//   Prep prep(block)         per-block state (scales converted once)
//   group(block, prep, g, v) v[0 .. kWeights / S::W) = weights kWeights·g .. kWeights·(g + 1) − 1 of
//                            the block, in order
// How the values are formed without per-weight arithmetic where possible: q4_0 and q4_k build the
// 16 possible values of a (sub-)block once (a lookup table in one register, vpermps picks lanes
// by nibble) on AVX-512; q8_0, q6_k and the AVX2 paths convert the codes and multiply.
#pragma once

#include "core/quant.h"
#include "simd.h"

namespace lfm2::cpu::qsimd {

template <class S, class B>
struct Deq;

// Weights per block.
template <class B>
constexpr int kBlock = 256;
template <>
constexpr int kBlock<BlockQ8_0> = 32;
template <>
constexpr int kBlock<BlockQ4_0> = 32;

// ----------------------------------------------------------------------------- scalar (the reference)

// core/quant.h's dequant_block itself: the block decoded once into Prep, groups copied out.
template <class B>
struct Deq<simd::Scalar, B> {
    static constexpr int kGroups = kBlock<B> / 32, kWeights = 32;
    struct Prep {
        float w[kBlock<B>];
    };
    static inline Prep prep(const B& b) {
        Prep p;
        dequant_block(b, p.w);
        return p;
    }
    static inline void group(const B&, const Prep& p, int g, float* v) {
        for (int i = 0; i < 32; ++i) v[i] = p.w[32 * g + i];
    }
};

// ----------------------------------------------------------------------------- AVX-512

// An f16 scale in all 16 lanes (broadcast as f16, converted in the vector: 2 instructions).
LFM2_TARGET_AVX512 inline __m512 bcast_f16(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16(short(h))); }

// 16 int8 lanes as floats.
LFM2_TARGET_AVX512 inline __m512 i8_ps(__m128i q) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)); }

template <>
struct Deq<simd::Avx512, BlockQ8_0> {
    static constexpr int kGroups = 1, kWeights = 32;
    struct Prep {
        __m512 d;
    };
    LFM2_TARGET_AVX512 static inline Prep prep(const BlockQ8_0& b) { return {bcast_f16(b.d)}; }
    LFM2_TARGET_AVX512 static inline void group(const BlockQ8_0& b, const Prep& p, int, __m512* v) {
        for (int i = 0; i < 2; ++i) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * i));
            v[i] = _mm512_mul_ps(p.d, i8_ps(q));
        }
    }
};

// The codes 0..15 as floats: lane i holds i.
LFM2_TARGET_AVX512 inline __m512 iota16() {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

template <>
struct Deq<simd::Avx512, BlockQ4_0> {
    static constexpr int kGroups = 1, kWeights = 32;
    struct Prep {
        __m512 table;  // lane i: d · float(i − 8), the value of nibble i
    };
    LFM2_TARGET_AVX512 static inline Prep prep(const BlockQ4_0& b) {
        return {_mm512_mul_ps(bcast_f16(b.d), _mm512_sub_ps(iota16(), _mm512_set1_ps(8.0f)))};
    }
    LFM2_TARGET_AVX512 static inline void group(const BlockQ4_0& b, const Prep& p, int, __m512* v) {
        // vpermps reads only the low 4 bits of each index: the low nibble as is, the high one after a shift
        const __m512i raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
        v[0] = _mm512_permutexvar_ps(raw, p.table);
        v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(raw, 4), p.table);
    }
};

// q4_k: the 8 sub-block products d · sc[j] and dmin · m[j], each one float32 product as in
// core/quant.h. The 12 packed bytes are unpacked four at a time in a SIMD register (k4_scale_min's
// bit layout: sc[j] = s[j] & 63, m[j] = s[4 + j] & 63 for j < 4, sc[4 + i] = (s[8 + i] & 15) |
// (s[i] >> 6) << 4, m[4 + i] = (s[8 + i] >> 4) | (s[4 + i] >> 6) << 4).
struct K4Scales {
    float ds[8], dm[8];  // adjacent: the AVX-512 prep writes both with one 16-lane store
};
static_assert(sizeof(K4Scales) == 64, "ds and dm adjacent");
// The packed 6-bit values r = [sc[0..7], m[0..7]] (bytes) and e's halves d, dmin as floats.
LFM2_TARGET_AVX2 inline __m128i k4_unpack(const BlockQ4_K& b, __m128& dd) {
    // The block's first 16 bytes as dwords e0 = d | dmin, e1..e3 = scales[0..11]; dword lanes of
    // r = [sc[0..3], sc[4..7], m[0..3], m[4..7]] (one byte each):
    //   [e1 & 3F, (e3 & 0F) | (e1 >> 2) & 30, e2 & 3F, (e3 >> 4) & 0F | (e2 >> 2) & 30] (per byte)
    const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(&b));
    const __m128i p = _mm_shuffle_epi32(e, _MM_SHUFFLE(3, 2, 3, 1));  // e1, e3, e2, e3
    const __m128i q = _mm_shuffle_epi32(e, _MM_SHUFFLE(2, 2, 1, 1));  // e1, e1, e2, e2
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
                                     _mm_setr_epi32(0x3F3F3F3F, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(q, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    dd = _mm_cvtph_ps(e);  // d, dmin, ...
    return _mm_or_si128(lo, hi);
}
LFM2_TARGET_AVX2 inline K4Scales k4_scales(const BlockQ4_K& b) {
    __m128 dd;
    const __m128i r = k4_unpack(b, dd);
    K4Scales s;
    _mm256_storeu_ps(s.ds, _mm256_mul_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r))));
    _mm256_storeu_ps(s.dm, _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)),
                                         _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(r, 8)))));
    return s;
}

template <>
struct Deq<simd::Avx512, BlockQ4_K> {
    // group g = sub-blocks 2g (low nibbles of qs[32g .. 32g + 31]) and 2g + 1 (their high nibbles)
    static constexpr int kGroups = 4, kWeights = 64;
    using Prep = K4Scales;
    LFM2_TARGET_AVX512 static inline Prep prep(const BlockQ4_K& b) {  // ds and dm in one 16-lane product
        __m128 dd;
        const __m128i r = k4_unpack(b, dd);
        const __m512i sel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);  // d ×8, dmin ×8
        Prep p;
        _mm512_storeu_ps(p.ds, _mm512_mul_ps(_mm512_permutexvar_ps(sel, _mm512_castps128_ps512(dd)),
                                             _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(r))));
        return p;
    }
    // Sub-block j's 16 values: lane i = (ds · float(i)) − dm (ds · i is exact: one rounding, as the reference)
    LFM2_TARGET_AVX512 static inline __m512 table(const Prep& p, int j) {
        return _mm512_fmsub_ps(_mm512_set1_ps(p.ds[j]), iota16(), _mm512_set1_ps(p.dm[j]));
    }
    LFM2_TARGET_AVX512 static inline void group(const BlockQ4_K& b, const Prep& p, int g, __m512* v) {
        const __m512 t0 = table(p, 2 * g), t1 = table(p, 2 * g + 1);
        const uint8_t* q = b.qs + 32 * g;
        const __m512i r0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
        const __m512i r1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)));
        v[0] = _mm512_permutexvar_ps(r0, t0);
        v[1] = _mm512_permutexvar_ps(r1, t0);
        v[2] = _mm512_permutexvar_ps(_mm512_srli_epi32(r0, 4), t1);
        v[3] = _mm512_permutexvar_ps(_mm512_srli_epi32(r1, 4), t1);
    }
};

// q6_k: the 32 codes of group g (weights 32g .. 32g + 31) minus 32, as int8 in a 256-bit register.
// Weight 32g + l takes nibble (g & 3) >> 1 of ql[64 · (g >> 2) + 32 · (g & 1) + l] and bits
// 2 (g & 3), +1 of qh[32 · (g >> 2) + l] (core/quant.h's q6_code).
LFM2_TARGET_AVX2 inline __m256i q6_group_codes(const BlockQ6_K& b, int g) {
    const int half = g >> 2, gg = g & 3;
    const __m256i nib = _mm256_set1_epi8(0x0F);
    __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.ql + 64 * half + 32 * (gg & 1)));
    if (gg >> 1) lo = _mm256_srli_epi16(lo, 4);
    lo = _mm256_and_si256(lo, nib);
    __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * half));
    hi = _mm256_and_si256(_mm256_srli_epi16(hi, 2 * gg), _mm256_set1_epi8(3));
    hi = _mm256_slli_epi16(hi, 4);  // values <= 0x30: nothing crosses a byte
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
}

struct K6Scales {
    float ds[16];  // d · scales[j], one float32 product each
};
LFM2_TARGET_AVX2 inline K6Scales k6_scales(const BlockQ6_K& b) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b.d));
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
    K6Scales s;
    _mm256_storeu_ps(s.ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_storeu_ps(s.ds + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
    return s;
}

template <>
struct Deq<simd::Avx512, BlockQ6_K> {
    // group g = weights 64g .. 64g + 63 = q6_group_codes' groups 2g, 2g + 1 (sub-blocks 4g .. 4g + 3),
    // decoded together in one 512-bit register: ql[64 · (g >> 1) ..][64 bytes] (nibble g & 1) and
    // qh[32 · (g >> 1) ..] twice, shifted by 4 (g & 1) and 4 (g & 1) + 2.
    static constexpr int kGroups = 4, kWeights = 64;
    struct Prep {
        float ds[16];
    };
    LFM2_TARGET_AVX512 static inline Prep prep(const BlockQ6_K& b) {
        Prep p;
        const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.scales));
        _mm512_storeu_ps(p.ds, _mm512_mul_ps(_mm512_set1_ps(_cvtsh_ss(b.d)), i8_ps(sc)));
        return p;
    }
    LFM2_TARGET_AVX512 static inline void group(const BlockQ6_K& b, const Prep& p, int g, __m512* v) {
        const int half = g >> 1, hi_nib = g & 1;
        const __m512i nib = _mm512_set1_epi8(0x0F);
        __m512i lo = _mm512_loadu_si512(b.ql + 64 * half);
        if (hi_nib) lo = _mm512_srli_epi16(lo, 4);
        lo = _mm512_and_si512(lo, nib);
        const __m256i qh32 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * half));
        const __m512i qh = _mm512_broadcast_i64x4(qh32);
        const __m512i cnt =  // 16-bit lanes: the low half shifts by 4 · hi_nib, the high half by 2 more
            _mm512_inserti64x4(_mm512_set1_epi16(short(4 * hi_nib)), _mm256_set1_epi16(short(4 * hi_nib + 2)), 1);
        __m512i hi = _mm512_and_si512(_mm512_srlv_epi16(qh, cnt), _mm512_set1_epi8(3));
        hi = _mm512_slli_epi16(hi, 4);  // values <= 0x30: nothing crosses a byte
        const __m512i q = _mm512_sub_epi8(_mm512_or_si512(lo, hi), _mm512_set1_epi8(32));
        v[0] = _mm512_mul_ps(_mm512_set1_ps(p.ds[4 * g]), i8_ps(_mm512_castsi512_si128(q)));
        v[1] = _mm512_mul_ps(_mm512_set1_ps(p.ds[4 * g + 1]), i8_ps(_mm512_extracti32x4_epi32(q, 1)));
        v[2] = _mm512_mul_ps(_mm512_set1_ps(p.ds[4 * g + 2]), i8_ps(_mm512_extracti32x4_epi32(q, 2)));
        v[3] = _mm512_mul_ps(_mm512_set1_ps(p.ds[4 * g + 3]), i8_ps(_mm512_extracti32x4_epi32(q, 3)));
    }
};

// ----------------------------------------------------------------------------- AVX2

// int8 lanes 0..7 / 8..15 of a 128-bit register as 8 floats.
LFM2_TARGET_AVX2 inline __m256 i8lo_ps(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }
LFM2_TARGET_AVX2 inline __m256 i8hi_ps(__m128i q) { return i8lo_ps(_mm_srli_si128(q, 8)); }

template <>
struct Deq<simd::Avx2, BlockQ8_0> {
    static constexpr int kGroups = 1, kWeights = 32;
    struct Prep {
        __m256 d;
    };
    LFM2_TARGET_AVX2 static inline Prep prep(const BlockQ8_0& b) { return {_mm256_set1_ps(_cvtsh_ss(b.d))}; }
    LFM2_TARGET_AVX2 static inline void group(const BlockQ8_0& b, const Prep& p, int, __m256* v) {
        for (int i = 0; i < 2; ++i) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * i));
            v[2 * i] = _mm256_mul_ps(p.d, i8lo_ps(q));
            v[2 * i + 1] = _mm256_mul_ps(p.d, i8hi_ps(q));
        }
    }
};

template <>
struct Deq<simd::Avx2, BlockQ4_0> {
    static constexpr int kGroups = 1, kWeights = 32;
    struct Prep {
        __m256 d;
    };
    LFM2_TARGET_AVX2 static inline Prep prep(const BlockQ4_0& b) { return {_mm256_set1_ps(_cvtsh_ss(b.d))}; }
    LFM2_TARGET_AVX2 static inline void group(const BlockQ4_0& b, const Prep& p, int, __m256* v) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)), nib = _mm_set1_epi8(0x0F);
        const __m128i eight = _mm_set1_epi8(8);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, nib), eight);  // weights 0..15: nibble − 8, exact
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), nib), eight);  // weights 16..31
        v[0] = _mm256_mul_ps(p.d, i8lo_ps(lo));
        v[1] = _mm256_mul_ps(p.d, i8hi_ps(lo));
        v[2] = _mm256_mul_ps(p.d, i8lo_ps(hi));
        v[3] = _mm256_mul_ps(p.d, i8hi_ps(hi));
    }
};

template <>
struct Deq<simd::Avx2, BlockQ4_K> {
    static constexpr int kGroups = 8, kWeights = 32;
    using Prep = K4Scales;
    LFM2_TARGET_AVX2 static inline Prep prep(const BlockQ4_K& b) { return k4_scales(b); }
    LFM2_TARGET_AVX2 static inline void group(const BlockQ4_K& b, const Prep& p, int g, __m256* v) {
        __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs + 32 * (g >> 1)));
        if (g & 1) q = _mm256_srli_epi16(q, 4);
        q = _mm256_and_si256(q, _mm256_set1_epi8(0x0F));  // codes 0..15 (as int8: positive)
        const __m256 ds = _mm256_set1_ps(p.ds[g]), dm = _mm256_set1_ps(p.dm[g]);
        const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
        v[0] = _mm256_fmsub_ps(ds, i8lo_ps(q0), dm);  // ds · q exact: one rounding, as the reference
        v[1] = _mm256_fmsub_ps(ds, i8hi_ps(q0), dm);
        v[2] = _mm256_fmsub_ps(ds, i8lo_ps(q1), dm);
        v[3] = _mm256_fmsub_ps(ds, i8hi_ps(q1), dm);
    }
};

template <>
struct Deq<simd::Avx2, BlockQ6_K> {
    static constexpr int kGroups = 8, kWeights = 32;
    using Prep = K6Scales;
    LFM2_TARGET_AVX2 static inline Prep prep(const BlockQ6_K& b) { return k6_scales(b); }
    LFM2_TARGET_AVX2 static inline void group(const BlockQ6_K& b, const Prep& p, int g, __m256* v) {
        const __m256i q = q6_group_codes(b, g);
        const __m256 d0 = _mm256_set1_ps(p.ds[2 * g]), d1 = _mm256_set1_ps(p.ds[2 * g + 1]);
        const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
        v[0] = _mm256_mul_ps(d0, i8lo_ps(q0));
        v[1] = _mm256_mul_ps(d0, i8hi_ps(q0));
        v[2] = _mm256_mul_ps(d1, i8lo_ps(q1));
        v[3] = _mm256_mul_ps(d1, i8hi_ps(q1));
    }
};

}  // namespace lfm2::cpu::qsimd
