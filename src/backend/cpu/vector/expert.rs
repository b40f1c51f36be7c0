//! expert_gemv on the vector paths. Units of work are blocks of output rows, every touched
//! expert within a block, sized by bytes (`block_rows`), in simple's slot order; within a
//! block, 4 rows of an expert
//! stream at once, decoded in registers, against up to 4 of its tokens (x rows zero-padded
//! to whole vectors, read from cache), so each weight byte is loaded once per 4 tokens.

use super::simd::{Aligned, Simd, prefetch_l2};
use crate::workload::{DType, ExpertGemv, WeightScale, expert_gemv::SCALE_BLOCK};

/// What every row block of one step reads.
pub(super) struct ExpertCtx<'a> {
    pub w: &'a ExpertGemv,
    /// x after math's rounding, [batch] rows of `dip` values, zero-padded.
    pub x: Aligned,
    pub dip: usize,
    pub wt: &'a [u8],
    /// f32 scales per row, block or expert (`ExpertGemv::dot_scales`).
    pub scales: Option<&'a [f32]>,
    /// A 4-bit dtype's group scales (`w_scale`); x is then laid out per 32 values as the
    /// even positions, then the odd (`four_bit_x`).
    pub group_scales: Option<&'a [u8]>,
    /// Touched experts with their (token, choice) slots.
    pub touched: Vec<(usize, Vec<usize>)>,
    pub rw: &'a [f32],
    /// Output rows per unit of work (`block_rows`).
    pub rows: usize,
}

/// A unit of work's target bytes of one expert's weights.
const BLOCK_BYTES: usize = 1 << 20;

/// Output rows per unit of work: about `BLOCK_BYTES` of each touched expert (a power of two,
/// 16 to 256 rows), halved while the units would be under 4 per thread. Each unit reads its
/// rows of every touched expert, and each start of a new run of memory waits on the
/// prefetcher again: 16 rows (16-64 KiB at d_in 2048) read 0.8-0.9x what 256 do.
pub(super) fn block_rows(w: &ExpertGemv, threads: usize) -> usize {
    let row_bytes = w.w_row_bytes() as usize;
    let mut rows = (BLOCK_BYTES / row_bytes.max(1))
        .next_power_of_two()
        .clamp(16, 256);
    while rows > 16 && w.d_out.div_ceil(rows) < 4 * threads {
        rows /= 2;
    }
    rows
}

/// One block of output rows: every slot's value of these rows, [slot][row in block].
///
/// # Safety
/// The CPU must have `S`'s features; the dtype must be one the vector paths decode.
#[inline(always)]
pub(super) unsafe fn block<S: Simd>(cx: &ExpertCtx, blk: usize) -> Vec<f32> {
    let w = cx.w;
    let (o0, o1) = (blk * cx.rows, ((blk + 1) * cx.rows).min(w.d_out));
    let width = o1 - o0;
    let mut slots = vec![0f32; w.batch * w.top_k * width];
    let wide = if S::LANES == 16 { 4 } else { 2 };
    let regs = register_blocks(o0, o1);
    // The dtype as a const parameter: the loop's decode is chosen once, not per vector.
    let d = w.weight_dtype.whole_byte_index().unwrap_or(0);
    for (e, entries) in &cx.touched {
        for &(o, stride, r) in &regs {
            for group in entries.chunks(wide) {
                let at = Rows {
                    e: *e,
                    o,
                    stride,
                    o0,
                    width,
                };
                // One instantiation per (rows, tokens) in registers and dtype.
                macro_rules! run {
                    ($f:ident $(, $d:literal)?) => {
                        match (r, group.len()) {
                            (4, 4) => $f::<S, 4, 4 $(, $d)?>(cx, at, group, &mut slots),
                            (4, 3) => $f::<S, 4, 3 $(, $d)?>(cx, at, group, &mut slots),
                            (4, 2) => $f::<S, 4, 2 $(, $d)?>(cx, at, group, &mut slots),
                            (4, _) => $f::<S, 4, 1 $(, $d)?>(cx, at, group, &mut slots),
                            (_, 4) => $f::<S, 1, 4 $(, $d)?>(cx, at, group, &mut slots),
                            (_, 3) => $f::<S, 1, 3 $(, $d)?>(cx, at, group, &mut slots),
                            (_, 2) => $f::<S, 1, 2 $(, $d)?>(cx, at, group, &mut slots),
                            _ => $f::<S, 1, 1 $(, $d)?>(cx, at, group, &mut slots),
                        }
                    };
                }
                // SAFETY: the caller's contract; rows o..o+r are inside the block.
                unsafe {
                    match (cx.group_scales.is_some(), d) {
                        (true, _) => run!(rows4),
                        (_, 1) => run!(rows, 1),
                        (_, 2) => run!(rows, 2),
                        (_, 3) => run!(rows, 3),
                        _ => run!(rows, 0),
                    }
                }
            }
        }
    }
    slots
}

