//! Multi-device splits, planned: how one point is cut into shards (one per device) and how
//! the shards' outputs are combined into the point's outputs. Like `workload`, nothing here
//! knows which backend runs a shard: backends take these plans, and `split` (above them)
//! runs them.
//!
//! Every split is exact by construction where it can be: a shard is an ordinary `Workload`
//! whose inputs are slices of the parent's, and the combine repeats the parent kernel's own
//! final operations in the parent's order (see each kind below).

mod cut;

use crate::workload::{Attention, Kernel, StreamOp, Tensor, TensorSet, Workload};
use cut::{data, experts, heads, merge_sequence, sequence, tensor};
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
        (Workload::ExpertGemv(e), SplitKind::Tensor) => {
            if e.d_out < n {
                return short("output rows (d_out)", e.d_out);
            }
            if let Some(b) = e.scale_block()
                && e.d_out.div_ceil(b) < n
            {
                return short(
                    "128-row scale blocks (weight_scale: block128)",
                    e.d_out.div_ceil(b),
                );
            }
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

/// A sequence split's merge as a device kernel reads it (kernels/kv_merge_shards.cu):
/// sequence b's parts are `parts[part_start[b] .. part_start[b + 1]]`, each (shard, row).
#[derive(Clone, Debug, PartialEq)]
pub struct SequenceTable {
    pub part_start: Vec<i32>,
    pub parts: Vec<[i32; 2]>,
}

impl Plan {
    /// A sequence split's table of parts, for a merge on the device; None for other splits.
    pub fn sequence_table(&self) -> Option<SequenceTable> {
        let Merge::Sequence { parts } = &self.merge else {
            return None;
        };
        let mut part_start = vec![0i32];
        let mut flat = Vec::new();
        for held in parts {
            flat.extend(held.iter().map(|&(s, r)| [s as i32, r as i32]));
            part_start.push(flat.len() as i32);
        }
        Some(SequenceTable {
            part_start,
            parts: flat,
        })
    }

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
