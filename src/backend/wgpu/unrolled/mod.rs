//! Tuned WGSL, written straight-line by Rust for one point's shape: no private arrays, no
//! loop over a per-thread array (NVIDIA's compiler puts a dynamically indexed one in local
//! memory), every 16-byte word of a streamed tensor decoded into `vec4<f32>`s by shifts and
//! `unpack2x16float`, and vec4 accumulators. The simple shaders in shaders/ stay the
//! reference and the fallback for the shapes these do not cover.

pub mod expert;
pub mod kv;
pub mod mla;
pub mod stream;

use crate::workload::DType;

/// WGSL written a line at a time by the generators.
#[derive(Default)]
struct Code(String);

impl Code {
    fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// `f(word, vec4)` for every 16-byte word a lane holds and every vec4 in it, in order.
fn each(words: usize, q4: usize, f: &mut dyn FnMut(usize, usize)) {
    for wd in 0..words {
        for k in 0..q4 {
            f(wd, k)
        }
    }
}

/// kv_decode's bindings in the unrolled shaders (as the simple shader's, but q read as
/// `vec4<f32>`) and the merge pass's empty-max sentinel.
const KV_BINDINGS: &str = "
@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> page_table: array<i32>;
@group(0) @binding(2) var<storage, read> context_lens: array<i32>;
@group(0) @binding(3) var<storage, read_write> partial_acc: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial_ml: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

const NEG_BIG: f32 = -3.0e38;
";

/// WebGPU's smallest subgroup size: it bounds the subgroups per workgroup.
const MIN_SUBGROUP: usize = 4;

/// The `vec4<f32>` values of 16-byte word `wd` (a `vec4<u32>`), as WGSL expressions: 1 for
/// f32, 2 for f16 and bf16, 4 for fp8, 8 for 4-bit codes (unscaled), each the word's
/// elements in memory order.
fn decode(dtype: DType, wd: &str) -> Vec<String> {
    match dtype {
        DType::F32 => vec![format!("bitcast<vec4<f32>>({wd})")],
        DType::F16 => ["xy", "zw"]
            .iter()
            .map(|p| {
                let (a, b) = (&p[..1], &p[1..]);
                format!("vec4<f32>(unpack2x16float({wd}.{a}), unpack2x16float({wd}.{b}))")
            })
            .collect(),
        // bf16 is the top half of an f32: element 0 is a word's low half.
        DType::Bf16 => ["xy", "zw"]
            .iter()
            .map(|p| {
                let (a, b) = (&p[..1], &p[1..]);
                format!("bf16x4({wd}.{a}, {wd}.{b})")
            })
            .collect(),
        DType::Fp8E4m3 => ["x", "y", "z", "w"]
            .iter()
            .map(|c| format!("fp8x4({wd}.{c})"))
            .collect(),
        // 4-bit: each 32-bit word holds 8 codes, two vec4s (nib4 in shaders/fourbit.wgsl).
        _ => ["x", "y", "z", "w"]
            .iter()
            .flat_map(|c| [format!("nib4({wd}.{c})"), format!("nib4({wd}.{c} >> 16u)")])
            .collect(),
    }
}

/// The decoders `decode` calls.
const DECODERS: &str = "
fn bf16x4(a: u32, b: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u),
                     bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
}

// Four OCP E4M3FN bytes. Each byte's sign goes to an f16 sign and its 7 exponent and
// mantissa bits to f16 bits 7..13: that f16 is the fp8 value times 2^-8 exactly, subnormals
// included (both formats' exponents differ by a bias of 8). 0x7f and 0xff are NaN in E4M3
// (the f16 pattern would read 480).
fn fp8x4(v: u32) -> vec4<f32> {
    let lo = ((v & 0x80u) << 8u) | ((v & 0x7fu) << 7u) | ((v & 0x8000u) << 16u) | ((v & 0x7f00u) << 15u);
    let hi = ((v & 0x800000u) >> 8u) | ((v & 0x7f0000u) >> 9u) | (v & 0x80000000u) | ((v & 0x7f000000u) >> 1u);
    let r = vec4<f32>(unpack2x16float(lo), unpack2x16float(hi)) * 256.0;
    let m = vec4<u32>(v, v >> 8u, v >> 16u, v >> 24u) & vec4<u32>(0x7fu);
    return select(r, vec4<f32>(bitcast<f32>(NAN_BITS)), m == vec4<u32>(0x7fu));
}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_decodes_a_word_into_whole_vec4s() {
        for (dt, n) in [
            (DType::F32, 1),
            (DType::F16, 2),
            (DType::Bf16, 2),
            (DType::Fp8E4m3, 4),
        ] {
            assert_eq!(decode(dt, "w").len(), n, "{dt}");
            assert_eq!(n * 4, 16 / (dt.elem_bits() / 8), "{dt}: elements per word");
        }
        for dt in DType::FOUR_BIT {
            let d = decode(dt, "w");
            assert_eq!(d.len() * 4, 128 / dt.elem_bits(), "{dt}: 32 codes a word");
            assert_eq!(d[1], "nib4(w.x >> 16u)", "{dt}: codes 4..8 in memory order");
        }
    }
}
