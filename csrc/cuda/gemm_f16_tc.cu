// FP16 Tensor Core GEMM: f16 weights, f32 activations rounded to f16 as they are loaded, fp32
// accumulation with mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 (sm_80+).
// Two kinds: "skinny" for <= 64 rows (decode, expert groups), which loads fragments straight
// from global memory with 16-byte loads and splits K over the 4 warps of a block (partials summed
// in warp order through shared memory), and "tiled" for prefill (64x64 / 128x128 block tiles,
// k tiles of 32 staged in padded shared memory).
//
// Fragment layout of m16n8k16 (PTX ISA; g = lane / 4, c = lane % 4): A regs {a0..a3} hold
// (row g, k 2c..2c+1), (row g+8, k 2c..), (row g, k 2c+8..), (row g+8, k 2c+8..); B regs {b0, b1}
// hold (k 2c..2c+1, col g), (k 2c+8.., col g); D holds (row g, cols 2c, 2c+1), (row g+8, ...).
// The skinny kind feeds each lane 8 consecutive k (one 16-byte load) by using a fixed
// permutation of k inside every 32-wide chunk, the same for A and B, which leaves the dot
// product unchanged: logical k 2c+{0,1} / 2c+8+{0,1} of step s <-> physical 8c + 4s + {0,1} / {2,3}.
#include "gemm.cuh"

namespace lfm2::cuda {
namespace {

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// 8 f16 weights w[k .. k+8) as 4 packed pairs; zeros where not `ok` or past K.
template <bool VEC>
__device__ __forceinline__ void load_w8(const f16_t* w, int64_t k, int64_t K, bool ok, uint32_t (&o)[4]) {
    if constexpr (VEC) {
        if (ok && k < K) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(w + k));
            o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
        } else {
            o[0] = o[1] = o[2] = o[3] = 0u;
        }
    } else {
        const unsigned short* u = reinterpret_cast<const unsigned short*>(w);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t lo = (ok && k + 2 * i < K) ? __ldg(u + k + 2 * i) : 0u;
            const uint32_t hi = (ok && k + 2 * i + 1 < K) ? __ldg(u + k + 2 * i + 1) : 0u;
            o[i] = lo | (hi << 16);
        }
    }
}

// 8 f32 activations x[k .. k+8) rounded to f16, as 4 packed pairs; zeros where not ok / past K.
template <bool VEC>
__device__ __forceinline__ void load_x8(const float* x, int64_t k, int64_t K, bool ok, uint32_t (&o)[4]) {
    if constexpr (VEC) {
        if (ok && k < K) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(x + k));
            const float4 b = __ldg(reinterpret_cast<const float4*>(x + k + 4));
            o[0] = pack_half2(a.x, a.y), o[1] = pack_half2(a.z, a.w);
            o[2] = pack_half2(b.x, b.y), o[3] = pack_half2(b.z, b.w);
        } else {
            o[0] = o[1] = o[2] = o[3] = 0u;
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float lo = (ok && k + 2 * i < K) ? __ldg(x + k + 2 * i) : 0.0f;
            const float hi = (ok && k + 2 * i + 1 < K) ? __ldg(x + k + 2 * i + 1) : 0.0f;
            o[i] = pack_half2(lo, hi);
        }
    }
}

constexpr int kTsNT = 2;            // skinny: n tiles of 8 per block (16 weight rows)
constexpr int kTsBN = 8 * kTsNT;

template <int MT, bool VEC>
__global__ void __launch_bounds__(128) gemm_tc_skinny(GemmProblem p) {
    __shared__ float red[4][MT * 16][kTsBN + 1];
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, MT * 16, t)) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int n_base = blockIdx.x * kTsBN;
    const f16_t* w = static_cast<const f16_t*>(p.w) + int64_t(t.e) * p.w_estride;
    const f16_t* wr[kTsNT];
    bool wok[kTsNT];
