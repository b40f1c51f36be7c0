//! Seeded inputs, generated fast: in parallel chunks, straight into their storage dtype (no
//! f32 copy of a 5 GiB weight tensor on the way), each chunk from its own RNG stream so the
//! values never depend on the thread count.

use super::dtype::DType;
use super::tensor::{Elem, Tensor, zeroed};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Bytes per chunk: one RNG stream each.
pub const CHUNK: usize = 1 << 18;

/// A deterministic RNG for one (seed, stream, chunk).
pub(crate) fn rng_for(seed: u64, stream: u64, chunk: u64) -> rand_pcg::Pcg64Mcg {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(chunk.wrapping_mul(0x94D0_49BB_1331_11EB));
    rand_pcg::Pcg64Mcg::seed_from_u64(mixed)
}

/// A tensor of values uniform in [lo, hi), stored in `dtype`: each value is the midpoint of
/// one of 2^16 (f32: 2^23) equal cells, so a symmetric range never yields an exact zero before
/// rounding, nor after it at the ranges the workloads use (fp8 spans its full ±448).
pub fn uniform(
    name: &'static str,
    dtype: DType,
    shape: Vec<usize>,
    (seed, stream): (u64, u64),
    lo: f32,
    hi: f32,
) -> Tensor {
    let n: usize = shape.iter().product();
    let (lo, hi) = (lo as f64, hi as f64);
    let size = dtype.size();
    let mut bytes = zeroed(n * size);
    match dtype {
        DType::F32 => {
            // 2^23 cells: u + 0.5 is exact in f32.
            let (lo, step) = (lo as f32, ((hi - lo) / (1u64 << 23) as f64) as f32);
            let value = |u: u64| lo + ((u & 0x7F_FFFF) as f32 + 0.5) * step;
            fill::<8>(&mut bytes, seed, stream, |r| {
                let (a, b) = (value(r >> 40).to_bits(), value(r >> 8).to_bits());
                (a as u64 | (b as u64) << 32).to_le_bytes()
            });
        }
        _ => {
            // Every 16-bit cell's value, encoded once: an element is then one table lookup.
            let step = (hi - lo) / 65536.0;
            let code = |u: usize| {
                let mut c = [0u8; 2];
                dtype.encode_into((lo + (u as f64 + 0.5) * step) as f32, &mut c[..size]);
                u16::from_le_bytes(c)
            };
            // Fixed-size tables indexed by a u16: no bounds checks in the loop.
            let mut table = Box::new([0u16; 65536]);
            for (u, c) in table.iter_mut().enumerate() {
                *c = code(u);
            }
            let table: &[u16; 65536] = &table;
            let cell = |r: u64, i: u32| (r >> (16 * i)) as u16 as usize;
            if size == 1 {
                // One byte per cell: half the table, more of it in L1.
                let mut bytes8 = Box::new([0u8; 65536]);
                for (b, &c) in bytes8.iter_mut().zip(table.iter()) {
                    *b = c as u8;
                }
                let t: &[u8; 65536] = &bytes8;
                fill::<4>(&mut bytes, seed, stream, |r| {
                    [t[cell(r, 0)], t[cell(r, 1)], t[cell(r, 2)], t[cell(r, 3)]]
                });
            } else {
                let at = |r, i| table[cell(r, i)] as u64;
                fill::<8>(&mut bytes, seed, stream, |r| {
                    (at(r, 0) | at(r, 1) << 16 | at(r, 2) << 32 | at(r, 3) << 48).to_le_bytes()
                });
            }
        }
    }
    Tensor {
        name,
        elem: Elem::Float(dtype),
        shape,
        bytes: bytes.into(),
    }
}

/// A 4-bit tensor: values uniform in [lo, hi) on 2^24 cells, quantized group by group
/// (each group's scale from its own largest value, as a quantiser would), so small values
/// round to zero as they do in a real checkpoint. Returns the codes (`name`, `shape`) and the
/// group scales (`scale_name`, `shape` with the last axis in groups). `tensor[s]` is the
/// per-tensor scale of outer slice s (nvfp4: one per expert), else empty.
pub fn quantized(
    (name, scale_name): (&'static str, &'static str),
    dtype: DType,
    shape: Vec<usize>,
    (seed, stream): (u64, u64),
    (lo, hi): (f32, f32),
    tensor: &[f32],
) -> (Tensor, Tensor) {
    const GROUPS_PER_CHUNK: usize = 1 << 12;
    let g = dtype.groups().expect("a 4-bit dtype");
    let n: usize = shape.iter().product();
    let groups = n / g.elems;
    let per_slice = groups / tensor.len().max(1);
    let (lo, hi) = (lo as f64, hi as f64);
    let step = (hi - lo) / (1u64 << 24) as f64;
    let (cb, sb) = (g.elems / 2, g.scale.bytes());
    let mut codes = zeroed(n / 2);
    let mut scales = zeroed(groups * sb);
    codes
        .par_chunks_mut(GROUPS_PER_CHUNK * cb)
        .zip(scales.par_chunks_mut(GROUPS_PER_CHUNK * sb))
        .enumerate()
        .for_each(|(c, (codes, scales))| {
            let base = rng_for(seed, stream, c as u64).next_u64();
            let mut v = vec![0f32; g.elems];
            for (i, (out, scale)) in codes
                .chunks_exact_mut(cb)
                .zip(scales.chunks_exact_mut(sb))
                .enumerate()
            {
                for (j, x) in v.iter_mut().enumerate() {
                    let at = (i * g.elems + j) as u64;
                    let r = splitmix64(base.wrapping_add(at.wrapping_mul(GOLDEN)));
                    *x = (lo + ((r >> 40) as f64 + 0.5) * step) as f32;
                }
                let group = c * GROUPS_PER_CHUNK + i;
                let t = tensor.get(group / per_slice.max(1)).copied().unwrap_or(1.0);
                g.quantize(&v, t, out, scale);
            }
        });
    let mut scale_shape = shape.clone();
    *scale_shape.last_mut().expect("a shaped tensor") /= g.elems;
    (
        Tensor {
            name,
            elem: Elem::Float(dtype),
            shape,
            bytes: codes.into(),
        },
        Tensor {
            name: scale_name,
            elem: g.scale.elem(),
            shape: scale_shape,
            bytes: scales.into(),
        },
    )
}

