// MoE: moe_route (sigmoid top-K router), moe_expert_rows (grouped expert FFN on (row, expert)
// pairs: the building block of EP/TP execution) and moe_experts (route-weighted combine in slot
// order). Must match reference.moe_route / reference.moe_experts (and tests/numpy_ops).
// Expert rows are grouped by expert with a stable counting sort; each expert's rows are gathered
// and run as one GEMM (w13) -> swiglu -> one GEMM (w2), so each expert's weights are streamed
// once per call. Every row's value is independent of which other rows share its expert (gemm is
// row-invariant, swiglu elementwise), so results do not depend on the batch or the split.
// Not here: communication (parallel/ dispatch & combine), shared experts (LFM2 has none).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/threading.h"
#include "kernels.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

struct ExpertWeights {
    const char* w13;  // [E, 2Fe, D]
    const char* w2;   // [E, D, Fe]
    DType dt13, dt2;
    int64_t E, D, Fe;
    int64_t bytes13, bytes2;  // per expert
};

ExpertWeights expert_weights(const ExpertDims& e, ConstTensorView w13, ConstTensorView w2) {
    ExpertWeights ew;
    ew.w13 = static_cast<const char*>(w13.data);
    ew.w2 = static_cast<const char*>(w2.data);
    ew.dt13 = w13.dtype;
    ew.dt2 = w2.dtype;
    ew.E = e.E;
    ew.D = e.D;
    ew.Fe = e.Fe;
    ew.bytes13 = dtype_bytes(w13.dtype, 2 * e.Fe * e.D);
    ew.bytes2 = dtype_bytes(w2.dtype, e.D * e.Fe);
    return ew;
}

// out[n] = expert_{eid[n]}(x[src[n]]) for n < N (0 where eid[n] < 0); out rows [N, D].
void expert_rows(Isa isa, const float* x, const int64_t* src, const int32_t* eid, int64_t N, float* out,
                 const ExpertWeights& ew) {
    const int64_t E = ew.E, D = ew.D, Fe = ew.Fe;
    std::vector<int64_t> start(static_cast<size_t>(E + 1), 0);
    for (int64_t n = 0; n < N; ++n)
        if (eid[n] >= 0) ++start[size_t(eid[n]) + 1];
    for (int64_t e = 0; e < E; ++e) start[size_t(e + 1)] += start[size_t(e)];
    std::vector<int64_t> order(static_cast<size_t>(start[size_t(E)]));
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    int64_t max_rows = 0;
    for (int64_t e = 0; e < E; ++e) max_rows = std::max(max_rows, start[size_t(e + 1)] - start[size_t(e)]);
    for (int64_t n = 0; n < N; ++n) {
        if (eid[n] >= 0)
            order[size_t(fill[size_t(eid[n])]++)] = n;
        else
            std::memset(out + n * D, 0, sizeof(float) * size_t(D));
    }
    // After this: order[start[e] .. start[e+1]) = rows of expert e, ascending.
    // Experts run in parallel (their GEMMs then run inline on one thread each); every expert
    // has its own slice of the scratch, at row offset start[e]. A row's value does not depend on
    // which thread ran its expert (gemm and swiglu are thread-invariant).
    const int64_t rows = start[size_t(E)];
    thread_local std::vector<float> xg_buf, h_buf, a_buf, y_buf;
    float* const xg = scratch(xg_buf, rows * D);
    float* const h = scratch(h_buf, rows * 2 * Fe);
    float* const a = scratch(a_buf, rows * Fe);
    float* const y = scratch(y_buf, rows * D);
    const size_t row_bytes = sizeof(float) * size_t(D);
    std::vector<int32_t> used;
    for (int64_t e = 0; e < E; ++e)
        if (start[size_t(e + 1)] > start[size_t(e)]) used.push_back(int32_t(e));
    // Few experts with many rows each: parallel inside each expert's GEMMs instead.
    const bool per_expert = int64_t(used.size()) >= 2 * int64_t(num_threads()) || max_rows * 4 <= rows;
    auto run_expert = [&](int64_t e) {
        const int64_t r0 = start[size_t(e)], ne = start[size_t(e + 1)] - r0;
        float* xe = xg + r0 * D;
        float* he = h + r0 * 2 * Fe;
        float* ae = a + r0 * Fe;
        float* ye = y + r0 * D;
        for (int64_t i = 0; i < ne; ++i) std::memcpy(xe + i * D, x + src[order[size_t(r0 + i)]] * D, row_bytes);
        gemm_raw(isa, xe, D, ew.w13 + e * ew.bytes13, ew.dt13, D, he, 2 * Fe, ne, 2 * Fe, D);
        swiglu_raw(isa, ae, Fe, he, 2 * Fe, ne, Fe);
        gemm_raw(isa, ae, Fe, ew.w2 + e * ew.bytes2, ew.dt2, Fe, ye, D, ne, D, Fe);
        for (int64_t i = 0; i < ne; ++i) std::memcpy(out + order[size_t(r0 + i)] * D, ye + i * D, row_bytes);
    };
    if (per_expert)
        parallel_for(
            int64_t(used.size()), [&](int64_t j) { run_expert(used[size_t(j)]); }, rows * 3 * Fe * D,
            min_parallel_gemm());
    else
        for (int32_t e : used) run_expert(e);
    for (auto* b : {&xg_buf, &h_buf, &a_buf, &y_buf}) trim_scratch(*b);
}

}  // namespace

