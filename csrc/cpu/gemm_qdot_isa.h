// The vector vocabulary of the quant-dot kernels (gemm_qdot.cpp): a 16-lane int32 / fp32 vector
// per ISA. QZ: one zmm, vpdpbusd (AVX512_VNNI). QY: two ymm (lanes 0-7, 8-15), vpmaddubsw +
// vpmaddwd. QS: plain arrays (the scalar path). All sum the same products exactly, and hsum is
// the one tree of gemm_qdot.h, so the kernels written over them give the same bits. Internal to
// csrc/cpu.
#pragma once

#include <cstdint>
#include <cstring>

#include "simd.h"

#define LFM2_TARGET_QZ __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
#define LFM2_QZ LFM2_TARGET_QZ static inline __attribute__((always_inline))
#define LFM2_QY LFM2_TARGET_AVX2 static inline __attribute__((always_inline))

namespace lfm2::cpu::qdot {

struct QZ {
    using I = __m512i;
    using F = __m512;
    // q8_0 codes are stored as w + 128 (unsigned, vpdpbusd's first operand) and the sum corrected
    // by 128 · Σ q_x; QY multiplies the signed codes directly (|w| and the sign moved onto x).
    static constexpr bool kSignedQ8 = false;
    LFM2_QZ I zero() { return _mm512_setzero_si512(); }
    LFM2_QZ I set1(int v) { return _mm512_set1_epi32(v); }
    LFM2_QZ I load(const void* p) { return _mm512_loadu_si512(p); }
    LFM2_QZ void store(void* p, I v) { _mm512_storeu_si512(p, v); }
    // dwords at base + idx[l] for the first `n` lanes, 0 in the others.
    LFM2_QZ I gather(const void* base, I idx, int n) {
        return _mm512_mask_i32gather_epi32(zero(), __mmask16((1u << n) - 1u), idx, base, 1);
    }
    // out[t] lane l = dword t of the 16 bytes at base + off[l]: lane q of A[r] holds row 4q + r,
    // and two rounds of unpacks transpose the 4 × 4 dwords of each 128-bit lane in place.
    LFM2_QZ void rows4(const uint8_t* base, const int32_t* off, I* out) {
        I A[4];
        for (int r = 0; r < 4; ++r) {
            auto row = [&](int l) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + off[l])); };
            A[r] = _mm512_inserti32x4(_mm512_castsi128_si512(row(r)), row(4 + r), 1);
            A[r] = _mm512_inserti32x4(A[r], row(8 + r), 2);
            A[r] = _mm512_inserti32x4(A[r], row(12 + r), 3);
        }
        const I u0 = _mm512_unpacklo_epi32(A[0], A[1]), u1 = _mm512_unpackhi_epi32(A[0], A[1]);
        const I v0 = _mm512_unpacklo_epi32(A[2], A[3]), v1 = _mm512_unpackhi_epi32(A[2], A[3]);
        out[0] = _mm512_unpacklo_epi64(u0, v0);
        out[1] = _mm512_unpackhi_epi64(u0, v0);
        out[2] = _mm512_unpacklo_epi64(u1, v1);
        out[3] = _mm512_unpackhi_epi64(u1, v1);
    }
    // The f16 scales of a q4_0 (stride 18) or q8_0 (stride 34) group, widened: block l's is 16-bit
    // word stride / 2 · l of the group; vpermt2w picks them from pairs of 64-byte loads.
    template <int stride>
    LFM2_QZ F block_scales(const uint8_t* base) {
        alignas(64) static constexpr int16_t idx18[2][32] = {
            {0, 9, 18, 27, 36, 45, 54, 63},
            {0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 18, 27, 36, 45, 54, 63}};  // words 72 + 9 (l - 8) from byte 144
        alignas(64) static constexpr int16_t idx34[4][32] = {
            {0, 17, 34, 51},
            {0, 0, 0, 0, 4, 21, 38, 55},                          // words 17 l - 64
            {0, 0, 0, 0, 0, 0, 0, 0, 8, 25, 42, 59},              // - 128
            {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 29, 46, 63}};  // - 192
        I v;
        if constexpr (stride == 18) {
            const I a = _mm512_permutex2var_epi16(load(base), load(idx18[0]), load(base + 64));
            const I b = _mm512_permutex2var_epi16(load(base + 144), load(idx18[1]), load(base + 208));
            v = _mm512_mask_blend_epi16(0xFF00, a, b);
        } else {
            v = _mm512_permutex2var_epi16(load(base), load(idx34[0]), load(base + 64));
            for (int k = 1; k < 4; ++k) {
                const I t = _mm512_permutex2var_epi16(load(base + 128 * k), load(idx34[k]), load(base + 128 * k + 64));
                v = _mm512_mask_blend_epi16(__mmask32(0xFu << (4 * k)), v, t);
            }
        }
        return _mm512_cvtph_ps(_mm512_castsi512_si256(v));
    }
    LFM2_QZ I and_(I a, I b) { return _mm512_and_si512(a, b); }
    LFM2_QZ I or_(I a, I b) { return _mm512_or_si512(a, b); }
    LFM2_QZ I xor_(I a, I b) { return _mm512_xor_si512(a, b); }
    LFM2_QZ I sub(I a, I b) { return _mm512_sub_epi32(a, b); }
    LFM2_QZ I srlv(I a, I n) { return _mm512_srlv_epi32(a, n); }
    template <int n>
    LFM2_QZ I srli(I a) {
        return _mm512_srli_epi32(a, n);
    }
    template <int n>
    LFM2_QZ I slli(I a) {
        return _mm512_slli_epi32(a, n);
    }
    // acc + Σ of 4 products u8 × s8 per lane.
    LFM2_QZ I dot(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
    LFM2_QZ I dot_signed(I acc, I w, I x) { return dot(acc, w, x); }  // unused (kSignedQ8 false)
    LFM2_QZ F zerof() { return _mm512_setzero_ps(); }
    LFM2_QZ F loadf(const void* p) { return _mm512_loadu_ps(p); }
    LFM2_QZ void storef(void* p, F v) { _mm512_storeu_ps(p, v); }
    LFM2_QZ F cvt(I a) { return _mm512_cvtepi32_ps(a); }
    LFM2_QZ F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    LFM2_QZ F add(F a, F b) { return _mm512_add_ps(a, b); }
    LFM2_QZ F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    // The f16 in the low half of each lane, widened (exact).
    LFM2_QZ F halfs(I a) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(a)); }
    LFM2_QZ float hsum(F v) { return simd::Avx512::hsum(v); }
    LFM2_QZ float f16(uint16_t h) { return _cvtsh_ss(h); }
    // out[l] = d_{l / 8} · float(b[l]) for 16 bytes b, unsigned (u8) or signed.
    template <bool sgn>
    LFM2_QZ void scale16(__m128i b, float d0, float d1, float* out) {
        const F d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
        const I v = sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
        _mm512_storeu_ps(out, _mm512_mul_ps(d, _mm512_cvtepi32_ps(v)));
    }
    // The 16 bytes: b0 (lanes 0-7) and b1 (8-15), little-endian.
    LFM2_QZ void scale_u8(uint64_t b0, uint64_t b1, float d0, float d1, float* out) {
        scale16<false>(_mm_set_epi64x(int64_t(b1), int64_t(b0)), d0, d1, out);
    }
    // lo[l] = d_{l / 8} · s_{l / 8}[2 (l % 8)], hi[l] likewise with [2 (l % 8) + 1] (q6_k's scales).
    LFM2_QZ void scale_pairs(const int8_t* s0, const int8_t* s1, float d0, float d1, float* lo, float* hi) {
        const __m128i even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s0)), even_odd);
        const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s1)), even_odd);
        scale16<true>(_mm_unpacklo_epi64(a, b), d0, d1, lo);
        scale16<true>(_mm_unpackhi_epi64(a, b), d0, d1, hi);
    }
};

