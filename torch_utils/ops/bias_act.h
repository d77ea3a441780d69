// bias_act plugin: declarations shared by the binding (bias_act.cpp, compiled by the host compiler with the
// torch headers) and the kernel (bias_act.cu, compiled by nvcc WITHOUT the torch headers to keep nvcc fast).
#pragma once
#include <cuda_runtime_api.h>

// Activation codes (bias_act.py activation_funcs[...].cuda_idx).
enum BiasActCode { kLinear = 1, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish };

enum class BiasActDtype { kHalf, kFloat, kDouble };

struct BiasActParams {
    int act;          // BiasActCode
    int grad;         // 0: forward, 1: first derivative, 2: second derivative
    double alpha, gain, clamp;  // clamp < 0: no clamping (double so float64 inputs lose nothing)
    int size_dim;     // x.size(dim): number of bias entries
    int stride_dim;   // x.stride(dim): bias index = (linear index / stride_dim) % size_dim
    bool has_b, has_xref, has_yref, has_dy;
    int total;        // x.numel()
};

// All tensors share x's element order and dtype (validated by the binding); absent ones are nullptr.
// Returns the launch status.
cudaError_t bias_act_launch(BiasActDtype dtype, const void* x, const void* b, const void* xref, const void* yref,
                            const void* dy, void* out, const BiasActParams& p, cudaStream_t stream);
