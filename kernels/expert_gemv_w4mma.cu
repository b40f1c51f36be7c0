// expert_gemv "mma_w4": 4-bit weights on the tensor cores, W4A16: int4 (int4_g32, int4_g128,
// as Kimi-K2.5 ships its experts) and E2M1 (mxfp4, as gpt-oss ships them; nvfp4).
//
// `x_frag` first lays x out once per call as the mma's B operand: per 8 values of a token,
// bf16 pairs in the codes' order, hi and (math: f32) lo halves, 32 bytes a lane loads in two.
// `gemv`: a block owns 64 rows (4 tiles of 16) of one touched expert, and its 4 warps take
// turns over the rows' 128-value blocks (block kb to warp kb % 4), summing their shares in
// shared memory at the end. A warp's block arrives by 16-byte cp.async (64 contiguous bytes
// a row: coalesced) into its own double-buffered staging, so the next block streams while
// this one is used. Each lane takes, per run of 32 values, one word (8 codes) of rows g and
// g + 8 (g = lane / 4), decoded to four bf16 pairs exactly (codes j and j + 4 a pair); two
// m16n8k16 mmas take the run for a tile. Which word: where a group is 32 (int4_g32, mxfp4),
// word 4 run + t (t = lane % 4), so a run is one group, and its sums times the group scale
// are added in f32; elsewhere (int4_g128, nvfp4) word 4t + run, a lane's own 32 values, one
// 16-byte shared load a row. nvfp4's groups are 16, so a lane's word lies in one: its E4M3
// scale (times 2^118) is the multiplier of the decode's fma, the weights reach the mma
// scaled (exact: 2 significant bits times 4), and the mma sums a whole row. Tokens are the
// mma's 8 columns (TB 8 a chunk).

#if !(DTYPE == 4 || DTYPE == 5 || DTYPE == 6 || DTYPE == 7)
#error "mma_w4 decodes 4-bit codes (int4_g32, int4_g128, mxfp4, nvfp4); the backend's covers refuses others"
#endif
#define W4_E2M1 (DTYPE == 4 || DTYPE == 7)
#define W4_FOLD (SCALE_CODE == 3) // nvfp4: the group scale rides the decode's fma
#if D_IN % 128 || !(GROUP == 32 || GROUP == 128 || (GROUP == 16 && W4_FOLD))
#error "mma_w4 reads rows in blocks of 128 values, scaled per 32 or 128 (nvfp4: 16)"
#endif
#if WG != 128 || TB != 8
#error "mma_w4 is 4 warps a block and 8 tokens a chunk"
#endif

#define W4_TILES 4              // 16-row tiles a block
#define W4_ROWS (16 * W4_TILES) // rows a block
#if ROWS != W4_ROWS
#error "mma_w4's launch plan (ROWS) and its tiles disagree"
#endif
#define W4_OWN (GROUP != 32) // a lane's own 32 values of a block (else word 4 run + t)
// Staged bytes a row: 64, padded where lanes read words so a quad's words miss each other's
// banks; unpadded where they read 16 bytes (8 lanes, 8 distinct 16-byte bank groups).
#define W4_PITCH (W4_OWN ? 64 : 80)
#define W4_STAGE (W4_ROWS * W4_PITCH)
#define W4_KB (D_IN / 128)

// Each bf16 half of a times b plus c, rounded once (fma.rn.bf16x2, sm_80 and later; it
// keeps subnormal operands, as the E2M1 decode needs).
__device__ __forceinline__ unsigned int fma_bf16x2(unsigned int a, unsigned int b, unsigned int c) {
#ifdef DECODELAB_HOST
    return host_fma_bf16x2(a, b, c);
#else
    unsigned int d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#endif
}

