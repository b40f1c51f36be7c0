//! 4-bit expert_gemv on AVX-512: every int4 code and E2M1 value is exact in f32, and one
//! `vpermps` (which reads the low 4 bits of each dword as an index into 16 f32s) turns
//! nibble k of each of a load's 16 dwords into its value. A row's 64 code bytes (128 values)
//! take 1 load, 7 shifts (nibble k of a dword to its bottom) and 8 permutes; the step's
//! scales, 8 bytes broadcast to every lane, go to their lanes by one in-lane byte shuffle
//! (`vpshufb`). (`vpermw` on bf16, with a shift or mask a vector to f32, costs 2 uops a
//! permute on the CPUs measured: 30 a row and step against 25. avx2's E2M1 decode, in
//! expert.rs, takes per 128 values 8 widening loads, 24 shifts, 32 permutes and 16 blends.)
//!
//! Dword m of a load holds values 8m..8m+7, so vector k, lane m is value 8m + k. So x is
//! laid out per 128 values as eight vectors of x[8m + k] (`XLanes`), and lane m of every
//! product is in the group of value 8m: its scale is lane m of one vector per 128 values and
//! row, applied once per token. A register block's 4 rows lie a quarter of the row block
//! apart, so each of the 4 runs of memory is read from end to end, and each row load asks
//! for the line the next register block will read at the same step (measured:
//! bench/2026-12-07-cpu-xeon-amx/four-bit-avx512/, four-bit-words/, four-bit-vpermps/).

use super::expert::{ExpertCtx, Rows, register_blocks};
use super::simd::{Aligned, prefetch_l2};
use crate::workload::fourbit::{Groups, ScaleCode};
use std::arch::x86_64::*;

/// Values a step of the kernel takes from a row (64 code bytes).
const STEP: usize = 128;

/// x for this kernel: per token, per 128 values, eight vectors: vector k, lane m = x[8m + k].
pub(super) struct XLanes {
    x: Aligned,
    /// f32s per token.
    per_token: usize,
}

impl XLanes {
    /// From `batch` rows of `stride` f32s (x as math rounds it, in natural order), `d_in` used.
    pub fn new(x: &[f32], stride: usize, d_in: usize) -> XLanes {
        let per_token = d_in.next_multiple_of(STEP);
        let batch = x.len() / stride;
        let mut out = Aligned::zeroed(batch * per_token);
        for (row, to) in x.chunks_exact(stride).zip(out.chunks_exact_mut(per_token)) {
            for (j, &v) in row[..d_in].iter().enumerate() {
                let (step, m, k) = (j / STEP, j % STEP / 8, j % 8);
                to[step * STEP + k * 16 + m] = v;
            }
        }
        XLanes { x: out, per_token }
    }

    fn token(&self, t: usize) -> *const f32 {
        self.x[t * self.per_token..].as_ptr()
    }
}

/// One block of output rows: every slot's value of these rows, [slot][row in block].
///
/// # Safety
/// The CPU must have AVX512-F/BW; the dtype must be a 4-bit one, d_in a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(super) unsafe fn block(cx: &ExpertCtx, x: &XLanes, blk: usize) -> Vec<f32> {
    let g = cx.w.weight_dtype.groups().expect("a 4-bit dtype");
    // SAFETY: the caller's contract. (One instance per scale type: no branch in the loop.)
    unsafe {
        match g.scale {
            ScaleCode::Bf16 => block_of::<BF16>(cx, x, blk),
            ScaleCode::E8m0 => block_of::<E8M0>(cx, x, blk),
            ScaleCode::E4m3 => block_of::<E4M3>(cx, x, blk),
        }
    }
}

/// `ScaleCode`s as const parameters.
const BF16: u8 = 0;
const E8M0: u8 = 1;
const E4M3: u8 = 2;

