//! kv_decode on AMX tiles for GQA groups of at most 8 q heads, shaped by what the tile unit
//! costs on the CPUs it was measured on: a `tdpbf16ps` takes as long with 8 rows as with
//! 16, and a `tileloadd` of 16 rows as long as three of them
//! (bench/2026-12-07-cpu-xeon-amx/amx-gqa/). So, per task, per 64-token tile, per KV head:
//! - S^T = K . Q^T: K's rows are the A operand as stored (copied into a staging tile, or
//!   decoded from fp8), no transposes; Q^T is one B tile a 32-dim step with q's bf16 hi
//!   halves in columns 0-7 and lo halves in 8-15 (`math: f32`), so one `tdpbf16ps` does both;
//! - the online softmax on token pairs (a vector is two tokens x 8 heads);
//! - P as one A tile a 32-token step, hi halves in rows 0-7 and lo halves in 8-15 (a 16 x 16
//!   transpose of bf16 pairs), and acc[hi, lo rows][dv] += P . V;
//! - V in VNNI token pairs by `vpunpck[lh]wd`, which leaves each 32-dim block's dims in the
//!   order 0-3, 8-11, 16-19, 24-27, then 4-7, 12-15, ...: the accumulator keeps that order
//!   and is put back once, in the partial.
//!
//! Larger groups (MLA's 16-128 heads) take kv_amx.rs, which tiles heads by 16.

use super::amx::{Tiles, tile_dp, tile_load, tile_store, tile_zero};
use super::kv::{chunk_tokens, tile_slots};
use super::kv_amx::{
    TILE, as_u16, k_blocks, k_in_place, load32, rows, store_token_blocks, transmute_bh,
    transpose16, zeroed_u16,
};
use super::simd::{Aligned, Avx512, Simd, prefetch_span};
use crate::backend::cpu::kernels::Partial;
use crate::workload::{Attention, DType, KvDecode, Math};
use std::arch::x86_64::*;

/// Head slots of a group: the hi halves' columns of Q^T (rows of P), then the lo halves'.
const HS: usize = 8;

/// Whether this kernel takes the point (kv_amx.rs's `covers` holds): GQA, at most 8 heads a
/// group.
pub fn fits(w: &KvDecode) -> bool {
    w.attention == Attention::Gqa && w.group_size() <= HS
}

/// What every task of one step reads.
pub(super) struct GqaCtx<'a> {
    w: &'a KvDecode,
    /// Every (sequence, KV head)'s Q^T: `ks` B tiles of [16 dim pairs][16 columns][2] bf16.
    qt: Aligned,
    qt_len: usize,
    k: &'a [u8],
    v: &'a [u8],
    table: &'a [i32],
    pub chunk: usize,
}

impl<'a> GqaCtx<'a> {
    pub fn new(w: &'a KvDecode, q: &[f32], (k, v): (&'a [u8], &'a [u8]), table: &'a [i32]) -> Self {
        let (gs, dk) = (w.group_size(), w.head_dim_k);
        let qt_len = dk / 32 * 512;
        let mut qt = zeroed_u16(w.batch * w.kv_heads * qt_len);
        // Every group's Q^T on this thread: 16 values an instruction, a few microseconds a
        // step, under what handing the work to the pool costs.
        for (bg, out) in bytemuck::cast_slice_mut::<_, u32>(&mut qt[..])
            .chunks_exact_mut(qt_len / 2)
            .enumerate()
        {
            let heads = &q[bg * gs * dk..(bg + 1) * gs * dk];
            for (h, row) in heads.chunks_exact(dk).enumerate() {
                // SAFETY: the amx path runs only where AVX-512 F/BW/BF16 are (its caller).
                unsafe { q_columns(row, w.math == Math::F32, h, out) };
            }
        }
        GqaCtx {
            w,
            qt,
            qt_len,
            k,
            v,
            table,
            chunk: chunk_tokens(w, TILE),
        }
    }
}

