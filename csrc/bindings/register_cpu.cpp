// _core.cpu: every CPU op of ops.h as a Python function. Thin by design: arrays become views
// (numpy_view.h: dtype -> TypeError, layout -> ValueError), the op checks shapes and indices,
// and the GIL is released around the compute. Outputs come first and are written in place;
// functions return None. Docstrings carry the shapes (legend: csrc/core/shapes.h).
#include <pybind11/pybind11.h>

#include "cpu/ops.h"
#include "numpy_view.h"

namespace lfm2::bindings {

namespace py = pybind11;

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
}

}  // namespace lfm2::bindings
