//! HOW a point runs: the one `Backend` trait, written for GPUs (uploads once per point,
//! device timers, outputs read back only for the check), and the registry of backends.

pub mod cpu;
pub mod cuda;
pub mod plan;
pub mod wgpu;

use crate::registry::{self, Kernel};
use crate::workload::{Link, TensorSet, Workload};
use serde::{Deserialize, Serialize};

/// One implementation of a kernel on a backend. Each kernel keeps its simple, readable one
/// (the reference, the fallback, the "before" of every A/B table); tuned ones register beside
/// it, ahead of it in preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Impl {
    pub backend: &'static str,
    pub kernel: Kernel,
    pub name: &'static str,
    /// Held to the SASS budget in CI: no local memory, streamed tensors in 128-bit loads.
    pub tuned: bool,
    pub about: &'static str,
}

/// Every implementation of every kernel, per backend in the order `impl: best` prefers them
/// (the first that covers a point runs it).
pub const IMPLS: &[Impl] = &[
    cpu_vector(Kernel::Stream, "avx512", CPU_STREAM),
    cpu_vector(Kernel::Stream, "avx2", CPU_STREAM),
    simple(
        "cpu",
        Kernel::Stream,
        "rayon over 64 Ki-word chunks; copy by memcpy",
    ),
    // The vector paths, fastest first: `best` takes the first this CPU has
    // (cpu/vector/simd.rs; DECODELAB_CPU_ISA caps it). portable comes after simple until it
    // beats it where it is the only path (aarch64 has not run it).
    cpu_vector(
        Kernel::KvDecode,
        "amx",
        "bf16 and fp8 caches on AMX tiles (fp8 converted to bf16 exactly): GQA groups of up \
         to 8 as S^T = K . Q^T with K tile-loaded in place and q's (P's) hi and lo halves in \
         one tile; MLA and wider groups as S = q . K^T with K^T transposed; V in VNNI pairs, \
         online softmax in AVX-512",
    ),
    cpu_vector(Kernel::KvDecode, "avx512", CPU_KV),
    cpu_vector(Kernel::KvDecode, "avx2", CPU_KV),
    simple(
        "cpu",
        Kernel::KvDecode,
        "rayon over (sequence, KV head, 256-token chunk), LSE merge",
    ),
    cpu_vector(Kernel::KvDecode, "portable", CPU_KV),
    cpu_vector(
        Kernel::ExpertGemv,
        "avx512",
        "as avx2; 4-bit codes to f32 by 16-bit permutes (64 code bytes by 8 vpermw), a \
         group scale per lane",
    ),
    cpu_vector(Kernel::ExpertGemv, "avx2", CPU_EXPERT),
    simple(
        "cpu",
        Kernel::ExpertGemv,
        "rayon over 16-row blocks, tokens grouped by expert",
    ),
    cpu_vector(Kernel::ExpertGemv, "portable", CPU_EXPERT),
    simple("cpu", Kernel::Link, "a copy within host memory"),
    simple("wgpu", Kernel::Stream, "vec4 words, grid-stride"),
    // After simple: the ceiling every point is held against should not move to a variant no
    // GPU has run yet (bench/2026-11-28-h200 has simple's read beside CUDA's).
    Impl {
        backend: "wgpu",
        kernel: Kernel::Stream,
        name: "unrolled",
        tuned: true,
        about: "four vec4 words per thread per step, loads first, the op alone",
    },
    Impl {
        backend: "wgpu",
        kernel: Kernel::KvDecode,
        name: "unrolled",
        tuned: true,
        about: "straight-line WGSL per shape. GQA: L lanes per token (q in registers), an \
                online softmax per token group; MLA: 16-token tiles, q and latent staged \
                in workgroup memory, 2 value dims x heads per thread",
    },
    simple(
        "wgpu",
        Kernel::KvDecode,
        "one workgroup per (split, head block, sequence); scalar softmax",
    ),
    Impl {
        backend: "wgpu",
        kernel: Kernel::ExpertGemv,
        name: "unrolled",
        tuned: true,
        about: "straight-line WGSL per shape: 256 threads per 4 rows, 4 words in flight, \
                vec4 decode, subgroup sums",
    },
    simple(
        "wgpu",
        Kernel::ExpertGemv,
        "a workgroup per (4 rows, touched expert)",
    ),
    simple(
        "wgpu",
        Kernel::Link,
        "the stream copy kernel within one adapter",
    ),
    simple(
        "cuda",
        Kernel::Stream,
        "16-byte loads, grid-stride, unrolled by 4",
    ),
    // Ahead of simple where the device's tensor cores pass the fragment self-check
    // (cuda/fragments.rs, DEVELOPERS.md): the host shim models the fragments, the device
    // confirms them before `mma` runs there; elsewhere simple runs, and the point says why.
    Impl {
        backend: "cuda",
        kernel: Kernel::KvDecode,
        name: cuda::impls::CudaImpl::Mma.name(),
        tuned: true,
        about: "tensor cores (mma.sync m16n8k16), q and P split hi/lo in rows 0-7 and 8-15 \
                for f32-grade sums; bf16, or fp8 on f16 tensor cores. GQA: 128-bit K loads \
                straight into fragments, a softmax per warp across the lane quad, V staged \
                per warp (ldmatrix.trans), up to 8 heads of a group per block (larger \
                groups side by side). \
                MLA: 8 heads per block (16 at math: bf16, a head per row), 16-token latent \
                tiles by cp.async (two buffers; fp8 converted to f16 per tile), scores split \
                over the latent's dims by warp, V by ldmatrix.trans",
    },
    // After mma until a GPU has measured both: the candidate for MLA's one read of the
    // latent per block. Not held to the SASS budget yet (its tile loop's instructions per
    // byte: `decodelab kernels --sass`, and DEVELOPERS.md's GPU section); what it saves is
    // L2 traffic (the latent read once, not 4-16 times).
    Impl {
        backend: "cuda",
        kernel: Kernel::KvDecode,
        name: cuda::impls::CudaImpl::MmaWide.name(),
        tuned: false,
        about: "MLA only: up to 64 heads per block (32 at math: f32, hi/lo rows), so a \
                block reads its latent slice once; 8 warps, 4 row tiles of the tensor-core \
                tile, q staged once in shared memory, a 3-tile cp.async ring (fp8 converted \
                to f16 per tile), each V fragment (ldmatrix.trans) feeding the 4 row tiles; \
                one block per SM",
    },
    simple(
        "cuda",
        Kernel::KvDecode,
        "flash-decoding on CUDA cores: scalar softmax, scalar PV",
    ),
    // Ahead of simple before a GPU has run it (DEVELOPERS.md): plain CUDA C whose only PTX
    // is a load, so the host shim runs the arithmetic as written.
    Impl {
        backend: "cuda",
        kernel: Kernel::ExpertGemv,
        name: cuda::impls::CudaImpl::WarpRows.name(),
        tuned: true,
        about: "a warp per 4 rows of a touched expert: 512-byte weight loads, 4 rows in \
                flight per lane, x as float4 through L1, tokens 4 at a time, shuffle sums",
    },
    simple(
        "cuda",
        Kernel::ExpertGemv,
        "a block per (4 rows, touched expert), 16-byte weight loads",
    ),
    // After simple until a GPU has run it: beyond the mma fragments the self-check confirms,
    // it decodes with fma.rn.bf16x2, which only the host shim has run.
    Impl {
        backend: "cuda",
        kernel: Kernel::ExpertGemv,
        name: cuda::impls::CudaImpl::MmaW4.name(),
        tuned: true,
        about: "4-bit weights (int4, mxfp4, nvfp4) on tensor cores (mma.sync m16n8k16, \
                bf16): x laid out once as the B operand; 64 rows a block, its 4 warps taking \
                turns over 128-value blocks staged by cp.async (two buffers a warp); codes to \
                bf16 pairs exactly (int4: mask and magic number; E2M1: bits placed and one \
                fma by 2^126, or nvfp4's scale); 32-value groups scaled in f32, nvfp4's folded \
                into the weights; tokens 8 a chunk as the mma's columns, x split hi/lo at \
                math: f32",
    },
    simple(
        "cuda",
        Kernel::Link,
        "peer copy (cuMemcpyPeerAsync), timed with events",
    ),
];

