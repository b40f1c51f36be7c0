//! kv_decode on AMX tiles, for bf16 caches (and fp8, converted to bf16 exactly as the
//! operands are built): the cache's values are the tile operands, so MLA's 16-128 heads a
//! row serves cost the tile unit, not the FMA ports. This kernel takes MLA and groups of
//! more than 8 heads; GQA's groups of up to 8 take kv_amx_gqa.rs, which fills a tile's 16
//! rows with 8 heads' hi and lo halves instead of padding. Per task (one chunk of one
//! sequence), per KV head, per 64-token tile:
//! - K^T in VNNI pairs (16 x 16 transposes of 32-bit (d, d+1) pairs), built once a tile
//!   and shared by every head;
//! - S[heads x tokens] = Q . K^T: A is q, one tile per 32 dims, `hi` and `lo` bf16 halves
//!   at `math: f32` (q = hi + lo keeps f32-grade scores; the cache's values are exact);
//!   or, for one block of exactly 16 heads over bf16 pages of whole 16-token blocks (MLA's
//!   16 heads), S^T = K . Q^T with K's rows tile-loaded where they lie and Q^T's hi and lo
//!   as B tiles, no K^T built (bench/2026-12-07-cpu-xeon-amx/mla-scores-transposed/);
//! - the online softmax per head along its tokens (AVX-512), P written as the next A
//!   operand, split hi + lo the same way;
//! - V in VNNI pairs of tokens (one `vpermt2w` per 16 dims and pair), then
//!   acc[heads x dv] += P . V on C tiles loaded from and stored to the accumulator.
//!
//! Partials come out per (sequence, KV head, chunk) and merge as simple's do.

use super::amx::{Tiles, tile_dp, tile_load, tile_store, tile_zero};
use super::kv::{chunk_tokens, tile_slots};
use super::simd::{Aligned, Avx512, Simd};
use crate::backend::cpu::kernels::Partial;
use crate::workload::{DType, KvDecode, Math};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Tokens per tile: four 16-token blocks of scores, two 32-token steps of PV.
pub(super) const TILE: usize = 64;

/// Whether the AMX kernel runs this point, or why not.
pub fn covers(w: &KvDecode) -> Result<(), String> {
    if !matches!(w.kv_dtype, DType::Bf16 | DType::Fp8E4m3) {
        return Err(format!(
            "amx reads bf16 caches (and fp8, exactly converted to bf16), not {}",
            w.kv_dtype
        ));
    }
    if !w.head_dim_k.is_multiple_of(32) || !w.head_dim_v.is_multiple_of(64) {
        return Err(format!(
            "amx needs K dims in multiples of 32 and V dims of 64, not {}/{}",
            w.head_dim_k, w.head_dim_v
        ));
    }
    Ok(())
}

/// What every task of one step reads.
pub(super) struct AmxCtx<'a> {
    pub w: &'a KvDecode,
    sh: Shape,
    /// Every (sequence, KV head)'s q heads as A tiles (`q_tiles`), `q_len` bf16 each.
    qa: Aligned,
    q_len: usize,
    /// Where `transposed(w)`: every (sequence, KV head)'s Q^T as B tiles, `q_len` bf16 each
    /// ([k step][hi, lo][16 dim pairs][16 heads][2]); else empty.
    qb: Aligned,
    pub k: &'a [u8],
    pub v: Option<&'a [u8]>,
    pub table: &'a [i32],
    pub chunk: usize,
}

impl<'a> AmxCtx<'a> {
    pub fn new(
        w: &'a KvDecode,
        q: &[f32],
        (k, v): (&'a [u8], Option<&'a [u8]>),
        table: &'a [i32],
    ) -> Self {
        let gs = w.group_size();
        let sh = Shape {
            gs,
            hb: gs.div_ceil(16),
            ks: w.head_dim_k / 32,
            db: w.head_dim_v / 16,
            dk: w.head_dim_k,
            dv: w.head_dim_v,
            split: w.math == Math::F32,
        };
        let q_len = sh.hb * sh.ks * 2 * 512;
        let mut qa = zeroed_u16(w.batch * w.kv_heads * q_len);
        as_u16(&mut qa)
            .par_chunks_mut(q_len)
            .enumerate()
            .for_each(|(bg, out)| {
                let heads = &q[bg * gs * sh.dk..(bg + 1) * gs * sh.dk];
                q_tiles(sh, w.math, heads, out);
            });
        let mut qb = zeroed_u16(if transposed(w) { qa.len() * 2 } else { 0 });
        if transposed(w) {
            let a = bytemuck::cast_slice::<f32, u16>(&qa[..]);
            for (bg, out) in as_u16(&mut qb).chunks_exact_mut(q_len).enumerate() {
                for (t, tile) in out.chunks_exact_mut(512).enumerate() {
                    let from = &a[bg * q_len + t * 512..][..512];
                    for (i, x) in tile.iter_mut().enumerate() {
                        let (p, h, e) = (i / 32, i / 2 % 16, i % 2);
                        *x = from[h * 32 + 2 * p + e];
                    }
                }
            }
        }
        AmxCtx {
            w,
            sh,
            qa,
            q_len,
            qb,
            k,
            v,
            table,
            chunk: chunk_tokens(w, TILE),
        }
    }
}

