// bias_act CUDA kernel: elementwise bias + activation + gain + clamp, and its first/second derivatives.
//
// grad == 0:  out = clamp(act(x + b) * gain)
// grad == 1:  out = x * d/dz[act(z) * gain]            (x is the incoming gradient; z = xref + b)
// grad == 2:  out = x * dy * d/dref[d/dz[act(z) * gain]]  where ref is z for swish and y otherwise
// Both derivative modes are zero where the forward output was not strictly inside (-clamp, clamp).
// Derivatives of y-referenced activations are written in terms of t = y / gain = act(z).
//
// The activation is a template parameter (its switch folds away), each thread handles kElems consecutive
// elements, and when every pointer is aligned for it a group is moved with one vector load/store (8 bytes
// for half, 16 for float); unaligned groups and the tail take scalar accesses.
#include <cstdint>
#include <cuda_fp16.h>
#include "cuda_num.h"
#include "bias_act.h"
#include "launch.h"

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

constexpr int kElems = 4;  // elements per thread and per vector access

template <typename T> struct alignas(kElems * sizeof(T)) Pack { T v[kElems]; };

// Load `count` (<= kElems) elements starting at i0 into dst; absent tensors (nullptr) read as zeros.
template <typename scalar_t>
static __device__ __forceinline__ void load_group(scalar_t (&dst)[kElems], const scalar_t* __restrict__ src, int i0,
                                                  int count, bool vec) {
    if (src == nullptr) {
#pragma unroll
        for (int k = 0; k < kElems; ++k)
            dst[k] = Num<scalar_t>::store(typename Num<scalar_t>::acc(0));
    } else if (vec && count == kElems) {
        const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(src + i0);
#pragma unroll
        for (int k = 0; k < kElems; ++k)
            dst[k] = pack.v[k];
    } else {
#pragma unroll
        for (int k = 0; k < kElems; ++k)
            if (k < count)
                dst[k] = src[i0 + k];
    }
}

template <typename scalar_t>
static __device__ __forceinline__ void store_group(scalar_t* __restrict__ dst, const scalar_t (&src)[kElems], int i0,
                                                   int count, bool vec) {
    if (vec && count == kElems) {
        Pack<scalar_t> pack;
#pragma unroll
        for (int k = 0; k < kElems; ++k)
            pack.v[k] = src[k];
        *reinterpret_cast<Pack<scalar_t>*>(dst + i0) = pack;
    } else {
#pragma unroll
        for (int k = 0; k < kElems; ++k)
            if (k < count)
                dst[i0 + k] = src[k];
    }
}

// One element of any mode (see the top of the file); y and xref are zero when absent.
template <int ACT, typename T>
static __device__ __forceinline__ T bias_act_element(int grad, T xi, T bias, T y, T xref, bool has_xref, T dy,
                                                      T alpha, T gain, T clamp) {
    if (grad == 0) {
        T out = activate(ACT, xi + bias, alpha) * gain;
        if (clamp >= T(0))
            out = fmin(fmax(out, -clamp), clamp);
        return out;
    }
    if (clamp >= T(0) && !(fabs(y) < clamp))  // saturated by the clamp: no gradient
        return T(0);
    const T z = has_xref ? xref + bias : T(0);
    const T t = y / gain;
    if (grad == 1)
        return xi * first_derivative(ACT, z, t, alpha, y * gain) * gain;
    return xi * dy * second_derivative(ACT, z, t, gain);
}

template <typename scalar_t, int ACT>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ xref, const scalar_t* __restrict__ yref,
                                const scalar_t* __restrict__ dy, scalar_t* __restrict__ out, BiasActParams p,
                                bool vec) {
    using T = typename Num<scalar_t>::acc;
    using io = Num<scalar_t>;
    const T alpha = static_cast<T>(p.alpha), gain = static_cast<T>(p.gain), clamp = static_cast<T>(p.clamp);
    // 64-bit loop counter: with total close to INT_MAX, a 32-bit index + stride could overflow.
    const long long step = (long long)blockDim.x * gridDim.x * kElems;
    for (long long base = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * kElems; base < p.total; base += step) {
        const int i0 = (int)base;
        const int count = p.total - i0 < kElems ? p.total - i0 : kElems;
        scalar_t xs[kElems], ys[kElems], zs[kElems], ds[kElems], os[kElems];
        load_group(xs, x, i0, count, vec);
        load_group(ys, p.has_yref ? yref : nullptr, i0, count, vec);
        load_group(zs, p.has_xref ? xref : nullptr, i0, count, vec);
        load_group(ds, p.grad == 2 ? dy : nullptr, i0, count, vec);
#pragma unroll
        for (int k = 0; k < kElems; ++k) {
            if (k >= count)
                continue;
            const T bias = p.has_b ? io::load(b[((i0 + k) / p.stride_dim) % p.size_dim]) : T(0);
            os[k] = io::store(bias_act_element<ACT, T>(p.grad, io::load(xs[k]), bias, io::load(ys[k]),
                                                       io::load(zs[k]), p.has_xref, io::load(ds[k]), alpha, gain,
                                                       clamp));
        }
        store_group(out, os, i0, count, vec);
    }
}

template <typename T, int ACT>
static void launch_act(const T* x, const T* b, const T* xref, const T* yref, const T* dy, T* out,
                       const BiasActParams& p, bool vec, cudaStream_t stream) {
    const int threads = 256;
    const int blocks = grid_blocks_1d(((long long)p.total + kElems - 1) / kElems, threads);
    bias_act_kernel<T, ACT><<<blocks, threads, 0, stream>>>(x, b, xref, yref, dy, out, p, vec);
}

template <typename T>
static void launch_typed(const void* x_, const void* b_, const void* xref_, const void* yref_, const void* dy_,
                         void* out_, const BiasActParams& p, cudaStream_t stream) {
    const T *x = static_cast<const T*>(x_), *b = static_cast<const T*>(b_), *xref = static_cast<const T*>(xref_);
    const T *yref = static_cast<const T*>(yref_), *dy = static_cast<const T*>(dy_);
    T* out = static_cast<T*>(out_);
    auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % sizeof(Pack<T>) == 0; };
    const bool vec = aligned(x) && aligned(xref) && aligned(yref) && aligned(dy) && aligned(out);  // nullptr: aligned
    switch (p.act) {
        case kRelu:     launch_act<T, kRelu>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kLrelu:    launch_act<T, kLrelu>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kTanh:     launch_act<T, kTanh>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kSigmoid:  launch_act<T, kSigmoid>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kElu:      launch_act<T, kElu>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kSelu:     launch_act<T, kSelu>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kSoftplus: launch_act<T, kSoftplus>(x, b, xref, yref, dy, out, p, vec, stream); break;
        case kSwish:    launch_act<T, kSwish>(x, b, xref, yref, dy, out, p, vec, stream); break;
        default:        launch_act<T, kLinear>(x, b, xref, yref, dy, out, p, vec, stream); break;
    }
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
