// kv_decode: one decode step of paged attention (GQA, or MLA in absorbed form).
//
// Grid: (splits, head blocks, sequences). A workgroup owns HB query heads that share one KV
// head, and one slice of the context (flash-decoding): many slices keep a large GPU full even
// at batch 1, and `merge` combines the slices exactly with their log-sum-exp.
// Per tile of WG tokens:
//   1. scores: one thread per token reads that token's K row once for all HB heads
//      (16-byte loads when rows are 16-byte aligned), so each K byte is read once per block;
//   2. softmax: running max and sum per head, rescaling the accumulator once per tile;
//   3. PV: each thread owns DV_PER_THREAD output dims of every head; consecutive threads read
//      consecutive V elements of the same token, so V loads coalesce.
// The prelude defines the shape constants, the dtype, and k_vec/v_vec: 16-byte loads from
// cache chunk c (a cache larger than one binding spans several).

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> page_table: array<i32>;
@group(0) @binding(2) var<storage, read> context_lens: array<i32>;
@group(0) @binding(3) var<storage, read_write> partial_acc: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial_ml: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

const NEG_BIG: f32 = -3.0e38;

var<workgroup> q_sh: array<f32, HB * DK>;      // q * scale * k_scale for the HB heads
var<workgroup> p_sh: array<f32, HB * WG>;      // scores, then probabilities, of the tile
var<workgroup> row_sh: array<u32, WG>;         // element offset of each token's row in its chunk
var<workgroup> chunk_sh: array<u32, WG>;       // which cache chunk holds it

fn k_elem(c: u32, e: u32) -> f32 {
    let byte = e * ELEM_BYTES;
    return decode_elem(k_vec(c, byte >> 4u)[(byte >> 2u) & 3u], byte & 3u);
}

fn v_elem(c: u32, e: u32) -> f32 {
    let byte = e * ELEM_BYTES;
    if (IS_MLA) {
        return decode_elem(k_vec(c, byte >> 4u)[(byte >> 2u) & 3u], byte & 3u);
    }
    return decode_elem(v_vec(c, byte >> 4u)[(byte >> 2u) & 3u], byte & 3u);
}

@compute @workgroup_size(WG)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let split = wg.x;
    let h0 = wg.y * HB;
    let b = wg.z;
    let g = h0 / GROUP;
    let len = u32(context_lens[b]);
    let start = split * SPLIT_TOKENS;
    let end = min(start + SPLIT_TOKENS, len);

    for (var i = lid; i < HB * DK; i += WG) {
        let j = i / DK;
        q_sh[i] = q[(b * HQ + h0 + j) * DK + i % DK] * (SCALE * K_SCALE);
    }
    var m_run: array<f32, HB>;
    var l_run: array<f32, HB>;
    var acc: array<f32, HB * DV_PER_THREAD>;
    for (var j = 0u; j < HB; j++) {
        m_run[j] = NEG_BIG;
        l_run[j] = 0.0;
    }
    for (var i = 0u; i < HB * DV_PER_THREAD; i++) {
        acc[i] = 0.0;
    }
    workgroupBarrier();

    for (var tile = start; tile < end; tile += WG) {
        // 1. scores
        let t = tile + lid;
        if (t < end) {
            let page = u32(page_table[b * MAX_PAGES + t / PAGE]);
            let c = page / PAGES_PER_CHUNK;
            let row = (((page % PAGES_PER_CHUNK) * PAGE + t % PAGE) * HKV + g) * DK;
            row_sh[lid] = row;
            chunk_sh[lid] = c;
            var s: array<f32, HB>;
            for (var j = 0u; j < HB; j++) {
                s[j] = 0.0;
            }
            if (ROW_ALIGNED) {
                let v0 = (row * ELEM_BYTES) >> 4u;
                for (var v = 0u; v < DK / ELEMS_PER_VEC; v++) {
                    let words = k_vec(c, v0 + v);
                    for (var e = 0u; e < ELEMS_PER_VEC; e++) {
                        let x = decode_in_vec(words, e);
                        let d = v * ELEMS_PER_VEC + e;
                        for (var j = 0u; j < HB; j++) {
                            s[j] += q_sh[j * DK + d] * x;
                        }
                    }
                }
            } else {
                for (var d = 0u; d < DK; d++) {
                    let x = k_elem(c, row + d);
                    for (var j = 0u; j < HB; j++) {
                        s[j] += q_sh[j * DK + d] * x;
                    }
                }
            }
            for (var j = 0u; j < HB; j++) {
                p_sh[j * WG + lid] = s[j];
            }
        } else {
            for (var j = 0u; j < HB; j++) {
                p_sh[j * WG + lid] = NEG_BIG;
            }
        }
        workgroupBarrier();

        // 2. softmax bookkeeping: every thread derives the same new max per head.
        let n = min(WG, end - tile);
        var corr: array<f32, HB>;
        var m_new: array<f32, HB>;
        for (var j = 0u; j < HB; j++) {
            var mx = m_run[j];
            for (var i = 0u; i < n; i++) {
                mx = max(mx, p_sh[j * WG + i]);
            }
            m_new[j] = mx;
            corr[j] = exp(m_run[j] - mx);
            m_run[j] = mx;
        }
        workgroupBarrier();
        if (lid < n) {
            for (var j = 0u; j < HB; j++) {
                p_sh[j * WG + lid] = exp(p_sh[j * WG + lid] - m_new[j]);
            }
        }
        workgroupBarrier();
        for (var j = 0u; j < HB; j++) {
            var sum = 0.0;
            for (var i = 0u; i < n; i++) {
                sum += p_sh[j * WG + i];
            }
            l_run[j] = l_run[j] * corr[j] + sum;
        }

        // 3. PV
        for (var k = 0u; k < DV_PER_THREAD; k++) {
            let d = lid + k * WG;
            if (d < DV) {
                for (var j = 0u; j < HB; j++) {
                    acc[j * DV_PER_THREAD + k] *= corr[j];
                }
                for (var i = 0u; i < n; i++) {
                    var vrow = row_sh[i];
                    if (!IS_MLA) {
                        vrow = vrow / DK * DV; // same token and head, V's row width
                    }
                    let x = v_elem(chunk_sh[i], vrow + d);
                    for (var j = 0u; j < HB; j++) {
                        acc[j * DV_PER_THREAD + k] += p_sh[j * WG + i] * x;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    // Unnormalised partial result of this slice; an empty slice leaves l = 0.
    for (var j = 0u; j < HB; j++) {
        let slot = (b * HQ + h0 + j) * SPLITS + split;
        for (var k = 0u; k < DV_PER_THREAD; k++) {
            let d = lid + k * WG;
            if (d < DV) {
                partial_acc[slot * DV + d] = acc[j * DV_PER_THREAD + k];
            }
        }
        if (lid == 0u) {
            partial_ml[slot] = vec2<f32>(m_run[j], l_run[j]);
        }
    }
}
