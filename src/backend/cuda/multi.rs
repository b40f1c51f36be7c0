//! CUDA across devices: the link kernel (peer copies, as nvbandwidth does), peer access, and
//! the NCCL gather that combines a split point's shards on the first device.

use super::merge::{Staged, merge_sequence};
use super::{CudaBackend, Point};
use crate::backend::{Gathered, Prepared, Timer};
use crate::shard::SequenceTable;
use crate::workload::{KvDecode, Link, Tensor, TensorSet};
use anyhow::{anyhow, bail};
use cudarc::driver::sys::{self, CUevent_flags};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, result as nccl};
use std::sync::Arc;
use std::time::Instant;

fn context(device: usize) -> anyhow::Result<Arc<CudaContext>> {
    let ctx = CudaContext::new(device).map_err(|e| anyhow!("cuda device {device}: {e:?}"))?;
    // SAFETY: a link's buffers are used on their own context's default stream, and the
    // copies between streams are ordered with explicit events below.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx)
}

/// Whether `from` can read and write `to`'s memory directly (NVLink or PCIe peer-to-peer).
pub fn can_access_peer(from: usize, to: usize) -> bool {
    let (Ok(a), Ok(b)) = (
        cudarc::driver::result::device::get(from as i32),
        cudarc::driver::result::device::get(to as i32),
    ) else {
        return false;
    };
    let mut can = 0;
    // SAFETY: a and b are valid device handles; `can` outlives the call.
    let r = unsafe { sys::cuDeviceCanAccessPeer(&mut can, a, b) };
    r == sys::CUresult::CUDA_SUCCESS && can == 1
}

/// Enable `ctx`'s access to `peer`'s memory; already enabled is fine.
fn enable_peer(ctx: &CudaContext, peer: &CudaContext) -> anyhow::Result<()> {
    ctx.bind_to_thread().map_err(|e| anyhow!("{e:?}"))?;
    // SAFETY: both contexts are live; the current context is `ctx`.
    let r = unsafe { sys::cuCtxEnablePeerAccess(peer.cu_ctx(), 0) };
    match r {
        sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {
            Ok(())
        }
        other => bail!("enabling peer access: {other:?}"),
    }
}

fn upload(stream: &Arc<CudaStream>, bytes: &[u8]) -> anyhow::Result<CudaSlice<u8>> {
    stream
        .clone_htod(bytes)
        .map_err(|e| anyhow!("upload of {} bytes: {e:?}", bytes.len()))
}

/// A link point: `a_src` on device A copied into `b_dst` on B (and, both ways, `b_src` into
/// `a_dst` at the same time). Timed with events on B's stream, which waits for A's copy.
pub(super) struct LinkPoint {
    a: Arc<CudaStream>,
    b: Arc<CudaStream>,
    a_src: CudaSlice<u8>,
    b_dst: CudaSlice<u8>,
    back: Option<(CudaSlice<u8>, CudaSlice<u8>)>,
    outputs: Vec<Tensor>,
}

