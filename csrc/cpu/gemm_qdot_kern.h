// The quant-dot kernels written once over a 16-lane vocabulary V (gemm_qdot_isa.h): weight
// group regrouping, the MR × NR tile, the work item. No include guard: gemm_qdot.cpp includes it
// once per ISA, in its own namespace, with LFM2_QDOT_FN carrying that ISA's target attribute, so
// that every intrinsic inlines into a function compiled for it. Internal to csrc/cpu.

// Group g of a weight row (its first n < 16 spans valid, the rest 0): codes[8 × 64] (vector s, lane
// l = bytes 4s .. 4s + 3 of span l's codes: q8_0 signed, or + 128 unless V::kSignedQ8; 4-bit and
// 6-bit codes unsigned) and epi[32] (the epilogue's scales, see epilogue()).
template <class V, DType T>
LFM2_QDOT_FN void load_group(const uint8_t* row, int64_t g, int n, uint8_t* codes, float* epi) {
    using I = typename V::I;
    if constexpr (T == DType::Q8_0 || T == DType::Q4_0) {
        constexpr int bytes = T == DType::Q8_0 ? 34 : 18;
        const uint8_t* base = row + g * 16 * bytes;
        const I idx = V::load(T == DType::Q8_0 ? kIdxQ8 : kIdxQ4);
        if constexpr (T == DType::Q8_0) {
            for (int s = 0; s < 8; ++s) {
                I c = V::gather(base + 2 + 4 * s, idx, n);
                if constexpr (!V::kSignedQ8) c = V::xor_(c, V::set1(int(0x80808080u)));
                V::store(codes + 64 * s, c);
            }
        } else {
            const I lo = V::set1(0x0F0F0F0F);
            for (int s = 0; s < 4; ++s) {
                const I c = V::gather(base + 2 + 4 * s, idx, n);
                V::store(codes + 64 * s, V::and_(c, lo));
                V::store(codes + 64 * (s + 4), V::and_(V::template srli<4>(c), lo));
            }
        }
        V::storef(epi, V::halfs(V::gather(base, idx, n)));
        V::storef(epi + 16, V::zerof());
    } else if constexpr (T == DType::Q4_K) {
        const uint8_t* base = row + g * 2 * 144;
        const I idx = V::load(kIdxK4), sh = V::load(kShK4), lo = V::set1(0x0F0F0F0F);
        for (int s = 0; s < 8; ++s) V::store(codes + 64 * s, V::and_(V::srlv(V::gather(base + 4 * s, idx, n), sh), lo));
        epi_q4_k(base, n, epi);
    } else {  // Q6_K
        const uint8_t* base = row + g * 2 * 210;
        const I iql = V::load(kIdxQl), sql = V::load(kShQl), iqh = V::load(kIdxQh), sqh = V::load(kShQh);
        const I lo4 = V::set1(0x0F0F0F0F), lo2 = V::set1(0x03030303);
        for (int s = 0; s < 8; ++s) {
            const I l4 = V::and_(V::srlv(V::gather(base + 4 * s, iql, n), sql), lo4);
            const I h2 = V::and_(V::srlv(V::gather(base + 4 * s, iqh, n), sqh), lo2);
            V::store(codes + 64 * s, V::or_(l4, V::template slli<4>(h2)));
        }
        epi_q6_k(base, n, epi);
    }
}

// ----------------------------------------------------------------------------- tiles

// v for the 16 spans of one group (gemm_qdot.h step 2): a0 (a1: q6_k's second halves) the
// integer dot sums, xm the activation metadata, we the weight row's scales.
template <class V, DType T>
LFM2_QDOT_FN typename V::F epilogue(typename V::I a0, typename V::I a1, const int32_t* xm, const float* we) {
    const typename V::F dx = V::loadf(xm);
    if constexpr (T == DType::Q8_0 || T == DType::Q4_0) {
        return V::mul(V::mul(dx, V::loadf(we)), V::cvt(V::sub(a0, V::load(xm + 16))));
    } else if constexpr (T == DType::Q4_K) {
        return V::mul(dx, V::sub(V::mul(V::loadf(we), V::cvt(a0)), V::mul(V::loadf(we + 16), V::loadf(xm + 16))));
    } else {
        const typename V::F lo = V::mul(V::loadf(we), V::cvt(V::sub(a0, V::load(xm + 16))));
        const typename V::F hi = V::mul(V::loadf(we + 16), V::cvt(V::sub(a1, V::load(xm + 32))));
        return V::mul(dx, V::add(lo, hi));
    }
}

