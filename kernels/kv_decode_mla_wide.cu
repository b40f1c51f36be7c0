// kv_decode "mma_wide" for MLA (absorbed) on tensor cores (mma.cuh): a block owns HB query
// heads (up to 64, all of a 64-head model; 32 at `math: f32`) and one slice of one
// sequence's context, so each latent row comes from HBM once and is read by one block, not
// once per 8 or 16 heads as `mma` does. `merge` combines the slices.
//
// The tile's 64 rows are 4 tensor-core row tiles of 16. At `math: f32` (HI_LO) row tile t
// holds heads 8t .. 8t + 7: head q (and P) rounded ("hi") in rows 0-7, what hi misses ("lo")
// in rows 8-15, so row pairs sum to f32-grade results; at `math: bf16` one head per row, q
// and P rounded once as the oracle's bf16 mode rounds them.
//
// 8 warps; per 16-token tile:
//  0. the tile's latent rows arrive in shared memory by 16-byte cp.async, STAGES - 1 tiles
//     ahead (a ring; fp8 lands as bytes and is converted to f16 per tile, exactly);
//  1. scores, S = Q K^T: warp w takes row tile w / 2 and tokens 8 (w % 2) .. + 7 over every
//     latent dim; A = q from shared memory (staged once per block), B = the latent rows,
//     both by ldmatrix;
//  2. softmax: 16 lanes per head (one per token), each thread HB / 16 heads in turn;
//  3. PV: warp w owns DV / 8 output dims for all 64 rows: A = P, B = the first DV dims of the
//     same latent rows (V is inside the latent), by ldmatrix.trans, each B fragment feeding
//     the 4 row tiles.
// Shared memory is dynamic (SMEM_BYTES, over the 48 KB of static arrays); the launch sets
// the function's limit. Needs a bf16 or fp8 latent, DK a multiple of 64, DV of 128, DV <= DK.

#define HI_LO (!MATH_BF16)
#define HROW (HI_LO ? 8 : 16) // heads per row tile
#define MT 4                  // row tiles
#define ROWS (16 * MT)

#if (DTYPE != 2 && DTYPE != 3) || !IS_MLA || DK % 64 != 0 || DV % 128 != 0 || DV > DK || HB > HROW * MT || WG != 256
#error "kv_decode mma_wide (MLA): a bf16 or fp8 latent, DK % 64 == 0, DV % 128 == 0, up to 64 heads per block (32 at math: f32), 256 threads"
#endif

#define WARPS 8
#define TT 16                // tokens per tile
#define KS (DK / 16)         // 16-dim k-steps of a score
#define NBW (DV / 8 / WARPS) // 8-dim output blocks per warp
#define LROW (DK + 8)        // a row in shared memory, padded 16 bytes: no bank conflicts
#define PROW (TT + 8)        // a row of P, padded the same way
#define HPT ((HB + 15) / 16) // heads per softmax thread
#define PIECES (DK * ELEM_BYTES / 16)

// Shared memory, in bytes from the start: q, the tile ring (fp8: a byte ring and one f16
// tile), the scores, P and the heads' rescale factors.
#define Q_BYTES (ROWS * LROW * 2)
#if DTYPE == 3
#define RING_ROW DK
#define F16_TILE_BYTES (TT * LROW * 2)
#else
#define RING_ROW (LROW * 2)
#define F16_TILE_BYTES 0
#endif
#define RING_BYTES (STAGES * TT * RING_ROW)
#define S_BYTES (HROW * MT * TT * 4)
#define P_BYTES (ROWS * PROW * 2)
#define SMEM_NEEDED (Q_BYTES + RING_BYTES + F16_TILE_BYTES + S_BYTES + P_BYTES + HROW * MT * 4)
#if SMEM_NEEDED > SMEM_BYTES
#error "kv_decode mma_wide: the layout outgrew SMEM_BYTES (compile::mla_wide_smem)"
#endif

// The row of the tile that holds head h's hi part (its lo part is 8 rows on at HI_LO).
#define ROW_OF(h) (HI_LO ? ((h) / 8) * 16 + (h) % 8 : (h))

