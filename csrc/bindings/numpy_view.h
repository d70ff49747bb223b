// NumPy array -> TensorView at the Python boundary, with no casts and no copies: the argument
// must already be an ndarray of a supported dtype (TypeError otherwise), C-contiguous, aligned,
// native byte order and, for outputs, writable (ValueError otherwise). Messages name the op and
// the argument. uint16 arrays are bf16 bits by convention; bool arrays are read as uint8; structured
// arrays of lfm2engine.quant's block dtypes (told apart by item size) are block-quantized weights.
// Shape checks belong to the ops (ops.h), which see all arguments together.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "core/tensor.h"

namespace lfm2::bindings {

namespace py = pybind11;

inline DType dtype_of(const py::array& a, const char* op, const char* name) {
    py::dtype dt = a.dtype();
    char kind = dt.kind();
    auto size = dt.itemsize();
    char order = dt.byteorder();  // '=' native, '|' not applicable, '<' / '>' explicit
    bool native = order == '=' || order == '|' || order == '<';
    DType d{};
    bool ok = native;
    if (kind == 'f' && size == 4)
        d = DType::F32;
    else if (kind == 'f' && size == 2)
        d = DType::F16;
    else if (kind == 'u' && size == 2)
        d = DType::BF16;
    else if (kind == 'i' && size == 4)
        d = DType::I32;
    else if ((kind == 'u' || kind == 'b') && size == 1)
        d = DType::U8;
    else if (kind == 'V' && !dt.attr("names").is_none() && size == 34)
        d = DType::Q8_0;
    else if (kind == 'V' && !dt.attr("names").is_none() && size == 18)
        d = DType::Q4_0;
    else if (kind == 'V' && !dt.attr("names").is_none() && size == 144)
        d = DType::Q4_K;
    else if (kind == 'V' && !dt.attr("names").is_none() && size == 210)
        d = DType::Q6_K;
    else
        ok = false;
    if (!ok)
        throw py::type_error(std::string(op) + ": argument '" + name + "' has dtype " + std::string(py::str(dt)) +
                             " (native float32, float16, uint16 = bf16 bits, int32, uint8 or a block dtype of"
                             " lfm2engine.quant expected; lfm2engine never converts arrays implicitly)");
    return d;
}

template <class View>
View to_view(const py::handle& obj, const char* op, const char* name, bool writable) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(op) + ": argument '" + name + "' must be a numpy.ndarray, got " +
                             std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    View v;
    v.dtype = dtype_of(a, op, name);
    if (a.ndim() > kMaxDims)
        throw py::value_error(std::string(op) + ": argument '" + name + "' has " + std::to_string(a.ndim()) +
                              " dimensions, at most " + std::to_string(kMaxDims) + " supported");
    const int flags = a.flags();
    if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_))
        throw py::value_error(std::string(op) + ": argument '" + name +
                              "' must be C-contiguous (hint: np.ascontiguousarray)");
    if (!(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
        throw py::value_error(std::string(op) + ": argument '" + name + "' is not aligned");
    if (writable && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_))
        throw py::value_error(std::string(op) + ": output argument '" + name + "' is read-only");
    v.ndim = int(a.ndim());
    const auto item = a.itemsize();
    for (int i = 0; i < v.ndim; ++i) {
        v.shape[i] = a.shape(i);
        v.strides[i] = a.strides(i) / item;
    }
    if (is_quantized(v.dtype)) {  // blocks [..., K / block] -> the logical weights [..., K], C-contiguous
        if (v.ndim == 0)
            throw py::value_error(std::string(op) + ": argument '" + name + "' is a 0-d block array");
        v.shape[v.ndim - 1] *= dtype_block(v.dtype);
        int64_t st = 1;
        for (int i = v.ndim - 1; i >= 0; --i) {
            v.strides[i] = st;
            st *= v.shape[i];
        }
    }
    if constexpr (std::is_same_v<View, TensorView>)
        v.data = const_cast<void*>(a.data());
    else
        v.data = a.data();
    return v;
}

inline TensorView out_view(const py::handle& obj, const char* op, const char* name) {
    return to_view<TensorView>(obj, op, name, true);
}

inline ConstTensorView in_view(const py::handle& obj, const char* op, const char* name) {
    return to_view<ConstTensorView>(obj, op, name, false);
}

}  // namespace lfm2::bindings
