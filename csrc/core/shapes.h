// The shape legend of lfm2engine, shared by every C++/CUDA file (STYLE.md convention 3).
// Shapes are written in NumPy (row-major) order; the last index is the contiguous one.
// This header holds no code: include it where a file documents shapes, so a reader finds the
// legend one jump away. reference.py repeats the same legend at its top.
#pragma once

// T    tokens in the call (a flattened, ragged batch of several sequences)
// B    batch: sequences (slots) a KV / conv state holds
// S    cache length; Smax = cache capacity per sequence
// D    hidden size (LFM2-8B-A1B: 2048)
// H    query heads (32), Hkv key/value heads (8); head n uses KV head n / (H / Hkv)
// Dh   head dim (64)
// F    dense FFN width (7168); gate | up concatenated is [2F, D]
// Fe   expert FFN width (1792), or the slice of it one tensor-parallel rank holds
// E    experts (32), K top-k experts per token (4)
// L    conv kernel length, conv_L_cache (3); a conv state keeps L-1 rows
// V    vocabulary (65536)
// R    rows of a row-wise op (rmsnorm over q heads: R = T*H), or ranks in parallel code
// N, K (in gemm)  output features and reduction length: out[T, N] = x[T, K] . w[N, K]^T
//
// dtypes: f32 (activations, norms, conv taps, router), bf16 (bits held in uint16) or f16 or f32
// for projection weights, i32 for ids / positions / sequence slots, u8 for masks.
