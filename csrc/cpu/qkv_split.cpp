// qkv_split: the column blocks q | k | v of the attention layer's fused projection
// qkv [T, (H + 2 Hkv) Dh] copied into q [T, H, Dh], k, v [T, Hkv, Dh]; must match
// backends/numpy_ops.qkv_split. A pure copy: bit-exact and row-invariant. Used by the Python layer
// loop (engine.py) and the fused one (model.cpp), so the split exists once.
#include <cstring>

#include "core/threading.h"
#include "ops.h"

namespace lfm2::cpu {

void qkv_split(TensorView q, TensorView k, TensorView v, ConstTensorView qkv) {
    const QkvDims d = check_qkv_split(q, k, v, qkv);
    const int64_t nq = d.nq(), nkv = d.nkv(), row = d.row();
    float* qp = q.ptr<float>();
    float* kp = k.ptr<float>();
    float* vp = v.ptr<float>();
    const float* src = qkv.ptr<float>();
    parallel_ranges(d.T, row, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float* s = src + t * row;
            std::memcpy(qp + t * nq, s, sizeof(float) * size_t(nq));
            std::memcpy(kp + t * nkv, s + nq, sizeof(float) * size_t(nkv));
            std::memcpy(vp + t * nkv, s + nq + nkv, sizeof(float) * size_t(nkv));
        }
    });
}

}  // namespace lfm2::cpu
