// upfirdn2d CUDA kernels.
//
// Generic kernel: one thread per output pixel, summing only the taps that hit real input samples (the
// zero-inserted and padded samples contribute nothing, so they are never visited). Any up/down/filter/layout.
//
// Tiled kernels, specialised at compile time for the cases the networks run (4x4 filters with up 2, down 2
// or neither; ADA's 12-tap filter as a row or a column pass with up 2 or down 2): a block stages the input
// region of a 32x32 output tile of one channel in shared memory (zeros outside the image), then each thread
// sums its taps with loop bounds known at compile time and 32-bit offsets inside the plane. They visit the
// taps in the same order as the generic kernel (ascending input row, then column) and accumulate in the
// same type, so both give the same sums. Used only for outputs in NCHW order (the generic kernel keeps the
// coalesced channels-last enumeration) and when the plane offsets fit in 32 bits.
#include <cuda_fp16.h>
#include "cuda_num.h"
#include "upfirdn2d.h"
#include "launch.h"

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

// Floor modulo in [0, b) for b > 0.
static __device__ __forceinline__ int floor_mod(int a, int b) {
    const int r = a % b;
    return r < 0 ? r + b : r;
}

constexpr int kTileW = 32, kTileH = 32;        // outputs per block
constexpr int kThreadsX = 32, kThreadsY = 8;   // each thread computes kTileH / kThreadsY rows

// Largest input extent a tile of `tile` outputs can touch along one axis (see the tiled kernel).
constexpr int tile_in_extent(int tile, int up, int down, int taps) { return ((tile - 1) * down + taps - 1) / up + 2; }

// Copy the input region of a tile (IH x IW samples from (iy0, ix0)) of one plane into shared memory, zeros
// outside the image.
template <typename scalar_t, int IW, int IH>
static __device__ __forceinline__ void stage_tile(typename Num<scalar_t>::acc (&sx)[IH][IW], const scalar_t* xp,
                                                  int ix0, int iy0, int sx2, int sx3, const Upfirdn2dParams& p) {
    using acc_t = typename Num<scalar_t>::acc;
    for (int i = threadIdx.y * kThreadsX + threadIdx.x; i < IH * IW; i += kThreadsX * kThreadsY) {
        const int ly = i / IW, lx = i % IW;
        const int ix = ix0 + lx, iy = iy0 + ly;
        const bool inside = ix >= 0 && ix < p.in_w && iy >= 0 && iy < p.in_h;
        sx[ly][lx] = inside ? Num<scalar_t>::load(xp[iy * sx2 + ix * sx3]) : acc_t(0);
    }
}

// One output's sum from the staged tile. (vx0, vy0) is its window start in upsampled coordinates; tap t
// with (v0 + t) % up == 0 hits input (v0 + t) / up (an exact division), i.e. tile entry that - (ix0, iy0).
template <typename acc_t, int UX, int UY, int FW, int FH, int IW, int IH>
static __device__ __forceinline__ acc_t tile_taps(const acc_t (&sx)[IH][IW], const float (&sf)[FH][FW], int vx0,
                                                  int vy0, int ix0, int iy0, bool flip) {
    const int tx0 = (UX - floor_mod(vx0, UX)) % UX, ty0 = (UY - floor_mod(vy0, UY)) % UY;
    acc_t sum = 0;
#pragma unroll
    for (int ty = 0; ty < FH; ++ty) {
        if (ty < ty0 || (ty - ty0) % UY != 0)
            continue;
        const int ly = (vy0 + ty) / UY - iy0;
        const int fy = flip ? ty : (FH - 1 - ty);
#pragma unroll
        for (int tx = 0; tx < FW; ++tx) {
            if (tx < tx0 || (tx - tx0) % UX != 0)
                continue;
            const int fx = flip ? tx : (FW - 1 - tx);
            sum += sx[ly][(vx0 + tx) / UX - ix0] * static_cast<acc_t>(sf[fy][fx]);
        }
    }
    return sum;
}

