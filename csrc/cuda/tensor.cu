// The CUDA backend runtime behind tensor.h: the stream, a caching allocator, Tensor views,
// copies, the device-side error record, residual add, CUDA Graph capture and event timing.
// The allocator keeps freed blocks per size class (exact for small and huge blocks, 1/8-octave
// steps in between) and hands them out again without cudaMalloc; on out-of-memory it returns
// every cached block to the driver and retries once. Not here: ops (csrc/cuda/<op>.cu).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "common.cuh"
#include "tensor.h"

namespace lfm2::cuda {
namespace {

std::mutex g_mutex;                                               // allocator + capture list
std::map<size_t, std::vector<void*>> g_free;                      // size class -> cached blocks
size_t g_in_use = 0, g_cached = 0;                                // bytes
std::vector<std::shared_ptr<Storage>>* g_capture_keep = nullptr;  // set while a Graph captures

size_t size_class(size_t bytes) {
    constexpr size_t kSmall = size_t(1) << 20, kLarge = size_t(64) << 20;
    if (bytes <= kSmall) return (bytes + 511) / 512 * 512;
    if (bytes >= kLarge) return (bytes + (size_t(2) << 20) - 1) / (size_t(2) << 20) * (size_t(2) << 20);
    size_t p = size_t(1) << (63 - __builtin_clzll(bytes));  // highest power of two <= bytes
    size_t step = p / 8;
    return (bytes + step - 1) / step * step;
}

void release_cached_locked() {
    if (g_free.empty()) return;
    cudaStreamSynchronize(stream());
    for (auto& kv : g_free)
        for (void* p : kv.second) cudaFree(p);
    g_free.clear();
    g_cached = 0;
}

void* allocate(size_t cls) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_free.find(cls);
    if (it != g_free.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        g_cached -= cls;
        g_in_use += cls;
        return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, cls);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        release_cached_locked();
        err = cudaMalloc(&p, cls);
    }
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        std::ostringstream os;
        os << "CUDA out of memory: cannot allocate " << cls << " bytes (" << g_in_use << " bytes in use by tensors, "
           << g_cached << " cached) [" << cudaGetErrorName(err) << "]";
        throw std::runtime_error(os.str());
    }
    g_in_use += cls;
    return p;
}

void deallocate(void* p, size_t cls) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_free[cls].push_back(p);
    g_in_use -= cls;
    g_cached += cls;
}

__global__ void add_kernel(float* __restrict__ out, const float* __restrict__ x, int64_t n) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = out[i] + x[i];
}

__global__ void add4_kernel(float4* __restrict__ out, const float4* __restrict__ x, int64_t n4) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 a = out[i], b = x[i];
        a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
        out[i] = a;
    }
}

}  // namespace

// ----------------------------------------------------------------------------- stream + errors

cudaStream_t stream() {
    static cudaStream_t s = [] {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
            (void)cudaGetLastError();
            throw std::runtime_error(
                "lfm2engine CUDA backend: no CUDA GPU is available (cudaGetDeviceCount found none, or the driver "
                "is missing / too old); use the CPU ops (_core.cpu) or device='cpu'");
        }
        cudaStream_t st = nullptr;
        CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        return st;
    }();
    return s;
}

DeviceError* device_error_record() {
    static DeviceError* rec = [] {
        DeviceError* r = nullptr;
        CUDA_CHECK(cudaMalloc(&r, sizeof(DeviceError)));
        CUDA_CHECK(cudaMemset(r, 0, sizeof(DeviceError)));
        CUDA_CHECK(cudaDeviceSynchronize());
        return r;
    }();
    return rec;
}

int multiprocessor_count() {
    static int n = [] {
        int dev = 0, v = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
        return v > 0 ? v : 1;
    }();
    return n;
}

