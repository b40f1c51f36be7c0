//! Storage dtypes and their codecs.
//!
//! Every backend accumulates in f32; these codecs define what a stored value *is*, so the
//! oracle can be computed on exactly the values a kernel reads (quantisation is not error).
//!
//! A dtype is either whole bytes per element (f32 .. fp8) or packed sub-byte codes sharing a
//! scale per block (mxfp4). Sizes are therefore asked of the dtype for a count of elements
//! (`bytes_for`), never multiplied from a per-element byte size.

use serde::{Deserialize, Serialize};

/// The dtype a KV cache or weight tensor is stored in (and, in the decode model, the dtype a
/// preset's weights and cache are counted in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    #[serde(alias = "fp16")]
    F16,
    Bf16,
    /// OCP E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448; no infinities;
    /// 0x7F/0xFF are NaN. Always paired with an f32 scale that dequantises it.
    #[serde(alias = "fp8", alias = "e4m3")]
    Fp8E4m3,
    /// OCP MXFP4: E2M1 codes (±0, 0.5, 1, 1.5, 2, 3, 4, 6), two per byte (low nibble first),
    /// sharing one E8M0 scale (2^(s-127)) per block of 32 along the row: 4.25 bits per value,
    /// as gpt-oss ships its experts. Stored block by block: the scale byte, then 16 bytes of
    /// codes (17 bytes per 32 values). Rows are whole blocks (the row length a multiple of 32).
    #[serde(alias = "fp4")]
    Mxfp4,
}

/// Sub-byte codes that share a power-of-two scale per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockScale {
    /// Values per block (32 for MX formats).
    pub elems: usize,
    /// Bits of the shared scale (E8M0: 8).
    pub scale_bits: usize,
}

impl BlockScale {
    /// Bytes of one stored block: its scale, then its packed codes.
    pub fn block_bytes(self, elem_bits: usize) -> usize {
        (self.scale_bits + self.elems * elem_bits) / 8
    }
}

