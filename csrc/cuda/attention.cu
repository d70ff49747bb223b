// attention + kv_write on the GPU, the twins of cpu/attention.cpp: causal (or explicitly masked)
// GQA attention of new queries over a per-sequence KV cache, flash-style with an online softmax.
// A block = (token t, KV head g[, key split]) with one warp per query head of the group, so each
// K/V row is staged in shared memory once for the H/Hkv heads that share it. Keys are visited in
// tiles of 32 (a lane per key for the scores, a lane per head-dim element for the values):
//   m' = max(m, max_i s_i);  l' = l·e^(m-m') + Σ_i e^(s_i-m');  acc' = acc·e^(m-m') + Σ_i e^(s_i-m')·v_i
// When T·Hkv blocks cannot fill the GPU (decode over a long cache), the key range is split over
// blocks and the partial (m, l, acc) are merged in split order by a second kernel
// (flash-decoding); the split depends only on shapes, so it is CUDA-Graph safe.
// Limits of this backend: H/Hkv <= 32 query heads per KV head, Dh <= 256.
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "ops.h"
#include "tensor.h"

namespace lfm2::cuda {
namespace {

constexpr int kKT = 32;  // keys per tile

struct AttnArgs {
    float* out;
    const float* q;
    const float* kc;
    const float* vc;
    const int32_t* seq;
    const int32_t* pos;
    const uint8_t* mask;
    int64_t T, H, Hkv, Smax, B;
    int Dh, G, nsplit;
    int64_t chunk;  // keys per split (a multiple of kKT)
    float scale;
    float* part;  // [T·H, nsplit, Dh] partial acc (nsplit > 1)
    float* ml;    // [T·H, nsplit, 2] partial (m, l)
    DeviceError* err;
};

template <int DPL>  // head-dim elements per lane: Dh <= 32·DPL
__global__ void attention_kernel(AttnArgs a) {
    extern __shared__ float sm[];
    const int G = a.G, Dh = a.Dh;
    float* qs = sm;                   // [G][Dh]
    float* ks = qs + G * Dh;          // [kKT][Dh + 1] (padded: lanes read different rows)
    float* vs = ks + kKT * (Dh + 1);  // [kKT][Dh]
    const int64_t t = int64_t(blockIdx.x) / a.Hkv, g = int64_t(blockIdx.x) % a.Hkv;
    const int sp = blockIdx.y;
    const int h = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t s_seq = a.seq[t], s_pos = a.pos[t];
    const bool seq_ok = s_seq >= 0 && s_seq < a.B, pos_ok = s_pos >= 0 && s_pos < a.Smax;
    if (threadIdx.x == 0 && g == 0 && sp == 0) {
        if (!seq_ok)
            report_index_error(a.err, kErrAttnSeq, t, s_seq, a.B);
        else if (!pos_ok)
            report_index_error(a.err, kErrAttnPos, t, s_pos, a.Smax);
    }
    for (int i = threadIdx.x; i < G * Dh; i += blockDim.x) qs[i] = a.q[(t * a.H + g * G) * Dh + i];
    int64_t n_keys = 0;  // a bad slot sees nothing (zeros)
    if (seq_ok && pos_ok) n_keys = a.mask ? a.Smax : int64_t(s_pos) + 1;
    const int64_t lo = int64_t(sp) * a.chunk, hi = min(n_keys, lo + a.chunk);
    const int64_t cache_off = ((int64_t(seq_ok ? s_seq : 0) * a.Hkv + g) * a.Smax) * Dh;
    const float* kb = a.kc + cache_off;
    const float* vb = a.vc + cache_off;
    const uint8_t* mrow = a.mask ? a.mask + t * a.Smax : nullptr;
    const float* qh = qs + h * Dh;
    float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = 0.0f;
    for (int64_t k0 = lo; k0 < hi; k0 += kKT) {
        const int nk = hi - k0 < kKT ? int(hi - k0) : kKT;
        __syncthreads();  // q is staged / the previous tile is consumed
        for (int i = threadIdx.x; i < nk * Dh; i += blockDim.x) {
            const int r = i / Dh, d = i % Dh;
            ks[r * (Dh + 1) + d] = kb[(k0 + r) * Dh + d];
            vs[r * Dh + d] = vb[(k0 + r) * Dh + d];
        }
        __syncthreads();
        float s = -INFINITY;
        if (lane < nk && (!mrow || mrow[k0 + lane])) {
            const float* kr = ks + lane * (Dh + 1);
            float dot = 0.0f;
            for (int d = 0; d < Dh; ++d) dot = fmaf(qh[d], kr[d], dot);
            s = dot * a.scale;
        }
        const float m_new = fmaxf(m, warp_max(s));
        if (m_new == -INFINITY) continue;  // nothing visible to this head yet (warp-uniform)
        const float corr = expf(m - m_new);  // 0 while m = -inf
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[i] *= corr;
        for (int j = 0; j < nk; ++j) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                const int d = lane + 32 * i;
                if (d < Dh) acc[i] = fmaf(pj, vs[j * Dh + d], acc[i]);
            }
        }
        m = m_new;
    }
    const int64_t row = t * a.H + g * G + h;  // query head row of [T·H, Dh]
    if (a.nsplit == 1) {
        float* o = a.out + row * Dh;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < Dh) o[d] = l > 0.0f ? acc[i] / l : 0.0f;
        }
    } else {
        float* pa = a.part + (row * a.nsplit + sp) * Dh;
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane + 32 * i;
            if (d < Dh) pa[d] = acc[i];
        }
        if (lane == 0) {
            a.ml[(row * a.nsplit + sp) * 2] = m;
            a.ml[(row * a.nsplit + sp) * 2 + 1] = l;
        }
    }
}

