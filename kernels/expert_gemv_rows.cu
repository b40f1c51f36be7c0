// expert_gemv "rows": the decode case, a few tokens per expert, on CUDA cores. A warp owns
// WR output rows of one touched expert; each load instruction reads 512 contiguous weight
// bytes (32 lanes x 16 B), and a lane issues all WR rows' loads before it uses any (WR x 16 B
// in flight per lane, twice that with the 2x unroll). The expert's tokens come TB at a time;
// their x arrives as float4 through L1 (every row of every warp reuses it). Lanes reduce with
// shuffles; no shared memory, no barrier. The weights bypass L1 (read once), so it keeps x.
// Needs whole 16-byte vectors per row (ROW_ALIGNED), so x rows are 16-byte aligned too.
// groups: [U + 1] offsets, U expert ids, then (token, slot) per entry, as for `gemv`.

#if !ROW_ALIGNED
#error "expert_gemv rows needs rows of whole 16-byte vectors (the backend's covers refuses others)"
#endif

#if SCALE_BLOCK && (SCALE_BLOCK % WR)
#error "a warp's WR rows must lie in one scale block"
#endif

#define WARPS (WG / 32)
#define NV (D_IN / ELEMS_PER_VEC)
#define XV (ELEMS_PER_VEC / 4)

// 16 weight bytes, read once: not kept in L1.
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
#ifdef DECODELAB_HOST
    return *p; // tests/cuda_host: the same bytes, without the PTX
#else
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" // stream: weights
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#endif
}

// acc[r][t] += row r's vector v . token t's elements of vector v, for NT tokens (times the
// vector's block scale, from the warp's row of scales sc, with block scales).
template <int NT>
__device__ __forceinline__ void rows_dot(const uint4 (&wv)[WR], const float4* const (&xs)[TB], int v,
                                         const float* __restrict__ sc, float (&acc)[WR][TB]) {
    float xf[NT][ELEMS_PER_VEC];
#pragma unroll
    for (int t = 0; t < NT; t++) {
#pragma unroll
        for (int q = 0; q < XV; q++) {
            const float4 f = __ldg(xs[t] + v * XV + q);
            xf[t][4 * q] = f.x;
            xf[t][4 * q + 1] = f.y;
            xf[t][4 * q + 2] = f.z;
            xf[t][4 * q + 3] = f.w;
        }
    }
#if SCALE_BLOCK
    const float bs = __ldg(sc + v * ELEMS_PER_VEC / SCALE_BLOCK);
#endif
#pragma unroll
    for (int r = 0; r < WR; r++) {
        float wf[ELEMS_PER_VEC];
        decode_vec(wv[r], wf);
#pragma unroll
        for (int t = 0; t < NT; t++) {
#if SCALE_BLOCK
            float d = 0.f;
#pragma unroll
            for (int k = 0; k < ELEMS_PER_VEC; k++) d = fmaf(wf[k], xf[t][k], d);
            acc[r][t] = fmaf(d, bs, acc[r][t]);
#else
#pragma unroll
            for (int k = 0; k < ELEMS_PER_VEC; k++) acc[r][t] = fmaf(wf[k], xf[t][k], acc[r][t]);
#endif
        }
    }
}

// One chunk of NT tokens against the warp's WR rows: the streaming loop.
template <int NT>
__device__ __forceinline__ void rows_chunk(const uint4* const (&wrow)[WR], const float4* const (&xs)[TB],
                                           const float* __restrict__ sc, int lane, float (&acc)[WR][TB]) {
#pragma unroll 2
    for (int v = lane; v < NV; v += 32) {
        uint4 wv[WR];
#pragma unroll
        for (int r = 0; r < WR; r++) wv[r] = load_stream(wrow[r] + v); // stream: weights
        rows_dot<NT>(wv, xs, v, sc, acc);
    }
}

extern "C" __global__ void __launch_bounds__(WG) gemv(
    const float* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
    const unsigned int* __restrict__ groups, const float* __restrict__ entry_weight, float* __restrict__ slot_out) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int u = blockIdx.y;
    const int o0 = (blockIdx.x * WARPS + warp) * WR;
    if (o0 >= D_OUT) return; // the whole warp: no barrier follows
    const unsigned int e = groups[U + 1 + u];
    const unsigned int first = groups[u], last = groups[u + 1];
    const unsigned int* entries = groups + 2 * U + 1;
    const uint4* wrow[WR];
#pragma unroll
    for (int r = 0; r < WR; r++) {
        const int o = min(o0 + r, D_OUT - 1); // rows past the end recompute the last; not stored
        wrow[r] = reinterpret_cast<const uint4*>(w + ((u64)e * D_OUT + o) * D_IN * ELEM_BYTES);
    }
    const float* sc = row_scales(w_scale, e, o0);
    for (unsigned int t0 = first; t0 < last; t0 += TB) {
        const int nt = min((unsigned int)TB, last - t0);
        const float4* xs[TB];
#pragma unroll
        for (int t = 0; t < TB; t++) {
            const unsigned int tok = entries[2 * (t0 + min(t, nt - 1))];
            xs[t] = reinterpret_cast<const float4*>(x + (u64)tok * D_IN);
        }
        float acc[WR][TB];
#pragma unroll
        for (int r = 0; r < WR; r++) {
#pragma unroll
            for (int t = 0; t < TB; t++) acc[r][t] = 0.f;
        }
        // Only the tokens there are: a chunk of one token streams the rows for one.
        switch (nt) {
        case 1: rows_chunk<1>(wrow, xs, sc, lane, acc); break;
#if TB >= 2
        case 2: rows_chunk<2>(wrow, xs, sc, lane, acc); break;
#endif
#if TB >= 3
        case 3: rows_chunk<3>(wrow, xs, sc, lane, acc); break;
#endif
#if TB >= 4
        case 4: rows_chunk<4>(wrow, xs, sc, lane, acc); break;
#endif
#if TB > 4
#error "rows_chunk is instantiated for TB <= 4"
#endif
        }
#pragma unroll
        for (int r = 0; r < WR; r++) {
#pragma unroll
            for (int t = 0; t < TB; t++) {
                float dot = warp_sum(acc[r][t]);
                const int o = o0 + r;
                if (lane == 0 && t < nt && o < D_OUT) {
#if SCALED && !SCALE_BLOCK
                    dot *= w_scale[(u64)e * D_OUT + o];
#endif
                    const unsigned int slot = entries[2 * (t0 + t) + 1];
                    slot_out[(u64)slot * D_OUT + o] = dot * entry_weight[t0 + t];
                }
            }
        }
    }
}