const CPU_KV: &str = "(sequence, chunk) tasks in 64-token tiles: GQA rows decoded in \
    registers where they lie (MLA, fp8: into L1 tiles), scores from 4-head x 4-token register \
    blocks, a vector exp, PV in 4-head blocks";
const CPU_STREAM: &str = "256 KiB chunks: read sums 4 vectors in flight; copy and write by \
    non-temporal stores (no read for ownership), a fence per chunk; copy takes 4 streams a \
    quarter of its chunk apart";
const CPU_EXPERT: &str = "simple's 16-row blocks: 4 rows of an expert decoded in registers \
    against up to 4 of its tokens";

const fn cpu_vector(kernel: Kernel, name: &'static str, about: &'static str) -> Impl {
    Impl {
        backend: "cpu",
        kernel,
        name,
        tuned: true,
        about,
    }
}

const fn simple(backend: &'static str, kernel: Kernel, about: &'static str) -> Impl {
    Impl {
        backend,
        kernel,
        name: "simple",
        tuned: false,
        about,
    }
}

/// The implementations of `kernel` on `backend`, in preference order.
pub fn impls_of(backend: &str, kernel: Kernel) -> Vec<&'static Impl> {
    IMPLS
        .iter()
        .filter(|i| i.backend == backend && i.kernel == kernel)
        .collect()
}

