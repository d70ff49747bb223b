// The quant-dot mode's GEMM (definition and layout: gemm_qdot.h). Steps per call:
// 1. the activations are quantized once (parallel over rows) into the transposed group layout,
//    with per (row, group) metadata: d_x, and the per-block sums the codes' offsets need;
// 2. a parallel loop over (row chunk, weight-row block) items; in an item, each NR weight rows
//    are regrouped (one byte per weight, 8 × 64 bytes per group of 512, and the
//    fp32 scales of the epilogue) into an L1 buffer, then every MR-row tile of the chunk runs
//    over them: 8 integer dot steps per group, then the fp32 epilogue per (row, weight row).
// Decode (M = 1) is then a stream over the weights with the regrouping in L1; prefill reuses
// each regrouped row for a whole chunk of up to kChunk rows. The work split never changes a bit.
#include "gemm_qdot.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/quant.h"
#include "core/threading.h"
#include "gemm_qdot_isa.h"
#include "kernels.h"

namespace lfm2::cpu {
namespace qdot {
namespace {

constexpr int kGroup = 512;    // weights per group: 16 spans of 32
constexpr int kMeta = 48;      // int32 words of activation metadata per (row, group): d_x, c1, c2
constexpr int kEpi = 32;       // fp32 epilogue scales per (weight row, group)
constexpr float kTinyAmax = 0x1p-120f;

// ----------------------------------------------------------------------------- activations

// One block of 32: q (natural order), returns d_x; s_lo / s_hi = Σ q over each half.
float quant_block_scalar(const float* x, int8_t* q, int32_t& s_lo, int32_t& s_hi) {
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < 32; ++i) {
        const float a = std::fabs(x[i]);
        if (!(a < INFINITY)) finite = false;
        else if (a > amax) amax = a;
    }
    s_lo = s_hi = 0;
    if (!finite || amax < kTinyAmax) {
        std::memset(q, 0, 32);
        return finite ? 0.0f : NAN;
    }
    const float inv = 127.0f / amax;
    for (int i = 0; i < 32; ++i) {
        q[i] = int8_t(std::nearbyint(x[i] * inv));
        (i < 16 ? s_lo : s_hi) += q[i];
    }
    return amax / 127.0f;
}

LFM2_TARGET_AVX512 float quant_block_z(const float* x, int8_t* q, int32_t& s_lo, int32_t& s_hi) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1), inf = _mm512_set1_ps(INFINITY);
    const __mmask16 bad = _mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ);
    const float amax = bad ? 0.0f : _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    s_lo = s_hi = 0;
    if (bad || amax < kTinyAmax) {
        std::memset(q, 0, 32);
        return bad ? NAN : 0.0f;
    }
    const __m512 inv = _mm512_set1_ps(127.0f / amax);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, inv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, inv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(q1));
    s_lo = _mm512_reduce_add_epi32(q0);
    s_hi = _mm512_reduce_add_epi32(q1);
    return amax / 127.0f;
}

LFM2_TARGET_AVX2 inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

LFM2_TARGET_AVX2 float quant_block_y(const float* x, int8_t* q, int32_t& s_lo, int32_t& s_hi) {
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
    __m256 v[4], a[4];
    int bad = 0;
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        a[i] = _mm256_andnot_ps(sign, v[i]);
        bad |= _mm256_movemask_ps(_mm256_cmp_ps(a[i], inf, _CMP_NLT_UQ));
    }
    const float amax = bad ? 0.0f : simd::Avx2::hmax(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])));
    s_lo = s_hi = 0;
    if (bad || amax < kTinyAmax) {
        std::memset(q, 0, 32);
        return bad ? NAN : 0.0f;
    }
    const __m256 inv = _mm256_set1_ps(127.0f / amax);
    __m256i qi[4];
    for (int i = 0; i < 4; ++i) qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    s_lo = hsum_epi32(_mm256_add_epi32(qi[0], qi[1]));
    s_hi = hsum_epi32(_mm256_add_epi32(qi[2], qi[3]));
    return amax / 127.0f;
}

using QuantBlock = float (*)(const float*, int8_t*, int32_t&, int32_t&);

QuantBlock quant_block_for(Isa isa) {
    if (isa == Isa::Avx512) return quant_block_z;
    if (isa == Isa::Avx2) return quant_block_y;
    return quant_block_scalar;
}

// Activation rows quantized into the group layout: row m's codes at q + m·G·512 (group g, vector
// s, lane l, byte t = element 32(16g + l) + 4s + t), its metadata at meta + m·G·48: per group
// d_x[16] (fp32 bits), c1[16], c2[16]: the integer sums' starting values (minus the codes' offset
// times Σ q: q8_0 stored + 128 (avx512), q4_0 − 8, q6_k − 32 per half) or, for q4_k, float(Σ q).
struct XQ {
    const int8_t* q;
    const int32_t* meta;
};

