// gemm with block-quantized weights (q8_0, q4_0, q4_k, q6_k; core/quant.h), exact numerics mode:
// each weight row is dequantized to float32 (core/quant.h's definition, bit for bit) into a
// per-thread panel, and gemm.cpp's fp32 register tiles multiply it with the fp32 activations.
// So out[m, n] is bit-identical to gemm with the dequantized weights as float32 (and row-batch
// invariant, like that path). The panel is as many rows as fit L1 when few activation rows reuse
// it (decode: 4 rows of K = 2048 are 32 KiB) and the whole L2-sized weight block otherwise.
#include <algorithm>
#include <vector>

#include "core/quant.h"
#include "gemm_blocks.h"
#include "gemm_qdot.h"
#include "kernels.h"

namespace lfm2::cpu {

void gemm_quant(Isa isa, const float* x, int64_t ldx, const void* w, DType wdt, int64_t ldw, float* out, int64_t ldo,
                int64_t M, int64_t N, int64_t K) {
    if (quant_dot()) return gemm_qdot(isa, x, ldx, w, wdt, ldw, out, ldo, M, N, K);  // the fast mode (gemm_qdot.h)
    const char* wb = static_cast<const char*>(w);
    const int64_t row_stride = dtype_bytes(wdt, ldw);
    const int64_t panel_rows = M <= 12 ? std::max<int64_t>(4, (32 << 10) / std::max<int64_t>(4 * K, 1) / 4 * 4) : 1 << 30;
    // Blocks sized by what the panel holds: quantized rows (decode, L1 panels) or their fp32 copy.
    const int64_t row_bytes = M <= 12 ? dtype_bytes(wdt, K) : 4 * K;
    for_each_gemm_block(M, N, K, row_bytes, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        thread_local std::vector<float> panel_buf;
        for (int64_t p0 = n0; p0 < n1; p0 += panel_rows) {
            const int64_t p1 = std::min(n1, p0 + panel_rows);
            float* panel = scratch(panel_buf, (p1 - p0) * K);
            for (int64_t n = p0; n < p1; ++n) dequant_row(wdt, wb + n * row_stride, panel + (n - p0) * K, K);
            gemm_f32_block(isa, x, ldx, panel, K, out + p0, ldo, m0, m1, 0, p1 - p0, K);
        }
        trim_scratch(panel_buf);
    });
}

}  // namespace lfm2::cpu