// out[row, d] = Σ_s acc_s e^(m_s - M) / Σ_s l_s e^(m_s - M), splits in order; 0 if nothing seen.
__global__ void attention_combine(float* __restrict__ out, const float* __restrict__ part,
                                  const float* __restrict__ ml, int64_t rows, int nsplit, int Dh) {
    const int64_t n = rows * Dh, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t r = i / Dh;
        const int d = int(i % Dh);
        const float* mlr = ml + r * nsplit * 2;
        float M = -INFINITY;
        for (int s = 0; s < nsplit; ++s) M = fmaxf(M, mlr[2 * s]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY) {
            for (int s = 0; s < nsplit; ++s) {
                if (mlr[2 * s] == -INFINITY) continue;
                const float f = expf(mlr[2 * s] - M);
                L += mlr[2 * s + 1] * f;
                A += part[(r * nsplit + s) * Dh + d] * f;
            }
        }
        out[i] = L > 0.0f ? A / L : 0.0f;
    }
}

__global__ void kv_write_kernel(float* __restrict__ kc, float* __restrict__ vc, const float* __restrict__ k,
                                const float* __restrict__ v, const int32_t* __restrict__ seq,
                                const int32_t* __restrict__ pos, int64_t T, int64_t Hkv, int64_t Smax, int64_t Dh,
                                int64_t B, DeviceError* err) {
    const int64_t per_t = Hkv * Dh, n = T * per_t, stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t t = i / per_t, rem = i % per_t, g = rem / Dh, d = rem % Dh;
        const int32_t s = seq[t], p = pos[t];
        if (s < 0 || s >= B) {
            if (rem == 0) report_index_error(err, kErrKvSeq, t, s, B);
            continue;
        }
        if (p < 0 || p >= Smax) {
            if (rem == 0) report_index_error(err, kErrKvPos, t, p, Smax);
            continue;
        }
        const int64_t dst = ((int64_t(s) * Hkv + g) * Smax + p) * Dh + d;
        kc[dst] = k[i];
        vc[dst] = v[i];
    }
}