/// Whether the scores come as S^T = K . Q^T, K's rows tile-loaded where they lie (no K^T to
/// build): one block of 16 heads (the C and A tiles' rows serve tokens in the scores and heads
/// in P . V), and K where tiles can load it (`k_in_place`).
fn transposed(w: &KvDecode) -> bool {
    w.group_size() == 16 && k_in_place(w)
}

/// Whether K's rows can be A tiles where they lie: bf16 in pages of whole 16-token blocks (a
/// block's rows are one stride apart; rows past the context are the page's next slots,
/// masked by the softmax); otherwise a kernel stages or transposes them.
pub(super) fn k_in_place(w: &KvDecode) -> bool {
    w.kv_dtype == DType::Bf16 && w.page_size.is_multiple_of(16)
}

/// Where `k_in_place`: the first rows of the tile's 16-token blocks of head g (block tb's
/// 16 rows are then one token's `kv_heads` rows apart, `hkv * dk * 2` bytes), blocks past
/// the n tokens starting at the last token's. Asserts every head's blocks lie inside K.
pub(super) fn k_blocks(
    k: &[u8],
    slots: &[usize; TILE],
    n: usize,
    (g, hkv, dk): (usize, usize, usize),
) -> [*const u16; 4] {
    for tb in 0..n.div_ceil(16) {
        // The block's last row: 15 tokens on, the last head.
        assert!(
            (slots[16 * tb] + 16 * hkv) * dk * 2 <= k.len(),
            "K block out of its tensor"
        );
    }
    let base = k.as_ptr() as *const u16;
    std::array::from_fn(|tb| base.wrapping_add((slots[(16 * tb).min(n - 1)] + g) * dk))
}

/// bf16 by round-to-nearest-even.
pub(super) fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A zeroed buffer of u16 starting on a cache line (tile rows are 64 bytes).
pub(super) fn zeroed_u16(n: usize) -> Aligned {
    Aligned::zeroed(n.div_ceil(2))
}

pub(super) fn as_u16(a: &mut Aligned) -> &mut [u16] {
    bytemuck::cast_slice_mut(&mut a[..])
}

/// The sizes one task works in.
#[derive(Clone, Copy)]
struct Shape {
    gs: usize,
    /// Head blocks of 16 (a tile's rows).
    hb: usize,
    /// 32-dim steps of K.
    ks: usize,
    /// 16-dim blocks of V.
    db: usize,
    dk: usize,
    dv: usize,
    /// q and P as hi + lo (`math: f32`), or hi alone (`math: bf16`, exact).
    split: bool,
}

/// One KV head's online softmax over a chunk.
struct Head {
    m: Vec<f32>,
    l: Vec<f32>,
    /// [heads (padded to 16)][dv] f32.
    acc: Aligned,
}