/// Whether `backend` has an implementation called `name` of `kernel`.
pub fn has_impl(backend: &str, kernel: Kernel, name: &str) -> bool {
    impls_of(backend, kernel).iter().any(|i| i.name == name)
}

/// Every implementation name of `kernel` on any backend, each once, in table order.
pub fn impl_names(kernel: Kernel) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for i in IMPLS.iter().filter(|i| i.kernel == kernel) {
        if !v.contains(&i.name) {
            v.push(i.name);
        }
    }
    v
}

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

/// How a point is built: which implementation, and the cache mode its reps start from.
#[derive(Clone, Copy, Debug)]
pub struct How {
    pub imp: &'static str,
    pub cache: CacheMode,
}

impl How {
    /// The simple implementation (tests, splits of a simple point).
    pub fn simple(cache: CacheMode) -> How {
        How {
            imp: "simple",
            cache,
        }
    }
}

/// The implementation `impl: best` picks for a point on a backend: the first that covers it.
pub fn best_impl(b: &dyn Backend, w: &Workload) -> Result<&'static str, String> {
    let mut why = Vec::new();
    for i in impls_of(b.name(), w.kind()) {
        match b.covers(i.name, w) {
            Ok(()) => return Ok(i.name),
            Err(e) => why.push(format!("{}: {e}", i.name)),
        }
    }
    Err(format!(
        "no {} implementation on {} covers this point ({})",
        w.kernel(),
        b.name(),
        why.join("; ")
    ))
}

/// The implementations `impl: best` prefers to `chosen` on `b` which do not cover `w`, each
/// as `name: why`: what a result line says when a tuned kernel was passed over.
pub fn passed_over(b: &dyn Backend, w: &Workload, chosen: &str) -> Vec<String> {
    impls_of(b.name(), w.kind())
        .into_iter()
        .take_while(|i| i.name != chosen)
        .filter_map(|i| {
            b.covers(i.name, w)
                .err()
                .map(|e| format!("{}: {e}", i.name))
        })
        .collect()
}

/// Bytes a GPU backend clears before each cold rep: more than any last-level cache of today
/// (H100 50 MB, H200 ~60 MB, MI300X 256 MB Infinity Cache).
pub const GPU_FLUSH_BYTES: u64 = 512 << 20;

/// What a GPU backend clears before a rep: nothing when warm, or when a step moves four
/// times the flush size or more (its own reads evict the cache). Judged on the bytes a step
/// moves, not those allocated: a step that reads 8 of 384 experts fits in a cache.
pub fn gpu_flush_bytes(cache: CacheMode, w: &Workload) -> u64 {
    if cache == CacheMode::Cold && w.bytes() < 4 * GPU_FLUSH_BYTES {
        GPU_FLUSH_BYTES
    } else {
        0
    }
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
    /// Seconds `prepare` spent compiling kernels (NVRTC), when it compiled any.
    fn compile_s(&self) -> Option<f64> {
        None
    }
}

/// The unit an implementation computes on; a point is held against that unit's ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Vector FMA: a CPU's SIMD lanes, CUDA cores, shader ALUs.
    Cores,
    /// Matrix units: tensor cores (`mma.sync`), AMX tiles.
    Matrix,
}

/// A device's measured compute ceiling (`Backend::compute_ceiling`).
#[derive(Clone, Debug, PartialEq)]
pub struct Peak {
    pub gflops: f64,
    /// What measured it: `f32 FMA chains, avx512, 2 threads`.
    pub unit: String,
}

/// Shard outputs moved to where a split point is assembled, and how they travelled.
pub struct Gathered {
    /// Per shard, in shard order, on the host (from the last rep).
    pub outputs: Vec<TensorSet>,
    /// `host-staged`, `nccl (N ranks)`, ...
    pub method: String,
    /// Seconds per rep of the transport alone.
    pub times: Vec<f64>,
    /// The point's outputs merged where they were gathered (cuda: a sequence split's lse
    /// merge on the first device); None when the host merges them.
    pub merged: Option<Merged>,
}

