//! Multi-device splits: how one point is cut into shards (one per device) and how the shards'
//! outputs are combined into the point's outputs. Like `workload`, nothing here knows which
//! backend runs a shard; `run` times shards and combines on whatever backend holds them.
//!
//! Every split is exact by construction where it can be: a shard is an ordinary `Workload`
//! whose inputs are slices of the parent's, and the combine repeats the parent kernel's own
//! final operations in the parent's order (see each kind below).

pub mod link;
pub mod run;

use crate::report::VsOneDevice;
use crate::workload::{
    Attention, ExpertGemv, Kernel, KvDecode, Lengths, Routing, Stream, StreamOp, Tensor, TensorSet,
    Workload,
};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// How a run is spread over its devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Every device runs the whole point by itself (one result per device).
    #[default]
    None,
    /// kv_decode: each device owns a group of KV heads and their query heads (MLA: a group
    /// of query heads; the latent cache is replicated). Outputs are gathered.
    Heads,
    /// kv_decode: each device owns a contiguous slice of whole pages of every sequence; the
    /// partial out/lse are merged with the log-sum-exp.
    Sequence,
    /// expert_gemv: expert parallel. Each device owns a contiguous block of experts; the
    /// (token, choice) pairs routed there are dispatched to it and its rows come back to be
    /// summed per token (an all-to-all).
    Experts,
    /// expert_gemv: each expert's output rows are split; outputs are gathered.
    Tensor,
    /// stream (read, copy): each device streams its share of `bytes` at the same time, for
    /// the aggregate bandwidth.
    Data,
}

impl SplitKind {
    pub fn name(self) -> &'static str {
        match self {
            SplitKind::None => "none",
            SplitKind::Heads => "heads",
            SplitKind::Sequence => "sequence",
            SplitKind::Experts => "experts",
            SplitKind::Tensor => "tensor",
            SplitKind::Data => "data",
        }
    }

    /// The splits that apply to a kernel (besides `none`).
    pub fn for_kernel(kernel: Kernel) -> &'static [SplitKind] {
        match kernel {
            Kernel::KvDecode => &[SplitKind::Heads, SplitKind::Sequence],
            Kernel::ExpertGemv => &[SplitKind::Experts, SplitKind::Tensor],
            Kernel::Stream => &[SplitKind::Data],
            Kernel::Link => &[],
        }
    }

    /// How close a combined output must be to the one-device output: exactly equal, or
    /// within this relative L2 difference. The sequence merge reorders sums (1e-6 at
    /// `math: f32`); at `math: bf16` each shard also rounds P against its own running max,
    /// so the roundings differ by up to a bf16 step (about 4e-3 relative).
    pub fn one_device_tolerance(self, math: crate::workload::Math) -> f64 {
        match (self, math) {
            (SplitKind::Sequence, crate::workload::Math::F32) => 1e-6,
            (SplitKind::Sequence, crate::workload::Math::Bf16) => 1e-2,
            _ => 0.0,
        }
    }
}