struct QY {
    struct I {
        __m256i a, b;
    };
    struct F {
        __m256 a, b;
    };
    static constexpr bool kSignedQ8 = true;
    LFM2_QY I zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
    LFM2_QY I set1(int v) { return {_mm256_set1_epi32(v), _mm256_set1_epi32(v)}; }
    LFM2_QY I load(const void* p) {
        const __m256i* q = static_cast<const __m256i*>(p);
        return {_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)};
    }
    LFM2_QY void store(void* p, I v) {
        __m256i* q = static_cast<__m256i*>(p);
        _mm256_storeu_si256(q, v.a);
        _mm256_storeu_si256(q + 1, v.b);
    }
    LFM2_QY __m256i lanes_below(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    LFM2_QY I gather(const void* base, I idx, int n) {
        const int* b = static_cast<const int*>(base);
        const __m256i z = _mm256_setzero_si256();
        return {_mm256_mask_i32gather_epi32(z, b, idx.a, lanes_below(n), 1),
                _mm256_mask_i32gather_epi32(z, b, idx.b, lanes_below(n - 8), 1)};
    }
    // rows4 as QZ's, on 8 rows per ymm: lane q of A[r] holds row 4q + r (+ 8 for .b); rows1 its out[0].
    LFM2_QY void rows_a(const uint8_t* base, const int32_t* off, __m256i* A) {
        for (int r = 0; r < 4; ++r) {
            const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + off[r]));
            const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + off[4 + r]));
            A[r] = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        }
    }
    LFM2_QY void rows4(const uint8_t* base, const int32_t* off, I* out) {
        __m256i A[2][4];
        rows_a(base, off, A[0]);
        rows_a(base, off + 8, A[1]);
        for (int h = 0; h < 2; ++h) {
            const __m256i u0 = _mm256_unpacklo_epi32(A[h][0], A[h][1]), u1 = _mm256_unpackhi_epi32(A[h][0], A[h][1]);
            const __m256i v0 = _mm256_unpacklo_epi32(A[h][2], A[h][3]), v1 = _mm256_unpackhi_epi32(A[h][2], A[h][3]);
            const __m256i r[4] = {_mm256_unpacklo_epi64(u0, v0), _mm256_unpackhi_epi64(u0, v0),
                                  _mm256_unpacklo_epi64(u1, v1), _mm256_unpackhi_epi64(u1, v1)};
            for (int t = 0; t < 4; ++t) (h ? out[t].b : out[t].a) = r[t];
        }
    }
    LFM2_QY I rows1(const uint8_t* base, const int32_t* off) {
        I out[4];
        rows4(base, off, out);
        return out[0];
    }
    template <int stride>
    LFM2_QY F block_scales(const uint8_t* base) {
        alignas(32) static constexpr int32_t off[16] = {0,          stride,      2 * stride,  3 * stride,
                                                        4 * stride, 5 * stride,  6 * stride,  7 * stride,
                                                        8 * stride, 9 * stride,  10 * stride, 11 * stride,
                                                        12 * stride, 13 * stride, 14 * stride, 15 * stride};
        return halfs(rows1(base, off));
    }
    LFM2_QY I and_(I x, I y) { return {_mm256_and_si256(x.a, y.a), _mm256_and_si256(x.b, y.b)}; }
    LFM2_QY I or_(I x, I y) { return {_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
    LFM2_QY I xor_(I x, I y) { return {_mm256_xor_si256(x.a, y.a), _mm256_xor_si256(x.b, y.b)}; }
    LFM2_QY I sub(I x, I y) { return {_mm256_sub_epi32(x.a, y.a), _mm256_sub_epi32(x.b, y.b)}; }
    LFM2_QY I srlv(I x, I n) { return {_mm256_srlv_epi32(x.a, n.a), _mm256_srlv_epi32(x.b, n.b)}; }
    template <int n>
    LFM2_QY I srli(I x) {
        return {_mm256_srli_epi32(x.a, n), _mm256_srli_epi32(x.b, n)};
    }
    template <int n>
    LFM2_QY I slli(I x) {
        return {_mm256_slli_epi32(x.a, n), _mm256_slli_epi32(x.b, n)};
    }
    // u ≤ 63 (4- and 6-bit codes, |w| ≤ 128 of q8_0): vpmaddubsw's pair sums stay below 2^15.
    LFM2_QY __m256i dot8(__m256i acc, __m256i u, __m256i s) {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
        return _mm256_add_epi32(acc, p);
    }
    LFM2_QY I dot(I acc, I u, I s) { return {dot8(acc.a, u.a, s.a), dot8(acc.b, u.b, s.b)}; }
    LFM2_QY I dot_signed(I acc, I w, I x) {
        return {dot8(acc.a, _mm256_abs_epi8(w.a), _mm256_sign_epi8(x.a, w.a)),
                dot8(acc.b, _mm256_abs_epi8(w.b), _mm256_sign_epi8(x.b, w.b))};
    }
    LFM2_QY F zerof() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
    LFM2_QY F loadf(const void* p) {
        const float* q = static_cast<const float*>(p);
        return {_mm256_loadu_ps(q), _mm256_loadu_ps(q + 8)};
    }
    LFM2_QY void storef(void* p, F v) {
        float* q = static_cast<float*>(p);
        _mm256_storeu_ps(q, v.a);
        _mm256_storeu_ps(q + 8, v.b);
    }
    LFM2_QY F cvt(I x) { return {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
    LFM2_QY F mul(F x, F y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
    LFM2_QY F add(F x, F y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
    LFM2_QY F sub(F x, F y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
    LFM2_QY __m256 halfs8(__m256i a) {
        return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1)));
    }
    LFM2_QY F halfs(I x) { return {halfs8(_mm256_and_si256(x.a, _mm256_set1_epi32(0xFFFF))),
                                   halfs8(_mm256_and_si256(x.b, _mm256_set1_epi32(0xFFFF)))}; }
    LFM2_QY float hsum(F v) { return simd::Avx2::hsum(_mm256_add_ps(v.a, v.b)); }
    LFM2_QY float f16(uint16_t h) { return _cvtsh_ss(h); }
    template <bool sgn>
    LFM2_QY void scale16(__m128i b, float d0, float d1, float* out) {
        const __m256i lo = sgn ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
        const __m256i hi = sgn ? _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)) : _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_set1_ps(d0), _mm256_cvtepi32_ps(lo)));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(hi)));
    }
    LFM2_QY void scale_u8(uint64_t b0, uint64_t b1, float d0, float d1, float* out) {
        scale16<false>(_mm_set_epi64x(int64_t(b1), int64_t(b0)), d0, d1, out);
    }
    LFM2_QY void scale_pairs(const int8_t* s0, const int8_t* s1, float d0, float d1, float* lo, float* hi) {
        const __m128i even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s0)), even_odd);
        const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s1)), even_odd);
        scale16<true>(_mm_unpacklo_epi64(a, b), d0, d1, lo);
        scale16<true>(_mm_unpackhi_epi64(a, b), d0, d1, hi);
    }
};

