// kv_decode's second pass, shared by every WGSL implementation: the slices of one
// (sequence, head) combined exactly with their log-sum-exp. Reads partial_acc (unnormalised,
// relative to the slice's max) and partial_ml (max, sum) as the attend pass left them.
// Prelude: BATCH, HQ, SPLITS, DV, WG, V_SCALE, NEG_BIG and the bindings.

// Combine the slices of one (sequence, head) exactly: out = sum_s acc_s e^(m_s - M) / L.
@compute @workgroup_size(WG)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wg.x + wg.y * 65535u;
    if (bh >= BATCH * HQ) {
        return;
    }
    var m = NEG_BIG;
    for (var s = 0u; s < SPLITS; s++) {
        let ml = partial_ml[bh * SPLITS + s];
        if (ml.y > 0.0) {
            m = max(m, ml.x);
        }
    }
    var l = 0.0;
    for (var s = 0u; s < SPLITS; s++) {
        let ml = partial_ml[bh * SPLITS + s];
        if (ml.y > 0.0) {
            l += ml.y * exp(ml.x - m);
        }
    }
    for (var d = lid; d < DV; d += WG) {
        var o = 0.0;
        for (var s = 0u; s < SPLITS; s++) {
            let ml = partial_ml[bh * SPLITS + s];
            if (ml.y > 0.0) {
                o += partial_acc[(bh * SPLITS + s) * DV + d] * exp(ml.x - m);
            }
        }
        out[bh * DV + d] = o / l * V_SCALE;
    }
    if (lid == 0u) {
        lse[bh] = m + log(l);
    }
}
