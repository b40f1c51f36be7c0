//! The CPU backend's kernels: the reference implementations, in f32 like the GPU ones,
//! multi-threaded with rayon over the same units of work a GPU kernel would split.

use crate::workload::stream::fill_pattern;
use crate::workload::{ExpertGemv, KvDecode, Link, Stream, StreamOp, TensorSet};
use rayon::prelude::*;

/// The CPU backend has one device, so a link is a copy within host memory (both ways: two
/// copies at once). Outputs are in `Link::outputs` order: dst, then dst_back.
pub(super) fn link(w: &Link, inputs: &TensorSet, outputs: &mut TensorSet) {
    fn copy(src: &[u8], dst: &mut [u8]) {
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
    let src = &inputs.expect("src").bytes;
    match outputs.0.as_mut_slice() {
        [dst, back] if w.both_ways() => {
            let src_back = &inputs.expect("src_back").bytes;
            rayon::join(
                || copy(src, &mut dst.bytes),
                || copy(src_back, &mut back.bytes),
            );
        }
        [dst, ..] => copy(src, &mut dst.bytes),
        [] => {}
    }
}

pub(super) fn out_mut<'a>(outputs: &'a mut TensorSet, name: &str) -> &'a mut [u8] {
    &mut outputs
        .get_mut(name)
        .unwrap_or_else(|| panic!("output '{name}' not allocated"))
        .bytes
}

