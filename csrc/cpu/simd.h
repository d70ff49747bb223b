// The only file with SIMD intrinsics. Three "ISA" structs expose the same vocabulary (load,
// fmadd, hsum, exp, ...) so every kernel is written once as a template over S and compiled three
// times: S = Scalar (always built, plain C++), Avx2 (8 lanes) and Avx512 (16 lanes).
//
// How the per-ISA copies get their instruction set: a kernel body is a template marked
// LFM2_KERNEL (always_inline, no target of its own) and is instantiated only from a function
// carrying LFM2_TARGET_AVX2 / LFM2_TARGET_AVX512 (see dispatch.h, run_kernel). GCC inlines the
// body into that function and then the one-instruction wrappers below, so no AVX code is ever
// reached on a CPU that dispatch.cpp did not find capable.
//
// Determinism: every wrapper is a fixed instruction sequence; hsum/hmax use one fixed tree per
// ISA. Kernels reduce lane-wise in index order and finish with hsum, so a result does not
// depend on which other rows share the call. Scalar fmadd is a*b+c with two roundings
// (-ffp-contract=off); SIMD fmadd is fused. Hence scalar and SIMD agree within rounding only.
#pragma once

// GCC 12's AVX-512 headers pass _mm512_undefined_*() through and then warn about it at every
// inlined use (GCC bug 105593); the state set here covers the header's own lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

#define LFM2_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define LFM2_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LFM2_KERNEL inline __attribute__((always_inline))

namespace lfm2::simd {

// Cephes-style expf constants, shared by the SIMD exp implementations.
namespace expc {
constexpr float hi = 88.0f;   // exp(88) = 1.65e38 < FLT_MAX; larger inputs saturate here
constexpr float lo = -87.0f;  // below this the result is flushed to exactly 0
constexpr float log2e = 1.44269504088896341f;
constexpr float ln2_hi = 0.693359375f;
constexpr float ln2_lo = -2.12194440e-4f;
constexpr float p0 = 1.9875691500e-4f, p1 = 1.3981999507e-3f, p2 = 8.3334519073e-3f, p3 = 4.1665795894e-2f,
                p4 = 1.6666665459e-1f, p5 = 5.0000001201e-1f;
}  // namespace expc

// ----------------------------------------------------------------------------- Scalar

struct Scalar {
    using F = float;
    static constexpr int W = 1;
    static constexpr const char* name = "scalar";

    static inline void prefetch(const void*) {}
    static inline F zero() { return 0.0f; }
    static inline F set1(float v) { return v; }
    static inline F load(const float* p) { return *p; }
    static inline F load_partial(const float* p, int n) { return n > 0 ? *p : 0.0f; }
    static inline F load_w(const float* p) { return *p; }
    static inline F load_w(const bf16_t* p) { return bf16_to_f32(p->bits); }
    static inline F load_w(const f16_t* p) { return f16_to_f32(p->bits); }
    template <class T>
    static inline F load_w_partial(const T* p, int n) {
        return n > 0 ? load_w(p) : 0.0f;
    }
    static inline void store(float* p, F v) { *p = v; }
    static inline void store_partial(float* p, F v, int n) {
        if (n > 0) *p = v;
    }
    static inline F add(F a, F b) { return a + b; }
    static inline F sub(F a, F b) { return a - b; }
    static inline F mul(F a, F b) { return a * b; }
    static inline F div(F a, F b) { return a / b; }
    static inline F max(F a, F b) { return a > b ? a : b; }
    static inline F fmadd(F a, F b, F c) { return a * b + c; }
    static inline float hsum(F v) { return v; }
    // out[j] = hsum(v_j), bit for bit (the same tree per vector).
    static inline void hsum4(F a, F b, F c, F d, float* out) {
        out[0] = a;
        out[1] = b;
        out[2] = c;
        out[3] = d;
    }
    static inline float hmax(F v) { return v; }
    static inline F exp(F v) { return std::exp(v); }
    // Lane bitmasks (bit i = lane i).
    static inline uint32_t eq_mask(F a, F b) { return a == b ? 1u : 0u; }
    static inline uint32_t nan_mask(F a) { return a != a ? 1u : 0u; }
};

// ----------------------------------------------------------------------------- AVX2

struct Avx2 {
    using F = __m256;
    static constexpr int W = 8;
    static constexpr const char* name = "avx2";

