//! Storage dtypes and their codecs.
//!
//! Every backend accumulates in f32; these codecs define what a stored value *is*, so the
//! oracle can be computed on exactly the values a kernel reads (quantisation is not error).
//!
//! A dtype is either whole bytes per element (f32 .. fp8) or 4-bit codes with a scale per
//! group stored apart (fourbit.rs). Sizes are asked of the dtype for a count of elements
//! (`bytes_for`, the codes only; `bits_per_value`, scales included), never multiplied from a
//! per-element byte size.

use super::fourbit::{Code, E2M1_MAX, Groups, ScaleCode, e8m0_decode};
use super::fp8::FP8_TABLE;
pub use super::fp8::{FP8_E4M3_MAX, fp8_e4m3_decode, fp8_e4m3_encode};
use serde::{Deserialize, Serialize};

/// The dtype a KV cache or weight tensor is stored in (and, in the decode model, the dtype a
/// preset's weights and cache are counted in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// OCP E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448; no infinities;
    /// 0x7F/0xFF are NaN. Always paired with an f32 scale that dequantises it.
    Fp8E4m3,
    /// compressed-tensors int4 `pack-quantized`, group 32: two's complement -8..7, a bf16
    /// scale per 32 values along the row (4.5 bits per value), as Kimi-K2-Thinking and
    /// Kimi-K2.5 ship their routed experts.
    Int4G32,
    /// The same with a bf16 scale per 128 values (4.125 bits per value).
    Int4G128,
    /// OCP MXFP4: E2M1 codes, an E8M0 scale (2^(s-127)) per 32 (4.25 bits per value), as
    /// gpt-oss ships its experts.
    Mxfp4,
    /// NVFP4: E2M1 codes, an E4M3 scale per 16 and an f32 per tensor (4.5 bits per value),
    /// Blackwell's 4-bit format.
    Nvfp4,
}

impl DType {
    /// Every dtype.
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::Fp8E4m3,
        DType::Int4G32,
        DType::Int4G128,
        DType::Mxfp4,
        DType::Nvfp4,
    ];
    /// The dtypes of whole bytes per element: what the KV cache takes.
    pub const WHOLE_BYTE: [DType; 4] = [DType::F32, DType::F16, DType::Bf16, DType::Fp8E4m3];
    /// This dtype's index in `WHOLE_BYTE` (the const parameter the cpu kernels take).
    pub fn whole_byte_index(self) -> Option<usize> {
        Self::WHOLE_BYTE.iter().position(|&d| d == self)
    }
    /// The 4-bit weight formats.
    pub const FOUR_BIT: [DType; 4] = [DType::Int4G32, DType::Int4G128, DType::Mxfp4, DType::Nvfp4];

    /// Bits of one element's code, without any group scale.
    pub fn elem_bits(self) -> usize {
        match self {
            DType::F32 => 32,
            DType::F16 | DType::Bf16 => 16,
            DType::Fp8E4m3 => 8,
            DType::Int4G32 | DType::Int4G128 | DType::Mxfp4 | DType::Nvfp4 => 4,
        }
    }

    /// How a 4-bit dtype groups its values under scales; None for whole-byte dtypes.
    pub fn groups(self) -> Option<Groups> {
        let (elems, code, scale, tensor_scale) = match self {
            DType::F32 | DType::F16 | DType::Bf16 | DType::Fp8E4m3 => return None,
            DType::Int4G32 => (32, Code::Int4, ScaleCode::Bf16, false),
            DType::Int4G128 => (128, Code::Int4, ScaleCode::Bf16, false),
            DType::Mxfp4 => (32, Code::E2m1, ScaleCode::E8m0, false),
            DType::Nvfp4 => (16, Code::E2m1, ScaleCode::E4m3, true),
        };
        Some(Groups {
            elems,
            code,
            scale,
            tensor_scale,
        })
    }

    /// Stored bits per value, group scales included (int4_g32: 4.5; the one f32 per tensor
    /// of nvfp4 is left out: 32 bits over millions of values).
    pub fn bits_per_value(self) -> f64 {
        match self.groups() {
            None => self.elem_bits() as f64,
            Some(g) => self.elem_bits() as f64 + (8 * g.scale.bytes()) as f64 / g.elems as f64,
        }
    }

    /// Bytes that the codes of `n` values occupy (4-bit: two per byte; the group scales are
    /// a tensor of their own).
    pub fn bytes_for(self, n: usize) -> usize {
        (n * self.elem_bits()).div_ceil(8)
    }

    /// Bytes per element of a whole-byte dtype, as the kernels index them. 4-bit dtypes
    /// have none: ask `bytes_for`.
    pub fn size(self) -> usize {
        assert!(
            self.groups().is_none(),
            "{self} has no per-element byte size: ask bytes_for"
        );
        self.elem_bits() / 8
    }

    /// The row length a tensor of this dtype needs to be a multiple of, if any (its group).
    pub fn row_multiple(self) -> Option<usize> {
        self.groups().map(|g| g.elems)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Fp8E4m3 => "fp8_e4m3",
            DType::Int4G32 => "int4_g32",
            DType::Int4G128 => "int4_g128",
            DType::Mxfp4 => "mxfp4",
            DType::Nvfp4 => "nvfp4",
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
            DType::Int4G32 => 5,
            DType::Int4G128 => 6,
            DType::Nvfp4 => 7,
        }
    }

    /// Whether values need a separate f32 scale per row or block to be meaningful (fp8; the
    /// 4-bit dtypes have group scales of their own: `groups`).
    pub fn is_scaled(self) -> bool {
        self == DType::Fp8E4m3
    }

    /// Encode one f32 into `out` (exactly `self.size()` bytes, little-endian). Whole-byte
    /// dtypes only: 4-bit dtypes quantize whole groups (`Groups::quantize`).
    pub fn encode_into(self, value: f32, out: &mut [u8]) {
        match self {
            DType::F32 => out.copy_from_slice(&value.to_le_bytes()),
            DType::F16 => out.copy_from_slice(&half::f16::from_f32(value).to_bits().to_le_bytes()),
            DType::Bf16 => {
                out.copy_from_slice(&half::bf16::from_f32(value).to_bits().to_le_bytes())
            }
            DType::Fp8E4m3 => out[0] = fp8_e4m3_encode(value),
            _ => unreachable!("{self} quantizes whole groups: Groups::quantize"),
        }
    }

    /// Encode values into their stored bytes (`bytes_for(values.len())` of them), one by one.
    /// Whole-byte dtypes only.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let s = self.size();
        let mut out = vec![0u8; s * values.len()];
        for (v, o) in values.iter().zip(out.chunks_exact_mut(s)) {
            self.encode_into(*v, o);
        }
        out
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
            _ => unreachable!("{self} decodes with its group scales: Groups::decode"),
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
            DType::Int4G32 | DType::Int4G128 => 7.0 * half::bf16::MAX.to_f32(),
            DType::Mxfp4 => E2M1_MAX * e8m0_decode(254),
            DType::Nvfp4 => E2M1_MAX * FP8_E4M3_MAX,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Read through `FromStr`, so a file's unknown name gets its did-you-mean.
