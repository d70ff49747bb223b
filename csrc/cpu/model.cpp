// The fused single-rank layer loop (see model.h). Must stay bit-identical to
// python/lfm2engine/engine.py::Engine.layer_loop on its non-tree, local-MoE path: the same ops
// (ops.h) on the same values in the same order, the residual adds as plain fp32 adds (numpy's
// `x += y`). tests/test_model_fused.py compares the two paths bit for bit.
// Scratch buffers persist across calls (they only grow), so a decode step allocates nothing.
#include "model.h"

#include <algorithm>
#include <cstring>

#include "core/threading.h"
#include "dispatch.h"
#include "kernels.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class Vec>
auto* grow(Vec& v, int64_t n) {
    if (int64_t(v.size()) < n) v.resize(size_t(n));
    return v.data();
}

TensorView f32_view(float* p, std::initializer_list<int64_t> shape) {
    return make_view<TensorView>(p, DType::F32, shape);
}

// qkv[T, nqkv] = h · [wqkv | wv]ᵀ: one GEMM, or, where v is stored in another type (wv), q | k and
// v by two GEMMs writing their columns of the one buffer (as Engine.qkv_heads: gemm's values do not
// depend on the output width, so both give the bits of the fused GEMM on the same weights).
void qkv_gemm(float* qkv, int64_t T, int64_t nqkv, const TensorView& hv, const LayerWeightsView& lw) {
    if (!lw.wv.data) {
        gemm(f32_view(qkv, {T, nqkv}), hv, lw.wqkv);
        return;
    }
    const int64_t nv = lw.wv.size(0), nqk = nqkv - nv, D = hv.size(1);
    check_gemm(f32_view(qkv, {T, nqk}), hv, lw.wqkv);  // the contract of each part (dtypes, shapes)
    check_gemm(f32_view(qkv, {T, nv}), hv, lw.wv);
    const Isa isa = active_isa();
    gemm_raw(isa, hv.ptr<float>(), D, lw.wqkv.data, lw.wqkv.dtype, D, qkv, nqkv, T, nqk, D);
    gemm_raw(isa, hv.ptr<float>(), D, lw.wv.data, lw.wv.dtype, D, qkv + nqk, nqkv, T, nv, D);
}

// x[i] += y[i]: one fp32 add per element, exactly numpy's in-place add.
void add_inplace(float* x, const float* y, int64_t n) {
    parallel_ranges(n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) x[i] = x[i] + y[i];
    });
}

}  // namespace

Model::Model(ModelWeightsView w) : w_(std::move(w)) {}

void Model::set_profiling(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    if (on && !profiling_) {
        prof_.fill(0.0);
        prof_calls_ = 0;
    }
    profiling_ = on;
}