void check_device_error() {
    DeviceError* rec = device_error_record();
    CUDA_CHECK(cudaStreamSynchronize(stream()));
    DeviceError h{};
    CUDA_CHECK(cudaMemcpy(&h, rec, sizeof(DeviceError), cudaMemcpyDeviceToHost));
    if (h.code == kErrNone) return;
    CUDA_CHECK(cudaMemset(rec, 0, sizeof(DeviceError)));
    CUDA_CHECK(cudaDeviceSynchronize());
    std::ostringstream os;
    const char* where = " (found on the GPU; reported at synchronization) [csrc/cuda]";
    switch (h.code) {
        case kErrEmbeddingId:
            os << "embedding: token id " << h.value << " at position " << h.index << " is outside the vocabulary [0, "
               << h.bound << ")";
            break;
        case kErrKvSeq:
        case kErrAttnSeq:
            os << (h.code == kErrKvSeq ? "kv_write" : "attention") << ": seq[" << h.index << "] = " << h.value
               << " is outside the cache's batch [0, " << h.bound << ")";
            break;
        case kErrKvPos:
        case kErrAttnPos:
            os << (h.code == kErrKvPos ? "kv_write" : "attention") << ": pos[" << h.index << "] = " << h.value
               << " is outside the cache capacity [0, " << h.bound << ")";
            break;
        case kErrConvSeq:
            os << "shortconv: seq[" << h.index << "] = " << h.value << " is outside the state's batch [0, " << h.bound
               << ")";
            break;
        case kErrConvRuns:
            os << "shortconv: the tokens of sequence " << h.value
               << " are not contiguous (a second run starts at t = " << h.index << "); group each sequence's tokens"
               << where;
            throw std::invalid_argument(os.str());
        case kErrMoeExpert:
            os << "moe_experts: ids (flat index " << h.index << ") = " << h.value
               << " is not an expert (E = " << h.bound << "; negative ids mean 'skip')";
            break;
        case kErrMoeRowsExpert:
            os << "moe_expert_rows: eids[" << h.index << "] = " << h.value << " is not an expert (E = " << h.bound
               << "; negative ids mean 'no expert')";
            break;
        default:
            os << "unknown device error code " << h.code;
    }
    os << where;
    throw std::out_of_range(os.str());
}

// ----------------------------------------------------------------------------- storage + tensor

Storage::Storage(size_t bytes) : bytes_(bytes) {
    (void)stream();
    (void)device_error_record();
    if (bytes == 0) return;
    capacity_ = size_class(bytes);
    ptr_ = allocate(capacity_);
}

Storage::~Storage() {
    if (ptr_) deallocate(ptr_, capacity_);
}

Tensor Tensor::empty(const std::vector<int64_t>& shape, DType dtype) {
    LFM2_CHECK(int(shape.size()) <= kMaxDims, "cuda.Tensor", "at most ", kMaxDims, " dimensions, got ", shape.size());
    LFM2_CHECK(!is_quantized(dtype) || !shape.empty(), "cuda.Tensor", "a ", dtype_name(dtype),
               " tensor needs at least one dimension (its last one counts blocks)");
    Tensor t;
    t.dtype = dtype;
    t.ndim = int(shape.size());
    for (int i = 0; i < t.ndim; ++i) {
        LFM2_CHECK(shape[size_t(i)] >= 0, "cuda.Tensor", "negative size ", shape[size_t(i)], " in dimension ", i);
        t.shape[i] = shape[size_t(i)];
    }
    auto s = std::make_shared<Storage>(t.nbytes());
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (g_capture_keep) g_capture_keep->push_back(s);
    }
    t.storage = std::move(s);
    return t;
}

Tensor Tensor::zeros(const std::vector<int64_t>& shape, DType dtype) {
    Tensor t = empty(shape, dtype);
    zero_(t);
    return t;
}

void* Tensor::data() const {
    if (!storage || !storage->data()) return nullptr;
    return static_cast<char*>(storage->data()) + offset;
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
}

std::string Tensor::shape_str() const {
    std::ostringstream os;
    os << "[";
    for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
    os << "]";
    return os.str();
}

TensorView Tensor::view() const {
    TensorView v;
    v.data = data();
    v.dtype = dtype;
    v.ndim = ndim;
    for (int i = 0; i < ndim; ++i) v.shape[i] = shape[i];
    if (is_quantized(dtype) && ndim > 0) v.shape[ndim - 1] *= dtype_block(dtype);  // blocks -> weights
    int64_t st = 1;
    for (int i = ndim - 1; i >= 0; --i) {
        v.strides[i] = st;
        st *= v.shape[i];
    }
    return v;
}