/// Head h's q (`row`, dk values) into column h (hi halves) and HS + h (lo halves; zero
/// unless `split`) of its Q^T tiles, `out` as u32 dim pairs: tile d / 32, row (d % 32) / 2,
/// so pair p of the head sits at p * 16 + column. q rounds as `bf16_bits` does (to nearest
/// even), 16 values at a time; at `math: bf16` hi is q as math rounds it.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn q_columns(row: &[f32], split: bool, h: usize, out: &mut [u32]) {
    assert!(row.len().is_multiple_of(16) && out.len() >= row.len() / 2 * 16);
    // SAFETY: 16 values a load inside `row`; the features are the caller's.
    unsafe {
        let bf16 = |x: __m512| {
            let u = _mm512_castps_si512(x);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
            let r = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
            // A NaN stays one (quiet), as `bf16_bits` keeps it.
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(0x40));
            _mm512_mask_mov_epi32(_mm512_srli_epi32::<16>(r), nan, quiet)
        };
        let mut pairs = [[0u32; 8]; 2];
        for (c, x) in row.chunks_exact(16).enumerate() {
            let x = _mm512_loadu_ps(x.as_ptr());
            let hi = bf16(x);
            let rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)));
            let lo = if split {
                bf16(rest)
            } else {
                _mm512_setzero_si512()
            };
            // Each dword's low half, in order: two dims a u32, the first in its low half.
            _mm256_storeu_si256(
                pairs[0].as_mut_ptr() as *mut __m256i,
                _mm512_cvtepi32_epi16(hi),
            );
            _mm256_storeu_si256(
                pairs[1].as_mut_ptr() as *mut __m256i,
                _mm512_cvtepi32_epi16(lo),
            );
            for (i, (&a, &b)) in pairs[0].iter().zip(&pairs[1]).enumerate() {
                let p = 8 * c + i;
                out[p * 16 + h] = a;
                out[p * 16 + HS + h] = b;
            }
        }
    }
}

/// A thread's staging buffers, kept from task to task and step to step (a task can be a
/// single tile, and fresh buffers of this size cost a memset and page faults each time).
pub(super) struct Scratch {
    /// Staged K ([head][token][dk] bf16) where it is not tile-loaded in place.
    kst: Aligned,
    /// V in token pairs ([head][32-token step][16-dim block] B tiles).
    vv: Aligned,
    /// P's A tiles, one a 32-token step.
    pa: Aligned,
    /// The scores, then P in token pairs: [token][16] f32.
    s: Aligned,
}

impl Scratch {
    /// Sizes (in u16) of kst and vv for a point.
    fn sizes(w: &KvDecode) -> (usize, usize) {
        let k = if k_in_place(w) {
            0
        } else {
            w.kv_heads * TILE * w.head_dim_k
        };
        (k, w.kv_heads * 2 * w.head_dim_v / 16 * 512)
    }

    fn new(w: &KvDecode) -> Self {
        let (k, v) = Scratch::sizes(w);
        Scratch {
            kst: zeroed_u16(k),
            vv: zeroed_u16(v),
            pa: zeroed_u16(2 * 512),
            s: Aligned::zeroed(TILE * 16),
        }
    }