void Model::forward(TensorView logits, ConstTensorView ids, ConstTensorView seq, ConstTensorView pos,
                    const ModelStateView& st, ConstTensorView out_rows) {
    const char* op = "Model.forward";
    std::lock_guard<std::mutex> lock(mu_);
    const ModelWeightsView& w = w_;
    expect_dtype(op, "ids", ids, {DType::I32});
    expect_shape(op, "ids", ids, {-1}, "[T]");
    expect_contiguous(op, "ids", ids);
    const int64_t T = ids.size(0), D = w.D, H = w.H, Hkv = w.Hkv, Dh = w.Dh;
    const int64_t nl = int64_t(w.layers.size());
    LFM2_CHECK(int64_t(st.k_cache.size()) == nl && int64_t(st.v_cache.size()) == nl &&
                   int64_t(st.conv_state.size()) == nl && int64_t(st.u_hist.size()) == nl,
               op, "state lists must have one entry per layer (", nl, ")");
    expect_dtype(op, "out_rows", out_rows, {DType::I32});
    expect_shape(op, "out_rows", out_rows, {-1}, "[R]");
    expect_contiguous(op, "out_rows", out_rows);
    const int64_t R = out_rows.size(0);
    const int32_t* rows = out_rows.ptr<int32_t>();
    for (int64_t r = 0; r < R; ++r)
        LFM2_CHECK_INDEX(rows[r] >= 0 && rows[r] < T, op, "out_rows[", r, "] = ", rows[r], " is outside [0, ", T, ")");
    expect_dtype(op, "logits", logits, {DType::F32});
    expect_shape(op, "logits", logits, {R, w.V}, "[R, V]");
    expect_contiguous(op, "logits", logits);

    float* x = grow(x_, T * D);
    float* h = grow(h_, T * D);
    float* y = grow(y_, T * D);
    const TensorView xv = f32_view(x, {T, D}), hv = f32_view(h, {T, D}), yv = f32_view(y, {T, D});
    if (profiling_) ++prof_calls_;
    {
        auto t_ = stage(kEmbed);
        embedding(xv, w.embed, ids);
    }
    for (int64_t i = 0; i < nl; ++i) {
        const LayerWeightsView& lw = w.layers[size_t(i)];
        {
            auto t_ = stage(kNorm);
            rmsnorm(hv, xv, lw.op_norm, w.eps);
        }
        if (lw.attention) {
            const int64_t nq = H * Dh, nkv = Hkv * Dh, nqkv = nq + 2 * nkv;
            float* qkv = grow(a_, T * nqkv);
            {
                auto t_ = stage(kAttnQkv);
                qkv_gemm(qkv, T, nqkv, hv, lw);
            }
            float* q = grow(q_, T * nq);
            float* k = grow(k_, T * nkv);
            float* v = grow(v_, T * nkv);
            float* o = grow(b_, T * nq);
            {
                auto t_ = stage(kAttnCore);
                const TensorView qv = f32_view(q, {T, H, Dh}), kv = f32_view(k, {T, Hkv, Dh}),
                                 vv = f32_view(v, {T, Hkv, Dh});
                qkv_split(qv, kv, vv, f32_view(qkv, {T, nqkv}));
                rmsnorm(f32_view(q, {T * H, Dh}), f32_view(q, {T * H, Dh}), lw.q_norm, w.eps);
                rmsnorm(f32_view(k, {T * Hkv, Dh}), f32_view(k, {T * Hkv, Dh}), lw.k_norm, w.eps);
                rope(qv, pos, w.rope_theta);
                rope(kv, pos, w.rope_theta);
                kv_write(st.k_cache[size_t(i)], st.v_cache[size_t(i)], kv, vv, seq, pos);
                attention(f32_view(o, {T, H, Dh}), qv, st.k_cache[size_t(i)], st.v_cache[size_t(i)], seq, pos,
                          nullptr);
            }
            auto t_ = stage(kAttnOut);
            gemm(yv, f32_view(o, {T, nq}), lw.wo);
        } else {
            float* bcx = grow(a_, T * 3 * D);
            {
                auto t_ = stage(kConvIn);
                gemm(f32_view(bcx, {T, 3 * D}), hv, lw.in_proj);
            }
            float* z = grow(b_, T * D);
            const TensorView& u = st.u_hist[size_t(i)];
            {
                auto t_ = stage(kConv);
                shortconv(f32_view(z, {T, D}), f32_view(bcx, {T, 3 * D}), lw.conv_w, st.conv_state[size_t(i)], seq,
                          u.data ? &u : nullptr);
            }
            auto t_ = stage(kConvOut);
            gemm(yv, f32_view(z, {T, D}), lw.out_proj);
        }
        {
            auto t_ = stage(kResidual);
            add_inplace(x, y, T * D);
        }
        {
            auto t_ = stage(kNorm);
            rmsnorm(hv, xv, lw.ffn_norm, w.eps);
        }
        if (lw.moe) {
            const int64_t E = lw.gate.size(0), K = w.K;
            float* rl = grow(c_, T * E + T * K);
            int32_t* eid = grow(ids_, T * K);
            float* ew = rl + T * E;
            const TensorView idv = make_view<TensorView>(eid, DType::I32, {T, K});
            const TensorView wv = f32_view(ew, {T, K});
            {
                auto t_ = stage(kRouter);
                gemm(f32_view(rl, {T, E}), hv, lw.gate);
                moe_route(idv, wv, f32_view(rl, {T, E}), lw.has_expert_bias ? &lw.expert_bias : nullptr, w.norm_topk,
                          w.routed_scale);
            }
            auto t_ = stage(kExperts);
            moe_experts(yv, hv, idv, wv, lw.ew13, lw.ew2);
        } else {
            auto t_ = stage(kDenseFfn);
            const int64_t F = lw.w2.size(1);
            float* gu = grow(a_, T * 2 * F);
            gemm(f32_view(gu, {T, 2 * F}), hv, lw.w13);
            float* act = grow(b_, T * F);
            swiglu(f32_view(act, {T, F}), f32_view(gu, {T, 2 * F}));
            gemm(yv, f32_view(act, {T, F}), lw.w2);
        }
        auto t_ = stage(kResidual);
        add_inplace(x, y, T * D);
    }
    auto t_ = stage(kHead);
    float* xl = grow(h_, R * D);  // h is free now; R <= T
    for (int64_t r = 0; r < R; ++r) std::memcpy(xl + r * D, x + int64_t(rows[r]) * D, sizeof(float) * size_t(D));
    const TensorView xlv = f32_view(xl, {R, D});
    rmsnorm(xlv, xlv, w.final_norm, w.eps);
    gemm(logits, xlv, w.head);
}

}  // namespace lfm2::cpu
