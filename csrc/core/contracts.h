// The op contract, written once for every backend: each op's signature (LFM2_OP_SIGNATURES,
// declared by cpu/ops.h and cuda/ops.h in their namespaces) and its argument checks,
// check_<op>(), which the CPU (csrc/cpu/*.cpp) and CUDA (csrc/cuda/*.cu) implementations both
// call first. A check validates dtypes (TypeError), ranks, shapes, contiguity and overlap
// (ValueError), and returns the op's named sizes. Index values (ids, slots, positions) are read
// only where they lie in host memory (Indices::host, the CPU ops; IndexError); device-resident
// ones are checked by the kernels (cuda/device_error.h). Limits of one backend's kernels (e.g. the
// CUDA attention's H/Hkv <= 32) stay in that backend. Host-only C++: usable from .cu files.
// Each op's semantics stand above its check. Shape legend: core/shapes.h. Reference (the NumPy
// oracle): python/lfm2engine/reference.py; the op contract in NumPy: backends/numpy_ops.py.
#pragma once

#include <cstdint>

#include "shapes.h"
#include "tensor.h"

// X(name, (parameters)): every op of every backend, outputs first. Optional arguments are
// pointers (nullptr = absent).
#define LFM2_OP_SIGNATURES(X)                                                                                          \
    X(gemm, (TensorView out, ConstTensorView x, ConstTensorView w))                                                    \
    X(embedding, (TensorView out, ConstTensorView table, ConstTensorView ids))                                         \
    X(rmsnorm, (TensorView out, ConstTensorView x, ConstTensorView w, float eps))                                      \
    X(rope, (TensorView x, ConstTensorView positions, double theta))                                                   \
    X(qkv_split, (TensorView q, TensorView k, TensorView v, ConstTensorView qkv))                                      \
    X(kv_write, (TensorView k_cache, TensorView v_cache, ConstTensorView k, ConstTensorView v, ConstTensorView seq,    \
                 ConstTensorView pos))                                                                                 \
    X(attention, (TensorView out, ConstTensorView q, ConstTensorView k_cache, ConstTensorView v_cache,                 \
                  ConstTensorView seq, ConstTensorView pos, const ConstTensorView* mask))                              \
    X(shortconv, (TensorView out, ConstTensorView bcx, ConstTensorView conv_w, TensorView state, ConstTensorView seq,  \
                  const TensorView* u_out))                                                                            \
    X(swiglu, (TensorView out, ConstTensorView gu))                                                                    \
    X(moe_route, (TensorView ids_out, TensorView w_out, ConstTensorView logits, const ConstTensorView* bias,           \
                  bool norm_topk, double scale))                                                                       \
    X(moe_expert_rows, (TensorView out, ConstTensorView x, ConstTensorView eids, ConstTensorView w13,                  \
                        ConstTensorView w2))                                                                           \
    X(moe_experts, (TensorView out, ConstTensorView x, ConstTensorView ids, ConstTensorView w, ConstTensorView w13,    \
                    ConstTensorView w2))                                                                               \
    X(argmax, (TensorView out, ConstTensorView logits))                                                                \
    X(convert, (TensorView out, ConstTensorView x))

// Expands to one declaration per op (inside a backend's namespace).
#define LFM2_DECLARE_OP(name, params) void name params;

