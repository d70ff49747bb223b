// Non-owning tensor views: the argument type of every op on every backend (STYLE.md 4).
// A view is a data pointer, a dtype, a shape and strides in elements (row-major when
// contiguous). Views never own or allocate; the caller (NumPy via the bindings, or the engine)
// keeps the memory alive. The expect_* helpers are the entry checks ops start with.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>

#include "check.h"
#include "dtype.h"

namespace lfm2 {

constexpr int kMaxDims = 5;

template <class Ptr>
struct BasicTensorView {
    Ptr data = nullptr;
    DType dtype = DType::F32;
    int ndim = 0;
    int64_t shape[kMaxDims] = {};
    int64_t strides[kMaxDims] = {};  // in elements

    int64_t size(int i) const { return shape[i]; }
    int64_t numel() const {
        int64_t n = 1;
        for (int i = 0; i < ndim; ++i) n *= shape[i];
        return n;
    }
    bool is_contiguous() const {
        if (numel() == 0) return true;  // no element to misplace (NumPy's strides are arbitrary then)
        int64_t s = 1;
        for (int i = ndim - 1; i >= 0; --i) {
            if (shape[i] != 1 && strides[i] != s) return false;
            s *= shape[i];
        }
        return true;
    }
    template <class T>
    T* ptr() const {
        return static_cast<T*>(data);
    }
    std::string shape_str() const {
        std::ostringstream os;
        os << "[";
        for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << shape[i];
        os << "]";
        return os.str();
    }
};

struct TensorView : BasicTensorView<void*> {};

struct ConstTensorView : BasicTensorView<const void*> {
    ConstTensorView() = default;
    ConstTensorView(const TensorView& v) {  // NOLINT: implicit on purpose (out -> in)
        data = v.data;
        dtype = v.dtype;
        ndim = v.ndim;
        for (int i = 0; i < kMaxDims; ++i) {
            shape[i] = v.shape[i];
            strides[i] = v.strides[i];
        }
    }
    template <class T>
    const T* ptr() const {
        return static_cast<const T*>(data);
    }
};

// A contiguous view over caller memory (used by ops that call other ops on scratch buffers).
template <class View, class P>
View make_view(P data, DType dt, std::initializer_list<int64_t> shape) {
    View v;
    v.data = data;
    v.dtype = dt;
    v.ndim = int(shape.size());
    int i = 0;
    for (int64_t s : shape) v.shape[i++] = s;
    int64_t st = 1;
    for (int j = v.ndim - 1; j >= 0; --j) {
        v.strides[j] = st;
        st *= v.shape[j];
    }
    return v;
}

// ----------------------------------------------------------------------------- entry checks

template <class V>
void expect_dtype(const char* op, const char* name, const V& v, std::initializer_list<DType> ok) {
    for (DType d : ok)
        if (v.dtype == d) return;
    std::ostringstream want;
    int i = 0;
    for (DType d : ok) want << (i++ ? " or " : "") << dtype_name(d);
    LFM2_CHECK_DTYPE(false, op, "argument '", name, "' must be ", want.str(), ", got ", dtype_name(v.dtype));
}

// Rank and sizes at once; a negative expected size matches anything.
template <class V>
void expect_shape(const char* op, const char* name, const V& v, std::initializer_list<int64_t> want,
                  const char* legend) {
    bool ok = v.ndim == int(want.size());
    int i = 0;
    for (int64_t w : want) {
        if (ok && w >= 0 && v.shape[i] != w) ok = false;
        ++i;
    }
    if (ok) return;
    std::ostringstream ws;
    ws << "[";
    i = 0;
    for (int64_t w : want) {
        ws << (i++ ? ", " : "");
        if (w >= 0)
            ws << w;
        else
            ws << "*";
    }
    ws << "]";
    LFM2_CHECK(false, op, "argument '", name, "' has shape ", v.shape_str(), ", expected ", legend, " = ", ws.str());
}

template <class V>
void expect_contiguous(const char* op, const char* name, const V& v) {
    LFM2_CHECK(v.is_contiguous(), op, "argument '", name, "' must be C-contiguous (shape ", v.shape_str(), ")");
}

// Two contiguous views must not share memory (an output overwritten while still being read).
template <class A, class B>
void expect_disjoint(const char* op, const char* a_name, const A& a, const char* b_name, const B& b) {
    auto lo_a = reinterpret_cast<uintptr_t>(a.data);
    auto lo_b = reinterpret_cast<uintptr_t>(b.data);
    auto hi_a = lo_a + uintptr_t(dtype_bytes(a.dtype, a.numel()));
    auto hi_b = lo_b + uintptr_t(dtype_bytes(b.dtype, b.numel()));
    bool overlap = lo_a < hi_b && lo_b < hi_a;
    LFM2_CHECK(!overlap, op, "argument '", a_name, "' overlaps '", b_name, "' in memory; pass separate arrays");
}

}  // namespace lfm2
