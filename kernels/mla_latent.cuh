// What the tensor-core MLA kernels (`mma`, `mma_wide`) share: where a token's latent row
// lives (copied into shared memory by mma.cuh's copy16), and a head's online softmax over a
// 16-token tile.

#define NEG_BIG (-3.0e38f)

// The latent row of token `t` of sequence `b`, in elements.
__device__ __forceinline__ u64 latent_row(const int* __restrict__ page_table, int b, int t) {
    const u64 page = (u64)page_table[(u64)b * MAX_PAGES + t / PAGE];
    return (page * PAGE + t % PAGE) * DK;
}

// One tile of a head's online softmax, a token per lane of 16 adjacent lanes: the token's
// probability against the new running max (0 past the context, `live` false), with the
// running max and sum moved on and `corr` the factor the earlier sums take.
__device__ __forceinline__ float softmax_tile16(float s, bool live, float& m_run, float& l_run, float& corr) {
    s = live ? s : NEG_BIG;
    float mx = s;
#pragma unroll
    for (int o2 = 8; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
    const float m_new = fmaxf(m_run, mx);
    corr = __expf(m_run - m_new);
    const float p = live ? __expf(s - m_new) : 0.f;
    float ps = p;
#pragma unroll
    for (int o2 = 8; o2 > 0; o2 >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o2);
    m_run = m_new;
    l_run = l_run * corr + ps;
    return p;
}