    fn fits(&self, w: &KvDecode) -> bool {
        let (k, v) = Scratch::sizes(w);
        self.kst.len() * 2 >= k && self.vv.len() * 2 >= v
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Scratch>> = const { std::cell::Cell::new(None) };
}

/// f with this thread's scratch, grown to fit w.
pub(super) fn with_scratch<R>(w: &KvDecode, f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut s = SCRATCH
        .take()
        .filter(|s| s.fits(w))
        .unwrap_or_else(|| Scratch::new(w));
    let r = f(&mut s);
    SCRATCH.set(Some(s));
    r
}

/// One KV head's online softmax over a chunk: m and l as [8 heads | the same 8] (the
/// layout of a token pair's scores), acc as [hi rows 0-7, lo rows 8-15][dv] f32 in the
/// permuted dim order.
struct Head {
    m: [f32; 16],
    l: [f32; 16],
    acc: Aligned,
}

/// One (sequence, chunk) task: the online-softmax partial of every KV head, in head order.
/// Tiles outer, heads inner, so the thread reads each cache page whole.
///
/// # Safety
/// `amx::permitted()` must be Ok and the CPU must have AVX-512 F/BW/BF16; `fits(w)` and
/// kv_amx's `covers(w)`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn task(
    cx: &GqaCtx,
    scratch: &mut Scratch,
    (b, c): (usize, usize),
) -> Vec<Partial> {
    let w = cx.w;
    let (gs, dk, dv, hkv) = (w.group_size(), w.head_dim_k, w.head_dim_v, w.kv_heads);
    let fold = w.scale * w.scales()[0];
    let split = w.math == Math::F32;
    let (fp8, esize) = (w.kv_dtype == DType::Fp8E4m3, w.kv_dtype.size());
    // SAFETY: the caller's contract (permission).
    let _tiles = unsafe { Tiles::configure(16, &[]) };
    let mut heads: Vec<Head> = (0..hkv)
        .map(|_| Head {
            m: [f32::NEG_INFINITY; 16],
            l: [0.0; 16],
            acc: Aligned::zeroed(16 * dv),
        })
        .collect();
    let (k_len, v_len) = (TILE * dk, 2 * dv / 16 * 512);
    let Scratch { kst, vv, pa, s } = scratch;
    let end = ((c + 1) * cx.chunk).min(w.context_lens[b]);
    // K tile-loaded where it lies, else staged.
    let direct = k_in_place(w);
    for t0 in (c * cx.chunk..end).step_by(TILE) {
        let n = TILE.min(end - t0);
        // Row t of the tile (rows past n repeat the last one: their P is zero) is token slot
        // slots[t] + g of the cache.
        let slots: [usize; TILE] = tile_slots(w, cx.table, b, t0, end);
        // The next tile's slots, whose rows are asked for while this one is staged.
        let next: Option<[usize; TILE]> =
            (t0 + TILE < end).then(|| tile_slots(w, cx.table, b, t0 + TILE, end));
        // Every head's staged operands first, then each head's products: measured faster
        // than staging a head just before its products (the bench folder above). Staged 16
        // tokens at a time across every head, so each token's row is read in address order
        // (gqa-heads-inner/).
        let v_rows: Vec<_> = (0..hkv)
            .map(|g| rows(cx.v, &slots, g, dv * esize))
            .collect();
        let k_rows: Vec<_> = if direct {
            Vec::new()
        } else {
            (0..hkv)
                .map(|g| rows(cx.k, &slots, g, dk * esize))
                .collect()
        };
        for t16 in (0..n.next_multiple_of(32)).step_by(16) {
            for g in 0..hkv {
                let vv = &mut as_u16(vv)[g * v_len..];
                // SAFETY: every row pointer holds dk (dv) values (`rows` asserts it); the
                // buffers hold hkv tiles' worth (kst where K is staged); the caller's contract.
                unsafe {
                    if !direct && t16 < n.next_multiple_of(16) {
                        let kst = &mut as_u16(kst)[g * k_len..];
                        if fp8 {
                            stage_k::<true>(&k_rows[g], t16, dk, kst);
                        } else {
                            stage_k::<false>(&k_rows[g], t16, dk, kst);
                        }
                    }
                    if fp8 {
                        stage_v::<true>(&v_rows[g], t16, dv, vv);
                    } else {
                        stage_v::<false>(&v_rows[g], t16, dv, vv);
                    }
                    // K staged (fp8; bf16 on pages not whole 16s): the next tile's K and V
                    // rows asked for now. Where K is read in place (bf16), asking for its
                    // rows or V's was measured slower (bench/2026-12-07-cpu-xeon-amx/
                    // gqa-prefetch/).
                    if let Some(next) = next.as_ref().filter(|_| !direct && t16 < TILE) {
                        for &slot in &next[t16..t16 + 16] {
                            prefetch_span(cx.k, (slot + g) * dk * esize, dk * esize);
                            prefetch_span(cx.v, (slot + g) * dv * esize, dv * esize);
                        }
                    }
                }
            }
        }
        for (g, h) in heads.iter_mut().enumerate() {
            // SAFETY: the buffers are laid out as staged above; the caller's contract.
            unsafe {
                let qt = &cx.qt[(b * hkv + g) * cx.qt_len / 2..];
                let ks = if direct {
                    (k_blocks(cx.k, &slots, n, (g, hkv, dk)), hkv * dk * 2)
                } else {
                    let base = kst.as_ptr() as *const u16;
                    (
                        std::array::from_fn(|tb| base.wrapping_add(g * k_len + tb * 16 * dk)),
                        2 * dk,
                    )
                };
                scores(n, dk, qt, ks, s);
                softmax(n, fold, s, h);
                p_tiles(n, split, s, as_u16(pa));
                pv(n, dv, pa, &vv[g * v_len / 2..], &mut h.acc);
            }
        }
    }
    heads
        .into_iter()
        .enumerate()
        .map(|(g, h)| Partial {
            b,
            g,
            m: h.m[..gs].to_vec(),
            l: h.l[..gs].to_vec(),
            acc: unpermuted(&h.acc, gs, dv),
        })
        .collect()
}

