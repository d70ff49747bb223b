// Checks csrc/cuda's block-quantized kernels on the CPU (built and run by
// tests/test_cuda_kernels_host.py with common.cuh standing in for CUDA):
//   1. qload8 (quant.cuh) gives core/quant.h's dequant_row values bit for bit at every offset,
//      on random block bytes (NaN / Inf / subnormal scales included);
//   2. every quantized GEMM kind (skinny with 4 and 16 row registers, vector and scalar x loads,
//      64 and 128 tiles), on plain problems and on MoE-style schedules (expert tiles, gathered x
//      rows, scattered out rows, an empty tile slot past n_sched), equals a float64 product with
//      the dequantized weights within fp32 accumulation error.
// Prints one line per case and "failures: N"; exits non-zero on any failure.
#include <cstdio>
#include <random>

#include "gemm_quant_kernels.cuh"

using namespace lfm2;
using namespace lfm2::cuda;
using qgemm::kQNW;
using qgemm::kQRows;
using qgemm::kQWarps;

namespace {

int g_failures = 0;

template <DType QT>
std::vector<uint64_t> random_blocks(int64_t nblocks, std::mt19937& g, bool sane_scales) {
    constexpr int NB = QTraits<QT>::kBytes;
    std::vector<uint64_t> store(size_t(nblocks * NB + 64) / 8);  // 8-byte aligned (q4_k needs 16: new is)
    uint8_t* b = reinterpret_cast<uint8_t*>(store.data());
    for (int64_t i = 0; i < nblocks * NB; ++i) b[i] = uint8_t(g());
    if (sane_scales) {
        std::uniform_real_distribution<float> u(0.001f, 0.05f);
        for (int64_t i = 0; i < nblocks; ++i) {
            auto put = [&](int off) {
                const uint16_t h = f32_to_f16(u(g));
                std::memcpy(b + i * NB + off, &h, 2);
            };
            put(QT == DType::Q6_K ? 208 : 0);
            if (QT == DType::Q4_K) put(2);
        }
    }
    return store;
}

template <DType QT>
void check_qload8(std::mt19937& g) {
    constexpr int B = QTraits<QT>::kBlock;
    const int nblocks = B == 32 ? 256 : 32;
    int bad = 0;
    for (int rep = 0; rep < 20; ++rep) {
        auto store = random_blocks<QT>(nblocks, g, false);
        const uint8_t* row = reinterpret_cast<const uint8_t*>(store.data());
        std::vector<float> want(size_t(nblocks) * B);
        dequant_row(QT, row, want.data(), int64_t(want.size()));
        for (int64_t k = 0; k < int64_t(want.size()); k += 8) {
            float o[8];
            qload8<QT>(row, k, o);
            for (int v = 0; v < 8; ++v) {
                const bool nan_both = std::isnan(o[v]) && std::isnan(want[size_t(k + v)]);
                if (!nan_both && std::memcmp(&o[v], &want[size_t(k + v)], 4) != 0) ++bad;
            }
        }
    }
    std::printf("qload8 %s: %s\n", dtype_name(QT), bad ? "FAIL" : "ok");
    g_failures += bad != 0;
}

// T rows of x [T, K] times E experts' weights [N, K]; sched: MoE-style tiles over shuffled rows.
template <DType QT>
void check_gemm(int T, int N, int K, int E, bool sched, bool misalign, std::mt19937& g) {
    constexpr int B = QTraits<QT>::kBlock;
    auto wstore = random_blocks<QT>(int64_t(E) * N * K / B, g, true);
    const uint8_t* w = reinterpret_cast<const uint8_t*>(wstore.data());
    std::vector<float> W(size_t(E) * N * K);
    for (int64_t r = 0; r < int64_t(E) * N; ++r)
        dequant_row(QT, w + r * (K / B) * QTraits<QT>::kBytes, &W[size_t(r * K)], K);
    std::normal_distribution<float> nd;
    std::vector<float4> xstore(size_t(T) * K / 4 + 2);
    float* x = reinterpret_cast<float*>(xstore.data()) + (misalign ? 1 : 0);  // 16-byte aligned or not
    for (int64_t i = 0; i < int64_t(T) * K; ++i) x[i] = nd(g);
    std::vector<int> xrow(static_cast<size_t>(T)), orow(static_cast<size_t>(T)), expert(static_cast<size_t>(T), 0);
    for (int i = 0; i < T; ++i) xrow[size_t(i)] = orow[size_t(i)] = i;
    if (sched) {
        std::shuffle(xrow.begin(), xrow.end(), g);
        std::shuffle(orow.begin(), orow.end(), g);
    }
    for (int kind = 0; kind < 4; ++kind) {  // skinny MR 4, skinny MR 16, tiled 64, tiled 128
        const int bm = kind < 2 ? 16 : kind == 2 ? 64 : 128;
        if (kind == 0 && T > 4 && !sched) continue;
        std::vector<float> out(size_t(T) * N, NAN);
        GemmProblem p;
        p.x = x;
        p.ldx = K;
        p.w = w;
        p.ldw = K;
        p.w_estride = int64_t(N) * K;
        p.out = out.data();
        p.ldo = N;
        p.M = T;
        p.N = N;
        p.K = K;
        int gy = (T + bm - 1) / bm, ntiles = 0;
        std::vector<int4> tiles;
        if (sched) {  // runs of rows per expert, cut into tiles of at most `cap` rows
            const int cap = kind == 0 ? 4 : bm;
            for (int r = 0, e = 0; r < T; e = (e + 1) % E) {
                const int run = std::min(T - r, 1 + int(g() % unsigned(2 * cap)));
                for (int m0 = 0; m0 < run; m0 += cap) tiles.push_back(make_int4(e, r + m0, std::min(cap, run - m0), 0));
                for (int i = r; i < r + run; ++i) expert[size_t(i)] = e;
                r += run;
            }
            ntiles = int(tiles.size());
            tiles.push_back(make_int4(0, 0, 1, 0));  // a slot past n_sched: must stay unused
            p.sched = tiles.data();
            p.n_sched = &ntiles;
            p.xrow = xrow.data();
            p.orow = orow.data();
            gy = ntiles + 1;
            p.max_rows = kind == 0 ? 4 : 0;
        } else {
            p.max_rows = std::min(T, bm);
        }
        const bool vec = vec_ok(p.x, p.ldx, 0, p.K, 4);
        const dim3 gs(unsigned((N + kQWarps * kQNW - 1) / (kQWarps * kQNW)), unsigned(gy));
        if (kind == 0 && vec) host_launch(gs, 128, [&] { qgemm::gemm_q_skinny<QT, 4, true>(p); });
        if (kind == 0 && !vec) host_launch(gs, 128, [&] { qgemm::gemm_q_skinny<QT, 4, false>(p); });
        if (kind == 1 && vec) host_launch(gs, 128, [&] { qgemm::gemm_q_skinny<QT, kQRows, true>(p); });
        if (kind == 1 && !vec) host_launch(gs, 128, [&] { qgemm::gemm_q_skinny<QT, kQRows, false>(p); });
        const dim3 g64(unsigned((N + 63) / 64), unsigned(gy)), g128(unsigned((N + 127) / 128), unsigned(gy));
        if (kind == 2) host_launch(g64, 256, [&] { qgemm::gemm_q_tiled<QT, 64, 64>(p); });
        if (kind == 3) host_launch(g128, 256, [&] { qgemm::gemm_q_tiled<QT, 128, 128>(p); });
        int bad = 0;
        for (int r = 0; r < T; ++r)
            for (int n = 0; n < N; ++n) {
                const float* wr = &W[size_t((int64_t(expert[size_t(r)]) * N + n) * K)];
                const float* xr = x + int64_t(xrow[size_t(r)]) * K;
                double s = 0, a = 0;
                for (int k = 0; k < K; ++k) s += double(xr[k]) * wr[k], a += std::fabs(double(xr[k]) * wr[k]);
                const double got = out[size_t(orow[size_t(r)]) * N + size_t(n)];
                if (!(std::fabs(got - s) <= 4 * K * 6e-8 * a + 1e-30)) ++bad;  // |err| <= K u sum|x w|, 4x margin
            }
        std::printf("gemm %s kind %d T=%d N=%d K=%d E=%d sched=%d vec=%d: %s\n", dtype_name(QT), kind, T, N, K, E,
                    int(sched), int(vec), bad ? "FAIL" : "ok");
        g_failures += bad != 0;
    }
}

template <DType QT>
void check_type(std::mt19937& g) {
    constexpr int B = QTraits<QT>::kBlock;
    check_qload8<QT>(g);
    check_gemm<QT>(1, 37, 3 * B, 1, false, false, g);
    check_gemm<QT>(3, 21, (B == 32 ? 9 : 2) * B, 1, false, true, g);
    check_gemm<QT>(7, 50, 3 * B, 1, false, false, g);
    check_gemm<QT>(70, 130, (B == 32 ? 11 : 1) * B, 1, false, false, g);
    check_gemm<QT>(30, 40, B == 32 ? 64 : 256, 3, true, false, g);
}

}  // namespace

int main() {
    std::mt19937 g(5);
    check_type<DType::Q8_0>(g);
    check_type<DType::Q4_0>(g);
    check_type<DType::Q4_K>(g);
    check_type<DType::Q6_K>(g);
    std::printf("failures: %d\n", g_failures);
    return g_failures != 0;
}