// Tokens [tile, tile + TT) of the slice into `dst` when the tile exists (rows past `end`
// repeat the last real one; their scores are masked), then one commit either way, so every
// thread's groups count tiles.
__device__ __forceinline__ void issue_tile(unsigned char* dst, const unsigned char* __restrict__ k,
                                           const int* __restrict__ page_table, int b, int tile, int end) {
    if (tile < end) {
        // Unrolled: a fixed count (the SASS report counts a nested loop's body once).
#pragma unroll
        for (int it = 0; it < (TT * PIECES + WG - 1) / WG; it++) {
            const int i = threadIdx.x + it * WG, tt = i / PIECES, part = i % PIECES;
            if ((TT * PIECES) % WG == 0 || i < TT * PIECES) {
                const unsigned char* from = k + latent_row(page_table, b, min(tile + tt, end - 1)) * ELEM_BYTES + part * 16;
                copy16(dst + tt * RING_ROW + part * 16, from); // stream: latent
            }
        }
    }
    copies_commit();
}

// Wait for the current tile: the STAGES - 1 loads issued after it may stay in flight.
__device__ __forceinline__ void wait_tile() {
    copies_wait<STAGES - 1>();
}

extern "C" __global__ void __launch_bounds__(WG, 1) attend(
    const float* __restrict__ q, const unsigned char* __restrict__ k, const unsigned char* __restrict__ v,
    const int* __restrict__ page_table, const int* __restrict__ context_lens,
    float* __restrict__ partial_acc, float2* __restrict__ partial_ml) {
#ifdef DECODELAB_HOST
    __shared__ __align__(16) unsigned char smem[SMEM_BYTES];
#else
    extern __shared__ __align__(16) unsigned char smem[];
#endif
    unsigned short* q_sh = reinterpret_cast<unsigned short*>(smem);
    unsigned char* ring = smem + Q_BYTES;
    unsigned short* f16_tile = reinterpret_cast<unsigned short*>(ring + RING_BYTES);
    float* s_sh = reinterpret_cast<float*>(ring + RING_BYTES + F16_TILE_BYTES); // [head][TT]
    unsigned short* p_sh = reinterpret_cast<unsigned short*>(s_sh + HROW * MT * TT);
    float* corr_sh = reinterpret_cast<float*>(p_sh + ROWS * PROW);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const int split = blockIdx.x, h0 = blockIdx.y * HB, b = blockIdx.z;
    const int len = context_lens[b];
    const int start = split * SPLIT_TOKENS, end = min(start + SPLIT_TOKENS, len);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) issue_tile(ring + s * TT * RING_ROW, k, page_table, b, start + s * TT, end);

    // q into its rows, once: (hi, lo) or one rounding, as HI_LO says; rows of no head are 0.
    for (int i = threadIdx.x; i < ROWS * DK; i += WG) {
        const int row = i / DK, d = i % DK, t = row / 16, r = row % 16;
        const int h = HI_LO ? t * 8 + r % 8 : row;
        const float x = h < HB ? q[((u64)b * HQ + h0 + h) * DK + d] : 0.f;
        const unsigned short hi = RN_BITS(x);
        q_sh[row * LROW + d] = (HI_LO && r >= 8) ? RN_BITS(x - BITS_FLOAT(hi)) : hi;
    }
    // The row tiles' heads no softmax thread has (16 HPT and up): P zero and no rescale, set
    // once, so PV adds nothing there and skips the rescale once no real head's max moves.
    for (int h = 16 * HPT + threadIdx.x; h < HROW * MT; h += WG) {
        corr_sh[h] = 1.f;
#pragma unroll
        for (int tk = 0; tk < TT; tk++) {
            p_sh[ROW_OF(h) * PROW + tk] = 0;
#if HI_LO
            p_sh[(ROW_OF(h) + 8) * PROW + tk] = 0;
#endif
        }
    }

    // The softmax thread's heads (sh_head + 16 i) and token; its running max and sum.
    const int sh_head = threadIdx.x / TT, sh_tok = threadIdx.x % TT;
    float m_run[HPT], l_run[HPT];