/// One (sequence, chunk) task: the online-softmax partial of every KV head, in head order.
/// Tiles outer, heads inner, so the thread reads each cache page whole (a token's heads are
/// contiguous) and the prefetcher streams it.
///
/// # Safety
/// `amx::permitted()` must be Ok and the CPU must have AVX-512 F/BW/BF16; `covers(w)`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn task(cx: &AmxCtx, (b, c): (usize, usize)) -> Vec<Partial> {
    let (w, sh, gs) = (cx.w, cx.sh, cx.sh.gs);
    let hp = sh.hb * 16;
    let fold = w.scale * w.scales()[0];
    let (fp8, esize) = (w.kv_dtype == DType::Fp8E4m3, w.kv_dtype.size());
    // C (0-3) and A (4, 5: q's or P's lo half, or a second head block's) tiles hold heads:
    // min(16, gs) rows; B (6, 7) 16.
    // SAFETY: the caller's contract (permission).
    let _tiles = unsafe { Tiles::configure(gs.min(16), &[0, 1, 2, 3, 4, 5]) };
    let mut heads: Vec<Head> = (0..w.kv_heads)
        .map(|_| Head {
            m: vec![f32::NEG_INFINITY; hp],
            l: vec![0f32; hp],
            acc: Aligned::zeroed(hp * sh.dv),
        })
        .collect();
    let hkv = w.kv_heads;
    let (kt_len, vv_len) = (4 * sh.ks * 512, sh.db * 32 * 32);
    let st_path = transposed(w);
    // K^T, where the scores take it.
    let mut kt = zeroed_u16(if st_path { 0 } else { hkv * kt_len });
    let mut vv = zeroed_u16(hkv * vv_len);
    let mut pa = zeroed_u16(sh.hb * 2 * 2 * 512);
    let mut s = Aligned::zeroed(hp * TILE);
    let mut st = Aligned::zeroed(if st_path { TILE * 16 } else { 0 });
    let end = ((c + 1) * cx.chunk).min(w.context_lens[b]);
    for t0 in (c * cx.chunk..end).step_by(TILE) {
        let n = TILE.min(end - t0);
        // Row t of the tile (rows past n repeat the last one: their P is zero) is token slot
        // slots[t] + g of the cache, each slot a token's kv_heads rows.
        let slots: [usize; TILE] = tile_slots(w, cx.table, b, t0, end);
        // Every head's operands first, so the tile's pages are read in one pass (a token's
        // heads are contiguous), then each head's tile products from L2.
        let (kt16, vv16) = (as_u16(&mut kt), as_u16(&mut vv));
        for g in 0..hkv {
            let k_rows = rows(cx.k, &slots, g, sh.dk * esize);
            // MLA: V is the latent's first dv values of each row.
            let v_rows = match cx.v {
                Some(v) => rows(v, &slots, g, sh.dv * esize),
                None => k_rows,
            };
            // SAFETY: every row pointer holds dk (dv) bf16 values (`rows` asserts it); the
            // buffers hold hkv of each.
            unsafe {
                if fp8 {
                    k_transposed::<true>(&k_rows, sh.ks, &mut kt16[g * kt_len..]);
                    v_pairs::<true>(&v_rows, sh.dv, &mut vv16[g * vv_len..]);
                } else {
                    if !st_path {
                        k_transposed::<false>(&k_rows, sh.ks, &mut kt16[g * kt_len..]);
                    }
                    v_pairs::<false>(&v_rows, sh.dv, &mut vv16[g * vv_len..]);
                }
            }
        }
        for (g, h) in heads.iter_mut().enumerate() {
            // SAFETY: the buffers are sized for sh above; the caller's contract.
            unsafe {
                if st_path {
                    let kb = k_blocks(cx.k, &slots, n, (g, hkv, sh.dk));
                    let qb = cx.qb[(b * hkv + g) * cx.q_len / 2..].as_ptr() as *const u16;
                    scores_t(sh, n, qb, (kb, hkv * sh.dk * 2), &mut st, &mut s);
                } else {
                    let qa = &cx.qa[(b * hkv + g) * cx.q_len / 2..];
                    scores(sh, qa, &kt[g * kt_len / 2..], &mut s);
                }
                softmax(sh, (n, fold), &mut s, (&mut h.m, &mut h.l), &mut h.acc);
                p_tiles(sh, &s, as_u16(&mut pa));
                pv(sh, n, &pa, &vv[g * vv_len / 2..], &mut h.acc);
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
            acc: h.acc[..gs * sh.dv].to_vec(),
        })
        .collect()
}

/// One KV head's q heads (gs rows of dk) as A tiles: [head block][k step][hi, lo][16
/// heads][32 dims], after math's rounding (the softmax scale is applied to the scores, so
/// at `math: bf16` lo is 0). `out` is zeroed: padded heads stay 0.
fn q_tiles(sh: Shape, math: Math, heads: &[f32], out: &mut [u16]) {
    for (h, row) in heads.chunks_exact(sh.dk).enumerate() {
        for (k, dims) in row.chunks_exact(32).enumerate() {
            let at = (((h / 16) * sh.ks + k) * 2 * 16 + h % 16) * 32;
            let (hi, lo) = out[at..at + 512 + 32].split_at_mut(512);
            for ((x, hi), lo) in dims.iter().zip(&mut hi[..32]).zip(&mut lo[..32]) {
                let x = math.operand(*x);
                *hi = bf16_bits(x);
                *lo = bf16_bits(x - f32::from_bits((*hi as u32) << 16));
            }
        }
    }
}

