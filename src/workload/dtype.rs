//! Storage dtypes and their codecs.
//!
//! Every backend accumulates in f32; these codecs define what a stored value *is*, so the
//! oracle can be computed on exactly the values a kernel reads (quantisation is not error).

use serde::{Deserialize, Serialize};

/// The dtype a KV cache or weight tensor is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// OCP E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448; no infinities;
    /// 0x7F/0xFF are NaN. Always paired with an f32 scale that dequantises it.
    Fp8E4m3,
}

impl DType {
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::Bf16, DType::Fp8E4m3];

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Fp8E4m3 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Fp8E4m3 => "fp8_e4m3",
        }
    }

    /// The number the WGSL and CUDA kernels know this dtype by (`DTYPE` in their preludes).
    pub fn kernel_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Bf16 => 2,
            DType::Fp8E4m3 => 3,
        }
    }

    /// Whether values need a separate f32 scale to be meaningful.
    pub fn is_scaled(self) -> bool {
        self == DType::Fp8E4m3
    }

    /// Encode one f32 into `out` (exactly `self.size()` bytes, little-endian).
    pub fn encode_into(self, value: f32, out: &mut [u8]) {
        match self {
            DType::F32 => out.copy_from_slice(&value.to_le_bytes()),
            DType::F16 => out.copy_from_slice(&half::f16::from_f32(value).to_bits().to_le_bytes()),
            DType::Bf16 => {
                out.copy_from_slice(&half::bf16::from_f32(value).to_bits().to_le_bytes())
            }
            DType::Fp8E4m3 => out[0] = fp8_e4m3_encode(value),
        }
    }

    /// Decode the element at `index` of a little-endian byte buffer in this dtype.
    #[inline(always)]
    pub fn decode_at(self, bytes: &[u8], index: usize) -> f32 {
        match self {
            DType::F32 => {
                let o = index * 4;
                f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]])
            }
            DType::F16 => {
                let o = index * 2;
                half::f16::from_bits(u16::from_le_bytes([bytes[o], bytes[o + 1]])).to_f32()
            }
            DType::Bf16 => {
                let o = index * 2;
                half::bf16::from_bits(u16::from_le_bytes([bytes[o], bytes[o + 1]])).to_f32()
            }
            DType::Fp8E4m3 => fp8_e4m3_decode(bytes[index]),
        }
    }

    /// Decode `out.len()` consecutive elements starting at element `start`.
    #[inline]
    pub fn decode_slice(self, bytes: &[u8], start: usize, out: &mut [f32]) {
        match self {
            DType::F32 => {
                let src = &bytes[start * 4..(start + out.len()) * 4];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            DType::Fp8E4m3 => {
                let n = out.len();
                for (o, &b) in out.iter_mut().zip(&bytes[start..start + n]) {
                    *o = FP8_TABLE.0[b as usize];
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.decode_at(bytes, start + i);
                }
            }
        }
    }

    /// The largest finite value the dtype can hold.
    pub fn max_finite(self) -> f32 {
        match self {
            DType::F32 => f32::MAX,
            DType::F16 => half::f16::MAX.to_f32(),
            DType::Bf16 => half::bf16::MAX.to_f32(),
            DType::Fp8E4m3 => FP8_E4M3_MAX,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(DType::F32),
            "f16" | "fp16" => Ok(DType::F16),
            "bf16" => Ok(DType::Bf16),
            "fp8_e4m3" | "fp8" | "e4m3" => Ok(DType::Fp8E4m3),
            _ => Err(format!(
                "unknown dtype '{s}' (expected f32, f16, bf16 or fp8_e4m3)"
            )),
        }
    }
}

pub const FP8_E4M3_MAX: f32 = 448.0;

