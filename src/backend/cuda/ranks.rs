//! NCCL between ranks (`cluster`): one communicator per split point over every rank, its
//! unique id made on rank 0 and sent to the others by MPI (as nccl-tests bootstraps); each
//! rank sends its shard's output buffers from its device to rank 0's, which reads them back
//! for the per-shard checks and, for a sequence split, merges them there (merge.rs). NCCL
//! picks its own transport: NVLink, InfiniBand or sockets.

use super::merge::{Staged, merge_sequence};
use super::{Point, read_back};
use crate::backend::{Gathered, Prepared};
use crate::cluster::World;
use crate::shard::{Plan, Shard};
use crate::workload::{Tensor, TensorSet, Workload};
use anyhow::{Context, anyhow};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, result as nccl};
use std::sync::Arc;
use std::time::Instant;

/// Every rank's communicator on `stream`: rank 0 makes the NCCL id and broadcasts it.
fn join(w: &World, stream: &Arc<CudaStream>) -> anyhow::Result<Comm> {
    let id = if w.is_root() {
        let id = Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?;
        Some(id.internal().to_vec())
    } else {
        None
    };
    let id: Vec<std::ffi::c_char> = w.broadcast(id.as_ref())?;
    let id = Id::uninit(
        id.try_into()
            .map_err(|_| anyhow!("an NCCL id of the wrong size"))?,
    );
    Comm::from_rank(stream.clone(), w.rank, w.size, id)
        .map_err(|e| anyhow!("ncclCommInitRank (rank {} of {}): {e:?}", w.rank, w.size))
}

/// Per shard, per output: its (poisoned) tensor and a device buffer for it.
type Staging = Vec<Vec<(Tensor, CudaSlice<u8>)>>;

/// A staging buffer on `stream` for each output of each shard, its exact size, with the
/// output's (poisoned) tensor.
fn stage(stream: &Arc<CudaStream>, shards: &[&Shard]) -> anyhow::Result<Staging> {
    shards
        .iter()
        .map(|shard| {
            shard
                .workload
                .outputs()
                .iter()
                .map(|spec| {
                    let t = spec.poisoned();
                    let buf = stream
                        .alloc_zeros::<u8>(t.bytes.len())
                        .map_err(|e| anyhow!("staging: {e:?}"))?;
                    Ok((t, buf))
                })
                .collect()
        })
        .collect()
}

/// Gather every other rank's shard outputs on rank 0 with NCCL, `reps` times, each rep
/// started by rank 0's word and timed on rank 0 from the group call to its stream's end.
/// (About 100 lines: the reps, the read-back and the merge use the same staging buffers.)
pub(super) fn nccl_gather_ranks(
    w: &World,
    local: usize,
    mine: Option<&mut (dyn Prepared + '_)>,
    plan: &Plan,
    parent: &Workload,
    reps: usize,
) -> anyhow::Result<Option<Gathered>> {
    let point = match mine {
        Some(p) => Some(
            p.as_any_mut()
                .downcast_mut::<Point>()
                .context("an NCCL gather between ranks needs a cuda shard")?,
        ),
        None => None,
    };
    // A rank without a shard still joins the communicator, on its own device.
    let stream = match &point {
        Some(p) => p.stream.clone(),
        None => CudaContext::new(local)
            .map_err(|e| anyhow!("cuda device {local}: {e:?}"))?
            .default_stream(),
    };
    let comm = join(w, &stream)?;
    // Rank 0 stages every other shard's outputs, each its exact size.
    let theirs: Vec<_> = plan.shards.iter().filter(|s| s.device != w.rank).collect();
    let mut staging = if w.is_root() {
        stage(&stream, &theirs)?
    } else {
        Vec::new()
    };
    let mut times = Vec::new();
    for _ in 0..reps {
        stream.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        if w.is_root() {
            (1..w.size).try_for_each(|r| w.send(r, &()))?;
        } else {
            let () = w.recv(0)?;
        }
        let t0 = Instant::now();
        nccl::group_start().map_err(|e| anyhow!("ncclGroupStart: {e:?}"))?;
        for (shard, bufs) in theirs.iter().zip(staging.iter_mut()) {
            for (_, buf) in bufs.iter_mut() {
                comm.recv(buf, shard.device as i32)
                    .map_err(|e| anyhow!("ncclRecv from rank {}: {e:?}", shard.device))?;
            }
        }
        if let (false, Some(p)) = (w.is_root(), &point) {
            for (spec, i) in &p.outputs {
                // Only the output's own bytes: buffers are padded.
                let n = spec.elem.bytes_for(spec.len());
                comm.send(&p.buffers[*i].slice(..n), 0)
                    .map_err(|e| anyhow!("ncclSend to rank 0: {e:?}"))?;
            }
        }
        nccl::group_end().map_err(|e| anyhow!("ncclGroupEnd: {e:?}"))?;
        stream.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        times.push(t0.elapsed().as_secs_f64());
    }
    if !w.is_root() {
        return Ok(None);
    }
    let mut outputs = Vec::new();
    for bufs in &staging {
        let set: anyhow::Result<Vec<Tensor>> = bufs
            .iter()
            .map(|(spec, buf)| read_back(&stream, buf, spec))
            .collect();
        outputs.push(TensorSet(set?));
    }
    // A sequence split merges on rank 0's device: its own shard's buffers and the staged.
    let merged = match (parent, plan.sequence_table(), &point) {
        (Workload::KvDecode(k), Some(table), Some(own)) => {
            let func = own
                .merge_shards
                .as_ref()
                .context("rank 0's shard has no merge_shards kernel")?;
            let mut theirs = staging.iter();
            let mut staged = Vec::new();
            for shard in &plan.shards {
                staged.push(if shard.device == w.rank {
                    Staged::of(own.outputs.iter().map(|(t, i)| (t.name, &own.buffers[*i])))?
                } else {
                    let bufs = theirs.next().context("a shard's staging is missing")?;
                    Staged::of(bufs.iter().map(|(t, b)| (t.name, b)))?
                });
            }
            Some(merge_sequence(&stream, func, k, &table, &staged, reps)?)
        }
        _ => None,
    };
    Ok(Some(Gathered {
        outputs,
        method: format!(
            "nccl {} between {} ranks",
            super::nccl::version().unwrap_or_default(),
            w.size
        ),
        times,
        merged,
    }))
}