impl CudaBackend {
    pub(super) fn link_point(
        &self,
        src: usize,
        dst: usize,
        link: &Link,
        inputs: &TensorSet,
    ) -> anyhow::Result<(LinkPoint, String)> {
        for d in [src, dst] {
            if d >= self.devices.len() {
                bail!("cuda has no device {d}");
            }
        }
        let ctx_a = context(src)?;
        let ctx_b = if src == dst {
            ctx_a.clone()
        } else {
            context(dst)?
        };
        let path = if src == dst {
            "same device: device-to-device copy".to_string()
        } else if can_access_peer(src, dst) && can_access_peer(dst, src) {
            enable_peer(&ctx_a, &ctx_b)?;
            enable_peer(&ctx_b, &ctx_a)?;
            format!(
                "peer copy, {}",
                crate::backend::cuda::topology::describe(&self.devices[src], &self.devices[dst])
            )
        } else {
            "staged by the driver (no peer access between these devices)".into()
        };
        let (a, b) = (ctx_a.default_stream(), ctx_b.default_stream());
        let specs = crate::workload::Workload::Link(link.clone()).outputs();
        let poisoned = |name: &str| {
            specs
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.poisoned())
                .ok_or_else(|| anyhow!("link has no output {name}"))
        };
        let a_src = upload(&a, &inputs.expect("src").bytes)?;
        let dst_t = poisoned("dst")?;
        let b_dst = upload(&b, &dst_t.bytes)?;
        let mut outputs = vec![dst_t];
        let back = if link.both_ways() {
            let back_t = poisoned("dst_back")?;
            let pair = (
                upload(&b, &inputs.expect("src_back").bytes)?,
                upload(&a, &back_t.bytes)?,
            );
            outputs.push(back_t);
            Some(pair)
        } else {
            None
        };
        for s in [&a, &b] {
            s.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        }
        Ok((
            LinkPoint {
                a,
                b,
                a_src,
                b_dst,
                back,
                outputs,
            },
            path,
        ))
    }
}

impl LinkPoint {
    fn event(&self) -> anyhow::Result<cudarc::driver::CudaEvent> {
        self.b
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| anyhow!("event: {e:?}"))
    }

    /// One transfer: A -> B on B's stream; both ways, B -> A on A's stream at the same time.
    fn copy(&mut self) -> anyhow::Result<()> {
        let b = self.b.clone();
        b.memcpy_dtod(&self.a_src, &mut self.b_dst)
            .map_err(|e| anyhow!("copy A -> B: {e:?}"))?;
        if let Some((b_src, a_dst)) = self.back.as_mut() {
            self.a
                .memcpy_dtod(b_src, a_dst)
                .map_err(|e| anyhow!("copy B -> A: {e:?}"))?;
        }
        Ok(())
    }
}

impl Prepared for LinkPoint {
    fn timer(&self) -> Timer {
        Timer::Gpu
    }

    fn cache_method(&self) -> String {
        "a copy reads and writes each byte once; no flush".into()
    }