void quantize_rows(Isa isa, DType wdt, bool signed_q8, const float* x, int64_t ldx, int64_t M, int64_t K,
                   int64_t G, int8_t* q, int32_t* meta) {
    const QuantBlock qb = quant_block_for(isa);
    const int64_t nb = K / 32;
    parallel_ranges(M, K, [&](int64_t m0, int64_t m1) {
        int8_t blk[32];
        for (int64_t m = m0; m < m1; ++m)
            for (int64_t g = 0; g < G; ++g) {
                int8_t* qg = q + (m * G + g) * kGroup;
                int32_t* mg = meta + (m * G + g) * kMeta;
                for (int l = 0; l < 16; ++l) {
                    const int64_t b = 16 * g + l;
                    int32_t s_lo = 0, s_hi = 0;
                    float d = 0.0f;
                    if (b < nb) d = qb(x + m * ldx + 32 * b, blk, s_lo, s_hi);
                    else std::memset(blk, 0, 32);
                    for (int s = 0; s < 8; ++s) std::memcpy(qg + 64 * s + 4 * l, blk + 4 * s, 4);
                    std::memcpy(&mg[l], &d, 4);
                    const int32_t sum = s_lo + s_hi;
                    switch (wdt) {
                        case DType::Q8_0:
                            mg[16 + l] = signed_q8 ? 0 : -128 * sum;
                            mg[32 + l] = 0;
                            break;
                        case DType::Q4_0:
                            mg[16 + l] = -8 * sum;
                            mg[32 + l] = 0;
                            break;
                        case DType::Q4_K: {
                            const float f = float(sum);
                            std::memcpy(&mg[16 + l], &f, 4);
                            mg[32 + l] = 0;
                            break;
                        }
                        default:  // Q6_K
                            mg[16 + l] = -32 * s_lo;
                            mg[32 + l] = -32 * s_hi;
                            break;
                    }
                }
            }
    });
}

// ----------------------------------------------------------------------------- weight groups

constexpr int32_t kIdxQ8[16] = {0, 34, 68, 102, 136, 170, 204, 238, 272, 306, 340, 374, 408, 442, 476, 510};
constexpr int32_t kIdxQ4[16] = {0, 18, 36, 54, 72, 90, 108, 126, 144, 162, 180, 198, 216, 234, 252, 270};
// q4_k lane l: superblock l / 8, sub-block j = l % 8 in qs chunk j / 2 (at byte 16), nibble j % 2.
// (Offsets of 16-byte rows: + 0 for a span's bytes 0-15, + 16 for 16-31.)
constexpr int32_t kIdxK4[16] = {16, 16, 48, 48, 80, 80, 112, 112, 160, 160, 192, 192, 224, 224, 256, 256};
constexpr int32_t kShK4[16] = {0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4};
// q6_k lane l: superblock l / 8, span p = l % 8: half h = p / 4, g = p % 4 (core/quant.h q6_code):
// ql bytes at 64h + 32(g & 1), nibble g / 2; qh bytes at 128 + 32h, bits 2g.
constexpr int32_t kIdxQl[16] = {0, 32, 0, 32, 64, 96, 64, 96, 210, 242, 210, 242, 274, 306, 274, 306};
constexpr int32_t kShQl[16] = {0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4};
constexpr int32_t kIdxQh[16] = {128, 128, 128, 128, 160, 160, 160, 160, 338, 338, 338, 338, 370, 370, 370, 370};
constexpr int32_t kShQh[16] = {0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6};

// q4_k: the 8 six-bit scales and mins of a superblock from its 12 packed bytes (core/quant.h
// k4_scale_min, four at a time): bytes 0-3 = sc[0..3] (low 6 bits) and the top bits of sc[4..7],
// 4-7 likewise for m, 8-11 the low nibbles of sc[4..7] (low) and m[4..7] (high).
// sc / m: byte j = sc_j / m_j (little-endian).
inline void k4_unpack(const uint8_t* s12, uint64_t& sc, uint64_t& m) {
    uint32_t w[3];
    std::memcpy(w, s12, 12);
    const uint32_t sc0 = w[0] & 0x3F3F3F3Fu, m0 = w[1] & 0x3F3F3F3Fu;
    const uint32_t sc1 = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
    const uint32_t m1 = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
    sc = uint64_t(sc0) | (uint64_t(sc1) << 32);
    m = uint64_t(m0) | (uint64_t(m1) << 32);
}

template <class V>
struct Tile {
    static constexpr int MR = 2, NR = 2;
};
// QZ: 2 × 8 (16 int32 + 16 fp32 accumulators; 2 × 4, 3 × 4 and 2 × 8 measured within 5% of
// each other at T = 512, 4 × 4 and 4 × 3 40% slower: they spill).
template <>
struct Tile<QZ> {
    static constexpr int MR = 2, NR = 8;
};

constexpr int kMaxNR = 8;     // room for NR regrouped weight rows (every Tile's NR <= it)
constexpr int64_t kKGroups = 4;  // groups of a K block of regrouped rows

struct Job {
    XQ x;
    int64_t G, spans;       // groups per row, 32-weight spans per row (K / 32)
    const uint8_t* w;
    int64_t row_bytes;      // bytes between weight rows
    float* out;
    int64_t ldo;
};

