// OpenMP helpers: the engine-wide thread count and a parallel loop over independent items.
// Ops parallelize only over independent outputs (rows, heads, column blocks), never over a
// reduction, so results do not depend on the thread count. Items must not throw: ops validate
// everything before entering a parallel region.
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>

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

// f(i) for i in [0, n), items spread dynamically over the threads. Runs inline when n < 2, one
// thread is configured, or the caller is already inside a parallel region.
template <class F>
void parallel_for(int64_t n, F&& f) {
    int nt = num_threads();
    if (nt > n) nt = int(n);
    if (nt <= 1 || omp_in_parallel()) {
        for (int64_t i = 0; i < n; ++i) f(i);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) f(i);
}

// Splits [0, n) into about `chunks_per_thread * threads` contiguous ranges of at least `grain`
// items and calls f(begin, end) for each.
template <class F>
void parallel_ranges(int64_t n, int64_t grain, F&& f, int chunks_per_thread = 4) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t want = int64_t(num_threads()) * chunks_per_thread;
    int64_t chunk = (n + want - 1) / want;
    if (chunk < grain) chunk = grain;
    int64_t count = (n + chunk - 1) / chunk;
    parallel_for(count, [&](int64_t c) {
        int64_t b = c * chunk;
        int64_t e = b + chunk < n ? b + chunk : n;
        f(b, e);
    });
}

}  // namespace lfm2
