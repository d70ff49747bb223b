// CPU feature detection and the active SIMD path (see dispatch.h). Detection reads cpuid and
// the OS-enabled register state (xgetbv) directly, so a CPU whose OS does not save zmm state
// never runs AVX-512 code. Not here: any kernel code.
#include "dispatch.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace lfm2::cpu {
namespace {

struct Features {
    bool avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512cd = false;
    bool avx512bf16 = false, avx512fp16 = false, avx512vnni = false;
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
};

uint64_t read_xcr0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}

Features detect() {
    Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    bool osxsave = c & (1u << 27);
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    bool os_avx = (xcr0 & 0x6) == 0x6;       // xmm + ymm state
    bool os_avx512 = (xcr0 & 0xE6) == 0xE6;  // + opmask, zmm_hi256, hi16_zmm
    bool os_amx = (xcr0 & 0x60000) == 0x60000;
    f.avx = os_avx && (c & (1u << 28));
    f.fma = f.avx && (c & (1u << 12));
    f.f16c = f.avx && (c & (1u << 29));
    unsigned max_leaf = __get_cpuid_max(0, nullptr);
    if (max_leaf < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    unsigned ebx7 = b, ecx7 = c, edx7 = d;
    f.avx2 = f.avx && (ebx7 & (1u << 5));
    f.bmi2 = ebx7 & (1u << 8);
    f.avx512f = os_avx512 && (ebx7 & (1u << 16));
    f.avx512dq = f.avx512f && (ebx7 & (1u << 17));
    f.avx512cd = f.avx512f && (ebx7 & (1u << 28));
    f.avx512bw = f.avx512f && (ebx7 & (1u << 30));
    f.avx512vl = f.avx512f && (ebx7 & (1u << 31));
    f.avx512vnni = f.avx512f && (ecx7 & (1u << 11));
    f.avx512fp16 = f.avx512f && (edx7 & (1u << 23));
    f.amx_bf16 = os_amx && (edx7 & (1u << 22));
    f.amx_tile = os_amx && (edx7 & (1u << 24));
    f.amx_int8 = os_amx && (edx7 & (1u << 25));
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512bf16 = f.avx512f && (a & (1u << 5));
    return f;
}

const Features& features() {
    static const Features f = detect();
    return f;
}

Isa best_isa() {
    const Features& f = features();
    // Exactly the sets named by LFM2_TARGET_AVX512 / LFM2_TARGET_AVX2 in simd.h.
    if (f.avx512f && f.avx512bw && f.avx512vl && f.fma && f.f16c) return Isa::Avx512;
    if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;
    return Isa::Scalar;
}

Isa initial_cap() {
    const char* fs = std::getenv("LFM2_FORCE_SCALAR");
    if (fs && *fs && std::strcmp(fs, "0") != 0) return Isa::Scalar;
    const char* lvl = std::getenv("LFM2_SIMD");
    if (lvl && *lvl) {
        if (!std::strcmp(lvl, "scalar")) return Isa::Scalar;
        if (!std::strcmp(lvl, "avx2")) return Isa::Avx2;
    }
    return Isa::Avx512;
}

std::atomic<int>& cap() {
    static std::atomic<int> c{int(initial_cap())};
    return c;
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Avx512:
            return "avx512";
        case Isa::Avx2:
            return "avx2";
        default:
            return "scalar";
    }
}

Isa detected_isa() {
    static const Isa best = best_isa();
    return best;
}

Isa active_isa() {
    int c = cap().load(std::memory_order_relaxed);
    int b = int(detected_isa());
    return Isa(c < b ? c : b);
}

void set_isa_cap(Isa c) {
    cap().store(int(c));
}

void set_force_scalar(bool on) {
    set_isa_cap(on ? Isa::Scalar : Isa::Avx512);
}

Isa parse_isa(const std::string& s) {
    if (s == "scalar") return Isa::Scalar;
    if (s == "avx2") return Isa::Avx2;
    if (s == "avx512") return Isa::Avx512;
    throw std::invalid_argument("simd level must be 'scalar', 'avx2' or 'avx512', got '" + s + "'");
}

std::vector<std::string> cpu_features() {
    const Features& f = features();
    std::vector<std::string> out;
    auto add = [&](bool on, const char* name) {
        if (on) out.emplace_back(name);
    };
    add(f.avx, "avx");
    add(f.avx2, "avx2");
    add(f.fma, "fma");
    add(f.f16c, "f16c");
    add(f.bmi2, "bmi2");
    add(f.avx512f, "avx512f");
    add(f.avx512bw, "avx512bw");
    add(f.avx512vl, "avx512vl");
    add(f.avx512dq, "avx512dq");
    add(f.avx512cd, "avx512cd");
    add(f.avx512vnni, "avx512vnni");
    add(f.avx512bf16, "avx512bf16");
    add(f.avx512fp16, "avx512fp16");
    add(f.amx_tile, "amx-tile");
    add(f.amx_bf16, "amx-bf16");
    add(f.amx_int8, "amx-int8");
    return out;
}

namespace {
std::atomic<bool> g_bf16_dot{[] {
    const char* e = std::getenv("LFM2_BF16_DOT");
    return e && *e && std::strcmp(e, "0") != 0;
}()};
}  // namespace

bool bf16_dot_available() {
    return features().avx512bf16 && active_isa() == Isa::Avx512;
}

bool bf16_dot() {
    return g_bf16_dot.load(std::memory_order_relaxed) && bf16_dot_available();
}

void set_bf16_dot(bool on) {
    if (on && !bf16_dot_available())
        throw std::invalid_argument(
            "set_bf16_dot: this CPU or SIMD path has no AVX512_BF16 (vdpbf16ps); see cpu_features() and "
            "simd_level()");
    g_bf16_dot.store(on);
}

namespace {
std::atomic<bool> g_quant_dot{[] {
    const char* e = std::getenv("LFM2_QUANT_DOT");
    return e && *e && std::strcmp(e, "0") != 0;
}()};
}  // namespace

bool quant_dot() {
    return g_quant_dot.load(std::memory_order_relaxed);
}

void set_quant_dot(bool on) {
    g_quant_dot.store(on);
}

bool avx512_vnni_available() {
    return features().avx512vnni && active_isa() == Isa::Avx512;
}

}  // namespace lfm2::cpu
