// MoE on the GPU, the twins of cpu/moe.cpp: moe_route (sigmoid top-K router), moe_expert_rows
// (grouped expert FFN on (row, expert) pairs) and moe_experts (route-weighted combine in slot
// order). Everything stays on the device, with no host round trip, so it can be graph-captured:
//   1. plan (one block): count rows per expert, give each row a slot in expert-sorted order, and
//      write a tile schedule per GEMM kind: tiles (e, r0, rows) of at most BM rows of one expert.
//   2. grouped GEMM 1 (gemm.cuh): h[r] = x[src(r)] · w13[e]ᵀ over the sorted rows.
//   3. swiglu(h) -> a;  4. grouped GEMM 2: out[row(r)] = a[r] · w2[e]ᵀ, scattered back.
//   5. (moe_experts) combine: out[t] = Σ_j w[t, j] · rows[t·K + j], slot order, separate roundings.
// The order of rows inside an expert's group may vary between runs (atomic slots), but no row's
// value depends on it (gemm.cuh); the GEMM kinds and grids depend only on shapes.
#include <algorithm>
#include <cmath>

#include "gemm.cuh"
#include "ops.h"
#include "tensor.h"

namespace lfm2::cuda {

void swiglu_raw(float* out, const float* gu, int64_t rows, int64_t F);  // ffn.cu

namespace {

// ----------------------------------------------------------------------------- router

// a beats b in "largest remaining score, lowest id on ties, NaN last"; e < 0 = nothing yet.
__device__ __forceinline__ bool route_better(double va, int ea, double vb, int eb) {
    if (ea < 0) return false;
    if (eb < 0) return true;
    const bool na = va != va, nb = vb != vb;
    if (na != nb) return nb;
    if (!na && va != vb) return va > vb;
    return ea < eb;
}

__device__ __forceinline__ double route_sigmoid(float logit) {
    return 1.0 / (1.0 + exp(-double(logit)));
}

// A warp per token; lane l owns experts l, l + 32, ... (bit i of `taken` = expert l + 32 i).
__global__ void moe_route_kernel(int32_t* __restrict__ ids, float* __restrict__ wout, const float* __restrict__ logits,
                                 const float* __restrict__ bias, int64_t T, int E, int K, bool norm_topk,
                                 double scale) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = int64_t(gridDim.x) * (blockDim.x >> 5);
    for (int64_t t = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); t < T; t += warps) {
        const float* lt = logits + t * E;
        unsigned long long taken = 0ull;
        for (int j = 0; j < K; ++j) {
            double bv = 0.0;
            int be = -1;
            for (int i = 0; lane + 32 * i < E; ++i) {
                if ((taken >> i) & 1ull) continue;
                const int e = lane + 32 * i;
                const double v = route_sigmoid(lt[e]) + (bias ? double(bias[e]) : 0.0);
                if (route_better(v, e, bv, be)) bv = v, be = e;
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const double ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oe = __shfl_xor_sync(0xffffffffu, be, o);
                if (route_better(ov, oe, bv, be)) bv = ov, be = oe;
            }
            // Every lane now holds the same winner (a strict total order over distinct ids).
            if (be % 32 == lane) taken |= 1ull << (be / 32);
            if (lane == 0) ids[t * K + j] = be;
        }
        if (lane == 0) {
            double sum = 0.0;
            for (int j = 0; j < K; ++j) sum += route_sigmoid(lt[ids[t * K + j]]);
            for (int j = 0; j < K; ++j) {
                const double s = route_sigmoid(lt[ids[t * K + j]]);
                const double v = norm_topk ? s / (sum + 1e-6) : s;
                wout[t * K + j] = float(v * scale);
            }
        }
    }
}

// ----------------------------------------------------------------------------- plan

struct Plan {
    int* order;   // [N] sorted slot -> original row n
    int* xsrc;    // [N] sorted slot -> x row (n / xdiv)
    int4* sched1;  // tiles of bm1 rows
    int4* sched2;  // tiles of bm2 rows
    int* counts;   // [2] number of tiles in sched1, sched2
};

