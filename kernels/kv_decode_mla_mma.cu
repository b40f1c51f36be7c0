// kv_decode "mma" for MLA (absorbed) on tensor cores (mma.cuh): a block owns HB query heads
// and one slice of one sequence's context, as the plan cuts it; `merge` combines the slices.
// The head blocks of one slice are launched next to each other, so the latent they all read
// comes from HBM once and from L2 after.
//
// The tile's 16 rows: at `math: f32` (HI_LO), head r's q (and P) rounded to bf16 ("hi") in row
// r and what hi misses ("lo") in row r + 8, so row pairs sum to f32-grade results, up to 8
// heads; at `math: bf16`, one head per row, up to 16, q and P rounded once as the oracle's
// bf16 mode rounds them (half the tensor-core work per head).
//
// Per 16-token tile, 4 warps:
//  0. the tile's latent rows (DK bf16 each) arrive in shared memory by 16-byte cp.async,
//     the next tile's already in flight (two buffers);
//  1. scores, S = Q K^T: A = q, B = the tile's latent rows; each warp takes a quarter of the
//     DK dims (its q fragments stay in registers) and leaves partial scores;
//  2. softmax: a thread per (head, token), two heads each at `math: bf16`, sums the partials
//     and runs the online softmax of its head across 16 lanes; P goes to shared memory;
//  3. PV: each warp owns a quarter of the DV output dims: A = P, B = the first DV dims of
//     the same latent rows (V is inside the latent), by ldmatrix.trans.
// An fp8 latent arrives as bytes into a staging buffer and is converted to f16 (exact) for the
// tile, and the tensor cores run on f16; the scales multiply the scores and the outputs.
// Needs a bf16 or fp8 latent, DK and DV multiples of 64 (covers refuses the rest).

#define HI_LO (!MATH_BF16)
#define HM (HI_LO ? 8 : 16) // heads the tile's rows hold
#define HPT (HM / 8)        // heads per softmax thread

#if (DTYPE != 2 && DTYPE != 3) || !IS_MLA || DK % 64 != 0 || DV % 64 != 0 || DV > DK || HB > HM || WG != 128
#error "kv_decode mma (MLA): a bf16 or fp8 latent, DK % 64 == 0, DV % 64 == 0, up to 8 heads per block (16 at math: bf16), 128 threads"
#endif

#if DTYPE == 3 // one f16 tile, fed from two fp8 staging buffers
#define LBUF 1
#else
#define LBUF 2
#endif

#define WARPS 4
#define TT 16                   // tokens per tile
#define KSW (DK / 16 / WARPS)   // 16-dim k-steps of the scores per warp
#define NBW (DV / 8 / WARPS)    // 8-dim output blocks per warp
#define LROW (DK + 8)           // a latent row in shared memory, padded 16 bytes: no bank conflicts
#define PROW (TT + 8)           // a row of P, padded the same way
#define TPT (WG / TT)           // threads per token of a tile load

// Tokens [tile, tile + TT) of the slice into `dst` (rows past `end` repeat the last real one;
// their scores are masked), 16 bytes per copy, not waited for. TPT threads share a token:
// one page lookup each, then 16-byte pieces TPT apart along the row. fp8 rows land unpadded
// (the conversion pads them).
#if DTYPE == 3
#define DST_ROW DK
#else
#define DST_ROW (LROW * 2)
#endif
#define PIECES (DK * ELEM_BYTES / 16) // 16-byte pieces of a latent row
__device__ __forceinline__ void load_tile(unsigned char* dst, const unsigned char* __restrict__ k,
                                          const int* __restrict__ page_table, int b, int tile, int end) {
    const int tt = threadIdx.x / TPT, part = threadIdx.x % TPT;
    const unsigned char* src = k + latent_row(page_table, b, min(tile + tt, end - 1)) * ELEM_BYTES + part * 16;
    unsigned char* to = dst + tt * DST_ROW + part * 16;
#pragma unroll
    for (int i = 0; i < (PIECES + TPT - 1) / TPT; i++) {
        if (PIECES % TPT == 0 || part + i * TPT < PIECES) copy16(to + i * TPT * 16, src + i * TPT * 16); // stream: latent
    }
    copies_commit();
}

