//! stream on the vector paths: read sums four vectors in flight; copy and write store
//! non-temporally (a plain store first reads the line it writes: a third of copy's traffic
//! and half of write's), a fence per chunk. Copy moves four streams a quarter of its chunk
//! apart, a line of each in turn, as glibc's large memcpy does: more lines in flight in more
//! DRAM pages than one stream.

use super::Isa;
use crate::backend::cpu::kernels::out_mut;
use crate::workload::stream::fill_pattern;
use crate::workload::{Stream, StreamOp, TensorSet};
use rayon::prelude::*;

/// Bytes per rayon task, as simple's.
const CHUNK: usize = 1 << 18;

pub(in crate::backend::cpu) fn stream(
    isa: Isa,
    w: &Stream,
    inputs: &TensorSet,
    outputs: &mut TensorSet,
) {
    match w.op {
        StreamOp::Read => {
            let src = &inputs.expect("src").bytes;
            let sum = src
                .par_chunks(CHUNK)
                .map(|c| read(isa, c))
                .reduce(|| 0u32, u32::wrapping_add);
            out_mut(outputs, "sum").copy_from_slice(&sum.to_le_bytes());
        }
        StreamOp::Copy => {
            let src = &inputs.expect("src").bytes;
            out_mut(outputs, "dst")
                .par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| copy(isa, d, s));
        }
        StreamOp::Write => {
            let seed = w.pattern_seed();
            out_mut(outputs, "dst")
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, d)| write(isa, d, (c * CHUNK / 4) as u32, seed));
        }
    }
}

/// The wrapping sum of the little-endian u32 words of `b` (a whole number of words).
fn read(isa: Isa, b: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx2) {
        // SAFETY: the path is allowed on this CPU (prepare checked it); AVX2 is in both.
        return unsafe { x86::read(b) };
    }
    let _ = isa;
    words(b).fold(0u32, u32::wrapping_add)
}

fn copy(isa: Isa, d: &mut [u8], s: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: as in `read`.
        Isa::Avx512 => return unsafe { x86::copy_512(d, s) },
        Isa::Avx2 => return unsafe { x86::copy_256(d, s) },
        _ => {}
    }
    let _ = isa;
    d.copy_from_slice(s);
}

/// Word i of `d` (word `first + i` of the tensor) = write_pattern(first + i, seed).
fn write(isa: Isa, d: &mut [u8], first: u32, seed: u32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: as in `read`.
        Isa::Avx512 => return unsafe { x86::write_512(d, first, seed) },
        Isa::Avx2 => return unsafe { x86::write_256(d, first, seed) },
        _ => {}
    }
    let _ = isa;
    fill_pattern(d, first, seed);
}

fn words(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
}