/// A 256-entry decode table: fp8 decoding is a lookup on the CPU backend.
struct Fp8Table([f32; 256]);
static FP8_TABLE: Fp8Table = {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_known_bit_patterns() {
        // Values worked by hand from the OCP E4M3 layout (bias 7).
        let cases: [(f32, u8); 12] = [
            (0.0, 0x00),
            (-0.0, 0x80),
            (1.0, 0x38),  // 0 0111 000
            (-2.0, 0xC0), // 1 1000 000
            (448.0, 0x7E),
            (-448.0, 0xFE),
            (1.0 / 512.0, 0x01), // smallest subnormal 2^-9
            (7.0 / 512.0, 0x07), // largest subnormal
            (1.0 / 64.0, 0x08),  // smallest normal 2^-6
            (1.75, 0x3E),        // 0 0111 110
            (0.3125, 0x2A),      // 1.25 * 2^-2: 0 0101 010
            (240.0, 0x77),       // 1.875 * 2^7: 0 1110 111
        ];
        for (v, code) in cases {
            assert_eq!(fp8_e4m3_encode(v), code, "encode {v}");
            assert_eq!(
                fp8_e4m3_decode(code).to_bits(),
                v.to_bits(),
                "decode {code:#04x}"
            );
        }
        assert!(fp8_e4m3_decode(0x7F).is_nan());
        assert!(fp8_e4m3_decode(0xFF).is_nan());
        // 0x78..0x7E are finite in E4M3FN (no infinities): 256, 288, ..., 448.
        assert_eq!(fp8_e4m3_decode(0x78), 256.0);
    }

    #[test]
    fn fp8_rounds_to_nearest_even_and_saturates() {
        assert_eq!(fp8_e4m3_encode(1.0625), 0x38); // halfway 1.0|1.125 -> even (1.0)
        assert_eq!(fp8_e4m3_encode(1.1875), 0x3A); // halfway 1.125|1.25 -> even (1.25)
        assert_eq!(fp8_e4m3_encode(1.07), 0x39); // above halfway -> 1.125
        assert_eq!(fp8_e4m3_encode(1.5 / 512.0), 0x02); // subnormal tie 1.5 -> 2
        assert_eq!(fp8_e4m3_encode(0.5 / 512.0), 0x00); // subnormal tie 0.5 -> 0
        assert_eq!(fp8_e4m3_encode(15.5 / 1024.0), 0x08); // rounds up into the normals
        assert_eq!(fp8_e4m3_encode(464.0), 0x7E); // would round to 480: saturates
        assert_eq!(fp8_e4m3_encode(1e9), 0x7E);
        assert_eq!(fp8_e4m3_encode(f32::NEG_INFINITY), 0xFE);
        assert_eq!(fp8_e4m3_encode(f32::NAN), 0x7F);
    }

    #[test]
    fn fp8_round_trips_every_finite_code() {
        for code in 0u8..=255 {
            let v = fp8_e4m3_decode(code);
            if v.is_nan() {
                assert!(code == 0x7F || code == 0xFF);
                continue;
            }
            assert_eq!(fp8_e4m3_encode(v), code, "code {code:#04x} -> {v}");
        }
    }

    #[test]
    fn half_and_bf16_bit_patterns() {
        let mut b = [0u8; 2];
        DType::F16.encode_into(1.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3C00);
        DType::F16.encode_into(-2.5, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0xC100);
        DType::F16.encode_into(65504.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x7BFF);
        DType::Bf16.encode_into(1.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3F80);
        DType::Bf16.encode_into(-3.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0xC040);
        // bf16 ties to even: 1 + 2^-8 lies halfway between 1.0 and 1 + 2^-7.
        DType::Bf16.encode_into(1.0 + 1.0 / 256.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3F80);
        DType::Bf16.encode_into(1.0 + 3.0 / 256.0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 0x3F82);
        assert_eq!(DType::Bf16.decode_at(&0x4049u16.to_le_bytes(), 0), 3.140625);
    }

    #[test]
    fn every_dtype_round_trips_its_own_values() {
        let values = [0.0f32, 1.0, -0.75, 3.5, -104.0, 0.015625];
        for dt in DType::ALL {
            let mut buf = vec![0u8; dt.size() * values.len()];
            for (i, &v) in values.iter().enumerate() {
                dt.encode_into(v, &mut buf[i * dt.size()..(i + 1) * dt.size()]);
            }
            let mut out = vec![0f32; values.len()];
            dt.decode_slice(&buf, 0, &mut out);
            assert_eq!(out, values, "{dt}");
        }
    }
}