namespace lfm2 {

// Where an op's index arguments live: host memory (checked here) or device memory (by the kernels).
enum class Indices { host, device };

// gemm: out[T, N] f32 = x[T, K] f32 . w[N, K]^T, w f32 | bf16 | f16; fp32 accumulation.
struct GemmDims {
    int64_t T, N, K;
};
GemmDims check_gemm(const TensorView& out, const ConstTensorView& x, const ConstTensorView& w);

// embedding: out[T, D] f32 = table[ids] (table [V, D] f32 | bf16 | f16, ids [T] i32 in [0, V)).
struct EmbeddingDims {
    int64_t T, V, D;
};
EmbeddingDims check_embedding(const TensorView& out, const ConstTensorView& table, const ConstTensorView& ids,
                              Indices where);

// rmsnorm: out[R, D] = w ⊙ x / sqrt(mean(x²) + eps); x [R, D] f32, w [D] f32; out may alias x.
struct RowDims {
    int64_t R, D;
};
RowDims check_rmsnorm(const TensorView& out, const ConstTensorView& x, const ConstTensorView& w, float eps);

// rope: in place NeoX (rotate-half) RoPE of x [T, H, Dh] f32 at positions [T] i32; Dh even.
struct RopeDims {
    int64_t T, H, Dh;
};
RopeDims check_rope(const TensorView& x, const ConstTensorView& positions, double theta);

// qkv_split: q [T, H, Dh], k, v [T, Hkv, Dh] f32 = the column blocks q | k | v of the fused
// projection qkv [T, (H + 2 Hkv) Dh] f32 (the attention layer's one q|k|v GEMM).
struct QkvDims {
    int64_t T, H, Hkv, Dh;
    int64_t nq() const { return H * Dh; }
    int64_t nkv() const { return Hkv * Dh; }
    int64_t row() const { return nq() + 2 * nkv(); }  // qkv columns
};
QkvDims check_qkv_split(const TensorView& q, const TensorView& k, const TensorView& v, const ConstTensorView& qkv);

// kv_write: k_cache[seq[t], :, pos[t], :] = k[t] (same for v); caches [B, Hkv, Smax, Dh] f32,
// k, v [T, Hkv, Dh] f32, seq, pos [T] i32.
struct CacheDims {
    int64_t B, Hkv, Smax, Dh;
};
struct KvWriteDims {
    CacheDims c;
    int64_t T;
};
KvWriteDims check_kv_write(const TensorView& k_cache, const TensorView& v_cache, const ConstTensorView& k,
                           const ConstTensorView& v, const ConstTensorView& seq, const ConstTensorView& pos,
                           Indices where);

// attention: out[T, H, Dh] = softmax(q k^T / sqrt(Dh)) v over the visible cache rows of seq[t]:
// positions 0..pos[t] (causal), or exactly those s with mask[t, s] != 0 when mask [T, Smax] u8 is
// given. GQA by repeat-interleave: head n reads KV head n / (H / Hkv). A row with nothing visible is 0.
struct AttentionDims {
    CacheDims c;
    int64_t T, H, G;  // G = H / Hkv query heads per KV head
};
AttentionDims check_attention(const TensorView& out, const ConstTensorView& q, const ConstTensorView& k_cache,
                              const ConstTensorView& v_cache, const ConstTensorView& seq, const ConstTensorView& pos,
                              const ConstTensorView* mask, Indices where);

// shortconv: gated causal depthwise conv over ragged sequences (see reference.shortconv):
// out[T, D] = C ⊙ conv_L(B ⊙ x) with bcx [T, 3D] = (B | C | x), conv_w [D, L],
// state [B, L-1, D] updated in place, seq [T] i32 (one contiguous run per sequence),
// u_out [T, D] (optional) receives u = B ⊙ x.
struct ShortconvDims {
    int64_t T, D, L, B;
};
// With Indices::host, also that every seq[t] is a state slot and each sequence's tokens are one run.
ShortconvDims check_shortconv(const TensorView& out, const ConstTensorView& bcx, const ConstTensorView& conv_w,
                              const TensorView& state, const ConstTensorView& seq, const TensorView* u_out,
                              Indices where);

// swiglu: out[T, F] = silu(gu[:, :F]) ⊙ gu[:, F:], gu [T, 2F].
struct SwigluDims {
    int64_t T, F;
};
SwigluDims check_swiglu(const TensorView& out, const ConstTensorView& gu);

// moe_route: sigmoid top-K router: ids_out [T, K] i32, w_out [T, K] f32 from logits [T, E] f32
// and bias [E] f32 (optional, selection only). Ties: lower expert id first.
struct RouteDims {
    int64_t T, E, K;
};
RouteDims check_moe_route(const TensorView& ids_out, const TensorView& w_out, const ConstTensorView& logits,
                          const ConstTensorView* bias);

// Experts: w13 [E, 2Fe, D] (gate | up), w2 [E, D, Fe]; f32 | bf16 | f16.
// moe_expert_rows: out[N, D] = expert_{eids[n]}(x[n]) unweighted, 0 where eids[n] < 0.
struct ExpertDims {
    int64_t E, D, Fe;
};
struct ExpertRowsDims {
    int64_t N;
    ExpertDims e;
};
ExpertRowsDims check_moe_expert_rows(const TensorView& out, const ConstTensorView& x, const ConstTensorView& eids,
                                     const ConstTensorView& w13, const ConstTensorView& w2, Indices where);

// moe_experts: out[T, D] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t]) in slot order (ids < 0 skipped).
struct ExpertsDims {
    int64_t T, K;
    ExpertDims e;
};
ExpertsDims check_moe_experts(const TensorView& out, const ConstTensorView& x, const ConstTensorView& ids,
                              const ConstTensorView& w, const ConstTensorView& w13, const ConstTensorView& w2,
                              Indices where);

// argmax: out[T] i32 = first index of the maximum of logits[T, V] f32 (NaN counts as the maximum).
struct ArgmaxDims {
    int64_t T, V;
};
ArgmaxDims check_argmax(const TensorView& out, const ConstTensorView& logits);

// convert: out = x converted elementwise between f32, bf16 and f16 (same shape; round to
// nearest even). Returns the element count.
int64_t check_convert(const TensorView& out, const ConstTensorView& x);

}  // namespace lfm2
