// embedding: out[T, D] f32 = table[ids] on the GPU, the twin of cpu/embedding.cpp (a row gather,
// no scaling; bf16 / f16 widen exactly, so the bits equal the CPU op's). A block per token row.
// An id outside [0, V) leaves its row unwritten and is raised as IndexError at the next
// synchronization (device_error.h); the CPU op raises before writing anything.
#include "common.cuh"
#include "ops.h"

namespace lfm2::cuda {
namespace {

template <class WT>
__global__ void embedding_kernel(float* __restrict__ out, const WT* __restrict__ table, const int32_t* __restrict__ ids,
                                 int64_t T, int64_t D, int64_t V, DeviceError* err) {
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const int32_t id = ids[t];
        if (id < 0 || id >= V) {
            if (threadIdx.x == 0) report_index_error(err, kErrEmbeddingId, t, id, V);
            continue;
        }
        const WT* row = table + int64_t(id) * D;
        float* o = out + t * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = wload(row + d);
    }
}

template <class WT>
void launch(float* out, const void* table, const int32_t* ids, int64_t T, int64_t D, int64_t V) {
    const int block = D >= 256 ? 256 : 128;
    embedding_kernel<WT><<<grid_for(T, 1, 65535), block, 0, stream()>>>(out, static_cast<const WT*>(table), ids, T, D,
                                                                         V, device_error_record());
    LFM2_CUDA_LAUNCH_CHECK();
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
    expect_disjoint(op, "out", out, "table", table);
    if (T == 0 || D == 0) return;
    switch (table.dtype) {
        case DType::BF16:
            launch<bf16_t>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        case DType::F16:
            launch<f16_t>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        default:
            launch<float>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
    }
}

}  // namespace lfm2::cuda
