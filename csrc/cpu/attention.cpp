// attention: causal (or explicitly masked) GQA attention of new queries over a paged-by-sequence
// KV cache, and kv_write, which fills that cache. Must match reference.attention (and
// tests/numpy_ops.attention for the mask form) within fp32 rounding.
// One work item = (token t, KV head g): the H/Hkv query heads of group g are processed together
// so each K/V row is read once per group. Keys are visited in ascending cache position, in
// blocks of kBlock visible rows, with a single-pass online softmax in fp32:
//   m' = max(m, max_i s_i);  l' = l·e^(m-m') + Σ_i e^(s_i-m');  acc' = acc·e^(m-m') + Σ_i e^(s_i-m')·v_i
// The block structure depends only on the list of visible positions, so a token's result does
// not depend on the other tokens in the call, and a mask equal to the causal range gives the
// same bits as the causal path. Not here: paging, sliding windows, soft-caps (LFM2 has none).
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

constexpr int kBlock = 16;  // visible keys per online-softmax step

template <class S>
LFM2_KERNEL float dot(const float* a, const float* b, int64_t n) {
    typename S::F acc = S::zero();
    int64_t i = 0;
    for (; i + S::W <= n; i += S::W) acc = S::fmadd(S::load(a + i), S::load(b + i), acc);
    if (i < n) acc = S::fmadd(S::load_partial(a + i, int(n - i)), S::load_partial(b + i, int(n - i)), acc);
    return S::hsum(acc);
}

// Attention of G query heads q[G, Dh] over the visible rows of one KV head (kc, vc: [Smax, Dh]).
// Visible rows: idx[0..n_vis) if idx, else 0..n_vis-1. Writes out[G, Dh].
// work: G·(Dh + 2) floats.
template <class S>
struct AttnGroup {
    static LFM2_KERNEL void run(float* out, const float* q, const float* kc, const float* vc, const int32_t* idx,
                                int64_t n_vis, int64_t G, int64_t Dh, float scale, float* work) {
        using F = typename S::F;
        float* acc = work;         // [G, Dh]
        float* m = work + G * Dh;  // [G] running max
        float* l = m + G;          // [G] running denominator
        const float neg_inf = -std::numeric_limits<float>::infinity();
        for (int64_t h = 0; h < G; ++h) {
            m[h] = neg_inf;
            l[h] = 0.0f;
        }
        std::memset(acc, 0, sizeof(float) * size_t(G * Dh));
        alignas(64) float sc[kBlock];
        const float* krow[kBlock];
        const float* vrow[kBlock];
        for (int64_t b0 = 0; b0 < n_vis; b0 += kBlock) {
            const int nb = int(n_vis - b0 < kBlock ? n_vis - b0 : kBlock);
            for (int i = 0; i < nb; ++i) {
                int64_t s = idx ? int64_t(idx[b0 + i]) : b0 + i;
                krow[i] = kc + s * Dh;
                vrow[i] = vc + s * Dh;
            }
            for (int64_t h = 0; h < G; ++h) {
                const float* qh = q + h * Dh;
                float mb = neg_inf;
                for (int i = 0; i < nb; ++i) {
                    sc[i] = dot<S>(qh, krow[i], Dh) * scale;
                    mb = sc[i] > mb ? sc[i] : mb;
                }
                for (int i = nb; i < kBlock; ++i) sc[i] = neg_inf;  // exp -> 0
                const float m_new = m[h] > mb ? m[h] : mb;
                const float corr = std::exp(m[h] - m_new);  // 0 on the first block (m = -inf)
                for (int c = 0; c < kBlock; c += S::W)
                    S::store(sc + c, S::exp(S::sub(S::load(sc + c), S::set1(m_new))));
                float psum = 0.0f;
                for (int i = 0; i < nb; ++i) psum += sc[i];
                l[h] = l[h] * corr + psum;
                m[h] = m_new;
                float* ah = acc + h * Dh;
                const F cv = S::set1(corr);
                int64_t d = 0;
                for (; d + S::W <= Dh; d += S::W) {
                    F a = S::mul(S::load(ah + d), cv);
                    for (int i = 0; i < nb; ++i) a = S::fmadd(S::set1(sc[i]), S::load(vrow[i] + d), a);
                    S::store(ah + d, a);
                }
                if (d < Dh) {
                    const int n = int(Dh - d);
                    F a = S::mul(S::load_partial(ah + d, n), cv);
                    for (int i = 0; i < nb; ++i) a = S::fmadd(S::set1(sc[i]), S::load_partial(vrow[i] + d, n), a);
                    S::store_partial(ah + d, a, n);
                }
            }
        }
        for (int64_t h = 0; h < G; ++h) {
            float* oh = out + h * Dh;
            const float* ah = acc + h * Dh;
            if (n_vis == 0) {
                std::memset(oh, 0, sizeof(float) * size_t(Dh));
                continue;
            }
            const F lv = S::set1(l[h]);
            int64_t d = 0;
            for (; d + S::W <= Dh; d += S::W) S::store(oh + d, S::div(S::load(ah + d), lv));
            if (d < Dh) S::store_partial(oh + d, S::div(S::load_partial(ah + d, int(Dh - d)), lv), int(Dh - d));
        }
    }
};

}  // namespace