#if W4_E2M1
// Codes J and J + 4 of a word (J = 0, 1; the word shifted down by 8 for 2, 3) as bf16 bits:
// each code's sign on bit 15 and its exponent and mantissa bits on 8..6, so each half is the
// E2M1 value times 2^-126 (subnormal for exponent 0). One multiply puts two copies of the
// pair's nibbles (shifted 12 - 4J and 6 - 4J: disjoint) and one mask keeps those bits.
template <int J>
__device__ __forceinline__ unsigned int e2m1_bits(unsigned int w) {
    const unsigned int p = w & (0x000F000Fu << (4 * J));
    return (p * (J == 0 ? 0x1040u : 0x104u)) & 0x81C081C0u;
}
#endif

// A word's codes as four bf16 pairs, pair j holding codes j and j + 4, each exact: int4 by
// one lop3 ((w & 0x000F000F) ^ 0x43084308 is 128 + (q + 8)) and one fma (minus 136); E2M1 by
// its bits times `mul` (2^126; nvfp4: its scale times 2^118) in one fma.
__device__ __forceinline__ void w4_decode(unsigned int w, unsigned int mul, unsigned int (&p)[4]) {
#if W4_E2M1
    const unsigned int w8 = w >> 8;
    p[0] = fma_bf16x2(e2m1_bits<0>(w), mul, 0x80008000u);
    p[1] = fma_bf16x2(e2m1_bits<1>(w), mul, 0x80008000u);
    p[2] = fma_bf16x2(e2m1_bits<0>(w8), mul, 0x80008000u);
    p[3] = fma_bf16x2(e2m1_bits<1>(w8), mul, 0x80008000u);
#else
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const unsigned int v = w >> (4 * j);
#ifdef DECODELAB_HOST
        const unsigned int m = (v & 0x000F000Fu) ^ 0x43084308u;
#else
        // One lop3, (v & mask) ^ magic (C's & and ^ compile to two, each with its immediate).
        unsigned int m;
        asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(m) : "r"(v), "n"(0x000F000F), "n"(0x43084308));
#endif
        p[j] = fma_bf16x2(m, mul, 0xC308C308u);
    }
#endif
}

// One row's group scales for one 128-value block, loaded at once (`w4_scales_t`, from the
// row's first scale byte `row`), and the scale of run `run` (f32, applied to the run's sums)
// or, nvfp4, the fold multipliers of the lane's words.
#define W4_SCALE_BYTES (SCALE_CODE == 1 ? 2 : 1)
#define W4_SROW ((D_IN / GROUP) * W4_SCALE_BYTES) // scale bytes a row
#if SCALE_CODE == 1 && GROUP == 32 // int4_g32: four bf16
typedef uint2 w4_scales_t;
__device__ __forceinline__ w4_scales_t w4_scales(const unsigned char* row, int kb, int) {
    return __ldg(reinterpret_cast<const uint2*>(row) + kb);
}
__device__ __forceinline__ float w4_run_scale(w4_scales_t s, int run) {
    const unsigned int v = run < 2 ? s.x : s.y;
    return __uint_as_float(run % 2 ? v & 0xFFFF0000u : v << 16);
}
#elif SCALE_CODE == 1 // int4_g128: one bf16
typedef unsigned int w4_scales_t;
__device__ __forceinline__ w4_scales_t w4_scales(const unsigned char* row, int kb, int) {
    return __ldg(reinterpret_cast<const unsigned short*>(row) + kb);
}
__device__ __forceinline__ float w4_run_scale(w4_scales_t s, int) { return __uint_as_float(s << 16); }
#elif SCALE_CODE == 2 // mxfp4: four E8M0, 2^(b - 127) (0: 2^-127, subnormal)
typedef unsigned int w4_scales_t;
__device__ __forceinline__ w4_scales_t w4_scales(const unsigned char* row, int kb, int) {
    return __ldg(reinterpret_cast<const unsigned int*>(row) + kb);
}
__device__ __forceinline__ float w4_run_scale(w4_scales_t s, int run) {
    // Byte `run` on f32's exponent (a shift and a mask), at least 2^-127's bits (one max).
    const unsigned int b = run == 3 ? (s >> 1) & 0x7F800000u : (s << (23 - 8 * run)) & 0x7F800000u;
#ifdef DECODELAB_HOST
    return __uint_as_float(max(b, 0x00400000u));
#else
    unsigned int f;
    asm("max.u32 %0, %1, %2;" : "=r"(f) : "r"(b), "n"(0x00400000));
    return __uint_as_float(f);
#endif
}
#else // nvfp4: the lane's two E4M3 (groups 2t, 2t + 1 of the block), as fold multipliers
typedef uint2 w4_scales_t;
__device__ __forceinline__ w4_scales_t w4_scales(const unsigned char* row, int kb, int t) {
    const __nv_fp8x2_storage_t b = __ldg(reinterpret_cast<const unsigned short*>(row + 8 * kb + 2 * t));
    // Each E4M3 times 2^118 as a bf16 pair: exact, as 2^-9 <= |s| <= 448 stays normal.
    const unsigned int h = f16x2_of_fp8x2(b);
    const float s0 = f16_bits_float((unsigned short)(h & 0xFFFFu)) * 0x1p118f;
    const float s1 = f16_bits_float((unsigned short)(h >> 16)) * 0x1p118f;
    return make_uint2(bf16x2_rn(s0, s0), bf16x2_rn(s1, s1));
}
#endif

