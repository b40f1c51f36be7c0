//! kv_decode on the vector paths. A task is one chunk of one sequence, every KV head of it,
//! so a thread reads each cache page whole (a token's heads are contiguous). Within a chunk,
//! 64-token tiles; per KV head:
//! - its K and V rows read where they lie (GQA, f32 or bf16), or decoded once into L1 tiles
//!   of f32 padded to whole vectors (fp8, MLA, odd dims);
//! - the group's scores, a head at a time, as 16 running dot products (one per token) folded
//!   by one shuffle tree into a vector of 16 scores;
//! - the softmax over that vector with a vector exp;
//! - PV in register blocks of 4 heads x 2-4 vectors of value dims.
//!
//! Rows read where they lie are taken 16 tokens at a time across every KV head, so each
//! token's row is read in address order and the hardware prefetcher, which works within a
//! page, sees it whole (bench/2026-12-07-cpu-xeon-amx/gqa-heads-inner/). 2-byte rows also
//! ask for the rows 16 tokens on, and the L1-tile paths for the next tile's, as they go
//! (gqa-prefetch/).
//!
//! Partials come out per (sequence, KV head, chunk) and merge as simple's do.

use super::simd::{Aligned, Simd, decode_row, prefetch_l2, prefetch_span};
use crate::backend::cpu::kernels::Partial;
use crate::workload::{DType, KvDecode, Math};

/// Tokens per tile: what a tile costs per head (its softmax, and the rescale of a head's dv
/// accumulators when its max moves) spread over 64 tokens; MLA's many heads need it most
/// (bench/2026-12-06-cpu-xeon has 16, 32 and 64 side by side).
const TILE: usize = 64;

/// Tokens the fused path takes across every head at a time (a divisor of TILE).
const SUB: usize = 16;

/// `DType::F32`'s index in `DType::WHOLE_BYTE`: the dtype of rows in an L1 tile.
const F32: usize = 0;
const _: () = assert!(matches!(DType::WHOLE_BYTE[F32], DType::F32));

/// What every task of one step reads.
pub(super) struct KvCtx<'a> {
    pub w: &'a KvDecode,
    /// q with the softmax and K scales folded in (after math's rounding), [B x Hq] rows of
    /// `dkp` values, zero-padded.
    pub q: Aligned,
    pub k: &'a [u8],
    pub v: Option<&'a [u8]>,
    pub table: &'a [i32],
    pub dkp: usize,
    pub dvp: usize,
    /// Tokens per task: a whole number of tiles.
    pub chunk: usize,
}

impl<'a> KvCtx<'a> {
    pub fn new(
        w: &'a KvDecode,
        q: &[f32],
        (k, v): (&'a [u8], Option<&'a [u8]>),
        table: &'a [i32],
        lanes: usize,
    ) -> Self {
        let (dk, dv) = (w.head_dim_k, w.head_dim_v);
        let (dkp, dvp) = (dk.next_multiple_of(lanes), dv.next_multiple_of(lanes));
        let fold = w.scale * w.scales()[0];
        let mut qp = Aligned::zeroed(w.batch * w.q_heads * dkp);
        for (row, src) in qp.chunks_exact_mut(dkp).zip(q.chunks_exact(dk)) {
            for (o, &x) in row.iter_mut().zip(src) {
                *o = w.math.operand(x) * fold;
            }
        }
        let chunk = chunk_tokens(w, TILE);
        KvCtx {
            w,
            q: qp,
            k,
            v,
            table,
            dkp,
            dvp,
            chunk,
        }
    }

    /// The (sequence, chunk) tasks of a step.
    pub fn tasks(&self) -> Vec<(usize, usize)> {
        tasks(self.w, self.chunk)
    }
}

/// Tokens per task, a whole number of `tile`s: enough tasks to keep every thread busy to the
/// end (4 per thread: each task's partials cost their own set-up and merge, which short
/// contexts feel; bench/2026-12-07-cpu-xeon-amx/gqa-short-context/), each of 1 to 16 tiles
/// (a chunk's merge costs a few vectors per head, a tile costs thousands).
pub(super) fn chunk_tokens(w: &KvDecode, tile: usize) -> usize {
    let tokens: usize = w.context_lens.iter().sum();
    let per_task = tokens.div_ceil(4 * rayon::current_num_threads());
    per_task.clamp(tile, 16 * tile).next_multiple_of(tile)
}