#if DTYPE == 3
// The staged fp8 tile into the f16 tile: 8 values per thread and step, two per cvt.
// TPT threads per token, as the load.
__device__ __forceinline__ void convert_tile(unsigned short* dst, const unsigned char* src) {
    const int tt = threadIdx.x / TPT;
#pragma unroll
    for (int i = 0; i < DK / 8 / TPT; i++) {
        const int part = threadIdx.x % TPT + i * TPT;
        *reinterpret_cast<uint4*>(dst + tt * LROW + part * 8) =
            f16x8_of_fp8x8(*reinterpret_cast<const uint2*>(src + tt * DK + part * 8));
    }
}
#endif

// Wait until at most `n` tile loads of this thread are still in flight.
template <int N> __device__ __forceinline__ void wait_tiles() {
    copies_wait<N>();
}

extern "C" __global__ void __launch_bounds__(WG) attend(
    const float* __restrict__ q, const unsigned char* __restrict__ k, const unsigned char* __restrict__ v,
    const int* __restrict__ page_table, const int* __restrict__ context_lens,
    float* __restrict__ partial_acc, float2* __restrict__ partial_ml) {
    __shared__ __align__(16) unsigned short lat[LBUF][TT * LROW];
#if DTYPE == 3
    __shared__ __align__(16) unsigned char stage[2][TT * DK];
#define TILE_BUF(i) stage[i]
#else
#define TILE_BUF(i) reinterpret_cast<unsigned char*>(lat[i])
#endif
    __shared__ float s_part[WARPS][16][TT];
    __shared__ __align__(16) unsigned short p_sh[16 * PROW];
    __shared__ float corr_sh[16];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, r = lane >> 2, c = lane & 3;
    const int split = blockIdx.x, h0 = blockIdx.y * HB, b = blockIdx.z;
    const int len = context_lens[b];
    const int start = split * SPLIT_TOKENS, end = min(start + SPLIT_TOKENS, len);
    if (start < end) load_tile(TILE_BUF(0), k, page_table, b, start, end);

    // This warp's q fragments for the dims of k-step j: rows r and r + 8 as HI_LO says.
    unsigned int qa[KSW][4];
#pragma unroll
    for (int j = 0; j < KSW; j++) {
        const int d0 = 16 * (warp * KSW + j) + 2 * c;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            unsigned short top[2], bottom[2];
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int d = d0 + 8 * half + e;
                // q as it is (the scales multiply the scores, so fp8's small K scale cannot
                // push q's lo part out of f16's range).
#if HI_LO
                const float x = r < HB ? q[((u64)b * HQ + h0 + r) * DK + d] : 0.f;
                top[e] = RN_BITS(x);
                bottom[e] = RN_BITS(x - BITS_FLOAT(top[e]));
#else
                top[e] = RN_BITS(r < HB ? q[((u64)b * HQ + h0 + r) * DK + d] : 0.f);
                bottom[e] = RN_BITS(r + 8 < HB ? q[((u64)b * HQ + h0 + r + 8) * DK + d] : 0.f);
#endif
            }
            qa[j][2 * half] = pack_bf16x2(top[0], top[1]);
            qa[j][2 * half + 1] = pack_bf16x2(bottom[0], bottom[1]);
        }
    }

    // The softmax thread's head and token; its running max and sum (every thread of a head
    // holds the same ones).
    const int sh_head = threadIdx.x / TT, sh_tok = threadIdx.x % TT; // heads sh_head (+ 8)
    float m_run[HPT], l_run[HPT];
#pragma unroll
    for (int i = 0; i < HPT; i++) m_run[i] = NEG_BIG, l_run[i] = 0.f;
    float o[NBW][4];
