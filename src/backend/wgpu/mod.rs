//! The WGSL backend: the kernels in shaders/, run through wgpu on any GPU (Vulkan, Metal,
//! DX12), and on Mesa lavapipe where there is no GPU. Each adapter is a device. Pipelines are
//! built once per point; reps are timed with GPU timestamp queries where the adapter has
//! them, and with the host clock around submit-and-wait where it does not.

use super::{Backend, CacheMode, DeviceInfo, How, Prepared};
use crate::workload::{Stream, StreamOp, TensorSet, Workload};
use anyhow::{anyhow, bail};
use std::sync::{Arc, Mutex, OnceLock};

mod bindings;
mod build;
mod impls;
pub mod inspect;
mod kv;
mod peak;
mod point;
mod shaders;
mod unrolled;

pub use impls::shader_sources;
pub use shaders::{
    KvLaunch, ShaderPaths, assemble, expert_source, kv_launch, kv_source, stream_source,
};

use build::{Built, Ctx};
/// Whether to use subgroup operations when the adapter has them (the plain path otherwise),
/// an optional cap on the binding size (to exercise the multi-binding path on small
/// tensors), and whether wgpu adds its runtime checks to the shaders.
#[derive(Clone, Copy, Debug)]
pub struct WgpuOptions {
    pub subgroups: bool,
    pub max_binding: Option<u64>,
    /// wgpu's default shader checks: a bound counter in every loop and a clamp on every index
    /// (`ShaderRuntimeChecks::checked`). They keep NVIDIA's compiler from unrolling, and the
    /// arrays they clamp go to local memory (gfx-rs/wgpu #7698, #6528), so decodelab's own
    /// shaders are built without them (see `Ctx::pipeline` for why that is sound).
    pub runtime_checks: bool,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            subgroups: true,
            max_binding: None,
            runtime_checks: false,
        }
    }
}

struct Adapter {
    adapter: wgpu::Adapter,
    device: OnceLock<Result<(wgpu::Device, wgpu::Queue), String>>,
}

pub struct WgpuBackend {
    adapters: Vec<Adapter>,
    devices: Vec<DeviceInfo>,
    options: WgpuOptions,
}

impl WgpuBackend {
    /// Every adapter wgpu finds on the backends it offers (`WGPU_BACKEND` narrows them,
    /// `WGPU_ADAPTER_NAME` keeps the adapters whose name contains it). Err says why none.
    pub fn probe() -> Result<WgpuBackend, String> {
        let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        let instance = wgpu::Instance::new(desc);
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut found = pollster::block_on(instance.enumerate_adapters(backends));
        if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
            let want = want.to_lowercase();
            found.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        if found.is_empty() {
            return Err(
                "no adapter (no GPU driver found; on Linux without a GPU, install Mesa lavapipe: \
                        apt-get install mesa-vulkan-drivers)"
                    .into(),
            );
        }
        let devices = found
            .iter()
            .enumerate()
            .map(|(i, a)| describe(i, a))
            .collect();
        let adapters = found
            .into_iter()
            .map(|adapter| Adapter {
                adapter,
                device: OnceLock::new(),
            })
            .collect();
        Ok(WgpuBackend {
            adapters,
            devices,
            options: WgpuOptions::default(),
        })
    }

    /// Whether shaders may use subgroup operations: asked for, and every adapter has them.
    fn subgroups(&self) -> bool {
        self.options.subgroups
            && self
                .adapters
                .iter()
                .all(|a| a.adapter.features().contains(wgpu::Features::SUBGROUP))
    }

    /// The smallest subgroup any adapter may run (a token's lanes must share one).
    fn subgroup_min(&self) -> usize {
        self.adapters
            .iter()
            .map(|a| a.adapter.get_info().subgroup_min_size as usize)
            .min()
            .unwrap_or(4)
            .max(4)
    }

    /// Use `options` for the devices this backend creates (before its first point).
    pub fn with_options(mut self, options: WgpuOptions) -> Self {
        self.options = options;
        self
    }

    fn device(&self, index: usize) -> anyhow::Result<(wgpu::Device, wgpu::Queue, &wgpu::Adapter)> {
        let a = self
            .adapters
            .get(index)
            .ok_or_else(|| anyhow!("wgpu has no device {index}"))?;
        let made = a.device.get_or_init(|| {
            let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
            if self.options.subgroups {
                wanted |= wgpu::Features::SUBGROUP;
            }
            let desc = wgpu::DeviceDescriptor {
                label: Some("decodelab"),
                required_features: a.adapter.features() & wanted,
                // The adapter's own limits: bindings of up to ~2 GiB on Vulkan GPUs.
                required_limits: a.adapter.limits(),
                ..Default::default()
            };
            pollster::block_on(a.adapter.request_device(&desc))
                .map(|(d, q)| {
                    d.on_uncaptured_error(Arc::new(|e| {
                        *last_error().lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                    }));
                    (d, q)
                })
                .map_err(|e| e.to_string())
        });
        match made {
            Ok((d, q)) => Ok((d.clone(), q.clone(), &a.adapter)),
            Err(e) => bail!("wgpu device {index}: {e}"),
        }
    }
}

/// An error with its sources: wgpu puts the shader diagnostics in the chain.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Errors wgpu reports outside an error scope land here instead of panicking.
fn last_error() -> &'static Mutex<Option<String>> {
    static E: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(None))
}

