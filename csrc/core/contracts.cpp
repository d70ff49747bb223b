// The argument checks of every op (see contracts.h). Each function checks in the order the
// arguments depend on each other (the sizes a later argument is measured against come first)
// and names the op and the argument in its message; the Python-visible error types and wordings
// are those tests/test_ops_*.py expect.
#include "contracts.h"

#include <vector>

namespace lfm2 {
namespace {

constexpr std::initializer_list<DType> kWeight = {DType::F32, DType::BF16, DType::F16};
// Weights of the matrix products and the embedding table may also be block-quantized.
constexpr std::initializer_list<DType> kWeightQ = {DType::F32,  DType::BF16, DType::F16, DType::Q8_0,
                                                   DType::Q4_0, DType::Q4_K, DType::Q6_K};

// A quantized weight's rows must be whole blocks (views from NumPy always are; internal views are checked).
void expect_whole_blocks(const char* op, const char* name, const ConstTensorView& w) {
    if (!is_quantized(w.dtype) || w.ndim == 0) return;
    const int64_t k = w.shape[w.ndim - 1];
    LFM2_CHECK(k % dtype_block(w.dtype) == 0, op, "argument '", name, "' (", dtype_name(w.dtype), ") has rows of ", k,
               " weights, not a multiple of its block of ", dtype_block(w.dtype));
}

CacheDims check_cache(const char* op, const ConstTensorView& kc, const ConstTensorView& vc) {
    expect_dtype(op, "k_cache", kc, {DType::F32});
    expect_dtype(op, "v_cache", vc, {DType::F32});
    expect_shape(op, "k_cache", kc, {-1, -1, -1, -1}, "[B, Hkv, Smax, Dh]");
    CacheDims c{kc.size(0), kc.size(1), kc.size(2), kc.size(3)};
    expect_shape(op, "v_cache", vc, {c.B, c.Hkv, c.Smax, c.Dh}, "k_cache.shape [B, Hkv, Smax, Dh]");
    expect_contiguous(op, "k_cache", kc);
    expect_contiguous(op, "v_cache", vc);
    return c;
}

void check_slots(const char* op, const ConstTensorView& seq, const ConstTensorView& pos, int64_t T,
                 const CacheDims& c, Indices where) {
    expect_dtype(op, "seq", seq, {DType::I32});
    expect_dtype(op, "pos", pos, {DType::I32});
    expect_shape(op, "seq", seq, {T}, "[T]");
    expect_shape(op, "pos", pos, {T}, "[T]");
    expect_contiguous(op, "seq", seq);
    expect_contiguous(op, "pos", pos);
    if (where != Indices::host) return;
    const int32_t* sp = seq.ptr<int32_t>();
    const int32_t* pp = pos.ptr<int32_t>();
    for (int64_t t = 0; t < T; ++t) {
        LFM2_CHECK_INDEX(sp[t] >= 0 && sp[t] < c.B, op, "seq[", t, "] = ", sp[t], " is outside the cache's batch [0, ",
                         c.B, ")");
        LFM2_CHECK_INDEX(pp[t] >= 0 && pp[t] < c.Smax, op, "pos[", t, "] = ", pp[t],
                         " is outside the cache capacity [0, ", c.Smax, ")");
    }
}

ExpertDims check_experts(const char* op, const ConstTensorView& w13, const ConstTensorView& w2, int64_t D) {
    expect_dtype(op, "w13", w13, kWeightQ);
    expect_dtype(op, "w2", w2, kWeightQ);
    expect_whole_blocks(op, "w13", w13);
    expect_whole_blocks(op, "w2", w2);
    expect_shape(op, "w2", w2, {-1, D, -1}, "[E, D, Fe]");
    const int64_t E = w2.size(0), Fe = w2.size(2);
    expect_shape(op, "w13", w13, {E, 2 * Fe, D}, "[E, 2Fe, D] (gate | up; E, Fe from w2)");
    expect_contiguous(op, "w13", w13);
    expect_contiguous(op, "w2", w2);
    return {E, D, Fe};
}

}  // namespace

GemmDims check_gemm(const TensorView& out, const ConstTensorView& x, const ConstTensorView& w) {
    const char* op = "gemm";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "x", x, {DType::F32});
    expect_dtype(op, "w", w, kWeightQ);
    expect_whole_blocks(op, "w", w);
    expect_shape(op, "x", x, {-1, -1}, "[T, K]");
    const int64_t T = x.size(0), K = x.size(1);
    expect_shape(op, "w", w, {-1, K}, "[N, K] (K from x)");
    const int64_t N = w.size(0);
    expect_shape(op, "out", out, {T, N}, "[T, N]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    expect_contiguous(op, "w", w);
    expect_disjoint(op, "out", out, "x", x);
    expect_disjoint(op, "out", out, "w", w);
    return {T, N, K};
}

EmbeddingDims check_embedding(const TensorView& out, const ConstTensorView& table, const ConstTensorView& ids,
                              Indices where) {
    const char* op = "embedding";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "table", table, kWeightQ);
    expect_whole_blocks(op, "table", table);
    expect_dtype(op, "ids", ids, {DType::I32});
    expect_shape(op, "table", table, {-1, -1}, "[V, D]");
    const int64_t V = table.size(0), D = table.size(1);
    expect_shape(op, "ids", ids, {-1}, "[T]");
    const int64_t T = ids.size(0);
    expect_shape(op, "out", out, {T, D}, "[T, D]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "table", table);
    expect_contiguous(op, "ids", ids);
    expect_disjoint(op, "out", out, "table", table);
    if (where == Indices::host) {
        const int32_t* id = ids.ptr<int32_t>();
        for (int64_t t = 0; t < T; ++t)
            LFM2_CHECK_INDEX(id[t] >= 0 && id[t] < V, op, "token id ", id[t], " at position ", t,
                             " is outside the vocabulary [0, ", V, ")");
    }
    return {T, V, D};
}

RowDims check_rmsnorm(const TensorView& out, const ConstTensorView& x, const ConstTensorView& w, float eps) {
    const char* op = "rmsnorm";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "x", x, {DType::F32});
    expect_dtype(op, "w", w, {DType::F32});
    expect_shape(op, "x", x, {-1, -1}, "[R, D]");
    const int64_t R = x.size(0), D = x.size(1);
    expect_shape(op, "w", w, {D}, "[D]");
    expect_shape(op, "out", out, {R, D}, "[R, D]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    expect_contiguous(op, "w", w);
    if (out.data != x.data) expect_disjoint(op, "out", out, "x", x);  // in place, or disjoint
    LFM2_CHECK(eps >= 0.0f, op, "eps must be >= 0, got ", eps);
    return {R, D};
}

RopeDims check_rope(const TensorView& x, const ConstTensorView& positions, double theta) {
    const char* op = "rope";
    expect_dtype(op, "x", x, {DType::F32});
    expect_dtype(op, "positions", positions, {DType::I32});
    expect_shape(op, "x", x, {-1, -1, -1}, "[T, H, Dh]");
    const int64_t T = x.size(0), H = x.size(1), Dh = x.size(2);
    expect_shape(op, "positions", positions, {T}, "[T]");
    expect_contiguous(op, "x", x);
    expect_contiguous(op, "positions", positions);
    LFM2_CHECK(Dh % 2 == 0, op, "head dim Dh = ", Dh, " must be even");
    LFM2_CHECK(theta > 0.0, op, "theta must be > 0, got ", theta);
    return {T, H, Dh};
}

QkvDims check_qkv_split(const TensorView& q, const TensorView& k, const TensorView& v, const ConstTensorView& qkv) {
    const char* op = "qkv_split";
    expect_dtype(op, "q", q, {DType::F32});
    expect_dtype(op, "k", k, {DType::F32});
    expect_dtype(op, "v", v, {DType::F32});
    expect_dtype(op, "qkv", qkv, {DType::F32});
    expect_shape(op, "q", q, {-1, -1, -1}, "[T, H, Dh]");
    const int64_t T = q.size(0), H = q.size(1), Dh = q.size(2);
    expect_shape(op, "k", k, {T, -1, Dh}, "[T, Hkv, Dh] (T, Dh of q)");
    const int64_t Hkv = k.size(1);
    expect_shape(op, "v", v, {T, Hkv, Dh}, "[T, Hkv, Dh] (the shape of k)");
    const QkvDims d{T, H, Hkv, Dh};
    expect_shape(op, "qkv", qkv, {T, d.row()}, "[T, (H + 2 Hkv) Dh]");
    expect_contiguous(op, "q", q);
    expect_contiguous(op, "k", k);
    expect_contiguous(op, "v", v);
    expect_contiguous(op, "qkv", qkv);
    expect_disjoint(op, "q", q, "k", k);
    expect_disjoint(op, "q", q, "v", v);
    expect_disjoint(op, "k", k, "v", v);
    expect_disjoint(op, "q", q, "qkv", qkv);
    expect_disjoint(op, "k", k, "qkv", qkv);
    expect_disjoint(op, "v", v, "qkv", qkv);
    return d;
}

KvWriteDims check_kv_write(const TensorView& k_cache, const TensorView& v_cache, const ConstTensorView& k,
                           const ConstTensorView& v, const ConstTensorView& seq, const ConstTensorView& pos,
                           Indices where) {
    const char* op = "kv_write";
    const CacheDims c = check_cache(op, k_cache, v_cache);
    expect_dtype(op, "k", k, {DType::F32});
    expect_dtype(op, "v", v, {DType::F32});
    expect_shape(op, "k", k, {-1, c.Hkv, c.Dh}, "[T, Hkv, Dh] (Hkv, Dh of the cache)");
    const int64_t T = k.size(0);
    expect_shape(op, "v", v, {T, c.Hkv, c.Dh}, "[T, Hkv, Dh]");
    expect_contiguous(op, "k", k);
    expect_contiguous(op, "v", v);
    check_slots(op, seq, pos, T, c, where);
    return {c, T};
}

AttentionDims check_attention(const TensorView& out, const ConstTensorView& q, const ConstTensorView& k_cache,
                              const ConstTensorView& v_cache, const ConstTensorView& seq, const ConstTensorView& pos,
                              const ConstTensorView* mask, Indices where) {
    const char* op = "attention";
    const CacheDims c = check_cache(op, k_cache, v_cache);
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "q", q, {DType::F32});
    expect_shape(op, "q", q, {-1, -1, c.Dh}, "[T, H, Dh] (Dh of the cache)");
    const int64_t T = q.size(0), H = q.size(1);
    LFM2_CHECK(c.Hkv > 0 && H % c.Hkv == 0, op, "query heads H = ", H,
               " must be a multiple of the cache's KV heads Hkv = ", c.Hkv);
    expect_shape(op, "out", out, {T, H, c.Dh}, "[T, H, Dh]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "q", q);
    expect_disjoint(op, "out", out, "q", q);
    check_slots(op, seq, pos, T, c, where);
    if (mask) {
        expect_dtype(op, "mask", *mask, {DType::U8});
        expect_shape(op, "mask", *mask, {T, c.Smax}, "[T, Smax]");
        expect_contiguous(op, "mask", *mask);
    }
    return {c, T, H, H / c.Hkv};
}

ShortconvDims check_shortconv(const TensorView& out, const ConstTensorView& bcx, const ConstTensorView& conv_w,
                              const TensorView& state, const ConstTensorView& seq, const TensorView* u_out,
                              Indices where) {
    const char* op = "shortconv";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "bcx", bcx, {DType::F32});
    expect_dtype(op, "conv_w", conv_w, {DType::F32});
    expect_dtype(op, "state", state, {DType::F32});
    expect_dtype(op, "seq", seq, {DType::I32});
    expect_shape(op, "conv_w", conv_w, {-1, -1}, "[D, L]");
    const int64_t D = conv_w.size(0), L = conv_w.size(1);
    LFM2_CHECK(L >= 1, op, "conv kernel length L must be >= 1, got ", L);
    expect_shape(op, "bcx", bcx, {-1, 3 * D}, "[T, 3D] (D from conv_w)");
    const int64_t T = bcx.size(0);
    expect_shape(op, "out", out, {T, D}, "[T, D]");
    expect_shape(op, "state", state, {-1, L - 1, D}, "[B, L-1, D]");
    const int64_t B = state.size(0);
    expect_shape(op, "seq", seq, {T}, "[T]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "state", state);
    expect_contiguous(op, "bcx", bcx);
    expect_contiguous(op, "conv_w", conv_w);
    expect_contiguous(op, "seq", seq);
    expect_disjoint(op, "out", out, "bcx", bcx);
    expect_disjoint(op, "out", out, "state", state);
    if (u_out) {
        expect_dtype(op, "u_out", *u_out, {DType::F32});
        expect_shape(op, "u_out", *u_out, {T, D}, "[T, D]");
        expect_contiguous(op, "u_out", *u_out);
        expect_disjoint(op, "u_out", *u_out, "out", out);
        expect_disjoint(op, "u_out", *u_out, "bcx", bcx);
        expect_disjoint(op, "u_out", *u_out, "state", state);
    }
    if (where == Indices::host) {  // each sequence owns one run of tokens (contiguous, in order)
        const int32_t* sp = seq.ptr<int32_t>();
        std::vector<char> seen(static_cast<size_t>(B), 0);
        for (int64_t t = 0; t < T; ++t) {
            LFM2_CHECK_INDEX(sp[t] >= 0 && sp[t] < B, op, "seq[", t, "] = ", sp[t],
                             " is outside the state's batch [0, ", B, ")");
            if (t > 0 && sp[t] == sp[t - 1]) continue;
            LFM2_CHECK(!seen[size_t(sp[t])], op, "the tokens of sequence ", sp[t],
                       " are not contiguous (it reappears at t = ", t, "); group each sequence's tokens");
            seen[size_t(sp[t])] = 1;
        }
    }
    return {T, D, L, B};
}

SwigluDims check_swiglu(const TensorView& out, const ConstTensorView& gu) {
    const char* op = "swiglu";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "gu", gu, {DType::F32});
    expect_shape(op, "gu", gu, {-1, -1}, "[T, 2F]");
    const int64_t T = gu.size(0), F2 = gu.size(1);
    LFM2_CHECK(F2 % 2 == 0, op, "argument 'gu' has ", F2, " columns; expected an even 2F (gate | up)");
    const int64_t F = F2 / 2;
    expect_shape(op, "out", out, {T, F}, "[T, F]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "gu", gu);
    expect_disjoint(op, "out", out, "gu", gu);
    return {T, F};
}

RouteDims check_moe_route(const TensorView& ids_out, const TensorView& w_out, const ConstTensorView& logits,
                          const ConstTensorView* bias) {
    const char* op = "moe_route";
    expect_dtype(op, "ids_out", ids_out, {DType::I32});
    expect_dtype(op, "w_out", w_out, {DType::F32});
    expect_dtype(op, "logits", logits, {DType::F32});
    expect_shape(op, "logits", logits, {-1, -1}, "[T, E]");
    const int64_t T = logits.size(0), E = logits.size(1);
    expect_shape(op, "ids_out", ids_out, {T, -1}, "[T, K]");
    const int64_t K = ids_out.size(1);
    LFM2_CHECK(K >= 1 && K <= E, op, "top-k K = ", K, " (ids_out.shape[1]) must be in [1, E = ", E, "]");
    expect_shape(op, "w_out", w_out, {T, K}, "[T, K]");
    expect_contiguous(op, "ids_out", ids_out);
    expect_contiguous(op, "w_out", w_out);
    expect_contiguous(op, "logits", logits);
    if (bias) {
        expect_dtype(op, "bias", *bias, {DType::F32});
        expect_shape(op, "bias", *bias, {E}, "[E]");
        expect_contiguous(op, "bias", *bias);
    }
    return {T, E, K};
}

ExpertRowsDims check_moe_expert_rows(const TensorView& out, const ConstTensorView& x, const ConstTensorView& eids,
                                     const ConstTensorView& w13, const ConstTensorView& w2, Indices where) {
    const char* op = "moe_expert_rows";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "x", x, {DType::F32});
    expect_dtype(op, "eids", eids, {DType::I32});
    expect_shape(op, "x", x, {-1, -1}, "[N, D]");
    const int64_t N = x.size(0), D = x.size(1);
    expect_shape(op, "out", out, {N, D}, "[N, D]");
    expect_shape(op, "eids", eids, {N}, "[N]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    expect_contiguous(op, "eids", eids);
    expect_disjoint(op, "out", out, "x", x);
    const ExpertDims e = check_experts(op, w13, w2, D);
    if (where == Indices::host) {
        const int32_t* ep = eids.ptr<int32_t>();
        for (int64_t n = 0; n < N; ++n)
            LFM2_CHECK_INDEX(ep[n] < e.E, op, "eids[", n, "] = ", ep[n], " is not an expert (E = ", e.E,
                             "; negative ids mean 'no expert')");
    }
    return {N, e};
}

ExpertsDims check_moe_experts(const TensorView& out, const ConstTensorView& x, const ConstTensorView& ids,
                              const ConstTensorView& w, const ConstTensorView& w13, const ConstTensorView& w2,
                              Indices where) {
    const char* op = "moe_experts";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "x", x, {DType::F32});
    expect_dtype(op, "ids", ids, {DType::I32});
    expect_dtype(op, "w", w, {DType::F32});
    expect_shape(op, "x", x, {-1, -1}, "[T, D]");
    const int64_t T = x.size(0), D = x.size(1);
    expect_shape(op, "ids", ids, {T, -1}, "[T, K]");
    const int64_t K = ids.size(1);
    expect_shape(op, "w", w, {T, K}, "[T, K]");
    expect_shape(op, "out", out, {T, D}, "[T, D]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    expect_contiguous(op, "ids", ids);
    expect_contiguous(op, "w", w);
    const ExpertDims e = check_experts(op, w13, w2, D);
    if (where == Indices::host) {
        const int32_t* ip = ids.ptr<int32_t>();
        for (int64_t r = 0; r < T * K; ++r)
            LFM2_CHECK_INDEX(ip[r] < e.E, op, "ids[", r / K, ", ", r % K, "] = ", ip[r], " is not an expert (E = ",
                             e.E, "; negative ids mean 'skip')");
    }
    return {T, K, e};
}

ArgmaxDims check_argmax(const TensorView& out, const ConstTensorView& logits) {
    const char* op = "argmax";
    expect_dtype(op, "out", out, {DType::I32});
    expect_dtype(op, "logits", logits, {DType::F32});
    expect_shape(op, "logits", logits, {-1, -1}, "[T, V]");
    const int64_t T = logits.size(0), V = logits.size(1);
    LFM2_CHECK(V >= 1 || T == 0, op, "logits must have at least one column (V = 0)");
    LFM2_CHECK(V <= INT32_MAX, op, "V = ", V, " does not fit int32 indices");
    expect_shape(op, "out", out, {T}, "[T]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "logits", logits);
    return {T, V};
}

int64_t check_convert(const TensorView& out, const ConstTensorView& x) {
    const char* op = "convert";
    expect_dtype(op, "out", out, kWeight);
    expect_dtype(op, "x", x, kWeight);
    bool same = out.ndim == x.ndim;
    for (int i = 0; same && i < x.ndim; ++i) same = out.shape[i] == x.shape[i];
    LFM2_CHECK(same, op, "argument 'out' has shape ", out.shape_str(), ", expected the shape of 'x' ", x.shape_str());
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    expect_disjoint(op, "out", out, "x", x);
    return x.numel();
}

}  // namespace lfm2