/// The first gs heads' outputs from the accumulator: hi row + lo row, dims in order (a 32-dim
/// block's two sums gathered by one two-source permute each).
fn unpermuted(acc: &[f32], gs: usize, dv: usize) -> Vec<f32> {
    let at: [u32; 32] = std::array::from_fn(|d| permuted(d) as u32);
    let mut out = vec![0f32; gs * dv];
    assert!(acc.len() >= (HS + gs) * dv && dv.is_multiple_of(32));
    // SAFETY: the amx path runs only where AVX-512 F is (its caller); every load and store
    // is 16 values inside a 32-dim block of acc's or out's rows (asserted above).
    unsafe { unpermute_rows(acc, &at, gs, dv, &mut out) };
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn unpermute_rows(acc: &[f32], at: &[u32; 32], gs: usize, dv: usize, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        let idx = [
            _mm512_loadu_si512(at.as_ptr() as *const __m512i),
            _mm512_loadu_si512(at[16..].as_ptr() as *const __m512i),
        ];
        for j in 0..gs {
            let (hi, lo) = (acc.as_ptr().add(j * dv), acc.as_ptr().add((HS + j) * dv));
            for b in (0..dv).step_by(32) {
                let sum = |o: usize| {
                    _mm512_add_ps(
                        _mm512_loadu_ps(hi.add(b + o)),
                        _mm512_loadu_ps(lo.add(b + o)),
                    )
                };
                let (s0, s1) = (sum(0), sum(16));
                for (half, idx) in idx.iter().enumerate() {
                    let v = _mm512_permutex2var_ps(s0, *idx, s1);
                    _mm512_storeu_ps(out.as_mut_ptr().add(j * dv + b + 16 * half), v);
                }
            }
        }
    }
}

/// Where dim d sits in a row of the accumulator (see `stage_v`).
fn permuted(d: usize) -> usize {
    let r = d % 32;
    d - r + (r % 8) / 4 * 16 + r / 8 * 4 + r % 4
}

/// kst[t][dk] = the tile's K rows as bf16, for the 16 tokens from t16.
#[inline(always)]
unsafe fn stage_k<const FP8: bool>(k: &[*const u8; TILE], t16: usize, dk: usize, kst: &mut [u16]) {
    let step = if FP8 { 32 } else { 64 };
    // SAFETY: rows hold dk values; kst holds TILE rows of dk.
    unsafe {
        for (t, row) in k.iter().enumerate().skip(t16).take(16) {
            for s in 0..dk / 32 {
                let dst = kst.as_mut_ptr().add(t * dk + s * 32) as *mut __m512i;
                _mm512_storeu_si512(dst, load32::<FP8>(row.add(s * step)));
            }
        }
    }
}

/// vv[kt][16-dim block][16 token pairs][16 dims][2]: V as the B operand of P . V, for the
/// 16 tokens from t16 (the tile's 32-token steps are staged 16 tokens at a time). `vpunpcklwd` pairs dims 0-3 of each 128-bit lane,
/// `vpunpckhwd` dims 4-7: a 32-dim block's first tile takes dims 0-3, 8-11, 16-19, 24-27
/// and its second the rest (`permuted`).
#[inline(always)]
unsafe fn stage_v<const FP8: bool>(v: &[*const u8; TILE], t16: usize, dv: usize, vv: &mut [u16]) {
    let step = if FP8 { 32 } else { 64 };
    let blocks = dv / 16;
    // SAFETY: rows hold dv values; vv holds 2 x blocks tiles of 512.
    unsafe {
        let base = vv.as_mut_ptr();
        for r in t16 / 2..t16 / 2 + 8 {
            let (kt, rr) = (r / 16, r % 16);
            let dst = |blk: usize| base.add(((kt * blocks + blk) * 16 + rr) * 32);
            for c in 0..dv / 32 {
                let a = load32::<FP8>(v[2 * r].add(c * step));
                let b = load32::<FP8>(v[2 * r + 1].add(c * step));
                _mm512_storeu_si512(dst(2 * c) as *mut __m512i, _mm512_unpacklo_epi16(a, b));
                _mm512_storeu_si512(dst(2 * c + 1) as *mut __m512i, _mm512_unpackhi_epi16(a, b));
            }
        }
    }
}

