// The fused single-rank layer loop: the whole LFM2 / LFM2-MoE forward of a flattened ragged batch
// in C++, with no Python between layers. It composes the public ops of ops.h in exactly the
// order of python/lfm2engine/engine.py::Engine.layer_loop (embedding; per layer: norm,
// attention or shortconv, residual, ffn norm, dense or MoE FFN, residual; final norm on the
// requested rows; tied head), so both paths give bit-identical logits.
// Not here: token trees, explicit masks, skipped layers or a replaced MoE (the Python path
// handles them), and weight ownership: views point into memory the caller keeps alive.
#pragma once

#include <array>
#include <chrono>
#include <mutex>
#include <vector>

#include "core/tensor.h"

namespace lfm2::cpu {

struct LayerWeightsView {
    bool attention = false, moe = false, has_expert_bias = false;
    ConstTensorView op_norm, ffn_norm;          // [D] f32
    ConstTensorView wqkv, wo, q_norm, k_norm;   // attention: [(H+2Hkv)Dh, D], [D, H Dh], [Dh], [Dh]
    ConstTensorView wv;                         // mixed files: v apart [Hkv Dh, D], wqkv then q | k only
    ConstTensorView in_proj, conv_w, out_proj;  // conv: [3D, D], [D, L] f32, [D, D]
    ConstTensorView w13, w2;                    // dense: [2F, D], [D, F]
    ConstTensorView gate, expert_bias;          // MoE router: [E, D] f32, [E] f32
    ConstTensorView ew13, ew2;                  // MoE experts: [E, 2Fe, D], [E, D, Fe]
};

struct ModelWeightsView {
    int64_t D = 0, H = 0, Hkv = 0, Dh = 0, V = 0, K = 0;  // K: experts per token
    float eps = 1e-5f;
    double rope_theta = 1e6, routed_scale = 1.0;
    bool norm_topk = true;
    ConstTensorView embed, head, final_norm;  // [V, D], [V, D], [D]
    std::vector<LayerWeightsView> layers;
};

// Per-layer state views; entries of layers that have none are left empty (data == nullptr).
struct ModelStateView {
    std::vector<TensorView> k_cache, v_cache;  // [B, Hkv, Smax, Dh] f32 (attention layers)
    std::vector<TensorView> conv_state;        // [B, L-1, D] f32 (conv layers)
    std::vector<TensorView> u_hist;            // [T, D] f32 or empty (conv layers, optional)
};

// Stages of the optional wall-clock profile (Model::set_profiling), in forward order.
enum Stage : int {
    kEmbed, kNorm, kAttnQkv, kAttnCore, kAttnOut, kConvIn, kConv, kConvOut, kResidual, kRouter, kExperts,
    kDenseFfn, kHead, kNumStages
};
inline const char* stage_name(int s) {
    static const char* names[kNumStages] = {"embedding", "rmsnorm", "attn_qkv_gemm", "attn_core", "attn_out_gemm",
                                            "conv_in_gemm", "shortconv", "conv_out_gemm", "residual", "router",
                                            "experts", "dense_ffn", "head"};
    return names[s];
}

class Model {
public:
    explicit Model(ModelWeightsView w);
    // logits[R, V] of rows out_rows[R] i32 after the layer loop over ids, seq, pos [T] i32.
    void forward(TensorView logits, ConstTensorView ids, ConstTensorView seq, ConstTensorView pos,
                 const ModelStateView& state, ConstTensorView out_rows);
    const ModelWeightsView& weights() const { return w_; }
    // Wall-clock seconds per stage, summed over forward calls while profiling is on (off by
    // default: then each stage costs one branch). Turning it on zeroes the sums; turning it off
    // keeps them for profile().
    void set_profiling(bool on);
    std::array<double, kNumStages> profile() const { return prof_; }
    int64_t profiled_calls() const { return prof_calls_; }

private:
    struct StageTimer {
        double* acc;
        std::chrono::steady_clock::time_point t0;
        ~StageTimer() {
            if (acc) *acc += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
    };
    StageTimer stage(Stage s) {
        return StageTimer{profiling_ ? &prof_[size_t(s)] : nullptr,
                          profiling_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{}};
    }
    bool profiling_ = false;
    std::array<double, kNumStages> prof_{};
    int64_t prof_calls_ = 0;

    ModelWeightsView w_;
    std::mutex mu_;  // scratch is shared by calls
    std::vector<float> x_, h_, y_, a_, b_, c_, q_, k_, v_;
    std::vector<int32_t> ids_;
};

}  // namespace lfm2::cpu
