// The quant-dot kernels written once over a 16-lane vocabulary V (gemm_qdot_isa.h): weight
// group regrouping, the MR × NR tile, the work item. No include guard: gemm_qdot.cpp includes it
// once per ISA, in its own namespace, with LFM2_QDOT_FN carrying that ISA's target attribute, so
// that every intrinsic inlines into a function compiled for it. Internal to csrc/cpu.

// Group g of a weight row (its first n <= 16 spans valid, the rest 0): codes[8 × 64] (vector s, lane
// l = bytes 4s .. 4s + 3 of span l's codes: q8_0 signed, or + 128 unless V::kSignedQ8; 4-bit and
// 6-bit codes unsigned) and epi[32] (the epilogue's scales, see epilogue()). V::rows4 reads
// 16-byte rows at base + off[l] and returns the vectors of their dwords 0..3.
template <class V, DType T>
LFM2_QDOT_FN void load_full_group(const uint8_t* base, uint8_t* codes, float* epi) {
    using I = typename V::I;
    I r[4];
    if constexpr (T == DType::Q8_0 || T == DType::Q4_0) {
        if constexpr (T == DType::Q8_0) {
            for (int h = 0; h < 2; ++h) {
                V::rows4(base + 2 + 16 * h, kIdxQ8, r);
                for (int t = 0; t < 4; ++t) {
                    if constexpr (!V::kSignedQ8) r[t] = V::xor_(r[t], V::set1(int(0x80808080u)));
                    V::store(codes + 64 * (4 * h + t), r[t]);
                }
            }
        } else {
            const I lo = V::set1(0x0F0F0F0F);
            V::rows4(base + 2, kIdxQ4, r);
            for (int t = 0; t < 4; ++t) {
                V::store(codes + 64 * t, V::and_(r[t], lo));
                V::store(codes + 64 * (t + 4), V::and_(V::template srli<4>(r[t]), lo));
            }
        }
        V::storef(epi, V::template block_scales<T == DType::Q8_0 ? 34 : 18>(base));
        V::storef(epi + 16, V::zerof());
    } else if constexpr (T == DType::Q4_K) {
        const I sh = V::load(kShK4), lo = V::set1(0x0F0F0F0F);
        for (int h = 0; h < 2; ++h) {
            V::rows4(base + 16 * h, kIdxK4, r);
            for (int t = 0; t < 4; ++t) V::store(codes + 64 * (4 * h + t), V::and_(V::srlv(r[t], sh), lo));
        }
        const BlockQ4_K* b = reinterpret_cast<const BlockQ4_K*>(base);
        uint64_t sc0, m0, sc1, m1;
        k4_unpack(b[0].scales, sc0, m0);
        k4_unpack(b[1].scales, sc1, m1);
        V::scale_u8(sc0, sc1, V::f16(b[0].d), V::f16(b[1].d), epi);
        V::scale_u8(m0, m1, V::f16(b[0].dmin), V::f16(b[1].dmin), epi + 16);
    } else {  // Q6_K
        const I sql = V::load(kShQl), sqh = V::load(kShQh), lo4 = V::set1(0x0F0F0F0F), lo2 = V::set1(0x03030303);
        I hb[4];
        for (int h = 0; h < 2; ++h) {
            V::rows4(base + 16 * h, kIdxQl, r);
            V::rows4(base + 16 * h, kIdxQh, hb);
            for (int t = 0; t < 4; ++t) {
                const I l4 = V::and_(V::srlv(r[t], sql), lo4);
                const I h2 = V::and_(V::srlv(hb[t], sqh), lo2);
                V::store(codes + 64 * (4 * h + t), V::or_(l4, V::template slli<4>(h2)));
            }
        }
        const BlockQ6_K* b = reinterpret_cast<const BlockQ6_K*>(base);
        V::scale_pairs(b[0].scales, b[1].scales, V::f16(b[0].d), V::f16(b[1].d), epi, epi + 16);
    }
}

template <DType T>
constexpr int64_t group_bytes() {
    return T == DType::Q8_0 ? 16 * 34 : T == DType::Q6_K ? 2 * 210 : 16 * 18;
}

