// _core.cpu: every CPU op of ops.h as a Python function. Thin by design: arrays become views
// (numpy_view.h: dtype -> TypeError, layout -> ValueError), the op checks shapes and indices,
// and the GIL is released around the compute. Outputs come first and are written in place;
// functions return None. Docstrings carry the shapes (legend: csrc/core/shapes.h).
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <vector>

#include "cpu/model.h"
#include "cpu/ops.h"
#include "numpy_view.h"

namespace lfm2::bindings {

namespace py = pybind11;

namespace {

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

    m.def(
        "gemm",
        [](py::object out, py::object x, py::object w) {
            const char* op = "gemm";
            auto o = out_view(out, op, "out");
            auto xv = in_view(x, op, "x");
            auto wv = in_view(w, op, "w");
            py::gil_scoped_release nogil;
            cpu::gemm(o, xv, wv);
        },
        py::arg("out"), py::arg("x"), py::arg("w"),
        "gemm(out[T, N] f32, x[T, K] f32, w[N, K] f32|bf16|f16): out = x @ w.T, fp32 accumulation.\n"
        "Each output row is bit-identical whatever the other rows and the thread count.");

    m.def(
        "embedding",
        [](py::object out, py::object table, py::object ids) {
            const char* op = "embedding";
            auto o = out_view(out, op, "out");
            auto tv = in_view(table, op, "table");
            auto iv = in_view(ids, op, "ids");
            py::gil_scoped_release nogil;
            cpu::embedding(o, tv, iv);
        },
        py::arg("out"), py::arg("table"), py::arg("ids"),
        "embedding(out[T, D] f32, table[V, D] f32|bf16|f16, ids[T] i32): out = table[ids].\n"
        "IndexError (naming the id) if an id is outside [0, V).");

    m.def(
        "rmsnorm",
        [](py::object out, py::object x, py::object w, float eps) {
            const char* op = "rmsnorm";
            auto o = out_view(out, op, "out");
            auto xv = in_view(x, op, "x");
            auto wv = in_view(w, op, "w");
            py::gil_scoped_release nogil;
            cpu::rmsnorm(o, xv, wv, eps);
        },
        py::arg("out"), py::arg("x"), py::arg("w"), py::arg("eps"),
        "rmsnorm(out[R, D] f32, x[R, D] f32, w[D] f32, eps): out = w * x / sqrt(mean(x^2) + eps).\n"
        "out may be x itself (in place). q/k norm: R = T*H, D = Dh.");

    m.def(
        "rope",
        [](py::object x, py::object positions, double theta) {
            const char* op = "rope";
            auto xv = out_view(x, op, "x");
            auto pv = in_view(positions, op, "positions");
            py::gil_scoped_release nogil;
            cpu::rope(xv, pv, theta);
        },
        py::arg("x"), py::arg("positions"), py::arg("theta"),
        "rope(x[T, H, Dh] f32, positions[T] i32, theta): in place NeoX (rotate-half) RoPE;\n"
        "pairs (j, j + Dh/2), angle = positions[t] * theta^(-2j/Dh) computed in double.");

    m.def(
        "kv_write",
        [](py::object k_cache, py::object v_cache, py::object k, py::object v, py::object seq, py::object pos) {
            const char* op = "kv_write";
            auto kc = out_view(k_cache, op, "k_cache");
            auto vc = out_view(v_cache, op, "v_cache");
            auto kv = in_view(k, op, "k");
            auto vv = in_view(v, op, "v");
            auto sv = in_view(seq, op, "seq");
            auto pv = in_view(pos, op, "pos");
            py::gil_scoped_release nogil;
            cpu::kv_write(kc, vc, kv, vv, sv, pv);
        },
        py::arg("k_cache"), py::arg("v_cache"), py::arg("k"), py::arg("v"), py::arg("seq"), py::arg("pos"),
        "kv_write(k_cache[B, Hkv, Smax, Dh] f32, v_cache[B, Hkv, Smax, Dh] f32, k[T, Hkv, Dh] f32,\n"
        "v[T, Hkv, Dh] f32, seq[T] i32, pos[T] i32): cache[seq[t], :, pos[t], :] = k[t] (and v).\n"
        "IndexError if seq[t] >= B or pos[t] >= Smax (nothing is written then).");

