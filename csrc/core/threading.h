// OpenMP helpers: the engine-wide thread count and a parallel loop over independent items.
// Ops parallelize only over independent outputs (rows, heads, column blocks), never over a
// reduction, so results do not depend on the thread count. Items must not throw: ops validate
// everything before entering a parallel region.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>

namespace lfm2 {

namespace detail {
// 0 = not set: follow OpenMP's default (OMP_NUM_THREADS, else the core count).
inline std::atomic<int> g_num_threads{0};
}  // namespace detail

inline int num_threads() {
    int n = detail::g_num_threads.load(std::memory_order_relaxed);
    return n > 0 ? n : omp_get_max_threads();
}

// n <= 0 restores the default.
inline void set_num_threads(int n) {
    detail::g_num_threads.store(n > 0 ? n : 0);
}

// Below this many inner-loop operations (multiply-adds, elements) a loop runs on the calling
// thread: waking a team costs microseconds, and on an oversubscribed machine a descheduled team
// member stalls the closing barrier for a whole time slice. Every real-model GEMM is above it.
// LFM2_MIN_PARALLEL_WORK (read once) overrides it, for tuning on a given machine.
constexpr int64_t kMinParallelWork = int64_t(1) << 20;

// Matrix products go parallel from a lower size: a GEMV streams its weights from memory, and one
// core cannot keep enough cache misses in flight to reach the machine's bandwidth (measured on a
// 2-core Zen 5 VM: one core ~20 GB/s, two ~40 GB/s), so a decode step's projections (2^16 ..
// 2^21 multiply-adds each) need both cores. Tiny test models stay below it.
// LFM2_MIN_PARALLEL_GEMM (read once) overrides it.
constexpr int64_t kMinParallelGemm = int64_t(1) << 16;

namespace detail {
inline int64_t env_threshold(const char* name, int64_t fallback) {
    const char* e = std::getenv(name);
    long long n = e && *e ? std::atoll(e) : 0;
    return n > 0 ? int64_t(n) : fallback;
}
}  // namespace detail

inline int64_t min_parallel_work() {
    static const int64_t v = detail::env_threshold("LFM2_MIN_PARALLEL_WORK", kMinParallelWork);
    return v;
}

inline int64_t min_parallel_gemm() {
    static const int64_t v = detail::env_threshold("LFM2_MIN_PARALLEL_GEMM", kMinParallelGemm);
    return v;
}

// f(i) for i in [0, n), items spread dynamically over the threads. Runs inline when n < 2, one
// thread is configured, the caller is already inside a parallel region, or `work` (the loop's
// estimated operation count; unknown = unlimited) is below `threshold` (default
// min_parallel_work(); matrix products pass min_parallel_gemm()).
template <class F>
void parallel_for(int64_t n, F&& f, int64_t work = INT64_MAX, int64_t threshold = -1) {
    int nt = num_threads();
    if (nt > n) nt = int(n);
    if (threshold < 0) threshold = min_parallel_work();
    if (nt <= 1 || work < threshold || omp_in_parallel()) {
        for (int64_t i = 0; i < n; ++i) f(i);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) f(i);
}

// Splits [0, n) into contiguous ranges and calls f(begin, end) for each: about four ranges per
// thread, each worth at least 2^16 operations given `item_work` (estimated operations per item).
// Runs as a single range on the calling thread when n·item_work is below kMinParallelWork.
template <class F>
void parallel_ranges(int64_t n, int64_t item_work, F&& f) {
    if (n <= 0) return;
    if (item_work < 1) item_work = 1;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / item_work);
    const int64_t want = int64_t(num_threads()) * 4;
    const int64_t chunk = std::max(grain, (n + want - 1) / want);
    const int64_t count = (n + chunk - 1) / chunk;
    parallel_for(
        count,
        [&](int64_t c) {
            const int64_t b = c * chunk;
            f(b, std::min(n, b + chunk));
        },
        n > INT64_MAX / item_work ? INT64_MAX : n * item_work);
}

}  // namespace lfm2