/// How many bytes from `p` to the next multiple of `align` (at most the length).
fn head(p: *const u8, align: usize, len: usize) -> usize {
    (p.align_offset(align)).min(len)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{fill_pattern, head, words};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn read(b: &[u8]) -> u32 {
        let whole = b.len() / 128 * 128;
        let p = b.as_ptr();
        // SAFETY: loads inside b[..whole]; unaligned loads need no alignment.
        let mut s = unsafe {
            let mut a = [_mm256_setzero_si256(); 4];
            for i in (0..whole).step_by(128) {
                for (k, a) in a.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(p.add(i + 32 * k) as *const __m256i);
                    *a = _mm256_add_epi32(*a, v);
                }
            }
            let v = _mm256_add_epi32(_mm256_add_epi32(a[0], a[1]), _mm256_add_epi32(a[2], a[3]));
            let mut lanes = [0u32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
            lanes.iter().fold(0u32, |x, &y| x.wrapping_add(y))
        };
        for w in words(&b[whole..]) {
            s = s.wrapping_add(w);
        }
        s
    }

    /// Generates the non-temporal copy and write of one vector width.
    macro_rules! nt {
        ($copy:ident, $write:ident, $feat:literal, $w:literal, $t:ty, $load:ident, $stream:ident,
         $set1:ident, $setr:expr, $add:ident, $mul:ident, $xor:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $copy(d: &mut [u8], s: &[u8]) {
                let h = head(d.as_ptr(), $w, d.len());
                d[..h].copy_from_slice(&s[..h]);
                let body = (d.len() - h) / $w * $w;
                // SAFETY: stores to d[h..h + body], aligned to $w (h was chosen so); loads
                // from the same range of s, unaligned.
                unsafe {
                    let (dp, sp) = (d.as_mut_ptr().add(h), s.as_ptr().add(h));
                    // Four streams a quarter of the chunk apart, a line of each in turn.
                    let q = body / (4 * 64) * 64;
                    for i in (0..q).step_by(64) {
                        for k in 0..4 {
                            for j in (0..64).step_by($w) {
                                let o = k * q + i + j;
                                $stream(dp.add(o) as *mut $t, $load(sp.add(o) as *const $t));
                            }
                        }
                    }
                    for i in (4 * q..body).step_by($w) {
                        $stream(dp.add(i) as *mut $t, $load(sp.add(i) as *const $t));
                    }
                    _mm_sfence();
                }
                d[h + body..].copy_from_slice(&s[h + body..]);
            }

            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $write(d: &mut [u8], first: u32, seed: u32) {
                const LANES: u32 = $w / 4;
                // Word boundaries: d starts on one (chunks are whole words of an aligned
                // tensor), so the head is whole words.
                if d.as_ptr() as usize % 4 != 0 {
                    return fill_pattern(d, first, seed);
                }
                let h = head(d.as_ptr(), $w, d.len()) / 4 * 4;
                fill_pattern(&mut d[..h], first, seed);
                let body = (d.len() - h) / $w * $w;
                let i0 = first.wrapping_add(h as u32 / 4);
                // SAFETY: aligned stores to d[h..h + body].
                unsafe {
                    // pattern(i) = i * K ^ seed: keep i * K and step it by LANES * K.
                    const K: u32 = 0x9E37_79B1;
                    let seedv = $set1(seed as i32);
                    let step = $set1(K.wrapping_mul(LANES) as i32);
                    let mut ik = $mul($add($set1(i0 as i32), $setr), $set1(K as i32));
                    let dp = d.as_mut_ptr().add(h);
                    for i in (0..body).step_by($w) {
                        $stream(dp.add(i) as *mut $t, $xor(ik, seedv));
                        ik = $add(ik, step);
                    }
                    _mm_sfence();
                }
                let done = (h + body) / 4;
                fill_pattern(&mut d[h + body..], first.wrapping_add(done as u32), seed);
            }
        };
    }

    nt!(
        copy_256,
        write_256,
        "avx2",
        32,
        __m256i,
        _mm256_loadu_si256,
        _mm256_stream_si256,
        _mm256_set1_epi32,
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_add_epi32,
        _mm256_mullo_epi32,
        _mm256_xor_si256
    );
    nt!(
        copy_512,
        write_512,
        "avx512f",
        64,
        __m512i,
        _mm512_loadu_si512,
        _mm512_stream_si512,
        _mm512_set1_epi32,
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_add_epi32,
        _mm512_mullo_epi32,
        _mm512_xor_si512
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path on this CPU against plain words, at lengths and offsets that leave an
    /// unaligned head and a tail.
    #[test]
    fn every_path_reads_copies_and_writes_what_plain_words_do() {
        let src: Vec<u8> = (0..4096 + 44).map(|i| (i * 7 + 3) as u8).collect();
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            if let Err(why) = isa.on_this_cpu() {
                eprintln!("SKIPPED: stream on {} ({why})", isa.name());
                continue;
            }
            for (off, len) in [(0, 4096 + 44), (4, 4000), (12, 100), (20, 8), (0, 0)] {
                let s = &src[off..off + len];
                assert_eq!(read(isa, s), words(s).fold(0, u32::wrapping_add), "{isa:?}");
                let mut d = vec![0u8; len + 64];
                copy(isa, &mut d[off % 64..off % 64 + len], s);
                assert_eq!(&d[off % 64..off % 64 + len], s, "{isa:?} copy {off} {len}");
                let mut want = vec![0u8; len];
                fill_pattern(&mut want, 77, 0xABCD);
                write(isa, &mut d[off % 64..off % 64 + len], 77, 0xABCD);
                assert_eq!(
                    &d[off % 64..off % 64 + len],
                    &want[..],
                    "{isa:?} write {off} {len}"
                );
            }
        }
    }
}