/// Each cache slot (the row of a token's first KV head; head g's is slot + g) of sequence b's
/// N tokens from `first`, tokens past `end` taking the last one's: found once a tile, since
/// `cache_offset` divides by the page size and a tile reads each token's rows once per head
/// and tensor.
pub(super) fn tile_slots<const N: usize>(
    w: &KvDecode,
    table: &[i32],
    b: usize,
    first: usize,
    end: usize,
) -> [usize; N] {
    std::array::from_fn(|t| w.cache_offset(table, b, (first + t).min(end - 1), 0, 1))
}

/// The (sequence, chunk) tasks of a step with chunks of `chunk` tokens.
pub(super) fn tasks(w: &KvDecode, chunk: usize) -> Vec<(usize, usize)> {
    (0..w.batch)
        .flat_map(|b| (0..w.context_lens[b].div_ceil(chunk)).map(move |c| (b, c)))
        .collect()
}

/// Where a tile's TILE rows of one head lie, and how they are stored: in the cache itself
/// (fused decode) or in an f32 tile.
#[derive(Clone, Copy)]
struct Rows {
    at: [*const u8; TILE],
    dt: DType,
}

impl Rows {
    /// Rows in a cache tensor: element offsets from `offset`, each `dim` values long.
    fn of(bytes: &[u8], dt: DType, offset: impl Fn(usize) -> usize, dim: usize) -> Rows {
        let size = dt.size();
        let at = std::array::from_fn(|t| {
            let o = offset(t) * size;
            assert!(o + dim * size <= bytes.len(), "row out of its tensor");
            bytes[o..].as_ptr()
        });
        Rows { at, dt }
    }

    /// The first n rows of an f32 tile with rows of `stride` values (rows past n: the last).
    fn tile(tile: &[f32], stride: usize, n: usize) -> Rows {
        let at = std::array::from_fn(|t| tile[t.min(n - 1) * stride..].as_ptr() as *const u8);
        Rows { at, dt: DType::F32 }
    }

    /// For 2-byte rows: asks for the line of row t + SUB that holds value d (the rows one
    /// step of SUB tokens ahead), into L2; nothing for rows past the tile. Measured on
    /// avx512: bf16 rows (256 bytes a head) read faster with it, f32 rows (512) slower
    /// (bench/2026-12-07-cpu-xeon-amx/gqa-prefetch/).
    #[inline(always)]
    fn prefetch_ahead<const D: usize>(&self, t: usize, d: usize) {
        let size = DType::WHOLE_BYTE[D].size();
        if size == 2
            && (d * size).is_multiple_of(64)
            && let Some(&p) = self.at.get(t + SUB)
        {
            prefetch_l2(p.wrapping_add(d * size));
        }
    }

    /// Values d..d+LANES of row t, whose dtype is `DType::WHOLE_BYTE[D]` (a constant, so
    /// the decode is chosen at compile time, not at every load).
    ///
    /// # Safety
    /// The CPU must have `S`'s features; the row must hold them.
    #[inline(always)]
    unsafe fn load<S: Simd, const D: usize>(&self, t: usize, d: usize) -> S::V {
        let dt = DType::WHOLE_BYTE[D];
        debug_assert_eq!(dt, self.dt, "rows loaded as another dtype");
        // SAFETY: the caller's contract.
        unsafe { S::decode(dt, self.at[t].add(d * dt.size())) }
    }
}

/// One head group's running softmax state over a chunk.
struct Group {
    m: Vec<f32>,
    l: Vec<f32>,
    /// gs rows of dvp values.
    acc: Aligned,
}

/// One (sequence, chunk) task: the online-softmax partial of every KV head, in head order.
/// (About 100 lines: the tile loop with its two row sources, in the cache or in L1 tiles,
/// side by side.)
///
/// # Safety
/// The CPU must have `S`'s features; the dtype must be one the vector paths decode.
#[inline(always)]
pub(super) unsafe fn task<S: Simd>(cx: &KvCtx, t: (usize, usize)) -> Vec<Partial> {
    // SAFETY: the caller's contract; one instance per dtype, so no load branches on it.
    unsafe {
        match cx.w.kv_dtype.whole_byte_index() {
            Some(1) => task_of::<S, 1>(cx, t),
            Some(2) => task_of::<S, 2>(cx, t),
            Some(3) => task_of::<S, 3>(cx, t),
            _ => task_of::<S, F32>(cx, t),
        }
    }
}