/// The tile's row pointers for KV head g in a cache tensor of `row`-byte rows.
pub(super) fn rows(bytes: &[u8], slots: &[usize; TILE], g: usize, row: usize) -> [*const u8; TILE] {
    let last = slots.iter().max().unwrap_or(&0) + g;
    assert!((last + 1) * row <= bytes.len(), "row out of its tensor");
    // SAFETY: every row lies inside `bytes` (asserted for the furthest).
    std::array::from_fn(|t| unsafe { bytes.as_ptr().add((slots[t] + g) * row) })
}

/// 32 cache values at `p` as 32 bf16: bf16 as stored; fp8 e4m3 by its bits, exactly (3
/// mantissa bits and exponents 2^-9..2^8 fit bf16): a normal code's exponent and mantissa
/// shifted into place with the bias moved by 120, a subnormal's (and zero's) magnitude from
/// a table of its 8 values, then the sign. The NaN codes read as 480 (their bits as a
/// normal), as the other vector paths read them.
#[inline(always)]
pub(super) unsafe fn load32<const FP8: bool>(p: *const u8) -> __m512i {
    // bf16 of m x 2^-9, m = 0..7 (fp8's subnormals), at the table's first 8 entries.
    const SUB: [u16; 32] = {
        let mut t = [0u16; 32];
        t[1] = 0x3B00;
        t[2] = 0x3B80;
        t[3] = 0x3BC0;
        t[4] = 0x3C00;
        t[5] = 0x3C20;
        t[6] = 0x3C40;
        t[7] = 0x3C60;
        t
    };
    // SAFETY: the caller's row holds 32 values at p; AVX-512 F/BW (the caller's).
    unsafe {
        if FP8 {
            let b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p as *const __m256i));
            let mag = _mm512_and_si512(b, _mm512_set1_epi16(0x7F));
            let normal = _mm512_add_epi16(_mm512_slli_epi16::<4>(mag), _mm512_set1_epi16(0x3C00));
            // Exponent bits zero: a subnormal or zero, its magnitude by its low 3 bits (vpermw
            // reads 5; the two above them are the exponent's, zero here).
            let sub = _mm512_testn_epi16_mask(b, _mm512_set1_epi16(0x78));
            let table = _mm512_loadu_si512(SUB.as_ptr() as *const __m512i);
            let v = _mm512_mask_mov_epi16(normal, sub, _mm512_permutexvar_epi16(b, table));
            // v | (b << 8) & 0x8000: the sign.
            _mm512_ternarylogic_epi32::<0xEA>(
                _mm512_slli_epi16::<8>(b),
                _mm512_set1_epi16(0x8000u16 as i16),
                v,
            )
        } else {
            _mm512_loadu_si512(p as *const __m512i)
        }
    }
}

/// kt[token block][k step] = 16 rows (dim pairs) x 16 tokens x 2: the B operand of
/// S = Q . K^T, by 16 x 16 transposes of the rows' 32-bit pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn k_transposed<const FP8: bool>(k: &[*const u8; TILE], ks: usize, kt: &mut [u16]) {
    let step = if FP8 { 32 } else { 64 };
    for tb in 0..TILE / 16 {
        for s in 0..ks {
            // SAFETY: each row holds ks x 32 bf16 values; kt holds 4 x ks tiles of 512.
            unsafe {
                let mut r = [_mm512_setzero_si512(); 16];
                for (i, r) in r.iter_mut().enumerate() {
                    *r = load32::<FP8>(k[tb * 16 + i].add(s * step));
                }
                let out = transpose16(r);
                let dst = kt.as_mut_ptr().add((tb * ks + s) * 512);
                for (j, o) in out.iter().enumerate() {
                    _mm512_storeu_si512(dst.add(j * 32) as *mut __m512i, *o);
                }
            }
        }
    }
}

