// The CUDA op library: the twins of csrc/cpu/ops.h, same names, same argument order, same
// semantics (STYLE.md 4). Arguments are views of device memory (cuda::Tensor::view()); every op
// checks dtype (TypeError), rank/shape/contiguity (ValueError) at entry, then enqueues kernels on
// the backend's stream and returns without waiting. Index arguments live on the GPU, so bad ids /
// slots are found by the kernels and raised as IndexError at the next synchronization
// (device_error.h); the offending rows are skipped. Plain C++ header (no CUDA types).
// Reference: csrc/cpu/ops.h and python/lfm2engine/reference.py. Shape legend: core/shapes.h.
//
// Precision: f32 and bf16 weights run on CUDA cores with fp32 arithmetic (bf16 widened exactly);
// f16 weights select the Tensor Core path (mma.sync m16n8k16, fp32 accumulation) with the f32
// activations rounded to f16 per GEMM. Results match the CPU op within fp32 rounding (f16 path:
// exactly so on fp16-rounded activations). Unlike the CPU ops, the bits of a row may depend on
// how many rows share the call (kernels are chosen by shape); the value stays within rounding.
#pragma once

#include "core/shapes.h"
#include "core/tensor.h"

namespace lfm2::cuda {

// out[T, N] f32 = x[T, K] f32 . w[N, K]^T, w f32 | bf16 | f16 (f16: Tensor Cores).
void gemm(TensorView out, ConstTensorView x, ConstTensorView w);

// out[T, D] f32 = table[ids] (table [V, D] f32 | bf16 | f16, ids [T] i32 in [0, V)).
void embedding(TensorView out, ConstTensorView table, ConstTensorView ids);

// out[R, D] = w ⊙ x / sqrt(mean(x²) + eps); x [R, D] f32, w [D] f32; out may alias x.
void rmsnorm(TensorView out, ConstTensorView x, ConstTensorView w, float eps);

// In place NeoX (rotate-half) RoPE: x [T, H, Dh] f32, positions [T] i32; Dh even.
void rope(TensorView x, ConstTensorView positions, double theta);

// k_cache[seq[t], :, pos[t], :] = k[t] (same for v); caches [B, Hkv, Smax, Dh] f32.
void kv_write(TensorView k_cache, TensorView v_cache, ConstTensorView k, ConstTensorView v, ConstTensorView seq,
              ConstTensorView pos);

// out[T, H, Dh] = softmax(q k^T / sqrt(Dh)) v over the visible cache rows of seq[t] (0..pos[t],
// or the s with mask[t, s] != 0); GQA by repeat-interleave; nothing visible -> 0. H/Hkv <= 32.
void attention(TensorView out, ConstTensorView q, ConstTensorView k_cache, ConstTensorView v_cache, ConstTensorView seq,
               ConstTensorView pos, const ConstTensorView* mask);

// Gated causal depthwise conv over ragged sequences with a conv state (see cpu/ops.h).
void shortconv(TensorView out, ConstTensorView bcx, ConstTensorView conv_w, TensorView state, ConstTensorView seq,
               const TensorView* u_out);

// out[T, F] = silu(gu[:, :F]) ⊙ gu[:, F:], gu [T, 2F].
void swiglu(TensorView out, ConstTensorView gu);

// Sigmoid top-K router (see cpu/ops.h); E <= 2048.
void moe_route(TensorView ids_out, TensorView w_out, ConstTensorView logits, const ConstTensorView* bias,
               bool norm_topk, double scale);

// out[N, D] = expert_{eids[n]}(x[n]) unweighted, 0 where eids[n] < 0.
void moe_expert_rows(TensorView out, ConstTensorView x, ConstTensorView eids, ConstTensorView w13, ConstTensorView w2);

// out[T, D] = Σ_j w[t, j] · expert_{ids[t, j]}(x[t]) in slot order (ids < 0 skipped).
void moe_experts(TensorView out, ConstTensorView x, ConstTensorView ids, ConstTensorView w, ConstTensorView w13,
                 ConstTensorView w2);

// out[T] i32 = first index of the maximum of logits[T, V] f32 (NaN counts as the maximum).
void argmax(TensorView out, ConstTensorView logits);

// out = x converted elementwise between f32, bf16 and f16 (same shape; round to nearest even).
void convert(TensorView out, ConstTensorView x);

}  // namespace lfm2::cuda