impl TryFrom<String> for DType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f16" | "fp16" => return Ok(DType::F16),
            "fp8_e4m3" | "fp8" | "e4m3" => return Ok(DType::Fp8E4m3),
            "mxfp4" | "fp4" => return Ok(DType::Mxfp4),
            _ => {}
        }
        if let Some(d) = DType::ALL.into_iter().find(|d| d.name() == s) {
            return Ok(d);
        }
        if let Some(group) = s.strip_prefix("int4_g") {
            return Err(format!(
                "int4 with groups of {group} is not supported: int4_g32 or int4_g128 \
                 (compressed-tensors' group sizes in use)"
            ));
        }
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        let hint = crate::error::nearest(s, &names)
            .map(|n| format!("; did you mean '{n}'?"))
            .unwrap_or_default();
        Err(format!(
            "unknown dtype '{s}' (expected one of {}){hint}",
            names.join(", ")
        ))
    }
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
    fn sizes_and_bits_count_codes_and_scales() {
        assert_eq!(DType::Int4G32.bits_per_value(), 4.5);
        assert_eq!(DType::Int4G128.bits_per_value(), 4.125);
        assert_eq!(DType::Mxfp4.bits_per_value(), 4.25);
        assert_eq!(DType::Nvfp4.bits_per_value(), 4.5);
        assert_eq!(DType::Mxfp4.bytes_for(2880), 1440, "codes only");
        assert_eq!(DType::Fp8E4m3.bytes_for(7), 7);
        assert_eq!(DType::Bf16.bits_per_value(), 16.0);
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>(), Ok(d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
            assert_eq!(serde_json::from_value::<DType>(d.name().into()).unwrap(), d);
        }
        let e = "int4_g64".parse::<DType>().unwrap_err();
        assert!(e.contains("groups of 64 is not supported"), "{e}");
        let e = "int4".parse::<DType>().unwrap_err();
        assert!(e.contains("did you mean 'int4_g32'"), "{e}");
        let e = "nvfp8".parse::<DType>().unwrap_err();
        assert!(e.contains("did you mean 'nvfp4'"), "{e}");
    }
}
