// The compute ceilings of a device (cuda/peak.rs). Its CUDA cores: 8 independent FMA chains per thread, held in
// registers, `steps` steps of x = x * a + b, with a and b read from memory (1 and 1 at run
// time) so nothing folds them. Each thread writes the sum of its chains, which the host
// checks against the closed form: chain s ends at s + steps, the sum at 28 + 8 steps.

extern "C" __global__ void peak_fma(const float* __restrict__ ab, float* __restrict__ out, int steps) {
    const float a = ab[0], b = ab[1];
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; i++) x[i] = (float)i;
    for (int s = 0; s < steps; s++) {
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = fmaf(x[i], a, b);
    }
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) sum += x[i];
    out[(unsigned long long)blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

// The compute ceiling of its tensor cores (sm_80 and later): 8 independent m16n8k16 bf16
// accumulators per warp, `steps` steps of D += A * B with A and B all ones (the bf16 pair
// read from memory, so nothing folds). Every D element ends at 16 x steps; each thread
// writes the sum of its 32 (512 x steps), which the host checks.
extern "C" __global__ void peak_mma(const unsigned int* __restrict__ one, float* __restrict__ out, int steps) {
    float sum = -1.f;
#if defined(DECODELAB_HOST) || __CUDA_ARCH__ >= 800
    const unsigned int o = one[0];
    const unsigned int a[4] = {o, o, o, o};
    const unsigned int b[2] = {o, o};
    float d[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) d[i][j] = 0.f;
    for (int s = 0; s < steps; s++) {
#pragma unroll
        for (int i = 0; i < 8; i++) mma_bf16_16816(d[i], a, b);
    }
    sum = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) sum += d[i][j];
#endif
    out[(unsigned long long)blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
