// The op tables: one row per op and backend, X(name, docstring, Python argument names...), from
// which register_cpu.cpp and register_cuda.cpp generate the bindings (op_binder.h) and the
// modules' `_ops` maps. `name` is also the C++ function (lfm2::cpu::name, lfm2::cuda::name;
// signatures in core/contracts.h); a row that names more or fewer arguments than its op has does
// not compile. none_default("x") marks an optional tensor whose Python default is None. Every op of
// one table has its twin in the other (tests/test_ops_cpu.py::test_op_tables_are_twins, which also
// checks python/lfm2engine/_core.pyi against both). Docstrings carry the shapes (legend:
// csrc/core/shapes.h).
#pragma once

#include "op_binder.h"

// _core.cpu: NumPy arrays in, outputs written in place.
#define LFM2_CPU_OPS(X)                                                                                              \
    X(gemm,                                                                                                          \
      "gemm(out[T, N] f32, x[T, K] f32, w[N, K] f32|bf16|f16): out = x @ w.T, fp32 accumulation.\n"                  \
      "Each output row is bit-identical whatever the other rows and the thread count.",                              \
      "out", "x", "w")                                                                                               \
    X(embedding,                                                                                                     \
      "embedding(out[T, D] f32, table[V, D] f32|bf16|f16, ids[T] i32): out = table[ids].\n"                          \
      "IndexError (naming the id) if an id is outside [0, V).",                                                      \
      "out", "table", "ids")                                                                                         \
    X(rmsnorm,                                                                                                       \
      "rmsnorm(out[R, D] f32, x[R, D] f32, w[D] f32, eps): out = w * x / sqrt(mean(x^2) + eps).\n"                   \
      "out may be x itself (in place). q/k norm: R = T*H, D = Dh.",                                                  \
      "out", "x", "w", "eps")                                                                                        \
    X(rope,                                                                                                          \
      "rope(x[T, H, Dh] f32, positions[T] i32, theta): in place NeoX (rotate-half) RoPE;\n"                          \
      "pairs (j, j + Dh/2), angle = positions[t] * theta^(-2j/Dh) computed in double.",                              \
      "x", "positions", "theta")                                                                                     \
    X(qkv_split,                                                                                                     \
      "qkv_split(q[T, H, Dh] f32, k[T, Hkv, Dh] f32, v[T, Hkv, Dh] f32, qkv[T, (H+2Hkv)Dh] f32):\n"                  \
      "q, k, v = the column blocks q | k | v of the fused projection qkv (a bit-exact copy).",                       \
      "q", "k", "v", "qkv")                                                                                          \
    X(kv_write,                                                                                                      \
      "kv_write(k_cache[B, Hkv, Smax, Dh] f32, v_cache[B, Hkv, Smax, Dh] f32, k[T, Hkv, Dh] f32,\n"                  \
      "v[T, Hkv, Dh] f32, seq[T] i32, pos[T] i32): cache[seq[t], :, pos[t], :] = k[t] (and v).\n"                    \
      "IndexError if seq[t] >= B or pos[t] >= Smax (nothing is written then).",                                      \
      "k_cache", "v_cache", "k", "v", "seq", "pos")                                                                  \
    X(attention,                                                                                                     \
      "attention(out[T, H, Dh] f32, q[T, H, Dh] f32, k_cache[B, Hkv, Smax, Dh] f32,\n"                               \
      "v_cache[B, Hkv, Smax, Dh] f32, seq[T] i32, pos[T] i32, mask[T, Smax] u8 | None):\n"                           \
      "token t, head n attends to k_cache[seq[t], n // (H/Hkv), s] for s <= pos[t], or for the s\n"                  \
      "with mask[t, s] != 0 when a mask is given (tree attention); scale 1/sqrt(Dh), online\n"                       \
      "softmax in fp32. A row with nothing visible gives zeros.",                                                    \
      "out", "q", "k_cache", "v_cache", "seq", "pos", none_default("mask"))                                          \
    X(shortconv,                                                                                                     \
      "shortconv(out[T, D] f32, bcx[T, 3D] f32, conv_w[D, L] f32, state[B, L-1, D] f32, seq[T] i32,\n"               \
      "u_out[T, D] f32 | None): B, C, x = split(bcx[t]); u = B*x; z = sum_j conv_w[:, j] *\n"                        \
      "u[t-(L-1)+j] (earlier u from the sequence's earlier tokens or state[seq]); out = C*z.\n"                      \
      "Each sequence's tokens must be contiguous and in order; state[seq] is left holding the\n"                     \
      "last L-1 values of u (oldest first). u_out, if given, receives u.",                                           \
      "out", "bcx", "conv_w", "state", "seq", none_default("u_out"))                                                 \
    X(swiglu, "swiglu(out[T, F] f32, gu[T, 2F] f32): out = silu(gu[:, :F]) * gu[:, F:] (gate | up).", "out", "gu")  \
    X(moe_route,                                                                                                     \
      "moe_route(ids_out[T, K] i32, w_out[T, K] f32, logits[T, E] f32, bias[E] f32 | None,\n"                        \
      "norm_topk, scale): s = sigmoid(logits) (double); top-K of s + bias, ties to the lower id,\n"                  \
      "ids in descending order; w = s[ids], / (sum + 1e-6) if norm_topk, * scale.",                                  \
      "ids_out", "w_out", "logits", "bias", "norm_topk", "scale")                                                    \
    X(moe_expert_rows,                                                                                               \
      "moe_expert_rows(out[N, D] f32, x[N, D] f32, eids[N] i32, w13[E, 2Fe, D], w2[E, D, Fe]):\n"                    \
      "out[n] = w2[e] @ (silu(w13[e, :Fe] @ x[n]) * (w13[e, Fe:] @ x[n])), e = eids[n], unweighted;\n"               \
      "zeros where eids[n] < 0. Weights f32|bf16|f16. Rows are grouped per expert (one GEMM each).",                 \
      "out", "x", "eids", "w13", "w2")                                                                               \
    X(moe_experts,                                                                                                   \
      "moe_experts(out[T, D] f32, x[T, D] f32, ids[T, K] i32, w[T, K] f32, w13[E, 2Fe, D],\n"                        \
      "w2[E, D, Fe]): out[t] = sum_j w[t, j] * expert_{ids[t, j]}(x[t]) in slot order, fp32;\n"                      \
      "ids < 0 are skipped.",                                                                                        \
      "out", "x", "ids", "w", "w13", "w2")                                                                           \
    X(argmax, "argmax(out[T] i32, logits[T, V] f32): first index of the row maximum (NaN wins, as numpy).", "out",   \
      "logits")                                                                                                      \
    X(convert,                                                                                                       \
      "convert(out[...] f32|bf16|f16, x[...] f32|bf16|f16): elementwise conversion, round to\n"                      \
      "nearest even (bf16 NaN -> 0x7FC0, f16 overflow -> inf). Same shape.",                                         \
      "out", "x")

