// PYBIND11_MODULE(_core): the private extension under lfm2engine. Top level: version, build and
// CPU facts, thread count and SIMD-path controls; submodules `cpu` (register_cpu.cpp) and `cuda`
// (register_cuda.cpp). lfm2::dtype_error becomes TypeError; std::invalid_argument ValueError and
// std::out_of_range IndexError (pybind11 defaults).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/check.h"
#include "core/threading.h"
#include "cpu/dispatch.h"
#include "cpu/gemm_qdot.h"

#ifndef LFM2_VERSION
#define LFM2_VERSION "0.0.0"
#endif

namespace py = pybind11;

namespace lfm2::bindings {
void register_cpu(py::module_& m);
void register_cuda(py::module_& m);
}  // namespace lfm2::bindings

PYBIND11_MODULE(_core, m) {
    using namespace lfm2;
    m.doc() = "lfm2engine._core: the C++ op library (submodules cpu, cuda).";
    m.attr("__version__") = LFM2_VERSION;

    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const dtype_error& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        }
    });

    m.def(
        "has_cuda",
        []() {
#ifdef LFM2_WITH_CUDA
            return true;
#else
            return false;
#endif
        },
        "True if this build compiled the CUDA backend (a GPU may still be absent: see "
        "cuda.device_count()).");
    m.def("cpu_features", &cpu::cpu_features,
          "SIMD/matrix features this CPU and OS support, e.g. ['avx2', 'avx512f', 'amx-bf16'].");
    m.def(
        "simd_level", []() { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The SIMD path ops use now: 'avx512', 'avx2' or 'scalar'.");
    m.def(
        "detected_simd_level", []() { return std::string(cpu::isa_name(cpu::detected_isa())); },
        "The best SIMD path this CPU supports.");
    m.def(
        "set_simd_level", [](const std::string& level) { cpu::set_isa_cap(cpu::parse_isa(level)); }, py::arg("level"),
        "Caps the SIMD path at 'scalar', 'avx2' or 'avx512' (never above detected_simd_level()).");
    m.def("set_force_scalar", &cpu::set_force_scalar, py::arg("on"),
          "True: run the scalar path (as LFM2_FORCE_SCALAR=1 does); False: the best available.");
    m.def("bf16_dot", &cpu::bf16_dot,
          "True while the opt-in bf16 dot-product mode is on (bf16 weights times bf16-rounded activations,\n"
          "fp32 accumulation by AVX512_BF16 vdpbf16ps; LFM2_BF16_DOT=1 at load time).");
    m.def("bf16_dot_available", &cpu::bf16_dot_available,
          "True if this CPU has AVX512_BF16 and the active SIMD path is avx512.");
    m.def("set_bf16_dot", &cpu::set_bf16_dot, py::arg("on"),
          "Turns the bf16 dot-product mode on or off; ValueError where bf16_dot_available() is False.");
    m.def("quant_dot", &cpu::quant_dot,
          "True while the opt-in quant-dot mode is on: block-quantized weights (q8_0, q4_0, q4_k, q6_k) times\n"
          "activations quantized per 32 to int8, integer dot products, fp32 scaling (LFM2_QUANT_DOT=1 at load time).");
    m.def("set_quant_dot", &cpu::set_quant_dot, py::arg("on"),
          "Turns the quant-dot mode on or off (every CPU has it: the SIMD paths give the same bits).");
    m.def(
        "quantize_activations",
        [](py::array_t<float, py::array::c_style | py::array::forcecast> x) {
            if (x.ndim() != 2 || x.shape(1) % 32 != 0)
                throw std::invalid_argument("quantize_activations: x must be [M, K] with K a multiple of 32, got " +
                                            std::to_string(x.ndim()) + " dims");
            const int64_t M = x.shape(0), K = x.shape(1);
            py::array_t<int8_t> q({M, K});
            py::array_t<float> d({M, K / 32});
            const float* xp = x.data();
            int8_t* qp = q.mutable_data();
            float* dp = d.mutable_data();
            {
                py::gil_scoped_release nogil;
                cpu::quantize_activations(cpu::active_isa(), xp, K, M, K, qp, dp);
            }
            return py::make_tuple(q, d);
        },
        py::arg("x"),
        "The quant-dot mode's activation quantization on the active SIMD path: (q int8 [M, K], d float32\n"
        "[M, K / 32]) for float32 x [M, K], K a multiple of 32 (lfm2engine.quant_dot.quantize_activations).");
    m.def("set_num_threads", &set_num_threads, py::arg("n"),
          "Threads for the CPU ops; n <= 0 restores the default (OMP_NUM_THREADS or all cores).");
    m.def("get_num_threads", &num_threads, "Threads the CPU ops use.");

    auto cpu_m = m.def_submodule("cpu", "CPU ops");
    bindings::register_cpu(cpu_m);
    auto cuda_m = m.def_submodule("cuda", "CUDA backend: device queries (ops come with the CUDA issue)");
    bindings::register_cuda(cuda_m);
}
