// Storage dtypes decoded from packed u32 words. Every tensor is bound as array<vec4<u32>>
// (16-byte loads); a kernel picks the word and the byte within it. The prelude the backend
// prepends defines DTYPE (0 f32, 1 f16, 2 bf16, 3 fp8_e4m3, 4 mxfp4), ELEM_BITS and
// ELEM_BYTES.

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

// A dtype code these shaders do not decode fails to compile (never read as fp8), and so does
// a sub-byte dtype (mxfp4: no WGSL kernel yet; the backend refuses it first).
const_assert DTYPE <= 3u;
const_assert ELEM_BITS % 8u == 0u;

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
const ELEMS_PER_VEC: u32 = 16u / ELEM_BYTES;

// Element `i` (0..ELEMS_PER_VEC) of a 16-byte load.
fn decode_in_vec(v: vec4<u32>, i: u32) -> f32 {
    let byte = i * ELEM_BYTES;
    return decode_elem(v[byte >> 2u], byte & 3u);
}
