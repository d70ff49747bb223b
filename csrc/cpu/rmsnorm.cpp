// rmsnorm: out[R, D] = w ⊙ x / sqrt(mean(x²) + eps), one row at a time; must match
// reference.rmsnorm. The weight is used as stored (not 1 + w); eps goes inside the sqrt.
// Used for the layer norms (R = T) and the per-head q/k norms (R = T·H, D = Dh).
// Row-invariant: a row's sum of squares is a lane-wise sum in index order + fixed hsum.
// out may alias x exactly (in place): a row is fully read before it is written.
// Overflow: where the float sum of squares of a finite row is +inf (RMS above ~1.8e19), the row is
// rescaled by m = max|x|: den = m * sqrt(mean((x/m)²) + eps/m²) (a scalar pass in index order; the
// CUDA op and reference.rmsnorm take the same branch), so such rows are normalized, not zeroed.
#include <cmath>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

// The denominator of a row whose float sum of squares `ss` overflowed; non-finite rows keep it.
float overflow_den(const float* xr, int64_t D, float ss, float eps) {
    float m = 0.0f;
    for (int64_t d = 0; d < D; ++d) m = std::fmax(m, std::fabs(xr[d]));
    if (!std::isfinite(m) || m == 0.0f) return std::sqrt(ss / float(D) + eps);
    float s = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
        const float v = xr[d] / m;
        s = std::fma(v, v, s);
    }
    return m * std::sqrt(s / float(D) + eps / (m * m));
}

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
            const float ss = S::hsum(acc);
            const float den = std::isinf(ss) ? overflow_den(xr, D, ss, eps) : std::sqrt(ss / float(D) + eps);
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
