// bias_act CUDA kernel: elementwise bias + activation + gain + clamp, and its first/second derivatives.
//
// grad == 0:  out = clamp(act(x + b) * gain)
// grad == 1:  out = x * d/dz[act(z) * gain]            (x is the incoming gradient; z = xref + b)
// grad == 2:  out = x * dy * d/dref[d/dz[act(z) * gain]]  where ref is z for swish and y otherwise
// Both derivative modes are zero where the forward output was not strictly inside (-clamp, clamp).
// Derivatives of y-referenced activations are written in terms of t = y / gain = act(z).
#include <cuda_fp16.h>
#include "cuda_num.h"
#include "bias_act.h"

static constexpr double kSeluScale = 1.0507009873554805;   // SELU lambda
static constexpr double kSeluAlpha = 1.6732632423543772;   // SELU alpha

// Logistic function, evaluated so that exp never overflows.
template <typename T> static __device__ __forceinline__ T sigmoid(T z) {
    if (z >= T(0))
        return T(1) / (T(1) + exp(-z));
    const T e = exp(z);
    return e / (T(1) + e);
}

template <typename T> static __device__ __forceinline__ T activate(int act, T z, T alpha) {
    switch (act) {
        case kRelu:     return z > T(0) ? z : T(0);
        case kLrelu:    return z > T(0) ? z : z * alpha;
        case kTanh:     return tanh(z);
        case kSigmoid:  return sigmoid(z);
        case kElu:      return z >= T(0) ? z : expm1(z);
        case kSelu:     return z >= T(0) ? T(kSeluScale) * z : T(kSeluScale * kSeluAlpha) * expm1(z);
        case kSoftplus: return fmax(z, T(0)) + log1p(exp(-fabs(z)));  // log(1 + e^z) without overflow
        case kSwish:    return z * sigmoid(z);
        default:        return z;  // linear
    }
}

// d act / dz, from t = act(z) (y-referenced activations) or from z (swish).
template <typename T> static __device__ __forceinline__ T first_derivative(int act, T z, T t, T alpha, T sign) {
    switch (act) {
        case kRelu:     return sign > T(0) ? T(1) : T(0);
        case kLrelu:    return sign > T(0) ? T(1) : alpha;
        case kTanh:     return T(1) - t * t;
        case kSigmoid:  return t * (T(1) - t);
        case kElu:      return t >= T(0) ? T(1) : t + T(1);
        case kSelu:     return t >= T(0) ? T(kSeluScale) : t + T(kSeluScale * kSeluAlpha);
        case kSoftplus: return T(1) - exp(-t);   // sigmoid(z) = 1 - e^(-softplus(z))
        case kSwish: {
            const T s = sigmoid(z);
            return s * (T(1) + z * (T(1) - s));
        }
        default:        return T(1);  // linear
    }
}

// Derivative of (first_derivative * gain) w.r.t. its reference tensor (y for y-referenced activations,
// which brings a 1/gain that cancels the gain; z for swish).
template <typename T> static __device__ __forceinline__ T second_derivative(int act, T z, T t, T gain) {
    switch (act) {
        case kTanh:     return T(-2) * t;
        case kSigmoid:  return T(1) - T(2) * t;
        case kElu:      return t >= T(0) ? T(0) : T(1);
        case kSelu:     return t >= T(0) ? T(0) : T(1);
        case kSoftplus: return exp(-t);
        case kSwish: {
            const T s = sigmoid(z);
            return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)) * gain;
        }
        default:        return T(0);  // linear, relu, lrelu: piecewise linear
    }
}

template <typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ xref, const scalar_t* __restrict__ yref,
                                const scalar_t* __restrict__ dy, scalar_t* __restrict__ out, BiasActParams p) {
    using T = typename Num<scalar_t>::acc;
    using io = Num<scalar_t>;
    const T alpha = static_cast<T>(p.alpha), gain = static_cast<T>(p.gain), clamp = static_cast<T>(p.clamp);
    // 64-bit loop counter: with total close to INT_MAX, a 32-bit i + stride could overflow.
    for (long long ii = (long long)blockIdx.x * blockDim.x + threadIdx.x; ii < p.total;
         ii += (long long)blockDim.x * gridDim.x) {
        const int i = (int)ii;
        const T bias = p.has_b ? io::load(b[(i / p.stride_dim) % p.size_dim]) : T(0);
        const T xi = io::load(x[i]);
        if (p.grad == 0) {
            T y = activate(p.act, xi + bias, alpha) * gain;
            if (clamp >= T(0))
                y = fmin(fmax(y, -clamp), clamp);
            out[i] = io::store(y);
            continue;
        }
        const T y = p.has_yref ? io::load(yref[i]) : T(0);
        if (clamp >= T(0) && !(fabs(y) < clamp)) {  // saturated by the clamp: no gradient
            out[i] = io::store(T(0));
            continue;
        }
        const T z = p.has_xref ? io::load(xref[i]) + bias : T(0);
        const T t = y / gain;
        T r;
        if (p.grad == 1)
            r = xi * first_derivative(p.act, z, t, alpha, y * gain) * gain;
        else
            r = xi * io::load(dy[i]) * second_derivative(p.act, z, t, gain);
        out[i] = io::store(r);
    }
}

template <typename T>
static void launch_typed(const void* x, const void* b, const void* xref, const void* yref, const void* dy, void* out,
                         const BiasActParams& p, cudaStream_t stream) {
    const int threads = 256;
    const int blocks = (p.total + threads - 1) / threads;
    bias_act_kernel<T><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(b), static_cast<const T*>(xref),
        static_cast<const T*>(yref), static_cast<const T*>(dy), static_cast<T*>(out), p);
}

cudaError_t bias_act_launch(BiasActDtype dtype, const void* x, const void* b, const void* xref, const void* yref,
                            const void* dy, void* out, const BiasActParams& p, cudaStream_t stream) {
    if (p.total == 0)
        return cudaSuccess;
    switch (dtype) {
        case BiasActDtype::kHalf:   launch_typed<__half>(x, b, xref, yref, dy, out, p, stream); break;
        case BiasActDtype::kFloat:  launch_typed<float>(x, b, xref, yref, dy, out, p, stream); break;
        case BiasActDtype::kDouble: launch_typed<double>(x, b, xref, yref, dy, out, p, stream); break;
    }
    return cudaGetLastError();
}
