// The tensor-core fragment model of mma.cuh, checked: one warp loads A (16x16) and B (16x8),
// both bf16 row-major, into fragments as mma.cuh says, multiplies, and stores D (16x8, f32)
// from its fragment in D[0..128]; then again with B's fragment from shared memory by
// ldmatrix .trans, into D[128..256]. A GPU (tests/cuda.rs) and the host shim
// (tests/cuda_host.rs) must both give A * B twice.

extern "C" __global__ void mma_check(const unsigned short* __restrict__ A, const unsigned short* __restrict__ B,
                                     float* __restrict__ D) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned int a[4] = {
        pack_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
        pack_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
        pack_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
        pack_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]),
    };
    const unsigned int b[2] = {
        pack_bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
        pack_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]),
    };
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d, a, b);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];

    // B's rows (k) as two 8x8 matrices, k 0-7 and 8-15 (lanes 16-31 repeat them).
    __shared__ __align__(16) unsigned short b_sh[16 * 8];
    for (int i = lane; i < 128; i += 32) b_sh[i] = B[i];
    __syncwarp();
    unsigned int bt[4];
    ldmatrix_x4_trans(bt, b_sh + ((lane >> 3) & 1) * 64 + (lane & 7) * 8);
    const unsigned int b2[2] = {bt[0], bt[1]};
    float d2[4] = {0.f, 0.f, 0.f, 0.f};
    mma_bf16_16816(d2, a, b2);
    D[128 + g * 8 + 2 * t] = d2[0];
    D[128 + g * 8 + 2 * t + 1] = d2[1];
    D[128 + (g + 8) * 8 + 2 * t] = d2[2];
    D[128 + (g + 8) * 8 + 2 * t + 1] = d2[3];
}
