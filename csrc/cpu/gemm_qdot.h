// The fast numerics mode for block-quantized weights (dispatch.h: quant_dot(), LFM2_QUANT_DOT=1):
// int8 activations, integer dot products with the weights' codes, fp32 scaling. Opt-in; the
// exact mode (gemm_quant.cpp) is the default. python/lfm2engine/quant_dot.py is the same
// definition in NumPy, and the tests hold every kernel to it bit for bit.
//
// Definition. out[m, n] for activations x [M, K] (fp32) and a quantized weight matrix w [N, K]:
//
// 1. Activations, per block of 32 consecutive x[m, 32b .. 32b + 31]: amax = max |x| (fp32).
//    A block holding a NaN or ±Inf: d_x = NaN, q = 0 (every output it touches is NaN).
//    amax < 2^-120 (zero, or so small that 127 / amax would overflow): d_x = 0, q = 0.
//    Otherwise d_x = amax / 127 and q_i = round-half-even(x_i · (127 / amax)) in [-127, 127]
//    (each operation one fp32 rounding; "/" is the IEEE division).
//    Per block also s = Σ q_i, and for q6_k the two half sums s_lo = Σ_{i<16} q_i, s_hi.
// 2. Per 32-weight span b of a weight row (q8_0, q4_0: its block; q4_k: sub-block j = b mod 8 of
//    its 256-block; q6_k: weights 32(b mod 8) .. + 31 of its 256-block, two 16-weight
//    sub-blocks lo, hi), an exact integer sum and one fp32 value v_b, every operation rounded
//    to fp32 in this order (no fused multiply-add; f16 scales widened exactly):
//      q8_0: I = Σ q_i · w_i                 v_b = (d_x · d) · float(I)
//      q4_0: I = Σ q_i · (nib_i − 8)         v_b = (d_x · d) · float(I)
//      q4_k: I = Σ q_i · nib_i               v_b = d_x · ((d · sc_j) · float(I) − (dmin · m_j) · float(s))
//      q6_k: I_h = Σ_{i in h} q_i · (c_i − 32), h = lo, hi
//                                            v_b = d_x · ((d · sc_lo) · float(I_lo) + (d · sc_hi) · float(I_hi))
//    (|I| < 2^20, so float(I) is exact; d · sc and dmin · m are the exact mode's own products.)
// 3. Sixteen fp32 lane accumulators, each starting at +0: lane b mod 16 adds v_b, in increasing
//    b. out[m, n] = the fixed tree (acc[l] + acc[l + 8]) → (t[l] + t[l + 4]) → (u0 + u2) + (u1 + u3)
//    (simd.h's Avx512::hsum). Spans past K (the last group of 16 padded) add nothing.
//
// Every path (scalar, AVX2, AVX-512 VNNI) computes these integers exactly and the fp32 steps in
// this order, so the mode gives the same bits on every SIMD path, for every M, tile split and
// thread count (row-batch invariance). Kernels: activations quantized once per call into groups of
// 16 blocks stored "transposed" (64-byte vector s of a group holds bytes 4s .. 4s + 3 of each of
// its 16 blocks), so a weight row's codes, regrouped the same way (16-byte loads and in-lane
// unpacks, one byte per weight, into an L1 buffer of NR rows), meet them in 8 vpdpbusd steps per
// 512 weights that leave block b's whole integer sum in lane b mod 16; one fp32 epilogue per 16
// blocks follows.
// MR activation rows × NR weight rows per tile; the NR rows are regrouped once per row chunk.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "dispatch.h"

namespace lfm2::cpu {

// gemm_raw for quantized weights in the quant-dot mode (gemm_quant calls it while quant_dot()).
void gemm_qdot(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
               int64_t M, int64_t N, int64_t K);

// Step 1 of the definition on its own, in natural order: q [M, K] int8 and d [M, K / 32] (K a
// multiple of 32), with the kernels' own code for SIMD path `isa`. For tests.
void quantize_activations(Isa isa, const float* x, int64_t ldx, int64_t M, int64_t K, int8_t* q, float* d);

}  // namespace lfm2::cpu
