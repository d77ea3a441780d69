// Arithmetic type shared by the op kernels: half and float compute (and accumulate) in float, double in
// double. Num<T>::load widens a stored value, Num<T>::store narrows a result back (round to nearest).
#pragma once
#include <cuda_fp16.h>

template <typename T> struct Num {
    using acc = T;
    static __device__ __forceinline__ acc load(T v) { return v; }
    static __device__ __forceinline__ T store(acc v) { return v; }
};
template <> struct Num<__half> {
    using acc = float;
    static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