    m.def(
        "attention",
        [](py::object out, py::object q, py::object k_cache, py::object v_cache, py::object seq, py::object pos,
           py::object mask) {
            const char* op = "attention";
            auto o = out_view(out, op, "out");
            auto qv = in_view(q, op, "q");
            auto kc = in_view(k_cache, op, "k_cache");
            auto vc = in_view(v_cache, op, "v_cache");
            auto sv = in_view(seq, op, "seq");
            auto pv = in_view(pos, op, "pos");
            ConstTensorView mv;
            const bool has_mask = !mask.is_none();
            if (has_mask) mv = in_view(mask, op, "mask");
            py::gil_scoped_release nogil;
            cpu::attention(o, qv, kc, vc, sv, pv, has_mask ? &mv : nullptr);
        },
        py::arg("out"), py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("seq"), py::arg("pos"),
        py::arg("mask") = py::none(),
        "attention(out[T, H, Dh] f32, q[T, H, Dh] f32, k_cache[B, Hkv, Smax, Dh] f32,\n"
        "v_cache[B, Hkv, Smax, Dh] f32, seq[T] i32, pos[T] i32, mask[T, Smax] u8 | None):\n"
        "token t, head n attends to k_cache[seq[t], n // (H/Hkv), s] for s <= pos[t], or for the s\n"
        "with mask[t, s] != 0 when a mask is given (tree attention); scale 1/sqrt(Dh), online\n"
        "softmax in fp32. A row with nothing visible gives zeros.");

    m.def(
        "shortconv",
        [](py::object out, py::object bcx, py::object conv_w, py::object state, py::object seq, py::object u_out) {
            const char* op = "shortconv";
            auto o = out_view(out, op, "out");
            auto bv = in_view(bcx, op, "bcx");
            auto wv = in_view(conv_w, op, "conv_w");
            auto st = out_view(state, op, "state");
            auto sv = in_view(seq, op, "seq");
            TensorView uv;
            const bool has_u = !u_out.is_none();
            if (has_u) uv = out_view(u_out, op, "u_out");
            py::gil_scoped_release nogil;
            cpu::shortconv(o, bv, wv, st, sv, has_u ? &uv : nullptr);
        },
        py::arg("out"), py::arg("bcx"), py::arg("conv_w"), py::arg("state"), py::arg("seq"),
        py::arg("u_out") = py::none(),
        "shortconv(out[T, D] f32, bcx[T, 3D] f32, conv_w[D, L] f32, state[B, L-1, D] f32, seq[T] i32,\n"
        "u_out[T, D] f32 | None): B, C, x = split(bcx[t]); u = B*x; z = sum_j conv_w[:, j] *\n"
        "u[t-(L-1)+j] (earlier u from the sequence's earlier tokens or state[seq]); out = C*z.\n"
        "Each sequence's tokens must be contiguous and in order; state[seq] is left holding the\n"
        "last L-1 values of u (oldest first). u_out, if given, receives u.");

    m.def(
        "swiglu",
        [](py::object out, py::object gu) {
            const char* op = "swiglu";
            auto o = out_view(out, op, "out");
            auto gv = in_view(gu, op, "gu");
            py::gil_scoped_release nogil;
            cpu::swiglu(o, gv);
        },
        py::arg("out"), py::arg("gu"),
        "swiglu(out[T, F] f32, gu[T, 2F] f32): out = silu(gu[:, :F]) * gu[:, F:] (gate | up).");

