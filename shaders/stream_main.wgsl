// stream, simple: one 16-byte load or store per thread per step, grid-stride, so a few
// thousand workgroups keep every memory channel busy.

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    var acc = 0u;
    for (var i = gid.x; i < chunk.vecs; i += stride) {
        if (OP == 0u) {
            let v = src[i];
            acc += v.x + v.y + v.z + v.w; // u32 arithmetic wraps, as the oracle's sum does
        } else if (OP == 1u) {
            dst[i] = src[i];
        } else {
            let w = chunk.base_word + 4u * i;
            dst[i] = vec4<u32>(pattern(w), pattern(w + 1u), pattern(w + 2u), pattern(w + 3u));
        }
    }
    if (OP == 0u) {
        add_to_sum(acc, lid);
    }
}
