// expert_gemv "mma_w4": int4 weights (int4_g32, int4_g128: W4A16, as Kimi-K2.5 ships its
// experts) on the tensor cores. A block owns 64 rows (4 tiles of 16) of one touched expert,
// and its 4 warps take turns over the row's 128-value blocks (block kb to warp kb % 4),
// summing their shares in shared memory at the end. A warp's block arrives by 16-byte
// cp.async (64 contiguous bytes a row: coalesced) into its own double-buffered staging, so
// the next block streams while this one is used. From there each lane takes, per 32-value
// group, word t (lane % 4) of rows g and g + 8 (g = lane / 4): 8 codes, decoded to four bf16
// pairs by a mask and a magic number, exactly (int4 is exact in bf16). Two m16n8k16 mmas
// take a group for a tile: the four lanes of a row give each mma 16 values of one group, so
// its sums are the group's and the group scale multiplies them in f32. The k order inside a
// group is permuted (lane t's word, pairs (n0, n4) (n1, n5) ...), and x, the B operand, is
// taken in the same order: tokens are the mma's 8 columns (TB 8 a chunk); at math: f32, x is
// split hi + lo (two mmas each), as the kv kernels do.

#if !(DTYPE == 5 || DTYPE == 6)
#error "mma_w4 decodes int4 codes (int4_g32, int4_g128); the backend's covers refuses others"
#endif
#if D_IN % 128 || (GROUP != 32 && GROUP != 128)
#error "mma_w4 reads rows in blocks of 128 values, scaled per 32 or 128"
#endif
#if WG != 128 || TB != 8
#error "mma_w4 is 4 warps a block and 8 tokens a chunk"
#endif

#define W4_TILES 4                 // 16-row tiles a block
#define W4_ROWS (16 * W4_TILES)    // rows a block
#if ROWS != W4_ROWS
#error "mma_w4's launch plan (ROWS) and its tiles disagree"
#endif
#define W4_PITCH 80                // staged bytes a row: 64, padded so lanes' words miss each other's banks
#define W4_STAGE (W4_ROWS * W4_PITCH)
#define W4_KB (D_IN / 128)

// Each bf16 half of a times b plus c, rounded once (fma.rn.bf16x2, sm_80 and later).
__device__ __forceinline__ unsigned int fma_bf16x2(unsigned int a, unsigned int b, unsigned int c) {
#ifdef DECODELAB_HOST
    return host_fma_bf16x2(a, b, c);
#else
    unsigned int d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#endif
}

// Codes j and j + 4 of a word (shifted down by 4j) as a bf16 pair: 0x4300 | (n ^ 8) is 128 +
// (q + 8) for the two's complement code q, and minus 136 it is q.
__device__ __forceinline__ unsigned int w4_pair(unsigned int w) {
#ifdef DECODELAB_HOST
    const unsigned int m = (w & 0x000F000Fu) ^ 0x43084308u;
#else
    // One lop3, (w & mask) ^ magic (C's & and ^ compile to two, each with its immediate).
    unsigned int m;
    asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(m) : "r"(w), "n"(0x000F000F), "n"(0x43084308));
#endif
    return fma_bf16x2(m, 0x3F803F80u, 0xC308C308u);
}

// Stage block kb of the block's 64 rows (row r clamped to the last: recomputed, not stored).
__device__ __forceinline__ void w4_stage(unsigned char* st, const unsigned char* __restrict__ w, u64 row0, int kb,
                                         int last_row, int lane) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int i = lane + 32 * j, r = i >> 2, c = i & 3;
        const u64 row = row0 + min(r, last_row);
        copy16(st + r * W4_PITCH + 16 * c, w + ((row * D_IN + (u64)kb * 128) >> 1) + 16 * c); // stream: weights
    }
    copies_commit();
}

// x of one 32-value group as the B operand: values 8t + {2h, 2h + 4} and 8t + {2h + 1, 2h + 5}
// of the group for mma h, hi and lo halves; zeros for a lane whose token is past the chunk.
__device__ __forceinline__ void w4_x(const float* __restrict__ xt, bool live, unsigned int (&hi)[2][2],
                                     unsigned int (&lo)[2][2]) {
    float v[8];
    if (live) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(xt));
        const float4 b = __ldg(reinterpret_cast<const float4*>(xt) + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = 0.f;
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const float x0 = v[2 * h + q], x1 = v[2 * h + q + 4];
            hi[h][q] = bf16x2_rn(x0, x1);
#if MATH_BF16
            lo[h][q] = 0u;
#else
            lo[h][q] = bf16x2_rn(x0 - __uint_as_float(hi[h][q] << 16), x1 - __uint_as_float(hi[h][q] & 0xFFFF0000u));
#endif
        }
    }
}

