// stream: the ceiling. 16-byte loads and stores, grid-stride, several in flight per thread
// (the loop is unrolled by 4); buffers are padded to 16 bytes with zeros.

extern "C" __global__ void stream_read(const uint4* __restrict__ src, u64 n_vec, unsigned int* sum) {
    unsigned int acc = 0;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
#pragma unroll 4
    for (; i < n_vec; i += stride) {
        uint4 v = __ldg(src + i); // stream: src
        acc += v.x + v.y + v.z + v.w; // wraps, as the oracle's sum does
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(sum, acc); // one atomic per warp
}

extern "C" __global__ void stream_copy(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n_vec) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
#pragma unroll 4
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += stride) dst[i] = __ldg(src + i); // stream: src
}

__device__ __forceinline__ unsigned int pattern(u64 i, unsigned int seed) {
    return ((unsigned int)i * 0x9e3779b1u) ^ seed;
}

extern "C" __global__ void stream_write(uint4* __restrict__ dst, u64 n_vec, unsigned int seed) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
#pragma unroll 4
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += stride) {
        u64 w = 4 * i;
        dst[i] = make_uint4(pattern(w, seed), pattern(w + 1, seed), pattern(w + 2, seed), pattern(w + 3, seed));
    }
}