#pragma unroll
    for (int i = 0; i < HPT; i++) m_run[i] = NEG_BIG, l_run[i] = 0.f;
    float o[MT][NBW][4];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
        for (int n = 0; n < NBW; n++) o[t][n][0] = o[t][n][1] = o[t][n][2] = o[t][n][3] = 0.f;

    const int mt = warp / 2, nt = warp % 2; // this warp's scores: row tile, 8-token half
    int stage = 0;
    for (int tile = start; tile < end; tile += TT, stage = (stage + 1) % STAGES) {
        issue_tile(ring + ((stage + STAGES - 1) % STAGES) * TT * RING_ROW, k, page_table, b,
                   tile + (STAGES - 1) * TT, end);
        wait_tile();
        __syncthreads();
#if DTYPE == 3
#pragma unroll
        for (int it = 0; it < (TT * DK / 8 + WG - 1) / WG; it++) {
            const int i = threadIdx.x + it * WG, tt = i / (DK / 8), part = i % (DK / 8);
            if ((TT * DK / 8) % WG != 0 && i >= TT * DK / 8) break;
            *reinterpret_cast<uint4*>(f16_tile + tt * LROW + part * 8) =
                f16x8_of_fp8x8(*reinterpret_cast<const uint2*>(ring + stage * TT * RING_ROW + tt * DK + part * 8));
        }
        __syncthreads();
        const unsigned short* lt = f16_tile;
#else
        const unsigned short* lt = reinterpret_cast<const unsigned short*>(ring + stage * TT * RING_ROW);
#endif

        // 1. Scores of row tile mt, tokens 8 nt + g as B's columns, over every dim. A by
        //    ldmatrix from q's rows (lane i: row (i / 8 % 2) * 8 + i % 8, dims + (i / 16) * 8);
        //    B for two k-steps by one ldmatrix from the latent rows (lane i: token i % 8,
        //    dims + (i / 8) * 8).
        {
            // Four accumulators, one per k-step mod 4: four chains of dependent mma's, not one.
            float part[4][4] = {};
            const unsigned short* qa = q_sh + (mt * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LROW + (lane >> 4) * 8;
            const unsigned short* kr = lt + (8 * nt + (lane & 7)) * LROW + (lane >> 3) * 8;
#pragma unroll
            for (int j = 0; j < KS; j += 4) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    unsigned int a0[4], a1[4], kb[4];
                    ldmatrix_x4(kb, kr + 16 * (j + 2 * h));
                    ldmatrix_x4(a0, qa + 16 * (j + 2 * h));
                    ldmatrix_x4(a1, qa + 16 * (j + 2 * h) + 16);
                    const unsigned int b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
                    MMA(part[2 * h], a0, b0);
                    MMA(part[2 * h + 1], a1, b1);
                }
            }
            float acc[4];
#pragma unroll
            for (int e = 0; e < 4; e++) acc[e] = (part[0][e] + part[1][e]) + (part[2][e] + part[3][e]);
            // Tokens 8 nt + 2c, +1: row g (plus row g + 8 at HI_LO) is head mt * HROW + g.
            const int tok = 8 * nt + 2 * c;
#if HI_LO
            s_sh[(mt * 8 + g) * TT + tok] = acc[0] + acc[2];
            s_sh[(mt * 8 + g) * TT + tok + 1] = acc[1] + acc[3];
#else
            s_sh[(mt * 16 + g) * TT + tok] = acc[0];
            s_sh[(mt * 16 + g) * TT + tok + 1] = acc[1];
            s_sh[(mt * 16 + g + 8) * TT + tok] = acc[2];
            s_sh[(mt * 16 + g + 8) * TT + tok + 1] = acc[3];
#endif
        }
        __syncthreads();

        // 2. Online softmax: a head's 16 tokens are 16 adjacent lanes.
        const int tok = tile + sh_tok;
