// rmsnorm: out[R, D] = w ⊙ x / sqrt(mean(x²) + eps), one row at a time; must match
// reference.rmsnorm. The weight is used as stored (not 1 + w); eps goes inside the sqrt.
// Used for the layer norms (R = T) and the per-head q/k norms (R = T·H, D = Dh).
// Row-invariant: a row's sum of squares is a lane-wise sum in index order + fixed hsum.
// out may alias x exactly (in place): a row is fully read before it is written.
#include <cmath>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class S>
struct RmsnormRows {
    static LFM2_KERNEL void run(float* out, const float* x, const float* w, int64_t r0, int64_t r1, int64_t D,
                                float eps) {
        using F = typename S::F;
        for (int64_t r = r0; r < r1; ++r) {
            const float* xr = x + r * D;
            float* o = out + r * D;
            F acc = S::zero();
            int64_t d = 0;
            for (; d + S::W <= D; d += S::W) {
                F v = S::load(xr + d);
                acc = S::fmadd(v, v, acc);
            }
            if (d < D) {
                F v = S::load_partial(xr + d, int(D - d));
                acc = S::fmadd(v, v, acc);
            }
            float den = std::sqrt(S::hsum(acc) / float(D) + eps);
            F dv = S::set1(den);
            for (d = 0; d + S::W <= D; d += S::W) S::store(o + d, S::mul(S::div(S::load(xr + d), dv), S::load(w + d)));
            if (d < D) {
                int n = int(D - d);
                S::store_partial(o + d, S::mul(S::div(S::load_partial(xr + d, n), dv), S::load_partial(w + d, n)), n);
            }
        }
    }
};

}  // namespace

void rmsnorm(TensorView out, ConstTensorView x, ConstTensorView w, float eps) {
    const RowDims d = check_rmsnorm(out, x, w, eps);
    const int64_t R = d.R, D = d.D;
    const Isa isa = active_isa();
    float* o = out.ptr<float>();
    const float* xp = x.ptr<float>();
    const float* wp = w.ptr<float>();
    parallel_ranges(R, 3 * D, [&](int64_t r0, int64_t r1) { run_kernel<RmsnormRows>(isa, o, xp, wp, r0, r1, D, eps); });
}

}  // namespace lfm2::cpu