#pragma unroll
    for (int nt = 0; nt < kTsNT; ++nt) {
        const int n = n_base + nt * 8 + g;
        wok[nt] = n < p.N;
        wr[nt] = w + (wok[nt] ? int64_t(n) * p.ldw : 0);
    }
    const float* xr[MT][2];
    bool xok[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = mt * 16 + g + 8 * h;
            xok[mt][h] = r < t.mc;
            xr[mt][h] = p.x + (xok[mt][h] ? gemm_xrow(p, t.r0 + r) * p.ldx : 0);
        }
    float acc[MT][kTsNT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kTsNT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    const int64_t K = p.K;
    for (int64_t k0 = int64_t(warp) * 32; k0 < K; k0 += 4 * 32) {
        const int64_t k = k0 + 8 * c;
        uint32_t b[kTsNT][4];
#pragma unroll
        for (int nt = 0; nt < kTsNT; ++nt) load_w8<VEC>(wr[nt], k, K, wok[nt], b[nt]);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            uint32_t a[2][4];
            load_x8<VEC>(xr[mt][0], k, K, xok[mt][0], a[0]);
            load_x8<VEC>(xr[mt][1], k, K, xok[mt][1], a[1]);
#pragma unroll
            for (int nt = 0; nt < kTsNT; ++nt) {
                mma16816(acc[mt][nt], a[0][0], a[1][0], a[0][1], a[1][1], b[nt][0], b[nt][1]);
                mma16816(acc[mt][nt], a[0][2], a[1][2], a[0][3], a[1][3], b[nt][2], b[nt][3]);
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kTsNT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) red[warp][mt * 16 + g + 8 * (i >> 1)][nt * 8 + 2 * c + (i & 1)] = acc[mt][nt][i];
    __syncthreads();
    for (int i = threadIdx.x; i < MT * 16 * kTsBN; i += blockDim.x) {
        const int r = i / kTsBN, col = i % kTsBN, n = n_base + col;
        if (r >= t.mc || n >= p.N) continue;
        const float s = ((red[0][r][col] + red[1][r][col]) + red[2][r][col]) + red[3][r][col];
        p.out[gemm_orow(p, t.r0 + r) * p.ldo + n] = s;
    }
}

// BM x BN block tile, WM x WN warps, k tiles of 32 halves in padded shared memory.
template <int BM, int BN, int WM, int WN, bool VEC>
__global__ void __launch_bounds__(WM * WN * 32) gemm_tc_tiled(GemmProblem p) {
    constexpr int BK = 32, LDS = BK + 8, THREADS = WM * WN * 32;
    constexpr int WTM = BM / WM, WTN = BN / WN, MT = WTM / 16, NT = WTN / 8;
    __shared__ __align__(16) __half As[BM][LDS];
    __shared__ __align__(16) __half Bs[BN][LDS];
    GemmTile t;
    if (!gemm_tile(p, blockIdx.y, BM, t)) return;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int wm = warp / WN, wn = warp % WN;
    const int n_base = blockIdx.x * BN;
    const f16_t* w = static_cast<const f16_t*>(p.w) + int64_t(t.e) * p.w_estride;
    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    const int64_t K = p.K;
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
        if constexpr (VEC) {
            // A: BM rows x 8 float4; B: BN rows x 4 uint4 (8 halves each).
#pragma unroll
            for (int j = 0; j < BM * 8 / THREADS; ++j) {
                const int idx = tid + j * THREADS, r = idx >> 3, q = idx & 7;
                const int64_t k = k0 + 4 * q;
                float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
                if (r < t.mc && k < K)
                    v = __ldg(reinterpret_cast<const float4*>(p.x + gemm_xrow(p, t.r0 + r) * p.ldx + k));
                uint2 u;
                u.x = pack_half2(v.x, v.y);
                u.y = pack_half2(v.z, v.w);
                *reinterpret_cast<uint2*>(&As[r][4 * q]) = u;
            }
#pragma unroll
            for (int j = 0; j < BN * 4 / THREADS; ++j) {
                const int idx = tid + j * THREADS, r = idx >> 2, q = idx & 3;
                const int64_t k = k0 + 8 * q;
                const int n = n_base + r;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (n < p.N && k < K) v = __ldg(reinterpret_cast<const uint4*>(w + int64_t(n) * p.ldw + k));
                *reinterpret_cast<uint4*>(&Bs[r][8 * q]) = v;
            }
        } else {
            for (int idx = tid; idx < BM * BK; idx += THREADS) {
                const int r = idx / BK, kk = idx % BK;
                const int64_t k = k0 + kk;
                float v = 0.0f;
                if (r < t.mc && k < K) v = __ldg(p.x + gemm_xrow(p, t.r0 + r) * p.ldx + k);
                As[r][kk] = __float2half_rn(v);
            }
            const unsigned short* wu = reinterpret_cast<const unsigned short*>(w);
            for (int idx = tid; idx < BN * BK; idx += THREADS) {
                const int r = idx / BK, kk = idx % BK;
                const int64_t k = k0 + kk;
                const int n = n_base + r;
                unsigned short v = 0;
                if (n < p.N && k < K) v = __ldg(wu + int64_t(n) * p.ldw + k);
                Bs[r][kk] = __ushort_as_half(v);
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a[MT][4], b[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int r = wm * WTM + mt * 16 + g;
                a[mt][0] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 2 * c]);
                a[mt][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 2 * c]);
                a[mt][2] = *reinterpret_cast<const uint32_t*>(&As[r][kk + 2 * c + 8]);
                a[mt][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][kk + 2 * c + 8]);
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int n = wn * WTN + nt * 8 + g;
                b[nt][0] = *reinterpret_cast<const uint32_t*>(&Bs[n][kk + 2 * c]);
                b[nt][1] = *reinterpret_cast<const uint32_t*>(&Bs[n][kk + 2 * c + 8]);
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
                    mma16816(acc[mt][nt], a[mt][0], a[mt][1], a[mt][2], a[mt][3], b[nt][0], b[nt][1]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = wm * WTM + mt * 16 + g + 8 * h;
            if (r >= t.mc) continue;
            float* o = p.out + gemm_orow(p, t.r0 + r) * p.ldo;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int n = n_base + wn * WTN + nt * 8 + 2 * c;
                if (n < p.N) o[n] = acc[mt][nt][2 * h];
                if (n + 1 < p.N) o[n + 1] = acc[mt][nt][2 * h + 1];
            }
        }
}

