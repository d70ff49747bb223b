// _core.cuda: the CUDA backend. Device queries, the device tensor handle `Tensor`, `Graph`
// (CUDA Graph capture), timing and allocator helpers, and every op of _core.cpu under the same
// name and argument order, generated from the table LFM2_CUDA_OPS (op_table.h) by op_binder.h,
// taking Tensor arguments (None for optional ones) instead of arrays: a non-Tensor argument is a
// TypeError that names it, the op checks shapes, the GIL is released while it enqueues work. Ops
// return at once; Tensor.to_numpy() and synchronize() wait, and raise the device-side index errors.
// The same names exist in every build; without CUDA compiled in each raises
// lfm2engine.errors.BackendError (a RuntimeError) "lfm2engine was built without CUDA", so callers
// check _core.has_cuda() first. With CUDA compiled and no GPU, device_count() is 0 and nothing
// raises at import.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "numpy_view.h"
#include "op_table.h"

#ifdef LFM2_WITH_CUDA
#include "cuda/device.h"
#include "cuda/ops.h"
#include "cuda/tensor.h"
#endif

namespace lfm2::bindings {

namespace py = pybind11;

namespace {

#ifdef LFM2_WITH_CUDA

// Tensor.dtype names: dtype.h's, with plain "bfloat16".
const char* dtype_str(DType d) { return d == DType::BF16 ? "bfloat16" : dtype_name(d); }

constexpr DType kBlockTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K};

// "float32" | "float16" | "bfloat16" | "int32" | "uint8" | "q8_0" | "q4_0" | "q4_k" | "q6_k", or
// anything numpy.dtype() accepts (uint16 means bf16 bits, bool means uint8, lfm2engine.quant's
// block dtypes their block type, as everywhere in _core).
DType parse_dtype(const py::object& obj) {
    if (py::isinstance<py::str>(obj)) {
        const std::string s = obj.cast<std::string>();
        if (s == "bfloat16") return DType::BF16;
        for (DType q : kBlockTypes)
            if (s == dtype_name(q)) return q;
    }
    py::dtype dt = py::dtype::from_args(obj);
    py::array probe(dt, std::vector<py::ssize_t>{0});
    return dtype_of(probe, "cuda.Tensor", "dtype");
}

std::vector<int64_t> parse_shape(const py::handle& obj) {
    std::vector<int64_t> s;
    if (py::isinstance<py::int_>(obj)) {
        s.push_back(obj.cast<int64_t>());
        return s;
    }
    for (auto v : py::reinterpret_borrow<py::sequence>(obj)) s.push_back(v.cast<int64_t>());
    return s;
}

py::dtype numpy_dtype(DType d) {
    switch (d) {
        case DType::F32:
            return py::dtype::of<float>();
        case DType::F16:
            return py::dtype("float16");
        case DType::BF16:
            return py::dtype::of<uint16_t>();
        case DType::I32:
            return py::dtype::of<int32_t>();
        case DType::U8:
            return py::dtype::of<uint8_t>();
        case DType::Q8_0:
        case DType::Q4_0:
        case DType::Q4_K:
        case DType::Q6_K: {  // the block dtype of lfm2engine.quant (one element = one block)
            py::object q = py::module_::import("lfm2engine.quant").attr("QTYPES")[py::str(dtype_name(d))];
            return q.attr("dtype").cast<py::dtype>();
        }
    }
    return py::dtype::of<float>();
}

const cuda::Tensor& as_tensor(const py::handle& obj, const char* op, const char* name) {
    if (!py::isinstance<cuda::Tensor>(obj))
        throw py::type_error(std::string(op) + ": argument '" + name +
                             "' must be a lfm2engine._core.cuda.Tensor (device memory), got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))) +
                             "; hint: _core.cuda.Tensor.from_numpy(array)");
    return obj.cast<const cuda::Tensor&>();
}

// Upload a host array into `dst` (same dtype and shape; any layout, made C-contiguous on the host).
void upload(const cuda::Tensor& dst, const py::array& src) {
    const char* op = "cuda.Tensor.copy_";
    const DType d = dtype_of(src, op, "src");
    if (d != dst.dtype)
        throw py::type_error(std::string(op) + ": source dtype " + dtype_str(d) + " differs from the tensor's " +
                             dtype_str(dst.dtype) + " (nothing is converted implicitly)");
    bool same = src.ndim() == dst.ndim;
    for (int i = 0; same && i < dst.ndim; ++i) same = src.shape(i) == dst.shape[i];
    if (!same) {
        std::string s = "(";
        for (int i = 0; i < src.ndim(); ++i) s += std::to_string(src.shape(i)) + (i + 1 < src.ndim() ? ", " : "");
        throw py::value_error(std::string(op) + ": source shape " + s + ") differs from the tensor's " +
                              dst.shape_str());
    }
    py::array c = py::array::ensure(src, py::array::c_style);
    const void* p = c.data();
    const size_t n = dst.nbytes();
    py::gil_scoped_release nogil;
    cuda::copy_from_host(dst, p, n);
}

void assign(const cuda::Tensor& dst, const py::object& value) {
    if (py::isinstance<cuda::Tensor>(value)) {
        const auto& src = value.cast<const cuda::Tensor&>();
        LFM2_CHECK(src.ndim == dst.ndim && src.sizes() == dst.sizes(), "cuda.Tensor.copy_", "source shape ",
                   src.shape_str(), " differs from the tensor's ", dst.shape_str());
        cuda::copy_device(dst, src);
    } else if (py::isinstance<py::array>(value)) {
        upload(dst, py::reinterpret_borrow<py::array>(value));
    } else if ((py::isinstance<py::int_>(value) || py::isinstance<py::float_>(value)) && value.cast<double>() == 0.0) {
        cuda::zero_(dst);
    } else {
        throw py::type_error("cuda.Tensor: can assign a cuda.Tensor, a numpy array of the same dtype and shape, or 0");
    }
}

cuda::Tensor index(const cuda::Tensor& t, const py::object& key) {
    if (py::isinstance<py::slice>(key)) {
        LFM2_CHECK(t.ndim >= 1, "cuda.Tensor[slice]", "cannot slice a 0-d tensor");
        py::ssize_t start = 0, stop = 0, step = 0, len = 0;
        if (!py::reinterpret_borrow<py::slice>(key).compute(py::ssize_t(t.shape[0]), &start, &stop, &step, &len))
            throw py::error_already_set();
        if (step != 1) throw py::value_error("cuda.Tensor: only contiguous slices (step 1) of dimension 0 are views");
        return t.slice(start, start + len);
    }
    if (py::isinstance<py::int_>(key) || py::hasattr(key, "__index__")) {
        int64_t i = key.cast<int64_t>();
        if (t.ndim >= 1 && i < 0) i += t.shape[0];
        return t.select(i);
    }
    throw py::type_error("cuda.Tensor: index dimension 0 with an int or a slice (views share memory)");
}

void register_tensor(py::module_& m) {
    py::class_<cuda::Tensor>(m, "Tensor",
                             "A C-contiguous array in GPU memory (float32, float16, bfloat16, int32, uint8, or a\n"
                             "block-quantized weight type q8_0, q4_0, q4_k, q6_k with NumPy's block shape\n"
                             "[..., K / block], as lfm2engine.quant's arrays). Views (reshape, t[i], t[a:b]) share\n"
                             "memory; work is ordered on one stream.")
        .def_static(
            "from_numpy",
            [](const py::array& a) {
                const DType d = dtype_of(a, "cuda.Tensor.from_numpy", "array");
                std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
                cuda::Tensor t = cuda::Tensor::empty(shape, d);
                upload(t, a);
                return t;
            },
            py::arg("array"),
            "A new device tensor holding a copy of `array` (float32, float16, uint16 = bf16 bits, int32,\n"
            "uint8/bool, a block array of lfm2engine.quant); the dtype and shape are kept.")
        .def_static(
            "empty", [](const py::object& shape, const py::object& dtype) {
                return cuda::Tensor::empty(parse_shape(shape), parse_dtype(dtype));
            },
            py::arg("shape"), py::arg("dtype") = "float32", "Uninitialized device tensor.")
        .def_static(
            "zeros", [](const py::object& shape, const py::object& dtype) {
                return cuda::Tensor::zeros(parse_shape(shape), parse_dtype(dtype));
            },
            py::arg("shape"), py::arg("dtype") = "float32", "Zero-filled device tensor.")
        .def(
            "to_numpy",
            [](const cuda::Tensor& t) {
                py::array a(numpy_dtype(t.dtype), t.sizes());
                void* p = a.mutable_data();
                const size_t n = t.nbytes();
                {
                    py::gil_scoped_release nogil;
                    cuda::copy_to_host(p, t, n);
                }
                return a;
            },
            "Copy to a new numpy array (waits for queued work; raises pending device-side index errors).")
        .def(
            "copy_",
            [](const cuda::Tensor& t, const py::object& src) {
                assign(t, src);
                return t;
            },
            py::arg("src"), "Overwrite with a numpy array or a Tensor of the same shape and dtype; returns self.")
        .def(
            "zero_",
            [](const cuda::Tensor& t) {
                cuda::zero_(t);
                return t;
            },
            "Fill with zeros; returns self.")
        .def(
            "reshape",
            [](const cuda::Tensor& t, const py::args& args) {
                if (args.size() == 1 && !py::isinstance<py::int_>(args[0])) return t.reshape(parse_shape(args[0]));
                return t.reshape(parse_shape(args));
            },
            "A view with another shape (same number of elements; one -1 is inferred).")
        .def("__getitem__", &index, py::arg("key"), "t[i] or t[a:b] along dimension 0: a view.")
        .def(
            "__setitem__", [](const cuda::Tensor& t, const py::object& key, const py::object& value) {
                assign(index(t, key), value);
            },
            py::arg("key"), py::arg("value"))
        .def_property_readonly("shape", [](const cuda::Tensor& t) { return py::tuple(py::cast(t.sizes())); })
        .def_property_readonly("dtype", [](const cuda::Tensor& t) { return std::string(dtype_str(t.dtype)); })
        .def_property_readonly("ndim", [](const cuda::Tensor& t) { return t.ndim; })
        .def_property_readonly("nbytes", [](const cuda::Tensor& t) { return t.nbytes(); })
        .def_property_readonly("data_ptr", [](const cuda::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()); })
        .def("numel", &cuda::Tensor::numel)
        .def("__len__",
             [](const cuda::Tensor& t) {
                 if (t.ndim == 0) throw py::type_error("len() of a 0-d tensor");
                 return t.shape[0];
             })
        .def("__repr__", [](const cuda::Tensor& t) {
            return "cuda.Tensor(shape=" + t.shape_str() + ", dtype=" + dtype_str(t.dtype) + ")";
        });