/// A 16 x 16 transpose of 32-bit elements: out[j] lane i = r[i] lane j.
#[inline(always)]
pub(super) unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // SAFETY: register shuffles only; the caller has AVX-512F.
    unsafe {
        let mut t = [_mm512_setzero_si512(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
        }
        // u[4k + j], 128-bit lane L: element 4L + j of rows 4k..4k+3.
        let mut u = [_mm512_setzero_si512(); 16];
        for k in 0..4 {
            u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
            u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let v0 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let w0 = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
            let v1 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let w1 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(v0, v1);
            out[8 + j] = _mm512_shuffle_i32x4::<0xDD>(v0, v1);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(w0, w1);
            out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(w0, w1);
        }
        out
    }
}

/// C tiles 0-3 += two head blocks' A tiles (4, 5) x two B tiles (6, 7): the B pair loaded
/// once for every A half (q's or P's hi and lo: `part` in 0..parts), each A tile then feeding
/// two products; the four C tiles take turns.
macro_rules! dp_2x2 {
    ($b0:expr, $b1:expr, $parts:expr, |$part:ident| $a0:expr, $a1:expr) => {
        tile_load!(6, $b0, 64usize);
        tile_load!(7, $b1, 64usize);
        for $part in 0..$parts {
            tile_load!(4, $a0, 64usize);
            tile_dp!(0, 4, 6);
            tile_dp!(1, 4, 7);
            tile_load!(5, $a1, 64usize);
            tile_dp!(2, 5, 6);
            tile_dp!(3, 5, 7);
        }
    };
}

/// C tiles 0-3 += one head block's A tile (4; with `split`, its lo half in 5 too) x four B
/// tiles, two at a time in 6 and 7, each pair serving both halves.
macro_rules! dp_1x4 {
    ($split:expr, $hi:expr, $lo:expr, |$j:ident| $b:expr) => {
        tile_load!(4, $hi, 64usize);
        if $split {
            tile_load!(5, $lo, 64usize);
        }
        dp_1x4!(@pair $split, 0, 1, |$j| $b);
        dp_1x4!(@pair $split, 2, 3, |$j| $b);
    };
    (@pair $split:expr, $c0:tt, $c1:tt, |$j:ident| $b:expr) => {
        {
            let $j = $c0;
            tile_load!(6, $b, 64usize);
        }
        {
            let $j = $c1;
            tile_load!(7, $b, 64usize);
        }
        tile_dp!($c0, 4, 6);
        tile_dp!($c1, 4, 7);
        if $split {
            tile_dp!($c0, 5, 6);
            tile_dp!($c1, 5, 7);
        }
    };
}

/// s[head][token] = q_head . k_token (unscaled) for the tile's 64 tokens. Four C tiles take
/// turns, so no `tdpbf16ps` waits on the one before it: two head blocks x two 16-token
/// blocks where the heads come in pairs of blocks (a tile load a product: a load costs about
/// three products), else one head block x the four token blocks.
#[inline(always)]
unsafe fn scores(sh: Shape, qa: &[f32], kt: &[f32], s: &mut [f32]) {
    let (qa, kt) = (qa.as_ptr() as *const u16, kt.as_ptr() as *const u16);
    let b = |tb: usize, k: usize| kt.wrapping_add((tb * sh.ks + k) * 512);
    let a = |hb: usize, k: usize, part: usize| qa.wrapping_add(((hb * sh.ks + k) * 2 + part) * 512);
    // SAFETY: tiles read inside qa and kt as laid out in `q_tiles` and `k_transposed`; C
    // rows (heads) stored inside s's hp rows of TILE.
    unsafe {
        if sh.hb.is_multiple_of(2) {
            for hb in (0..sh.hb).step_by(2) {
                for tb in (0..TILE / 16).step_by(2) {
                    tile_zero!(0);
                    tile_zero!(1);
                    tile_zero!(2);
                    tile_zero!(3);
                    for k in 0..sh.ks {
                        let parts = 1 + sh.split as usize;
                        dp_2x2!(
                            b(tb, k),
                            b(tb + 1, k),
                            parts,
                            |part| a(hb, k, part),
                            a(hb + 1, k, part)
                        );
                    }
                    let o = s.as_mut_ptr().add(hb * 16 * TILE + 16 * tb);
                    tile_store!(0, o, 4 * TILE);
                    tile_store!(1, o.add(16), 4 * TILE);
                    tile_store!(2, o.add(16 * TILE), 4 * TILE);
                    tile_store!(3, o.add(16 * TILE + 16), 4 * TILE);
                }
            }
            return;
        }
        for hb in 0..sh.hb {
            tile_zero!(0);
            tile_zero!(1);
            tile_zero!(2);
            tile_zero!(3);
            for k in 0..sh.ks {
                dp_1x4!(sh.split, a(hb, k, 0), a(hb, k, 1), |j| b(j, k));
            }
            let o = s.as_mut_ptr().add(hb * 16 * TILE);
            tile_store!(0, o, 4 * TILE);
            tile_store!(1, o.add(16), 4 * TILE);
            tile_store!(2, o.add(32), 4 * TILE);
            tile_store!(3, o.add(48), 4 * TILE);
        }
    }
}

