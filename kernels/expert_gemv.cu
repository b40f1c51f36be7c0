// expert_gemv: grouped MoE GEMV, the same algorithm as shaders/expert_gemv.wgsl. A block owns
// ROWS output rows of one touched expert, streams them once with 16-byte loads (consecutive
// threads, consecutive words: coalesced) and applies them to every token that chose the
// expert, TB tokens at a time; warp shuffles then shared memory reduce the partial dots.
// Each (token, choice) slot gets its own output row; `combine` sums a token's top-k slots.
// groups: [U + 1] offsets, U expert ids, then (token, slot) per entry.

// __launch_bounds__(WG, 1): as in kv_decode.cu, registers over occupancy, so nothing spills.
extern "C" __global__ void __launch_bounds__(WG, 1) gemv(
    const float* __restrict__ x, const unsigned char* __restrict__ w, const float* __restrict__ w_scale,
    const unsigned int* __restrict__ groups, const float* __restrict__ entry_weight, float* __restrict__ slot_out) {
    __shared__ float red[ROWS * TB][WG / 32];
    const int u = blockIdx.y, o0 = blockIdx.x * ROWS, lid = threadIdx.x;
    const unsigned int e = groups[U + 1 + u];
    const unsigned int first = groups[u], last = groups[u + 1];
    const unsigned int* entries = groups + 2 * U + 1;

    for (unsigned int t0 = first; t0 < last; t0 += TB) {
        const int nt = min((unsigned int)TB, last - t0);
        float part[ROWS * TB];
#pragma unroll
        for (int i = 0; i < ROWS * TB; i++) part[i] = 0.f;
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int o = min(o0 + r, D_OUT - 1); // rows past the end recompute the last; not stored
            const u64 row = ((u64)e * D_OUT + o) * D_IN;
            const float* sc = row_scales(w_scale, e, o);
#if ROW_ALIGNED
            const uint4* w4 = reinterpret_cast<const uint4*>(w + (row * ELEM_BITS >> 3));
            for (int vi = lid; vi < D_IN / ELEMS_PER_VEC; vi += WG) {
                float wv[ELEMS_PER_VEC];
                decode_vec(__ldg(w4 + vi), wv); // stream: weights
#if GROUP
                // 4-bit: each code times its group's scale (one a vector, or two for 16).
#pragma unroll
                for (int kk = 0; kk < ELEMS_PER_VEC; kk++)
                    wv[kk] *= group_scale(w_scale, (row + vi * ELEMS_PER_VEC + kk) / GROUP);
#endif
#if SCALE_BLOCK
                const float bs = __ldg(sc + vi * ELEMS_PER_VEC / SCALE_BLOCK);
#else
                const float bs = 1.f;
#endif
                for (int tt = 0; tt < nt; tt++) {
                    const float* xt = x + (u64)entries[2 * (t0 + tt)] * D_IN + vi * ELEMS_PER_VEC;
                    float s = 0.f;
#pragma unroll
                    for (int kk = 0; kk < ELEMS_PER_VEC; kk++) s += wv[kk] * xt[kk];
                    part[r * TB + tt] += s * bs;
                }
            }
#else
            for (int i = lid; i < D_IN; i += WG) {
#if SCALE_BLOCK
                const float wv = decode_elem(w, row + i) * __ldg(sc + i / SCALE_BLOCK); // stream: weights
#elif GROUP
                const float wv = decode_elem(w, row + i) * group_scale(w_scale, (row + i) / GROUP); // stream: weights
#else
                const float wv = decode_elem(w, row + i); // stream: weights
#endif
                for (int tt = 0; tt < nt; tt++) part[r * TB + tt] += wv * x[(u64)entries[2 * (t0 + tt)] * D_IN + i];
            }
#endif
        }
#pragma unroll
        for (int i = 0; i < ROWS * TB; i++) {
            const float s = warp_sum(part[i]);
            if ((lid & 31) == 0) red[i][lid / 32] = s;
        }
        __syncthreads();
        if (lid < ROWS * TB) {
            const int r = lid / TB, tt = lid % TB, o = o0 + r;
            if (tt < nt && o < D_OUT) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < WG / 32; i++) dot += red[lid][i];
#if SCALED && !SCALE_BLOCK
                dot *= w_scale[(u64)e * D_OUT + o];
#endif
#if TENSOR_SCALE
                dot *= w_scale[TS_WORD + e]; // nvfp4: the expert's f32, after the group scales
#endif
                const unsigned int slot = entries[2 * (t0 + tt) + 1];
                slot_out[(u64)slot * D_OUT + o] = dot * entry_weight[t0 + tt];
            }
        }
        __syncthreads();
    }
}