// Stage block kb of the block's 64 rows: lane l copies 16 bytes (l % 4) of rows l / 4 + 8j,
// j = 0..7, from `from` (its first row's block kb) at fixed offsets; rows past the last are
// left as they are (their sums are not stored).
template <int J>
__device__ __forceinline__ void w4_copy(unsigned char* to, unsigned int sh, const unsigned char* from, int rows_left) {
    if (8 * J < rows_left) {
#ifdef DECODELAB_HOST
        copy16(to + 8 * J * W4_PITCH, from + 8 * J * (D_IN / 2));
#else
        // The offsets as immediates: no address arithmetic per copy.
        constexpr int to_at = 8 * J * W4_PITCH, from_at = 8 * J * (D_IN / 2);
        asm volatile("cp.async.cg.shared.global [%0+%2], [%1+%3], 16;" ::"r"(sh), "l"(from), "n"(to_at), "n"(from_at)); // stream: weights
#endif
    }
}
__device__ __forceinline__ void w4_stage(unsigned char* to, const unsigned char* __restrict__ from, int rows_left) {
#ifdef DECODELAB_HOST
    const unsigned int sh = 0;
#else
    const unsigned int sh = (unsigned int)__cvta_generic_to_shared(to);
#endif
    w4_copy<0>(to, sh, from, rows_left);
    w4_copy<1>(to, sh, from, rows_left);
    w4_copy<2>(to, sh, from, rows_left);
    w4_copy<3>(to, sh, from, rows_left);
    w4_copy<4>(to, sh, from, rows_left);
    w4_copy<5>(to, sh, from, rows_left);
    w4_copy<6>(to, sh, from, rows_left);
    w4_copy<7>(to, sh, from, rows_left);
    copies_commit();
}

// x as the B operand, once per call (W4_X_FRAG: the launch, and the host driver, run it first): for each 8 values v of a token (one 16-byte vector out
// of two), pairs (v0, v4) (v1, v5) for mma h = 0 and (v2, v6) (v3, v7) for h = 1, each rounded
// to bf16 (hi), then x less hi rounded again (lo; zero at math: bf16): hi + lo keeps about
// 16 bits of x.
#define W4_X_FRAG 1
extern "C" __global__ void x_frag(const float* __restrict__ x, uint4* __restrict__ xf) {
    const u64 c = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= (u64)BATCH * D_IN / 8) return;
    const float4 a = __ldg(reinterpret_cast<const float4*>(x) + 2 * c);
    const float4 b = __ldg(reinterpret_cast<const float4*>(x) + 2 * c + 1);
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    unsigned int hi[4], lo[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float x0 = v[i], x1 = v[i + 4];
        hi[i] = bf16x2_rn(x0, x1);
#if MATH_BF16
        lo[i] = 0u;
#else
        lo[i] = bf16x2_rn(x0 - __uint_as_float(hi[i] << 16), x1 - __uint_as_float(hi[i] & 0xFFFF0000u));
#endif
    }
    xf[2 * c] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    xf[2 * c + 1] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
}