template <class V, DType T>
LFM2_QDOT_FN void load_group(const uint8_t* row, int64_t g, int n, uint8_t* codes, float* epi) {
    constexpr int64_t gbytes = group_bytes<T>();
    const uint8_t* base = row + g * gbytes;
    if (n == 16) return load_full_group<V, T>(base, codes, epi);
    // The last group of a row whose width is not a multiple of 512: its spans, zero-padded.
    alignas(64) uint8_t pad[gbytes];
    std::memset(pad, 0, sizeof(pad));
    std::memcpy(pad, base, size_t(T == DType::Q8_0 ? 34 * n : T == DType::Q4_0 ? 18 * n : gbytes / 2 * (n / 8)));
    load_full_group<V, T>(pad, codes, epi);
}

// ----------------------------------------------------------------------------- tiles

// v for the 16 spans of one group (gemm_qdot.h step 2): a0 (a1: q6_k's second halves) the
// integer sums (already corrected for the codes' offsets), xm the activation metadata, we the weight row's scales.
template <class V, DType T>
LFM2_QDOT_FN typename V::F epilogue(typename V::I a0, typename V::I a1, const int32_t* xm, const float* we) {
    const typename V::F dx = V::loadf(xm);
    if constexpr (T == DType::Q8_0 || T == DType::Q4_0) {
        return V::mul(V::mul(dx, V::loadf(we)), V::cvt(a0));
    } else if constexpr (T == DType::Q4_K) {
        return V::mul(dx, V::sub(V::mul(V::loadf(we), V::cvt(a0)), V::mul(V::loadf(we + 16), V::loadf(xm + 16))));
    } else {
        const typename V::F lo = V::mul(V::loadf(we), V::cvt(a0));
        const typename V::F hi = V::mul(V::loadf(we + 16), V::cvt(a1));
        return V::mul(dx, V::add(lo, hi));
    }
}

// out[i, j] (i < MR, j < NR) over groups [g0, g1): x rows from xq (stride ldq bytes) / xm (ldm
// words), regrouped weight rows from wc (stride (g1 − g0) · 512) / we ((g1 − g0) · 32), whose first
// group is g0. Between K blocks the 16 lane accumulators of each (i, j) wait in spill (row i at
// spill + i · NR · 16): loaded unless `first`, stored unless `last` (where the hsum writes out).
// The same additions in the same order as one block: the bits do not depend on the blocking.
template <class V, DType T, int MR, int NR>
LFM2_QDOT_FN void tile(const int8_t* xq, const int32_t* xm, int64_t ldq, int64_t ldm, const uint8_t* wc,
                       const float* we, int64_t g0, int64_t g1, float* spill, bool first, bool last, float* out,
                       int64_t ldo) {
    using I = typename V::I;
    using F = typename V::F;
    constexpr bool kQ6 = T == DType::Q6_K, kSigned = T == DType::Q8_0 && V::kSignedQ8;
    const int64_t Gb = g1 - g0;
    F acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = first ? V::zerof() : V::loadf(spill + (i * NR + j) * 16);
    for (int64_t g = g0; g < g1; ++g) {
        const uint8_t* wg = wc + (g - g0) * kGroup;
        I a0[MR][NR], a1[MR][NR];
        for (int i = 0; i < MR; ++i) {  // start at the offsets' corrections (zero for q4_k)
            const I c1 = T == DType::Q4_K ? V::zero() : V::load(xm + i * ldm + g * kMeta + 16);
            const I c2 = T == DType::Q6_K ? V::load(xm + i * ldm + g * kMeta + 32) : V::zero();
            for (int j = 0; j < NR; ++j) {
                a0[i][j] = c1;
                a1[i][j] = c2;
            }
        }
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
            I xv[MR];
            for (int i = 0; i < MR; ++i) xv[i] = V::load(xq + i * ldq + g * kGroup + 64 * s);
            for (int j = 0; j < NR; ++j) {
                const I wv = V::load(wg + j * Gb * kGroup + 64 * s);
                for (int i = 0; i < MR; ++i) {
                    I& a = (kQ6 && s >= 4) ? a1[i][j] : a0[i][j];
                    a = kSigned ? V::dot_signed(a, wv, xv[i]) : V::dot(a, wv, xv[i]);
                }
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                acc[i][j] = V::add(acc[i][j], epilogue<V, T>(a0[i][j], a1[i][j], xm + i * ldm + g * kMeta,
                                                             we + (j * Gb + g - g0) * kEpi));
    }
    if (!last) {
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) V::storef(spill + (i * NR + j) * 16, acc[i][j]);
        return;
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) out[i * ldo + j] = V::hsum(acc[i][j]);
}

