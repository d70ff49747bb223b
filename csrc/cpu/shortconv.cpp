// shortconv: the gated depthwise causal conv of LFM2's conv layers over a ragged batch, with a
// per-sequence state of the last L-1 values of u = B ⊙ x. Must equal reference.shortconv applied
// to each sequence's run of tokens (bit-exact: same products, same summation order j = 0..L-1).
//   u_t = B_t ⊙ x_t,  z_t = Σ_j conv_w[:, j] · u_{t-(L-1)+j}  (last tap = current token),
//   out_t = C_t ⊙ z_t; u before the run comes from state[seq], oldest first.
// After the call state[seq] holds the last L-1 values of (old state ++ run), also for runs
// shorter than L-1. Channels are independent, so work is split over channel blocks; a token's
// result depends only on its own sequence. Not here: tree-shaped windows (model.tree_shortconv).
#include <algorithm>
#include <vector>

#include "core/threading.h"
#include "dispatch.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

constexpr int64_t kChannelBlock = 256;

struct Run {
    int64_t seq, t0, t1;
};

// All runs for channels [c0, c1). wt: conv weights transposed to [L, D]. ring: L·kChannelBlock
// floats holding u of the last L positions (index k of "state ++ run" lives in row k mod L).
template <class S>
struct ShortconvBlock {
    static LFM2_KERNEL void run(float* out, const float* bcx, const float* wt, float* state, float* u_out,
                                const Run* runs, int64_t n_runs, int64_t D, int64_t L, int64_t c0, int64_t c1,
                                float* ring) {
        const int64_t nc = c1 - c0, lm1 = L - 1;
        for (int64_t r = 0; r < n_runs; ++r) {
            const Run& run = runs[r];
            float* st = state + run.seq * lm1 * D;  // [L-1, D]
            for (int64_t k = 0; k < lm1; ++k) std::copy(st + k * D + c0, st + k * D + c1, ring + k * nc);
            const int64_t n = run.t1 - run.t0;
            for (int64_t i = 0; i < n; ++i) {
                const int64_t t = run.t0 + i, k = i + lm1;  // k: index in (state ++ run)
                const float* b = bcx + t * 3 * D + c0;
                const float* cg = b + D;
                const float* xs = b + 2 * D;
                float* u = ring + (k % L) * nc;
                for (int64_t c = 0; c < nc; ++c) u[c] = b[c] * xs[c];
                if (u_out) std::copy(u, u + nc, u_out + t * D + c0);
                float* o = out + t * D + c0;
                // z = w0·u_{k-L+1}, then += w_j·u_{k-L+1+j}: the reference's order (it starts from 0).
                const float* u0 = ring + ((k - lm1) % L) * nc;
                const float* w0 = wt + c0;
                for (int64_t c = 0; c < nc; ++c) o[c] = w0[c] * u0[c];
                for (int64_t j = 1; j < L; ++j) {
                    const float* uj = ring + ((k - lm1 + j) % L) * nc;
                    const float* wj = wt + j * D + c0;
                    for (int64_t c = 0; c < nc; ++c) o[c] = o[c] + wj[c] * uj[c];
                }
                for (int64_t c = 0; c < nc; ++c) o[c] = cg[c] * o[c];
            }
            // New state: indices n .. n+L-2 of (state ++ run), all still in the ring.
            for (int64_t k = 0; k < lm1; ++k) {
                const float* src = ring + ((n + k) % L) * nc;
                std::copy(src, src + nc, st + k * D + c0);
            }
        }
    }
};

}  // namespace

void shortconv(TensorView out, ConstTensorView bcx, ConstTensorView conv_w, TensorView state, ConstTensorView seq,
               const TensorView* u_out) {
    const ShortconvDims d = check_shortconv(out, bcx, conv_w, state, seq, u_out, Indices::host);
    const int64_t T = d.T, D = d.D, L = d.L;
    float* uo = u_out ? u_out->ptr<float>() : nullptr;
    // Runs of equal seq (the check saw to it that each sequence owns one run).
    const int32_t* sp = seq.ptr<int32_t>();
    std::vector<Run> runs;
    for (int64_t t = 0; t < T; ++t) {
        if (t > 0 && sp[t] == sp[t - 1])
            runs.back().t1 = t + 1;
        else
            runs.push_back({sp[t], t, t + 1});
    }
    std::vector<float> wt(static_cast<size_t>(L * D));  // [D, L] -> [L, D]
    const float* cw = conv_w.ptr<float>();
    for (int64_t c = 0; c < D; ++c)
        for (int64_t j = 0; j < L; ++j) wt[size_t(j * D + c)] = cw[c * L + j];
    const Isa isa = active_isa();
    float* o = out.ptr<float>();
    const float* bp = bcx.ptr<float>();
    float* stp = state.ptr<float>();
    const int64_t n_blocks = (D + kChannelBlock - 1) / kChannelBlock;
    const int64_t n_runs = int64_t(runs.size());
    parallel_for(
        n_blocks,
        [&](int64_t blk) {
            thread_local std::vector<float> ring;
            ring.resize(size_t(L * kChannelBlock));
            const int64_t c0 = blk * kChannelBlock, c1 = std::min(D, c0 + kChannelBlock);
            run_kernel<ShortconvBlock>(isa, o, bp, wt.data(), stp, uo, runs.data(), n_runs, D, L, c0, c1, ring.data());
        },
        T * D * (L + 2));
}

}  // namespace lfm2::cpu
