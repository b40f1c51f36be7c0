// kv_decode "mma" for MLA (absorbed): up to 8 query heads per block on tensor cores (mma.cuh),
// one slice of one sequence's context, as the plan cuts it; `merge` combines the slices. The
// head blocks of one slice are launched next to each other, so the latent they all read
// comes from HBM once and from L2 after.
//
// Per 16-token tile, 4 warps:
//  0. the tile's latent rows (DK bf16 each) arrive in shared memory by 16-byte cp.async,
//     the next tile's already in flight (two buffers);
//  1. scores, S = Q K^T: A = q (rows 0-7: q rounded to bf16, "hi", one head per row; rows
//     8-15: what hi misses, "lo"), B = the tile's latent rows; each warp takes a quarter of
//     the DK dims (its q fragments stay in registers) and leaves partial scores;
//  2. softmax: a thread per (head, token) sums the partials and runs the online softmax for
//     its head across 16 lanes; P goes to shared memory split hi/lo the same way;
//  3. PV: each warp owns a quarter of the DV output dims: A = P, B = the first DV dims of
//     the same latent rows (V is inside the latent).
// Needs a bf16 latent, DK and DV multiples of 64 (covers refuses the rest).

#if DTYPE != 2 || !IS_MLA || DK % 64 != 0 || DV % 64 != 0 || DV > DK || HB > 8 || WG != 128
#error "kv_decode mma (MLA): a bf16 latent, DK % 64 == 0, DV % 64 == 0, up to 8 heads per block, 128 threads"
#endif

#define NEG_BIG (-3.0e38f)
#define WARPS 4
#define TT 16                   // tokens per tile
#define KSW (DK / 16 / WARPS)   // 16-dim k-steps of the scores per warp
#define NBW (DV / 8 / WARPS)    // 8-dim output blocks per warp
#define LROW (DK + 8)           // a latent row in shared memory, padded 16 bytes: no bank conflicts
#define PROW (TT + 8)           // a row of P, padded the same way
#define TPT (WG / TT)           // threads per token of a tile load

// The latent row of token `t` of sequence `b`, in elements.
__device__ __forceinline__ u64 latent_row(const int* __restrict__ page_table, int b, int t) {
    const u64 page = (u64)page_table[(u64)b * MAX_PAGES + t / PAGE];
    return (page * PAGE + t % PAGE) * DK;
}

// Tokens [tile, tile + TT) of the slice into `dst` (rows past `end` repeat the last real one;
// their scores are masked), 16 bytes per copy, not waited for. TPT threads share a token:
// one page lookup each, then 16-byte pieces TPT apart along the row.
__device__ __forceinline__ void load_tile(unsigned short* dst, const unsigned char* __restrict__ k,
                                          const int* __restrict__ page_table, int b, int tile, int end) {
    const int tt = threadIdx.x / TPT, part = threadIdx.x % TPT;
    const unsigned char* src = k + (latent_row(page_table, b, min(tile + tt, end - 1)) + part * 8) * 2;
    unsigned short* to = dst + tt * LROW + part * 8;
#pragma unroll
    for (int i = 0; i < DK / 8 / TPT; i++) {
#ifdef DECODELAB_HOST
        *reinterpret_cast<uint4*>(to + i * TPT * 8) = *reinterpret_cast<const uint4*>(src + i * TPT * 16);
#else
        const unsigned int sh = (unsigned int)__cvta_generic_to_shared(to + i * TPT * 8);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sh), "l"(src + i * TPT * 16)); // stream: latent
#endif
    }
#ifndef DECODELAB_HOST
    asm volatile("cp.async.commit_group;");
#endif
}

// Wait until at most `n` tile loads of this thread are still in flight.
template <int N> __device__ __forceinline__ void wait_tiles() {
#ifndef DECODELAB_HOST
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
#endif
}

extern "C" __global__ void __launch_bounds__(WG) attend(
    const float* __restrict__ q, const unsigned char* __restrict__ k, const unsigned char* __restrict__ v,
    const int* __restrict__ page_table, const int* __restrict__ context_lens,
    float* __restrict__ partial_acc, float2* __restrict__ partial_ml) {
    __shared__ __align__(16) unsigned short lat[2][TT * LROW];
    __shared__ float s_part[WARPS][8][TT];
    __shared__ __align__(16) unsigned short p_sh[16 * PROW];
    __shared__ float corr_sh[8];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, c = lane & 3;
    const int split = blockIdx.x, h0 = blockIdx.y * HB, b = blockIdx.z;
    const int len = context_lens[b];
    const int start = split * SPLIT_TOKENS, end = min(start + SPLIT_TOKENS, len);
    if (start < end) load_tile(lat[0], k, page_table, b, start, end);

    // This warp's q fragments: head r's hi in row r, its lo in row r + 8, dims of k-step j.
    unsigned int qa[KSW][4];
#pragma unroll
    for (int j = 0; j < KSW; j++) {
        const int d0 = 16 * (warp * KSW + j) + 2 * c;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            unsigned short hi[2], lo[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float x = r < HB ? q[((u64)b * HQ + h0 + r) * DK + d0 + 8 * half + e] * (SCALE * K_SCALE) : 0.f;
                hi[e] = bf16_rn_bits(x);
                lo[e] = bf16_rn_bits(x - bf16_bits_float(hi[e]));
            }
            qa[j][2 * half] = pack_bf16x2(hi[0], hi[1]);
            qa[j][2 * half + 1] = pack_bf16x2(lo[0], lo[1]);
        }
    }

    // The softmax thread's head and token; its running max and sum (every thread of a head
    // holds the same ones).
    const int sh_head = threadIdx.x / TT, sh_tok = threadIdx.x % TT;
    float m_run = NEG_BIG, l_run = 0.f;
    float o[NBW][4];
