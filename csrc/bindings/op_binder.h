// One binder for every op of every backend: a row of an op table (op_table.h) names the op, its
// docstring and its Python argument names; bind_op() turns the C++ op void(A...) into a Python
// function with those names. Each parameter type says how its argument crosses:
//   TensorView / ConstTensorView        -> Conv::out / Conv::in (a NumPy array for the CPU,
//                                          a cuda.Tensor for CUDA; TypeError / ValueError name it)
//   const TensorView* / const ConstTensorView* -> the same, or None (nullptr)
//   float, double, bool                 -> the Python number, converted by pybind11
// Arguments are converted in order, then the GIL is released around the op. The op itself checks
// shapes and indices (core/contracts.h). Functions return None.
#pragma once

#include <pybind11/pybind11.h>

#include <array>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/tensor.h"

namespace lfm2::bindings {

namespace py = pybind11;

// An argument name in a table row whose Python default is None (an optional tensor).
struct NoneDefault {
    const char* name;
};
constexpr NoneDefault none_default(const char* name) { return {name}; }

inline py::arg py_arg(const char* name) { return py::arg(name); }
inline py::arg_v py_arg(NoneDefault d) { return py::arg(d.name) = py::none(); }
constexpr const char* arg_name(const char* name) { return name; }
constexpr const char* arg_name(NoneDefault d) { return d.name; }

// How one C++ parameter type is received from Python (Py), held while the op runs (Held) and
// passed to the op (pass).
template <class A>
struct Param {  // scalars
    static_assert(std::is_arithmetic_v<A>, "op parameters are views, optional views or numbers");
    using Py = A;
    using Held = A;
    template <class Conv>
    static A hold(A a, const char*, const char*) {
        return a;
    }
    static A pass(A a) { return a; }
};

template <class V>
struct ViewParam {  // a tensor: Conv::out for outputs (writable), Conv::in for inputs
    using Py = py::object;
    using Held = V;
    template <class Conv>
    static Held hold(const py::object& o, const char* op, const char* name) {
        if constexpr (std::is_same_v<V, TensorView>)
            return Conv::out(o, op, name);
        else
            return Conv::in(o, op, name);
    }
    static V pass(const Held& h) { return h; }
};
template <>
struct Param<TensorView> : ViewParam<TensorView> {};
template <>
struct Param<ConstTensorView> : ViewParam<ConstTensorView> {};

template <class V>
struct Param<const V*> {  // optional: None -> nullptr
    using Py = py::object;
    using Held = std::optional<V>;
    template <class Conv>
    static Held hold(const py::object& o, const char* op, const char* name) {
        if (o.is_none()) return std::nullopt;
        return Param<V>::template hold<Conv>(o, op, name);
    }
    static const V* pass(const Held& h) { return h ? &*h : nullptr; }
};

template <class Conv, class... A, size_t... I, class... P>
void invoke_op(void (*fn)(A...), const char* op, const std::array<const char*, sizeof...(A)>& names,
               std::index_sequence<I...>, const P&... args) {
    // Braced initialization converts the arguments left to right, so the first bad one is named.
    const std::tuple<typename Param<A>::Held...> held{Param<A>::template hold<Conv>(args, op, names[I])...};
    py::gil_scoped_release nogil;
    fn(Param<A>::pass(std::get<I>(held))...);
}

// m.name(args...) -> fn(converted args...), with the argument names (and None defaults) of `names`.
template <class Conv, class... A, class... Names>
void bind_op(py::module_& m, const char* name, const char* doc, void (*fn)(A...), Names... names) {
    static_assert(sizeof...(A) == sizeof...(Names), "a table row names every parameter of its op");
    const std::array<const char*, sizeof...(A)> arg_names{arg_name(names)...};
    m.def(
        name,
        [fn, name, arg_names](typename Param<A>::Py... args) {
            invoke_op<Conv>(fn, name, arg_names, std::index_sequence_for<A...>{}, args...);
        },
        py_arg(names)..., doc);
}

// m._ops[name] = (argument names...): the module's op table as data, for the tests that check
// the CPU and CUDA tables against each other and against _core.pyi.
template <class... Names>
void record_op(py::module_& m, const char* name, Names... names) {
    if (!py::hasattr(m, "_ops")) m.attr("_ops") = py::dict();
    py::dict ops = m.attr("_ops");
    ops[name] = py::make_tuple(arg_name(names)...);
}

}  // namespace lfm2::bindings