/// C tiles 0 to blocks - 1 (at most 4: one per 16-token block, [16 tokens][16 f32]) to
/// `o`, one after another.
///
/// # Safety
/// o must hold blocks x 256 f32s; the tiles configured (16 rows of 64 bytes).
#[inline(always)]
pub(super) unsafe fn store_token_blocks(o: *mut f32, blocks: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        tile_store!(0, o, 64usize);
        if blocks > 1 {
            tile_store!(1, o.add(256), 64usize);
        }
        if blocks > 2 {
            tile_store!(2, o.add(512), 64usize);
        }
        if blocks > 3 {
            tile_store!(3, o.add(768), 64usize);
        }
    }
}

/// S^T for one block of 16 heads (`transposed`): C[token][head] += K's rows (A tiles, 16
/// tokens loaded where they lie) . Q^T (B tiles: hi, and lo at `math: f32`), for the token
/// blocks holding the n tokens, four C tiles taking turns; then each block transposed into
/// s[head][token].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn scores_t(
    sh: Shape,
    n: usize,
    qb: *const u16,
    (kb, stride): ([*const u16; 4], usize),
    st: &mut [f32],
    s: &mut [f32],
) {
    let blocks = n.div_ceil(16);
    let b = |k: usize, part: usize| qb.wrapping_add((k * 2 + part) * 512);
    // SAFETY: B tiles inside qb as `AmxCtx::new` lays them out; A tiles inside K (the
    // caller asserts each block's rows); C tiles stored inside st (TILE rows of 16) and s
    // written inside its 16 rows of TILE.
    unsafe {
        tile_zero!(0);
        tile_zero!(1);
        tile_zero!(2);
        tile_zero!(3);
        // Token block $tb of 32-dim step $k into C tile $c through A tile $a.
        macro_rules! block {
            ($c:literal, $a:literal, $tb:expr, $k:expr) => {
                if $tb < blocks {
                    tile_load!($a, kb[$tb].wrapping_add($k * 32), stride);
                    tile_dp!($c, $a, 6);
                    if sh.split {
                        tile_dp!($c, $a, 7);
                    }
                }
            };
        }
        for k in 0..sh.ks {
            tile_load!(6, b(k, 0), 64usize);
            if sh.split {
                tile_load!(7, b(k, 1), 64usize);
            }
            block!(0, 4, 0, k);
            block!(1, 5, 1, k);
            block!(2, 4, 2, k);
            block!(3, 5, 3, k);
        }
        store_token_blocks(st.as_mut_ptr(), blocks);
        for tb in 0..blocks {
            let mut r = [_mm512_setzero_si512(); 16];
            for t in 0..16 {
                r[t] = _mm512_loadu_si512(st.as_ptr().add((16 * tb + t) * 16) as *const __m512i);
            }
            let heads = transpose16(r);
            for h in 0..16 {
                let to = s.as_mut_ptr().add(h * TILE + 16 * tb);
                _mm512_storeu_si512(to as *mut __m512i, heads[h]);
            }
        }
    }
}

