// upfirdn2d plugin binding: validates every argument, allocates the output, launches the kernel.
#include <climits>
#include <cmath>
#include <cstdlib>
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "upfirdn2d.h"

static torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t up_x, int64_t up_y, int64_t down_x,
                               int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                               bool flip, double gain) {
    // Tensors.
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(f.is_cuda() && f.device() == x.device(), "upfirdn2d: f must be on the same CUDA device as x");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D [N, C, H, W]");
    TORCH_CHECK(x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kFloat ||
                x.scalar_type() == torch::kDouble, "upfirdn2d: x must be float16, float32 or float64");
    TORCH_CHECK(f.scalar_type() == torch::kFloat, "upfirdn2d: f must be float32");
    TORCH_CHECK(f.dim() == 2 && f.size(0) >= 1 && f.size(1) >= 1, "upfirdn2d: f must be a non-empty 2-D tensor");
    TORCH_CHECK(f.is_contiguous(), "upfirdn2d: f must be contiguous");
    TORCH_CHECK(f.numel() <= INT_MAX, "upfirdn2d: f is too large");
    TORCH_CHECK(x.numel() <= INT_MAX, "upfirdn2d: x is too large (more than INT_MAX elements)");
    for (int d = 0; d < 4; ++d)
        TORCH_CHECK(x.size(d) <= INT_MAX && x.stride(d) >= 0, "upfirdn2d: unsupported size or stride of x");

    // Scalars.
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up and down must be >= 1");
    TORCH_CHECK(up_x <= 1024 && up_y <= 1024 && down_x <= 1024 && down_y <= 1024, "upfirdn2d: up/down too large");
    const int64_t lim = 1 << 20;
    TORCH_CHECK(std::abs(pad_x0) < lim && std::abs(pad_x1) < lim && std::abs(pad_y0) < lim && std::abs(pad_y1) < lim,
                "upfirdn2d: padding out of range");
    TORCH_CHECK(std::isfinite(gain), "upfirdn2d: gain must be finite");

    // Output size per axis: (in * up + pad0 + pad1 - taps + down) / down.
    const int64_t out_w = (x.size(3) * up_x + pad_x0 + pad_x1 - f.size(1) + down_x) / down_x;
    const int64_t out_h = (x.size(2) * up_y + pad_y0 + pad_y1 - f.size(0) + down_y) / down_y;
    TORCH_CHECK(out_w >= 1 && out_h >= 1, "upfirdn2d: output would be empty (padding too small for the filter)");
    TORCH_CHECK(x.size(0) * x.size(1) * out_h * out_w <= INT_MAX, "upfirdn2d: output is too large");

    const at::cuda::OptionalCUDAGuard device_guard(x.device());
    const auto format = x.suggest_memory_format();
    torch::Tensor y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options().memory_format(format));

    Upfirdn2dParams p;
    p.N = (int)x.size(0); p.C = (int)x.size(1); p.in_h = (int)x.size(2); p.in_w = (int)x.size(3);
    p.out_h = (int)out_h; p.out_w = (int)out_w;
    for (int d = 0; d < 4; ++d) { p.x_stride[d] = x.stride(d); p.y_stride[d] = y.stride(d); }
    p.up_x = (int)up_x; p.up_y = (int)up_y; p.down_x = (int)down_x; p.down_y = (int)down_y;
    p.pad_x0 = (int)pad_x0; p.pad_y0 = (int)pad_y0;
    p.f_w = (int)f.size(1); p.f_h = (int)f.size(0);
    p.flip = flip;
    p.nhwc_order = (format == at::MemoryFormat::ChannelsLast);
    p.gain = gain;
    p.total = (int)y.numel();
    const Upfirdn2dDtype dtype = x.scalar_type() == torch::kHalf ? Upfirdn2dDtype::kHalf
                               : x.scalar_type() == torch::kFloat ? Upfirdn2dDtype::kFloat : Upfirdn2dDtype::kDouble;
    const cudaError_t err = upfirdn2d_launch(dtype, x.data_ptr(), f.data_ptr<float>(), y.data_ptr(), p,
                                             c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "upfirdn2d: kernel launch failed: ", cudaGetErrorString(err));
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "Upsample, pad, FIR-filter and downsample (see upfirdn2d.py)");
}
