// Runtime choice of the SIMD code path. dispatch.cpp detects the CPU once (cpuid + xgetbv);
// the active path is min(detected, cap), where the cap comes from LFM2_FORCE_SCALAR=1 /
// LFM2_SIMD=scalar|avx2|avx512 at load time and set_force_scalar / set_simd_level at run time.
// run_kernel<K>(isa, args...) runs K<simd::X>::run(args...) compiled for that ISA.
#pragma once

#include <string>
#include <vector>

#include "simd.h"

namespace lfm2::cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
Isa detected_isa();
Isa active_isa();
// Caps the active path at `cap` (never above what the CPU has).
void set_isa_cap(Isa cap);
// true: scalar path; false: the best the CPU has.
void set_force_scalar(bool on);
// Parses "scalar" | "avx2" | "avx512"; throws std::invalid_argument otherwise.
Isa parse_isa(const std::string& s);
// CPU features relevant to us that this CPU and OS support, e.g. "avx2", "avx512bf16", "amx-bf16".
std::vector<std::string> cpu_features();
// AVX512_BF16 (vdpbf16ps) usable: the CPU has it and the active path is AVX-512.
bool bf16_dot_available();
// The opt-in bf16 dot-product mode for bf16 weights: activations are rounded to bf16 and the
// products accumulated in fp32 by vdpbf16ps (an approximation; off by default, LFM2_BF16_DOT=1
// at load time or set_bf16_dot). bf16_dot() is true only while it is on and available.
bool bf16_dot();
// Throws std::invalid_argument when asked to turn it on where it is not available.
void set_bf16_dot(bool on);
// The opt-in fast mode for block-quantized weights (q8_0, q4_0, q4_k, q6_k): activations
// quantized per 32-element block to int8 with an fp32 scale, integer dot products with the
// weights' codes, fp32 scaling (gemm_qdot.h has the exact definition). Off by default;
// LFM2_QUANT_DOT=1 at load time or set_quant_dot. Available on every CPU (scalar, AVX2 and
// AVX-512 VNNI kernels give the same bits), so it never refuses.
bool quant_dot();
void set_quant_dot(bool on);
// AVX512_VNNI (vpdpbusd) usable: the quant-dot mode's avx512 kernels need it; without it the
// avx512 path runs the mode's avx2 kernels (same bits).
bool avx512_vnni_available();

namespace detail {
template <template <class> class K, class... A>
LFM2_TARGET_AVX512 __attribute__((flatten)) void run_avx512(A... a) {
    K<simd::Avx512>::run(a...);
}
template <template <class> class K, class... A>
LFM2_TARGET_AVX2 __attribute__((flatten)) void run_avx2(A... a) {
    K<simd::Avx2>::run(a...);
}
template <template <class> class K, class... A>
void run_scalar(A... a) {
    K<simd::Scalar>::run(a...);
}
}  // namespace detail

// K is a class template with `static LFM2_KERNEL void run(args...)`; read the Isa once per op
// (active_isa()) and pass it to every call so one op never mixes paths.
template <template <class> class K, class... A>
void run_kernel(Isa isa, A... a) {
    switch (isa) {
        case Isa::Avx512:
            detail::run_avx512<K>(a...);
            break;
        case Isa::Avx2:
            detail::run_avx2<K>(a...);
            break;
        default:
            detail::run_scalar<K>(a...);
            break;
    }
}

}  // namespace lfm2::cpu