void kv_write(TensorView k_cache, TensorView v_cache, ConstTensorView k, ConstTensorView v, ConstTensorView seq,
              ConstTensorView pos) {
    const KvWriteDims d = check_kv_write(k_cache, v_cache, k, v, seq, pos, Indices::host);
    const CacheDims c = d.c;
    const int64_t T = d.T;
    const int32_t* sp = seq.ptr<int32_t>();
    const int32_t* pp = pos.ptr<int32_t>();
    float* kcp = k_cache.ptr<float>();
    float* vcp = v_cache.ptr<float>();
    const float* kp = k.ptr<float>();
    const float* vp = v.ptr<float>();
    const size_t row = sizeof(float) * size_t(c.Dh);
    parallel_ranges(T, 2 * c.Hkv * c.Dh, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
            for (int64_t g = 0; g < c.Hkv; ++g) {
                int64_t dst = ((int64_t(sp[t]) * c.Hkv + g) * c.Smax + pp[t]) * c.Dh;
                int64_t src = (t * c.Hkv + g) * c.Dh;
                std::memcpy(kcp + dst, kp + src, row);
                std::memcpy(vcp + dst, vp + src, row);
            }
    });
}

void attention(TensorView out, ConstTensorView q, ConstTensorView k_cache, ConstTensorView v_cache, ConstTensorView seq,
               ConstTensorView pos, const ConstTensorView* mask) {
    const AttentionDims d = check_attention(out, q, k_cache, v_cache, seq, pos, mask, Indices::host);
    const CacheDims c = d.c;
    const int64_t T = d.T, H = d.H;
    const uint8_t* mp = mask ? mask->ptr<uint8_t>() : nullptr;
    const int64_t G = d.G, Dh = c.Dh, Smax = c.Smax;
    const float scale = 1.0f / std::sqrt(float(Dh));
    const Isa isa = active_isa();
    const int32_t* sp = seq.ptr<int32_t>();
    const int32_t* pp = pos.ptr<int32_t>();
    const float* qp = q.ptr<float>();
    const float* kcp = k_cache.ptr<float>();
    const float* vcp = v_cache.ptr<float>();
    float* op_ = out.ptr<float>();
    int64_t work = 0;  // multiply-adds: q.k and p.v over the visible rows
    for (int64_t t = 0; t < T; ++t) work += 2 * (mp ? Smax : int64_t(pp[t]) + 1) * H * Dh;
    parallel_for(
        T * c.Hkv,
        [&](int64_t item) {
            const int64_t t = item / c.Hkv, g = item % c.Hkv;
            thread_local std::vector<float> scratch;
            thread_local std::vector<int32_t> vis;
            scratch.resize(size_t(G * (Dh + 2)));
            const int32_t* idx = nullptr;
            int64_t n_vis = int64_t(pp[t]) + 1;
            if (mp) {
                vis.clear();
                const uint8_t* row = mp + t * Smax;
                for (int64_t s = 0; s < Smax; ++s)
                    if (row[s]) vis.push_back(int32_t(s));
                idx = vis.data();
                n_vis = int64_t(vis.size());
            }
            const int64_t cache_off = (int64_t(sp[t]) * c.Hkv + g) * Smax * Dh;
            run_kernel<AttnGroup>(isa, op_ + (t * H + g * G) * Dh, qp + (t * H + g * G) * Dh, kcp + cache_off,
                                  vcp + cache_off, idx, n_vis, G, Dh, scale, scratch.data());
        },
        work);
}

}  // namespace lfm2::cpu