#pragma unroll
    for (int n = 0; n < NBW; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    int buf = 0;
    for (int tile = start; tile < end; tile += TT, buf ^= 1) {
        if (tile + TT < end) {
            load_tile(TILE_BUF(buf ^ 1), k, page_table, b, tile + TT, end);
            wait_tiles<1>();
        } else {
            wait_tiles<0>();
        }
        __syncthreads();
#if DTYPE == 3
        convert_tile(lat[0], stage[buf]);
        __syncthreads();
        const unsigned short* lt = lat[0];
#else
        const unsigned short* lt = lat[buf];
#endif

        // 1. Partial scores over this warp's dims, tokens 8n + r of the tile as B's columns.
#pragma unroll
        for (int n = 0; n < 2; n++) {
            float acc[4] = {0.f, 0.f, 0.f, 0.f};
            const unsigned short* row = lt + (8 * n + r) * LROW + 16 * warp * KSW + 2 * c;
#pragma unroll
            for (int j = 0; j < KSW; j++) {
                const unsigned int kb[2] = {*reinterpret_cast<const unsigned int*>(row + 16 * j),
                                            *reinterpret_cast<const unsigned int*>(row + 16 * j + 8)};
                MMA(acc, qa[j], kb);
            }
            // Tokens 8n + 2c, +1: head r's score is row r plus row r + 8 (HI_LO), or row r's,
            // and row r + 8's is head r + 8's.
#if HI_LO
            s_part[warp][r][8 * n + 2 * c] = acc[0] + acc[2];
            s_part[warp][r][8 * n + 2 * c + 1] = acc[1] + acc[3];
#else
            s_part[warp][r][8 * n + 2 * c] = acc[0];
            s_part[warp][r][8 * n + 2 * c + 1] = acc[1];
            s_part[warp][r + 8][8 * n + 2 * c] = acc[2];
            s_part[warp][r + 8][8 * n + 2 * c + 1] = acc[3];
#endif
        }
        __syncthreads();

        // 2. Online softmax: thread (head, token); a head's 16 tokens are 16 adjacent lanes.
        const int tok = tile + sh_tok;
#pragma unroll
        for (int i = 0; i < HPT; i++) {
            const int h = sh_head + 8 * i;
            const float s = s_part[0][h][sh_tok] + s_part[1][h][sh_tok] + s_part[2][h][sh_tok] + s_part[3][h][sh_tok];
            float corr;
            const float p = softmax_tile16(s * (SCALE * K_SCALE), tok < end, m_run[i], l_run[i], corr);
            const unsigned short ph = RN_BITS(p);
            p_sh[h * PROW + sh_tok] = ph;
#if HI_LO
            p_sh[(h + 8) * PROW + sh_tok] = RN_BITS(p - BITS_FLOAT(ph));
#endif
            if (sh_tok == 0) corr_sh[h] = corr;
        }
        __syncthreads();

        // 3. PV over this warp's output dims: A = P (rows r, r + 8), B = the latent's first DV dims.
        const unsigned int* pw = reinterpret_cast<const unsigned int*>(p_sh);
        const unsigned int pa[4] = {pw[(r * PROW + 2 * c) / 2], pw[((r + 8) * PROW + 2 * c) / 2],
                                    pw[(r * PROW + 2 * c + 8) / 2], pw[((r + 8) * PROW + 2 * c + 8) / 2]};
        // Once the running max settles, no head's scale changes: the warp skips the rescale.
        const float corr = corr_sh[r], corr8 = HI_LO ? corr : corr_sh[r + 8];
        if (!__all_sync(0xffffffffu, corr == 1.f && corr8 == 1.f)) {
#pragma unroll
            for (int n = 0; n < NBW; n++) {
                o[n][0] *= corr;
                o[n][1] *= corr;
                o[n][2] *= corr8;
                o[n][3] *= corr8;
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
            MMA(o[n], pa, b0);
            MMA(o[n + 1], pa, b1);
        }
        __syncthreads(); // before the next tile's load reuses this buffer
    }

    // Head r's slice: rows r (hi) and r + 8 (lo) summed (HI_LO), or rows r and r + 8 for
    // heads r and r + 8.
#pragma unroll
    for (int n = 0; n < NBW; n++) {
        const int d = warp * (DV / WARPS) + 8 * n + 2 * c;
#if HI_LO
        if (r < HB) {
            const u64 slot = ((u64)b * HQ + h0 + r) * SPLITS + split;
            partial_acc[slot * DV + d] = o[n][0] + o[n][2];
            partial_acc[slot * DV + d + 1] = o[n][1] + o[n][3];
        }
#else
#pragma unroll
        for (int i = 0; i < 2; i++) {
            if (r + 8 * i < HB) {
                const u64 slot = ((u64)b * HQ + h0 + r + 8 * i) * SPLITS + split;
                partial_acc[slot * DV + d] = o[n][2 * i];
                partial_acc[slot * DV + d + 1] = o[n][2 * i + 1];
            }
        }
#endif
    }
#pragma unroll
    for (int i = 0; i < HPT; i++) {
        const int h = sh_head + 8 * i;
        if (sh_tok == 0 && h < HB) partial_ml[((u64)b * HQ + h0 + h) * SPLITS + split] = make_float2(m_run[i], l_run[i]);
    }
}
