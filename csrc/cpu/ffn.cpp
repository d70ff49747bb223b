// swiglu: out[T, F] = silu(gate) ⊙ up with gu[T, 2F] = (gate | up), silu(a) = a / (1 + e^-a);
// must match reference.swiglu. The dense MLP is gemm(w13) -> swiglu -> gemm(w2); the experts in
// moe.cpp reuse swiglu_raw. The scalar path uses std::exp; SIMD paths a Cephes-style polynomial
// exp (simd.h), within a few ulp of it. Elementwise, hence row-invariant.
#include <algorithm>

#include "core/threading.h"
#include "kernels.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class S>
struct SwigluRows {
    static LFM2_KERNEL void run(float* out, int64_t ldo, const float* gu, int64_t ldg, int64_t r0, int64_t r1,
                                int64_t F) {
        using V = typename S::F;
        const V one = S::set1(1.0f), zero = S::zero();
        for (int64_t r = r0; r < r1; ++r) {
            const float* g = gu + r * ldg;
            const float* u = g + F;
            float* o = out + r * ldo;
            int64_t f = 0;
            for (; f + S::W <= F; f += S::W) {
                V a = S::load(g + f);
                V s = S::div(a, S::add(one, S::exp(S::sub(zero, a))));
                S::store(o + f, S::mul(s, S::load(u + f)));
            }
            if (f < F) {
                int n = int(F - f);
                V a = S::load_partial(g + f, n);
                V s = S::div(a, S::add(one, S::exp(S::sub(zero, a))));
                S::store_partial(o + f, S::mul(s, S::load_partial(u + f, n)), n);
            }
        }
    }
};

}  // namespace

void swiglu_raw(Isa isa, float* out, int64_t ldo, const float* gu, int64_t ldg, int64_t rows, int64_t F) {
    parallel_ranges(rows, 16 * F,  // exp ~ 16 operations
                    [&](int64_t r0, int64_t r1) { run_kernel<SwigluRows>(isa, out, ldo, gu, ldg, r0, r1, F); });
}

void swiglu(TensorView out, ConstTensorView gu) {
    const SwigluDims d = check_swiglu(out, gu);
    const int64_t T = d.T, F = d.F;
    swiglu_raw(active_isa(), out.ptr<float>(), F, gu.ptr<float>(), 2 * F, T, F);
}

}  // namespace lfm2::cpu
