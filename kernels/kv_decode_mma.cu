// kv_decode "mma": GQA decode on tensor cores (mma.cuh). A block owns HB query heads of one
// KV head's group (the whole group up to 8; larger groups in blocks of the largest divisor
// up to 8, side by side, so K and V come from HBM once and from L2 after) and one slice of
// one sequence's context, as the plan cuts it; `merge` combines the slices. Each warp takes 16-token tiles
// of the slice in turn and keeps its own online softmax; the warps meet once, at the end.
//
// Scores, S = Q K^T: A = the block's q (rows 0-7: q rounded to bf16, "hi"; rows 8-15: what hi
// misses, "lo"; row pairs sum to f32-grade scores), B = 8 tokens' K. A lane loads 16
// contiguous bytes of its token's K row per 32 dims and feeds them straight to two mma's:
// the dims are taken in an order (q's fragments use the same) that makes every K load 128-bit.
// Softmax per head across the lane quad (two shuffles). PV: A = P split hi/lo the same way,
// B = V from the warp's tile in shared memory (staged with 128-bit loads) by ldmatrix.trans.
// Needs bf16 or fp8 K and V of one head dim, a multiple of 32 (fp8: 64) and at most 128.
// fp8 converts to f16 exactly as it arrives (cvt two at a time) and runs on f16 tensor
// cores; q is not pre-scaled (the scales multiply the scores), so its lo part stays inside
// f16's range.

#if (DTYPE != 2 && DTYPE != 3) || IS_MLA || DK != DV || DK % (64 / ELEM_BYTES) != 0 || DK > 128 || HB > 8 || GROUP % HB != 0
#error "kv_decode mma: bf16 or fp8 GQA, DK == DV, a multiple of 32 (fp8: 64) up to 128, up to 8 heads of a group per block (covers refuses the rest)"
#endif

#define NEG_BIG (-3.0e38f)
#define WARPS (WG / 32)
#define RUN (16 / ELEM_BYTES) // dims of one lane's 16-byte K load
#define MPC (RUN / 4)         // mma's per chunk (a chunk: the quad's 4 loads, 4 x RUN dims)
#define KC (DK / (4 * RUN))   // chunks of a K row
#define NB (DV / 8)           // 8-column blocks of the output
#define VROW (DV + 8)         // a V row in shared memory, padded 16 bytes: no bank conflicts
#define VPT (DV / RUN / 4)    // V loads per token of a lane (the quad shares a token's row)
// Odd rows of the V tile take their parts rotated, so a quarter-warp's 16-byte stores (rows r,
// r + 1, four lanes each) land on 8 distinct bank groups (at d64 and d128; 2-way at d32, d96).
#define VSHIFT ((4 - (VROW * 2 / 16)) & 7)
// The 16-byte part of its token's V row that lane (r, c) loads i-th, and stores there.
#define V_PART(r, c, i) (((c) + 4 * (i) + ((r) & 1) * VSHIFT) % (DV / RUN))

// 16 bytes of K or V as 16-bit operands: bf16 as stored; fp8 converted to f16 (twice the regs).
__device__ __forceinline__ void operands(uint4 raw, unsigned int (&out)[RUN / 2]) {
#if DTYPE == 3
    const __nv_fp8x2_storage_t* pairs = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = f16x2_of_fp8x2(pairs[i]);
#else
    out[0] = raw.x, out[1] = raw.y, out[2] = raw.z, out[3] = raw.w;
#endif
}

// The row of token `t` of sequence `b`, in elements, for KV head `g`.
__device__ __forceinline__ u64 kv_row(const int* __restrict__ page_table, int b, int t, int g) {
    const u64 page = (u64)page_table[(u64)b * MAX_PAGES + t / PAGE];
    return ((page * PAGE + t % PAGE) * HKV + g) * DK;
}

