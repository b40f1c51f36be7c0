// expert_gemv's second pass, shared by every WGSL implementation. Reads slot_out (one row per
// (token, choice) slot) and writes y; the prelude defines WG, BATCH, D_OUT, TOP_K and the
// bindings. The k slots are summed in choice order, as every backend sums them, so splits
// stay exact.

// y[t, o] = sum over the token's k choices of its slot rows.
@compute @workgroup_size(WG)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= BATCH * D_OUT) {
        return;
    }
    let t = i / D_OUT;
    let o = i % D_OUT;
    var s = 0.0;
    for (var j = 0u; j < TOP_K; j++) {
        s += slot_out[(t * TOP_K + j) * D_OUT + o];
    }
    y[i] = s;
}