pub(super) fn stream(w: &Stream, inputs: &TensorSet, outputs: &mut TensorSet) {
    const CHUNK: usize = 1 << 16;
    match w.op {
        StreamOp::Read => {
            let src = inputs.expect("src").view::<u32>();
            let sum = src
                .par_chunks(CHUNK)
                .map(|c| c.iter().fold(0u32, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0u32, u32::wrapping_add);
            out_mut(outputs, "sum").copy_from_slice(&sum.to_le_bytes());
        }
        StreamOp::Copy => {
            let src = &inputs.expect("src").bytes;
            out_mut(outputs, "dst")
                .par_chunks_mut(CHUNK * 4)
                .zip(src.par_chunks(CHUNK * 4))
                .for_each(|(d, s)| d.copy_from_slice(s));
        }
        StreamOp::Write => {
            let seed = w.pattern_seed();
            out_mut(outputs, "dst")
                .par_chunks_mut(CHUNK * 4)
                .enumerate()
                .for_each(|(c, chunk)| fill_pattern(chunk, (c * CHUNK) as u32, seed));
        }
    }
}

/// Tokens per kv_decode task: contexts are split into chunks this long across threads.
pub(super) const CHUNK: usize = 256;

/// Online-softmax state of one query group over one chunk of a sequence: per head of the
/// group its running max `m`, sum `l` and unnormalised output `acc` (dv values per head).
pub(super) struct Partial {
    pub b: usize,
    pub g: usize,
    pub m: Vec<f32>,
    pub l: Vec<f32>,
    pub acc: Vec<f32>,
}

/// The (sequence, KV head, chunk) tasks of a step, in the order their partials merge.
pub(super) fn kv_tasks(w: &KvDecode) -> Vec<(usize, usize, usize)> {
    (0..w.batch)
        .flat_map(|b| {
            (0..w.kv_heads)
                .flat_map(move |g| (0..w.context_lens[b].div_ceil(CHUNK)).map(move |c| (b, g, c)))
        })
        .collect()
}

/// Paged decode attention. Tasks are (sequence, KV head, chunk of tokens): each cached row is
/// decoded once for its whole query group, and long contexts are split across threads and
/// merged with the log-sum-exp, the same shape as flash-decoding on a GPU. (Over 100 lines on
/// purpose: it is the reference kernel, one loop nest read top to bottom like the GPU ones.)
pub(super) fn kv_decode(w: &KvDecode, inputs: &TensorSet, outputs: &mut TensorSet) {
    let q = inputs.expect("q").view::<f32>();
    let k = &inputs.expect("k_pages").bytes;
    let v = inputs.get("v_pages").map(|t| &t.bytes);
    let table = inputs.expect("page_table").view::<i32>();
    let table: &[i32] = &table;
    let [ks, _] = w.scales();
    let (hq, dk, dv, gs, dt) = (
        w.q_heads,
        w.head_dim_k,
        w.head_dim_v,
        w.group_size(),
        w.kv_dtype,
    );
    // Fold the softmax scale and K's dequant scale into q once (after the bf16 rounding of
    // q at math: bf16, which rounds q as given).
    let math = w.math;
    let qs: Vec<f32> = q
        .iter()
        .map(|&x| math.operand(x) * (w.scale * ks))
        .collect();

    let partials: Vec<Partial> = kv_tasks(w)
        .par_iter()
        .map(|&(b, g, c)| {
            let mut p = Partial {
                b,
                g,
                m: vec![f32::NEG_INFINITY; gs],
                l: vec![0.0; gs],
                acc: vec![0.0; gs * dv],
            };
            let mut krow = vec![0f32; dk];
            let mut vrow = vec![0f32; dv];
            let end = ((c + 1) * CHUNK).min(w.context_lens[b]);
            for t in c * CHUNK..end {
                let ko = w.cache_offset(table, b, t, g, dk);
                dt.decode_slice(k, ko, &mut krow);
                match v {
                    Some(v) => dt.decode_slice(v, w.cache_offset(table, b, t, g, dv), &mut vrow),
                    None => vrow.copy_from_slice(&krow[..dv]), // MLA: V is the latent's head
                }
                for j in 0..gs {
                    let qo = (b * hq + g * gs + j) * dk;
                    let s = dot(&qs[qo..qo + dk], &krow);
                    let acc = &mut p.acc[j * dv..(j + 1) * dv];
                    if s > p.m[j] {
                        let corr = (p.m[j] - s).exp();
                        p.l[j] = p.l[j] * corr + 1.0;
                        for (a, &x) in acc.iter_mut().zip(&vrow) {
                            *a = *a * corr + x;
                        }
                        p.m[j] = s;
                    } else {
                        // P's row sum takes it unrounded; PV takes it as math says.
                        let e = (s - p.m[j]).exp();
                        p.l[j] += e;
                        let pe = math.operand(e);
                        for (a, &x) in acc.iter_mut().zip(&vrow) {
                            *a += pe * x;
                        }
                    }
                }
            }
            p
        })
        .collect();
    merge_partials(w, partials, outputs);
}

/// Merge the chunks of each (sequence, KV head) with the log-sum-exp and write out and lse
/// (V's dequant scale applied here). A (sequence, KV head)'s heads are rows of `out` one after
/// another, so the heads merge in parallel, each against the largest of its chunks' maxima:
/// MLA's 128 heads x 512 values a chunk were a tenth of a step merged on one thread.
pub(super) fn merge_partials(w: &KvDecode, partials: Vec<Partial>, outputs: &mut TensorSet) {
    let (hq, dv, gs) = (w.q_heads, w.head_dim_v, w.group_size());
    let vs = w.scales()[1];
    let mut by_slot: Vec<Vec<Partial>> = (0..w.batch * w.kv_heads).map(|_| Vec::new()).collect();
    for p in partials {
        by_slot[p.b * w.kv_heads + p.g].push(p);
    }
    let mut out = vec![f32::NAN; w.batch * hq * dv];
    let mut lse = vec![f32::NAN; w.batch * hq];
    out.par_chunks_mut(gs * dv)
        .zip(lse.par_chunks_mut(gs))
        .zip(by_slot.par_iter())
        .filter(|(_, parts)| !parts.is_empty())
        .for_each(|((out, lse), parts)| {
            out.par_chunks_mut(dv)
                .zip(lse.par_iter_mut())
                .enumerate()
                .for_each(|(j, (row, lse))| {
                    let m = parts.iter().fold(f32::NEG_INFINITY, |m, p| m.max(p.m[j]));
                    let mut l = 0f32;
                    row.fill(0.0);
                    for p in parts {
                        let a = (p.m[j] - m).exp();
                        l += p.l[j] * a;
                        for (o, &x) in row.iter_mut().zip(&p.acc[j * dv..(j + 1) * dv]) {
                            *o += x * a;
                        }
                    }
                    for o in row.iter_mut() {
                        *o = *o / l * vs;
                    }
                    *lse = m + l.ln();
                });
        });
    out_mut(outputs, "out").copy_from_slice(bytemuck::cast_slice(&out));
    out_mut(outputs, "lse").copy_from_slice(bytemuck::cast_slice(&lse));
}

/// Grouped GEMV: threads own blocks of output rows; within a block each touched expert's rows
/// are decoded once and applied to every token that chose the expert.
pub(super) fn expert_gemv(w: &ExpertGemv, inputs: &TensorSet, outputs: &mut TensorSet) {
    const ROWS: usize = 16;
    // math: bf16 rounds x as it enters the multiply.
    let x: Vec<f32> = inputs
        .expect("x")
        .view::<f32>()
        .iter()
        .map(|&v| w.math.operand(v))
        .collect();
    let scales = w.dot_scales(inputs);
    let scales: Option<&[f32]> = scales.as_deref();
    let ids = inputs.expect("topk_ids").view::<i32>();
    let rw = inputs.expect("topk_weights").view::<f32>();
    let (t_count, k, di, dout) = (w.batch, w.top_k, w.d_in, w.d_out);

    let touched = slots_by_expert(w, &ids);

    // Each (token, choice) slot gets its own row, dot x scale x weight, and a token's slots
    // are summed in choice order: the GPU kernels' order, so an experts split (which
    // computes slot rows on the owners and sums them after) is bit-exact on every backend.
    let blocks: Vec<Vec<f32>> = (0..dout.div_ceil(ROWS))
        .into_par_iter()
        .map(|blk| {
            let (o0, o1) = (blk * ROWS, ((blk + 1) * ROWS).min(dout));
            let width = o1 - o0;
            let mut slots = vec![0f32; t_count * k * width];
            let mut row = vec![0f32; di];
            for &(e, ref entries) in &touched {
                for o in o0..o1 {
                    w.decode_row(inputs, (e, o), &mut row);
                    for &slot in entries {
                        let t = slot / k;
                        let x = &x[t * di..(t + 1) * di];
                        let d = w.scaled_dot((&row, x), scales, (e, o), dot);
                        slots[slot * width + (o - o0)] = d * rw[slot];
                    }
                }
            }
            slots
        })
        .collect();
    let y = sum_slots(w, ROWS, &blocks);
    out_mut(outputs, "y").copy_from_slice(bytemuck::cast_slice(&y));
}

/// The (token, choice) slots of `ids` ([batch, top_k] expert ids) grouped by expert: every
/// touched expert, ascending, with its slots in slot order.
pub(super) fn slots_by_expert(w: &ExpertGemv, ids: &[i32]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); w.experts];
    for (slot, &e) in ids.iter().enumerate() {
        groups[e as usize].push(slot);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .collect()
}

/// y from each row block's slot values ([slot][row in block], blocks of `rows` rows): a
/// token's slots summed in choice order starting from 0, the order every backend keeps.
pub(super) fn sum_slots(w: &ExpertGemv, rows: usize, blocks: &[Vec<f32>]) -> Vec<f32> {
    let (t_count, k, dout) = (w.batch, w.top_k, w.d_out);
    let mut y = vec![0f32; t_count * dout];
    for (blk, slots) in blocks.iter().enumerate() {
        let o0 = blk * rows;
        let width = rows.min(dout - o0);
        for t in 0..t_count {
            let out = &mut y[t * dout + o0..t * dout + o0 + width];
            for j in 0..k {
                let from = &slots[(t * k + j) * width..(t * k + j + 1) * width];
                for (a, &b) in out.iter_mut().zip(from) {
                    *a += b;
                }
            }
        }
    }
    y
}

/// f32 dot product with eight independent partial sums, so the compiler can vectorise it
/// (a single running sum pins the order of additions and stays scalar).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
