// Typed argument checks for ops: LFM2_CHECK* throw C++ exceptions that pybind11 maps to Python
// ValueError (std::invalid_argument), IndexError (std::out_of_range) and TypeError
// (lfm2::dtype_error, registered in bindings/module.cpp). Every message carries the op name and
// file:line. Checks are for reachable conditions (bad input); nothing here asserts or exits.
#pragma once

#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace lfm2 {

// A tensor of the wrong dtype; surfaces as Python TypeError.
struct dtype_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

namespace detail {

inline const char* short_path(const char* file) {
    const char* p = std::strstr(file, "csrc/");
    return p ? p : file;
}

template <class... A>
std::string format_message(const char* op, const char* file, int line, const A&... parts) {
    std::ostringstream os;
    os << op << ": ";
    (os << ... << parts);
    os << " [" << short_path(file) << ":" << line << "]";
    return os.str();
}

}  // namespace detail
}  // namespace lfm2

// LFM2_CHECK(cond, op, message parts...): std::invalid_argument -> ValueError.
#define LFM2_CHECK(cond, op, ...)                                                                                      \
    do {                                                                                                               \
        if (!(cond)) throw std::invalid_argument(::lfm2::detail::format_message(op, __FILE__, __LINE__, __VA_ARGS__)); \
    } while (0)

// LFM2_CHECK_INDEX(cond, op, message parts...): std::out_of_range -> IndexError.
#define LFM2_CHECK_INDEX(cond, op, ...)                                                                            \
    do {                                                                                                           \
        if (!(cond)) throw std::out_of_range(::lfm2::detail::format_message(op, __FILE__, __LINE__, __VA_ARGS__)); \
    } while (0)

// LFM2_CHECK_DTYPE(cond, op, message parts...): lfm2::dtype_error -> TypeError.
#define LFM2_CHECK_DTYPE(cond, op, ...)                                                                              \
    do {                                                                                                             \
        if (!(cond)) throw ::lfm2::dtype_error(::lfm2::detail::format_message(op, __FILE__, __LINE__, __VA_ARGS__)); \
    } while (0)
