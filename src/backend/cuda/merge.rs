//! A sequence split's merge on the device that gathered the shards
//! (kernels/kv_merge_shards.cu): the shards' (out, lse) are already on the first device, so
//! the merge reads them there and only the point's outputs come back for the check.

use crate::backend::Merged;
use crate::shard::SequenceTable;
use crate::workload::{KvDecode, Tensor, TensorSet};
use anyhow::{Context, anyhow};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Shard outputs gathered on the root: per shard, its `out` and `lse` buffers.
pub(super) struct Staged<'a> {
    pub out: &'a CudaSlice<u8>,
    pub lse: &'a CudaSlice<u8>,
}

impl<'a> Staged<'a> {
    /// A shard's `out` and `lse` from its (output name, buffer) pairs.
    pub fn of(
        named: impl Iterator<Item = (&'static str, &'a CudaSlice<u8>)>,
    ) -> anyhow::Result<Self> {
        let (mut out, mut lse) = (None, None);
        for (name, buf) in named {
            match name {
                "out" => out = Some(buf),
                "lse" => lse = Some(buf),
                _ => {}
            }
        }
        Ok(Staged {
            out: out.context("a shard without 'out' to merge")?,
            lse: lse.context("a shard without 'lse' to merge")?,
        })
    }
}

/// Merge `staged` into the point's `out` and `lse` on `root`, `reps` times, each timed with
/// events; the outputs are read back once.
pub(super) fn merge_sequence(
    root: &Arc<CudaStream>,
    func: &CudaFunction,
    k: &KvDecode,
    table: &SequenceTable,
    staged: &[Staged],
    reps: usize,
) -> anyhow::Result<Merged> {
    let err = |what: &'static str| move |e: cudarc::driver::DriverError| anyhow!("{what}: {e:?}");
    anyhow::ensure!(
        table.part_start.len() == k.batch + 1,
        "a merge table for {} sequences, the point has {}",
        table.part_start.len() - 1,
        k.batch
    );
    // The staged buffers live on `root`'s device, written by NCCL on this stream.
    let out_ptrs: Vec<u64> = staged.iter().map(|s| s.out.device_ptr(root).0).collect();
    let lse_ptrs: Vec<u64> = staged.iter().map(|s| s.lse.device_ptr(root).0).collect();
    let out_ptrs = root.clone_htod(&out_ptrs).map_err(err("upload"))?;
    let lse_ptrs = root.clone_htod(&lse_ptrs).map_err(err("upload"))?;
    let starts = root.clone_htod(&table.part_start).map_err(err("upload"))?;
    let flat: Vec<i32> = table.parts.iter().flatten().copied().collect();
    let parts = root.clone_htod(&flat).map_err(err("upload"))?;
    let specs: Vec<Tensor> = crate::workload::Workload::KvDecode(k.clone())
        .outputs()
        .iter()
        .map(|o| o.poisoned())
        .collect();
    let mut bufs = Vec::new();
    for spec in &specs {
        bufs.push(
            root.clone_htod(&spec.bytes[..])
                .map_err(err("allocating the merged outputs"))?,
        );
    }
    let cfg = LaunchConfig {
        grid_dim: (k.q_heads as u32, k.batch as u32, 1),
        block_dim: (super::compile::MERGE_WG as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let event = || {
        root.context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(err("event"))
    };
    let mut events = Vec::new();
    for _ in 0..reps.max(1) {
        let (start, end) = (event()?, event()?);
        start.record(root).map_err(err("event"))?;
        let (out, lse) = bufs.split_at_mut(1);
        let mut b = root.launch_builder(func);
        b.arg(&out_ptrs)
            .arg(&lse_ptrs)
            .arg(&starts)
            .arg(&parts)
            .arg(&mut out[0])
            .arg(&mut lse[0]);
        // SAFETY: the arguments match merge_shards' signature; every (shard, row) of the
        // table lies in its shard's buffers (the plan made both), and the outputs hold
        // batch x q_heads (x head_dim_v) floats.
        unsafe { b.launch(cfg) }.map_err(err("launching merge_shards"))?;
        end.record(root).map_err(err("event"))?;
        events.push((start, end));
    }
    root.synchronize().map_err(err("merge_shards"))?;
    let times = super::seconds_between(&events)?;
    let mut outputs = Vec::new();
    for (spec, buf) in specs.iter().zip(&bufs) {
        outputs.push(super::read_back(root, buf, spec).context("the merged outputs")?);
    }
    Ok(Merged {
        outputs: TensorSet(outputs),
        times,
        on: format!("merge_shards on cuda:{}", root.context().ordinal()),
    })
}