template <int DPL>
void launch_attention(const AttnArgs& a, size_t smem) {
    if (smem > 48 * 1024)
        CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const dim3 grid(unsigned(a.T * a.Hkv), unsigned(a.nsplit));
    attention_kernel<DPL><<<grid, 32 * a.G, smem, stream()>>>(a);
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace

void kv_write(TensorView k_cache, TensorView v_cache, ConstTensorView k, ConstTensorView v, ConstTensorView seq,
              ConstTensorView pos) {
    const KvWriteDims d = check_kv_write(k_cache, v_cache, k, v, seq, pos, Indices::device);
    const CacheDims c = d.c;
    const int64_t T = d.T;
    if (T == 0 || c.Hkv == 0 || c.Dh == 0) return;
    kv_write_kernel<<<grid_for(T * c.Hkv * c.Dh, 256), 256, 0, stream()>>>(
        k_cache.ptr<float>(), v_cache.ptr<float>(), k.ptr<float>(), v.ptr<float>(), seq.ptr<int32_t>(),
        pos.ptr<int32_t>(), T, c.Hkv, c.Smax, c.Dh, c.B, device_error_record());
    LFM2_CUDA_LAUNCH_CHECK();
}

void attention(TensorView out, ConstTensorView q, ConstTensorView k_cache, ConstTensorView v_cache, ConstTensorView seq,
               ConstTensorView pos, const ConstTensorView* mask) {
    const char* op = "attention";
    const AttentionDims d = check_attention(out, q, k_cache, v_cache, seq, pos, mask, Indices::device);
    const CacheDims c = d.c;
    const int64_t T = d.T, H = d.H, G = d.G;
    const uint8_t* mp = mask ? mask->ptr<uint8_t>() : nullptr;
    LFM2_CHECK(G <= 32, op, "the CUDA kernel handles at most 32 query heads per KV head, got H/Hkv = ", G);
    LFM2_CHECK(c.Dh <= 256, op, "the CUDA kernel handles head dims up to 256, got Dh = ", c.Dh);
    LFM2_CHECK(T * c.Hkv < (int64_t(1) << 31), op, "T * Hkv = ", T * c.Hkv, " blocks exceed the grid limit");
    if (T == 0 || H == 0 || c.Dh == 0) return;

    AttnArgs a{};
    a.out = out.ptr<float>();
    a.q = q.ptr<float>();
    a.kc = k_cache.ptr<float>();
    a.vc = v_cache.ptr<float>();
    a.seq = seq.ptr<int32_t>();
    a.pos = pos.ptr<int32_t>();
    a.mask = mp;
    a.T = T, a.H = H, a.Hkv = c.Hkv, a.Smax = c.Smax, a.B = c.B;
    a.Dh = int(c.Dh), a.G = int(G);
    a.scale = 1.0f / std::sqrt(float(c.Dh));
    a.err = device_error_record();

    // Split the key range over blocks when T·Hkv blocks alone cannot fill the GPU (shape-only).
    const int64_t items = T * c.Hkv, target = 4 * int64_t(multiprocessor_count());
    int64_t nsplit = std::max<int64_t>(1, std::min(ceil_div<int64_t>(target, items), ceil_div<int64_t>(c.Smax, 128)));
    int64_t chunk = ceil_div<int64_t>(ceil_div<int64_t>(std::max<int64_t>(c.Smax, 1), nsplit), kKT) * kKT;
    nsplit = std::max<int64_t>(1, ceil_div<int64_t>(c.Smax, chunk));
    a.nsplit = int(nsplit);
    a.chunk = chunk;
    Tensor part, ml;
    if (nsplit > 1) {
        part = Tensor::empty({T * H, nsplit, c.Dh}, DType::F32);
        ml = Tensor::empty({T * H, nsplit, 2}, DType::F32);
        a.part = static_cast<float*>(part.data());
        a.ml = static_cast<float*>(ml.data());
    }
    const size_t smem = sizeof(float) * size_t(G * c.Dh + kKT * (c.Dh + 1) + kKT * c.Dh);
    if (c.Dh <= 32)
        launch_attention<1>(a, smem);
    else if (c.Dh <= 64)
        launch_attention<2>(a, smem);
    else if (c.Dh <= 128)
        launch_attention<4>(a, smem);
    else
        launch_attention<8>(a, smem);
    if (nsplit > 1) {
        attention_combine<<<grid_for(T * H * c.Dh, 256), 256, 0, stream()>>>(a.out, a.part, a.ml, T * H, a.nsplit,
                                                                             a.Dh);
        LFM2_CUDA_LAUNCH_CHECK();
    }
}

}  // namespace lfm2::cuda
