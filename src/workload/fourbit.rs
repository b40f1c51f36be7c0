//! Four-bit weight formats: codes packed two per byte, low nibble first (value i of a
//! little-endian int32 in bits 4i..4i+3: compressed-tensors' `pack-quantized` order, and
//! gpt-oss's `_blocks`), and one scale per group of values along the row, stored apart from
//! the codes (`w_scale`, [rows, d_in / group]). nvfp4 adds one f32 per tensor (`w_scale_2`).
//!
//! A group's decoded value is code x scale, exact in f32 (a code has at most 3 significant
//! bits, a scale at most 8); the per-tensor f32 is applied to a row's dot, as fp8's is.

/// What a 4-bit code means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Two's complement, -8..7.
    Int4,
    /// E2M1: 1 sign, 2 exponent bits (bias 1), 1 mantissa bit: ±0, 0.5, 1, 1.5, 2, 3, 4, 6.
    E2m1,
}

/// The type a group's scale is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleCode {
    /// bf16 (int4 of compressed-tensors).
    Bf16,
    /// E8M0, 2^(s - 127) (OCP MX).
    E8m0,
    /// OCP E4M3FN (NVFP4).
    E4m3,
}

impl ScaleCode {
    pub fn bytes(self) -> usize {
        match self {
            ScaleCode::Bf16 => 2,
            ScaleCode::E8m0 | ScaleCode::E4m3 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScaleCode::Bf16 => "bf16",
            ScaleCode::E8m0 => "e8m0",
            ScaleCode::E4m3 => "fp8_e4m3",
        }
    }

    /// The number the WGSL and CUDA kernels know this scale type by (`SCALE_CODE`; 0 is
    /// none), as `DType::kernel_code` is the codes'.
    pub fn kernel_code(self) -> u64 {
        match self {
            ScaleCode::Bf16 => 1,
            ScaleCode::E8m0 => 2,
            ScaleCode::E4m3 => 3,
        }
    }

    /// The element type of a tensor of these scales.
    pub fn elem(self) -> super::Elem {
        match self {
            ScaleCode::Bf16 => super::Elem::Float(super::DType::Bf16),
            ScaleCode::E8m0 => super::Elem::U8,
            ScaleCode::E4m3 => super::Elem::Float(super::DType::Fp8E4m3),
        }
    }

    /// Scale `i` of a little-endian buffer.
    #[inline(always)]
    pub fn decode(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            ScaleCode::Bf16 => {
                half::bf16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
            }
            ScaleCode::E8m0 => e8m0_decode(bytes[i]),
            ScaleCode::E4m3 => super::fp8::fp8_e4m3_decode(bytes[i]),
        }
    }
}

/// How a 4-bit dtype groups its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    /// Values per scale (along d_in).
    pub elems: usize,
    pub code: Code,
    pub scale: ScaleCode,
    /// One f32 per tensor (per expert) on top of the group scales (nvfp4).
    pub tensor_scale: bool,
}

impl Groups {
    /// A code's value before its scale.
    #[inline(always)]
    pub fn value(self, nibble: u8) -> f32 {
        match self.code {
            Code::Int4 => int4_decode(nibble),
            Code::E2m1 => e2m1_decode(nibble),
        }
    }

    /// Decode values `start..start + out.len()` (both whole groups) of a row-major tensor:
    /// each code times its group's scale.
    pub fn decode(self, codes: &[u8], scales: &[u8], start: usize, out: &mut [f32]) {
        debug_assert!(start.is_multiple_of(self.elems) && out.len().is_multiple_of(self.elems));
        let g0 = start / self.elems;
        let bytes = &codes[start / 2..(start + out.len()) / 2];
        let table: [f32; 16] = std::array::from_fn(|c| self.value(c as u8));
        for (g, (o, b)) in out
            .chunks_exact_mut(self.elems)
            .zip(bytes.chunks_exact(self.elems / 2))
            .enumerate()
        {
            let s = self.scale.decode(scales, g0 + g);
            for (pair, &byte) in o.chunks_exact_mut(2).zip(b) {
                pair[0] = table[(byte & 0xF) as usize] * s;
                pair[1] = table[(byte >> 4) as usize] * s;
            }
        }
    }

