// shortconv on the GPU, the twin of cpu/shortconv.cpp: the gated depthwise causal conv of LFM2's
// conv layers over a ragged batch with a per-sequence state of the last L-1 values of u = B ⊙ x.
//   u_t = B_t ⊙ x_t,  z_t = Σ_j conv_w[:, j] · u_{t-(L-1)+j}  (last tap = current token),
//   out_t = C_t ⊙ z_t; u before a sequence's run comes from state[seq], oldest first.
// Every (token, channel) is independent: earlier u of the same run are recomputed from bcx (the
// same product), so kernel 1 runs a thread per channel over a block of tokens. Kernel 2 then
// writes each run's new state (last L-1 values of state ++ run) from the run's last token, after
// kernel 1 has read the old state. Products and sums are rounded separately in the CPU op's
// order (no fused multiply-add), so out, u_out and the state equal the CPU op's bits.
// Runs must be contiguous (each sequence's tokens together, in order): a sequence found in two
// runs is reported as ValueError at the next synchronization.
#include "common.cuh"
#include "ops.h"
#include "tensor.h"

namespace lfm2::cuda {
namespace {

constexpr int kTokensPerBlock = 32;

// Earlier tokens of t's run, up to L-1 (same seq walking back).
__device__ __forceinline__ int run_back(const int32_t* seq, int64_t t, int32_t s, int lm1) {
    int r = 0;
    while (r < lm1 && t - r - 1 >= 0 && seq[t - r - 1] == s) ++r;
    return r;
}

__global__ void shortconv_out_kernel(float* __restrict__ out, const float* __restrict__ bcx,
                                     const float* __restrict__ conv_w, const float* __restrict__ state,
                                     const int32_t* __restrict__ seq, float* __restrict__ u_out, int64_t T, int64_t D,
                                     int L, int64_t B, DeviceError* err) {
    const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (c >= D) return;
    const int lm1 = L - 1;
    const int64_t t0 = int64_t(blockIdx.y) * kTokensPerBlock, t1 = min(T, t0 + kTokensPerBlock);
    const float* w = conv_w + c * L;
    for (int64_t t = t0; t < t1; ++t) {
        const int32_t s = seq[t];
        if (s < 0 || s >= B) {
            if (c == 0) report_index_error(err, kErrConvSeq, t, s, B);
            continue;
        }
        const float* b = bcx + t * 3 * D;
        const float ut = __fmul_rn(b[c], b[2 * D + c]);
        if (u_out) u_out[t * D + c] = ut;
        const int r = run_back(seq, t, s, lm1);
        const float* st = state + int64_t(s) * lm1 * D;  // [L-1, D], oldest first
        float o = 0.0f;
        for (int j = 0; j < L; ++j) {
            const int back = lm1 - j;  // distance from t of the tap's input
            float u;
            if (back == 0) {
                u = ut;
            } else if (back <= r) {
                const float* bp = bcx + (t - back) * 3 * D;
                u = __fmul_rn(bp[c], bp[2 * D + c]);
            } else {
                u = st[int64_t(lm1 + r - back) * D + c];
            }
            o = j == 0 ? __fmul_rn(w[0], u) : __fadd_rn(o, __fmul_rn(w[j], u));
        }
        out[t * D + c] = __fmul_rn(b[D + c], o);
    }
}

// From the last token t of each run: state[s] <- last L-1 values of (state[s] ++ run).
__global__ void shortconv_state_kernel(float* state, const float* __restrict__ bcx, const int32_t* __restrict__ seq,
                                       int* __restrict__ seen, int64_t T, int64_t D, int L, int64_t B,
                                       DeviceError* err) {
    const int lm1 = L - 1;
    const int64_t n = T * D, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / D, c = i % D;
        const int32_t s = seq[t];
        if (s < 0 || s >= B) continue;  // reported by the out kernel
        if (t + 1 < T && seq[t + 1] == s) continue;  // not the run's last token
        if (c == 0 && atomicAdd(&seen[s], 1) != 0) report_index_error(err, kErrConvRuns, t, s, B);
        const int r = run_back(seq, t, s, lm1);  // run length n = r + 1 when r < L-1
        float* st = state + int64_t(s) * lm1 * D;
        // Ascending k reads index n + k >= k + 1 of the old state before anything there is written.
        for (int k = 0; k < lm1; ++k) {
            const int back = lm1 - 1 - k;
            float v;
            if (back <= r) {
                const float* bp = bcx + (t - back) * 3 * D;
                v = __fmul_rn(bp[c], bp[2 * D + c]);
            } else {
                v = st[int64_t(r + 1 + k) * D + c];
            }
            st[int64_t(k) * D + c] = v;
        }
    }
}

}  // namespace

void shortconv(TensorView out, ConstTensorView bcx, ConstTensorView conv_w, TensorView state, ConstTensorView seq,
               const TensorView* u_out) {
    const char* op = "shortconv";
    const ShortconvDims d = check_shortconv(out, bcx, conv_w, state, seq, u_out, Indices::device);
    const int64_t T = d.T, D = d.D, L = d.L, B = d.B;
    float* uo = u_out ? u_out->ptr<float>() : nullptr;
    LFM2_CHECK(L <= 64, op, "the CUDA kernel handles conv kernels up to L = 64, got ", L);
    LFM2_CHECK(ceil_div<int64_t>(T, kTokensPerBlock) <= 65535, op, "T = ", T, " tokens exceed one launch");
    if (T == 0 || D == 0) return;
    DeviceError* err = device_error_record();
    const dim3 grid(unsigned(ceil_div<int64_t>(D, 128)), unsigned(ceil_div<int64_t>(T, kTokensPerBlock)));
    shortconv_out_kernel<<<grid, 128, 0, stream()>>>(out.ptr<float>(), bcx.ptr<float>(), conv_w.ptr<float>(),
                                                     state.ptr<float>(), seq.ptr<int32_t>(), uo, T, D, int(L), B, err);
    LFM2_CUDA_LAUNCH_CHECK();
    Tensor seen = Tensor::zeros({std::max<int64_t>(B, 1)}, DType::I32);
    shortconv_state_kernel<<<grid_for(T * D, 256), 256, 0, stream()>>>(state.ptr<float>(), bcx.ptr<float>(),
                                                                        seq.ptr<int32_t>(),
                                                                        static_cast<int*>(seen.data()), T, D, int(L),
                                                                        B, err);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace lfm2::cuda