extern "C" __global__ void __launch_bounds__(WG) attend(
    const float* __restrict__ q, const unsigned char* __restrict__ k, const unsigned char* __restrict__ v,
    const int* __restrict__ page_table, const int* __restrict__ context_lens,
    float* __restrict__ partial_acc, float2* __restrict__ partial_ml) {
    __shared__ __align__(16) unsigned short v_sh[WARPS][16 * VROW]; // each warp's V tile, 16-bit operands
    __shared__ float o_sh[WARPS][HB * DV];
    __shared__ float ml_sh[WARPS][HB][2];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, c = lane & 3;
    const int split = blockIdx.x, b = blockIdx.z, h0 = blockIdx.y * HB, kvh = h0 / GROUP;
    const int len = context_lens[b];
    const int start = split * SPLIT_TOKENS, end = min(start + SPLIT_TOKENS, len);

    // q's fragments, hi in rows 0-7 and lo in rows 8-15 (head r; rows past the group are 0).
    // Chunk j's dims RUN c .. RUN c + RUN - 1 (lane c's load) feed mma's MPC j + m, four each:
    // pairs (4m, 4m+1) and (4m+2, 4m+3).
    unsigned int qa[MPC * KC][4];
#pragma unroll
    for (int j = 0; j < KC; j++) {
        unsigned short hi[RUN], lo[RUN];
#pragma unroll
        for (int e = 0; e < RUN; e++) {
            const float x = r < HB ? q[((u64)b * HQ + h0 + r) * DK + 4 * RUN * j + RUN * c + e] : 0.f;
            hi[e] = RN_BITS(x);
            lo[e] = RN_BITS(x - BITS_FLOAT(hi[e]));
        }
#pragma unroll
        for (int m = 0; m < MPC; m++) {
            qa[MPC * j + m][0] = pack_bf16x2(hi[4 * m], hi[4 * m + 1]);
            qa[MPC * j + m][1] = pack_bf16x2(lo[4 * m], lo[4 * m + 1]);
            qa[MPC * j + m][2] = pack_bf16x2(hi[4 * m + 2], hi[4 * m + 3]);
            qa[MPC * j + m][3] = pack_bf16x2(lo[4 * m + 2], lo[4 * m + 3]);
        }
    }

    float m_run = NEG_BIG, l_part = 0.f; // head r; l_part: this lane's tokens only
    float o[NB][4];
#pragma unroll
    for (int n = 0; n < NB; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    for (int tile = start + 16 * warp; tile < end; tile += 16 * WARPS) {
        // This lane's tokens, tile + r and tile + 8 + r (past the end: the last real row, masked
        // below): their K rows feed its score fragments and their V rows (DK == DV: the same
        // offset) its quad's share of the warp's V tile, so a lane looks up two rows per tile.
        u64 at[2];
#pragma unroll
        for (int h = 0; h < 2; h++) at[h] = kv_row(page_table, b, min(tile + 8 * h + r, end - 1), kvh) * ELEM_BYTES;
        // V's loads go out with K's: both are in flight through the scores and the softmax.
        uint4 vraw[2][VPT];
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int i = 0; i < VPT; i++) {
                vraw[h][i] = __ldg(reinterpret_cast<const uint4*>(v + at[h]) + V_PART(r, c, i)); // stream: V
            }
        }
        // Scores of tokens tile + 8h + 2c + {0, 1} for head r, in s[h][0..1].
        float s[2][2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4* krow = reinterpret_cast<const uint4*>(k + at[h]);
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int j = 0; j < KC; j++) {
                unsigned int kb[RUN / 2];
                operands(__ldg(krow + 4 * j + c), kb); // stream: K
#pragma unroll
                for (int m = 0; m < MPC; m++) {
                    const unsigned int bm[2] = {kb[2 * m], kb[2 * m + 1]};
                    MMA(acc, qa[MPC * j + m], bm);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int tok = tile + 8 * h + 2 * c + i;
                s[h][i] = tok < end ? (acc[i] + acc[2 + i]) * (SCALE * K_SCALE) : NEG_BIG;
            }
        }
        // Online softmax for head r across the quad.
        float mx = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run, mx);
        const float corr = __expf(m_run - m_new);
        m_run = m_new;
        unsigned short ph[2][2], pl[2][2];
        float psum = 0.f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const float p = s[h][i] == NEG_BIG ? 0.f : __expf(s[h][i] - m_new);
                psum += p;
                ph[h][i] = RN_BITS(p);
                pl[h][i] = RN_BITS(p - BITS_FLOAT(ph[h][i]));
            }
        }
        l_part = l_part * corr + psum;
        const unsigned int pa[4] = {pack_bf16x2(ph[0][0], ph[0][1]), pack_bf16x2(pl[0][0], pl[0][1]),
                                    pack_bf16x2(ph[1][0], ph[1][1]), pack_bf16x2(pl[1][0], pl[1][1])};
        // The lane's V parts into this warp's shared tile (16-bit operands), once the warp is
        // done reading the last tile's.
        __syncwarp();
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int i = 0; i < VPT; i++) {
                const int part = V_PART(r, c, i);
                unsigned int vo[RUN / 2];
                operands(vraw[h][i], vo);
#pragma unroll
                for (int w = 0; w < RUN / 8; w++)
                    *reinterpret_cast<uint4*>(v_sh[warp] + (8 * h + r) * VROW + part * RUN + 8 * w) =
                        make_uint4(vo[4 * w], vo[4 * w + 1], vo[4 * w + 2], vo[4 * w + 3]);
            }
        }
        __syncwarp();
        // Once the running max settles, no head's scale changes: the warp skips the rescale.
        if (!__all_sync(0xffffffffu, corr == 1.f)) {
#pragma unroll
            for (int n = 0; n < NB; n++) {
#pragma unroll
                for (int i = 0; i < 4; i++) o[n][i] *= corr;
            }
        }
        // B for two output blocks per ldmatrix.trans: lane i points at token (i / 8 % 2) * 8 +
        // i % 8, dims of block n + i / 16; the transpose hands each lane its (token pair, dim).
        const unsigned short* vrow_sh = v_sh[warp] + (((lane >> 3) & 1) * 8 + (lane & 7)) * VROW + 8 * (lane >> 4);