/// A combine's merge run on a device.
pub struct Merged {
    /// The point's outputs, read back from the device.
    pub outputs: TensorSet,
    /// Seconds per rep of the merge kernel (device timers).
    pub times: Vec<f64>,
    /// Where it ran: `merge_shards on cuda:0`.
    pub on: String,
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn devices(&self) -> &[DeviceInfo];
    /// Bytes of the device's memory a point needs on this backend.
    fn memory_needed(&self, workload: &Workload) -> u64 {
        workload.device_bytes()
    }
    /// Whether the device's memory is the host's (the cpu backend): the point's host memory
    /// is then all it needs.
    fn shares_host_memory(&self) -> bool {
        false
    }
    /// Whether implementation `imp` covers this point, or why not (a tuned kernel may cover
    /// only some shapes; `impl: best` then falls back to the next).
    fn covers(&self, imp: &str, workload: &Workload) -> Result<(), String> {
        let _ = (imp, workload);
        Ok(())
    }
    /// Upload the inputs, allocate poisoned outputs and build implementation `imp` of the
    /// kernel for one point.
    fn prepare<'a>(
        &'a self,
        device: usize,
        workload: &Workload,
        inputs: &TensorSet,
        how: &How,
    ) -> anyhow::Result<Box<dyn Prepared + 'a>>;
    /// Move every shard's outputs to where the point is assembled, `reps` times, timing the
    /// transport. The default reads each shard back to the host (host-staged), on the host
    /// clock, and leaves the merge to the host; cuda gathers them on the first device with
    /// NCCL and merges a sequence split there (`Gathered::merged`).
    fn gather(
        &self,
        shards: &mut [Box<dyn Prepared + '_>],
        plan: &crate::shard::Plan,
        parent: &Workload,
        reps: usize,
    ) -> anyhow::Result<Gathered> {
        let _ = (plan, parent);
        host_staged_gather(shards, reps)
    }

    /// Under a launcher: whether this backend moves shard outputs between ranks itself
    /// (`gather_ranks`), or why not (then MPI carries them, host-staged).
    fn rank_transport(&self) -> Result<(), String> {
        Err(format!("{}: host-staged over MPI", self.name()))
    }

    /// Under a launcher, on every rank at once: send this rank's shard outputs (`mine`,
    /// where it has a shard) to rank 0 with the backend's own transport, `reps` times.
    /// Rank 0 gets the other ranks' shards' outputs in `plan` order (not its own), the
    /// transport's times, and the point's outputs where it merged them on its device (cuda,
    /// a sequence split); the others get None.
    fn gather_ranks(
        &self,
        w: &crate::cluster::World,
        local: usize,
        mine: Option<&mut (dyn Prepared + '_)>,
        plan: &crate::shard::Plan,
        parent: &Workload,
        reps: usize,
    ) -> anyhow::Result<Option<Gathered>> {
        let _ = (w, local, mine, plan, parent, reps);
        anyhow::bail!("{}: no transport between ranks", self.name())
    }

    /// The unit implementation `imp` computes on.
    fn compute_unit(&self, imp: &str) -> Unit {
        let _ = imp;
        Unit::Cores
    }

    /// The ceiling of `unit` on the device, measured now (a point's roofline holds it
    /// against this and the stream read of the same run), or why there is none.
    fn compute_ceiling(&self, device: usize, unit: Unit) -> Result<Peak, String> {
        let _ = (device, unit);
        Err(format!("no compute ceiling on {}", self.name()))
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
    registry::backend_names().filter_map(probe).collect()
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
        merged: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wgpu's table with `unrolled` refusing every point: what `best` picks and passes over.
    struct Refusing;

    impl Backend for Refusing {
        fn name(&self) -> &'static str {
            "wgpu"
        }
        fn devices(&self) -> &[DeviceInfo] {
            &[]
        }
        fn covers(&self, imp: &str, _: &Workload) -> Result<(), String> {
            match imp {
                "unrolled" => Err("not this shape".into()),
                _ => Ok(()),
            }
        }
        fn prepare<'a>(
            &'a self,
            _: usize,
            _: &Workload,
            _: &TensorSet,
            _: &How,
        ) -> anyhow::Result<Box<dyn Prepared + 'a>> {
            anyhow::bail!("not for running")
        }
    }

    #[test]
    fn a_result_names_the_tuned_implementations_best_passed_over() {
        let w = Workload::Stream(crate::workload::Stream {
            op: crate::workload::StreamOp::Read,
            bytes: 4096,
            seed: 1,
        });
        // wgpu prefers simple to unrolled for stream: nothing ahead of simple.
        assert_eq!(best_impl(&Refusing, &w), Ok("simple"));
        assert!(passed_over(&Refusing, &w, "simple").is_empty());
        let (_, kv) = plan::representative()
            .into_iter()
            .find(|(_, w)| matches!(w, Workload::KvDecode(_)))
            .expect("a kv_decode point");
        assert_eq!(best_impl(&Refusing, &kv), Ok("simple"));
        assert_eq!(
            passed_over(&Refusing, &kv, "simple"),
            ["unrolled: not this shape"]
        );
        assert!(passed_over(&Refusing, &kv, "unrolled").is_empty());
    }
}
