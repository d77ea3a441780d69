// upfirdn2d plugin: declarations shared by the binding (upfirdn2d.cpp, compiled by the host compiler with
// the torch headers) and the kernel (upfirdn2d.cu, compiled by nvcc WITHOUT the torch headers, which keeps
// the nvcc step short: the heavy torch/pybind headers are parsed once, by the host compiler).
#pragma once
#include <cstdint>
#include <cuda_runtime_api.h>

enum class Upfirdn2dDtype { kHalf, kFloat, kDouble };

struct Upfirdn2dParams {
    int N, C, in_h, in_w, out_h, out_w;
    int64_t x_stride[4];  // element strides of x (any layout)
    int64_t y_stride[4];  // element strides of y
    int up_x, up_y, down_x, down_y;
    int pad_x0, pad_y0;   // leading padding; trailing padding only changes out_h/out_w
    int f_w, f_h;
    bool flip;            // true = correlation, false = true convolution
    bool nhwc_order;      // enumerate outputs channel-fastest (y is channels_last)
    double gain;          // cast to the accumulator type in the kernel
    int total;            // number of output elements
};

// Launches the kernel on `stream`; x and y point to elements of `dtype`, f to float32 [f_h, f_w].
// Arguments are validated by the binding. Returns the launch status.
cudaError_t upfirdn2d_launch(Upfirdn2dDtype dtype, const void* x, const float* f, void* y,
                             const Upfirdn2dParams& p, cudaStream_t stream);
