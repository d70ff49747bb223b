// GEMM with block-quantized weights (q8_0, q4_0, q4_k, q6_k) on CUDA cores, exact numerics mode:
// the weights are dequantized in the kernel to exactly core/quant.h's fp32 values (quant.cuh),
// activations stay fp32 and products accumulate in fp32 (fma). So out equals the fp32 GEMM with
// the dequantized weights within fp32 rounding (the k order differs from the CPU's).
//   QSkinny   few rows (decode): a warp streams 4 weight rows; lane l dequantizes weights
//             [8 l + 256 i, +8) of each (consecutive lanes read consecutive bytes of a row, so a
//             warp reads a q4_k block / 8 q4_0 blocks per step), accumulates them against up to 16
//             activation rows, then a warp reduction (xor tree).
//   QTile64 / QTile128   prefill: 64 x 64 / 128 x 128 output tiles, 256 threads, k tiles of 32:
//             the weight tile is dequantized into shared memory (each thread 8 weights of a row),
//             then the same register-blocked fp32 tile math as gemm_f32.cu, ascending k.
// There is no Tensor Core path for quantized weights (f16 mma would round the activations).
// Per output element the k order is fixed by the kind, independent of the tile it lands in.
#include "gemm_quant_kernels.cuh"

namespace lfm2::cuda {
namespace {

using qgemm::gemm_q_skinny;
using qgemm::gemm_q_tiled;
using qgemm::kQNW;
using qgemm::kQRows;
using qgemm::kQWarps;

template <DType QT>
void launch_typed(GemmKind kind, const GemmProblem& p, unsigned gy) {
    cudaStream_t s = stream();
    switch (kind) {
        case GemmKind::QSkinny: {
            const dim3 grid(unsigned(ceil_div(p.N, kQWarps * kQNW)), gy);
            const bool vec = vec_ok(p.x, p.ldx, 0, p.K, 4), few = p.max_rows > 0 && p.max_rows <= 4;
            if (few && vec)
                gemm_q_skinny<QT, 4, true><<<grid, kQWarps * 32, 0, s>>>(p);
            else if (few)
                gemm_q_skinny<QT, 4, false><<<grid, kQWarps * 32, 0, s>>>(p);
            else if (vec)
                gemm_q_skinny<QT, kQRows, true><<<grid, kQWarps * 32, 0, s>>>(p);
            else
                gemm_q_skinny<QT, kQRows, false><<<grid, kQWarps * 32, 0, s>>>(p);
            break;
        }
        case GemmKind::QTile64:
            gemm_q_tiled<QT, 64, 64><<<dim3(unsigned(ceil_div(p.N, 64)), gy), 256, 0, s>>>(p);
            break;
        default:
            gemm_q_tiled<QT, 128, 128><<<dim3(unsigned(ceil_div(p.N, 128)), gy), 256, 0, s>>>(p);
            break;
    }
    LFM2_CUDA_LAUNCH_CHECK();
}

}  // namespace

void launch_gemm_quant(GemmKind kind, DType wdt, const GemmProblem& p, unsigned grid_y) {
    LFM2_CHECK(p.K % 32 == 0 && p.ldw % dtype_block(wdt) == 0 && p.w_estride % dtype_block(wdt) == 0, "gemm",
               "internal: ", dtype_name(wdt), " weights need whole blocks (K = ", p.K, ", ld = ", p.ldw, ")");
    // q4_k codes are read with 8-byte loads (quant.cuh); the others need 2-byte alignment.
    const uintptr_t align = wdt == DType::Q4_K ? 16 : 2;
    LFM2_CHECK(reinterpret_cast<uintptr_t>(p.w) % align == 0, "gemm", dtype_name(wdt),
               " weights must start on a ", align, "-byte boundary (a cuda.Tensor's storage does)");
    switch (wdt) {
        case DType::Q8_0:
            launch_typed<DType::Q8_0>(kind, p, grid_y);
            break;
        case DType::Q4_0:
            launch_typed<DType::Q4_0>(kind, p, grid_y);
            break;
        case DType::Q4_K:
            launch_typed<DType::Q4_K>(kind, p, grid_y);
            break;
        case DType::Q6_K:
            launch_typed<DType::Q6_K>(kind, p, grid_y);
            break;
        default:
            LFM2_CHECK(false, "gemm", "internal: quantized kind chosen for ", dtype_name(wdt), " weights");
    }
}

}  // namespace lfm2::cuda