/// The online softmax of each head over the tile's n tokens: s becomes P (zero past n),
/// m and l move on (l from P unrounded), and a head's accumulator is rescaled when its max
/// moves. `math: bf16`'s rounding of P is `p_tiles`' conversion (nearest-even, as
/// `Math::operand`; P is 0 or at least e^-87, never subnormal).
#[inline(always)]
unsafe fn softmax(
    sh: Shape,
    (n, fold): (usize, f32),
    s: &mut [f32],
    (m, l): (&mut [f32], &mut [f32]),
    acc: &mut [f32],
) {
    type S = Avx512;
    // SAFETY: s holds hp rows of TILE values (4 vectors); acc hp rows of dv.
    unsafe {
        for j in 0..sh.gs {
            let row = s.as_mut_ptr().add(j * TILE);
            let mut v: [__m512; 4] = std::array::from_fn(|i| {
                let x = S::mul(S::load(row.add(16 * i)), S::splat(fold));
                let valid = (n.saturating_sub(16 * i)).min(16);
                _mm512_mask_mov_ps(S::splat(f32::NEG_INFINITY), ((1u32 << valid) - 1) as u16, x)
            });
            let mx = S::hmax(S::max(S::max(v[0], v[1]), S::max(v[2], v[3]))).max(m[j]);
            let mut sum = S::splat(0.0);
            for (i, x) in v.iter_mut().enumerate() {
                let valid = (n.saturating_sub(16 * i)).min(16);
                let e = S::exp(S::sub(*x, S::splat(mx)));
                *x = _mm512_maskz_mov_ps(((1u32 << valid) - 1) as u16, e);
                sum = S::add(sum, *x);
                S::store(row.add(16 * i), *x);
            }
            let corr = (m[j] - mx).exp();
            l[j] = l[j] * corr + S::hsum(sum);
            m[j] = mx;
            if corr != 1.0 {
                let a = acc.as_mut_ptr().add(j * sh.dv);
                for d in (0..sh.dv).step_by(16) {
                    S::store(a.add(d), S::mul(S::load(a.add(d)), S::splat(corr)));
                }
            }
        }
    }
}

/// P as A tiles: pa[head block][32-token step][hi, lo][16 heads][32 tokens].
#[inline(always)]
unsafe fn p_tiles(sh: Shape, s: &[f32], pa: &mut [u16]) {
    // SAFETY: s rows of TILE values; pa as laid out above.
    unsafe {
        for j in 0..sh.gs {
            for i in 0..TILE / 16 {
                let p = _mm512_loadu_ps(s.as_ptr().add(j * TILE + 16 * i));
                let hi = _mm512_cvtneps_pbh(p);
                let at = (((j / 16) * 2 + i / 2) * 2 * 16 + j % 16) * 32 + (i % 2) * 16;
                _mm256_storeu_si256(pa.as_mut_ptr().add(at) as *mut __m256i, transmute_bh(hi));
                if sh.split {
                    let back = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                        transmute_bh(hi),
                    )));
                    let lo = _mm512_cvtneps_pbh(_mm512_sub_ps(p, back));
                    _mm256_storeu_si256(
                        pa.as_mut_ptr().add(at + 512) as *mut __m256i,
                        transmute_bh(lo),
                    );
                }
            }
        }
    }
}

#[inline(always)]
pub(super) fn transmute_bh(x: __m256bh) -> __m256i {
    // SAFETY: both are 256 bits of plain data.
    unsafe { std::mem::transmute(x) }
}

/// vv[16-dim block][token pair][16 dims][2]: V as the B operand of P . V.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn v_pairs<const FP8: bool>(v: &[*const u8; TILE], dv: usize, vv: &mut [u16]) {
    let step = if FP8 { 32 } else { 64 };
    // Lane 2i takes a's element i (of 32), lane 2i + 1 b's: the first 16 dims, then the next.
    let lo: [i16; 32] = std::array::from_fn(|i| ((i / 2) + 32 * (i % 2)) as i16);
    let hi: [i16; 32] = std::array::from_fn(|i| (16 + (i / 2) + 32 * (i % 2)) as i16);
    // SAFETY: rows hold dv bf16 values; vv holds dv/16 blocks of 32 pairs of 32 values.
    unsafe {
        let (lo, hi) = (
            _mm512_loadu_si512(lo.as_ptr() as *const __m512i),
            _mm512_loadu_si512(hi.as_ptr() as *const __m512i),
        );
        for r in 0..TILE / 2 {
            for c in 0..dv / 32 {
                let a = load32::<FP8>(v[2 * r].add(c * step));
                let b = load32::<FP8>(v[2 * r + 1].add(c * step));
                let dst = vv.as_mut_ptr();
                let o0 = _mm512_permutex2var_epi16(a, lo, b);
                let o1 = _mm512_permutex2var_epi16(a, hi, b);
                _mm512_storeu_si512(dst.add(((2 * c) * 32 + r) * 32) as *mut __m512i, o0);
                _mm512_storeu_si512(dst.add(((2 * c + 1) * 32 + r) * 32) as *mut __m512i, o1);
            }
        }
    }
}