const fn scale_code(s: u8) -> ScaleCode {
    match s {
        BF16 => ScaleCode::Bf16,
        E8M0 => ScaleCode::E8m0,
        _ => ScaleCode::E4m3,
    }
}

/// `block` for scales of type `S`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn block_of<const S: u8>(cx: &ExpertCtx, x: &XLanes, blk: usize) -> Vec<f32> {
    let w = cx.w;
    let (o0, o1) = (blk * cx.rows, ((blk + 1) * cx.rows).min(w.d_out));
    let width = o1 - o0;
    let mut slots = vec![0f32; w.batch * w.top_k * width];
    // SAFETY: the caller has the features.
    let book = unsafe { Codebook::new(w.weight_dtype.groups().expect("a 4-bit dtype")) };
    let regs = register_blocks(o0, o1);
    for (i, (e, entries)) in cx.touched.iter().enumerate() {
        for (j, &(o, stride, r)) in regs.iter().enumerate() {
            // The rows read after these: this expert's next, the next expert's first, or
            // (the block's last) the first expert's rows after the block.
            let (ne, no) = match (regs.get(j + 1), cx.touched.get(i + 1)) {
                (Some(&(next, ..)), _) => (*e, next),
                (None, Some((next, _))) => (*next, regs[0].0),
                (None, None) => (cx.touched[0].0, o1),
            };
            let next = (ne * w.d_out + no) * w.d_in;
            for group in entries.chunks(4) {
                let at = Rows {
                    e: *e,
                    o,
                    stride,
                    o0,
                    width,
                };
                // SAFETY: the caller's contract; rows o + r x stride are inside the block.
                unsafe {
                    match (r, group.len()) {
                        (4, 4) => rows::<4, 4, S>(cx, x, &book, (at, next), group, &mut slots),
                        (4, 3) => rows::<4, 3, S>(cx, x, &book, (at, next), group, &mut slots),
                        (4, 2) => rows::<4, 2, S>(cx, x, &book, (at, next), group, &mut slots),
                        (4, _) => rows::<4, 1, S>(cx, x, &book, (at, next), group, &mut slots),
                        (_, 4) => rows::<1, 4, S>(cx, x, &book, (at, next), group, &mut slots),
                        (_, 3) => rows::<1, 3, S>(cx, x, &book, (at, next), group, &mut slots),
                        (_, 2) => rows::<1, 2, S>(cx, x, &book, (at, next), group, &mut slots),
                        _ => rows::<1, 1, S>(cx, x, &book, (at, next), group, &mut slots),
                    }
                }
            }
        }
    }
    slots
}

/// A dtype's constant vectors.
#[derive(Clone, Copy)]
struct Codebook {
    /// Lane c holds code c's value (exact in f32).
    table: __m512,
    /// `vpshufb` indices that put, in each dword m, the scale of the group of a step's value
    /// 8m (from 8 scale bytes repeated in every 128-bit lane) into its top byte (one-byte
    /// scales) or top two (bf16: the f32 of the bf16); the other bytes 0.
    lanes: __m512i,
}

impl Codebook {
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn new(g: Groups) -> Codebook {
        let table: [f32; 16] = std::array::from_fn(|c| g.value(c as u8));
        let b = g.scale.bytes();
        let lanes: [u8; 64] = std::array::from_fn(|i| {
            let (m, byte) = (i / 4, i % 4);
            let first = (8 * m / g.elems * b) as u8;
            match (b, byte) {
                (2, 2) => first,
                (2, 3) => first + 1,
                (1, 3) => first,
                _ => 0x80,
            }
        });
        // SAFETY: whole arrays; the caller has the features.
        unsafe {
            Codebook {
                table: _mm512_loadu_ps(table.as_ptr()),
                lanes: _mm512_loadu_si512(lanes.as_ptr() as *const _),
            }
        }
    }
}