// One K block [g0, g1) of NR regrouped weight rows (wc, we) against rows [m0, m1), outputs at
// column n; spill: NR · 16 floats per row of the chunk (row m at spill + (m − m0) · NR · 16).
struct KBlock {
    const uint8_t* wc;
    const float* we;
    int64_t g0, g1;
    float* spill;
    bool first, last;
};

template <class V, DType T, int MR, int NR>
LFM2_QDOT_FN void tile_at(const Job& jb, int64_t m, int64_t m0, int64_t n, const KBlock& kb) {
    const int64_t ldq = jb.G * kGroup, ldm = jb.G * kMeta;
    tile<V, T, MR, NR>(jb.x.q + m * ldq, jb.x.meta + m * ldm, ldq, ldm, kb.wc, kb.we, kb.g0, kb.g1,
                       kb.spill + (m - m0) * NR * 16, kb.first, kb.last, jb.out + m * jb.ldo + n, jb.ldo);
}

template <class V, DType T, int NR>
LFM2_QDOT_FN void rows(const Job& jb, int64_t m0, int64_t m1, int64_t n, const KBlock& kb) {
    constexpr int MR = Tile<V>::MR;
    int64_t m = m0;
    for (; m + MR <= m1; m += MR) tile_at<V, T, MR, NR>(jb, m, m0, n, kb);
    switch (m1 - m) {
        case 3: if constexpr (MR > 3) tile_at<V, T, 3, NR>(jb, m, m0, n, kb); break;
        case 2: if constexpr (MR > 2) tile_at<V, T, 2, NR>(jb, m, m0, n, kb); break;
        case 1: tile_at<V, T, 1, NR>(jb, m, m0, n, kb); break;
        default: break;
    }
}

// One work item: rows [m0, m1) × weight rows [n0, n1); wc / we: room for NR rows of kKGroups
// regrouped groups; spill: NR · 16 floats per row of the chunk. Each NR rows are regrouped
// kKGroups groups (2048 weights: 20 KiB at NR = 8, in L1) at a time; LFM2-8B-A1B's widths are
// one such K block.
template <class V, DType T>
LFM2_QDOT_FN void item(const Job& jb, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint8_t* wc, float* we,
                       float* spill) {
    constexpr int NR = Tile<V>::NR;
    const int64_t G = jb.G, gbytes = group_bytes<T>();
    for (int64_t n = n0; n < n1; n += NR) {
        const int nr = int(std::min<int64_t>(NR, n1 - n));
        for (int64_t g0 = 0; g0 < G; g0 += kKGroups) {
            const int64_t g1 = std::min(G, g0 + kKGroups), Gb = g1 - g0;
            for (int r = 0; r < nr; ++r) {
                const uint8_t* row = jb.w + (n + r) * jb.row_bytes;
                // Prefetch the next tile's rows (NR ahead). The LM head streamed from DRAM (q8_0,
                // 2 threads): 44 GB/s; 34 GB/s without, 41 GB/s with 2·NR ahead.
                const char* ahead = reinterpret_cast<const char*>(row + NR * jb.row_bytes);
                const int64_t end = std::min(jb.row_bytes, g1 * gbytes);
                for (int64_t off = g0 * gbytes; off < end; off += 64) __builtin_prefetch(ahead + off);
                for (int64_t g = g0; g < g1; ++g)
                    load_group<V, T>(row, g, int(std::min<int64_t>(16, jb.spans - 16 * g)),
                                     wc + (r * Gb + g - g0) * kGroup, we + (r * Gb + g - g0) * kEpi);
            }
            const bool first = g0 == 0, last = g1 == G;
            if (nr == NR) {
                rows<V, T, NR>(jb, m0, m1, n, KBlock{wc, we, g0, g1, spill, first, last});
            } else {
                for (int r = 0; r < nr; ++r)  // each row its own spill region
                    rows<V, T, 1>(jb, m0, m1, n + r,
                                  KBlock{wc + r * Gb * kGroup, we + r * Gb * kEpi, g0, g1,
                                         spill + r * (m1 - m0) * 16, first, last});
            }
        }
    }
}
