//! HOW a point runs: the one `Backend` trait, written for GPUs (uploads once per point,
//! device timers, outputs read back only for the check), and the registry of backends.

pub mod cpu;
pub mod cuda;
pub mod wgpu;

use crate::workload::{Link, TensorSet, Workload};
use serde::{Deserialize, Serialize};

/// Every backend decodelab knows, in the order `auto` prefers them.
pub const BACKEND_NAMES: [&str; 3] = ["cuda", "wgpu", "cpu"];

#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    /// Memory a point may use, in bytes, when the backend can tell.
    pub memory_bytes: Option<u64>,
    /// Backend-specific facts worth printing (driver, threads, features, limits).
    pub details: Vec<(String, String)>,
    /// PCI bus id, where the device has one: how NVML finds its energy counter.
    pub pci_bus_id: Option<String>,
    /// A software emulation of a GPU (Mesa lavapipe): correct, not fast, so `auto` prefers
    /// the CPU backend to it.
    pub emulated: bool,
}

/// Which clock timed the reps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// Device timestamps (CUDA events, wgpu timestamp queries).
    Gpu,
    /// The host clock around each rep (the CPU backend's own timer).
    Host,
}

/// Whether the last-level cache may hold the working set between reps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Each rep starts with the inputs out of cache (flushed, rotated, or far larger than it).
    #[default]
    Cold,
    Warm,
}

/// A point uploaded to a device and compiled, ready to be timed.
/// `Send`: the shards of a split run on their devices from one thread each.
pub trait Prepared: Send {
    fn timer(&self) -> Timer;
    /// How the cache mode was achieved, e.g. "flush 64 MiB between reps".
    fn cache_method(&self) -> String;
    /// Run `warmup` untimed reps, then `reps` timed ones; seconds per timed rep.
    fn run(&mut self, warmup: usize, reps: usize) -> anyhow::Result<Vec<f64>>;
    /// Copy the outputs back to the host (only for the check).
    fn read_outputs(&mut self) -> anyhow::Result<TensorSet>;
    /// Run `steps` steps back to back, untimed and without cache flushes, and wait for them:
    /// the loop an energy window measures.
    fn run_steps(&mut self, steps: u64) -> anyhow::Result<()>;
    /// The concrete point, for a backend's own multi-device transport (NCCL on cuda).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Shard outputs moved to where a split point is assembled, and how they travelled.
pub struct Gathered {
    /// Per shard, in shard order, on the host (from the last rep).
    pub outputs: Vec<TensorSet>,
    /// `host-staged`, `nccl (N ranks)`, ...
    pub method: String,
    /// Seconds per rep of the transport alone.
    pub times: Vec<f64>,
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn devices(&self) -> &[DeviceInfo];
    /// Bytes of the device's memory a point needs on this backend.
    fn memory_needed(&self, workload: &Workload) -> u64 {
        workload.device_bytes()
    }
    /// Upload the inputs, allocate poisoned outputs and build the kernel for one point.
    fn prepare<'a>(
        &'a self,
        device: usize,
        workload: &Workload,
        inputs: &TensorSet,
        cache: CacheMode,
    ) -> anyhow::Result<Box<dyn Prepared + 'a>>;
    /// Move every shard's outputs to where the point is assembled, `reps` times, timing the
    /// transport. The default reads each shard back to the host (host-staged), on the host
    /// clock; cuda gathers them on the first device with NCCL.
    fn gather(
        &self,
        shards: &mut [Box<dyn Prepared + '_>],
        reps: usize,
    ) -> anyhow::Result<Gathered> {
        host_staged_gather(shards, reps)
    }

    /// Prepare a `link` point: `run` times copies from device `src` to `dst` (and back, both
    /// ways), `read_outputs` returns what landed. The string names the path the bytes take.
    fn prepare_link<'a>(
        &'a self,
        src: usize,
        dst: usize,
        link: &Link,
        inputs: &TensorSet,
    ) -> anyhow::Result<(Box<dyn Prepared + 'a>, String)> {
        let _ = (src, dst, link, inputs);
        anyhow::bail!(
            "{}: the link kernel is not built for this backend",
            self.name()
        )
    }
}

/// The outcome of looking for a backend: usable, or why not.
pub enum Probe {
    Available(Box<dyn Backend>),
    Unavailable { name: &'static str, reason: String },
}

/// Look for one backend by name. Never panics: an absent driver is a reason, not an error.
pub fn probe(name: &str) -> Option<Probe> {
    match name {
        "cpu" => Some(Probe::Available(Box::new(cpu::CpuBackend::new()))),
        "wgpu" => Some(match wgpu::WgpuBackend::probe() {
            Ok(b) => Probe::Available(Box::new(b)),
            Err(reason) => Probe::Unavailable {
                name: "wgpu",
                reason,
            },
        }),
        "cuda" => Some(match cuda::CudaBackend::probe() {
            Ok(b) => Probe::Available(Box::new(b)),
            Err(reason) => Probe::Unavailable {
                name: "cuda",
                reason,
            },
        }),
        _ => None,
    }
}

pub fn probe_all() -> Vec<Probe> {
    BACKEND_NAMES.iter().filter_map(|n| probe(n)).collect()
}

/// Read every shard's outputs back to the host, `reps` times, timed on the host clock.
pub fn host_staged_gather(
    shards: &mut [Box<dyn Prepared + '_>],
    reps: usize,
) -> anyhow::Result<Gathered> {
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = std::time::Instant::now();
        outputs = shards
            .iter_mut()
            .map(|p| p.read_outputs())
            .collect::<anyhow::Result<Vec<_>>>()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(Gathered {
        outputs,
        method: "host-staged".into(),
        times,
    })
}