/// `task` for the cache dtype `DType::WHOLE_BYTE[D]`.
#[inline(always)]
unsafe fn task_of<S: Simd, const D: usize>(cx: &KvCtx, (b, c): (usize, usize)) -> Vec<Partial> {
    let w = cx.w;
    let (gs, dk, dv, dkp, dvp) = (w.group_size(), w.head_dim_k, w.head_dim_v, cx.dkp, cx.dvp);
    let dt = DType::WHOLE_BYTE[D];
    assert_eq!(dt, w.kv_dtype, "task instantiated for another dtype");
    let hkv = w.kv_heads;
    // GQA with whole-vector head dims in a cheap dtype (a shift or a convert) reads K and V
    // where they lie, decoding in registers as the scores and PV load them (each row twice
    // for a group of 8). Otherwise (MLA: a latent row serves 16-128 heads; fp8: six
    // instructions a vector; odd dims) each head's rows are decoded once into an L1 tile of
    // padded f32 rows first.
    let fused = cx.v.is_some()
        && gs <= 8
        && dt != DType::Fp8E4m3
        && dk % S::LANES == 0
        && dv % S::LANES == 0;
    let mut kt = Aligned::zeroed(if fused { 0 } else { TILE * dkp });
    let mut vt = Aligned::zeroed(if fused || cx.v.is_none() {
        0
    } else {
        TILE * dvp
    });
    // Scores of the tile: every head's on the fused path (all before the softmax), else one
    // group's at a time.
    let mut s = Aligned::zeroed(if fused { hkv } else { 1 } * gs * TILE);
    let mut groups: Vec<Group> = (0..hkv)
        .map(|_| Group {
            m: vec![f32::NEG_INFINITY; gs],
            l: vec![0f32; gs],
            acc: Aligned::zeroed(gs * dvp),
        })
        .collect();
    let q_of = |g: usize| &cx.q[(b * w.q_heads + g * gs) * dkp..][..gs * dkp];
    let mut rows: Vec<(Rows, Rows)> = Vec::with_capacity(if fused { hkv } else { 0 });
    let end = ((c + 1) * cx.chunk).min(w.context_lens[b]);
    for t0 in (c * cx.chunk..end).step_by(TILE) {
        let n = TILE.min(end - t0);
        // Row t of head g's tile, for t < TILE: rows past n repeat the last one (their
        // scores are masked, their P is never read).
        let slots: [usize; TILE] = tile_slots(w, cx.table, b, t0, end);
        let row = |g: usize, t: usize, dim: usize| (slots[t] + g) * dim;
        if fused {
            let v = cx.v.unwrap_or(cx.k);
            rows.clear();
            rows.extend((0..hkv).map(|g| {
                let k_rows = Rows::of(cx.k, dt, |t| row(g, t, dk), dk);
                (k_rows, Rows::of(v, dt, |t| row(g, t, dv), dv))
            }));
            // SUB tokens at a time, every head of them before the next SUB: a token's rows
            // (its heads side by side) are read in address order, not a head's 512-byte piece
            // of each token's row in turn.
            for i0 in (0..TILE).step_by(SUB) {
                for (g, (k_rows, _)) in rows.iter().enumerate() {
                    let s_g = &mut s[g * gs * TILE..(g + 1) * gs * TILE];
                    // SAFETY: as below.
                    unsafe { scores::<S, D>(q_of(g), k_rows, (gs, dkp), i0..i0 + SUB, s_g) };
                }
            }
            for (g, st) in groups.iter_mut().enumerate() {
                // SAFETY: as below.
                unsafe { softmax_heads::<S>(w, &mut s[g * gs * TILE..(g + 1) * gs * TILE], n, st) };
            }
            for i0 in (0..n).step_by(SUB) {
                for (g, st) in groups.iter_mut().enumerate() {
                    let s_g = &s[g * gs * TILE..(g + 1) * gs * TILE];
                    let tokens = i0..(i0 + SUB).min(n);
                    // SAFETY: as below.
                    unsafe { pv::<S, D>(s_g, &rows[g].1, (gs, dvp), tokens, &mut st.acc) };
                }
            }
            continue;
        }
        // The next tile's slots, whose rows are asked for as this tile's are decoded.
        let next: Option<[usize; TILE]> =
            (t0 + TILE < end).then(|| tile_slots(w, cx.table, b, t0 + TILE, end));
        for (g, st) in groups.iter_mut().enumerate() {
            for i in 0..n {
                if let Some(next) = &next {
                    let ahead = |dim: usize| (next[i] + g) * dim * dt.size();
                    prefetch_span(cx.k, ahead(dk), dk * dt.size());
                    if let Some(v) = cx.v {
                        prefetch_span(v, ahead(dv), dv * dt.size());
                    }
                }
                // SAFETY: the caller's contract (features, dtype); decode_row asserts
                // the row is inside its tensor.
                unsafe { decode_row::<S>(dt, cx.k, row(g, i, dk), &mut kt[i * dkp..i * dkp + dk]) };
                if let Some(v) = cx.v {
                    unsafe {
                        decode_row::<S>(dt, v, row(g, i, dv), &mut vt[i * dvp..i * dvp + dv])
                    };
                }
            }
            let k_rows = Rows::tile(&kt, dkp, n);
            // MLA: V is the latent's first dv values of each row.
            let v_rows = if cx.v.is_some() {
                Rows::tile(&vt, dvp, n)
            } else {
                k_rows
            };
            let s_g = &mut s[..gs * TILE];
            // SAFETY: buffers are sized for gs heads and TILE tokens; rows hold dkp (dvp)
            // values where the kernel reads them (whole vectors: the fused rows' dims are
            // multiples of LANES, the tiles are padded).
            unsafe {
                scores::<S, F32>(q_of(g), &k_rows, (gs, dkp), 0..TILE, s_g);
                softmax_heads::<S>(w, s_g, n, st);
                pv::<S, F32>(s_g, &v_rows, (gs, dvp), 0..n, &mut st.acc);
            }
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(g, st)| Partial {
            b,
            g,
            m: st.m,
            l: st.l,
            acc: st.acc[..gs * dvp]
                .chunks_exact(dvp)
                .flat_map(|r| r[..dv].iter().copied())
                .collect(),
        })
        .collect()
}

/// A group's tile of scores (gs rows of TILE, n valid) into P, its running max and sum
/// updated and its accumulators rescaled where the max moved.
#[inline(always)]
unsafe fn softmax_heads<S: Simd>(w: &KvDecode, s: &mut [f32], n: usize, st: &mut Group) {
    let dvp = st.acc.len() / st.m.len();
    for j in 0..st.m.len() {
        // SAFETY: the row is TILE values.
        let (m_new, sum) =
            unsafe { softmax_tile::<S>(&mut s[j * TILE..(j + 1) * TILE], n, st.m[j]) };
        let corr = (st.m[j] - m_new).exp();
        // P's row sum takes it unrounded; PV takes it as math says.
        st.l[j] = st.l[j] * corr + sum;
        if w.math != Math::F32 {
            for p in &mut s[j * TILE..j * TILE + n] {
                *p = w.math.operand(*p);
            }
        }
        if corr != 1.0 {
            // SAFETY: the head's accumulator is dvp values, whole vectors.
            unsafe { scale_row::<S>(&mut st.acc[j * dvp..(j + 1) * dvp], corr) };
        }
        st.m[j] = m_new;
    }
}

/// One head's tile of scores (n of TILE valid) against its running max `m`: the new max,
/// and the row turned into e^(s - max) in place with its sum. Vector ops throughout: scalar
/// max and sum chains cost more than the tile's FMAs.
#[inline(always)]
unsafe fn softmax_tile<S: Simd>(row: &mut [f32], n: usize, m: f32) -> (f32, f32) {
    row[n..].fill(f32::NEG_INFINITY);
    // SAFETY: `row` is TILE values, a whole number of vectors.
    unsafe {
        let mut mx = S::splat(m);
        for c in row.chunks_exact(S::LANES) {
            mx = S::max(mx, S::load(c.as_ptr()));
        }
        let m_new = S::hmax(mx);
        let mut sum = S::splat(0.0);
        for c in row.chunks_exact_mut(S::LANES) {
            let e = S::exp(S::sub(S::load(c.as_ptr()), S::splat(m_new)));
            sum = S::add(sum, e);
            S::store(c.as_mut_ptr(), e);
        }
        // Masked lanes add at most TILE x e^-87 (the exp's floor) to the sum: nothing at f32.
        (m_new, S::hsum(sum))
    }
}

/// row *= c, a vector at a time.
#[inline(always)]
unsafe fn scale_row<S: Simd>(row: &mut [f32], c: f32) {
    // SAFETY: `row` is a whole number of vectors.
    unsafe {
        for v in row.chunks_exact_mut(S::LANES) {
            S::store(v.as_mut_ptr(), S::mul(S::load(v.as_ptr()), S::splat(c)));
        }
    }
}

/// s[j * TILE + i] = q_j . k_i for the group's heads and all TILE tokens of the tile, in
/// register blocks of 4 heads x LANES/4 tokens: each loaded q and k vector feeds LANES/4 or 4
/// FMAs (a load per FMA would be held to L1's load rate), and one shuffle tree folds the
/// block's LANES running dots into LANES scores at once.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn scores<S: Simd, const D: usize>(
    q: &[f32],
    k: &Rows,
    (gs, dkp): (usize, usize),
    tokens: std::ops::Range<usize>,
    s: &mut [f32],
) {
    const H: usize = 4;
    let t_block = S::LANES / H;
    let qp = q.as_ptr();
    let mut out = [0f32; 16];
    for j0 in (0..gs).step_by(H) {
        // A group not a multiple of 4 repeats its last head; the repeats are not stored.
        let head = |h: usize| (j0 + h).min(gs - 1);
        for i0 in tokens.clone().step_by(t_block) {
            // SAFETY: heads < gs and tokens < TILE index rows inside q and k.
            unsafe {
                let mut acc = [S::splat(0.0); 16];
                for d in (0..dkp).step_by(S::LANES) {
                    let mut qv = [S::splat(0.0); H];
                    for h in 0..H {
                        qv[h] = S::load(qp.add(head(h) * dkp + d));
                    }
                    for t in 0..t_block {
                        if j0 == 0 {
                            k.prefetch_ahead::<D>(i0 + t, d);
                        }
                        let kv = k.load::<S, D>(i0 + t, d);
                        for h in 0..H {
                            acc[h * t_block + t] = S::fma(qv[h], kv, acc[h * t_block + t]);
                        }
                    }
                }
                S::store(out.as_mut_ptr(), S::transpose_sum(&acc));
            }
            for h in 0..H.min(gs - j0) {
                let row = &mut s[(j0 + h) * TILE + i0..][..t_block];
                row.copy_from_slice(&out[h * t_block..(h + 1) * t_block]);
            }
        }
    }
}