/// R rows of expert e against T of its slots, 128 values a step.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn rows<const R: usize, const T: usize, const S: u8>(
    cx: &ExpertCtx,
    x: &XLanes,
    book: &Codebook,
    // The register block, and the first value of the rows read next (their lines are asked
    // for ahead).
    (at, next): (Rows, usize),
    group: &[usize],
    slots: &mut [f32],
) {
    let w = cx.w;
    let g = w.weight_dtype.groups().expect("a 4-bit dtype");
    let scales = cx.group_scales.expect("4-bit group scales");
    let (di, k) = (w.d_in, w.top_k);
    let out: [usize; R] = std::array::from_fn(|r| at.row(r));
    let row: [usize; R] = std::array::from_fn(|r| (at.e * w.d_out + out[r]) * di);
    assert!(
        di.is_multiple_of(32) && (row[R - 1] + di) / 2 <= cx.wt.len(),
        "rows out of the weights"
    );
    assert!(
        (row[R - 1] + di) / g.elems * g.scale.bytes() <= scales.len(),
        "rows out of the scales"
    );
    let xs: [*const f32; T] = std::array::from_fn(|t| x.token(group[t] / k));
    // Each load asks for the line that row r of the next register block reads at this step,
    // into L2: far enough ahead for memory's latency, near enough to stay there.
    let ahead = (next as isize - row[0] as isize) / 2;
    // Scale bytes a whole step reads; each row's first (no division in the loop: a 64-bit
    // divide costs as much as a step's arithmetic).
    let step_bytes = STEP / g.elems * g.scale.bytes();
    let srow: [usize; R] = std::array::from_fn(|r| row[r] / g.elems * g.scale.bytes());
    // SAFETY: loads stay inside each row and its scales (masked in its last step, asserted
    // above); x holds whole steps per token; the caller has the features.
    unsafe {
        let Codebook { table, lanes } = *book;
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        // A whole step's scales: 8 bytes from its first, in every lane (the bytes past the
        // step's are not selected). A masked load for the last step of a row whose d_in is not
        // whole steps (its lanes past d_in multiply zeros by the scale, which must be finite),
        // and where 8 bytes would pass the buffer's end.
        let last = scales.len().saturating_sub(8);
        macro_rules! scale_bytes {
            ($off:expr, $sbytes:expr, $tail:expr) => {
                if !$tail && $off <= last {
                    _mm512_set1_epi64((scales.as_ptr().add($off) as *const i64).read_unaligned())
                } else {
                    let raw =
                        _mm512_maskz_loadu_epi8($sbytes, scales.as_ptr().add($off) as *const i8);
                    _mm512_broadcastq_epi64(_mm512_castsi512_si128(raw))
                }
            };
        }
        // One step from value v0 on: `bytes` of its codes, `sbytes` of its scales.
        macro_rules! step {
            ($v0:expr, $bytes:expr, $sbytes:expr, $tail:expr) => {
                for r in 0..R {
                    let p = cx.wt.as_ptr().add((row[r] + $v0) / 2);
                    prefetch_l2(p.wrapping_offset(ahead));
                    let c = _mm512_maskz_loadu_epi8($bytes, p as *const i8);
                    // Vector k, lane m: value 8m + k (nibble k of dword m).
                    let wv = [
                        _mm512_permutexvar_ps(c, table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<8>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<12>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<16>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<20>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<24>(c), table),
                        _mm512_permutexvar_ps(_mm512_srli_epi32::<28>(c), table),
                    ];
                    let off = srow[r] + $v0 / STEP * step_bytes;
                    let placed = _mm512_shuffle_epi8(scale_bytes!(off, $sbytes, $tail), lanes);
                    let s = top_byte_scales(scale_code(S), placed);
                    for t in 0..T {
                        let xv = xs[t].add($v0);
                        // One chain of 8 (the R x T chains and the next steps' overlap).
                        let mut a = _mm512_mul_ps(wv[0], _mm512_load_ps(xv));
                        for j in 1..8 {
                            a = _mm512_fmadd_ps(wv[j], _mm512_load_ps(xv.add(16 * j)), a);
                        }
                        acc[r][t] = _mm512_fmadd_ps(a, s, acc[r][t]);
                    }
                }
            };
        }
        let whole = di / STEP * STEP;
        let full_scales: __mmask64 = (1 << step_bytes) - 1;
        for v0 in (0..whole).step_by(STEP) {
            step!(v0, !0, full_scales, false);
        }
        if whole < di {
            let n = di - whole;
            let sbytes = n / g.elems * g.scale.bytes();
            step!(whole, (1 << (n / 2)) - 1, (1 << sbytes) - 1, true);
        }
        for r in 0..R {
            let row_scale = cx.scales.map_or(1.0, |s| s[w.scale_index(at.e, out[r], 0)]);
            for (t, &slot) in group.iter().enumerate() {
                let d = _mm512_reduce_add_ps(acc[r][t]) * row_scale;
                slots[slot * at.width + (out[r] - at.o0)] = d * cx.rw[slot];
            }
        }
    }
}

