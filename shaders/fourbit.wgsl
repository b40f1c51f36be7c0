// The 4-bit weight formats' helpers for the expert_gemv shaders (after dtype.wgsl and the
// `w_scale` binding): group scales from the scale buffer's bytes, and four codes at once.

// 4-bit dtypes (GROUP > 0): the scale of the group holding element i of global row `grow`,
// from the scale buffer's bytes (SCALE_CODE 1 bf16, 2 E8M0, 3 E4M3); else 1.
fn group_scale(grow: u32, i: u32) -> f32 {
    if (GROUP == 0u) {
        return 1.0;
    }
    let g = max(GROUP, 1u);
    let gi = grow * (D_IN / g) + i / g;
    if (SCALE_CODE == 1u) {
        let word = bitcast<u32>(w_scale[gi >> 1u]);
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (gi & 1u) == 1u));
    }
    let b = (bitcast<u32>(w_scale[gi >> 2u]) >> (8u * (gi & 3u))) & 0xffu;
    if (SCALE_CODE == 2u) {
        return bitcast<f32>(select(b << 23u, 0x00400000u, b == 0u)); // 2^(b-127); 0 is 2^-127
    }
    return decode_fp8_e4m3(b);
}

// The four 4-bit codes in the low 16 bits of `u`, low nibble first, unscaled.
fn nib4(u: u32) -> vec4<f32> {
    return vec4<f32>(decode_nibble(u & 15u), decode_nibble((u >> 4u) & 15u),
                     decode_nibble((u >> 8u) & 15u), decode_nibble((u >> 12u) & 15u));
}
