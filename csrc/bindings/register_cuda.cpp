// _core.cuda: device queries and the smoke-test kernel of csrc/cuda/device.cu. The same names
// exist in every build; without CUDA compiled in each raises lfm2engine.errors.BackendError (a
// RuntimeError) "lfm2engine was built without CUDA", so callers check _core.has_cuda() first.
// With CUDA compiled and no GPU, device_count() is 0 and nothing raises at import.
#include <pybind11/pybind11.h>

#include <stdexcept>

#ifdef LFM2_WITH_CUDA
#include "cuda/device.h"
#endif

namespace lfm2::bindings {

namespace py = pybind11;

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
            return d;
        },
        py::arg("device") = 0, "Properties of one GPU: name, compute_capability, multiprocessors, total_memory.");
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
    for (const char* name : {"device_count", "device_info", "runtime_version", "driver_version", "selftest"})
        m.def(name, unavailable, "Unavailable: lfm2engine was built without CUDA.");
#endif
}

}  // namespace lfm2::bindings
