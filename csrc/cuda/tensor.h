// The CUDA backend's device tensor handle and its runtime: a caching allocator, the one stream,
// host <-> device copies, CUDA Graph capture of a stretch of op calls, and event timing.
// Plain C++ (no CUDA headers), so the bindings can include it; implemented in tensor.cu and
// compiled only when LFM2_WITH_CUDA is defined.
//
// A Tensor owns (shares) a Storage block and sees it as a contiguous row-major array of one dtype
// (f32, f16, bf16 bits, i32, u8, or a block-quantized weight type: q8_0, q4_0, q4_k, q6_k).
// Views (reshape, select / slice along dim 0) share the storage.
// Block types keep NumPy's view of them (lfm2engine.quant): an element is one block, so a matrix
// of N rows of K weights has shape [N, K / block], numel() counts blocks and nbytes() is
// numel() · dtype_size() (the block's bytes); reshape / select / slice work in blocks. What the
// ops see (view()) is the logical weight shape [N, K], as for a NumPy block array (numpy_view.h).
// All work is ordered on one stream; memory freed by a Tensor returns to the cache and may be
// reused by later work on that stream, which is safe because the stream orders the uses.
// Single GPU: the device current when the backend first runs (device 0 unless set before).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace lfm2::cuda {

// A block of device memory from the caching allocator; returned to the cache when destroyed.
class Storage {
public:
    explicit Storage(size_t bytes);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
    void* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;     // requested
    size_t capacity_ = 0;  // rounded size class held from the allocator
};

struct Tensor {
    std::shared_ptr<Storage> storage;
    size_t offset = 0;  // bytes into storage
    DType dtype = DType::F32;
    int ndim = 0;
    int64_t shape[kMaxDims] = {};

    static Tensor empty(const std::vector<int64_t>& shape, DType dtype);
    static Tensor zeros(const std::vector<int64_t>& shape, DType dtype);

    void* data() const;
    int64_t numel() const;
    size_t nbytes() const { return size_t(numel()) * size_t(dtype_size(dtype)); }  // blocks · block bytes
    std::vector<int64_t> sizes() const { return std::vector<int64_t>(shape, shape + ndim); }
    std::string shape_str() const;

    TensorView view() const;  // contiguous strides over the device pointer; logical weights for block types
    ConstTensorView cview() const { return view(); }

    Tensor reshape(std::vector<int64_t> shape) const;  // same numel; one -1 allowed
    Tensor select(int64_t i) const;                    // index dim 0, dropping it
    Tensor slice(int64_t start, int64_t stop) const;   // rows [start, stop) of dim 0
};

// Host <-> device copies on the backend's stream. copy_to_host waits for the stream and raises a
// pending device-side index error (device_error.h) before returning.
void copy_from_host(const Tensor& dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const Tensor& src, size_t bytes);
void copy_device(const Tensor& dst, const Tensor& src);  // same dtype and numel
void zero_(const Tensor& t);

// Waits for all queued work; raises a pending device-side index error.
void synchronize();

// Allocator statistics (bytes) and release of cached, unused blocks back to the driver.
size_t memory_allocated();
size_t memory_cached();
void empty_cache();

// out[...] += x[...] elementwise, f32, same shape (the residual add of the model loop).
void add_(TensorView out, ConstTensorView x);

// A CUDA Graph of the op calls made between begin() and end() on the backend's stream, replayed
// as one launch. Work is recorded, not run, during capture: no host copies may happen then.
// Device memory allocated during capture stays reserved for the graph (it is referenced by the
// recorded kernels) until the Graph is destroyed.
class Graph {
public:
    Graph() = default;
    ~Graph();
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    void begin();
    void end();
    void replay();
    bool ready() const { return exec_ != nullptr; }

private:
    void* graph_ = nullptr;  // cudaGraph_t
    void* exec_ = nullptr;   // cudaGraphExec_t
    bool capturing_ = false;
    std::vector<std::shared_ptr<Storage>> keep_;
};

// Milliseconds of GPU time of fn() per repetition (cudaEvent pairs around each call), after
// `warmup` untimed calls; with flush_l2 a buffer twice the L2 size is overwritten before each
// timed call so weights come from HBM.
std::vector<double> time_ms(const std::function<void()>& fn, int warmup, int reps, bool flush_l2);

}  // namespace lfm2::cuda