    m.def(
        "moe_route",
        [](py::object ids_out, py::object w_out, py::object logits, py::object bias, bool norm_topk, double scale) {
            const char* op = "moe_route";
            auto iv = out_view(ids_out, op, "ids_out");
            auto wv = out_view(w_out, op, "w_out");
            auto lv = in_view(logits, op, "logits");
            ConstTensorView bv;
            const bool has_bias = !bias.is_none();
            if (has_bias) bv = in_view(bias, op, "bias");
            py::gil_scoped_release nogil;
            cpu::moe_route(iv, wv, lv, has_bias ? &bv : nullptr, norm_topk, scale);
        },
        py::arg("ids_out"), py::arg("w_out"), py::arg("logits"), py::arg("bias"), py::arg("norm_topk"),
        py::arg("scale"),
        "moe_route(ids_out[T, K] i32, w_out[T, K] f32, logits[T, E] f32, bias[E] f32 | None,\n"
        "norm_topk, scale): s = sigmoid(logits) (double); top-K of s + bias, ties to the lower id,\n"
        "ids in descending order; w = s[ids], / (sum + 1e-6) if norm_topk, * scale.");

    m.def(
        "moe_expert_rows",
        [](py::object out, py::object x, py::object eids, py::object w13, py::object w2) {
            const char* op = "moe_expert_rows";
            auto o = out_view(out, op, "out");
            auto xv = in_view(x, op, "x");
            auto ev = in_view(eids, op, "eids");
            auto w13v = in_view(w13, op, "w13");
            auto w2v = in_view(w2, op, "w2");
            py::gil_scoped_release nogil;
            cpu::moe_expert_rows(o, xv, ev, w13v, w2v);
        },
        py::arg("out"), py::arg("x"), py::arg("eids"), py::arg("w13"), py::arg("w2"),
        "moe_expert_rows(out[N, D] f32, x[N, D] f32, eids[N] i32, w13[E, 2Fe, D], w2[E, D, Fe]):\n"
        "out[n] = w2[e] @ (silu(w13[e, :Fe] @ x[n]) * (w13[e, Fe:] @ x[n])), e = eids[n], unweighted;\n"
        "zeros where eids[n] < 0. Weights f32|bf16|f16. Rows are grouped per expert (one GEMM each).");

    m.def(
        "moe_experts",
        [](py::object out, py::object x, py::object ids, py::object w, py::object w13, py::object w2) {
            const char* op = "moe_experts";
            auto o = out_view(out, op, "out");
            auto xv = in_view(x, op, "x");
            auto iv = in_view(ids, op, "ids");
            auto wv = in_view(w, op, "w");
            auto w13v = in_view(w13, op, "w13");
            auto w2v = in_view(w2, op, "w2");
            py::gil_scoped_release nogil;
            cpu::moe_experts(o, xv, iv, wv, w13v, w2v);
        },
        py::arg("out"), py::arg("x"), py::arg("ids"), py::arg("w"), py::arg("w13"), py::arg("w2"),
        "moe_experts(out[T, D] f32, x[T, D] f32, ids[T, K] i32, w[T, K] f32, w13[E, 2Fe, D],\n"
        "w2[E, D, Fe]): out[t] = sum_j w[t, j] * expert_{ids[t, j]}(x[t]) in slot order, fp32;\n"
        "ids < 0 are skipped.");

    m.def(
        "argmax",
        [](py::object out, py::object logits) {
            const char* op = "argmax";
            auto o = out_view(out, op, "out");
            auto lv = in_view(logits, op, "logits");
            py::gil_scoped_release nogil;
            cpu::argmax(o, lv);
        },
        py::arg("out"), py::arg("logits"),
        "argmax(out[T] i32, logits[T, V] f32): first index of the row maximum (NaN wins, as numpy).");

    m.def(
        "convert",
        [](py::object out, py::object x) {
            const char* op = "convert";
            auto o = out_view(out, op, "out");
            auto xv = in_view(x, op, "x");
            py::gil_scoped_release nogil;
            cpu::convert(o, xv);
        },
        py::arg("out"), py::arg("x"),
        "convert(out[...] f32|bf16|f16, x[...] f32|bf16|f16): elementwise conversion, round to\n"
        "nearest even (bf16 NaN -> 0x7FC0, f16 overflow -> inf). Same shape.");

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
