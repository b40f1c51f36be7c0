//! OCP E4M3FN, the fp8 of the KV caches and weights (and nvfp4's group scales).

pub const FP8_E4M3_MAX: f32 = 448.0;

/// A 256-entry decode table: fp8 decoding is a lookup on the CPU backend.
pub(super) struct Fp8Table(pub(super) [f32; 256]);
pub(super) static FP8_TABLE: Fp8Table = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_e4m3_decode_const(i as u8);
        i += 1;
    }
    Fp8Table(t)
};

const fn fp8_e4m3_decode_const(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((byte >> 3) & 0x0F) as i32;
    let man = (byte & 0x07) as f32;
    if exp == 0x0F && (byte & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // subnormal: m/8 * 2^-6
        return sign * man * (1.0 / 512.0);
    }
    let mut scale = 1.0f32;
    let mut e = exp - 7;
    while e > 0 {
        scale *= 2.0;
        e -= 1;
    }
    while e < 0 {
        scale *= 0.5;
        e += 1;
    }
    sign * (1.0 + man / 8.0) * scale
}

/// Decode one OCP E4M3FN byte.
#[inline(always)]
pub fn fp8_e4m3_decode(byte: u8) -> f32 {
    FP8_TABLE.0[byte as usize]
}

/// Encode an f32 as OCP E4M3FN, rounding to nearest even. Finite values beyond ±448 saturate
/// to ±448 (the "satfinite" convention of CUDA's __nv_cvt_float_to_fp8); NaN maps to 0x7F.
pub fn fp8_e4m3_encode(value: f32) -> u8 {
    if value.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if value.is_sign_negative() { 0x80 } else { 0 };
    let a = value.abs();
    if a > FP8_E4M3_MAX {
        return sign | 0x7E;
    }
    if a < 1.0 / 64.0 {
        // Subnormal range: units of 2^-9; a*512 is exact (power-of-two scaling).
        // A result of 8 is the smallest normal (code 0x08), which the bit layout gives for free.
        let q = (a * 512.0).round_ties_even() as u8;
        return sign | q;
    }
    let bits = a.to_bits();
    let mut exp = ((bits >> 23) as i32) - 127;
    let man = bits & 0x7F_FFFF;
    let mut q = man >> 20;
    let rem = man & 0xF_FFFF;
    const HALF: u32 = 0x8_0000;
    if rem > HALF || (rem == HALF && (q & 1) == 1) {
        q += 1;
    }
    if q == 8 {
        q = 0;
        exp += 1;
    }
    let code = (((exp + 7) as u32) << 3) | q;
    sign | (code.min(0x7E) as u8)
}
