// embedding: out[T, D] f32 = table[ids] (a row gather, no scaling); must match
// reference.embedding. bf16 / f16 tables widen exactly to f32, so every path gives the same
// bits. An id outside [0, V) is an IndexError naming the id and its position, raised before any
// row is written.
#include <algorithm>

#include "core/quant.h"
#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class S>
struct EmbeddingRows {
    template <class WT>
    static LFM2_KERNEL void run(float* out, const WT* table, const int32_t* ids, int64_t t0, int64_t t1, int64_t D) {
        for (int64_t t = t0; t < t1; ++t) {
            const WT* row = table + int64_t(ids[t]) * D;
            float* o = out + t * D;
            int64_t d = 0;
            for (; d + S::W <= D; d += S::W) S::store(o + d, S::load_w(row + d));
            if (d < D) S::store_partial(o + d, S::load_w_partial(row + d, int(D - d)), int(D - d));
        }
    }
};

template <class WT>
void gather(Isa isa, float* out, const WT* table, const int32_t* ids, int64_t T, int64_t D) {
    parallel_ranges(T, D, [&](int64_t t0, int64_t t1) { run_kernel<EmbeddingRows>(isa, out, table, ids, t0, t1, D); });
}

}  // namespace

void embedding(TensorView out, ConstTensorView table, ConstTensorView ids) {
    const EmbeddingDims d = check_embedding(out, table, ids, Indices::host);
    const int64_t T = d.T, D = d.D;
    const int32_t* id = ids.ptr<int32_t>();
    const Isa isa = active_isa();
    if (is_quantized(table.dtype)) {  // one dequantized row per token (core/quant.h's values)
        const char* tb = static_cast<const char*>(table.data);
        const int64_t row = dtype_bytes(table.dtype, D);
        float* o = out.ptr<float>();
        parallel_ranges(T, D, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) dequant_row(table.dtype, tb + id[t] * row, o + t * D, D);
        });
        return;
    }
    switch (table.dtype) {
        case DType::BF16:
            gather(isa, out.ptr<float>(), table.ptr<bf16_t>(), id, T, D);
            break;
        case DType::F16:
            gather(isa, out.ptr<float>(), table.ptr<f16_t>(), id, T, D);
            break;
        default:
            gather(isa, out.ptr<float>(), table.ptr<float>(), id, T, D);
            break;
    }
}

}  // namespace lfm2::cpu
