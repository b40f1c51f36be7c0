// expert_gemv's second pass, after either gemv: y[t] = the sum of token t's top-k slot rows,
// in choice order from 0 (as every backend and the split combine sum them).
extern "C" __global__ void combine(const float* __restrict__ slot_out, float* __restrict__ y) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)BATCH * D_OUT) return;
    const u64 t = i / D_OUT, o = i % D_OUT;
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < TOP_K; j++) s += slot_out[(t * TOP_K + j) * D_OUT + o];
    y[i] = s;
}