/// acc[heads][dv] += P . V for the tile (the second 32 tokens skipped when none is valid):
/// four C tiles at a time, taking turns as in `scores`: two head blocks x 32 value dims
/// where the heads come in pairs of blocks, else one head block x 64 dims.
#[inline(always)]
unsafe fn pv(sh: Shape, n: usize, pa: &[f32], vv: &[f32], acc: &mut [f32]) {
    let (pa, vv) = (pa.as_ptr() as *const u16, vv.as_ptr() as *const u16);
    let stride = 4 * sh.dv;
    let b = |db: usize, kt: usize| vv.wrapping_add((db * 32 + kt * 16) * 32);
    let a = |hb: usize, kt: usize, part: usize| pa.wrapping_add(((hb * 2 + kt) * 2 + part) * 512);
    // SAFETY: tiles inside pa and vv as laid out in `p_tiles` and `v_pairs`; C tiles of the
    // head block's rows x 16 dims inside acc (dv is a multiple of 64: `covers`).
    unsafe {
        if sh.hb.is_multiple_of(2) {
            for hb in (0..sh.hb).step_by(2) {
                for d0 in (0..sh.db).step_by(2) {
                    let cp = acc.as_mut_ptr().add(hb * 16 * sh.dv + d0 * 16);
                    let cq = cp.add(16 * sh.dv);
                    tile_load!(0, cp, stride);
                    tile_load!(1, cp.add(16), stride);
                    tile_load!(2, cq, stride);
                    tile_load!(3, cq.add(16), stride);
                    for kt in 0..1 + (n > 32) as usize {
                        let parts = 1 + sh.split as usize;
                        dp_2x2!(
                            b(d0, kt),
                            b(d0 + 1, kt),
                            parts,
                            |part| a(hb, kt, part),
                            a(hb + 1, kt, part)
                        );
                    }
                    tile_store!(0, cp, stride);
                    tile_store!(1, cp.add(16), stride);
                    tile_store!(2, cq, stride);
                    tile_store!(3, cq.add(16), stride);
                }
            }
            return;
        }
        for hb in 0..sh.hb {
            for d0 in (0..sh.db).step_by(4) {
                let cp = acc.as_mut_ptr().add(hb * 16 * sh.dv + d0 * 16);
                tile_load!(0, cp, stride);
                tile_load!(1, cp.add(16), stride);
                tile_load!(2, cp.add(32), stride);
                tile_load!(3, cp.add(48), stride);
                for kt in 0..1 + (n > 32) as usize {
                    dp_1x4!(sh.split, a(hb, kt, 0), a(hb, kt, 1), |j| b(d0 + j, kt));
                }
                tile_store!(0, cp, stride);
                tile_store!(1, cp.add(16), stride);
                tile_store!(2, cp.add(32), stride);
                tile_store!(3, cp.add(48), stride);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::load32;
    use crate::workload::DType;
    use std::arch::x86_64::__m512i;

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn bf16_of(codes: &[u8; 32]) -> [u16; 32] {
        // SAFETY: 32 readable bytes; the caller checked the features.
        unsafe { std::mem::transmute::<__m512i, [u16; 32]>(load32::<true>(codes.as_ptr())) }
    }

    /// Every fp8 e4m3 code (subnormals, zeros and both signs too) as the bf16 of its value,
    /// bit for bit; the NaN codes as +-480.
    #[test]
    fn fp8_codes_become_their_bf16() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            eprintln!("SKIPPED: fp8 to bf16 by bits: this CPU lacks avx512f/avx512bw");
            return;
        }
        for first in (0..256).step_by(32) {
            let codes: [u8; 32] = std::array::from_fn(|i| (first + i) as u8);
            // SAFETY: the features were checked above.
            let got = unsafe { bf16_of(&codes) };
            for (&c, &g) in codes.iter().zip(&got) {
                let mut v = [0f32];
                DType::Fp8E4m3.decode_slice(&[c], 0, &mut v);
                let want = if c & 0x7F == 0x7F {
                    if c & 0x80 != 0 { -480.0 } else { 480.0 }
                } else {
                    v[0]
                };
                let bf = half::bf16::from_f32(want);
                assert_eq!(
                    bf.to_f32().to_bits(),
                    want.to_bits(),
                    "code {c:#04x} fits bf16"
                );
                assert_eq!(g, bf.to_bits(), "code {c:#04x}: {g:#06x}, want {want}");
            }
        }
    }
}