/// u32 words from the RNG, never zero (the low bit is set).
pub fn words(name: &'static str, n: usize, seed: u64, stream: u64) -> Tensor {
    let mut bytes = zeroed(n * 4);
    fill::<8>(&mut bytes, seed, stream, |r| {
        ((r >> 32) as u32 as u64 | 1 | ((r as u32 | 1) as u64) << 32).to_le_bytes()
    });
    Tensor {
        name,
        elem: Elem::U32,
        shape: vec![n],
        bytes: bytes.into(),
    }
}

/// Fill `bytes` in parallel chunks of `CHUNK` bytes, each from its own RNG stream: `group`
/// turns one random u64 into G bytes (G divides `CHUNK`; at the very end only a head of the
/// last group is kept).
#[inline(always)]
fn fill<const G: usize>(
    bytes: &mut [u8],
    seed: u64,
    stream: u64,
    group: impl Fn(u64) -> [u8; G] + Sync,
) {
    bytes
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            // SplitMix64 in counter mode: no chain from one draw to the next, so the core
            // overlaps many (a PCG step waits on the last; this is 3x faster per byte).
            let base = rng_for(seed, stream, c as u64).next_u64();
            let draw = |i: usize| splitmix64(base.wrapping_add((i as u64).wrapping_mul(GOLDEN)));
            let (groups, rest) = chunk.as_chunks_mut::<G>();
            for (i, g) in groups.iter_mut().enumerate() {
                *g = group(draw(i));
            }
            let n = rest.len();
            rest.copy_from_slice(&group(draw(groups.len()))[..n]);
        });
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix.
#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_values_are_in_range_and_spread() {
        for dt in DType::FOUR_BIT {
            let g = dt.groups().unwrap();
            let tensor: Vec<f32> = if g.tensor_scale {
                vec![2.0 / 6.0 / 448.0; 3]
            } else {
                vec![]
            };
            let make = || quantized(("t", "s"), dt, vec![3, 2944], (9, 1), (-2.0, 2.0), &tensor);
            let (t, s) = make();
            assert_eq!(t.bytes.len(), 3 * 2944 / 2, "{dt}");
            assert_eq!(s.shape, vec![3, 2944 / g.elems], "{dt}");
            assert_eq!(s.bytes.len(), 3 * 2944 / g.elems * g.scale.bytes(), "{dt}");
            let mut v = vec![0f32; 3 * 2944];
            g.decode(&t.bytes, &s.bytes, 0, &mut v);
            let scale = tensor.first().copied().unwrap_or(1.0) as f64;
            let v: Vec<f64> = v.iter().map(|&x| x as f64 * scale).collect();
            // The E2M1 formats clamp a group's values past 3/4 of its power of two (mxfp4)
            // and round small ones to zero; int4 keeps 15 levels per group.
            // int4's -8 reaches 8 / 7.5 of a group's largest value.
            assert!(v.iter().all(|x| (-2.15..=2.05).contains(x)), "{dt}");
            let zeros = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
            assert!(zeros < 0.15, "{dt}: {zeros}");
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
            // Uniform on [-2, 2] has variance 4/3; mxfp4's clamping takes it to about 1.15.
            assert!(
                mean.abs() < 0.1 && (1.05..1.45).contains(&var),
                "{dt}: {mean} {var}"
            );
            assert_eq!(t.bytes, make().0.bytes, "{dt}: seeded");
        }
    }

    #[test]
    fn values_are_in_range_never_zero_and_spread() {
        for dt in DType::WHOLE_BYTE {
            // fp8 spans its whole range, as the workloads store it (a per-tensor or per-row
            // scale carries the magnitude).
            let a = if dt == DType::Fp8E4m3 { 448.0 } else { 2.0 };
            // An odd count exercises the partial last group of every element size.
            let t = uniform("t", dt, vec![3, 1001], (9, 1), -a, a);
            let v: Vec<f64> = t.decode_f64().iter().map(|x| x / a as f64).collect();
            assert_eq!(v.len(), 3003);
            assert!(
                v.iter().all(|&x| x != 0.0 && (-1.0..=1.0).contains(&x)),
                "{dt}"
            );
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
            // Uniform on [-1, 1]: mean 0, variance 1/3.
            assert!(
                mean.abs() < 0.05 && (var - 1.0 / 3.0).abs() < 0.03,
                "{dt}: {mean} {var}"
            );
        }
    }

    #[test]
    fn seeded_and_independent_of_threads() {
        let a = uniform("a", DType::Bf16, vec![CHUNK + 5], (1, 2), -1.0, 1.0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| uniform("a", DType::Bf16, vec![CHUNK + 5], (1, 2), -1.0, 1.0));
        assert_eq!(a.bytes, b.bytes);
        let c = uniform("a", DType::Bf16, vec![CHUNK + 5], (1, 3), -1.0, 1.0);
        assert_ne!(a.bytes, c.bytes, "another stream, other values");
        let w = words("w", 1001, 4, 5);
        assert!(w.as_u32().iter().all(|&x| x & 1 == 1));
    }
}
