// The CPU op library: one function per op, outputs first (STYLE.md 4). A CUDA twin with the same
// signature lives in lfm2::cuda. Every op checks dtype (TypeError), rank/shape/contiguity
// (ValueError) and indices (IndexError) before touching memory, then runs the active SIMD path
// (dispatch.h) on the engine's threads (threading.h).
// Reference: python/lfm2engine/reference.py (the NumPy oracle). Shape legend: core/shapes.h.
//
// Row-batch invariance (all ops): the value computed for one row (token) is bit-identical
// whatever other rows share the call, wherever it sits, and whatever the thread count. Paths
// (scalar / avx2 / avx512) may differ from each other within rounding.
#pragma once

#include "core/shapes.h"
#include "core/tensor.h"

namespace lfm2::cpu {

// out[T, N] f32 = x[T, K] f32 . w[N, K]^T, w f32 | bf16 | f16; fp32 accumulation.
void gemm(TensorView out, ConstTensorView x, ConstTensorView w);

// out[T, D] f32 = table[ids] (table [V, D] f32 | bf16 | f16, ids [T] i32 in [0, V)).
void embedding(TensorView out, ConstTensorView table, ConstTensorView ids);

// out[R, D] = w ⊙ x / sqrt(mean(x²) + eps); x [R, D] f32, w [D] f32; out may alias x.
void rmsnorm(TensorView out, ConstTensorView x, ConstTensorView w, float eps);

// In place NeoX (rotate-half) RoPE: x [T, H, Dh] f32, positions [T] i32; Dh even.
void rope(TensorView x, ConstTensorView positions, double theta);

// k_cache[seq[t], :, pos[t], :] = k[t] (same for v); caches [B, Hkv, Smax, Dh] f32,
// k, v [T, Hkv, Dh] f32, seq, pos [T] i32.
void kv_write(TensorView k_cache, TensorView v_cache, ConstTensorView k, ConstTensorView v, ConstTensorView seq,
              ConstTensorView pos);

// out[T, H, Dh] = softmax(q k^T / sqrt(Dh)) v over the visible cache rows of seq[t]: positions
// 0..pos[t] (causal), or exactly those s with mask[t, s] != 0 when mask [T, Smax] u8 is given.
// GQA by repeat-interleave: head n reads KV head n / (H / Hkv). A row with nothing visible is 0.
void attention(TensorView out, ConstTensorView q, ConstTensorView k_cache, ConstTensorView v_cache, ConstTensorView seq,
               ConstTensorView pos, const ConstTensorView* mask);

// Gated causal depthwise conv over ragged sequences (see reference.shortconv):
// out[T, D] = C ⊙ conv_L(B ⊙ x) with bcx [T, 3D] = (B | C | x), conv_w [D, L],
// state [B, L-1, D] updated in place, seq [T] i32 (one contiguous run per sequence),
// u_out [T, D] (optional) receives u = B ⊙ x.
void shortconv(TensorView out, ConstTensorView bcx, ConstTensorView conv_w, TensorView state, ConstTensorView seq,
               const TensorView* u_out);

// out[T, F] = silu(gu[:, :F]) ⊙ gu[:, F:], gu [T, 2F].
void swiglu(TensorView out, ConstTensorView gu);

// Sigmoid top-K router: ids_out [T, K] i32, w_out [T, K] f32 from logits [T, E] f32 and
// bias [E] f32 (optional, selection only). Ties: lower expert id first.
void moe_route(TensorView ids_out, TensorView w_out, ConstTensorView logits, const ConstTensorView* bias,
               bool norm_topk, double scale);

// out[N, D] = expert_{eids[n]}(x[n]) unweighted, 0 where eids[n] < 0.
// w13 [E, 2Fe, D] (gate | up), w2 [E, D, Fe]; f32 | bf16 | f16.
void moe_expert_rows(TensorView out, ConstTensorView x, ConstTensorView eids, ConstTensorView w13, ConstTensorView w2);

// out[T, D] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t]) in slot order (ids < 0 skipped).
void moe_experts(TensorView out, ConstTensorView x, ConstTensorView ids, ConstTensorView w, ConstTensorView w13,
                 ConstTensorView w2);

// out[T] i32 = first index of the maximum of logits[T, V] f32 (NaN counts as the maximum).
void argmax(TensorView out, ConstTensorView logits);

// out = x converted elementwise between f32, bf16 and f16 (same shape; round to nearest even).
void convert(TensorView out, ConstTensorView x);

}  // namespace lfm2::cpu
