// Storage dtypes decoded with CUDA's own types. The backend defines DTYPE (0 f32, 1 f16,
// 2 bf16, 3 fp8_e4m3; the 4-bit weight codes 4 mxfp4, 5 int4_g32, 6 int4_g128, 7 nvfp4),
// ELEM_BITS and ELEM_BYTES (0 for 4-bit codes) before this file. Accumulation is always f32.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

typedef unsigned long long u64;

// The only sub-byte elements are the 4-bit weight codes (expert_gemv; the KV cache kernels
// index whole bytes and the backend refuses 4-bit caches first).
#if ELEM_BITS % 8 != 0 && !(ELEM_BITS == 4 && DTYPE >= 4)
#error "sub-byte dtype: these kernels index whole-byte elements (ELEM_BITS % 8 != 0)"
#endif

#if ELEM_BITS == 4
// A 4-bit code's value before its group scale, by its bits: int4 (DTYPE 5, 6) as the f32
// 2^23 + (q + 8) less 2^23 + 8; E2M1 (4, 7) as an f32 with its 2 exponent bits at the bottom
// of f32's exponent and its mantissa bit on top of f32's (subnormal for exponent 0), times
// 2^126 (bias 1 against 127). Both exact.
__device__ __forceinline__ float decode_nibble(unsigned int n) {
#if DTYPE == 5 || DTYPE == 6
    return __uint_as_float(0x4B000000u | (n ^ 8u)) - 8388616.f;
#elif DTYPE == 4 || DTYPE == 7
    return __uint_as_float(((n & 8u) << 28) | ((n & 7u) << 22)) * 0x1p126f;
#else
#error "ELEM_BITS 4 with a dtype that is not a 4-bit code"
#endif
}
#endif

// Element e of a tensor of the storage dtype (a 4-bit code: unscaled).
__device__ __forceinline__ float decode_elem(const unsigned char* __restrict__ base, u64 e) {
#if ELEM_BITS == 4
    return decode_nibble((base[e >> 1] >> (4 * (e & 1))) & 15u);
#elif DTYPE == 0
    return reinterpret_cast<const float*>(base)[e];
#elif DTYPE == 1
    return __half2float(reinterpret_cast<const __half*>(base)[e]);
#elif DTYPE == 2
    return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[e]);
#elif DTYPE == 3
    __nv_fp8_e4m3 v;
    v.__x = base[e];
    return float(v);
#else
#error "unknown DTYPE: a dtype the kernels do not decode (workload::DType::kernel_code)"
#endif
}

#define ELEMS_PER_VEC (128 / ELEM_BITS)

// The ELEMS_PER_VEC elements of one 16-byte load.
__device__ __forceinline__ void decode_vec(uint4 v, float* out) {
#if ELEM_BITS == 4
    // Codes two a byte, low nibble first: value 8j + i of word j is its nibble i.
    const unsigned int* u = reinterpret_cast<const unsigned int*>(&v);
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int i = 0; i < 8; i++) out[8 * j + i] = decode_nibble((u[j] >> (4 * i)) & 15u);
    }
#elif DTYPE == 3
    // fp8 two at a time (cvt.rn.f16x2.e4m3x2), then the exact f16x2 -> f32 pair: the same
    // values as one at a time, in fewer instructions. The low byte is the first element.
    const __nv_fp8x2_storage_t* p = reinterpret_cast<const __nv_fp8x2_storage_t*>(&v);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(p[i], __NV_E4M3);
        const float2 f = __half22float2(__half2(h));
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
#else
    const unsigned char* b = reinterpret_cast<const unsigned char*>(&v);
#pragma unroll
    for (int i = 0; i < ELEMS_PER_VEC; i++) {
        out[i] = decode_elem(b, i);
    }
#endif
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