#define LFM2_QDOT_FN LFM2_TARGET_QZ inline __attribute__((always_inline))
namespace z {
#include "gemm_qdot_kern.h"
}  // namespace z
#undef LFM2_QDOT_FN
#define LFM2_QDOT_FN LFM2_TARGET_AVX2 inline __attribute__((always_inline))
namespace y {
#include "gemm_qdot_kern.h"
}  // namespace y
#undef LFM2_QDOT_FN
#define LFM2_QDOT_FN inline
namespace s {
#include "gemm_qdot_kern.h"
}  // namespace s
#undef LFM2_QDOT_FN

template <DType T>
LFM2_TARGET_QZ void item_z(const Job& jb, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint8_t* wc, float* we,
                           float* spill) {
    z::item<QZ, T>(jb, m0, m1, n0, n1, wc, we, spill);
}
template <DType T>
LFM2_TARGET_AVX2 void item_y(const Job& jb, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint8_t* wc, float* we,
                             float* spill) {
    y::item<QY, T>(jb, m0, m1, n0, n1, wc, we, spill);
}
template <DType T>
void item_s(const Job& jb, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint8_t* wc, float* we, float* spill) {
    s::item<QS, T>(jb, m0, m1, n0, n1, wc, we, spill);
}

using ItemFn = void (*)(const Job&, int64_t, int64_t, int64_t, int64_t, uint8_t*, float*, float*);

template <DType T>
ItemFn item_for(Isa isa) {
    if (isa == Isa::Avx512) return item_z<T>;
    if (isa == Isa::Avx2) return item_y<T>;
    return item_s<T>;
}

ItemFn item_for(Isa isa, DType t) {
    switch (t) {
        case DType::Q8_0: return item_for<DType::Q8_0>(isa);
        case DType::Q4_0: return item_for<DType::Q4_0>(isa);
        case DType::Q4_K: return item_for<DType::Q4_K>(isa);
        default: return item_for<DType::Q6_K>(isa);
    }
}

// Rows per chunk: the chunk's activations (~K + K / 512 · 192 bytes a row) stay in L2 while each
// regrouped weight row is reused by all of them.
constexpr int64_t kChunk = 128;
constexpr int64_t kRowsPerItem = 64;  // weight rows per item (a multiple of every NR)

}  // namespace
}  // namespace qdot

void gemm_qdot(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
               int64_t M, int64_t N, int64_t K) {
    using namespace qdot;
    if (M <= 0 || N <= 0) return;
    // The avx512 kernels need VNNI; without it the avx2 kernels (the same bits) run.
    if (isa == Isa::Avx512 && !avx512_vnni_available()) isa = Isa::Avx2;
    const int64_t G = (K + kGroup - 1) / kGroup;
    thread_local std::vector<int8_t> q_buf;
    thread_local std::vector<int32_t> meta_buf;
    int8_t* q = scratch(q_buf, std::max<int64_t>(1, M * G * kGroup));
    int32_t* meta = scratch(meta_buf, std::max<int64_t>(1, M * G * kMeta));
    const bool signed_q8 = isa != Isa::Avx512;  // QY and QS multiply signed q8_0 codes
    quantize_rows(isa, wdt, signed_q8, x, ldx, M, K, G, q, meta);

    const Job jb{{q, meta}, G, K / 32, static_cast<const uint8_t*>(w), dtype_bytes(wdt, ldw), out, ldo};
    const ItemFn fn = item_for(isa, wdt);
    const int64_t rc = std::min(M, kChunk), m_chunks = (M + rc - 1) / rc;
    // Enough items for every thread (4 each) when there are few row chunks (decode).
    const int64_t want = (4 * int64_t(num_threads()) + m_chunks - 1) / m_chunks;
    const int64_t nb = std::clamp<int64_t>((N + want - 1) / want / 16 * 16, 16, kRowsPerItem);
    const int64_t n_blocks = (N + nb - 1) / nb;
    parallel_for(
        m_chunks * n_blocks,
        [&](int64_t it) {
            thread_local std::vector<uint8_t> wc_buf;
            thread_local std::vector<float> we_buf, spill_buf;
            uint8_t* wc = scratch(wc_buf, kMaxNR * kKGroups * kGroup);
            float* we = scratch(we_buf, kMaxNR * kKGroups * kEpi);
            float* spill = scratch(spill_buf, rc * kMaxNR * 16);
            const int64_t m0 = it / n_blocks * rc, n0 = it % n_blocks * nb;
            fn(jb, m0, std::min(M, m0 + rc), n0, std::min(N, n0 + nb), wc, we, spill);
        },
        M * N * std::max<int64_t>(K, 1), min_parallel_gemm());
    trim_scratch(q_buf);
    trim_scratch(meta_buf);
}

void quantize_activations(Isa isa, const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* q, float* d) {
    const qdot::QuantBlock qb = qdot::quant_block_for(isa);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < K / 32; ++b) {
            int32_t s_lo, s_hi;
            d[m * (K / 32) + b] = qb(x + m * ldx + 32 * b, q + m * K + 32 * b, s_lo, s_hi);
        }
}

}  // namespace lfm2::cpu