const MX_BLOCK: BlockScale = BlockScale {
    elems: 32,
    scale_bits: 8,
};

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 5] = [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::Fp8E4m3,
        DType::Mxfp4,
    ];
    /// The dtypes of whole bytes per element: what the KV cache and the GPU kernels take.
    pub const WHOLE_BYTE: [DType; 4] = [DType::F32, DType::F16, DType::Bf16, DType::Fp8E4m3];

    /// Bits of one element's code, without any block scale.
    pub fn elem_bits(self) -> usize {
        match self {
            DType::F32 => 32,
            DType::F16 | DType::Bf16 => 16,
            DType::Fp8E4m3 => 8,
            DType::Mxfp4 => 4,
        }
    }

    /// The shared scale per block, for block-scaled dtypes.
    pub fn block_scale(self) -> Option<BlockScale> {
        match self {
            DType::Mxfp4 => Some(MX_BLOCK),
            DType::F32 | DType::F16 | DType::Bf16 | DType::Fp8E4m3 => None,
        }
    }

    /// Stored bits per value, block scales included (mxfp4: 4.25).
    pub fn bits_per_value(self) -> f64 {
        match self.block_scale() {
            None => self.elem_bits() as f64,
            Some(b) => self.elem_bits() as f64 + b.scale_bits as f64 / b.elems as f64,
        }
    }

    /// Bytes that `n` values occupy (block dtypes: whole blocks, the last one padded).
    pub fn bytes_for(self, n: usize) -> usize {
        match self.block_scale() {
            None => n * self.elem_bits() / 8,
            Some(b) => n.div_ceil(b.elems) * b.block_bytes(self.elem_bits()),
        }
    }

    /// Bytes per element of a whole-byte dtype, as the GPU kernels index them. Block dtypes
    /// have none: backends refuse them (`Backend::covers`) before anything asks.
    pub fn size(self) -> usize {
        assert!(
            self.block_scale().is_none(),
            "{self} has no per-element byte size: ask bytes_for"
        );
        self.elem_bits() / 8
    }

    /// The row length a tensor of this dtype needs to be a multiple of, if any.
    pub fn row_multiple(self) -> Option<usize> {
        self.block_scale().map(|b| b.elems)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Fp8E4m3 => "fp8_e4m3",
            DType::Mxfp4 => "mxfp4",
        }
    }

    /// The number the WGSL and CUDA kernels know this dtype by (`DTYPE` in their preludes;
    /// a code a prelude does not decode fails to compile there).
    pub fn kernel_code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Bf16 => 2,
            DType::Fp8E4m3 => 3,
            DType::Mxfp4 => 4,
        }
    }

    /// Whether values need a separate f32 scale per row to be meaningful (fp8; mxfp4 carries
    /// its own block scales).
    pub fn is_scaled(self) -> bool {
        self == DType::Fp8E4m3
    }

    /// Encode one f32 into `out` (exactly `self.size()` bytes, little-endian). Whole-byte
    /// dtypes only: block dtypes encode whole blocks (`encode`).
    pub fn encode_into(self, value: f32, out: &mut [u8]) {
        match self {
            DType::F32 => out.copy_from_slice(&value.to_le_bytes()),
            DType::F16 => out.copy_from_slice(&half::f16::from_f32(value).to_bits().to_le_bytes()),
            DType::Bf16 => {
                out.copy_from_slice(&half::bf16::from_f32(value).to_bits().to_le_bytes())
            }
            DType::Fp8E4m3 => out[0] = fp8_e4m3_encode(value),
            DType::Mxfp4 => unreachable!("mxfp4 encodes whole blocks: DType::encode"),
        }
    }

    /// Encode values into their stored bytes (`bytes_for(values.len())` of them): one by one,
    /// or block by block with each block's scale chosen from its largest magnitude.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self.block_scale() {
            None => {
                let s = self.size();
                let mut out = vec![0u8; s * values.len()];
                for (v, o) in values.iter().zip(out.chunks_exact_mut(s)) {
                    self.encode_into(*v, o);
                }
                out
            }
            Some(b) => values
                .chunks(b.elems)
                .flat_map(|block| {
                    let mut full = [0f32; 32];
                    full[..block.len()].copy_from_slice(block);
                    mxfp4_encode_block(&full)
                })
                .collect(),
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
            DType::Mxfp4 => {
                let block = &bytes[index / 32 * 17..][..17];
                let byte = block[1 + index % 32 / 2];
                let code = if index.is_multiple_of(2) {
                    byte & 0xF
                } else {
                    byte >> 4
                };
                e2m1_decode(code) * e8m0_decode(block[0])
            }
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
            // The cpu kernels' inner loops: a plain loop per dtype, no match per element.
            DType::F16 => {
                let src = &bytes[start * 2..(start + out.len()) * 2];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            DType::Bf16 => {
                let src = &bytes[start * 2..(start + out.len()) * 2];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            DType::Fp8E4m3 => {
                let n = out.len();
                for (o, &b) in out.iter_mut().zip(&bytes[start..start + n]) {
                    *o = FP8_TABLE.0[b as usize];
                }
            }
            // Whole blocks: a scale, then 16 bytes of two codes each.
            DType::Mxfp4 if start.is_multiple_of(32) && out.len().is_multiple_of(32) => {
                let blocks = &bytes[start / 32 * 17..(start + out.len()) / 32 * 17];
                for (o, block) in out.chunks_exact_mut(32).zip(blocks.chunks_exact(17)) {
                    let scale = e8m0_decode(block[0]);
                    for (pair, &byte) in o.chunks_exact_mut(2).zip(&block[1..]) {
                        pair[0] = E2M1[(byte & 0xF) as usize] * scale;
                        pair[1] = E2M1[(byte >> 4) as usize] * scale;
                    }
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
            DType::Mxfp4 => E2M1_MAX * e8m0_decode(254),
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
            "mxfp4" | "fp4" => Ok(DType::Mxfp4),
            _ => Err(format!(
                "unknown dtype '{s}' (expected f32, f16, bf16, fp8_e4m3 or mxfp4)"
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

/// E2M1 (1 sign, 2 exponent bits with bias 1, 1 mantissa bit): the 16 codes' values.
const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];
const E2M1_MAX: f32 = 6.0;
/// log2 of the largest power of two below E2M1's maximum: the OCP MX scale rule subtracts it.
const E2M1_EMAX: i32 = 2;

#[inline(always)]
pub fn e2m1_decode(code: u8) -> f32 {
    E2M1[(code & 0xF) as usize]
}

/// E8M0: 2^(s - 127); 0xFF is NaN.
#[inline(always)]
pub fn e8m0_decode(s: u8) -> f32 {
    if s == 0xFF {
        f32::NAN
    } else {
        // 2^(s-127) for s in 0..=254 spans 2^-127 (subnormal in f32) to 2^127.
        f32::from_bits(if s == 0 { 1 << 22 } else { (s as u32) << 23 })
    }
}

/// The nearest E2M1 code to `v` (ties to the even code), saturating at ±6.
pub fn e2m1_encode(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 8 } else { 0 };
    let a = v.abs();
    if a.is_nan() {
        return sign | 7;
    }
    // Midpoints between neighbouring magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6; a tie goes to
    // the even code (codes 0, 2, 4, 6 are 0, 1, 2, 4).
    const MID: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    let mut code = 0u8;
    for (i, &m) in MID.iter().enumerate() {
        if a > m || (a == m && i % 2 == 1) {
            code = i as u8 + 1;
        }
    }
    sign | code
}

/// One MXFP4 block: the shared exponent is floor(log2(max |v|)) - 2 (OCP MX 1.0), so the
/// largest value lands in [4, 8) before rounding (6 saturates); codes round to nearest.
pub fn mxfp4_encode_block(values: &[f32; 32]) -> [u8; 17] {
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let exp = if amax > 0.0 && amax.is_finite() {
        (amax.log2().floor() as i32 - E2M1_EMAX).clamp(-127, 127)
    } else {
        0
    };
    let scale_code = (exp + 127) as u8;
    let inv = 1.0 / e8m0_decode(scale_code) as f64;
    let mut out = [0u8; 17];
    out[0] = scale_code;
    for (i, pair) in values.chunks_exact(2).enumerate() {
        let lo = e2m1_encode((pair[0] as f64 * inv) as f32);
        let hi = e2m1_encode((pair[1] as f64 * inv) as f32);
        out[1 + i] = lo | hi << 4;
    }
    out
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
        for dt in DType::WHOLE_BYTE {
            let buf = dt.encode(&values);
            assert_eq!(buf.len(), dt.bytes_for(values.len()));
            let mut out = vec![0f32; values.len()];
            dt.decode_slice(&buf, 0, &mut out);
            assert_eq!(out, values, "{dt}");
        }
        // mxfp4: values on one block's grid (scale 2^0: 0.5 .. 6) come back exactly.
        let mut block = [0f32; 32];
        for (i, v) in block.iter_mut().enumerate() {
            *v = E2M1[i % 16];
        }
        let buf = DType::Mxfp4.encode(&block);
        assert_eq!(buf.len(), 17);
        assert_eq!(buf[0], 127, "max 6 -> floor(log2 6) - 2 = 0 -> 2^0");
        let mut out = vec![0f32; 32];
        DType::Mxfp4.decode_slice(&buf, 0, &mut out);
        assert_eq!(out, block);
        for (i, &v) in block.iter().enumerate() {
            assert_eq!(DType::Mxfp4.decode_at(&buf, i).to_bits(), v.to_bits());
        }
    }

    #[test]
    fn decode_slice_agrees_with_decode_at_on_every_code() {
        // Every 16-bit pattern (so every f16/bf16/fp8 code, NaNs and subnormals included),
        // read from an odd start so no path may assume alignment.
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|c| c.to_le_bytes()).collect();
        for dt in DType::WHOLE_BYTE {
            let n = (bytes.len() - 8) / dt.bytes_for(1);
            let mut out = vec![0f32; n - 3];
            dt.decode_slice(&bytes, 3, &mut out);
            for (i, o) in out.iter().enumerate() {
                let want = dt.decode_at(&bytes, 3 + i);
                assert_eq!(o.to_bits(), want.to_bits(), "{dt} at {}", 3 + i);
            }
        }
    }

    #[test]
    fn mxfp4_known_bytes_and_sizes() {
        // Worked by hand: max |v| = 20 -> floor(log2 20) = 4 -> exponent 2 -> scale 4 (127+2).
        // 20/4 = 5 is the 4|6 midpoint -> even code 6 (4.0); -1/4 = -0.25 is the 0|0.5
        // midpoint -> even code 0 (-0); 3/4 = 0.75 is the 0.5|1 midpoint -> even code 2 (1.0).
        let mut v = [0f32; 32];
        v[0] = 20.0;
        v[1] = -1.0;
        v[2] = 3.0;
        v[3] = 6.5;
        let b = mxfp4_encode_block(&v);
        assert_eq!(b[0], 129);
        assert_eq!(b[1], 0x6 | 0x8 << 4, "20 -> 4x4, -1 -> -0");
        assert_eq!(b[2], 0x2 | 0x3 << 4, "3 -> 1x4, 6.5/4 = 1.625 -> 1.5");
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(0), 2f32.powi(-127));
        assert!(e8m0_decode(255).is_nan());
        assert_eq!(e2m1_encode(100.0), 7, "saturates at 6");
        assert_eq!(DType::Mxfp4.bits_per_value(), 4.25);
        assert_eq!(DType::Mxfp4.bytes_for(2880), 90 * 17);
        assert_eq!(DType::Fp8E4m3.bytes_for(7), 7);
        assert_eq!(DType::Bf16.bits_per_value(), 16.0);
    }

    #[test]
    fn e2m1_round_trips_every_code() {
        for code in 0u8..16 {
            assert_eq!(e2m1_encode(e2m1_decode(code)), code, "code {code}");
        }
    }
}
