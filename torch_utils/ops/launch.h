// Launch arithmetic shared by the op kernels, in 64-bit integers (host code; plain C++, no CUDA headers).
#pragma once

// Grid size of a 1-D launch: enough blocks of `threads` to cover `work` items, at least 1 and at most
// `max_blocks` (the kernels loop with a grid stride, so a capped grid still covers everything). Computing
// (work + threads - 1) in a 32-bit int would overflow for work near INT_MAX.
static inline int grid_blocks_1d(long long work, int threads, long long max_blocks = 1LL << 30) {
    long long blocks = (work + threads - 1) / threads;
    if (blocks < 1)
        blocks = 1;
    return (int)(blocks < max_blocks ? blocks : max_blocks);
}
