// _core.cpu: every CPU op as a Python function, generated from the table LFM2_CPU_OPS
// (op_table.h) by op_binder.h: arrays become views (numpy_view.h: dtype -> TypeError, layout ->
// ValueError), the op checks shapes and indices, and the GIL is released around the compute.
// Outputs come first and are written in place; functions return None. Also the fused layer loop
// `Model` (cpu/model.h).
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "cpu/model.h"
#include "cpu/ops.h"
#include "numpy_view.h"
#include "op_table.h"

namespace lfm2::bindings {

namespace py = pybind11;

namespace {

// Host arguments of the binder: NumPy arrays, viewed without copies.
struct HostArrays {
    static TensorView out(const py::handle& obj, const char* op, const char* name) { return out_view(obj, op, name); }
    static ConstTensorView in(const py::handle& obj, const char* op, const char* name) {
        return in_view(obj, op, name);
    }
};

// _core.cpu.Model: the fused layer loop over the arrays of a model.Weights object. The arrays
// are referenced, not copied; `keep` holds the Python objects so they outlive the views.
struct PyModel {
    std::unique_ptr<cpu::Model> model;
    py::object config, weights;
    int64_t n_layers = 0, V = 0, D = 0;
};

ConstTensorView attr_view(const py::handle& obj, const char* attr, const char* name) {
    return in_view(obj.attr(attr), "Model", name);
}

std::shared_ptr<PyModel> make_model(py::object config, py::object weights) {
    auto pm = std::make_shared<PyModel>();
    pm->config = config;
    pm->weights = weights;
    cpu::ModelWeightsView w;
    w.D = config.attr("hidden_size").cast<int64_t>();
    w.H = config.attr("num_attention_heads").cast<int64_t>();
    w.Hkv = config.attr("num_key_value_heads").cast<int64_t>();
    w.Dh = config.attr("head_dim").cast<int64_t>();
    w.V = config.attr("vocab_size").cast<int64_t>();
    w.K = config.attr("num_experts_per_tok").cast<int64_t>();
    w.eps = config.attr("norm_eps").cast<float>();
    w.rope_theta = config.attr("rope_theta").cast<double>();
    w.routed_scale = config.attr("routed_scaling_factor").cast<double>();
    w.norm_topk = config.attr("norm_topk_prob").cast<bool>();
    w.embed = attr_view(weights, "embed", "weights.embed");
    w.head = attr_view(weights, "head", "weights.head");
    w.final_norm = attr_view(weights, "final_norm", "weights.final_norm");
    py::list layers = weights.attr("layers");
    const int64_t nl = config.attr("num_hidden_layers").cast<int64_t>();
    LFM2_CHECK(int64_t(py::len(layers)) == nl, "Model", "weights.layers has ", py::len(layers), " layers, config ", nl);
    for (int64_t i = 0; i < nl; ++i) {
        py::handle lw = layers[size_t(i)];
        cpu::LayerWeightsView l;
        l.attention = config.attr("is_attention_layer")(i).cast<bool>();
        l.moe = config.attr("is_moe_layer")(i).cast<bool>();
        l.op_norm = attr_view(lw, "op_norm", "op_norm");
        l.ffn_norm = attr_view(lw, "ffn_norm", "ffn_norm");
        if (l.attention) {
            l.wqkv = attr_view(lw, "wqkv", "wqkv");
            if (!lw.attr("wv").is_none()) l.wv = attr_view(lw, "wv", "wv");
            l.wo = attr_view(lw, "wo", "wo");
            l.q_norm = attr_view(lw, "q_norm", "q_norm");
            l.k_norm = attr_view(lw, "k_norm", "k_norm");
        } else {
            l.in_proj = attr_view(lw, "in_proj", "in_proj");
            l.conv_w = attr_view(lw, "conv_w", "conv_w");
            l.out_proj = attr_view(lw, "out_proj", "out_proj");
        }
        if (l.moe) {
            l.gate = attr_view(lw, "gate", "gate");
            l.has_expert_bias = !lw.attr("expert_bias").is_none();
            if (l.has_expert_bias) l.expert_bias = attr_view(lw, "expert_bias", "expert_bias");
            l.ew13 = attr_view(lw, "ew13", "ew13");
            l.ew2 = attr_view(lw, "ew2", "ew2");
        } else {
            l.w13 = attr_view(lw, "w13", "w13");
            l.w2 = attr_view(lw, "w2", "w2");
        }
        w.layers.push_back(l);
    }
    pm->n_layers = nl;
    pm->V = w.V;
    pm->D = w.D;
    pm->model = std::make_unique<cpu::Model>(std::move(w));
    return pm;
}

// dict {layer: array} (or None) -> one view per layer, empty where the dict has no entry.
std::vector<TensorView> per_layer(const py::object& d, int64_t n, const char* name) {
    std::vector<TensorView> out(static_cast<size_t>(n));
    if (d.is_none()) return out;
    py::dict dict = d.cast<py::dict>();
    for (auto item : dict) {
        int64_t i = item.first.cast<int64_t>();
        LFM2_CHECK_INDEX(i >= 0 && i < n, "Model.forward", name, " has layer key ", i, " outside [0, ", n, ")");
        out[size_t(i)] = out_view(item.second, "Model.forward", name);
    }
    return out;
}

}  // namespace

void register_cpu(py::module_& m) {
    m.doc() =
        "CPU ops (SIMD + OpenMP). Outputs first, written in place; float arrays are float32 "
        "C-contiguous; weights 'w' may be float32, bfloat16 bits (uint16) or float16.";

#define LFM2_BIND_CPU_OP(name, doc, ...)                                   \
    bind_op<HostArrays>(m, #name, doc, &cpu::name, __VA_ARGS__); \
    record_op(m, #name, __VA_ARGS__);
    LFM2_CPU_OPS(LFM2_BIND_CPU_OP)
#undef LFM2_BIND_CPU_OP

    py::class_<PyModel, std::shared_ptr<PyModel>>(
        m, "Model",
        "Model(config: LFM2Config, weights: model.Weights): the fused single-rank layer loop (no Python\n"
        "between layers) over the weights' arrays, referenced without copies. Same math and order as\n"
        "Engine.forward_tokens without trees, masks, skipped layers or a replaced MoE: bit-identical.")
        .def(py::init(&make_model), py::arg("config"), py::arg("weights"))
        .def(
            "forward",
            [](PyModel& pm, py::object ids, py::object seq, py::object pos, py::object k_caches, py::object v_caches,
               py::object conv_states, py::object u_hist, py::object out_rows) {
                const char* op = "Model.forward";
                auto iv = in_view(ids, op, "ids");
                auto sv = in_view(seq, op, "seq");
                auto pv = in_view(pos, op, "pos");
                auto rv = in_view(out_rows, op, "out_rows");
                cpu::ModelStateView st;
                st.k_cache = per_layer(k_caches, pm.n_layers, "k_caches");
                st.v_cache = per_layer(v_caches, pm.n_layers, "v_caches");
                st.conv_state = per_layer(conv_states, pm.n_layers, "conv_states");
                st.u_hist = per_layer(u_hist, pm.n_layers, "u_hist");
                LFM2_CHECK(rv.ndim == 1, op, "out_rows must be 1-D [R], got shape ", rv.shape_str());
                py::array_t<float> logits({rv.shape[0], pm.V});
                auto lv = out_view(logits, op, "logits");
                {
                    py::gil_scoped_release nogil;
                    pm.model->forward(lv, iv, sv, pv, st, rv);
                }
                return logits;
            },
            py::arg("ids"), py::arg("seq"), py::arg("pos"), py::arg("k_caches"), py::arg("v_caches"),
            py::arg("conv_states"), py::arg("u_hist"), py::arg("out_rows"),
            "forward(ids[T] i32, seq[T] i32, pos[T] i32, k_caches {layer: [B, Hkv, Smax, Dh] f32},\n"
            "v_caches {...}, conv_states {layer: [B, L-1, D] f32}, u_hist {layer: [T, D] f32} | None,\n"
            "out_rows[R] i32) -> logits[R, V] f32. Caches and states are updated in place.")
        .def(
            "set_profiling", [](PyModel& pm, bool on) { pm.model->set_profiling(on); }, py::arg("on"),
            "set_profiling(on: bool): start (zeroing the sums) or stop (keeping them) the per-stage\n"
            "wall-clock profile of forward.")
        .def(
            "profile",
            [](PyModel& pm) {
                py::dict d;
                const auto p = pm.model->profile();
                for (int s = 0; s < cpu::kNumStages; ++s) d[cpu::stage_name(s)] = p[size_t(s)];
                d["calls"] = pm.model->profiled_calls();
                return d;
            },
            "profile() -> {stage: seconds summed over the profiled forward calls, 'calls': count}.");
}

}  // namespace lfm2::bindings
