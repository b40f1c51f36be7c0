//! The CUDA backend: kernels/ compiled by NVRTC for each device's own architecture and
//! launched through cudarc (loaded at run time: building needs nothing from CUDA). Reps are
//! timed with CUDA events created with timing enabled (cudarc's default events disable it).
//! No driver, no NVRTC or no device is "unavailable (why)", never a panic: the libraries are
//! probed before anything in them is touched.

pub mod args;
mod build;
pub mod compile;
pub mod fragments;
pub mod impls;
mod merge;
mod multi;
pub mod nccl;
pub mod nvml;
pub mod peak;
mod ranks;
pub mod sass;
pub mod topology;

pub use multi::can_access_peer;

use super::{Backend, CacheMode, DeviceInfo, How, Prepared, Timer};
use crate::workload::{Tensor, TensorSet, Workload};
use anyhow::{Context, anyhow, bail};
use cudarc::driver::sys::{CUdevice_attribute as Attr, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg, result,
};
use impls::{CudaImpl, LaunchPlan};
use std::sync::Arc;

/// Whether cuda's implementation `imp` covers `w`, or why not (impls.rs says, per
/// implementation).
pub fn covers(imp: &str, w: &Workload) -> Result<(), String> {
    match CudaImpl::from_name(imp) {
        Some(i) => i.covers(w),
        None => Err(format!(
            "cuda has no implementation '{imp}' of {}",
            w.kernel()
        )),
    }
}

/// Whether `imp` relies on the tensor-core fragment layout (the self-check must pass first).
fn uses_tensor_cores(imp: &str) -> bool {
    CudaImpl::from_name(imp).is_some_and(CudaImpl::tensor_cores)
}

pub struct CudaBackend {
    devices: Vec<DeviceInfo>,
    /// (major, minor) compute capability and SM count per device.
    caps: Vec<((i32, i32), usize)>,
    /// Per device, once asked: whether its tensor cores multiply as kernels/mma.cuh assumes
    /// (fragments.rs), the condition for running `mma` there.
    tensor_cores: Vec<std::sync::OnceLock<Result<(), String>>>,
}

fn attr(dev: cudarc::driver::sys::CUdevice, a: Attr) -> i32 {
    // SAFETY: dev comes from result::device::get; a failed query reads as 0.
    unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0)
}