void moe_route(TensorView ids_out, TensorView w_out, ConstTensorView logits, const ConstTensorView* bias,
               bool norm_topk, double scale) {
    const RouteDims d = check_moe_route(ids_out, w_out, logits, bias);
    const int64_t T = d.T, E = d.E, K = d.K;
    const float* bp = bias ? bias->ptr<float>() : nullptr;
    const float* lp = logits.ptr<float>();
    int32_t* ip = ids_out.ptr<int32_t>();
    float* wp = w_out.ptr<float>();
    // Double precision, as the reference: selection compares sigmoid + bias in double.
    parallel_ranges(T, 64 * E, [&](int64_t t0, int64_t t1) {  // a double exp + compare ~ 64 operations
        std::vector<double> s(static_cast<size_t>(E)), sel(static_cast<size_t>(E)), w(static_cast<size_t>(K));
        std::vector<char> taken(static_cast<size_t>(E));
        for (int64_t t = t0; t < t1; ++t) {
            for (int64_t e = 0; e < E; ++e) {
                s[size_t(e)] = 1.0 / (1.0 + std::exp(-double(lp[t * E + e])));
                sel[size_t(e)] = s[size_t(e)] + (bp ? double(bp[e]) : 0.0);
                taken[size_t(e)] = 0;
            }
            // K rounds of "largest remaining, lowest id on ties" (= stable argsort of -sel; NaN last).
            for (int64_t j = 0; j < K; ++j) {
                int64_t best = -1;
                for (int64_t e = 0; e < E; ++e) {
                    if (taken[size_t(e)]) continue;
                    if (best < 0 || sel[size_t(e)] > sel[size_t(best)] ||
                        (std::isnan(sel[size_t(best)]) && !std::isnan(sel[size_t(e)])))
                        best = e;
                }
                taken[size_t(best)] = 1;
                ip[t * K + j] = int32_t(best);
                w[size_t(j)] = s[size_t(best)];
            }
            double sum = 0.0;
            for (int64_t j = 0; j < K; ++j) sum += w[size_t(j)];
            for (int64_t j = 0; j < K; ++j) {
                double v = norm_topk ? w[size_t(j)] / (sum + 1e-6) : w[size_t(j)];
                wp[t * K + j] = float(v * scale);
            }
        }
    });
}

void moe_expert_rows(TensorView out, ConstTensorView x, ConstTensorView eids, ConstTensorView w13, ConstTensorView w2) {
    const ExpertRowsDims d = check_moe_expert_rows(out, x, eids, w13, w2, Indices::host);
    const int64_t N = d.N;
    const ExpertWeights ew = expert_weights(d.e, w13, w2);
    const int32_t* ep = eids.ptr<int32_t>();
    std::vector<int64_t> src(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) src[size_t(n)] = n;
    expert_rows(active_isa(), x.ptr<float>(), src.data(), ep, N, out.ptr<float>(), ew);
}

void moe_experts(TensorView out, ConstTensorView x, ConstTensorView ids, ConstTensorView w, ConstTensorView w13,
                 ConstTensorView w2) {
    const ExpertsDims d = check_moe_experts(out, x, ids, w, w13, w2, Indices::host);
    const int64_t T = d.T, K = d.K, D = d.e.D;
    const ExpertWeights ew = expert_weights(d.e, w13, w2);
    const int32_t* ip = ids.ptr<int32_t>();
    // Rows r = t·K + j of (token, slot) pairs; x row r / K. out may be x: x is fully consumed
    // before the combine writes out.
    std::vector<int64_t> src(static_cast<size_t>(T * K));
    for (int64_t r = 0; r < T * K; ++r) src[size_t(r)] = r / std::max<int64_t>(K, 1);
    thread_local std::vector<float> rows_buf;
    float* const rows = scratch(rows_buf, T * K * D);
    expert_rows(active_isa(), x.ptr<float>(), src.data(), ip, T * K, rows, ew);
    // Combine: acc = 0; acc += w[t, j] · rows[t, j] for j in slot order, skipping ids < 0.
    const float* wp = w.ptr<float>();
    float* o = out.ptr<float>();
    parallel_ranges(T, K * D, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* ot = o + t * D;
            std::fill(ot, ot + D, 0.0f);
            for (int64_t j = 0; j < K; ++j) {
                if (ip[t * K + j] < 0) continue;
                const float wj = wp[t * K + j];
                const float* yr = rows + (t * K + j) * D;
                for (int64_t d = 0; d < D; ++d) ot[d] = ot[d] + wj * yr[d];
            }
        }
    });
    trim_scratch(rows_buf);
}

}  // namespace lfm2::cpu
