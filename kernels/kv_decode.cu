// kv_decode: one decode step of paged attention (GQA, or MLA in absorbed form), the same
// algorithm as shaders/kv_decode.wgsl.
//
// Grid (splits, head blocks, sequences); a block owns HB query heads sharing one KV head and
// one slice of the context (flash-decoding: many slices fill every SM even at batch 1; the
// `merge` kernel combines them exactly with their log-sum-exp). Per tile of WG tokens:
//  1. scores: one thread per token; its page index is looked up once and staged in shared
//     memory; it reads the token's K row once for all HB heads with 16-byte loads, several
//     in flight (unrolled);
//  2. softmax: running max and sum per head, the accumulator rescaled once per tile;
//  3. PV: each thread owns DV_PER_THREAD output dims of every head; a warp reads 32
//     consecutive V elements of one token, so the loads coalesce.
// The backend defines the shape constants (see the prelude it prepends). Lines that load a
// streamed tensor end in `// stream: <tensor>`: the SASS report (`decodelab kernels --sass`)
// finds those loads through the line table.

#define NEG_BIG (-3.0e38f)

// __launch_bounds__(WG, 1): let ptxas use the registers it needs (the per-thread score,
// accumulator and decode arrays); without it ptxas aims at 64 registers and spills.
extern "C" __global__ void __launch_bounds__(WG, 1) attend(
    const float* __restrict__ q, const unsigned char* __restrict__ k, const unsigned char* __restrict__ v,
    const int* __restrict__ page_table, const int* __restrict__ context_lens,
    float* __restrict__ partial_acc, float2* __restrict__ partial_ml) {
    __shared__ float q_sh[HB * DK];
    __shared__ float p_sh[HB * WG];
    __shared__ u64 row_sh[WG];

    const int split = blockIdx.x, h0 = blockIdx.y * HB, b = blockIdx.z, lid = threadIdx.x;
    const int g = h0 / GROUP;
    const int len = context_lens[b];
    const int start = split * SPLIT_TOKENS;
    const int end = min(start + SPLIT_TOKENS, len);

    for (int i = lid; i < HB * DK; i += WG)
        q_sh[i] = q[((u64)b * HQ + h0 + i / DK) * DK + i % DK] * (SCALE * K_SCALE);
    float m_run[HB], l_run[HB], acc[HB * DV_PER_THREAD];
#pragma unroll
    for (int j = 0; j < HB; j++) { m_run[j] = NEG_BIG; l_run[j] = 0.f; }
#pragma unroll
    for (int i = 0; i < HB * DV_PER_THREAD; i++) acc[i] = 0.f;
    __syncthreads();

    for (int tile = start; tile < end; tile += WG) {
        const int t = tile + lid;
        if (t < end) {
            const u64 page = (u64)page_table[(u64)b * MAX_PAGES + t / PAGE];
            const u64 row = ((page * PAGE + t % PAGE) * HKV + g) * DK;
            row_sh[lid] = row;
            float s[HB];
#pragma unroll
            for (int j = 0; j < HB; j++) s[j] = 0.f;
#if ROW_ALIGNED
            const uint4* kv4 = reinterpret_cast<const uint4*>(k + row * ELEM_BYTES);
#pragma unroll
            for (int vi = 0; vi < DK / ELEMS_PER_VEC; vi++) {
                float x[ELEMS_PER_VEC];
                decode_vec(__ldg(kv4 + vi), x); // stream: K
#pragma unroll
                for (int e = 0; e < ELEMS_PER_VEC; e++)
#pragma unroll
                    for (int j = 0; j < HB; j++) s[j] += q_sh[j * DK + vi * ELEMS_PER_VEC + e] * x[e];
            }
#else
            for (int d = 0; d < DK; d++) {
                const float x = decode_elem(k, row + d); // stream: K
#pragma unroll
                for (int j = 0; j < HB; j++) s[j] += q_sh[j * DK + d] * x;
            }
#endif
#pragma unroll
            for (int j = 0; j < HB; j++) p_sh[j * WG + lid] = s[j];
        } else {
#pragma unroll
            for (int j = 0; j < HB; j++) p_sh[j * WG + lid] = NEG_BIG;
        }
        __syncthreads();

        const int n = min(WG, end - tile);
        float corr[HB], m_new[HB];
#pragma unroll
        for (int j = 0; j < HB; j++) {
            float mx = m_run[j];
            for (int i = 0; i < n; i++) mx = fmaxf(mx, p_sh[j * WG + i]);
            m_new[j] = mx;
            corr[j] = __expf(m_run[j] - mx);
            m_run[j] = mx;
        }
        __syncthreads();
        if (lid < n) {
#pragma unroll
            for (int j = 0; j < HB; j++) p_sh[j * WG + lid] = __expf(p_sh[j * WG + lid] - m_new[j]);
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < HB; j++) {
            float sum = 0.f;
            for (int i = 0; i < n; i++) sum += p_sh[j * WG + i];
            l_run[j] = l_run[j] * corr[j] + sum;
        }

#pragma unroll
        for (int kk = 0; kk < DV_PER_THREAD; kk++) {
            const int d = lid + kk * WG;
            if (d < DV) {
#pragma unroll
                for (int j = 0; j < HB; j++) acc[j * DV_PER_THREAD + kk] *= corr[j];
                for (int i = 0; i < n; i++) {
#if IS_MLA
                    const float x = decode_elem(k, row_sh[i] + d); // stream: latent (V: its head)
#else
                    const float x = decode_elem(v, row_sh[i] / DK * DV + d); // stream: V
#endif
#pragma unroll
                    for (int j = 0; j < HB; j++) acc[j * DV_PER_THREAD + kk] += p_sh[j * WG + i] * x;
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int j = 0; j < HB; j++) {
        const u64 slot = ((u64)b * HQ + h0 + j) * SPLITS + split;
#pragma unroll
        for (int kk = 0; kk < DV_PER_THREAD; kk++) {
            const int d = lid + kk * WG;
            if (d < DV) partial_acc[slot * DV + d] = acc[j * DV_PER_THREAD + kk];
        }
        if (lid == 0) partial_ml[slot] = make_float2(m_run[j], l_run[j]);
    }
}