/// The register blocks of output rows o0..o1, as (first row, stride, rows): 4 rows a
/// quarter of the block apart where the block divides by 4, so the 4 rows read at once lie
/// in 4 separate runs of memory, each read from end to end (adjacent rows share pages and
/// split each page's reads 4 ways); else 4 adjacent rows, then single rows.
pub(super) fn register_blocks(o0: usize, o1: usize) -> Vec<(usize, usize, usize)> {
    let width = o1 - o0;
    if width.is_multiple_of(4) {
        let quarter = width / 4;
        return (0..quarter).map(|q| (o0 + q, quarter, 4)).collect();
    }
    let whole = o0 + width / 4 * 4;
    let fours = (o0..whole).step_by(4).map(|o| (o, 1, 4));
    fours.chain((whole..o1).map(|o| (o, 1, 1))).collect()
}

/// Where a register block's rows are: expert e, rows o, o + stride, .., in the block
/// starting at o0.
#[derive(Clone, Copy)]
pub(super) struct Rows {
    pub e: usize,
    pub o: usize,
    /// Rows o, o + stride, ...
    pub stride: usize,
    pub o0: usize,
    pub width: usize,
}

impl Rows {
    /// Output row r of the register block.
    #[inline(always)]
    pub fn row(self, r: usize) -> usize {
        self.o + r * self.stride
    }
}

