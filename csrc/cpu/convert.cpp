// convert: elementwise f32 <-> bf16 <-> f16 with the bit-exact scalar conversions of
// core/dtype.h (round to nearest even, NaN kept, f16 overflow to inf). A utility for loading
// weights and for testing dtype.h; the twin of checkpoint.f32_to_bf16 / ndarray.astype(float16).
// Plain loops: the compiler vectorizes the f32 -> bf16 path, and every path gives the same bits.
#include <algorithm>

#include "core/threading.h"
#include "ops.h"

namespace lfm2::cpu {
namespace {

template <class Out, class In, class Fn>
void run(void* out, const void* x, int64_t n, Fn f) {
    Out* o = static_cast<Out*>(out);
    const In* in = static_cast<const In*>(x);
    parallel_ranges(n, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) o[i] = f(in[i]);
    });
}

}  // namespace

void convert(TensorView out, ConstTensorView x) {
    const int64_t n = check_convert(out, x);
    const DType o = out.dtype, i = x.dtype;
    void* po = out.data;
    const void* px = x.data;
    using u16 = uint16_t;
    if (o == DType::F32 && i == DType::F32) run<float, float>(po, px, n, [](float v) { return v; });
    if (o == DType::F32 && i == DType::BF16) run<float, u16>(po, px, n, [](u16 v) { return bf16_to_f32(v); });
    if (o == DType::F32 && i == DType::F16) run<float, u16>(po, px, n, [](u16 v) { return f16_to_f32(v); });
    if (o == DType::BF16 && i == DType::F32) run<u16, float>(po, px, n, [](float v) { return f32_to_bf16(v); });
    if (o == DType::F16 && i == DType::F32) run<u16, float>(po, px, n, [](float v) { return f32_to_f16(v); });
    if (o == DType::F16 && i == DType::BF16) run<u16, u16>(po, px, n, [](u16 v) { return f32_to_f16(bf16_to_f32(v)); });
    if (o == DType::BF16 && i == DType::F16) run<u16, u16>(po, px, n, [](u16 v) { return f32_to_bf16(f16_to_f32(v)); });
    if (o == i && o != DType::F32) run<u16, u16>(po, px, n, [](u16 v) { return v; });
}

}  // namespace lfm2::cpu