pub(super) fn take_error() -> Option<String> {
    last_error()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

fn describe(index: usize, a: &wgpu::Adapter) -> DeviceInfo {
    let info = a.get_info();
    let f = a.features();
    let l = a.limits();
    let mut features = Vec::new();
    for (flag, name) in [
        (wgpu::Features::SHADER_F16, "f16"),
        (wgpu::Features::SUBGROUP, "subgroups"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamps"),
    ] {
        if f.contains(flag) {
            features.push(name);
        }
    }
    DeviceInfo {
        index,
        name: info.name.clone(),
        memory_bytes: None, // wgpu does not report device memory
        details: vec![
            ("wgpu_backend".into(), format!("{:?}", info.backend)),
            ("device_type".into(), format!("{:?}", info.device_type)),
            (
                "driver".into(),
                format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .into(),
            ),
            ("pci_bus_id".into(), info.device_pci_bus_id.clone()),
            (
                "adapter_features".into(),
                if features.is_empty() {
                    "none".into()
                } else {
                    features.join(", ")
                },
            ),
            (
                "max_binding".into(),
                crate::workload::human_bytes(l.max_storage_buffer_binding_size),
            ),
            (
                "max_buffer".into(),
                crate::workload::human_bytes(l.max_buffer_size),
            ),
            (
                "max_storage_buffers_per_stage".into(),
                l.max_storage_buffers_per_shader_stage.to_string(),
            ),
        ],
        pci_bus_id: Some(info.device_pci_bus_id.clone()).filter(|b| !b.is_empty()),
        emulated: info.device_type == wgpu::DeviceType::Cpu,
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn covers(&self, imp: &str, w: &Workload) -> Result<(), String> {
        let paths = ShaderPaths {
            subgroups: self.subgroups(),
            subgroup_min: self.subgroup_min(),
        };
        impls::covers(imp, w, paths)
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
        self.covers(how.imp, workload).map_err(anyhow::Error::msg)?;
        let (dev, queue, adapter) = self.device(device)?;
        let sg = adapter.get_info().subgroup_min_size as usize;
        let ctx = Ctx::new(dev, queue, self.options, sg);
        take_error();
        let point = match workload {
            Workload::Stream(w) => ctx.stream(w, inputs, how.imp)?,
            Workload::KvDecode(w) => ctx.kv_decode(w, inputs, how.imp)?,
            Workload::ExpertGemv(w) => ctx.expert_gemv(w, inputs, how.imp)?,
            Workload::Link(_) => bail!("link runs between two devices (prepare_link)"),
        };
        let is_cpu = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        point.finish(how.cache, workload, is_cpu)
    }

    /// shaders/peak.wgsl's f32 FMA chains: 4096 workgroups of 256 threads on a GPU (275 GFLOP,
    /// a few milliseconds on a big card), 32 on a CPU adapter (lavapipe).
    fn compute_ceiling(
        &self,
        device: usize,
        unit: crate::backend::Unit,
    ) -> Result<crate::backend::Peak, String> {
        if unit != crate::backend::Unit::Cores {
            return Err("wgpu has no matrix-unit kernel".into());
        }
        let (dev, queue, adapter) = self.device(device).map_err(|e| format!("{e:#}"))?;
        let is_cpu = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        let sg = adapter.get_info().subgroup_min_size as usize;
        let ctx = Ctx::new(dev, queue, self.options, sg);
        let groups = if is_cpu { 32 } else { 4096 };
        let gflops = ctx.peak_gflops(groups).map_err(|e| format!("{e:#}"))?;
        Ok(crate::backend::Peak {
            gflops,
            unit: format!("f32 FMA chains (peak.wgsl), {} threads", groups * 256),
        })
    }

    /// Within one adapter (virtual devices) a link is the stream copy kernel, both ways two
    /// copies in one pass. WebGPU has no peer copies between adapters, and a host-staged
    /// copy would measure the host, so a link between two adapters is refused.
    fn prepare_link<'a>(
        &'a self,
        src: usize,
        dst: usize,
        link: &crate::workload::Link,
        inputs: &TensorSet,
    ) -> anyhow::Result<(Box<dyn Prepared + 'a>, String)> {
        if src != dst {
            bail!(
                "wgpu has no copies between adapters ({src} -> {dst}); measure links with the cuda backend"
            );
        }
        let (dev, queue, adapter) = self.device(src)?;
        let copy = |from: &'static str, to: &'static str| -> anyhow::Result<Built> {
            let sg = adapter.get_info().subgroup_min_size as usize;
            let ctx = Ctx::new(dev.clone(), queue.clone(), self.options, sg);
            let stream = Stream {
                op: StreamOp::Copy,
                bytes: link.bytes,
                seed: link.seed,
            };
            let mut src_t = inputs.expect(from).clone();
            src_t.name = "src";
            let mut built = ctx.stream(&stream, &TensorSet(vec![src_t]), "simple")?;
            for (t, _) in &mut built.outputs {
                t.name = to;
            }
            Ok(built)
        };
        take_error();
        let mut built = copy("src", "dst")?;
        if link.both_ways() {
            let back = copy("src_back", "dst_back")?;
            built.dispatches.extend(back.dispatches);
            built.outputs.extend(back.outputs);
        }
        let is_cpu = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        let w = Workload::Link(link.clone());
        let point = built.finish(CacheMode::Cold, &w, is_cpu)?;
        Ok((point, "one device: the stream copy kernel".into()))
    }
}
