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
    if dtype == DType::Mxfp4 {
        return Tensor {
            name,
            elem: Elem::Float(dtype),
            shape,
            bytes: mxfp4_blocks(n, seed, stream, lo, hi).into(),
        };
    }
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

/// MXFP4: values uniform in [lo, hi) on 2^24 cells, encoded block by block (each block's
/// scale from its own largest value, as a quantiser would). Small values round to zero, as
/// they do in a real checkpoint.
fn mxfp4_blocks(n: usize, seed: u64, stream: u64, lo: f64, hi: f64) -> Vec<u8> {
    const BLOCK: usize = 32;
    const BLOCKS_PER_CHUNK: usize = 1 << 12;
    let block_bytes = DType::Mxfp4.bytes_for(BLOCK);
    let mut bytes = zeroed(DType::Mxfp4.bytes_for(n));
    let step = (hi - lo) / (1u64 << 24) as f64;
    bytes
        .par_chunks_mut(BLOCKS_PER_CHUNK * block_bytes)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = rng_for(seed, stream, c as u64).next_u64();
            for (i, out) in chunk.chunks_exact_mut(block_bytes).enumerate() {
                let mut v = [0f32; BLOCK];
                for (j, x) in v.iter_mut().enumerate() {
                    let at = (i * BLOCK + j) as u64;
                    let r = splitmix64(base.wrapping_add(at.wrapping_mul(GOLDEN)));
                    *x = (lo + ((r >> 40) as f64 + 0.5) * step) as f32;
                }
                out.copy_from_slice(&super::dtype::mxfp4_encode_block(&v));
            }
        });
    bytes
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
    fn mxfp4_values_are_in_range_and_spread() {
        let t = uniform("t", DType::Mxfp4, vec![3, 2880], (9, 1), -2.0, 2.0);
        assert_eq!(t.bytes.len(), 3 * 90 * 17);
        let v = t.decode_f64();
        assert!(v.iter().all(|x| (-2.0..=2.0).contains(x)));
        // Values under a quarter of the block scale round to zero: about 1 in 16 here.
        let zeros = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
        assert!(zeros < 0.1, "{zeros}");
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        // Uniform on [-2, 2] has variance 4/3; the OCP scale rule puts a block's largest
        // value in [4, 8) scale units and E2M1 saturates at 6, so values past 3/4 of the
        // block's power of two clamp (here |v| > 1.5 -> 1.5): a smaller variance, about 1.15.
        assert!(
            mean.abs() < 0.1 && (1.05..1.25).contains(&var),
            "{mean} {var}"
        );
        assert_eq!(v.iter().fold(0f64, |m, x| m.max(x.abs())), 1.5);
        let again = uniform("t", DType::Mxfp4, vec![3, 2880], (9, 1), -2.0, 2.0);
        assert_eq!(t.bytes, again.bytes, "seeded");
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