/// s[token][hi 0-7, lo 8-15] = k_token . q (unscaled) for the 16-token blocks holding the n
/// tokens: per 32-dim step one Q^T tile (tiles 6 and 7 in turn) against each block's K
/// (tiles 4 and 5 in turn), into C tiles 0-3.
#[inline(always)]
unsafe fn scores(
    n: usize,
    dk: usize,
    qt: &[f32],
    (kb, stride): ([*const u16; 4], usize),
    s: &mut [f32],
) {
    let qt = qt.as_ptr() as *const u16;
    let blocks = n.div_ceil(16);
    let a = |tb: usize, k: usize| kb[tb].wrapping_add(k * 32);
    // SAFETY: tiles read inside qt and kst as laid out in `GqaCtx::new` and `stage_k`; C rows
    // stored inside s's TILE rows of 16.
    unsafe {
        tile_zero!(0);
        tile_zero!(1);
        tile_zero!(2);
        tile_zero!(3);
        // One 32-dim step with Q^T in tile $q (asm names tiles by literal).
        macro_rules! step {
            ($q:literal, $k:expr) => {
                tile_load!($q, qt.add($k * 512), 64usize);
                tile_load!(4, a(0, $k), stride);
                tile_dp!(0, 4, $q);
                if blocks > 1 {
                    tile_load!(5, a(1, $k), stride);
                    tile_dp!(1, 5, $q);
                }
                if blocks > 2 {
                    tile_load!(4, a(2, $k), stride);
                    tile_dp!(2, 4, $q);
                }
                if blocks > 3 {
                    tile_load!(5, a(3, $k), stride);
                    tile_dp!(3, 5, $q);
                }
            };
        }
        for k in 0..dk / 32 {
            if k % 2 == 0 {
                step!(6, k);
            } else {
                step!(7, k);
            }
        }
        store_token_blocks(s.as_mut_ptr(), blocks);
    }
}

/// The online softmax over the tile's n tokens, on token pairs: s's rows 2i and 2i+1 (each
/// [hi | lo] partial scores) become row i, [P of token 2i | P of token 2i+1] for the 8 heads
/// (zero past n). m and l move on (l from P unrounded); the accumulator's rows are rescaled
/// when their head's max moves.
#[inline(always)]
unsafe fn softmax(n: usize, fold: f32, s: &mut [f32], h: &mut Head) {
    type S = Avx512;
    let pairs = n.div_ceil(2);
    // SAFETY: s holds TILE rows of 16; acc 16 rows of a whole number of vectors.
    unsafe {
        let base = s.as_mut_ptr();
        let row = |i: usize| base.add(16 * i);
        let m_old = S::load(h.m.as_ptr());
        let mut mx = m_old;
        for i in 0..pairs {
            let (a, b) = (S::load(row(2 * i)), S::load(row(2 * i + 1)));
            let sum = S::add(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            );
            let mut x = S::mul(sum, S::splat(fold));
            if 2 * i + 1 >= n {
                x = _mm512_mask_mov_ps(x, 0xFF00, S::splat(f32::NEG_INFINITY));
            }
            mx = S::max(mx, x);
            S::store(row(i), x);
        }
        // Each head's max over both tokens of a pair: the two halves, swapped.
        mx = S::max(mx, _mm512_shuffle_f32x4::<0x4E>(mx, mx));
        let mut sum = S::splat(0.0);
        for i in 0..TILE / 2 {
            let e = if i < pairs {
                let e = S::exp(S::sub(S::load(row(i)), mx));
                if 2 * i + 1 >= n {
                    _mm512_maskz_mov_ps(0x00FF, e)
                } else {
                    e
                }
            } else {
                S::splat(0.0)
            };
            sum = S::add(sum, e);
            S::store(row(i), e);
        }
        sum = S::add(sum, _mm512_shuffle_f32x4::<0x4E>(sum, sum));
        let corr = S::exp(S::sub(m_old, mx));
        S::store(h.l.as_mut_ptr(), S::fma(S::load(h.l.as_ptr()), corr, sum));
        S::store(h.m.as_mut_ptr(), mx);
        let moved = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(corr, S::splat(1.0));
        if moved != 0 {
            let mut c = [0f32; 16];
            S::store(c.as_mut_ptr(), corr);
            let dv = h.acc.len() / 16;
            for (r, row) in h.acc.chunks_exact_mut(dv).enumerate() {
                let c = S::splat(c[r % HS]);
                for d in (0..dv).step_by(16) {
                    let p = row.as_mut_ptr().add(d);
                    S::store(p, S::mul(S::load(p), c));
                }
            }
        }
    }
}

