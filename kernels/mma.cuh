// Tensor cores, warp-wide: D += A * B for one m16n8k16 tile, bf16 operands and f32
// accumulators (mma.sync.aligned.m16n8k16.row.col, sm_80 and later). The fragments, as the
// PTX ISA lays them out (g = lane / 4, t = lane % 4; two bf16 per 32-bit register, the lower
// index in the low half):
//   a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
// kernels/mma_check.cu holds a kernel to this model; tests/it/cuda.rs runs it on a GPU and
// tests/it/cuda_host.rs on the host shim, so the two agree before a kernel relies on either.

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#ifdef DECODELAB_HOST
    host_mma_bf16_16816(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The same with f16 operands (fp8 caches convert to f16 exactly, one instruction per pair).
__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#ifdef DECODELAB_HOST
    host_mma_f16_16816(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// d = a . b for one m16n8k16 tile, the accumulators starting from zero.
__device__ __forceinline__ void mma_bf16_first(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#ifdef DECODELAB_HOST
    d[0] = d[1] = d[2] = d[3] = 0.f;
    host_mma_bf16_16816(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(0.f));
#endif
}

// Four 8x8 b16 matrices from shared memory (ldmatrix .x4, sm_75 and later): lane i gives the
// address of row i % 8 of matrix i / 8 (16 contiguous, 16-byte aligned bytes); lane l gets
// in d[j] matrix j's (row g, columns 2t and 2t + 1), the first in the low half. With A's
// quarters as the matrices (rows 0-7 / 8-15 x columns 0-7 / 8-15, in a[]'s order), an A
// fragment; with K rows as a matrix's rows (tokens) and dims as its columns, B fragments.
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&d)[4], const unsigned short* row) {
#ifdef DECODELAB_HOST
    host_ldmatrix_x4(d, row);
#else
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#endif
}

// Four 8x8 b16 matrices from shared memory, transposed (ldmatrix .x4 .trans, sm_75 and later):
// lane i gives the address of row i % 8 of matrix i / 8 (16 contiguous, 16-byte aligned
// bytes); lane l gets in d[j] matrix j's (row 2t, column g) and (row 2t + 1, column g), the
// first in the low half: with a matrix's rows as k, one mma B fragment register.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int (&d)[4], const unsigned short* row) {
#ifdef DECODELAB_HOST
    host_ldmatrix_x4_trans(d, row);
#else
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a));
#endif
}

// Two bf16 (as raw bits) in one register, `lo` in the low half.
__device__ __forceinline__ unsigned int pack_bf16x2(unsigned short lo, unsigned short hi) {
    return (unsigned int)lo | ((unsigned int)hi << 16);
}

// bf16 bits of x, rounded to nearest even (x finite), and back: a value's hi part; x minus
// its hi part, rounded again, is its lo part (hi + lo keeps about 16 bits of x).
__device__ __forceinline__ unsigned short bf16_rn_bits(float x) {
    const unsigned int u = __float_as_uint(x);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float bf16_bits_float(unsigned short b) { return __uint_as_float((unsigned int)b << 16); }

// f16 bits of x, rounded to nearest even, and back: the f16 counterparts of the two above.
__device__ __forceinline__ unsigned short f16_rn_bits(float x) {
#ifdef DECODELAB_HOST
    return host_f16_rn_bits(x);
#else
    return __half_as_ushort(__float2half_rn(x));
#endif
}
__device__ __forceinline__ float f16_bits_float(unsigned short b) {
#ifdef DECODELAB_HOST
    return half_bits_to_float(b);
#else
    return __half2float(__ushort_as_half(b));
#endif
}

// Two floats as a bf16 pair, each rounded to nearest even, `lo` in the low half (one cvt).
__device__ __forceinline__ unsigned int bf16x2_rn(float lo, float hi) {
#ifdef DECODELAB_HOST
    return pack_bf16x2(bf16_rn_bits(lo), bf16_rn_bits(hi));
#else
    unsigned int d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
#endif
}

// Two fp8 (e4m3) as two f16 in one register, the first in the low half: exact, one cvt.
__device__ __forceinline__ unsigned int f16x2_of_fp8x2(__nv_fp8x2_storage_t pair) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
    return (unsigned int)h.x | ((unsigned int)h.y << 16);
}

// Eight fp8 (8 bytes) as eight f16 (16 bytes), in order.
__device__ __forceinline__ uint4 f16x8_of_fp8x8(uint2 w) {
    const __nv_fp8x2_storage_t* p = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
    return make_uint4(f16x2_of_fp8x2(p[0]), f16x2_of_fp8x2(p[1]), f16x2_of_fp8x2(p[2]), f16x2_of_fp8x2(p[3]));
}

// The operands a cache's dtype runs on: bf16 as stored; fp8 converted to f16 (exactly), on
// f16 tensor cores. MMA, and the rounding of q and P into (and back from) that type.
#if DTYPE == 3
#define MMA mma_f16_16816
#define RN_BITS f16_rn_bits
#define BITS_FLOAT f16_bits_float
#else
#define MMA mma_bf16_16816
#define RN_BITS bf16_rn_bits
#define BITS_FLOAT bf16_bits_float
#endif

// 16 bytes from global into shared memory by cp.async, not waited for, with its commit and
// wait (on the host shim: queued, landing at the wait that guarantees it). A caller's line
// ends in `// stream: <tensor>` where the copy streams one (the SASS report finds it there).
__device__ __forceinline__ void copy16(void* to, const unsigned char* from) {
#ifdef DECODELAB_HOST
    host_cp_async16(to, from);
#else
    const unsigned int sh = (unsigned int)__cvta_generic_to_shared(to);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sh), "l"(from));
#endif
}

// Close this thread's group of copies issued since the last commit.
__device__ __forceinline__ void copies_commit() {
#ifdef DECODELAB_HOST
    host_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;");
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void copies_wait() {
#ifdef DECODELAB_HOST
    host_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}