extern "C" __global__ void __launch_bounds__(WG, 1) gemv(
    const uint4* __restrict__ xf, const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
    const unsigned int* __restrict__ groups, const float* __restrict__ entry_weight, float* __restrict__ slot_out) {
    __shared__ __align__(16) unsigned char stage[WG / 32][2][W4_STAGE];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int u = blockIdx.y, o0 = blockIdx.x * W4_ROWS;
    const unsigned int e = groups[U + 1 + u];
    const unsigned int first = groups[u], last = groups[u + 1];
    const unsigned int* entries = groups + 2 * U + 1;
    const u64 row0 = (u64)e * D_OUT + o0;
    const int last_row = D_OUT - 1 - o0; // rows past it are neither read nor stored
    float* red = reinterpret_cast<float*>(&stage[0][0][0]); // [warp][row][token], after the loop
    // This lane's first staged row (lane / 4) and 16 bytes (lane % 4): where its copies come
    // from in block 0, and go in a buffer; rows at or past `rows_left` of it are not copied.
    const unsigned char* wrow = w + (row0 + g) * (D_IN / 2) + 16 * t;
    const int rows_left = last_row + 1 - g;
    const int to = g * W4_PITCH + 16 * t;
    // Row g's scales; tile i's rows g + 16i and g + 16i + 8 sit at fixed offsets from them.
    const unsigned char* srow = reinterpret_cast<const unsigned char*>(w_scale) + (row0 + g) * W4_SROW;

    for (unsigned int t0 = first; t0 < last; t0 += TB) {
        const int nt = min((unsigned int)TB, last - t0);
        // This lane's token's x, in 8-value vectors (hi, lo) of 32 bytes; past the chunk's
        // tokens, its last one's (the mma's columns are independent; those are not stored).
        const uint4* xt = xf + (u64)entries[2 * (t0 + min(g, nt - 1))] * (D_IN / 4);
        float acc[W4_TILES][4];
#pragma unroll
        for (int i = 0; i < W4_TILES; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
        int s = 0;
        if (warp < W4_KB) w4_stage(stage[warp][0] + to, wrow + 64 * warp, rows_left);
        for (int kb = warp; kb < W4_KB; kb += WG / 32) {
            // Unguarded: past the last expert's rows, the buffer's 64 rows of padding.
            w4_scales_t sc[W4_TILES][2];
#pragma unroll
            for (int i = 0; i < W4_TILES; i++) {
                sc[i][0] = w4_scales(srow + 16 * i * W4_SROW, kb, t);
                sc[i][1] = w4_scales(srow + (16 * i + 8) * W4_SROW, kb, t);
            }
            if (kb + WG / 32 < W4_KB) {
                w4_stage(stage[warp][s ^ 1] + to, wrow + 64 * (kb + WG / 32), rows_left);
                copies_wait<1>();
            } else {
                copies_wait<0>();
            }
            __syncwarp();
            const unsigned char* st = stage[warp][s];
            // x for the block's 4 runs: this lane's 8 values of each (word 4 run + t, or 4t + run,
            // of the 16 in the block), hi and lo.
            const uint4* xk = xt + 32 * kb + (W4_OWN ? 8 * t : 2 * t);
            unsigned int bh[4][2][2], bl[4][2][2];
#pragma unroll
            for (int run = 0; run < 4; run++) {
                const int at = W4_OWN ? 2 * run : 8 * run;
                const uint4 xh = __ldg(xk + at);
#if MATH_BF16
                const uint4 xl = make_uint4(0u, 0u, 0u, 0u);
#else
                const uint4 xl = __ldg(xk + at + 1);
#endif
                bh[run][0][0] = xh.x, bh[run][0][1] = xh.y, bh[run][1][0] = xh.z, bh[run][1][1] = xh.w;
                bl[run][0][0] = xl.x, bl[run][0][1] = xl.y, bl[run][1][0] = xl.z, bl[run][1][1] = xl.w;
            }
#pragma unroll
            for (int i = 0; i < W4_TILES; i++) {
                // Rows g and g + 8: the lane's word of each run.
                const unsigned char* ra = st + (16 * i + g) * W4_PITCH;
                const unsigned char* rb = st + (16 * i + g + 8) * W4_PITCH;
                unsigned int wa[4], wb[4];
#if W4_OWN
                const uint4 va = reinterpret_cast<const uint4*>(ra)[t], vb = reinterpret_cast<const uint4*>(rb)[t];
                wa[0] = va.x, wa[1] = va.y, wa[2] = va.z, wa[3] = va.w;
                wb[0] = vb.x, wb[1] = vb.y, wb[2] = vb.z, wb[3] = vb.w;
#else
#pragma unroll
                for (int run = 0; run < 4; run++) {
                    wa[run] = reinterpret_cast<const unsigned int*>(ra)[4 * run + t];
                    wb[run] = reinterpret_cast<const unsigned int*>(rb)[4 * run + t];
                }
#endif
#if !W4_FOLD
                float part[4];
#endif
#pragma unroll
                for (int run = 0; run < 4; run++) {
#if W4_FOLD
                    const unsigned int ma = run < 2 ? sc[i][0].x : sc[i][0].y;
                    const unsigned int mb = run < 2 ? sc[i][1].x : sc[i][1].y;
                    float(&d)[4] = acc[i];
#else
                    const unsigned int ma = W4_E2M1 ? 0x7E807E80u : 0x3F803F80u, mb = ma; // 2^126 or 1
                    float(&d)[4] = part;
#endif
                    unsigned int pa[4], pb[4];
                    w4_decode(wa[run], ma, pa);
                    w4_decode(wb[run], mb, pb);
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const unsigned int a[4] = {pa[2 * h], pb[2 * h], pa[2 * h + 1], pb[2 * h + 1]};
#if W4_FOLD
                        mma_bf16_16816(d, a, bh[run][h]);
#else
                        if (h == 0 && (GROUP == 32 || run == 0)) mma_bf16_first(d, a, bh[run][h]);
                        else mma_bf16_16816(d, a, bh[run][h]);
#endif
#if !MATH_BF16
                        mma_bf16_16816(d, a, bl[run][h]);
#endif
                    }
#if !W4_FOLD
                    if (GROUP == 32 || run == 3) { // the group's sums times its scales
                        const float s0 = w4_run_scale(sc[i][0], run), s8 = w4_run_scale(sc[i][1], run);
                        acc[i][0] = fmaf(part[0], s0, acc[i][0]);
                        acc[i][1] = fmaf(part[1], s0, acc[i][1]);
                        acc[i][2] = fmaf(part[2], s8, acc[i][2]);
                        acc[i][3] = fmaf(part[3], s8, acc[i][3]);
                    }
#endif
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
#if W4_FOLD
                dot *= 256.f; // the fold's 2^-8 back
#endif
#if TENSOR_SCALE
                dot *= w_scale[TS_WORD + e]; // nvfp4: the expert's f32, after the group scales
#endif
                const unsigned int slot = entries[2 * (t0 + tok) + 1];
                slot_out[(u64)slot * D_OUT + o] = dot * entry_weight[t0 + tok];
            }
        }
        __syncthreads(); // the staging is the next chunk's again
    }
}