    fn run(&mut self, warmup: usize, reps: usize) -> anyhow::Result<Vec<f64>> {
        for _ in 0..warmup {
            self.copy()?;
        }
        let mut events = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = self.event()?;
            start.record(&self.b).map_err(|e| anyhow!("{e:?}"))?;
            if self.back.is_some() {
                // A's copy starts no earlier than the timed window.
                self.a.wait(&start).map_err(|e| anyhow!("{e:?}"))?;
            }
            self.copy()?;
            if self.back.is_some() {
                // The window closes when both directions are done.
                let a_done = self
                    .a
                    .record_event(None)
                    .map_err(|e| anyhow!("event: {e:?}"))?;
                self.b.wait(&a_done).map_err(|e| anyhow!("{e:?}"))?;
            }
            let end = self.event()?;
            end.record(&self.b).map_err(|e| anyhow!("{e:?}"))?;
            events.push((start, end));
        }
        for s in [&self.a, &self.b] {
            s.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        }
        super::seconds_between(&events)
    }

    fn read_outputs(&mut self) -> anyhow::Result<TensorSet> {
        let mut set = Vec::new();
        let mut bufs = vec![(&self.b, &self.b_dst)];
        if let Some((_, a_dst)) = &self.back {
            bufs.push((&self.a, a_dst));
        }
        for (spec, (stream, buf)) in self.outputs.iter().zip(bufs) {
            set.push(super::read_back(stream, buf, spec)?);
        }
        Ok(TensorSet(set))
    }

    fn run_steps(&mut self, steps: u64) -> anyhow::Result<()> {
        for _ in 0..steps {
            self.copy()?;
        }
        for s in [&self.a, &self.b] {
            s.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        }
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Gather every shard's outputs onto the first shard's device with NCCL (one rank per
/// distinct device; with virtual devices, one rank that sends to itself), `reps` times,
/// timed on the host around the group call and the wait for every stream. The gathered
/// buffers are read back from the first device, so what NCCL delivered is what is checked.
/// With `merge` (a sequence split), the first device then merges them (merge.rs). (About 100
/// lines: the communicators, the staging buffers and the reps share one scope, so NCCL's
/// buffers outlive every group call that names them.)
pub(super) fn nccl_gather(
    shards: &mut [Box<dyn Prepared + '_>],
    merge: Option<(&KvDecode, SequenceTable)>,
    reps: usize,
) -> anyhow::Result<Gathered> {
    crate::backend::cuda::nccl::require().map_err(anyhow::Error::msg)?;
    let mut points: Vec<&mut Point> = Vec::new();
    for s in shards.iter_mut() {
        let p = s
            .as_any_mut()
            .downcast_mut::<Point>()
            .ok_or_else(|| anyhow!("an NCCL gather needs cuda shards"))?;
        points.push(p);
    }
    anyhow::ensure!(!points.is_empty(), "no shards to gather");
    // One rank per distinct device, in order of first appearance: rank 0 assembles.
    let mut rank_of = Vec::new();
    let mut streams: Vec<Arc<CudaStream>> = Vec::new();
    for p in &points {
        let ordinal = p.ctx.ordinal();
        let rank = match streams
            .iter()
            .position(|s| s.context().ordinal() == ordinal)
        {
            Some(r) => r,
            None => {
                streams.push(p.stream.clone());
                streams.len() - 1
            }
        };
        rank_of.push(rank);
    }
    let comms = Comm::from_devices(streams.clone())
        .map_err(|e| anyhow!("NCCL init over {} device(s): {e:?}", streams.len()))?;
    let root = &streams[0];
    // A staging buffer on the root for every output of every shard.
    let mut staging: Vec<Vec<CudaSlice<u8>>> = Vec::new();
    for p in &points {
        let mut v = Vec::new();
        for (_, i) in &p.outputs {
            v.push(
                root.alloc_zeros::<u8>(p.buffers[*i].len())
                    .map_err(|e| anyhow!("staging: {e:?}"))?,
            );
        }
        staging.push(v);
    }
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        for s in &streams {
            s.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        }
        let t0 = Instant::now();
        nccl::group_start().map_err(|e| anyhow!("ncclGroupStart: {e:?}"))?;
        for ((p, &rank), stage) in points.iter().zip(&rank_of).zip(staging.iter_mut()) {
            for ((_, i), dst) in p.outputs.iter().zip(stage.iter_mut()) {
                comms[rank]
                    .send(&p.buffers[*i], 0)
                    .map_err(|e| anyhow!("ncclSend: {e:?}"))?;
                comms[0]
                    .recv(dst, rank as i32)
                    .map_err(|e| anyhow!("ncclRecv: {e:?}"))?;
            }
        }
        nccl::group_end().map_err(|e| anyhow!("ncclGroupEnd: {e:?}"))?;
        for s in &streams {
            s.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let mut outputs = Vec::new();
    for (p, stage) in points.iter().zip(&staging) {
        let mut set = Vec::new();
        for ((spec, _), buf) in p.outputs.iter().zip(stage) {
            set.push(super::read_back(root, buf, spec)?);
        }
        outputs.push(TensorSet(set));
    }
    let merged = match merge {
        Some((k, table)) => {
            let func = points[0]
                .merge_shards
                .as_ref()
                .ok_or_else(|| anyhow!("the first shard has no merge_shards kernel"))?;
            let staged = points
                .iter()
                .zip(&staging)
                .map(|(p, stage)| Staged::of(p.outputs.iter().map(|(t, _)| t.name).zip(stage)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(merge_sequence(root, func, k, &table, &staged, reps)?)
        }
        None => None,
    };
    Ok(Gathered {
        outputs,
        method: format!(
            "nccl {} ({} rank{})",
            crate::backend::cuda::nccl::version().unwrap_or_default(),
            streams.len(),
            if streams.len() == 1 { "" } else { "s" }
        ),
        times,
        merged,
    })
}