    LFM2_TARGET_AVX2 static inline __m256i tail_mask(int n) {
        // lane i active iff i < n
        const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
    }
    LFM2_TARGET_AVX2 static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
    LFM2_TARGET_AVX2 static inline F zero() { return _mm256_setzero_ps(); }
    LFM2_TARGET_AVX2 static inline F set1(float v) { return _mm256_set1_ps(v); }
    LFM2_TARGET_AVX2 static inline F load(const float* p) { return _mm256_loadu_ps(p); }
    LFM2_TARGET_AVX2 static inline F load_partial(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
    LFM2_TARGET_AVX2 static inline F load_w(const float* p) { return _mm256_loadu_ps(p); }
    LFM2_TARGET_AVX2 static inline F load_w(const bf16_t* p) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
    LFM2_TARGET_AVX2 static inline F load_w(const f16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    LFM2_TARGET_AVX2 static inline F load_w_partial(const float* p, int n) { return load_partial(p, n); }
    template <class T>
    LFM2_TARGET_AVX2 static inline F load_w_partial(const T* p, int n) {
        T buf[W];
        std::memset(buf, 0, sizeof(buf));
        std::memcpy(buf, p, sizeof(T) * size_t(n));
        return load_w(buf);
    }
    LFM2_TARGET_AVX2 static inline void store(float* p, F v) { _mm256_storeu_ps(p, v); }
    LFM2_TARGET_AVX2 static inline void store_partial(float* p, F v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
    LFM2_TARGET_AVX2 static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
    LFM2_TARGET_AVX2 static inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
    LFM2_TARGET_AVX2 static inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    LFM2_TARGET_AVX2 static inline F div(F a, F b) { return _mm256_div_ps(a, b); }
    LFM2_TARGET_AVX2 static inline F max(F a, F b) { return _mm256_max_ps(a, b); }
    LFM2_TARGET_AVX2 static inline F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    // Fixed tree: (lo128 + hi128), then lanes (0+2, 1+3), then (0 + 1).
    LFM2_TARGET_AVX2 static inline float hsum(F v) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        return _mm_cvtss_f32(s);
    }
    LFM2_TARGET_AVX2 static inline void hsum4(F a, F b, F c, F d, float* out) {
        out[0] = hsum(a);
        out[1] = hsum(b);
        out[2] = hsum(c);
        out[3] = hsum(d);
    }
    LFM2_TARGET_AVX2 static inline float hmax(F v) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 0x55));
        return _mm_cvtss_f32(s);
    }
    LFM2_TARGET_AVX2 static inline F exp(F x) {
        using namespace expc;
        F xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
        F n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(log2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        F r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ln2_hi), xc);
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ln2_lo), r);
        F y = _mm256_set1_ps(p0);
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p1));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p2));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p3));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p4));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p5));
        y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_LT_OQ));
        return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
    }
    LFM2_TARGET_AVX2 static inline uint32_t eq_mask(F a, F b) {
        return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)));
    }
    LFM2_TARGET_AVX2 static inline uint32_t nan_mask(F a) {
        return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)));
    }
};

// ----------------------------------------------------------------------------- AVX-512

struct Avx512 {
    using F = __m512;
    static constexpr int W = 16;
    static constexpr const char* name = "avx512";