extern "C" __global__ void __launch_bounds__(WG, 1) gemv(
    const float* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
    const unsigned int* __restrict__ groups, const float* __restrict__ entry_weight, float* __restrict__ slot_out) {
    __shared__ __align__(16) unsigned char stage[WG / 32][2][W4_STAGE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int u = blockIdx.y, o0 = blockIdx.x * W4_ROWS;
    const unsigned int e = groups[U + 1 + u];
    const unsigned int first = groups[u], last = groups[u + 1];
    const unsigned int* entries = groups + 2 * U + 1;
    const u64 row0 = (u64)e * D_OUT + o0;
    const int last_row = D_OUT - 1 - o0; // rows past it recompute it, and are not stored
    float* red = reinterpret_cast<float*>(&stage[0][0][0]); // [warp][row][token], after the loop
    // Where each tile's rows g and g + 8 start among the group scales.
    unsigned int srow[W4_TILES][2];
#pragma unroll
    for (int i = 0; i < W4_TILES; i++) {
        srow[i][0] = (unsigned int)((row0 + min(16 * i + g, last_row)) * (D_IN / GROUP));
        srow[i][1] = (unsigned int)((row0 + min(16 * i + g + 8, last_row)) * (D_IN / GROUP));
    }

    for (unsigned int t0 = first; t0 < last; t0 += TB) {
        const int nt = min((unsigned int)TB, last - t0);
        const bool live = g < nt;
        const float* xt = x + (u64)entries[2 * (t0 + min(g, nt - 1))] * D_IN + 8 * t;
        float acc[W4_TILES][4];
#pragma unroll
        for (int i = 0; i < W4_TILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
        int s = 0;
        if (warp < W4_KB) w4_stage(stage[warp][0], w, row0, warp, last_row, lane);
        for (int kb = warp; kb < W4_KB; kb += WG / 32) {
            if (kb + WG / 32 < W4_KB) {
                w4_stage(stage[warp][s ^ 1], w, row0, kb + WG / 32, last_row, lane);
                copies_wait<1>();
            } else {
                copies_wait<0>();
            }
            __syncwarp();
            const unsigned char* st = stage[warp][s];
            float part[W4_TILES][4];
#pragma unroll
            for (int sub = 0; sub < 4; sub++) { // the block's four 32-value groups
                unsigned int xh[2][2], xl[2][2];
                w4_x(xt + kb * 128 + 32 * sub, live, xh, xl);
#pragma unroll
                for (int i = 0; i < W4_TILES; i++) {
                    const unsigned int* r0 = reinterpret_cast<const unsigned int*>(st + (16 * i + g) * W4_PITCH + 16 * sub);
                    const unsigned int* r8 = reinterpret_cast<const unsigned int*>(st + (16 * i + g + 8) * W4_PITCH + 16 * sub);
                    const unsigned int wa = r0[t], wb = r8[t];
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const unsigned int a[4] = {w4_pair(wa >> (8 * h)), w4_pair(wb >> (8 * h)),
                                                   w4_pair(wa >> (8 * h + 4)), w4_pair(wb >> (8 * h + 4))};
                        if (h == 0 && sub % (GROUP / 32) == 0) mma_bf16_first(part[i], a, xh[h]);
                        else mma_bf16_16816(part[i], a, xh[h]);
#if !MATH_BF16
                        mma_bf16_16816(part[i], a, xl[h]);
#endif
                    }
                    if (sub % (GROUP / 32) == GROUP / 32 - 1) { // the group's sums times its scales
                        const unsigned int gk = (kb * 128 + 32 * sub) / GROUP;
                        const float s0 = group_scale(w_scale, srow[i][0] + gk);
                        const float s8 = group_scale(w_scale, srow[i][1] + gk);
                        acc[i][0] = fmaf(part[i][0], s0, acc[i][0]);
                        acc[i][1] = fmaf(part[i][1], s0, acc[i][1]);
                        acc[i][2] = fmaf(part[i][2], s8, acc[i][2]);
                        acc[i][3] = fmaf(part[i][3], s8, acc[i][3]);
                    }
                }
            }
            __syncwarp(); // every lane is done with this buffer before it is staged again
            s ^= 1;
        }
        // The warps' shares, summed per (row, token).
        __syncthreads();
#pragma unroll
        for (int i = 0; i < W4_TILES; i++) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int row = 16 * i + g + 8 * (q >> 1), tok = 2 * t + (q & 1);
                red[(warp * W4_ROWS + row) * TB + tok] = acc[i][q];
            }
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < W4_ROWS * TB; idx += WG) {
            const int row = idx / TB, tok = idx % TB, o = o0 + row;
            if (tok < nt && o < D_OUT) {
                float dot = 0.f;
#pragma unroll
                for (int wp = 0; wp < WG / 32; wp++) dot += red[(wp * W4_ROWS + row) * TB + tok];
                const unsigned int slot = entries[2 * (t0 + tok) + 1];
                slot_out[(u64)slot * D_OUT + o] = dot * entry_weight[t0 + tok];
            }
        }
        __syncthreads(); // the staging is the next chunk's again
    }
}