Tensor Tensor::reshape(std::vector<int64_t> want) const {
    const char* op = "cuda.Tensor.reshape";
    LFM2_CHECK(int(want.size()) <= kMaxDims, op, "at most ", kMaxDims, " dimensions");
    int64_t known = 1;
    int infer = -1;
    for (size_t i = 0; i < want.size(); ++i) {
        if (want[i] == -1) {
            LFM2_CHECK(infer < 0, op, "only one dimension may be -1");
            infer = int(i);
        } else {
            LFM2_CHECK(want[i] >= 0, op, "negative size ", want[i]);
            known *= want[i];
        }
    }
    if (infer >= 0) {
        LFM2_CHECK(known > 0 && numel() % known == 0, op, "cannot infer -1: ", numel(), " elements into ", known, "s");
        want[size_t(infer)] = numel() / known;
        known *= want[size_t(infer)];
    }
    LFM2_CHECK(known == numel(), op, "cannot view ", shape_str(), " (", numel(), " elements) as ", known, " elements");
    LFM2_CHECK(!is_quantized(dtype) || !want.empty(), op, "a ", dtype_name(dtype), " tensor cannot be 0-d");
    Tensor t = *this;
    t.ndim = int(want.size());
    for (int i = 0; i < kMaxDims; ++i) t.shape[i] = i < t.ndim ? want[size_t(i)] : 0;
    return t;
}

Tensor Tensor::select(int64_t i) const {
    const char* op = "cuda.Tensor[index]";
    LFM2_CHECK(ndim >= 1, op, "cannot index a 0-d tensor");
    LFM2_CHECK(!is_quantized(dtype) || ndim >= 2, op, "cannot index single blocks of a 1-d ", dtype_name(dtype),
               " tensor (slice it instead)");
    LFM2_CHECK_INDEX(i >= 0 && i < shape[0], op, "index ", i, " is out of range for dimension 0 of size ", shape[0]);
    Tensor t = *this;
    const size_t row = nbytes() / size_t(shape[0] ? shape[0] : 1);
    t.offset += size_t(i) * row;
    t.ndim = ndim - 1;
    for (int d = 0; d < kMaxDims; ++d) t.shape[d] = d < t.ndim ? shape[d + 1] : 0;
    return t;
}

Tensor Tensor::slice(int64_t start, int64_t stop) const {
    const char* op = "cuda.Tensor[slice]";
    LFM2_CHECK(ndim >= 1, op, "cannot slice a 0-d tensor");
    LFM2_CHECK_INDEX(0 <= start && start <= stop && stop <= shape[0], op, "rows [", start, ", ", stop,
                     ") are not within dimension 0 of size ", shape[0]);
    Tensor t = *this;
    int64_t row_elems = 1;
    for (int d = 1; d < ndim; ++d) row_elems *= shape[d];
    t.offset += size_t(start * row_elems) * size_t(dtype_size(dtype));
    t.shape[0] = stop - start;
    return t;
}

// ----------------------------------------------------------------------------- copies

void copy_from_host(const Tensor& dst, const void* src, size_t bytes) {
    LFM2_CHECK(bytes == dst.nbytes(), "cuda.Tensor.copy_", "size mismatch: ", bytes, " bytes for a tensor of ",
               dst.nbytes());
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, bytes, cudaMemcpyHostToDevice, stream()));
    // Pageable source: the runtime has staged the bytes before returning, so `src` may go away.
}

void copy_to_host(void* dst, const Tensor& src, size_t bytes) {
    LFM2_CHECK(bytes == src.nbytes(), "cuda.Tensor.to_numpy", "size mismatch: ", bytes, " bytes for a tensor of ",
               src.nbytes());
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), bytes, cudaMemcpyDeviceToHost, stream()));
    check_device_error();  // synchronizes
}

void copy_device(const Tensor& dst, const Tensor& src) {
    const char* op = "cuda.Tensor.copy_";
    LFM2_CHECK_DTYPE(dst.dtype == src.dtype, op, "dtype mismatch: ", dtype_name(dst.dtype), " <- ",
                     dtype_name(src.dtype));
    LFM2_CHECK(dst.numel() == src.numel(), op, "size mismatch: ", dst.shape_str(), " <- ", src.shape_str());
    if (dst.nbytes() == 0 || dst.data() == src.data()) return;
    CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream()));
}