// out[i, j] (i < MR, j < NR) over G groups: x rows from xq (stride ldq bytes) / xm (ldm words),
// regrouped weight rows from wc (stride G · 512) / we (G · 32).
template <class V, DType T, int MR, int NR>
LFM2_QDOT_FN void tile(const int8_t* xq, const int32_t* xm, int64_t ldq, int64_t ldm, const uint8_t* wc,
                      const float* we, int64_t G, float* out, int64_t ldo) {
    using I = typename V::I;
    using F = typename V::F;
    constexpr bool kQ6 = T == DType::Q6_K, kSigned = T == DType::Q8_0 && V::kSignedQ8;
    F acc[MR][NR];
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) acc[i][j] = V::zerof();
    for (int64_t g = 0; g < G; ++g) {
        I a0[MR][NR], a1[MR][NR];
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j) a0[i][j] = a1[i][j] = V::zero();
#pragma GCC unroll 8
        for (int s = 0; s < 8; ++s) {
            I xv[MR];
            for (int i = 0; i < MR; ++i) xv[i] = V::load(xq + i * ldq + g * kGroup + 64 * s);
            for (int j = 0; j < NR; ++j) {
                const I wv = V::load(wc + j * G * kGroup + g * kGroup + 64 * s);
                for (int i = 0; i < MR; ++i) {
                    I& a = (kQ6 && s >= 4) ? a1[i][j] : a0[i][j];
                    a = kSigned ? V::dot_signed(a, wv, xv[i]) : V::dot(a, wv, xv[i]);
                }
            }
        }
        for (int i = 0; i < MR; ++i)
            for (int j = 0; j < NR; ++j)
                acc[i][j] = V::add(acc[i][j], epilogue<V, T>(a0[i][j], a1[i][j], xm + i * ldm + g * kMeta,
                                                             we + (j * G + g) * kEpi));
    }
    for (int i = 0; i < MR; ++i)
        for (int j = 0; j < NR; ++j) out[i * ldo + j] = V::hsum(acc[i][j]);
}

template <class V, DType T, int MR, int NR>
LFM2_QDOT_FN void tile_at(const Job& jb, int64_t m, int64_t n, const uint8_t* wc, const float* we) {
    const int64_t ldq = jb.G * kGroup, ldm = jb.G * kMeta;
    tile<V, T, MR, NR>(jb.x.q + m * ldq, jb.x.meta + m * ldm, ldq, ldm, wc, we, jb.G, jb.out + m * jb.ldo + n, jb.ldo);
}

// Rows [m0, m1) against NR regrouped weight rows at (wc, we), outputs at column n.
template <class V, DType T, int NR>
LFM2_QDOT_FN void rows(const Job& jb, int64_t m0, int64_t m1, int64_t n, const uint8_t* wc, const float* we) {
    constexpr int MR = Tile<V>::MR;
    int64_t m = m0;
    for (; m + MR <= m1; m += MR) tile_at<V, T, MR, NR>(jb, m, n, wc, we);
    switch (m1 - m) {
        case 3: if constexpr (MR > 3) tile_at<V, T, 3, NR>(jb, m, n, wc, we); break;
        case 2: if constexpr (MR > 2) tile_at<V, T, 2, NR>(jb, m, n, wc, we); break;
        case 1: tile_at<V, T, 1, NR>(jb, m, n, wc, we); break;
        default: break;
    }
}

// One work item: rows [m0, m1) × weight rows [n0, n1); wc / we: room for NR regrouped rows.
template <class V, DType T>
LFM2_QDOT_FN void item(const Job& jb, int64_t m0, int64_t m1, int64_t n0, int64_t n1, uint8_t* wc, float* we) {
    constexpr int NR = Tile<V>::NR;
    const int64_t G = jb.G;
    for (int64_t n = n0; n < n1; n += NR) {
        const int nr = int(std::min<int64_t>(NR, n1 - n));
        for (int r = 0; r < nr; ++r) {
            const uint8_t* row = jb.w + (n + r) * jb.row_bytes;
            // Stream the row NR·2 ahead into the cache: gathers alone keep too few misses in flight.
            const char* ahead = reinterpret_cast<const char*>(row + 2 * NR * jb.row_bytes);
            for (int64_t off = 0; off < jb.row_bytes; off += 64) __builtin_prefetch(ahead + off);
            for (int64_t g = 0; g < G; ++g)
                load_group<V, T>(row, g, int(std::min<int64_t>(16, jb.spans - 16 * g)),
                                 wc + (r * G + g) * kGroup, we + (r * G + g) * kEpi);
        }
        if (nr == NR) {
            rows<V, T, NR>(jb, m0, m1, n, wc, we);
        } else {
            for (int r = 0; r < nr; ++r) rows<V, T, 1>(jb, m0, m1, n + r, wc + r * G * kGroup, we + r * G * kEpi);
        }
    }
}