// One block. Shared memory: cnt[E], start[E], cursor[E].
__global__ void moe_plan_kernel(const int32_t* __restrict__ eid, int N, int E, int xdiv, int bm1, int bm2, Plan plan,
                                int err_code, DeviceError* err) {
    extern __shared__ int sh[];
    int* cnt = sh;
    int* start = sh + E;
    int* cursor = sh + 2 * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) cnt[e] = 0, cursor[e] = 0;
    __syncthreads();
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const int e = eid[n];
        if (e >= E) {
            report_index_error(err, err_code, n, e, E);
            continue;
        }
        if (e >= 0) atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0, n1 = 0, n2 = 0;
        for (int e = 0; e < E; ++e) {
            start[e] = run;
            for (int m0 = 0; m0 < cnt[e]; m0 += bm1) plan.sched1[n1++] = make_int4(e, run + m0, min(bm1, cnt[e] - m0), 0);
            for (int m0 = 0; m0 < cnt[e]; m0 += bm2) plan.sched2[n2++] = make_int4(e, run + m0, min(bm2, cnt[e] - m0), 0);
            run += cnt[e];
        }
        plan.counts[0] = n1;
        plan.counts[1] = n2;
    }
    __syncthreads();
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const int e = eid[n];
        if (e < 0 || e >= E) continue;
        const int slot = start[e] + atomicAdd(&cursor[e], 1);
        plan.order[slot] = n;
        plan.xsrc[slot] = n / xdiv;
    }
}

// out[t, :] = Σ_j w[t, j] · rows[t·K + j, :] over valid ids, in slot order, separately rounded.
__global__ void moe_combine_kernel(float* __restrict__ out, const float* __restrict__ rows,
                                   const int32_t* __restrict__ ids, const float* __restrict__ w, int64_t T, int K,
                                   int64_t D, int E) {
    const int64_t n = T * D, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / D, d = i % D;
        float acc = 0.0f;
        for (int j = 0; j < K; ++j) {
            const int e = ids[t * K + j];
            if (e < 0 || e >= E) continue;
            acc = __fadd_rn(acc, __fmul_rn(w[t * K + j], rows[(t * K + j) * D + d]));
        }
        out[i] = acc;
    }
}

// ----------------------------------------------------------------------------- host side

struct ExpertWeights {
    const void* w13;
    const void* w2;
    DType dt13, dt2;
    int64_t E, D, Fe;
};

ExpertWeights expert_weights(const ExpertDims& e, ConstTensorView w13, ConstTensorView w2) {
    return {w13.data, w2.data, w13.dtype, w2.dtype, e.E, e.D, e.Fe};
}

// out[orow(r)] = expert_{e(r)}(x[src(r)]) for the N (row, expert) pairs of eid (ids < 0 skipped);
// out rows [*, D]. xdiv: x row = pair index / xdiv.
void expert_pairs(const char* op, int err_code, const float* x, const int32_t* eid, int64_t N, int xdiv, float* out,
                  const ExpertWeights& ew) {
    const int64_t E = ew.E, D = ew.D, Fe = ew.Fe;
    LFM2_CHECK(N < (int64_t(1) << 31) && 2 * Fe < (int64_t(1) << 31) && D < (int64_t(1) << 31), op,
               "sizes must fit int32");
    LFM2_CHECK(E <= 4096, op, "the CUDA planner handles at most 4096 experts, got E = ", E);
    if (N == 0 || E == 0) return;
    const int64_t problems = std::min(E, N), rows_hint = ceil_div(N, problems);
    const GemmKind k1 = choose_gemm(ew.dt13, rows_hint, 2 * Fe, problems);
    const GemmKind k2 = choose_gemm(ew.dt2, rows_hint, D, problems);
    const int bm1 = gemm_rows_per_tile(k1), bm2 = gemm_rows_per_tile(k2);
    // Tiles never exceed floor(N / BM) + (experts used) nor N.
    const int64_t y1 = std::min(N, N / bm1 + problems), y2 = std::min(N, N / bm2 + problems);

    Tensor order = Tensor::empty({N}, DType::I32), xsrc = Tensor::empty({N}, DType::I32);
    Tensor s1 = Tensor::empty({y1, 4}, DType::I32), s2 = Tensor::empty({y2, 4}, DType::I32);
    Tensor counts = Tensor::empty({2}, DType::I32);
    Plan plan{static_cast<int*>(order.data()), static_cast<int*>(xsrc.data()), static_cast<int4*>(s1.data()),
              static_cast<int4*>(s2.data()), static_cast<int*>(counts.data())};
    moe_plan_kernel<<<1, 1024, sizeof(int) * 3 * size_t(E), stream()>>>(eid, int(N), int(E), xdiv, bm1, bm2, plan,
                                                                        err_code, device_error_record());
    LFM2_CUDA_LAUNCH_CHECK();

    Tensor h = Tensor::empty({N, 2 * Fe}, DType::F32), a = Tensor::empty({N, Fe}, DType::F32);
    GemmProblem p1;
    p1.x = x;
    p1.ldx = D;
    p1.w = ew.w13;
    p1.ldw = D;
    p1.w_estride = 2 * Fe * D;
    p1.out = static_cast<float*>(h.data());
    p1.ldo = 2 * Fe;
    p1.N = int(2 * Fe);
    p1.K = int(D);
    p1.xrow = plan.xsrc;
    p1.sched = plan.sched1;
    p1.n_sched = plan.counts;
    p1.max_rows = int(std::min<int64_t>(N, bm1));
    launch_gemm(k1, ew.dt13, p1, y1);
    // Rows past the valid count hold garbage that nothing reads.
    swiglu_raw(static_cast<float*>(a.data()), static_cast<const float*>(h.data()), N, Fe);
    GemmProblem p2;
    p2.x = static_cast<const float*>(a.data());
    p2.ldx = Fe;
    p2.w = ew.w2;
    p2.ldw = Fe;
    p2.w_estride = D * Fe;
    p2.out = out;
    p2.ldo = D;
    p2.N = int(D);
    p2.K = int(Fe);
    p2.orow = plan.order;
    p2.sched = plan.sched2;
    p2.n_sched = plan.counts + 1;
    p2.max_rows = int(std::min<int64_t>(N, bm2));
    if (Fe == 0) {
        CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(N * D) * sizeof(float), stream()));
        return;
    }
    launch_gemm(k2, ew.dt2, p2, y2);
}

}  // namespace