void zero_(const Tensor& t) {
    if (t.nbytes()) CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.nbytes(), stream()));
}

void synchronize() {
    check_device_error();
}

size_t memory_allocated() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_in_use;
}

size_t memory_cached() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_cached;
}

void empty_cache() {
    std::lock_guard<std::mutex> lock(g_mutex);
    release_cached_locked();
}

void add_(TensorView out, ConstTensorView x) {
    const char* op = "add";
    expect_dtype(op, "out", out, {DType::F32});
    expect_dtype(op, "x", x, {DType::F32});
    bool same = out.ndim == x.ndim;
    for (int i = 0; same && i < x.ndim; ++i) same = out.shape[i] == x.shape[i];
    LFM2_CHECK(same, op, "argument 'x' has shape ", x.shape_str(), ", expected the shape of 'out' ", out.shape_str());
    expect_contiguous(op, "out", out);
    expect_contiguous(op, "x", x);
    const int64_t n = out.numel();
    if (n == 0) return;
    const bool vec =
        n % 4 == 0 && reinterpret_cast<uintptr_t>(out.data) % 16 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
    if (vec) {
        add4_kernel<<<grid_for(n / 4, 256), 256, 0, stream()>>>(static_cast<float4*>(out.data),
                                                                static_cast<const float4*>(x.data), n / 4);
    } else {
        add_kernel<<<grid_for(n, 256), 256, 0, stream()>>>(out.ptr<float>(), x.ptr<float>(), n);
    }
    LFM2_CUDA_LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------- graphs

Graph::~Graph() {
    if (capturing_) {
        cudaGraph_t g = nullptr;
        cudaStreamEndCapture(stream(), &g);
        if (g) cudaGraphDestroy(g);
        (void)cudaGetLastError();
        std::lock_guard<std::mutex> lock(g_mutex);
        if (g_capture_keep == &keep_) g_capture_keep = nullptr;
    }
    if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
    if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void Graph::begin() {
    const char* op = "cuda.Graph.begin";
    LFM2_CHECK(!capturing_ && !exec_, op, "this Graph already holds a capture; make a new Graph");
    (void)stream();
    (void)device_error_record();
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        LFM2_CHECK(g_capture_keep == nullptr, op, "another Graph is capturing; end it first");
        g_capture_keep = &keep_;
    }
    cudaError_t err = cudaStreamBeginCapture(stream(), cudaStreamCaptureModeRelaxed);
    if (err != cudaSuccess) {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_capture_keep = nullptr;
    }
    CUDA_CHECK(err);
    capturing_ = true;
}

void Graph::end() {
    LFM2_CHECK(capturing_, "cuda.Graph.end", "begin() was not called");
    capturing_ = false;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_capture_keep = nullptr;
    }
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(stream(), &g));
    graph_ = g;
    cudaGraphExec_t e = nullptr;
    CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
    exec_ = e;
}

void Graph::replay() {
    LFM2_CHECK(exec_ != nullptr, "cuda.Graph.replay", "nothing captured (call begin() and end() first)");
    CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()));
}

// ----------------------------------------------------------------------------- timing

std::vector<double> time_ms(const std::function<void()>& fn, int warmup, int reps, bool flush_l2) {
    LFM2_CHECK(reps >= 1 && warmup >= 0, "cuda.time_ms", "need reps >= 1 and warmup >= 0");
    std::shared_ptr<Storage> flush;
    if (flush_l2) {
        int dev = 0, l2 = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
        flush = std::make_shared<Storage>(size_t(std::max(l2, 1 << 20)) * 2);
    }
    for (int i = 0; i < warmup; ++i) fn();
    cudaEvent_t a = nullptr, b = nullptr;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    std::vector<double> out;
    try {
        for (int i = 0; i < reps; ++i) {
            if (flush) CUDA_CHECK(cudaMemsetAsync(flush->data(), i & 0xff, flush->bytes(), stream()));
            CUDA_CHECK(cudaEventRecord(a, stream()));
            fn();
            CUDA_CHECK(cudaEventRecord(b, stream()));
            CUDA_CHECK(cudaEventSynchronize(b));
            float ms = 0.0f;
            CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
            out.push_back(double(ms));
        }
    } catch (...) {
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        throw;
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    check_device_error();
    return out;
}

}  // namespace lfm2::cuda
