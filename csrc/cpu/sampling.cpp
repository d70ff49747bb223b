// argmax: out[t] = first index of the maximum of logits[t, :], NaN counting as the maximum (the
// first NaN wins), exactly as numpy.argmax. Greedy decoding's sampler; rows run in parallel.
// Two passes per row: a SIMD max (order-free, exact) that also spots NaN, then the first lane
// equal to it. Not here: temperature / top-p sampling (python/lfm2engine/sampling.py).
#include <algorithm>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class S>
struct ArgmaxRows {
    static LFM2_KERNEL void run(int32_t* out, const float* logits, int64_t r0, int64_t r1, int64_t V) {
        using F = typename S::F;
        for (int64_t r = r0; r < r1; ++r) {
            const float* x = logits + r * V;
            int64_t v = 0;
            uint32_t nan = 0;
            float best;
            if (V >= S::W) {
                F m = S::load(x);
                for (v = 0; v + S::W <= V; v += S::W) {
                    F a = S::load(x + v);
                    nan |= S::nan_mask(a);
                    m = S::max(m, a);
                }
                best = S::hmax(m);
            } else {
                best = x[0];
            }
            for (; v < V; ++v) {
                nan |= x[v] != x[v];
                best = x[v] > best ? x[v] : best;
            }
            int64_t found = 0;
            if (nan) {
                while (!(x[found] != x[found])) ++found;
            } else {
                for (v = 0; v + S::W <= V; v += S::W) {
                    uint32_t eq = S::eq_mask(S::load(x + v), S::set1(best));
                    if (eq) break;
                }
                while (x[v] != best) ++v;  // the first equal lane is in this vector (or the tail)
                found = v;
            }
            out[r] = int32_t(found);
        }
    }
};

}  // namespace

void argmax(TensorView out, ConstTensorView logits) {
    const ArgmaxDims d = check_argmax(out, logits);
    const int64_t T = d.T, V = d.V;
    const Isa isa = active_isa();
    int32_t* o = out.ptr<int32_t>();
    const float* lp = logits.ptr<float>();
    parallel_ranges(T, V, [&](int64_t r0, int64_t r1) { run_kernel<ArgmaxRows>(isa, o, lp, r0, r1, V); });
}

}  // namespace lfm2::cpu