/// `total` items in `n` contiguous ranges; the first `total % n` get one more.
pub fn ranges(total: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (total / n, total % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Whether `kind` can split `w` over `n` devices; the message says why not. Cheap (no
/// inputs), so experiments are checked with it before anything runs.
pub fn validate(w: &Workload, kind: SplitKind, n: usize) -> Result<(), String> {
    if kind == SplitKind::None {
        return Ok(());
    }
    if !SplitKind::for_kernel(w.kind()).contains(&kind) {
        let ok: Vec<&str> = SplitKind::for_kernel(w.kind())
            .iter()
            .map(|k| k.name())
            .collect();
        return Err(format!(
            "split {} does not apply to {} (its splits: none{}{})",
            kind.name(),
            w.kernel(),
            if ok.is_empty() { "" } else { ", " },
            ok.join(", ")
        ));
    }
    if n == 0 {
        return Err("a split needs at least one device".into());
    }
    let short = |what: &str, have: usize| {
        Err(format!(
            "split {} over {n} devices needs at least {n} {what}, the point has {have} \
             (uneven counts are fine: the first devices take one more)",
            kind.name()
        ))
    };
    match (w, kind) {
        (Workload::KvDecode(k), SplitKind::Heads) => {
            if k.attention == Attention::Mla && k.q_heads < n {
                return short("query heads", k.q_heads);
            }
            if k.attention == Attention::Gqa && k.kv_heads < n {
                return short("KV heads (use split: sequence)", k.kv_heads);
            }
        }
        (Workload::KvDecode(_), SplitKind::Sequence) => {}
        (Workload::ExpertGemv(e), SplitKind::Experts) if e.experts < n => {
            return short("experts", e.experts);
        }
        (Workload::ExpertGemv(e), SplitKind::Tensor) if e.d_out < n => {
            return short("output rows (d_out)", e.d_out);
        }
        (Workload::Stream(s), SplitKind::Data) => {
            if s.op == StreamOp::Write {
                return Err(
                    "split data applies to op read and copy (write's pattern is indexed from \
                     the first word, so its shards could not be checked against the point)"
                        .into(),
                );
            }
            if s.words() < n {
                return short("words", s.words());
            }
        }
        _ => {}
    }
    Ok(())
}

/// About the device memory one of `n` real devices needs for a split of a point that needs
/// `whole` on one device: its share, except where the split replicates (MLA heads: every
/// device holds the whole latent cache).
pub fn per_device_bytes(w: &Workload, kind: SplitKind, n: usize, whole: u64) -> u64 {
    match (w, kind) {
        (_, SplitKind::None) => whole,
        (Workload::KvDecode(k), SplitKind::Heads) if k.attention == Attention::Mla => whole,
        _ => whole.div_ceil(n.max(1) as u64),
    }
}

/// One device's part of a point. `device` is the logical device (0..n) it runs on.
pub struct Shard {
    pub device: usize,
    pub workload: Workload,
    pub inputs: TensorSet,
}

/// A point cut into shards, and how to put their outputs back together.
pub struct Plan {
    pub kind: SplitKind,
    pub devices: usize,
    /// One per device with work; a device with nothing to do (no sequence slice, no routed
    /// token) has no shard.
    pub shards: Vec<Shard>,
    /// Bytes sent to shards before the step (experts: the token rows dispatched to their
    /// experts' owners); inputs are placed before timing, so this is counted, not timed.
    pub dispatch_bytes: u64,
    merge: Merge,
}

enum Merge {
    /// Join each output along an axis, in shard order.
    Concat(Vec<(&'static str, usize)>),
    /// Per (sequence, head): the shards that hold part of it, merged with the lse.
    Sequence {
        /// parts[b] = (shard, row in that shard) for every shard holding part of sequence b.
        parts: Vec<Vec<(usize, usize)>>,
    },
    /// y[t] = sum over j of the slot row of (t, j), in j order, as the one-device kernels do.
    Experts {
        /// slots[t * k + j] = (shard, row in that shard).
        slots: Vec<(usize, usize)>,
    },
    /// Wrapping sum of the shards' sums.
    StreamSum,
}

/// Cut `w` (with its generated `inputs`) into shards over `n` devices.
pub fn plan(w: &Workload, inputs: &TensorSet, kind: SplitKind, n: usize) -> Result<Plan, String> {
    validate(w, kind, n)?;
    let mut dispatch_bytes = 0;
    let (shards, merge) = match (w, kind) {
        (Workload::KvDecode(k), SplitKind::Heads) => heads(k, inputs, n),
        (Workload::KvDecode(k), SplitKind::Sequence) => sequence(k, inputs, n),
        (Workload::ExpertGemv(e), SplitKind::Experts) => {
            let (shards, merge) = experts(e, inputs, n);
            // What reaches an owner: its token rows, local ids and routing weights.
            dispatch_bytes = shards
                .iter()
                .flat_map(|s| ["x", "topk_ids", "topk_weights"].map(|n| s.inputs.expect(n)))
                .map(|t| t.bytes.len() as u64)
                .sum();
            (shards, merge)
        }
        (Workload::ExpertGemv(e), SplitKind::Tensor) => tensor(e, inputs, n),
        (Workload::Stream(s), SplitKind::Data) => data(s, inputs, n),
        _ => {
            return Err(format!(
                "split {} does not apply to {}",
                kind.name(),
                w.kernel()
            ));
        }
    };
    Ok(Plan {
        kind,
        devices: n,
        shards,
        dispatch_bytes,
        merge,
    })
}

impl Plan {
    /// Bytes the combine moves: every shard output crosses to where the point's outputs are
    /// assembled.
    pub fn combine_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.workload.outputs())
            .map(|o| o.bytes())
            .sum()
    }

    /// The point's outputs from the shards' outputs (in shard order).
    pub fn combine(&self, parent: &Workload, outs: &[TensorSet]) -> anyhow::Result<TensorSet> {
        anyhow::ensure!(
            outs.len() == self.shards.len(),
            "{} shard outputs for {} shards",
            outs.len(),
            self.shards.len()
        );
        for (s, o) in self.shards.iter().zip(outs) {
            for spec in s.workload.outputs() {
                let got = o.get(spec.name).ok_or_else(|| {
                    anyhow::anyhow!("shard on device {} returned no '{}'", s.device, spec.name)
                })?;
                anyhow::ensure!(
                    got.shape == spec.shape,
                    "shard on device {}: '{}' has shape {:?}, expected {:?}",
                    s.device,
                    spec.name,
                    got.shape,
                    spec.shape
                );
            }
        }
        Ok(match &self.merge {
            Merge::Concat(axes) => TensorSet(
                axes.iter()
                    .map(|&(name, axis)| {
                        let parts: Vec<&Tensor> = outs.iter().map(|o| o.expect(name)).collect();
                        Tensor::concat_axis(name, &parts, axis)
                    })
                    .collect(),
            ),
            Merge::Sequence { parts } => {
                let Workload::KvDecode(k) = parent else {
                    anyhow::bail!("a sequence merge needs kv_decode");
                };
                merge_sequence(k, parts, outs)
            }
            Merge::Experts { slots } => {
                let Workload::ExpertGemv(e) = parent else {
                    anyhow::bail!("an experts combine needs expert_gemv");
                };
                let ys: Vec<Vec<f32>> = outs.iter().map(|o| o.expect("y").as_f32()).collect();
                let mut y = vec![0f32; e.batch * e.d_out];
                for t in 0..e.batch {
                    let row = &mut y[t * e.d_out..(t + 1) * e.d_out];
                    for j in 0..e.top_k {
                        let (s, r) = slots[t * e.top_k + j];
                        let src = &ys[s][r * e.d_out..(r + 1) * e.d_out];
                        for (a, &b) in row.iter_mut().zip(src) {
                            *a += b;
                        }
                    }
                }
                TensorSet(vec![Tensor::from_f32("y", vec![e.batch, e.d_out], &y)])
            }
            Merge::StreamSum => {
                let sum = outs
                    .iter()
                    .map(|o| o.expect("sum").as_u32()[0])
                    .fold(0u32, u32::wrapping_add);
                TensorSet(vec![Tensor::from_u32("sum", vec![1], &[sum])])
            }
        })
    }
}

fn clone_named(inputs: &TensorSet, names: &[&str]) -> Vec<Tensor> {
    names
        .iter()
        .filter_map(|n| inputs.get(n).cloned())
        .collect()
}

/// Heads: GQA shards own whole KV heads (and their query groups), so every cached row is read
/// by exactly one device; MLA has one latent head, so shards own query heads and each reads
/// the whole latent cache (the real cost of tensor-parallel MLA).
fn heads(k: &KvDecode, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let hint = Some(k.launch_shape());
    let mla = k.attention == Attention::Mla;
    let gs = k.group_size();
    let parts = if mla {
        ranges(k.q_heads, n)
    } else {
        ranges(k.kv_heads, n)
    };
    let shards = parts
        .into_iter()
        .enumerate()
        .map(|(device, r)| {
            let (q_range, kv_range) = if mla {
                (r.clone(), 0..1)
            } else {
                (r.start * gs..r.end * gs, r.clone())
            };
            let workload = KvDecode {
                q_heads: q_range.len(),
                kv_heads: kv_range.len(),
                launch_hint: hint,
                ..k.clone()
            };
            let mut set = vec![inputs.expect("q").slice_axis(1, q_range)];
            for name in ["k_pages", "v_pages"] {
                if let Some(t) = inputs.get(name) {
                    set.push(if mla {
                        t.clone()
                    } else {
                        t.slice_axis(2, kv_range.clone())
                    });
                }
            }
            set.extend(clone_named(
                inputs,
                &["page_table", "context_lens", "kv_scale"],
            ));
            Shard {
                device,
                workload: Workload::KvDecode(workload),
                inputs: TensorSet(set),
            }
        })
        .collect();
    (shards, Merge::Concat(vec![("out", 1), ("lse", 1)]))
}

/// Sequence: shard i takes the i-th contiguous run of whole pages of every sequence, copied
/// into its own page pool and renumbered. A sequence with fewer pages than devices is held by
/// fewer shards; a shard with no page of any sequence has no work.
fn sequence(k: &KvDecode, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let table = inputs.expect("page_table").as_i32();
    let table = &table;
    let max_pages = k.max_pages();
    let mut parts: Vec<Vec<(usize, usize)>> = vec![Vec::new(); k.batch];
    let mut shards = Vec::new();
    // slices[i] = (sequence, first page, pages, tokens)
    let mut slices: Vec<Vec<(usize, usize, usize, usize)>> = vec![Vec::new(); n];
    for (b, &len) in k.context_lens.iter().enumerate() {
        for (i, r) in ranges(k.pages_of(len), n).into_iter().enumerate() {
            if r.is_empty() {
                continue;
            }
            let tokens = (r.end * k.page_size).min(len) - r.start * k.page_size;
            slices[i].push((b, r.start, r.len(), tokens));
        }
    }
    for (device, slice) in slices.into_iter().enumerate() {
        if slice.is_empty() {
            continue;
        }
        let shard_index = shards.len();
        let lens: Vec<usize> = slice.iter().map(|s| s.3).collect();
        let rows: Vec<usize> = slice.iter().map(|s| s.0).collect();
        let physical: Vec<usize> = slice
            .iter()
            .flat_map(|&(b, p0, np, _)| {
                (p0..p0 + np).map(move |p| table[b * max_pages + p] as usize)
            })
            .collect();
        let shard_max_pages = slice.iter().map(|s| s.2).max().unwrap_or(1);
        let mut new_table = vec![-1i32; slice.len() * shard_max_pages];
        let mut next = 0i32;
        for (row, &(b, _, np, _)) in slice.iter().enumerate() {
            parts[b].push((shard_index, row));
            for p in 0..np {
                new_table[row * shard_max_pages + p] = next;
                next += 1;
            }
        }
        let workload = KvDecode {
            batch: slice.len(),
            context: lens.iter().copied().max().unwrap_or(1),
            lengths: Lengths::Explicit(lens.clone()),
            context_lens: lens.clone(),
            launch_hint: None,
            ..k.clone()
        };
        let mut set = vec![inputs.expect("q").take_axis(0, &rows)];
        for name in ["k_pages", "v_pages"] {
            if let Some(t) = inputs.get(name) {
                set.push(t.take_axis(0, &physical));
            }
        }
        set.push(Tensor::from_i32(
            "page_table",
            vec![slice.len(), shard_max_pages],
            &new_table,
        ));
        let lens_i32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        set.push(Tensor::from_i32(
            "context_lens",
            vec![slice.len()],
            &lens_i32,
        ));
        set.extend(clone_named(inputs, &["kv_scale"]));
        shards.push(Shard {
            device,
            workload: Workload::KvDecode(workload),
            inputs: TensorSet(set),
        });
    }
    (shards, Merge::Sequence { parts })
}

/// The flash-decoding merge, in f64: out = sum_i e^(lse_i - m) out_i / sum_i e^(lse_i - m),
/// lse = m + ln(sum_i e^(lse_i - m)). A sequence held by one shard is copied as it is.
fn merge_sequence(k: &KvDecode, parts: &[Vec<(usize, usize)>], outs: &[TensorSet]) -> TensorSet {
    let (hq, dv) = (k.q_heads, k.head_dim_v);
    let o: Vec<Vec<f32>> = outs.iter().map(|s| s.expect("out").as_f32()).collect();
    let l: Vec<Vec<f32>> = outs.iter().map(|s| s.expect("lse").as_f32()).collect();
    let mut out = vec![f32::NAN; k.batch * hq * dv];
    let mut lse = vec![f32::NAN; k.batch * hq];
    for (b, held) in parts.iter().enumerate() {
        for h in 0..hq {
            let at = |&(s, r): &(usize, usize)| (s, r * hq + h);
            if let [one] = held.as_slice() {
                let (s, i) = at(one);
                out[(b * hq + h) * dv..(b * hq + h + 1) * dv]
                    .copy_from_slice(&o[s][i * dv..(i + 1) * dv]);
                lse[b * hq + h] = l[s][i];
                continue;
            }
            let m = held
                .iter()
                .map(|p| {
                    let (s, i) = at(p);
                    l[s][i] as f64
                })
                .fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0f64;
            let mut acc = vec![0f64; dv];
            for p in held {
                let (s, i) = at(p);
                let wgt = (l[s][i] as f64 - m).exp();
                total += wgt;
                for (a, &x) in acc.iter_mut().zip(&o[s][i * dv..(i + 1) * dv]) {
                    *a += wgt * x as f64;
                }
            }
            for (d, a) in acc.iter().enumerate() {
                out[(b * hq + h) * dv + d] = (a / total) as f32;
            }
            lse[b * hq + h] = (m + total.ln()) as f32;
        }
    }
    TensorSet(vec![
        Tensor::from_f32("out", vec![k.batch, hq, dv], &out),
        Tensor::from_f32("lse", vec![k.batch, hq], &lse),
    ])
}

/// Experts: device i owns a contiguous block of experts. Every (token, choice) routed there
/// becomes one row of the shard (its token's x, top_k = 1, the local expert id and the
/// routing weight), so the shard computes exactly the one-device kernel's slot row
/// (dot x scale x weight); the combine adds a token's slot rows in choice order, as the
/// one-device kernels' final pass does.
fn experts(e: &ExpertGemv, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let ids = inputs.expect("topk_ids").as_i32();
    let rw = inputs.expect("topk_weights").as_f32();
    let owners = ranges(e.experts, n);
    let mut slots = vec![(0, 0); e.batch * e.top_k];
    let mut shards = Vec::new();
    for (device, own) in owners.into_iter().enumerate() {
        let pairs: Vec<usize> = (0..e.batch * e.top_k)
            .filter(|&s| own.contains(&(ids[s] as usize)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        for (row, &s) in pairs.iter().enumerate() {
            slots[s] = (shards.len(), row);
        }
        let local: Vec<u32> = pairs
            .iter()
            .map(|&s| ids[s] as u32 - own.start as u32)
            .collect();
        let tokens: Vec<usize> = pairs.iter().map(|&s| s / e.top_k).collect();
        let weights: Vec<f32> = pairs.iter().map(|&s| rw[s]).collect();
        let workload = ExpertGemv {
            experts: own.len(),
            top_k: 1,
            batch: pairs.len(),
            routing: Routing::Ids(local.iter().map(|&i| vec![i]).collect()),
            topk_ids: local.clone(),
            ..e.clone()
        };
        let mut set = vec![
            inputs.expect("x").take_axis(0, &tokens),
            inputs.expect("w").slice_axis(0, own.clone()),
        ];
        if let Some(s) = inputs.get("w_scale") {
            set.push(s.slice_axis(0, own.clone()));
        }
        let local_i32: Vec<i32> = local.iter().map(|&i| i as i32).collect();
        set.push(Tensor::from_i32(
            "topk_ids",
            vec![pairs.len(), 1],
            &local_i32,
        ));
        set.push(Tensor::from_f32(
            "topk_weights",
            vec![pairs.len(), 1],
            &weights,
        ));
        shards.push(Shard {
            device,
            workload: Workload::ExpertGemv(workload),
            inputs: TensorSet(set),
        });
    }
    (shards, Merge::Experts { slots })
}

/// Tensor: every expert's output rows are cut into contiguous blocks, one per device.
fn tensor(e: &ExpertGemv, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let shards = ranges(e.d_out, n)
        .into_iter()
        .enumerate()
        .map(|(device, rows)| {
            let mut set = vec![
                inputs.expect("x").clone(),
                inputs.expect("w").slice_axis(1, rows.clone()),
            ];
            if let Some(s) = inputs.get("w_scale") {
                set.push(s.slice_axis(1, rows.clone()));
            }
            set.extend(clone_named(inputs, &["topk_ids", "topk_weights"]));
            Shard {
                device,
                workload: Workload::ExpertGemv(ExpertGemv {
                    d_out: rows.len(),
                    ..e.clone()
                }),
                inputs: TensorSet(set),
            }
        })
        .collect();
    (shards, Merge::Concat(vec![("y", 1)]))
}

/// Data: each device streams a contiguous share of the words.
fn data(s: &Stream, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let shards = ranges(s.words(), n)
        .into_iter()
        .enumerate()
        .map(|(device, words)| Shard {
            device,
            workload: Workload::Stream(Stream {
                bytes: 4 * words.len() as u64,
                ..s.clone()
            }),
            inputs: TensorSet(vec![inputs.expect("src").slice_axis(0, words)]),
        })
        .collect();
    let merge = match s.op {
        StreamOp::Read => Merge::StreamSum,
        _ => Merge::Concat(vec![("dst", 0)]),
    };
    (shards, merge)
}

/// `tolerance`: the relative L2 difference allowed when not identical
/// (`SplitKind::one_device_tolerance`).
pub fn compare_outputs(tolerance: f64, combined: &TensorSet, one: &TensorSet) -> VsOneDevice {
    let (mut identical, mut max_abs, mut num, mut den) = (true, 0f64, 0f64, 0f64);
    let mut shapes_agree = true;
    for t in &one.0 {
        let Some(c) = combined.get(t.name) else {
            shapes_agree = false;
            continue;
        };
        if c.shape != t.shape {
            shapes_agree = false;
            continue;
        }
        identical &= c.bytes == t.bytes;
        for (a, b) in c.decode_f64().iter().zip(t.decode_f64()) {
            let d = (a - b).abs();
            max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d) };
            num += d * d;
            den += b * b;
        }
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    let identical = identical && shapes_agree;
    VsOneDevice {
        identical,
        max_abs_diff: max_abs,
        rel_l2_diff: rel,
        pass: shapes_agree && (identical || (rel.is_finite() && rel <= tolerance)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_in_order_and_uneven_goes_first() {
        assert_eq!(ranges(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(ranges(2, 3), vec![0..1, 1..2, 2..2]);
        assert_eq!(ranges(8, 1), vec![0..8]);
    }
}
