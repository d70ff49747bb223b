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
    const EmbeddingDims d = check_embedding(out, table, ids, Indices::device);
    const int64_t T = d.T, V = d.V, D = d.D;
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
