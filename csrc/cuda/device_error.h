// Device-side index errors of the CUDA backend. Index arguments (token ids, cache slots, expert
// ids, sequence runs) live on the GPU, so ops cannot check them at entry without a host sync per
// call. Kernels skip the offending row instead and record the first bad index here; the host
// raises it as IndexError (std::out_of_range) at the next synchronization point (to_numpy,
// synchronize). Shapes, dtypes and layouts are still checked at entry, synchronously.
// Plain C++ (no CUDA headers): included by the bindings and by common.cuh.
#pragma once

namespace lfm2::cuda {

// One record per backend, in device memory; code 0 = no error.
struct DeviceError {
    int code;
    int pad;
    long long index, value, bound;
};

enum DeviceErrorCode : int {
    kErrNone = 0,
    kErrEmbeddingId,    // embedding: ids[index] = value outside [0, bound)
    kErrKvSeq,          // kv_write: seq[index] = value outside the cache's batch [0, bound)
    kErrKvPos,          // kv_write: pos[index] outside [0, bound = Smax)
    kErrAttnSeq,        // attention: seq[index]
    kErrAttnPos,        // attention: pos[index]
    kErrConvSeq,        // shortconv: seq[index] outside the state's batch
    kErrConvRuns,       // shortconv: sequence `value` reappears at token `index` (runs not contiguous)
    kErrMoeExpert,      // moe_experts: ids[index] = value >= E
    kErrMoeRowsExpert,  // moe_expert_rows: eids[index] = value >= E
};

// Raises std::out_of_range describing the recorded error (and clears it) if there is one.
// Synchronizes the backend's stream first.
void check_device_error();

}  // namespace lfm2::cuda