/// R rows of expert e against T of its slots: dot x scales x routing weight into `slots`;
/// the weights' dtype is `DType::WHOLE_BYTE[D]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn rows<S: Simd, const R: usize, const T: usize, const D: usize>(
    cx: &ExpertCtx,
    at: Rows,
    group: &[usize],
    slots: &mut [f32],
) {
    let w = cx.w;
    let (di, dt, k) = (w.d_in, DType::WHOLE_BYTE[D], w.top_k);
    assert_eq!(dt, w.weight_dtype, "rows instantiated for another dtype");
    let size = dt.size();
    let row_start: [usize; R] = std::array::from_fn(|r| (at.e * w.d_out + at.row(r)) * di);
    let xs: [*const f32; T] = std::array::from_fn(|t| cx.x[group[t] / k * cx.dip..].as_ptr());
    let block_scaled = cx.scales.is_some() && w.weight_scale == WeightScale::Block128;
    let lazy = S::lazy_scale(dt);
    let pairs = bf16_pairs(w);
    let seg = if block_scaled { SCALE_BLOCK } else { di };
    let base = cx.wt.as_ptr();
    let row_bytes = di * size;
    assert!(
        (row_start[R - 1] + di) * size <= cx.wt.len(),
        "rows out of the weights"
    );
    // SAFETY: whole vectors stay below d_in in each row (asserted inside the tensor); x rows
    // are padded to `dip`, a whole number of vectors past d_in.
    unsafe {
        let mut total = [[S::splat(0.0); T]; R];
        let mut s0 = 0;
        while s0 < di {
            let s1 = (s0 + seg).min(di);
            let whole = s0 + (s1 - s0) / S::LANES * S::LANES;
            let mut acc = [[S::splat(0.0); T]; R];
            let mut i = s0;
            if pairs {
                // bf16, 32 values a step, even positions then odd (x laid out to match).
                while i + 32 <= s1 {
                    let mut wv = [[S::splat(0.0); 4]; R];
                    for r in 0..R {
                        let p = base.add((row_start[r] + i) * size);
                        ahead::<D>(p, row_bytes);
                        S::bf16_32(p, &mut wv[r]);
                    }
                    for v in 0..32 / S::LANES {
                        for t in 0..T {
                            let xv = S::load(xs[t].add(i + v * S::LANES));
                            for r in 0..R {
                                acc[r][t] = S::fma(wv[r][v], xv, acc[r][t]);
                            }
                        }
                    }
                    i += 32;
                }
            }
            while i < whole {
                // Loops, not array::from_fn: a closure would not inline the intrinsics.
                let mut wv = [S::splat(0.0); R];
                for r in 0..R {
                    let p = base.add((row_start[r] + i) * size);
                    if (i * size).is_multiple_of(64) {
                        ahead::<D>(p, row_bytes);
                    }
                    wv[r] = S::decode_lazy(dt, p);
                }
                for t in 0..T {
                    let xv = S::load(xs[t].add(i));
                    for r in 0..R {
                        acc[r][t] = S::fma(wv[r], xv, acc[r][t]);
                    }
                }
                i += S::LANES;
            }
            if whole < s1 {
                // The row's last values: decoded by the dtype, zero-padded to a vector.
                let mut tail = [[0f32; 16]; R];
                for r in 0..R {
                    let tail = &mut tail[r][..s1 - whole];
                    dt.decode_slice(cx.wt, row_start[r] + whole, tail);
                    // As decode_lazy's (a power of two: exact).
                    tail.iter_mut().for_each(|v| *v /= lazy);
                }
                for t in 0..T {
                    let xv = S::load(xs[t].add(whole));
                    for r in 0..R {
                        acc[r][t] = S::fma(S::load(tail[r].as_ptr()), xv, acc[r][t]);
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    total[r][t] = match (block_scaled, cx.scales) {
                        (true, Some(s)) => {
                            let scale = s[w.scale_index(at.e, at.row(r), s0)];
                            S::fma(acc[r][t], S::splat(scale), total[r][t])
                        }
                        _ => acc[r][t],
                    };
                }
            }
            s0 = s1;
        }
        for r in 0..R {
            let row_scale = match cx.scales {
                Some(s) if !block_scaled => s[w.scale_index(at.e, at.row(r), 0)],
                _ => 1.0,
            };
            for (t, &slot) in group.iter().enumerate() {
                let d = S::hsum(total[r][t]) * lazy * row_scale;
                slots[slot * at.width + (at.row(r) - at.o0)] = d * cx.rw[slot];
            }
        }
    }
}

/// For weights of 1 or 2 bytes (`DType::WHOLE_BYTE[D]`): asks for the line `by` bytes past
/// `p` into L2, where the next register block (the next row of each of the 4 runs) reads at
/// the same step. Measured: fp8 and bf16 rows read faster with it, f32 rows (4 bytes a
/// value, the prefetcher's best case) slower (bench/2026-12-07-cpu-xeon-amx/expert-prefetch/).
#[inline(always)]
fn ahead<const D: usize>(p: *const u8, by: usize) {
    if DType::WHOLE_BYTE[D].size() <= 2 {
        prefetch_l2(p.wrapping_add(by));
    }
}

/// Whether bf16 weights are read 32 values a step (`Simd::bf16_32`), x laid out by
/// `four_bit_x`: one load and two instructions for 32 values where widening takes two and four.
pub(super) fn bf16_pairs(w: &ExpertGemv) -> bool {
    w.weight_dtype == DType::Bf16 && w.weight_scale != WeightScale::Block128
}

/// x laid out for the 4-bit kernels (and bf16's `bf16_pairs`): each 32 values as the 16 at
/// even positions, then the 16 at odd (the order `Simd::nibbles32` decodes a chunk's codes
/// in). Whole 32-value chunks only: a row's last values past them stay in order.
pub(super) fn four_bit_x(x: &mut [f32]) {
    for chunk in x.chunks_exact_mut(32) {
        let natural: [f32; 32] = chunk.try_into().expect("32 values");
        for j in 0..16 {
            chunk[j] = natural[2 * j];
            chunk[16 + j] = natural[2 * j + 1];
        }
    }
}

/// How far ahead of a 4-bit row's loads its lines are asked for, in bytes.
const PREFETCH: usize = 4096;

/// R rows of a 4-bit expert against T of its slots (avx2, portable; avx512 runs expert4.rs),
/// 32 values (16 bytes a row) at a time: the codes' values from the dtype's table
/// (`Simd::nibbles32`), each group's products summed, then times the group's scale (one FMA
/// a token and group, where scaling the values costs a multiply a vector).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn rows4<S: Simd, const R: usize, const T: usize>(
    cx: &ExpertCtx,
    at: Rows,
    group: &[usize],
    slots: &mut [f32],
) {
    let w = cx.w;
    let g = w.weight_dtype.groups().expect("a 4-bit dtype");
    let scales = cx.group_scales.expect("4-bit group scales");
    let (di, k) = (w.d_in, w.top_k);
    let row: [usize; R] = std::array::from_fn(|r| (at.e * w.d_out + at.row(r)) * di);
    let xs: [*const f32; T] = std::array::from_fn(|t| cx.x[group[t] / k * cx.dip..].as_ptr());
    assert!(
        di.is_multiple_of(32) && (row[R - 1] + di) / 2 <= cx.wt.len(),
        "rows out of the weights"
    );
    // A chunk's vectors 0 and 2 hold its values 0..16 (the even and odd positions of its
    // first 8 bytes), 1 and 3 values 16..32: 8 lanes make each vector one group's.
    assert_eq!(S::LANES, 8, "4-bit rows on an 8-lane path");
    assert!(g.elems.is_power_of_two() && g.elems >= 16);
    let table: [f32; 16] = std::array::from_fn(|c| g.value(c as u8));
    let int4 = g.code == crate::workload::fourbit::Code::Int4;
    // Group i of the tensor is value v's for i = v >> shift: no division in the loop.
    let shift = g.elems.trailing_zeros();
    // SAFETY: chunks stay inside each row (asserted above); x rows hold d_in values.
    unsafe {
        let mut acc = [[S::splat(0.0); T]; R];
        for c in 0..di / 32 {
            let v0 = c * 32;
            for r in 0..R {
                let p = cx.wt.as_ptr().add((row[r] + v0) / 2);
                // A row gives 16 bytes a chunk: ask for its lines well ahead, or the loads
                // wait on memory with few lines in flight.
                #[cfg(target_arch = "x86_64")]
                if c % 4 == 0 {
                    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
                }
                let mut wv = [S::splat(0.0); 4];
                if int4 {
                    S::int4_32(p, &mut wv);
                } else {
                    S::nibbles32(p, &table, &mut wv);
                }
                let gi = (row[r] + v0) >> shift;
                let sa = S::splat(g.scale.decode(scales, gi));
                let sb = if g.elems < 32 {
                    S::splat(g.scale.decode(scales, gi + 1))
                } else {
                    sa
                };
                for t in 0..T {
                    // A macro, not a closure: a closure would not inline the intrinsics.
                    macro_rules! x {
                        ($v:expr) => {
                            S::load(xs[t].add(v0 + 8 * $v))
                        };
                    }
                    let a = S::fma(wv[2], x!(2), S::mul(wv[0], x!(0)));
                    let b = S::fma(wv[3], x!(3), S::mul(wv[1], x!(1)));
                    acc[r][t] = S::fma(b, sb, S::fma(a, sa, acc[r][t]));
                }
            }
        }
        for r in 0..R {
            let row_scale = cx
                .scales
                .map_or(1.0, |s| s[w.scale_index(at.e, at.row(r), 0)]);
            for (t, &slot) in group.iter().enumerate() {
                let d = S::hsum(acc[r][t]) * row_scale;
                slots[slot * at.width + (at.row(r) - at.o0)] = d * cx.rw[slot];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{block_rows, register_blocks};
    use crate::workload::{DType, ExpertGemv, WeightScale};

    /// Rows per unit: about 1 MiB of an expert, 16 to 256 rows, at least 4 units a thread.
    #[test]
    fn block_rows_by_bytes_and_threads() {
        let w = |d_in, d_out, weight_dtype| ExpertGemv {
            experts: 64,
            top_k: 8,
            batch: 1,
            d_in,
            d_out,
            weight_dtype,
            weight_scale: WeightScale::Row,
            routing: crate::workload::Routing::Uniform,
            topk_ids: vec![],
            seed: 1,
            math: Default::default(),
        };
        // 4 KiB rows: 256 of them a MiB; 28 KiB rows: 1 MiB / 28 KiB = 36.6, so 64.
        assert_eq!(block_rows(&w(2048, 2048, DType::Bf16), 2), 256);
        assert_eq!(block_rows(&w(7168, 2048, DType::F32), 2), 64);
        // 1 KiB rows would give 1024: 256 at most.
        assert_eq!(block_rows(&w(2048, 2048, DType::Int4G32), 2), 256);
        // 16 threads want 64 units of 2048 rows: 32 rows each.
        assert_eq!(block_rows(&w(2048, 2048, DType::Bf16), 16), 32);
        // Small d_out: 16 rows at the least, however few the units.
        assert_eq!(block_rows(&w(2048, 40, DType::Bf16), 2), 16);
        // 100 rows, 2 threads: 8 units want 13 rows, so 16.
        assert_eq!(block_rows(&w(64, 100, DType::F32), 2), 16);
        assert_eq!(block_rows(&w(64, 1000, DType::F32), 2), 128);
    }

    /// Every row of a block is in exactly one register block; a block that divides by 4
    /// reads rows a quarter apart, any other 4 adjacent rows, then single rows.
    #[test]
    fn register_blocks_cover_each_row_once() {
        for (o0, o1) in [
            (0, 16),
            (32, 48),
            (0, 5),
            (16, 23),
            (64, 67),
            (8, 12),
            (0, 1),
        ] {
            let regs = register_blocks(o0, o1);
            let mut seen: Vec<usize> = regs
                .iter()
                .flat_map(|&(o, stride, r)| (0..r).map(move |i| o + i * stride))
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (o0..o1).collect::<Vec<_>>(), "{o0}..{o1}: {regs:?}");
        }
        assert_eq!(
            register_blocks(32, 48),
            vec![(32, 4, 4), (33, 4, 4), (34, 4, 4), (35, 4, 4)]
        );
        assert_eq!(
            register_blocks(16, 23),
            vec![(16, 1, 4), (20, 1, 1), (21, 1, 1), (22, 1, 1)]
        );
    }
}