template <bool VEC>
void launch_vec(GemmKind kind, const GemmProblem& p, unsigned gy) {
    cudaStream_t s = stream();
    switch (kind) {
        case GemmKind::TcSkinny16:
            gemm_tc_skinny<1, VEC><<<dim3(unsigned(ceil_div(p.N, kTsBN)), gy), 128, 0, s>>>(p);
            break;
        case GemmKind::TcSkinny64:
            gemm_tc_skinny<4, VEC><<<dim3(unsigned(ceil_div(p.N, kTsBN)), gy), 128, 0, s>>>(p);
            break;
        case GemmKind::TcTile64:
            gemm_tc_tiled<64, 64, 2, 2, VEC><<<dim3(unsigned(ceil_div(p.N, 64)), gy), 128, 0, s>>>(p);
            break;
        default:
            gemm_tc_tiled<128, 128, 2, 4, VEC><<<dim3(unsigned(ceil_div(p.N, 128)), gy), 256, 0, s>>>(p);
            break;
    }
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace

void launch_gemm_tc(GemmKind kind, const GemmProblem& p, unsigned grid_y) {
    // Vector loads: x rows as float4 pairs (8 floats) and w rows as 16-byte groups of 8 halves.
    const bool vec = vec_ok(p.w, p.ldw, p.w_estride, p.K, 8) && vec_ok(p.x, p.ldx, 0, p.K, 8);
    if (vec)
        launch_vec<true>(kind, p, grid_y);
    else
        launch_vec<false>(kind, p, grid_y);
}

}  // namespace lfm2::cuda