impl CudaBackend {
    pub fn probe() -> Result<CudaBackend, String> {
        // SAFETY: only tries to dlopen libcuda.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no NVIDIA driver (libcuda.so not found)".into());
        }
        compile::nvrtc_available()?;
        compile::include_dir()?;
        result::init()
            .map_err(|e| format!("cuInit failed ({e:?}): driver too old or no device"))?;
        let n = result::device::get_count().map_err(|e| format!("no CUDA device ({e:?})"))?;
        if n < 1 {
            return Err("no CUDA device".into());
        }
        let mut devices = Vec::new();
        let mut caps = Vec::new();
        for i in 0..n {
            let dev = result::device::get(i).map_err(|e| format!("device {i}: {e:?}"))?;
            let name = result::device::get_name(dev).unwrap_or_else(|_| format!("CUDA device {i}"));
            // SAFETY: dev is a valid device handle.
            let mem = unsafe { result::device::total_mem(dev) }
                .ok()
                .map(|m| m as u64);
            let cc = (
                attr(dev, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                attr(dev, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            );
            let sms = attr(dev, Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).max(1) as usize;
            let bus = format!(
                "{:04x}:{:02x}:{:02x}.0",
                attr(dev, Attr::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
                attr(dev, Attr::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
                attr(dev, Attr::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)
            );
            devices.push(DeviceInfo {
                index: i as usize,
                name,
                memory_bytes: mem,
                details: vec![
                    ("compute_capability".into(), format!("{}.{}", cc.0, cc.1)),
                    ("sms".into(), sms.to_string()),
                    ("pci_bus_id".into(), bus.clone()),
                ],
                pci_bus_id: Some(bus),
                emulated: false,
            });
            caps.push((cc, sms));
        }
        let tensor_cores = devices.iter().map(|_| Default::default()).collect();
        Ok(CudaBackend {
            devices,
            caps,
            tensor_cores,
        })
    }

    /// Whether `mma` may run on `device`: sm_80 or later, and the fragment self-check passed
    /// there (run once per device, on first need).
    fn tensor_cores(&self, device: usize) -> Result<(), String> {
        let (Some(&((major, minor), _)), Some(once)) =
            (self.caps.get(device), self.tensor_cores.get(device))
        else {
            return Err(format!("cuda has no device {device}"));
        };
        if major < 8 {
            return Err(format!(
                "mma needs sm_80 or later (mma.sync bf16); cuda:{device} is sm_{major}{minor}"
            ));
        }
        once.get_or_init(|| {
            let ctx = CudaContext::new(device).map_err(|e| format!("{e:?}"))?;
            fragments::run_on(&ctx, &format!("sm_{major}{minor}"))
        })
        .clone()
        .map_err(|e| format!("the tensor-core self-check failed on cuda:{device} ({e})"))
    }

    /// `covers`, and for the tensor-core kernels (`mma`, `mma_wide`) the tensor cores of
    /// every device.
    fn covers_here(&self, imp: &str, w: &Workload) -> Result<(), String> {
        covers(imp, w)?;
        if uses_tensor_cores(imp) {
            (0..self.devices.len()).try_for_each(|d| self.tensor_cores(d))?;
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn compute_unit(&self, imp: &str) -> crate::backend::Unit {
        if uses_tensor_cores(imp) {
            crate::backend::Unit::Matrix
        } else {
            crate::backend::Unit::Cores
        }
    }

    /// kernels/peak.cu's chains (peak.rs): FMA on the CUDA cores; bf16 `mma.sync` on the
    /// tensor cores, what `mma` and `mma_wide` issue (sm_80 and later).
    fn compute_ceiling(
        &self,
        device: usize,
        unit: crate::backend::Unit,
    ) -> Result<crate::backend::Peak, String> {
        let &((major, minor), sms) = self
            .caps
            .get(device)
            .ok_or_else(|| format!("cuda has no device {device}"))?;
        let ctx = CudaContext::new(device).map_err(|e| format!("cuda device {device}: {e:?}"))?;
        let arch = format!("sm_{major}{minor}");
        if unit == crate::backend::Unit::Matrix {
            if major < 8 {
                return Err(format!("no bf16 mma.sync on {arch}"));
            }
            return Ok(crate::backend::Peak {
                gflops: peak::run_mma_on(&ctx, &arch, sms)?,
                unit: format!(
                    "bf16 mma.sync m16n8k16 chains on the tensor cores (peak.cu), {sms} SMs"
                ),
            });
        }
        let gflops = peak::run_on(&ctx, &arch, sms)?;
        Ok(crate::backend::Peak {
            gflops,
            unit: format!("f32 FMA chains on the CUDA cores (peak.cu), {sms} SMs"),
        })
    }

    fn covers(&self, imp: &str, w: &Workload) -> Result<(), String> {
        self.covers_here(imp, w)
    }

    /// A split's shards are gathered on the first device with NCCL; a sequence split is
    /// merged there.
    fn gather(
        &self,
        shards: &mut [Box<dyn Prepared + '_>],
        plan: &crate::shard::Plan,
        parent: &Workload,
        reps: usize,
    ) -> anyhow::Result<super::Gathered> {
        let merge = match (parent, plan.sequence_table()) {
            (Workload::KvDecode(k), Some(t)) => Some((k, t)),
            _ => None,
        };
        multi::nccl_gather(shards, merge, reps)
    }

    fn rank_transport(&self) -> Result<(), String> {
        nccl::require().map(|_| ())
    }

    fn gather_ranks(
        &self,
        w: &crate::cluster::World,
        local: usize,
        mine: Option<&mut (dyn Prepared + '_)>,
        plan: &crate::shard::Plan,
        parent: &Workload,
        reps: usize,
    ) -> anyhow::Result<Option<super::Gathered>> {
        ranks::nccl_gather_ranks(w, local, mine, plan, parent, reps)
    }

    fn prepare_link<'a>(
        &'a self,
        src: usize,
        dst: usize,
        link: &crate::workload::Link,
        inputs: &TensorSet,
    ) -> anyhow::Result<(Box<dyn Prepared + 'a>, String)> {
        let (p, path) = self.link_point(src, dst, link, inputs)?;
        Ok((Box::new(p), path))
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn prepare<'a>(
        &'a self,
        device: usize,
        workload: &Workload,
        inputs: &TensorSet,
        how: &How,
    ) -> anyhow::Result<Box<dyn Prepared + 'a>> {
        covers(how.imp, workload).map_err(anyhow::Error::msg)?;
        if uses_tensor_cores(how.imp) {
            self.tensor_cores(device).map_err(anyhow::Error::msg)?;
        }
        let cache = how.cache;
        let &((major, minor), sms) = self
            .caps
            .get(device)
            .ok_or_else(|| anyhow!("cuda has no device {device}"))?;
        let ctx = CudaContext::new(device).map_err(|e| anyhow!("cuda device {device}: {e:?}"))?;
        // One stream, so cudarc's cross-stream event tracking only adds launch overhead.
        // SAFETY: every buffer of this point is used on this context's default stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let arch = format!("sm_{major}{minor}");
        let imp = CudaImpl::from_name(how.imp)
            .ok_or_else(|| anyhow!("cuda has no implementation '{}'", how.imp))?;
        let plan = LaunchPlan::of(imp, workload, sms);
        let t0 = std::time::Instant::now();
        let compiled =
            compile::compile(&plan.source, workload.kernel(), &arch).map_err(anyhow::Error::msg)?;
        let compile_s = t0.elapsed().as_secs_f64();
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
            .map_err(|e| anyhow!("loading the {arch} module: {e:?}"))?;
        let p = Point {
            ctx: ctx.clone(),
            stream: stream.clone(),
            buffers: Vec::new(),
            launches: Vec::new(),
            outputs: Vec::new(),
            flush: None,
            cache,
            clear_each_rep: None,
            compile_s,
            merge_shards: None,
        };
        let mut b = build::Build {
            module,
            source: &plan.source,
            p,
        };
        match workload {
            Workload::Stream(w) => b.stream(w, inputs, sms)?,
            Workload::KvDecode(w) => b.kv_decode(w, inputs, &plan.shape)?,
            Workload::ExpertGemv(w) => b.expert_gemv(w, inputs, &plan.shape)?,
            Workload::Link(_) => bail!("link runs between two devices (prepare_link)"),
        }
        let mut p = b.p;
        let flush = super::gpu_flush_bytes(cache, workload) as usize;
        if flush > 0 {
            p.flush = Some(
                stream
                    .alloc_zeros::<u8>(flush)
                    .map_err(|e| anyhow!("flush buffer: {e:?}"))?,
            );
        }
        stream.synchronize().map_err(|e| anyhow!("cuda: {e:?}"))?;
        Ok(Box::new(p))
    }
}

#[derive(Debug)]
enum Arg {
    Buf(usize),
    U64(u64),
    U32(u32),
}

/// An output of `spec`'s name, type and shape read back from `buf` (cut to the shape's size:
/// buffers are padded).
fn read_back(
    stream: &Arc<CudaStream>,
    buf: &CudaSlice<u8>,
    spec: &Tensor,
) -> anyhow::Result<Tensor> {
    let mut bytes = stream
        .clone_dtoh(buf)
        .map_err(|e| anyhow!("read back: {e:?}"))?;
    bytes.truncate(spec.elem.bytes_for(spec.len()));
    Ok(Tensor {
        name: spec.name,
        elem: spec.elem,
        shape: spec.shape.clone(),
        bytes: bytes.into(),
    })
}

/// Seconds between each (start, end) pair of recorded, completed events.
fn seconds_between(
    events: &[(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)],
) -> anyhow::Result<Vec<f64>> {
    events
        .iter()
        .map(|(s, e)| {
            s.elapsed_ms(e)
                .map(|ms| ms as f64 * 1e-3)
                .map_err(|x| anyhow!("elapsed: {x:?}"))
        })
        .collect()
}

struct Launch {
    func: CudaFunction,
    cfg: LaunchConfig,
    args: Vec<Arg>,
}

struct Point {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    buffers: Vec<CudaSlice<u8>>,
    launches: Vec<Launch>,
    outputs: Vec<(Tensor, usize)>,
    flush: Option<CudaSlice<u8>>,
    cache: CacheMode,
    clear_each_rep: Option<usize>,
    compile_s: f64,
    /// kv_decode: the sequence split's merge (kernels/kv_merge_shards.cu), from this point's
    /// module, for when this point's device assembles a split.
    merge_shards: Option<CudaFunction>,
}

impl Point {
    fn step(&mut self, flush: bool) -> anyhow::Result<()> {
        if let (true, Some(f)) = (flush, self.flush.as_mut()) {
            self.stream
                .memset_zeros(f)
                .map_err(|e| anyhow!("flush: {e:?}"))?;
        }
        if let Some(i) = self.clear_each_rep {
            self.stream
                .memset_zeros(&mut self.buffers[i])
                .map_err(|e| anyhow!("clear: {e:?}"))?;
        }
        self.launch_all()
    }

    fn launch_all(&self) -> anyhow::Result<()> {
        for l in &self.launches {
            let mut b = self.stream.launch_builder(&l.func);
            for a in &l.args {
                match a {
                    Arg::Buf(i) => b.arg(&self.buffers[*i]),
                    Arg::U64(x) => b.arg(x),
                    Arg::U32(x) => b.arg(x),
                };
            }
            // SAFETY: argument lists match the kernels' signatures in kernels/, and every
            // buffer is sized for the shapes compiled into the module.
            unsafe { b.launch(l.cfg) }.map_err(|e| anyhow!("launch: {e:?}"))?;
        }
        Ok(())
    }
}

impl Prepared for Point {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn timer(&self) -> Timer {
        Timer::Gpu
    }

    fn cache_method(&self) -> String {
        match (self.cache, &self.flush) {
            (CacheMode::Warm, _) => "warm: no flush".into(),
            (CacheMode::Cold, None) => "cold: a step moves over 4x the 512 MiB flush".into(),
            (CacheMode::Cold, Some(f)) => format!(
                "cold: {} cleared between reps",
                crate::workload::human_bytes(f.len() as u64)
            ),
        }
    }

    fn compile_s(&self) -> Option<f64> {
        Some(self.compile_s)
    }

    fn run(&mut self, warmup: usize, reps: usize) -> anyhow::Result<Vec<f64>> {
        for _ in 0..warmup {
            self.step(true)?;
        }
        let timed = || {
            self.ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| anyhow!("event: {e:?}"))
        };
        let mut events = Vec::with_capacity(reps);
        for _ in 0..reps {
            // The flush and the clear go before the start event: only the kernels are timed.
            if let (true, Some(f)) = (self.cache == CacheMode::Cold, self.flush.as_mut()) {
                self.stream
                    .memset_zeros(f)
                    .map_err(|e| anyhow!("flush: {e:?}"))?;
            }
            if let Some(i) = self.clear_each_rep {
                self.stream
                    .memset_zeros(&mut self.buffers[i])
                    .map_err(|e| anyhow!("clear: {e:?}"))?;
            }
            let (start, end) = (timed()?, timed()?);
            start.record(&self.stream).map_err(|e| anyhow!("{e:?}"))?;
            self.launch_all()?;
            end.record(&self.stream).map_err(|e| anyhow!("{e:?}"))?;
            events.push((start, end));
        }
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("cuda: {e:?}"))?;
        seconds_between(&events)
    }

    fn read_outputs(&mut self) -> anyhow::Result<TensorSet> {
        let mut set = Vec::new();
        for (spec, i) in &self.outputs {
            set.push(read_back(&self.stream, &self.buffers[*i], spec)?);
        }
        Ok(TensorSet(set))
    }

    fn run_steps(&mut self, steps: u64) -> anyhow::Result<()> {
        for _ in 0..steps {
            self.step(false)?;
        }
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("cuda: {e:?}"))
            .context("energy window")
    }
}