template <typename scalar_t, int UX, int UY, int DX, int DY, int FW, int FH>
__global__ void __launch_bounds__(kThreadsX * kThreadsY)
upfirdn2d_tiled_kernel(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
                       Upfirdn2dParams p) {
    using acc_t = typename Num<scalar_t>::acc;
    constexpr int IW = tile_in_extent(kTileW, UX, DX, FW);
    constexpr int IH = tile_in_extent(kTileH, UY, DY, FH);
    __shared__ acc_t sx[IH][IW];
    __shared__ float sf[FH][FW];
    for (int i = threadIdx.y * kThreadsX + threadIdx.x; i < FH * FW; i += kThreadsX * kThreadsY)
        sf[i / FW][i % FW] = __ldg(f + i);

    // Tile origin in output pixels, and the first input sample any of its outputs reads.
    const int ox0 = blockIdx.x * kTileW, oy0 = blockIdx.y * kTileH;
    const int ix0 = floor_div(ox0 * DX - p.pad_x0 + UX - 1, UX);
    const int iy0 = floor_div(oy0 * DY - p.pad_y0 + UY - 1, UY);
    const int sy2 = (int)p.y_stride[2], sy3 = (int)p.y_stride[3];
    const int ox = ox0 + threadIdx.x;

    for (int plane = blockIdx.z; plane < p.N * p.C; plane += gridDim.z) {
        const int n = plane / p.C, c = plane % p.C;
        const scalar_t* xp = x + n * p.x_stride[0] + c * p.x_stride[1];   // 64-bit plane offsets
        scalar_t* yp = y + n * p.y_stride[0] + c * p.y_stride[1];
        __syncthreads();  // the previous plane's reads of sx are done (and sf is loaded)
        stage_tile<scalar_t, IW, IH>(sx, xp, ix0, iy0, (int)p.x_stride[2], (int)p.x_stride[3], p);
        __syncthreads();
        for (int r = 0; r < kTileH / kThreadsY; ++r) {
            const int oy = oy0 + threadIdx.y + r * kThreadsY;
            if (ox >= p.out_w || oy >= p.out_h)
                continue;
            const acc_t sum = tile_taps<acc_t, UX, UY, FW, FH, IW, IH>(sx, sf, ox * DX - p.pad_x0,
                                                                      oy * DY - p.pad_y0, ix0, iy0, p.flip);
            yp[oy * sy2 + ox * sy3] = Num<scalar_t>::store(sum * static_cast<acc_t>(p.gain));
        }
    }
}

// Whether the 32-bit in-plane offsets of the tiled kernel cannot overflow.
static bool plane_offsets_fit_int32(const Upfirdn2dParams& p) {
    const long long lim = 0x7fffffffLL;
    return (long long)(p.in_h - 1) * p.x_stride[2] + (long long)(p.in_w - 1) * p.x_stride[3] < lim &&
           (long long)(p.out_h - 1) * p.y_stride[2] + (long long)(p.out_w - 1) * p.y_stride[3] < lim &&
           p.x_stride[2] < lim && p.x_stride[3] < lim && p.y_stride[2] < lim && p.y_stride[3] < lim;
}

template <typename T, int UX, int UY, int DX, int DY, int FW, int FH>
static bool launch_tiled_case(const void* x, const float* f, void* y, const Upfirdn2dParams& p, cudaStream_t stream) {
    if (p.up_x != UX || p.up_y != UY || p.down_x != DX || p.down_y != DY || p.f_w != FW || p.f_h != FH)
        return false;
    const dim3 threads(kThreadsX, kThreadsY);
    const int planes = p.N * p.C;
    const dim3 blocks((p.out_w + kTileW - 1) / kTileW, (p.out_h + kTileH - 1) / kTileH,
                      planes < 65535 ? planes : 65535);
    upfirdn2d_tiled_kernel<T, UX, UY, DX, DY, FW, FH><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(x), f, static_cast<T*>(y), p);
    return true;
}

// The specialised cases, tried in order; false when none applies (the generic kernel runs instead).
template <typename T>
static bool launch_tiled(const void* x, const float* f, void* y, const Upfirdn2dParams& p, cudaStream_t stream) {
    if (p.nhwc_order || p.out_h > 65535 * kTileH || !plane_offsets_fit_int32(p))
        return false;
    return launch_tiled_case<T, 1, 1, 1, 1, 4, 4>(x, f, y, p, stream) ||    // FIR around the resampling convs
           launch_tiled_case<T, 2, 2, 1, 1, 4, 4>(x, f, y, p, stream) ||    // upsample2d (skip connections)
           launch_tiled_case<T, 1, 1, 2, 2, 4, 4>(x, f, y, p, stream) ||    // downsample2d
           launch_tiled_case<T, 2, 1, 1, 1, 12, 1>(x, f, y, p, stream) ||   // ADA: 12-tap up, row pass
           launch_tiled_case<T, 1, 2, 1, 1, 1, 12>(x, f, y, p, stream) ||   //      column pass
           launch_tiled_case<T, 1, 1, 2, 1, 12, 1>(x, f, y, p, stream) ||   // ADA: 12-tap down, row pass
           launch_tiled_case<T, 1, 1, 1, 2, 1, 12>(x, f, y, p, stream);     //      column pass
}

template <typename T>
static void launch_typed(const void* x, const float* f, void* y, const Upfirdn2dParams& p, cudaStream_t stream) {
    if (launch_tiled<T>(x, f, y, p, stream))
        return;
    const int threads = 256;
    const int blocks = grid_blocks_1d(p.total, threads);
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