/// acc_j += sum over the tile's n tokens of p[j][i] * v_i, for every head j of the group.
#[inline(always)]
unsafe fn pv<S: Simd, const D: usize>(
    p: &[f32],
    v: &Rows,
    (gs, dvp): (usize, usize),
    tokens: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let (p, acc) = (p.as_ptr(), acc.as_mut_ptr());
    let wide = if S::LANES == 16 { 4 } else { 2 };
    // SAFETY: every block stays inside heads j..j+H, dims d..d+C*LANES <= dvp and n tokens.
    unsafe {
        let mut j = 0;
        while j < gs {
            let h = if j + 4 <= gs { 4 } else { 1 };
            let mut d = 0;
            while d < dvp {
                let c = if d + wide * S::LANES <= dvp { wide } else { 1 };
                let at = (j, d);
                match (h, c) {
                    (4, 4) => pv_block::<S, D, 4, 4>(p, v, tokens.clone(), dvp, at, acc),
                    (4, 2) => pv_block::<S, D, 4, 2>(p, v, tokens.clone(), dvp, at, acc),
                    (4, _) => pv_block::<S, D, 4, 1>(p, v, tokens.clone(), dvp, at, acc),
                    (_, 4) => pv_block::<S, D, 1, 4>(p, v, tokens.clone(), dvp, at, acc),
                    (_, 2) => pv_block::<S, D, 1, 2>(p, v, tokens.clone(), dvp, at, acc),
                    _ => pv_block::<S, D, 1, 1>(p, v, tokens.clone(), dvp, at, acc),
                }
                d += c * S::LANES;
            }
            j += h;
        }
    }
}