#pragma unroll
        for (int n = 0; n < NB; n += 2) {
            unsigned int vb[4];
            ldmatrix_x4_trans(vb, vrow_sh + 8 * n);
            const unsigned int b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
            MMA(o[n], pa, b0);
            MMA(o[n + 1], pa, b1);
        }
    }

    // The warps meet: each leaves its (max, sum) and output per head, one warp's lanes of a
    // quad the same head; then the block combines them for its slice.
    l_part += __shfl_xor_sync(0xffffffffu, l_part, 1);
    l_part += __shfl_xor_sync(0xffffffffu, l_part, 2);
    if (r < HB) {
        if (c == 0) {
            ml_sh[warp][r][0] = m_run;
            ml_sh[warp][r][1] = l_part;
        }
#pragma unroll
        for (int n = 0; n < NB; n++) {
            o_sh[warp][r * DV + n * 8 + 2 * c] = o[n][0] + o[n][2];
            o_sh[warp][r * DV + n * 8 + 2 * c + 1] = o[n][1] + o[n][3];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < HB * DV; i += WG) {
        const int h = i / DV, d = i % DV;
        float m = NEG_BIG;
#pragma unroll
        for (int w = 0; w < WARPS; w++) m = fmaxf(m, ml_sh[w][h][0]);
        float acc = 0.f, l = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; w++) {
            const float f = ml_sh[w][h][1] > 0.f ? __expf(ml_sh[w][h][0] - m) : 0.f;
            acc += o_sh[w][i] * f;
            l += ml_sh[w][h][1] * f;
        }
        const u64 slot = ((u64)b * HQ + h0 + h) * SPLITS + split;
        partial_acc[slot * DV + d] = acc;
        if (d == 0) partial_ml[slot] = make_float2(m, l);
    }
}
