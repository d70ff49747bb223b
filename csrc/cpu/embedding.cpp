// embedding: out[T, D] f32 = table[ids] (a row gather, no scaling); must match
// reference.embedding. bf16 / f16 tables widen exactly to f32, so every path gives the same
// bits. An id outside [0, V) is an IndexError naming the id and its position, raised before any
// row is written.
#include <algorithm>

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
    const char* op = "embedding";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "table", table, {DType::F32, DType::BF16, DType::F16});
    expect_dtype(op, "ids", ids, {DType::I32});
    expect_shape(op, "table", table, {-1, -1}, "[V, D]");
    const int64_t V = table.size(0), D = table.size(1);
    expect_shape(op, "ids", ids, {-1}, "[T]");
    const int64_t T = ids.size(0);
    expect_shape(op, "out", out, {T, D}, "[T, D]");
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "table", table);
    expect_contiguous(op, "ids", ids);
    expect_disjoint(op, "out", out, "table", table);  // rows are read while others are written
    const int32_t* id = ids.ptr<int32_t>();
    for (int64_t t = 0; t < T; ++t)
        LFM2_CHECK_INDEX(id[t] >= 0 && id[t] < V, op, "token id ", id[t], " at position ", t,
                         " is outside the vocabulary [0, ", V, ")");
    const Isa isa = active_isa();
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