struct QS {
    struct I {
        int32_t v[16];
    };
    struct F {
        float v[16];
    };
    static constexpr bool kSignedQ8 = true;
    static inline I zero() { return set1(0); }
    static inline I set1(int x) {
        I r;
        for (int l = 0; l < 16; ++l) r.v[l] = x;
        return r;
    }
    static inline I load(const void* p) {
        I r;
        std::memcpy(r.v, p, 64);
        return r;
    }
    static inline void store(void* p, I x) { std::memcpy(p, x.v, 64); }
    static inline I gather(const void* base, I idx, int n) {
        I r = zero();
        for (int l = 0; l < n && l < 16; ++l) std::memcpy(&r.v[l], static_cast<const char*>(base) + idx.v[l], 4);
        return r;
    }
    template <int stride>
    static inline F block_scales(const uint8_t* base) {
        F r;
        for (int l = 0; l < 16; ++l) {
            uint16_t h;
            std::memcpy(&h, base + stride * l, 2);
            r.v[l] = f16_to_f32(h);
        }
        return r;
    }
    static inline void rows4(const uint8_t* base, const int32_t* off, I* out) {
        for (int t = 0; t < 4; ++t)
            for (int l = 0; l < 16; ++l) std::memcpy(&out[t].v[l], base + off[l] + 4 * t, 4);
    }
    template <class Op>
    static inline I map2(I x, I y, Op op) {
        for (int l = 0; l < 16; ++l) x.v[l] = int32_t(op(uint32_t(x.v[l]), uint32_t(y.v[l])));
        return x;
    }
    static inline I and_(I x, I y) { return map2(x, y, [](uint32_t a, uint32_t b) { return a & b; }); }
    static inline I or_(I x, I y) { return map2(x, y, [](uint32_t a, uint32_t b) { return a | b; }); }
    static inline I xor_(I x, I y) { return map2(x, y, [](uint32_t a, uint32_t b) { return a ^ b; }); }
    static inline I sub(I x, I y) { return map2(x, y, [](uint32_t a, uint32_t b) { return a - b; }); }
    static inline I srlv(I x, I n) { return map2(x, n, [](uint32_t a, uint32_t b) { return a >> b; }); }
    template <int n>
    static inline I srli(I x) {
        return map2(x, x, [](uint32_t a, uint32_t) { return a >> n; });
    }
    template <int n>
    static inline I slli(I x) {
        return map2(x, x, [](uint32_t a, uint32_t) { return a << n; });
    }
    // acc + Σ of 4 products per lane: u unsigned (or signed with `sw`) bytes × signed bytes.
    template <bool sw>
    static inline I dot4(I acc, I u, I s) {
        const uint8_t* ub = reinterpret_cast<const uint8_t*>(u.v);
        const int8_t* sb = reinterpret_cast<const int8_t*>(s.v);
        for (int l = 0; l < 16; ++l)
            for (int t = 0; t < 4; ++t)
                acc.v[l] += (sw ? int32_t(int8_t(ub[4 * l + t])) : int32_t(ub[4 * l + t])) * int32_t(sb[4 * l + t]);
        return acc;
    }
    static inline I dot(I acc, I u, I s) { return dot4<false>(acc, u, s); }
    static inline I dot_signed(I acc, I w, I x) { return dot4<true>(acc, w, x); }
    static inline F zerof() {
        F r;
        for (int l = 0; l < 16; ++l) r.v[l] = 0.0f;
        return r;
    }
    static inline F loadf(const void* p) {
        F r;
        std::memcpy(r.v, p, 64);
        return r;
    }
    static inline void storef(void* p, F x) { std::memcpy(p, x.v, 64); }
    static inline F cvt(I x) {
        F r;
        for (int l = 0; l < 16; ++l) r.v[l] = float(x.v[l]);
        return r;
    }
    static inline F mul(F x, F y) {
        for (int l = 0; l < 16; ++l) x.v[l] = x.v[l] * y.v[l];
        return x;
    }
    static inline F add(F x, F y) {
        for (int l = 0; l < 16; ++l) x.v[l] = x.v[l] + y.v[l];
        return x;
    }
    static inline F sub(F x, F y) {
        for (int l = 0; l < 16; ++l) x.v[l] = x.v[l] - y.v[l];
        return x;
    }
    static inline F halfs(I x) {
        F r;
        for (int l = 0; l < 16; ++l) r.v[l] = f16_to_f32(uint16_t(uint32_t(x.v[l]) & 0xFFFFu));
        return r;
    }
    static inline float f16(uint16_t h) { return f16_to_f32(h); }
    static inline void scale_u8(uint64_t b0, uint64_t b1, float d0, float d1, float* out) {
        for (int l = 0; l < 16; ++l) out[l] = (l < 8 ? d0 : d1) * float(uint8_t((l < 8 ? b0 : b1) >> (8 * (l & 7))));
    }
    static inline void scale_pairs(const int8_t* s0, const int8_t* s1, float d0, float d1, float* lo, float* hi) {
        for (int l = 0; l < 16; ++l) {
            const int8_t* sc = l < 8 ? s0 : s1;
            lo[l] = (l < 8 ? d0 : d1) * float(sc[2 * (l & 7)]);
            hi[l] = (l < 8 ? d0 : d1) * float(sc[2 * (l & 7) + 1]);
        }
    }
    // (acc[l] + acc[l + 8]) -> (t[l] + t[l + 4]) -> (u0 + u2) + (u1 + u3): Avx512::hsum's tree.
    static inline float hsum(F x) {
        float t[8], u[4];
        for (int l = 0; l < 8; ++l) t[l] = x.v[l] + x.v[l + 8];
        for (int l = 0; l < 4; ++l) u[l] = t[l] + t[l + 4];
        return (u[0] + u[2]) + (u[1] + u[3]);
    }
};

}  // namespace lfm2::cpu::qdot