void moe_route(TensorView ids_out, TensorView w_out, ConstTensorView logits, const ConstTensorView* bias,
               bool norm_topk, double scale) {
    const char* op = "moe_route";
    const RouteDims d = check_moe_route(ids_out, w_out, logits, bias);
    const int64_t T = d.T, E = d.E, K = d.K;
    const float* bp = bias ? bias->ptr<float>() : nullptr;
    LFM2_CHECK(E <= 2048, op, "the CUDA router handles at most 2048 experts, got E = ", E);
    if (T == 0) return;
    moe_route_kernel<<<grid_for(T, 8, 65535), 256, 0, stream()>>>(ids_out.ptr<int32_t>(), w_out.ptr<float>(),
                                                                   logits.ptr<float>(), bp, T, int(E), int(K),
                                                                   norm_topk, scale);
    LFM2_CUDA_LAUNCH_CHECK();
}

void moe_expert_rows(TensorView out, ConstTensorView x, ConstTensorView eids, ConstTensorView w13, ConstTensorView w2) {
    const char* op = "moe_expert_rows";
    const ExpertRowsDims d = check_moe_expert_rows(out, x, eids, w13, w2, Indices::device);
    const int64_t N = d.N, D = d.e.D;
    const ExpertWeights ew = expert_weights(d.e, w13, w2);
    if (N == 0 || D == 0) return;
    // Rows with eids < 0 (or bad ids) stay 0: GEMM 2 scatters only the valid rows.
    CUDA_CHECK(cudaMemsetAsync(out.data, 0, size_t(N * D) * sizeof(float), stream()));
    expert_pairs(op, kErrMoeRowsExpert, x.ptr<float>(), eids.ptr<int32_t>(), N, 1, out.ptr<float>(), ew);
}

void moe_experts(TensorView out, ConstTensorView x, ConstTensorView ids, ConstTensorView w, ConstTensorView w13,
                 ConstTensorView w2) {
    const char* op = "moe_experts";
    const ExpertsDims d = check_moe_experts(out, x, ids, w, w13, w2, Indices::device);
    const int64_t T = d.T, K = d.K, D = d.e.D;
    const ExpertWeights ew = expert_weights(d.e, w13, w2);
    if (T == 0 || D == 0) return;
    if (K == 0) {
        CUDA_CHECK(cudaMemsetAsync(out.data, 0, size_t(T * D) * sizeof(float), stream()));
        return;
    }
    // out may be x: x is fully consumed by GEMM 1 before the combine writes out (stream order).
    Tensor rows = Tensor::empty({T * K, D}, DType::F32);
    expert_pairs(op, kErrMoeExpert, x.ptr<float>(), ids.ptr<int32_t>(), T * K, int(K), static_cast<float*>(rows.data()),
                 ew);
    moe_combine_kernel<<<grid_for(T * D, 256), 256, 0, stream()>>>(out.ptr<float>(),
                                                                   static_cast<const float*>(rows.data()),
                                                                   ids.ptr<int32_t>(), w.ptr<float>(), T, int(K), D,
                                                                   int(ew.E));
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
