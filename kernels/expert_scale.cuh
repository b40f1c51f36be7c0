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