    static inline __mmask16 tail_mask(int n) { return __mmask16((1u << n) - 1u); }
    LFM2_TARGET_AVX512 static inline void prefetch(const void* p) {
        _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
    }
    LFM2_TARGET_AVX512 static inline F zero() { return _mm512_setzero_ps(); }
    LFM2_TARGET_AVX512 static inline F set1(float v) { return _mm512_set1_ps(v); }
    LFM2_TARGET_AVX512 static inline F load(const float* p) { return _mm512_loadu_ps(p); }
    LFM2_TARGET_AVX512 static inline F load_partial(const float* p, int n) {
        return _mm512_maskz_loadu_ps(tail_mask(n), p);
    }
    LFM2_TARGET_AVX512 static inline F load_w(const float* p) { return _mm512_loadu_ps(p); }
    LFM2_TARGET_AVX512 static inline F load_w(const bf16_t* p) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    LFM2_TARGET_AVX512 static inline F load_w(const f16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    LFM2_TARGET_AVX512 static inline F load_w_partial(const float* p, int n) { return load_partial(p, n); }
    LFM2_TARGET_AVX512 static inline F load_w_partial(const bf16_t* p, int n) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail_mask(n), p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    LFM2_TARGET_AVX512 static inline F load_w_partial(const f16_t* p, int n) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p));
    }
    LFM2_TARGET_AVX512 static inline void store(float* p, F v) { _mm512_storeu_ps(p, v); }
    LFM2_TARGET_AVX512 static inline void store_partial(float* p, F v, int n) {
        _mm512_mask_storeu_ps(p, tail_mask(n), v);
    }
    LFM2_TARGET_AVX512 static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
    LFM2_TARGET_AVX512 static inline F sub(F a, F b) { return _mm512_sub_ps(a, b); }
    LFM2_TARGET_AVX512 static inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    LFM2_TARGET_AVX512 static inline F div(F a, F b) { return _mm512_div_ps(a, b); }
    LFM2_TARGET_AVX512 static inline F max(F a, F b) { return _mm512_max_ps(a, b); }
    LFM2_TARGET_AVX512 static inline F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    // Fixed tree: (lo256 + hi256), (lo128 + hi128), lanes (0+2, 1+3), then (0 + 1).
    LFM2_TARGET_AVX512 static inline float hsum(F v) {
        __m256 lo = _mm512_castps512_ps256(v);
        __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        return Avx2::hsum(_mm256_add_ps(lo, hi));
    }
    // Four hsums at once, each with hsum's exact tree: r = (b0 + b2) + (b1 + b3) where
    // b_i = a_i + a_{i+4}, a_i = v_i + v_{i+8} (additions pair the same lanes; + is commutative).
    LFM2_TARGET_AVX512 static inline void hsum4(F v0, F v1, F v2, F v3, float* out) {
        F t01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));  // a of v0 | v1
        F t23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
        F u = _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, 0x88), _mm512_shuffle_f32x4(t01, t23, 0xDD));  // b per block
        F w = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));  // [b0+b2, b1+b3, ..] per block
        F r = _mm512_add_ps(w, _mm512_permute_ps(w, 0xB1));  // lane 0 of block j: result j
        __m512 g = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), r);
        _mm_storeu_ps(out, _mm512_castps512_ps128(g));
    }
    LFM2_TARGET_AVX512 static inline float hmax(F v) {
        __m256 lo = _mm512_castps512_ps256(v);
        __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        return Avx2::hmax(_mm256_max_ps(lo, hi));
    }
    LFM2_TARGET_AVX512 static inline F exp(F x) {
        using namespace expc;
        F xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
        F n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(log2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        F r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ln2_hi), xc);
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ln2_lo), r);
        F y = _mm512_set1_ps(p0);
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p1));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p2));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p3));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p4));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p5));
        y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
        __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
        y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
        y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_LT_OQ), y, _mm512_setzero_ps());
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
    }
    LFM2_TARGET_AVX512 static inline uint32_t eq_mask(F a, F b) {
        return uint32_t(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ));
    }
    LFM2_TARGET_AVX512 static inline uint32_t nan_mask(F a) { return uint32_t(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q)); }
};

}  // namespace lfm2::simd
