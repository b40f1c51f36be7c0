// expert_gemv: grouped MoE GEMV. Tokens are grouped by expert (the routing metadata below),
// and a workgroup owns ROWS output rows of one touched expert: it streams those rows once and
// applies them to every token that chose the expert, TB tokens at a time. So each touched
// expert's weights cross the memory bus once per step however many tokens chose it.
// Threads split d_in; consecutive threads read consecutive 16-byte words of a row, so the
// loads coalesce. Each (token, choice) slot gets its own row of `slot_out`; `combine` sums
// the k slots of a token, so no float atomics are needed.
// The prelude defines the shape constants, the dtype, and w_vec: 16-byte loads from weight
// chunk c (a weight tensor larger than one binding spans several).

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w_scale: array<f32>;
// [U + 1] offsets into the entries, then U expert ids, then per entry: token, slot (t*k + j)
@group(0) @binding(2) var<storage, read> groups: array<u32>;
@group(0) @binding(3) var<storage, read> entry_weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> slot_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, ROWS * TB * WG>;
var<workgroup> totals: array<f32, ROWS * TB>;

// Sum each of the ROWS * TB partial dot products over the workgroup into totals[].
//! when plain
fn reduce_partials(part: ptr<function, array<f32, ROWS * TB>>, lid: u32) {
    for (var i = 0u; i < ROWS * TB; i++) {
        red[i * WG + lid] = (*part)[i];
    }
    workgroupBarrier();
    if (lid < ROWS * TB) {
        var s = 0.0;
        for (var i = 0u; i < WG; i++) {
            s += red[lid * WG + i];
        }
        totals[lid] = s;
    }
    workgroupBarrier();
}
//! end
//! when subgroups
// Subgroups add in registers first, so the workgroup pass sums WG / subgroup size values.
// Assumes a subgroup is a contiguous range of local_invocation_index (true of 1-D workgroups
// on every implementation we know).
fn reduce_partials(part: ptr<function, array<f32, ROWS * TB>>, lid: u32) {
    let sg_size = subgroupAdd(1u);
    let sg_id = subgroupBroadcastFirst(lid) / sg_size;
    for (var i = 0u; i < ROWS * TB; i++) {
        let s = subgroupAdd((*part)[i]);
        if (subgroupExclusiveAdd(1u) == 0u) { // the first active lane (naga has no subgroupElect)
            red[i * WG + sg_id] = s;
        }
    }
    workgroupBarrier();
    if (lid < ROWS * TB) {
        var s = 0.0;
        for (var i = 0u; i < WG / sg_size; i++) {
            s += red[lid * WG + i];
        }
        totals[lid] = s;
    }
    workgroupBarrier();
}
//! end

// Block scales (SCALE_BLOCK > 0): the scale of expert e's row o at column i; per-row scales
// (SCALE_BLOCK 0) are applied to the finished dot instead, so this is 1.
fn block_scale(e: u32, o: u32, i: u32) -> f32 {
    if (SCALE_BLOCK == 0u) {
        return 1.0;
    }
    let sb = max(SCALE_BLOCK, 1u); // never 0 here; naga folds the division either way
    return w_scale[(e * SB_OUT + o / sb) * SB_IN + i / sb];
}

fn w_elem(c: u32, e: u32) -> f32 {
    if (ELEM_BITS == 4u) {
        return decode_in_vec(w_vec(c, e >> 5u), e & 31u);
    }
    let byte = e * ELEM_BYTES;
    return decode_elem(w_vec(c, byte >> 4u)[(byte >> 2u) & 3u], byte & 3u);
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = wg.y;
    let o0 = wg.x * ROWS;
    let e = groups[U + 1u + u];
    let first = groups[u];
    let last = groups[u + 1u];
    let entries = 2u * U + 1u;

    for (var t0 = first; t0 < last; t0 += TB) {
        let nt = min(TB, last - t0);
        var part: array<f32, ROWS * TB>;
        for (var i = 0u; i < ROWS * TB; i++) {
            part[i] = 0.0;
        }
        for (var r = 0u; r < ROWS; r++) {
            let o = o0 + r;
            if (o < D_OUT) {
                let grow = e * D_OUT + o;               // global row
                let c = grow / ROWS_PER_CHUNK;
                let row = (grow % ROWS_PER_CHUNK) * D_IN; // element offset in the chunk
                if (ROW_ALIGNED) {
                    let v0 = select((row * ELEM_BYTES) >> 4u, row >> 5u, ELEM_BITS == 4u);
                    for (var v = lid; v < D_IN / ELEMS_PER_VEC; v += WG) {
                        let words = w_vec(c, v0 + v);
                        // A 16-byte word never straddles a scale block (128 elements).
                        let bs = block_scale(e, o, v * ELEMS_PER_VEC);
                        for (var k = 0u; k < ELEMS_PER_VEC; k++) {
                            let i = v * ELEMS_PER_VEC + k;
                            let wv = decode_in_vec(words, k) * bs * group_scale(grow, i);
                            for (var tt = 0u; tt < nt; tt++) {
                                let tok = groups[entries + 2u * (t0 + tt)];
                                part[r * TB + tt] += wv * x[tok * D_IN + i];
                            }
                        }
                    }
                } else {
                    for (var i = lid; i < D_IN; i += WG) {
                        let wv = w_elem(c, row + i) * block_scale(e, o, i) * group_scale(grow, i);
                        for (var tt = 0u; tt < nt; tt++) {
                            let tok = groups[entries + 2u * (t0 + tt)];
                            part[r * TB + tt] += wv * x[tok * D_IN + i];
                        }
                    }
                }
            }
        }
        reduce_partials(&part, lid);
        // ROWS * TB threads each finish one (row, token) dot product.
        if (lid < ROWS * TB) {
            let r = lid / TB;
            let tt = lid % TB;
            let o = o0 + r;
            if (tt < nt && o < D_OUT) {
                let dot = totals[lid];
                var s = 1.0;
                if (SCALED && SCALE_BLOCK == 0u) {
                    s = w_scale[e * D_OUT + o];
                }
                if (TENSOR_SCALE) { // nvfp4: the expert's f32, after the group scales
                    s = w_scale[TS_WORD + e];
                }
                let slot = groups[entries + 2u * (t0 + tt) + 1u];
                slot_out[slot * D_OUT + o] = dot * s * entry_weight[t0 + tt];
            }
        }
        workgroupBarrier();
    }
}
