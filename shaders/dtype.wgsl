// Storage dtypes decoded from packed u32 words. Every tensor is bound as array<vec4<u32>>
// (16-byte loads); a kernel picks the word and the byte within it. The prelude the backend
// prepends defines DTYPE (0 f32, 1 f16, 2 bf16, 3 fp8_e4m3; the 4-bit weight codes 4 mxfp4,
// 5 int4_g32, 6 int4_g128, 7 nvfp4), ELEM_BITS and ELEM_BYTES (0 for 4-bit codes).

// OCP E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits; 0x7f/0xff are NaN.
fn decode_fp8_e4m3(b: u32) -> f32 {
    let sign = (b & 0x80u) << 24u;
    let exp = (b >> 3u) & 0xfu;
    let man = b & 7u;
    if ((b & 0x7fu) == 0x7fu) {
        return bitcast<f32>(0x7fc00000u);
    }
    if (exp == 0u) {
        // subnormal: man / 8 * 2^-6, exact in f32
        return bitcast<f32>(sign | bitcast<u32>(f32(man) * 0.001953125));
    }
    // normal: rebias the exponent (7 -> 127) and widen the mantissa (3 -> 23 bits)
    return bitcast<f32>(sign | ((exp + 120u) << 23u) | (man << 20u));
}

// IEEE half through the core builtin: no `enable f16` needed, and the value is widened to
// f32 at once because every backend accumulates in f32.
fn decode_f16(w: u32, half: u32) -> f32 {
    return unpack2x16float(w)[half];
}

// A dtype code these shaders do not decode fails to compile (never read as fp8); the only
// sub-byte elements are the 4-bit codes.
const_assert DTYPE <= 7u;
const_assert ELEM_BITS % 8u == 0u || (ELEM_BITS == 4u && DTYPE >= 4u);

// A 4-bit code's value before its group scale: two's complement for int4 (5, 6), E2M1 for
// mxfp4 and nvfp4 (4, 7): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6, bit 3 the sign.
fn decode_nibble(c: u32) -> f32 {
    if (DTYPE == 5u || DTYPE == 6u) {
        return f32(bitcast<i32>(c << 28u) >> 28u);
    }
    let m = c & 7u;
    let e = m >> 1u;
    var v = f32(m & 1u) * 0.5;
    if (e > 0u) {
        v = (1.0 + v) * f32(1u << (e - 1u));
    }
    return select(v, -v, (c & 8u) != 0u);
}

// The element starting at byte `byte_in_word` (0..3) of word `w`.
fn decode_elem(w: u32, byte_in_word: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(w);
    } else if (DTYPE == 1u) {
        return decode_f16(w, byte_in_word >> 1u);
    } else if (DTYPE == 2u) {
        // bf16 is the top half of an f32
        return bitcast<f32>(select(w << 16u, w & 0xffff0000u, byte_in_word >= 2u));
    }
    return decode_fp8_e4m3((w >> (8u * byte_in_word)) & 0xffu);
}

// Elements per 16-byte load.
const ELEMS_PER_VEC: u32 = 128u / ELEM_BITS;

// Element `i` (0..ELEMS_PER_VEC) of a 16-byte load (a 4-bit code: unscaled).
fn decode_in_vec(v: vec4<u32>, i: u32) -> f32 {
    if (ELEM_BITS == 4u) {
        return decode_nibble((v[i >> 3u] >> ((i & 7u) * 4u)) & 15u);
    }
    let byte = i * ELEM_BYTES;
    return decode_elem(v[byte >> 2u], byte & 3u);
}