/// P as A tiles: pa[32-token step][hi rows 0-7, lo rows 8-15][16 token pairs][2]. Each pair
/// row of s gives one column of the tile (`vpermw`: dword j = head slot j's two tokens),
/// and a 16 x 16 transpose of dwords turns the columns into rows.
#[inline(always)]
unsafe fn p_tiles(n: usize, split: bool, s: &[f32], pa: &mut [u16]) {
    // Dword j of a column: words (j, 8 + j) of [hi of both tokens | lo of both] for the hi
    // rows, (8 + j, 16 + j) for the lo rows.
    let idx: [i16; 32] = std::array::from_fn(|w| {
        let (j, second) = (w / 2, w % 2);
        (if j < 8 {
            j + 8 * second
        } else {
            8 + j + 8 * second
        }) as i16
    });
    // SAFETY: s holds TILE / 2 pair rows of 16; pa two tiles of 512.
    unsafe {
        let idx = _mm512_loadu_si512(idx.as_ptr() as *const __m512i);
        for kt in 0..n.div_ceil(32) {
            let mut col = [_mm512_setzero_si512(); 16];
            for (i, col) in col.iter_mut().enumerate() {
                let p = _mm512_loadu_ps(s.as_ptr().add(16 * (kt * 16 + i)));
                let hi = _mm512_cvtneps_pbh(p);
                let lo = if split {
                    let back = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                        transmute_bh(hi),
                    )));
                    transmute_bh(_mm512_cvtneps_pbh(_mm512_sub_ps(p, back)))
                } else {
                    _mm256_setzero_si256()
                };
                let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(transmute_bh(hi)), lo);
                *col = _mm512_permutexvar_epi16(idx, both);
            }
            let rows = transpose16(col);
            for (r, v) in rows.iter().enumerate() {
                _mm512_storeu_si512(pa.as_mut_ptr().add(kt * 512 + r * 32) as *mut __m512i, *v);
            }
        }
    }
}

/// acc[16 rows][dv] += P . V over the 32-token steps holding the n tokens: P's tiles stay in
/// tiles 1 and 2; per 16-dim block a C tile (0 and 5 in turn) is loaded, takes one or two
/// products, and is stored.
#[inline(always)]
unsafe fn pv(n: usize, dv: usize, pa: &Aligned, vv: &[f32], acc: &mut Aligned) {
    let (pa, vv) = (pa.as_ptr() as *const u16, vv.as_ptr() as *const u16);
    let blocks = dv / 16;
    let two = n > 32;
    let stride = 4 * dv;
    let b = |kt: usize, blk: usize| vv.wrapping_add((kt * blocks + blk) * 512);
    // SAFETY: tiles inside pa and vv as laid out in `p_tiles` and `stage_v`; C tiles of 16
    // rows x 16 dims inside acc.
    unsafe {
        tile_load!(1, pa, 64usize);
        if two {
            tile_load!(2, pa.add(512), 64usize);
        }
        // One 16-dim block in C tile $c with V's tiles $b0, $b1 (asm names tiles by literal).
        macro_rules! block {
            ($c:literal, $b0:literal, $b1:literal, $blk:expr) => {
                let cp = acc.as_mut_ptr().add($blk * 16);
                tile_load!($c, cp, stride);
                tile_load!($b0, b(0, $blk), 64usize);
                tile_dp!($c, 1, $b0);
                if two {
                    tile_load!($b1, b(1, $blk), 64usize);
                    tile_dp!($c, 2, $b1);
                }
                tile_store!($c, cp, stride);
            };
        }
        for blk in 0..blocks {
            if blk % 2 == 0 {
                block!(0, 3, 4, blk);
            } else {
                block!(5, 6, 7, blk);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::permuted;

    /// The accumulator's order is a permutation of each 32-dim block, matching the unpacks:
    /// tile 2c's column 4L + j is dim 8L + j, tile 2c + 1's is dim 8L + 4 + j.
    #[test]
    fn permuted_is_the_unpack_order() {
        let mut seen = [false; 64];
        for d in 0..64 {
            let p = permuted(d);
            assert!(p / 32 == d / 32 && !seen[p], "dim {d} -> {p}");
            seen[p] = true;
        }
        assert_eq!(permuted(3), 3);
        assert_eq!(permuted(4), 16);
        assert_eq!(permuted(8), 4);
        assert_eq!(permuted(13), 21);
        assert_eq!(permuted(31), 31);
        assert_eq!(permuted(35), 35);
    }
}