// _core.cuda: cuda.Tensor arguments (None for optional ones); ops enqueue work and return at once.
#define LFM2_CUDA_OPS(X)                                                                                             \
    X(gemm,                                                                                                          \
      "gemm(out[T, N] f32, x[T, K] f32, w[N, K] f32|bf16|f16): out = x @ w.T, fp32 accumulation.\n"                  \
      "f16 weights use the Tensor Cores (x rounded to f16 per GEMM).",                                               \
      "out", "x", "w")                                                                                               \
    X(embedding,                                                                                                     \
      "embedding(out[T, D] f32, table[V, D] f32|bf16|f16, ids[T] i32): out = table[ids].\n"                          \
      "A bad id raises IndexError at the next synchronization.",                                                     \
      "out", "table", "ids")                                                                                         \
    X(rmsnorm, "rmsnorm(out[R, D] f32, x[R, D] f32, w[D] f32, eps): out = w * x / sqrt(mean(x^2) + eps); out may be x.", \
      "out", "x", "w", "eps")                                                                                        \
    X(rope, "rope(x[T, H, Dh] f32, positions[T] i32, theta): in place NeoX RoPE.", "x", "positions", "theta")        \
    X(qkv_split, "qkv_split(q[T, H, Dh], k[T, Hkv, Dh], v[T, Hkv, Dh], qkv[T, (H+2Hkv)Dh]): q | k | v = qkv.", "q",  \
      "k", "v", "qkv")                                                                                               \
    X(kv_write, "kv_write(k_cache[B, Hkv, Smax, Dh], v_cache, k[T, Hkv, Dh], v, seq[T] i32, pos[T] i32).",           \
      "k_cache", "v_cache", "k", "v", "seq", "pos")                                                                  \
    X(attention,                                                                                                     \
      "attention(out[T, H, Dh], q[T, H, Dh], k_cache[B, Hkv, Smax, Dh], v_cache, seq[T] i32, pos[T] i32,\n"          \
      "mask[T, Smax] u8 | None): flash-style causal (or masked) GQA attention; H/Hkv <= 32, Dh <= 256.",            \
      "out", "q", "k_cache", "v_cache", "seq", "pos", none_default("mask"))                                          \
    X(shortconv,                                                                                                     \
      "shortconv(out[T, D], bcx[T, 3D], conv_w[D, L], state[B, L-1, D], seq[T] i32, u_out[T, D] | None).",           \
      "out", "bcx", "conv_w", "state", "seq", none_default("u_out"))                                                 \
    X(swiglu, "swiglu(out[T, F], gu[T, 2F]): out = silu(gu[:, :F]) * gu[:, F:].", "out", "gu")                       \
    X(moe_route,                                                                                                     \
      "moe_route(ids_out[T, K] i32, w_out[T, K] f32, logits[T, E] f32, bias[E] f32 | None, norm_topk, scale).",      \
      "ids_out", "w_out", "logits", "bias", "norm_topk", "scale")                                                    \
    X(moe_expert_rows, "moe_expert_rows(out[N, D], x[N, D], eids[N] i32, w13[E, 2Fe, D], w2[E, D, Fe]).", "out",     \
      "x", "eids", "w13", "w2")                                                                                      \
    X(moe_experts, "moe_experts(out[T, D], x[T, D], ids[T, K] i32, w[T, K] f32, w13[E, 2Fe, D], w2[E, D, Fe]).",     \
      "out", "x", "ids", "w", "w13", "w2")                                                                           \
    X(argmax, "argmax(out[T] i32, logits[T, V] f32): first index of the row maximum.", "out", "logits")              \
    X(convert, "convert(out, x): elementwise f32 <-> bf16 <-> f16, round to nearest even.", "out", "x")
