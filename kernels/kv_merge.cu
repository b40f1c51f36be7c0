// kv_decode's second pass, after either attend: each context slice left its unnormalised
// accumulator and (max, sum); merge combines them exactly with their log-sum-exp.
// out = sum_s acc_s e^(m_s - M) / L, lse = M + ln L over the slices of one (sequence, head).
extern "C" __global__ void merge(const float* __restrict__ partial_acc, const float2* __restrict__ partial_ml,
                                 float* __restrict__ out, float* __restrict__ lse) {
    const u64 bh = blockIdx.x;
    float m = NEG_BIG;
    for (int s = 0; s < SPLITS; s++) {
        const float2 ml = partial_ml[bh * SPLITS + s];
        if (ml.y > 0.f) m = fmaxf(m, ml.x);
    }
    float l = 0.f;
    for (int s = 0; s < SPLITS; s++) {
        const float2 ml = partial_ml[bh * SPLITS + s];
        if (ml.y > 0.f) l += ml.y * __expf(ml.x - m);
    }
    for (int d = threadIdx.x; d < DV; d += blockDim.x) {
        float o = 0.f;
        for (int s = 0; s < SPLITS; s++) {
            const float2 ml = partial_ml[bh * SPLITS + s];
            if (ml.y > 0.f) o += partial_acc[(bh * SPLITS + s) * DV + d] * __expf(ml.x - m);
        }
        out[bh * DV + d] = o / l * V_SCALE;
    }
    if (threadIdx.x == 0) lse[bh] = m + logf(l);
}
