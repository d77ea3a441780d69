// bias_act plugin binding: validates every argument, allocates the output, launches the kernel.
#include <climits>
#include <cmath>
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include "bias_act.h"

// Dense in NCHW order, or (4-D) dense in NHWC order.
static bool is_dense(const torch::Tensor& t) {
    return t.is_contiguous() || (t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// Same sizes and the same element order as x, so one linear index addresses both.
static bool same_order(const torch::Tensor& t, const torch::Tensor& x) {
    if (t.sizes() != x.sizes())
        return false;
    if (t.is_contiguous() && x.is_contiguous())
        return true;
    return x.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) &&
           x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

static void check_ref(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
    if (!t.numel())
        return;
    TORCH_CHECK(t.device() == x.device(), "bias_act: ", name, " must be on the same device as x");
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_act: ", name, " must have the dtype of x");
    TORCH_CHECK(same_order(t, x), "bias_act: ", name, " must have the shape and memory layout of x");
}

static torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, torch::Tensor yref,
                              torch::Tensor dy, int64_t grad, int64_t dim, int64_t act, double alpha, double gain,
                              double clamp) {
    // x.
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kFloat ||
                x.scalar_type() == torch::kDouble, "bias_act: x must be float16, float32 or float64");
    TORCH_CHECK(is_dense(x), "bias_act: x must be contiguous or channels_last");
    TORCH_CHECK(x.numel() <= INT_MAX, "bias_act: x is too large (more than INT_MAX elements)");
    TORCH_CHECK(x.dim() >= 1 && dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    TORCH_CHECK(x.size(dim) <= INT_MAX && x.stride(dim) <= INT_MAX, "bias_act: dim too large");

    // Bias and reference tensors (empty = absent).
    if (b.numel()) {
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must match the device and dtype of x");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have shape [x.size(dim)]");
        TORCH_CHECK(b.is_contiguous(), "bias_act: b must be contiguous");
    }
    check_ref(xref, x, "xref");
    check_ref(yref, x, "yref");
    check_ref(dy, x, "dy");

    // Scalars and the inputs each mode needs.
    TORCH_CHECK(act >= kLinear && act <= kSwish, "bias_act: unknown activation code");
    TORCH_CHECK(grad >= 0 && grad <= 2, "bias_act: grad must be 0, 1 or 2");
    TORCH_CHECK(std::isfinite(alpha) && std::isfinite(gain) && std::isfinite(clamp),
                "bias_act: alpha, gain and clamp must be finite");
    TORCH_CHECK(grad == 0 || gain != 0.0, "bias_act: derivatives need a non-zero gain");
    const bool y_referenced = act != kLinear && act != kSwish;
    if (grad > 0) {
        TORCH_CHECK(act != kSwish || xref.numel(), "bias_act: swish derivatives need xref");
        TORCH_CHECK(!y_referenced || yref.numel(), "bias_act: this activation's derivatives need yref");
        TORCH_CHECK(clamp < 0 || yref.numel(), "bias_act: a clamped derivative needs yref");
    }
    TORCH_CHECK(grad != 2 || dy.numel(), "bias_act: grad=2 needs dy");

    const at::cuda::OptionalCUDAGuard device_guard(x.device());
    torch::Tensor out = torch::empty_like(x);  // keeps x's (dense) strides
    BiasActParams p;
    p.act = (int)act; p.grad = (int)grad;
    p.alpha = alpha; p.gain = gain; p.clamp = clamp;
    p.size_dim = (int)x.size(dim);
    p.stride_dim = x.size(dim) > 1 ? (int)x.stride(dim) : 1;
    p.has_b = b.numel() > 0; p.has_xref = xref.numel() > 0; p.has_yref = yref.numel() > 0; p.has_dy = dy.numel() > 0;
    p.total = (int)x.numel();
    const BiasActDtype dtype = x.scalar_type() == torch::kHalf ? BiasActDtype::kHalf
                             : x.scalar_type() == torch::kFloat ? BiasActDtype::kFloat : BiasActDtype::kDouble;
    auto ptr = [](const torch::Tensor& t) -> const void* { return t.numel() ? t.data_ptr() : nullptr; };
    const cudaError_t err = bias_act_launch(dtype, x.data_ptr(), ptr(b), ptr(xref), ptr(yref), ptr(dy),
                                            out.data_ptr(), p, c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "bias_act: kernel launch failed: ", cudaGetErrorString(err));
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp and derivatives (see bias_act.py)");
}