    /// Quantize one group: its scale's bytes into `scale`, its codes into `codes`
    /// (`values.len() / 2` bytes). `tensor` is the per-tensor scale (1 where there is none).
    ///
    /// - int4: scale = bf16(amax / 7.5), q = clamp(round(v / scale), -8, 7), as
    ///   compressed-tensors' symmetric quantiser does;
    /// - mxfp4: 2^(floor(log2 amax) - 2) (OCP MX 1.0), codes to the nearest E2M1;
    /// - nvfp4: e4m3(amax / 6 / tensor), codes to the nearest E2M1 of v / (scale x tensor).
    pub fn quantize(self, values: &[f32], tensor: f32, codes: &mut [u8], scale: &mut [u8]) {
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let step = match self.scale {
            ScaleCode::Bf16 => {
                let s = half::bf16::from_f32(amax / 7.5);
                scale.copy_from_slice(&s.to_bits().to_le_bytes());
                s.to_f32()
            }
            ScaleCode::E8m0 => {
                scale[0] = e8m0_for(amax);
                e8m0_decode(scale[0])
            }
            ScaleCode::E4m3 => {
                scale[0] = super::fp8::fp8_e4m3_encode(amax / E2M1_MAX / tensor);
                super::fp8::fp8_e4m3_decode(scale[0]) * tensor
            }
        };
        let inv = if step > 0.0 { 1.0 / step as f64 } else { 0.0 };
        let code = |v: f32| {
            let v = (v as f64 * inv) as f32;
            match self.code {
                Code::Int4 => (round_even(v).clamp(-8.0, 7.0) as i8 as u8) & 0xF,
                Code::E2m1 => e2m1_encode(v),
            }
        };
        for (pair, out) in values.chunks_exact(2).zip(codes.iter_mut()) {
            *out = code(pair[0]) | code(pair[1]) << 4;
        }
    }
}

/// Round to nearest, ties to even, for |v| < 2^22: adding and taking away 1.5 x 2^23 leaves
/// the f32 adder's own rounding (no libm `rintf` call on a baseline x86-64 build).
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if v.abs() < 4_194_304.0 {
        (v + MAGIC) - MAGIC
    } else {
        v
    }
}

/// A two's complement nibble.
#[inline(always)]
pub fn int4_decode(nibble: u8) -> f32 {
    ((nibble << 4) as i8 >> 4) as f32
}

/// E2M1's 16 codes' values.
pub const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];
pub const E2M1_MAX: f32 = 6.0;
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

