// embedding: out[T, D] f32 = table[ids] on the GPU, the twin of cpu/embedding.cpp (a row gather,
// no scaling; bf16 / f16 widen exactly and block-quantized rows dequantize exactly as core/quant.h,
// so the bits equal the CPU op's). A block per token row.
// An id outside [0, V) leaves its row unwritten and is raised as IndexError at the next
// synchronization (device_error.h); the CPU op raises before writing anything.
#include "common.cuh"
#include "ops.h"
#include "quant.cuh"

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

// Block-quantized table: each thread dequantizes 8 consecutive weights of the row at a time.
template <DType QT>
__global__ void embedding_q_kernel(float* __restrict__ out, const uint8_t* __restrict__ table,
                                   const int32_t* __restrict__ ids, int64_t T, int64_t D, int64_t V,
                                   DeviceError* err) {
    for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
        const int32_t id = ids[t];
        if (id < 0 || id >= V) {
            if (threadIdx.x == 0) report_index_error(err, kErrEmbeddingId, t, id, V);
            continue;
        }
        const uint8_t* row = table + qbyte_offset<QT>(int64_t(id) * D);
        float* o = out + t * D;
        for (int64_t k = int64_t(threadIdx.x) * 8; k < D; k += int64_t(blockDim.x) * 8) {
            float w[8];
            qload8<QT>(row, k, w);
#pragma unroll
            for (int v = 0; v < 8; ++v) o[k + v] = w[v];
        }
    }
}

template <DType QT>
void launch_q(float* out, const void* table, const int32_t* ids, int64_t T, int64_t D, int64_t V) {
    const uintptr_t align = QT == DType::Q4_K ? 16 : 2;  // quant.cuh's loads
    LFM2_CHECK(reinterpret_cast<uintptr_t>(table) % align == 0, "embedding", dtype_name(QT),
               " table must start on a ", align, "-byte boundary (a cuda.Tensor's storage does)");
    embedding_q_kernel<QT><<<grid_for(T, 1, 65535), D >= 2048 ? 256 : 64, 0, stream()>>>(
        out, static_cast<const uint8_t*>(table), ids, T, D, V, device_error_record());
    LFM2_CUDA_LAUNCH_CHECK();
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
        case DType::Q8_0:
            launch_q<DType::Q8_0>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        case DType::Q4_0:
            launch_q<DType::Q4_0>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        case DType::Q4_K:
            launch_q<DType::Q4_K>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        case DType::Q6_K:
            launch_q<DType::Q6_K>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
        default:
            launch<float>(out.ptr<float>(), table.data, ids.ptr<int32_t>(), T, D, V);
            break;
    }
}

}  // namespace lfm2::cuda
