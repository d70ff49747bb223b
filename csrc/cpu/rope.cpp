// rope: in-place NeoX ("rotate-half") rotary embedding of x[T, H, Dh] at positions[T]; must match
// reference.rope within fp32 rounding. Pairs are (j, j + Dh/2), inv_freq_j = theta^(-2j/Dh).
// Angles and their cos/sin are computed in double per token and rounded to f32 once, exactly as
// the reference does; the rotation itself is elementwise (no fused multiply-add), so every SIMD
// path gives the same bits. Not here: RoPE scaling variants (LFM2 uses none).
#include <cmath>
#include <vector>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

// x[h, :] for h < H of one token, cos / sin [Dh/2].
template <class S>
struct RopeToken {
    static LFM2_KERNEL void run(float* x, int64_t H, int64_t Dh, const float* cs, const float* sn) {
        using F = typename S::F;
        const int64_t half = Dh / 2;
        for (int64_t h = 0; h < H; ++h) {
            float* x1 = x + h * Dh;
            float* x2 = x1 + half;
            int64_t j = 0;
            for (; j + S::W <= half; j += S::W) {
                F a = S::load(x1 + j), b = S::load(x2 + j), c = S::load(cs + j), s = S::load(sn + j);
                S::store(x1 + j, S::sub(S::mul(a, c), S::mul(b, s)));
                S::store(x2 + j, S::add(S::mul(b, c), S::mul(a, s)));
            }
            if (j < half) {
                int n = int(half - j);
                F a = S::load_partial(x1 + j, n), b = S::load_partial(x2 + j, n);
                F c = S::load_partial(cs + j, n), s = S::load_partial(sn + j, n);
                S::store_partial(x1 + j, S::sub(S::mul(a, c), S::mul(b, s)), n);
                S::store_partial(x2 + j, S::add(S::mul(b, c), S::mul(a, s)), n);
            }
        }
    }
};

}  // namespace

void rope(TensorView x, ConstTensorView positions, double theta) {
    const RopeDims d = check_rope(x, positions, theta);
    const int64_t T = d.T, H = d.H, Dh = d.Dh;
    const int64_t half = Dh / 2;
    std::vector<double> inv_freq(static_cast<size_t>(half));
    for (int64_t j = 0; j < half; ++j)
        inv_freq[size_t(j)] = std::pow(theta, -double(j) * 2.0 / double(Dh));  // as reference.rope
    const Isa isa = active_isa();
    float* xp = x.ptr<float>();
    const int32_t* pos = positions.ptr<int32_t>();
    parallel_ranges(T, 3 * H * Dh + 50 * Dh, [&](int64_t t0, int64_t t1) {
        std::vector<float> cs(static_cast<size_t>(2 * half));
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t j = 0; j < half; ++j) {
                double ang = double(pos[t]) * inv_freq[size_t(j)];
                cs[size_t(j)] = float(std::cos(ang));
                cs[size_t(half + j)] = float(std::sin(ang));
            }
            run_kernel<RopeToken>(isa, xp + t * H * Dh, H, Dh, cs.data(), cs.data() + half);
        }
    });
}

}  // namespace lfm2::cpu
