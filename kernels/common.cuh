// Storage dtypes decoded with CUDA's own types. The backend defines DTYPE (0 f32, 1 f16,
// 2 bf16, 3 fp8_e4m3, 4 mxfp4), ELEM_BITS and ELEM_BYTES before this file. Accumulation is
// always f32.
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

typedef unsigned long long u64;

// Element e of a tensor of the storage dtype.
__device__ __forceinline__ float decode_elem(const unsigned char* __restrict__ base, u64 e) {
#if DTYPE == 0
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

// Sub-byte dtypes with block scales (mxfp4) have no CUDA kernel yet: the backend refuses
// them (covers), and a prelude that asks anyway does not compile.
#if ELEM_BITS % 8 != 0
#error "sub-byte dtype: these kernels index whole-byte elements (ELEM_BITS % 8 != 0)"
#endif

#define ELEMS_PER_VEC (16 / ELEM_BYTES)

// The ELEMS_PER_VEC elements of one 16-byte load.
__device__ __forceinline__ void decode_vec(uint4 v, float* out) {
#if DTYPE == 3
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
