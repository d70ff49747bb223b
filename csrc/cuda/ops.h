// The CUDA op library: the twins of csrc/cpu/ops.h, one function per op of core/contracts.h
// (same names, argument order, semantics and argument checks; STYLE.md 4). Arguments are views of
// device memory (cuda::Tensor::view()); every op runs its check_<op>() with Indices::device at
// entry (dtype -> TypeError, rank/shape/contiguity -> ValueError), then enqueues kernels on the
// backend's stream and returns without waiting. Index arguments live on the GPU, so bad ids /
// slots are found by the kernels and raised as IndexError at the next synchronization
// (device_error.h); the offending rows are skipped. Plain C++ header (no CUDA types).
//
// Limits of these kernels (ValueError beyond them): attention H/Hkv <= 32 and Dh <= 256;
// moe_route E <= 2048; moe_expert_rows / moe_experts E <= 4096; shortconv L <= 64.
//
// Precision: f32 and bf16 weights run on CUDA cores with fp32 arithmetic (bf16 widened exactly);
// block-quantized weights (q8_0, q4_0, q4_k, q6_k: gemm, embedding, expert stacks) also run on
// CUDA cores, dequantized in the kernel to exactly core/quant.h's values, with fp32 activations
// and accumulation (the exact numerics mode; no quantized-activation mode, no Tensor Cores);
// f16 weights select the Tensor Core path (mma.sync m16n8k16, fp32 accumulation) with the f32
// activations rounded to f16 per GEMM. Results match the CPU op within fp32 rounding (f16 path:
// exactly so on fp16-rounded activations). Unlike the CPU ops, the bits of a row may depend on
// how many rows share the call (kernels are chosen by shape); the value stays within rounding.
#pragma once

#include "core/contracts.h"

namespace lfm2::cuda {

LFM2_OP_SIGNATURES(LFM2_DECLARE_OP)

}  // namespace lfm2::cuda
