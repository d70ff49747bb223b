// gemm: out[T, N] = x[T, K] · w[N, K]ᵀ on the GPU, the twin of cpu/gemm.cpp. Checks as the CPU
// op, then picks a kernel kind by weight dtype and shape (gemm.cuh): f16 weights always take the
// Tensor Core kinds (fp16-rounded activations, fp32 accumulation); f32 / bf16 the CUDA-core kinds;
// block-quantized weights (q8_0, q4_0, q4_k, q6_k) the quantized CUDA-core kinds (dequantized in
// the kernel, fp32 activations and accumulation: gemm_quant.cu). Few rows (decode) -> skinny
// kinds that stream the weights once at memory bandwidth; many rows -> shared-memory tiled kinds,
// 128-wide tiles when they still fill the GPU twice over.
#include <algorithm>

#include "gemm.cuh"
#include "ops.h"

namespace lfm2::cuda {

int gemm_rows_per_tile(GemmKind k) {
    switch (k) {
        case GemmKind::SimtSkinny:
        case GemmKind::TcSkinny16:
        case GemmKind::QSkinny:
            return 16;
        case GemmKind::TcSkinny64:
        case GemmKind::SimtTile64:
        case GemmKind::TcTile64:
        case GemmKind::QTile64:
            return 64;
        default:
            return 128;
    }
}

GemmKind choose_gemm(DType wdt, int64_t rows, int64_t N, int64_t problems) {
    const int64_t want_blocks = 2 * int64_t(multiprocessor_count());
    const int64_t blocks128 = ceil_div<int64_t>(rows, 128) * ceil_div<int64_t>(N, 128) * problems;
    if (wdt == DType::F16) {
        if (rows <= 16) return GemmKind::TcSkinny16;
        if (rows <= 64) return GemmKind::TcSkinny64;
        return blocks128 >= want_blocks ? GemmKind::TcTile128 : GemmKind::TcTile64;
    }
    if (is_quantized(wdt)) {
        if (rows <= 16) return GemmKind::QSkinny;
        return blocks128 >= want_blocks ? GemmKind::QTile128 : GemmKind::QTile64;
    }
    if (rows <= 16) return GemmKind::SimtSkinny;
    return blocks128 >= want_blocks ? GemmKind::SimtTile128 : GemmKind::SimtTile64;
}

void launch_gemm(GemmKind kind, DType wdt, const GemmProblem& p, int64_t grid_y) {
    if (p.N <= 0 || grid_y <= 0) return;
    const bool tc = kind == GemmKind::TcSkinny16 || kind == GemmKind::TcSkinny64 || kind == GemmKind::TcTile64 ||
                    kind == GemmKind::TcTile128;
    const bool q = kind == GemmKind::QSkinny || kind == GemmKind::QTile64 || kind == GemmKind::QTile128;
    LFM2_CHECK(!tc || wdt == DType::F16, "gemm", "internal: Tensor Core kind chosen for ", dtype_name(wdt),
               " weights");
    LFM2_CHECK(q == is_quantized(wdt), "gemm", "internal: kernel kind does not fit ", dtype_name(wdt), " weights");
    auto run = [&](const GemmProblem& pp, unsigned gy) {
        if (tc)
            launch_gemm_tc(kind, pp, gy);
        else if (q)
            launch_gemm_quant(kind, wdt, pp, gy);
        else
            launch_gemm_simt(kind, wdt, pp, gy);
    };
    constexpr int64_t kMaxGridY = 65535;
    if (p.sched) {
        LFM2_CHECK(grid_y <= kMaxGridY, "gemm", "too many expert tiles (", grid_y, ") for one launch");
        run(p, unsigned(grid_y));
        return;
    }
    // Plain problem: chunks of at most kMaxGridY tiles of rows.
    const int64_t bm = gemm_rows_per_tile(kind), chunk_rows = kMaxGridY * bm;
    for (int64_t m0 = 0; m0 < p.M; m0 += chunk_rows) {
        GemmProblem sub = p;
        sub.max_rows = int(std::min<int64_t>(bm, p.M - m0));
        sub.x = p.x + m0 * p.ldx;
        sub.out = p.out + m0 * p.ldo;
        sub.M = int(std::min<int64_t>(chunk_rows, p.M - m0));
        const unsigned gy = unsigned(ceil_div<int64_t>(sub.M, bm));
        run(sub, gy);
    }
}

void gemm(TensorView out, ConstTensorView x, ConstTensorView w) {
    const char* op = "gemm";
    const GemmDims d = check_gemm(out, x, w);
    const int64_t T = d.T, N = d.N, K = d.K;
    LFM2_CHECK(T < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31), op,
               "sizes must fit int32 (T = ", T, ", N = ", N, ", K = ", K, ")");
    if (T == 0 || N == 0) return;
    if (K == 0) {
        CUDA_CHECK(cudaMemsetAsync(out.data, 0, size_t(T * N) * sizeof(float), stream()));
        return;
    }
    GemmProblem p;
    p.x = x.ptr<float>();
    p.ldx = K;
    p.w = w.data;
    p.ldw = K;
    p.out = out.ptr<float>();
    p.ldo = N;
    p.M = int(T);
    p.N = int(N);
    p.K = int(K);
    const GemmKind kind = choose_gemm(w.dtype, T, N, 1);
    launch_gemm(kind, w.dtype, p, ceil_div<int64_t>(T, gemm_rows_per_tile(kind)));
}

}  // namespace lfm2::cuda