#[inline(always)]
#[allow(clippy::needless_range_loop)] // register arrays: indices keep them in registers
unsafe fn pv_block<S: Simd, const D: usize, const H: usize, const C: usize>(
    p: *const f32,
    vr: &Rows,
    tokens: std::ops::Range<usize>,
    dvp: usize,
    (j, d): (usize, usize),
    acc: *mut f32,
) {
    // SAFETY: the caller keeps heads j..j+H and dims d..d+C*LANES inside acc and vt's rows.
    unsafe {
        let at = |h: usize, c: usize| (j + h) * dvp + d + c * S::LANES;
        // Loops, not array::from_fn: a closure would not inline the intrinsics.
        let mut a = [[S::splat(0.0); C]; H];
        for h in 0..H {
            for c in 0..C {
                a[h][c] = S::load(acc.add(at(h, c)));
            }
        }
        for i in tokens {
            let mut v = [S::splat(0.0); C];
            for c in 0..C {
                if j == 0 {
                    vr.prefetch_ahead::<D>(i, d + c * S::LANES);
                }
                v[c] = vr.load::<S, D>(i, d + c * S::LANES);
            }
            for h in 0..H {
                let pb = S::splat(*p.add((j + h) * TILE + i));
                for c in 0..C {
                    a[h][c] = S::fma(pb, v[c], a[h][c]);
                }
            }
        }
        for h in 0..H {
            for c in 0..C {
                S::store(acc.add(at(h, c)), a[h][c]);
            }
        }
    }
}
