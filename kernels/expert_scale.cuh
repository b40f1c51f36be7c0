// fp8 weight scales. SCALE_BLOCK 0: one per output row, applied to the finished dot.
// SCALE_BLOCK > 0: one per SCALE_BLOCK x SCALE_BLOCK block of (rows, columns), w_scale laid
// out [expert][SB_OUT][SB_IN]; a 16-byte vector never straddles a block (SCALE_BLOCK is a
// multiple of 16 elements), so a kernel takes one scale per vector.
#if SCALE_BLOCK && (SCALE_BLOCK % 16)
#error "SCALE_BLOCK must be a multiple of 16 elements (one 16-byte fp8 vector)"
#endif

// The scales of expert e's row o: element i's scale is row_scales(...)[i / SCALE_BLOCK].
__device__ __forceinline__ const float* row_scales(const float* __restrict__ w_scale, unsigned int e, int o) {
#if SCALE_BLOCK
    return w_scale + ((u64)e * SB_OUT + o / SCALE_BLOCK) * SB_IN;
#else
    return w_scale;
#endif
}

// 4-bit dtypes (GROUP > 0): group scale gi of the weights, from the scale buffer's bytes
// (SCALE_CODE 1 bf16, 2 E8M0, 3 E4M3); nvfp4's f32 per expert (TENSOR_SCALE) from word
// TS_WORD of the same buffer.
#if GROUP
__device__ __forceinline__ float group_scale(const float* __restrict__ w_scale, u64 gi) {
#if SCALE_CODE == 1
    const unsigned short b = __ldg(reinterpret_cast<const unsigned short*>(w_scale) + gi);
    return __uint_as_float((unsigned int)b << 16);
#else
    const unsigned int b = __ldg(reinterpret_cast<const unsigned char*>(w_scale) + gi);
#if SCALE_CODE == 2
    return __uint_as_float(b == 0 ? 0x00400000u : b << 23); // 2^(b - 127)
#elif SCALE_CODE == 3
    __nv_fp8_e4m3 s;
    s.__x = (unsigned char)b;
    return float(s);
#else
#error "GROUP without a SCALE_CODE"
#endif
#endif
}
#if GROUP % 16
#error "a 4-bit group is a multiple of 16 values"
#endif
#endif
