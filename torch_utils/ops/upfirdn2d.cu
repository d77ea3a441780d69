// upfirdn2d CUDA kernel: one thread per output pixel, summing only the taps that hit real input samples
// (the zero-inserted and padded samples contribute nothing, so they are never visited).
#include <cuda_fp16.h>
#include "cuda_num.h"
#include "upfirdn2d.h"

// Floor division that is correct for negative numerators (C++ '/' truncates toward zero).
static __device__ __forceinline__ int floor_div(int a, int b) {
    int q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const float* __restrict__ f,
                                 scalar_t* __restrict__ y, Upfirdn2dParams p) {
    using acc_t = typename Num<scalar_t>::acc;
    // 64-bit loop counter: with total close to INT_MAX, a 32-bit idx + stride could overflow.
    for (long long ii = (long long)blockIdx.x * blockDim.x + threadIdx.x; ii < p.total;
         ii += (long long)blockDim.x * gridDim.x) {
        const int idx = (int)ii;
        // Output coordinate, enumerated in y's memory order so that writes are coalesced.
        int n, c, oy, ox, rest;
        if (p.nhwc_order) {
            c = idx % p.C; rest = idx / p.C;
            ox = rest % p.out_w; rest /= p.out_w;
            oy = rest % p.out_h; n = rest / p.out_h;
        } else {
            ox = idx % p.out_w; rest = idx / p.out_w;
            oy = rest % p.out_h; rest /= p.out_h;
            c = rest % p.C; n = rest / p.C;
        }
        // The filter window of this output starts at upsampled coordinate v0 (padding removed) and
        // covers v0 .. v0 + taps - 1. Input sample i sits at upsampled coordinate i * up.
        const int vx0 = ox * p.down_x - p.pad_x0;
        const int vy0 = oy * p.down_y - p.pad_y0;
        const int ix_lo = max(floor_div(vx0 + p.up_x - 1, p.up_x), 0);
        const int ix_hi = min(floor_div(vx0 + p.f_w - 1, p.up_x), p.in_w - 1);
        const int iy_lo = max(floor_div(vy0 + p.up_y - 1, p.up_y), 0);
        const int iy_hi = min(floor_div(vy0 + p.f_h - 1, p.up_y), p.in_h - 1);

        const scalar_t* xp = x + n * p.x_stride[0] + c * p.x_stride[1];
        acc_t sum = 0;
        for (int iy = iy_lo; iy <= iy_hi; ++iy) {
            const int ty = iy * p.up_y - vy0;                 // tap offset inside the window
            const int fy = p.flip ? ty : (p.f_h - 1 - ty);    // true convolution reverses the taps
            const float* frow = f + fy * p.f_w;
            const scalar_t* xrow = xp + iy * p.x_stride[2];
            for (int ix = ix_lo; ix <= ix_hi; ++ix) {
                const int tx = ix * p.up_x - vx0;
                const int fx = p.flip ? tx : (p.f_w - 1 - tx);
                sum += Num<scalar_t>::load(xrow[ix * p.x_stride[3]]) * static_cast<acc_t>(__ldg(frow + fx));
            }
        }
        y[n * p.y_stride[0] + c * p.y_stride[1] + oy * p.y_stride[2] + ox * p.y_stride[3]] =
            Num<scalar_t>::store(sum * static_cast<acc_t>(p.gain));
    }
}

template <typename T>
static void launch_typed(const void* x, const float* f, void* y, const Upfirdn2dParams& p, cudaStream_t stream) {
    const int threads = 256;
    const int blocks = (p.total + threads - 1) / threads;
    upfirdn2d_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), f, static_cast<T*>(y), p);
}

cudaError_t upfirdn2d_launch(Upfirdn2dDtype dtype, const void* x, const float* f, void* y,
                             const Upfirdn2dParams& p, cudaStream_t stream) {
    if (p.total == 0)
        return cudaSuccess;
    switch (dtype) {
        case Upfirdn2dDtype::kHalf:   launch_typed<__half>(x, f, y, p, stream); break;
        case Upfirdn2dDtype::kFloat:  launch_typed<float>(x, f, y, p, stream); break;
        case Upfirdn2dDtype::kDouble: launch_typed<double>(x, f, y, p, stream); break;
    }
    return cudaGetLastError();
}
