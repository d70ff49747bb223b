// Host-side interface of the CUDA backend that plain C++ (the bindings) may include: no CUDA
// headers here. Implemented in device.cu; compiled only when LFM2_WITH_CUDA is defined.
#pragma once

#include <cstddef>
#include <string>

namespace lfm2::cuda {

struct DeviceInfo {
    std::string name;
    int major = 0, minor = 0;  // compute capability
    int multiprocessors = 0;
    size_t total_memory = 0;  // bytes
    int l2_cache = 0;          // bytes
    int clock_khz = 0;         // peak SM clock, 0 if the driver does not report it
    int memory_clock_khz = 0;  // peak memory clock, 0 if not reported
    int memory_bus_width = 0;  // bits
};

// Number of usable GPUs; 0 (no exception) when there is no GPU or no driver.
int device_count();
// Properties of GPU `device`; throws std::out_of_range for a bad index.
DeviceInfo device_info(int device);
// CUDA runtime version this module was built with, e.g. 13000.
int runtime_version();
// Driver API version, or 0 when no driver is installed.
int driver_version();
// Runs a small kernel on `device` (y[i] = a*x[i] + y[i] over n elements) and checks the result
// on the host; returns the max abs error. Throws std::runtime_error on any CUDA error.
double selftest(int device, int n);

}  // namespace lfm2::cuda