    py::class_<cuda::Graph>(m, "Graph",
                            "A CUDA Graph: begin(), then op calls (recorded, not run), end(); replay() runs them.\n"
                            "Host copies are not allowed while capturing; memory allocated then stays reserved.")
        .def(py::init<>())
        .def("begin", &cuda::Graph::begin)
        .def("end", &cuda::Graph::end)
        .def("replay", &cuda::Graph::replay, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("ready", &cuda::Graph::ready);
}

// Device arguments of the binder: cuda.Tensor handles.
struct DeviceTensors {
    static TensorView out(const py::handle& obj, const char* op, const char* name) {
        return as_tensor(obj, op, name).view();
    }
    static ConstTensorView in(const py::handle& obj, const char* op, const char* name) {
        return as_tensor(obj, op, name).cview();
    }
};

#endif  // LFM2_WITH_CUDA

}  // namespace

void register_cuda(py::module_& m) {
#ifdef LFM2_WITH_CUDA
    m.def("device_count", &cuda::device_count, "Number of CUDA GPUs (0 without a GPU or driver).");
    m.def(
        "device_info",
        [](int device) {
            cuda::DeviceInfo i = cuda::device_info(device);
            py::dict d;
            d["name"] = i.name;
            d["compute_capability"] = py::make_tuple(i.major, i.minor);
            d["multiprocessors"] = i.multiprocessors;
            d["total_memory"] = i.total_memory;
            d["l2_cache"] = i.l2_cache;
            d["clock_khz"] = i.clock_khz;
            d["memory_clock_khz"] = i.memory_clock_khz;
            d["memory_bus_width"] = i.memory_bus_width;
            return d;
        },
        py::arg("device") = 0,
        "Properties of one GPU: name, compute_capability, multiprocessors, total_memory, l2_cache,\n"
        "clock_khz, memory_clock_khz, memory_bus_width (0 where the driver does not say).");
    m.def("runtime_version", &cuda::runtime_version, "CUDA runtime version built against, e.g. 13000.");
    m.def("driver_version", &cuda::driver_version, "CUDA driver version, 0 without a driver.");
    m.def(
        "selftest",
        [](int device, int n) {
            py::gil_scoped_release nogil;
            return cuda::selftest(device, n);
        },
        py::arg("device") = 0, py::arg("n") = 1 << 20,
        "Runs a small axpy kernel on the GPU and returns the max abs error vs the host (0.0).");
    m.def("synchronize", &cuda::synchronize, py::call_guard<py::gil_scoped_release>(),
          "Wait for all queued GPU work; raises the first device-side index error (IndexError) since the last one.");
    m.def("memory_allocated", &cuda::memory_allocated, "Bytes of device memory held by live tensors.");
    m.def("memory_cached", &cuda::memory_cached, "Bytes of freed device memory kept for reuse.");
    m.def("empty_cache", &cuda::empty_cache, py::call_guard<py::gil_scoped_release>(),
          "Return cached device memory to the driver.");
    bind_op<DeviceTensors>(m, "add", "add(out[...] f32, x[...] f32): out += x (the model loop's residual add).",
                           &cuda::add_, "out", "x");
    m.def(
        "time_ms",
        [](const std::function<void()>& fn, int warmup, int reps, bool flush_l2) {
            return cuda::time_ms(fn, warmup, reps, flush_l2);
        },
        py::arg("fn"), py::arg("warmup") = 2, py::arg("reps") = 10, py::arg("flush_l2") = true,
        "GPU milliseconds of each of `reps` calls of fn() (cudaEvent pairs), after `warmup` calls; with\n"
        "flush_l2 a buffer of twice the L2 size is overwritten before each timed call.");
    register_tensor(m);
#define LFM2_BIND_CUDA_OP(name, doc, ...)                                \
    bind_op<DeviceTensors>(m, #name, doc, &cuda::name, __VA_ARGS__); \
    record_op(m, #name, __VA_ARGS__);
    LFM2_CUDA_OPS(LFM2_BIND_CUDA_OP)
#undef LFM2_BIND_CUDA_OP
#else
    auto unavailable = [](py::args, py::kwargs) -> py::object {
        py::object cls = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
        try {
            cls = py::module_::import("lfm2engine.errors").attr("BackendError");
        } catch (const py::error_already_set&) {  // the package is not importable: plain RuntimeError
        }
        PyErr_SetString(cls.ptr(), "lfm2engine was built without CUDA");
        throw py::error_already_set();
    };
    const char* doc = "Unavailable: lfm2engine was built without CUDA.";
    for (const char* name : {"device_count", "device_info", "runtime_version", "driver_version", "selftest",
                             "synchronize", "memory_allocated", "memory_cached", "empty_cache", "add", "time_ms",
                             "Tensor", "Graph"})
        m.def(name, unavailable, doc);
#define LFM2_STUB_CUDA_OP(name, _doc, ...) \
    m.def(#name, unavailable, doc);        \
    record_op(m, #name, __VA_ARGS__);
    LFM2_CUDA_OPS(LFM2_STUB_CUDA_OP)
#undef LFM2_STUB_CUDA_OP
#endif
}

}  // namespace lfm2::bindings
