// The tensor-core fragment model of mma.cuh, checked: one warp loads A (16x16) and B (16x8),
// row-major 16-bit, into fragments as mma.cuh says, multiplies, and stores D (16x8, f32) from
// its fragment: bf16 operands into D[0..128]; bf16 again with B's fragment from shared memory
// by ldmatrix .trans into D[128..256]; f16 operands (A16, B16: the same values) into
// D[256..384]; bf16 with A's fragment by ldmatrix from A in shared memory into D[384..512];
// bf16 with B's by ldmatrix from B transposed (rows n, columns k) into D[512..640]; and the
// two B fragments of one ldmatrix .x4 .trans over a 16 x 16 B (k x n: B, then B's columns in
// reverse), addressed as the kv_decode kernels address V (lane i: row i % 8 + (i / 8 % 2) 8,
// columns 8 (i / 16)), into D[640..768] (matrices 0-1: B) and D[768..896] (matrices 2-3: B
// reversed), so every matrix of the .x4 is checked. The cuda backend runs it on every device
// before `mma` may run there (src/backend/cuda/fragments.rs); the host shim
// (tests/it/cuda_host.rs) must agree.

__device__ __forceinline__ void store_d(float* __restrict__ D, const float (&d)[4], int g, int t) {
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// A's and B's fragments loaded by hand from global memory.
__device__ __forceinline__ void fragments(const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,
                                          int g, int t, unsigned int (&a)[4], unsigned int (&b)[2]) {
    a[0] = pack_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = pack_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = pack_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = pack_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = pack_bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = pack_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
}

extern "C" __global__ void mma_check(const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,
                                     const unsigned short* __restrict__ A16, const unsigned short* __restrict__ B16,
                                     float* __restrict__ D) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    unsigned int a[4], b[2];
    fragments(A, B, g, t, a, b);
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d, a, b);
    store_d(D, d, g, t);

    // B's rows (k) as two 8x8 matrices, k 0-7 and 8-15 (lanes 16-31 repeat them).
    __shared__ __align__(16) unsigned short b_sh[16 * 8];
    for (int i = lane; i < 128; i += 32) b_sh[i] = B[i];
    __syncwarp();
    unsigned int bt[4];
    ldmatrix_x4_trans(bt, b_sh + ((lane >> 3) & 1) * 64 + (lane & 7) * 8);
    const unsigned int b2[2] = {bt[0], bt[1]};
    float d2[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d2, a, b2);
    store_d(D + 128, d2, g, t);

    unsigned int a16[4], b16[2];
    fragments(A16, B16, g, t, a16, b16);
    float d3[4] = {0.f, 0.f, 0.f, 0.f};
    mma_f16_16816(d3, a16, b16);
    store_d(D + 256, d3, g, t);

    // A's quarters as four matrices: lane i points at row (i / 8 % 2) * 8 + i % 8, column
    // (i / 16) * 8. B transposed (8 rows of 16): rows i % 8, columns (i / 8 % 2) * 8.
    __shared__ __align__(16) unsigned short a_sh[16 * 16];
    __shared__ __align__(16) unsigned short bt_sh[8 * 16];
    for (int i = lane; i < 256; i += 32) a_sh[i] = A[i];
    for (int i = lane; i < 128; i += 32) bt_sh[(i % 8) * 16 + i / 8] = B[i];
    __syncwarp();
    unsigned int al[4], bl[4];
    ldmatrix_x4(al, a_sh + (((lane >> 3) & 1) * 8 + (lane & 7)) * 16 + (lane >> 4) * 8);
    ldmatrix_x4(bl, bt_sh + (lane & 7) * 16 + ((lane >> 3) & 1) * 8);
    float d4[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d4, al, b);
    store_d(D + 384, d4, g, t);
    const unsigned int b5[2] = {bl[0], bl[1]};
    float d5[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d5, a, b5);
    store_d(D + 512, d5, g, t);

    // A 16 x 16 B: columns 0-7 are B, columns 8-15 B's columns 7..0.
    __shared__ __align__(16) unsigned short bw_sh[16 * 16];
    for (int i = lane; i < 256; i += 32) {
        const int k = i / 16, n = i % 16;
        bw_sh[i] = B[k * 8 + (n < 8 ? n : 15 - n)];
    }
    __syncwarp();
    unsigned int bw[4];
    ldmatrix_x4_trans(bw, bw_sh + (((lane >> 3) & 1) * 8 + (lane & 7)) * 16 + 8 * (lane >> 4));
    const unsigned int b6[2] = {bw[0], bw[1]}, b7[2] = {bw[2], bw[3]};
    float d6[4] = {0.f, 0.f, 0.f, 0.f}, d7[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d6, a, b6);
    mma_bf16_16816(d7, a, b7);
    store_d(D + 640, d6, g, t);
    store_d(D + 768, d7, g, t);
}