/// The OCP MX scale of a block whose largest magnitude is `amax`: the largest value lands
/// in [4, 8) before rounding (6 saturates).
pub fn e8m0_for(amax: f32) -> u8 {
    let exp = if amax > 0.0 && amax.is_finite() {
        (amax.log2().floor() as i32 - E2M1_EMAX).clamp(-127, 127)
    } else {
        0
    };
    (exp + 127) as u8
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::DType;

    fn groups(dt: DType) -> Groups {
        dt.groups().unwrap()
    }

    #[test]
    fn int4_packs_low_nibble_first_in_twos_complement() {
        // Worked by hand: amax 7.5 -> scale 7.5 / 7.5 = 1; values 1, -1, 7, -7.5 (ties to
        // even: -8), 0, 3, -3, 2 pack into the int32 0x2D30_87F1 (value i in bits 4i..4i+3),
        // little-endian bytes F1 87 30 2D; a lone 7.5 rounds to 8 and clamps to 7.
        let g = groups(DType::Int4G32);
        let mut v = [0f32; 32];
        v[..8].copy_from_slice(&[1.0, -1.0, 7.0, -7.5, 0.0, 3.0, -3.0, 2.0]);
        v[8] = 7.5;
        let (mut codes, mut scale) = ([0u8; 16], [0u8; 2]);
        g.quantize(&v, 1.0, &mut codes, &mut scale);
        assert_eq!(u16::from_le_bytes(scale), 0x3F80, "scale 1.0 in bf16");
        assert_eq!(
            u32::from_le_bytes([codes[0], codes[1], codes[2], codes[3]]),
            0x2D30_87F1
        );
        assert_eq!(codes[4], 0x07, "7.5 rounds to even 8, clamped to 7");
        let mut out = [0f32; 32];
        g.decode(&codes, &scale, 0, &mut out);
        assert_eq!(&out[..8], &[1.0, -1.0, 7.0, -8.0, 0.0, 3.0, -3.0, 2.0]);
    }

    #[test]
    fn int4_scale_per_group_of_its_own_row() {
        // Two groups of 128 with scales 0.5 and 2 (bf16 0x3F00, 0x4000): code 3 is 1.5 in the
        // first and 6 in the second; a decoder that took the wrong group's scale fails.
        let g = groups(DType::Int4G128);
        let codes = [0x33u8; 128];
        let scales = [0x00, 0x3F, 0x00, 0x40];
        let mut out = [0f32; 256];
        g.decode(&codes, &scales, 0, &mut out);
        assert!(out[..128].iter().all(|&v| v == 1.5));
        assert!(out[128..].iter().all(|&v| v == 6.0));
        let mut second = [0f32; 128];
        g.decode(&codes, &scales, 128, &mut second);
        assert!(second.iter().all(|&v| v == 6.0));
    }

    #[test]
    fn mxfp4_known_bytes() {
        // max |v| = 20 -> floor(log2 20) = 4 -> exponent 2 -> scale 4 (E8M0 129).
        // 20/4 = 5 is the 4|6 midpoint -> even code 6 (4.0); -1/4 = -0.25 is the 0|0.5
        // midpoint -> even code 0 (-0); 3/4 -> code 2 (1.0); 6.5/4 = 1.625 -> 1.5 (code 3).
        let g = groups(DType::Mxfp4);
        let mut v = [0f32; 32];
        v[..4].copy_from_slice(&[20.0, -1.0, 3.0, 6.5]);
        let (mut codes, mut scale) = ([0u8; 16], [0u8; 1]);
        g.quantize(&v, 1.0, &mut codes, &mut scale);
        assert_eq!(scale[0], 129);
        assert_eq!(codes[0], 0x6 | 0x8 << 4);
        assert_eq!(codes[1], 0x2 | 0x3 << 4);
        let mut out = [0f32; 32];
        g.decode(&codes, &scale, 0, &mut out);
        assert_eq!(&out[..4], &[16.0, -0.0, 4.0, 6.0]);
        assert_eq!(e8m0_decode(127), 1.0);
        assert_eq!(e8m0_decode(0), 2f32.powi(-127));
        assert!(e8m0_decode(255).is_nan());
        assert_eq!(e2m1_encode(100.0), 7, "saturates at 6");
    }

    #[test]
    fn nvfp4_known_bytes() {
        // Tensor scale 0.5; amax 12 -> block scale e4m3(12 / 6 / 0.5 = 4) = 0x48; a step of
        // 4 x 0.5 = 2: 12 -> 6 (code 7), -3 -> -1.5 (code 0xB), 1 -> 0.5 (code 1).
        let g = groups(DType::Nvfp4);
        let mut v = [0f32; 16];
        v[..3].copy_from_slice(&[12.0, -3.0, 1.0]);
        let (mut codes, mut scale) = ([0u8; 8], [0u8; 1]);
        g.quantize(&v, 0.5, &mut codes, &mut scale);
        assert_eq!(scale[0], 0x48);
        assert_eq!(codes[0], 0x7 | 0xB << 4);
        assert_eq!(codes[1], 0x1);
        let mut out = [0f32; 16];
        g.decode(&codes, &scale, 0, &mut out);
        // Decoded without the tensor scale (a row's dot takes it).
        assert_eq!(&out[..3], &[24.0, -6.0, 2.0]);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0u8..16 {
            assert_eq!(e2m1_encode(e2m1_decode(c)), c, "e2m1 {c}");
            let v = int4_decode(c);
            assert_eq!((v as i8 as u8) & 0xF, c, "int4 {c}");
        }
        assert_eq!(int4_decode(0x8), -8.0);
        assert_eq!(int4_decode(0xF), -1.0);
    }
}