#pragma unroll
        for (int i = 0; i < HPT; i++) {
            const int h = sh_head + 16 * i;
            float corr;
            const float p = softmax_tile16(s_sh[h * TT + sh_tok] * (SCALE * K_SCALE), tok < end, m_run[i], l_run[i], corr);
            // h < 16 HPT <= HROW MT: every head of the loop has a row (of zeros past HB).
            const unsigned short ph = RN_BITS(p);
            p_sh[ROW_OF(h) * PROW + sh_tok] = ph;
#if HI_LO
            p_sh[(ROW_OF(h) + 8) * PROW + sh_tok] = RN_BITS(p - BITS_FLOAT(ph));
#endif
            if (sh_tok == 0) corr_sh[h] = corr;
        }
        __syncthreads();

        // 3. PV over this warp's output dims, every row tile; rescale first where a max moved.
#pragma unroll
        for (int t = 0; t < MT; t++) {
            const float corr = corr_sh[t * HROW + g], corr8 = HI_LO ? corr : corr_sh[t * HROW + g + 8];
            if (!__all_sync(0xffffffffu, corr == 1.f && corr8 == 1.f)) {
#pragma unroll
                for (int n = 0; n < NBW; n++) {
                    o[t][n][0] *= corr;
                    o[t][n][1] *= corr;
                    o[t][n][2] *= corr8;
                    o[t][n][3] *= corr8;
                }
            }
        }
        // A = P per row tile by ldmatrix (as q's above). B for two output blocks per
        // ldmatrix.trans: lane i points at token (i / 8 % 2) * 8 + i % 8, dims of block
        // n + i / 16; the transpose hands each lane its (token pair, dim).
        unsigned int pa[MT][4];
#pragma unroll
        for (int t = 0; t < MT; t++)
            ldmatrix_x4(pa[t], p_sh + (16 * t + ((lane >> 3) & 1) * 8 + (lane & 7)) * PROW + (lane >> 4) * 8);
        const unsigned short* vrow = lt + (((lane >> 3) & 1) * 8 + (lane & 7)) * LROW + warp * (DV / WARPS) + 8 * (lane >> 4);
#pragma unroll
        for (int n = 0; n < NBW; n += 2) {
            unsigned int vb[4];
            ldmatrix_x4_trans(vb, vrow + 8 * n);
            const unsigned int b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
#pragma unroll
            for (int t = 0; t < MT; t++) {
                MMA(o[t][n], pa[t], b0);
                MMA(o[t][n + 1], pa[t], b1);
            }
        }
        __syncthreads(); // before the next tile's load reuses this stage
    }

    // Each head's slice: rows g (hi) and g + 8 (lo) summed (HI_LO), or rows g and g + 8 for
    // two heads.
#pragma unroll
    for (int t = 0; t < MT; t++) {
#pragma unroll
        for (int n = 0; n < NBW; n++) {
            const int d = warp * (DV / WARPS) + 8 * n + 2 * c;
#if HI_LO
            const int h = t * 8 + g;
            if (h < HB) {
                const u64 slot = ((u64)b * HQ + h0 + h) * SPLITS + split;
                partial_acc[slot * DV + d] = o[t][n][0] + o[t][n][2];
                partial_acc[slot * DV + d + 1] = o[t][n][1] + o[t][n][3];
            }
#else
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int h = t * 16 + g + 8 * i;
                if (h < HB) {
                    const u64 slot = ((u64)b * HQ + h0 + h) * SPLITS + split;
                    partial_acc[slot * DV + d] = o[t][n][2 * i];
                    partial_acc[slot * DV + d + 1] = o[t][n][2 * i + 1];
                }
            }
#endif
        }
    }
#pragma unroll
    for (int i = 0; i < HPT; i++) {
        const int h = sh_head + 16 * i;
        if (sh_tok == 0 && h < HB) partial_ml[((u64)b * HQ + h0 + h) * SPLITS + split] = make_float2(m_run[i], l_run[i]);
    }
}
