// The compute ceiling of a device's CUDA cores: 8 independent FMA chains per thread, held in
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