/// The f32 of the scale in each dword's top byte (E8M0, E4M3) or top two (bf16), the other
/// bytes 0.
#[inline(always)]
unsafe fn top_byte_scales(code: ScaleCode, v: __m512i) -> __m512 {
    // SAFETY: the caller has the features.
    unsafe {
        match code {
            // 2^(s - 127): s in the exponent; 0 is 2^-127 (a subnormal), 0xFF NaN. The
            // fixup keeps 2^-127 (its first operand) for a zero, makes +inf a NaN and passes
            // the rest.
            ScaleCode::E8m0 => _mm512_fixupimm_ps::<0>(
                _mm512_castsi512_ps(_mm512_set1_epi32(1 << 22)),
                _mm512_castsi512_ps(_mm512_srli_epi32::<1>(v)),
                _mm512_set1_epi32(0x1131_1011),
            ),
            ScaleCode::E4m3 => super::simd::fp8_e4m3_top_bytes(v),
            // A bf16 in a dword's top half is its f32.
            ScaleCode::Bf16 => _mm512_castsi512_ps(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::fourbit::e8m0_decode;
    use crate::workload::fp8::fp8_e4m3_decode;

    /// Every E8M0 code (0's subnormal and 0xFF's NaN too) and every E4M3 code but NaN, 16 at
    /// a time, as the scalar decoders give them, bit for bit.
    #[test]
    fn scale_codes_decode_as_the_scalar_decoders() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            eprintln!("SKIPPED: this CPU lacks AVX-512 F/BW");
            return;
        }
        #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
        unsafe fn decode16(code: ScaleCode, bytes: &[u8; 16]) -> [f32; 16] {
            let mut out = [0f32; 16];
            let dwords: [u32; 16] = std::array::from_fn(|i| u32::from(bytes[i]) << 24);
            // SAFETY: 16 dwords in, 16 f32 out; the caller checked the features.
            unsafe {
                let v = _mm512_loadu_si512(dwords.as_ptr() as *const _);
                _mm512_storeu_ps(out.as_mut_ptr(), top_byte_scales(code, v));
            }
            out
        }
        for (code, scalar) in [
            (ScaleCode::E8m0, e8m0_decode as fn(u8) -> f32),
            (ScaleCode::E4m3, fp8_e4m3_decode),
        ] {
            for first in (0..=255u8).step_by(16) {
                let bytes: [u8; 16] = std::array::from_fn(|i| first + i as u8);
                // SAFETY: the features are there (checked above).
                let got = unsafe { decode16(code, &bytes) };
                for (&b, g) in bytes.iter().zip(got) {
                    let want = scalar(b);
                    if code == ScaleCode::E4m3 && want.is_nan() {
                        continue;
                    }
                    assert!(
                        g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                        "{} code {b:#04x}: {g:e} vs {want:e}",
                        code.name()
                    );
                }
            }
        }
    }
}