#pragma unroll
    for (int n = 0; n < NBW; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    int buf = 0;
    for (int tile = start; tile < end; tile += TT, buf ^= 1) {
        if (tile + TT < end) {
            load_tile(lat[buf ^ 1], k, page_table, b, tile + TT, end);
            wait_tiles<1>();
        } else {
            wait_tiles<0>();
        }
        __syncthreads();
        const unsigned short* lt = lat[buf];

        // 1. Partial scores over this warp's dims, tokens 8n + r of the tile as B's columns.
#pragma unroll
        for (int n = 0; n < 2; n++) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            const unsigned short* row = lt + (8 * n + r) * LROW + 16 * warp * KSW + 2 * c;
#pragma unroll
            for (int j = 0; j < KSW; j++) {
                const unsigned int kb[2] = {*reinterpret_cast<const unsigned int*>(row + 16 * j),
                                            *reinterpret_cast<const unsigned int*>(row + 16 * j + 8)};
                mma_bf16_16816(acc, qa[j], kb);
            }
            // Row r (hi) plus row r + 8 (lo): head r's score of tokens 8n + 2c, +1.
            s_part[warp][r][8 * n + 2 * c] = acc[0] + acc[2];
            s_part[warp][r][8 * n + 2 * c + 1] = acc[1] + acc[3];
        }
        __syncthreads();

        // 2. Online softmax: thread (head, token); a head's 16 tokens are 16 adjacent lanes.
        {
            const int tok = tile + sh_tok;
            float s = s_part[0][sh_head][sh_tok] + s_part[1][sh_head][sh_tok] + s_part[2][sh_head][sh_tok] +
                      s_part[3][sh_head][sh_tok];
            s = tok < end ? s : NEG_BIG;
            float mx = s;
#pragma unroll
            for (int o2 = 8; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
            const float m_new = fmaxf(m_run, mx);
            const float corr = __expf(m_run - m_new);
            const float p = tok < end ? __expf(s - m_new) : 0.f;
            float ps = p;
#pragma unroll
            for (int o2 = 8; o2 > 0; o2 >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o2);
            m_run = m_new;
            l_run = l_run * corr + ps;
            const unsigned short ph = bf16_rn_bits(p);
            p_sh[sh_head * PROW + sh_tok] = ph;
            p_sh[(sh_head + 8) * PROW + sh_tok] = bf16_rn_bits(p - bf16_bits_float(ph));
            if (sh_tok == 0) corr_sh[sh_head] = corr;
        }
        __syncthreads();

        // 3. PV over this warp's output dims: A = P (rows r, r + 8), B = the latent's first DV dims.
        const unsigned int* pw = reinterpret_cast<const unsigned int*>(p_sh);
        const unsigned int pa[4] = {pw[(r * PROW + 2 * c) / 2], pw[((r + 8) * PROW + 2 * c) / 2],
                                    pw[(r * PROW + 2 * c + 8) / 2], pw[((r + 8) * PROW + 2 * c + 8) / 2]};
        // Once the running max settles, no head's scale changes: the warp skips the rescale.
        const float corr = corr_sh[r];
        if (!__all_sync(0xffffffffu, corr == 1.f)) {
#pragma unroll
            for (int n = 0; n < NBW; n++) {
#pragma unroll
                for (int i = 0; i < 4; i++) o[n][i] *= corr;
            }
        }
        // B for two output blocks per ldmatrix: lane i points at token (i / 8 % 2) * 8 + i % 8,
        // dims of block n + i / 16; the transpose hands each lane its (token pair, dim).
        const unsigned short* vrow = lt + (((lane >> 3) & 1) * 8 + (lane & 7)) * LROW + warp * (DV / WARPS) + 8 * (lane >> 4);
#pragma unroll
        for (int n = 0; n < NBW; n += 2) {
            unsigned int vb[4];
            ldmatrix_x4_trans(vb, vrow + 8 * n);
            const unsigned int b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
            mma_bf16_16816(o[n], pa, b0);
            mma_bf16_16816(o[n + 1], pa, b1);
        }
        __syncthreads(); // before the next tile's load reuses this buffer
    }

    // Head r's slice: rows r (hi) and r + 8 (lo) summed.
    if (r < HB) {
        const u64 slot = ((u64)b * HQ + h0 + r) * SPLITS + split;
#pragma unroll
        for (int n = 0; n < NBW; n++) {
            const int d = warp * (DV / WARPS) + 8 * n + 2 * c;
            partial_acc[slot * DV + d] = o[n][0] + o[n][2];
            partial_acc[slot * DV + d + 1] = o[n][1] + o[n][3];
        }
    }
    if (sh_tok == 0 && sh_head < HB) {
        partial_ml[((u64)b * HQ + h0 + sh_head) * SPLITS + split] = make_float2(m_run, l_run);
    }
}
