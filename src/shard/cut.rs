//! Each split kind's cut: the shards of a point (their workloads and input slices) and how
//! their outputs merge back. Exact by construction where it can be (see `SplitKind`).

use super::{Merge, Shard, ranges};
use crate::workload::{
    Attention, ExpertGemv, KvDecode, Lengths, Routing, Stream, StreamOp, Tensor, TensorSet,
    Workload,
};

fn clone_named(inputs: &TensorSet, names: &[&str]) -> Vec<Tensor> {
    names
        .iter()
        .filter_map(|n| inputs.get(n).cloned())
        .collect()
}

/// Heads: GQA shards own whole KV heads (and their query groups), so every cached row is read
/// by exactly one device; MLA has one latent head, so shards own query heads and each reads
/// the whole latent cache (the real cost of tensor-parallel MLA).
pub(super) fn heads(k: &KvDecode, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
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
pub(super) fn sequence(k: &KvDecode, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
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
pub(super) fn merge_sequence(
    k: &KvDecode,
    parts: &[Vec<(usize, usize)>],
    outs: &[TensorSet],
) -> TensorSet {
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
pub(super) fn experts(e: &ExpertGemv, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
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
        // Scales go with their experts (nvfp4's f32 per expert too).
        for name in ["w_scale", "w_scale_2"] {
            if let Some(s) = inputs.get(name) {
                set.push(s.slice_axis(0, own.clone()));
            }
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
/// With 128 x 128 block scales the cuts fall on block edges, each device taking whole blocks
/// and their scales (as tensor-parallel fp8 checkpoints are cut).
pub(super) fn tensor(e: &ExpertGemv, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
    let block = e.scale_block().unwrap_or(1);
    let shards = ranges(e.d_out.div_ceil(block), n)
        .into_iter()
        .enumerate()
        .map(|(device, blocks)| {
            let rows = blocks.start * block..(blocks.end * block).min(e.d_out);
            let mut set = vec![
                inputs.expect("x").clone(),
                inputs.expect("w").slice_axis(1, rows.clone()),
            ];
            if let Some(s) = inputs.get("w_scale") {
                set.push(s.slice_axis(1, blocks));
            }
            // A 4-bit row's groups lie along d_in, so a cut between rows keeps them whole;
            // nvfp4's f32 per expert goes to every device.
            set.extend(clone_named(
                inputs,
                &["topk_ids", "topk_weights", "w_scale_2"],
            ));
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
pub(super) fn data(s: &Stream, inputs: &TensorSet, n: usize) -> (Vec<Shard>, Merge) {
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
