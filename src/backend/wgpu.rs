//! The WGSL backend: the kernels in shaders/, run through wgpu on any GPU (Vulkan, Metal,
//! DX12), and on Mesa lavapipe where there is no GPU. Each adapter is a device. Pipelines are
//! built once per point; reps are timed with GPU timestamp queries where the adapter has
//! them, and with the host clock around submit-and-wait where it does not.

use super::plan::{
    Const, Constants, ExpertPlan, KvPlan, KvTarget, expert_constants, kv_constants, kv_fits,
    kv_plan,
};
use super::{Backend, CacheMode, DeviceInfo, How, Prepared, Timer};
use crate::workload::{ExpertGemv, KvDecode, Stream, StreamOp, Tensor, TensorSet, Workload};
use anyhow::{Context, anyhow, bail};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use wgpu::util::DeviceExt;

const DTYPE_WGSL: &str = include_str!("../../shaders/dtype.wgsl");
const STREAM_WGSL: &str = include_str!("../../shaders/stream.wgsl");
const KV_WGSL: &str = include_str!("../../shaders/kv_decode.wgsl");
const EXPERT_WGSL: &str = include_str!("../../shaders/expert_gemv.wgsl");

/// Whether to use subgroup operations when the adapter has them (the plain path otherwise),
/// and an optional cap on the binding size (to exercise the multi-binding path on small
/// tensors).
#[derive(Clone, Copy, Debug)]
pub struct WgpuOptions {
    pub subgroups: bool,
    pub max_binding: Option<u64>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            subgroups: true,
            max_binding: None,
        }
    }
}

/// The optional WGSL features a shader is assembled for. (No f16 path: every kernel
/// accumulates in f32, and f16 storage is widened by the core unpack2x16float.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaderPaths {
    pub subgroups: bool,
}

/// Keep the `//! when <flag>` ... `//! end` sections of a shader whose flag holds
/// (flags: subgroups, plain). No `enable subgroups;`: naga (wgpu 30) gates the subgroup
/// builtins on the device feature and rejects the directive as not yet supported.
pub fn assemble(paths: ShaderPaths, prelude: &str, parts: &[&str]) -> String {
    let mut out = String::new();
    out.push_str(prelude);
    for part in parts {
        let mut keep = true;
        for line in part.lines() {
            let t = line.trim();
            if let Some(flag) = t.strip_prefix("//! when ") {
                keep = match flag.trim() {
                    "subgroups" => paths.subgroups,
                    "plain" => !paths.subgroups,
                    _ => true,
                };
            } else if t == "//! end" {
                keep = true;
            } else if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
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
fn error_chain(e: &dyn std::error::Error) -> String {
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

fn take_error() -> Option<String> {
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
                crate::report::human_bytes(l.max_storage_buffer_binding_size),
            ),
            (
                "max_buffer".into(),
                crate::report::human_bytes(l.max_buffer_size),
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
        anyhow::ensure!(
            how.imp == "simple",
            "wgpu has no implementation '{}'",
            how.imp
        );
        let (dev, queue, adapter) = self.device(device)?;
        let ctx = Ctx::new(dev, queue, self.options.max_binding);
        take_error();
        let point = match workload {
            Workload::Stream(w) => ctx.stream(w, inputs)?,
            Workload::KvDecode(w) => ctx.kv_decode(w, inputs)?,
            Workload::ExpertGemv(w) => ctx.expert_gemv(w, inputs)?,
            Workload::Link(_) => bail!("link runs between two devices (prepare_link)"),
        };
        let is_cpu = adapter.get_info().device_type == wgpu::DeviceType::Cpu;
        point.finish(how.cache, workload, is_cpu)
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
            let ctx = Ctx::new(dev.clone(), queue.clone(), self.options.max_binding);
            let stream = Stream {
                op: StreamOp::Copy,
                bytes: link.bytes,
                seed: link.seed,
            };
            let mut src_t = inputs.expect(from).clone();
            src_t.name = "src";
            let mut built = ctx.stream(&stream, &TensorSet(vec![src_t]))?;
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

/// What building a point needs: the device, its limits, and the shader assembly.
struct Ctx {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    timestamps: bool,
    paths: ShaderPaths,
    max_binding: u64,
}

/// One pipeline dispatch of a step.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

/// A point built on the device, before the timing harness is attached.
struct Built {
    ctx: Ctx,
    dispatches: Vec<Dispatch>,
    /// Buffers cleared before every rep (stream read's atomic sum).
    clear_each_rep: Vec<wgpu::Buffer>,
    /// (name, chunks, bytes to keep, element type/shape) of every output.
    outputs: Vec<(Tensor, Vec<wgpu::Buffer>)>,
}

impl Ctx {
    fn new(device: wgpu::Device, queue: wgpu::Queue, cap: Option<u64>) -> Ctx {
        let limits = device.limits();
        let mut max_binding = limits.max_storage_buffer_binding_size;
        if let Some(cap) = cap {
            max_binding = max_binding.min(cap.max(256));
        }
        let f = device.features();
        let timestamps = f.contains(wgpu::Features::TIMESTAMP_QUERY);
        let paths = ShaderPaths {
            subgroups: f.contains(wgpu::Features::SUBGROUP),
        };
        Ctx {
            device,
            queue,
            limits,
            timestamps,
            paths,
            max_binding,
        }
    }

    fn buffer(&self, label: &str, bytes: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
        // Pad to 16 bytes: tensors are read as array<vec4<u32>>; the padding is zeros.
        let padded;
        let contents = if !bytes.len().is_multiple_of(16) || bytes.is_empty() {
            let mut p = bytes.to_vec();
            p.resize(bytes.len().next_multiple_of(16).max(16), 0);
            padded = p;
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST
                    | extra,
            })
    }

    /// Split a tensor into chunk buffers of whole `unit_bytes` units, each within one binding.
    fn chunked(&self, t: &Tensor, unit_bytes: usize) -> anyhow::Result<(Vec<wgpu::Buffer>, usize)> {
        let per_chunk = ((self.max_binding as usize).saturating_sub(16) / unit_bytes.max(1)).max(1);
        if unit_bytes as u64 + 16 > self.max_binding {
            bail!(
                "one {} unit of {} bytes exceeds a binding ({} bytes)",
                t.name,
                unit_bytes,
                self.max_binding
            );
        }
        let bytes_per_chunk = per_chunk * unit_bytes;
        let chunks: Vec<wgpu::Buffer> = if t.bytes.is_empty() {
            vec![self.buffer(t.name, &[], wgpu::BufferUsages::empty())]
        } else {
            t.bytes
                .chunks(bytes_per_chunk)
                .map(|c| self.buffer(t.name, c, wgpu::BufferUsages::empty()))
                .collect()
        };
        Ok((chunks, per_chunk))
    }

    fn check_bindings(&self, needed: usize) -> anyhow::Result<()> {
        let max = self.limits.max_storage_buffers_per_shader_stage as usize;
        if needed > max {
            bail!(
                "this point needs {needed} storage bindings; the adapter allows {max} per shader stage"
            );
        }
        Ok(())
    }

    fn pipeline(
        &self,
        source: &str,
        entry: &str,
        layout: &wgpu::BindGroupLayout,
    ) -> anyhow::Result<wgpu::ComputePipeline> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("building WGSL pipeline '{entry}': {}", error_chain(&e));
        }
        Ok(pipeline)
    }

    /// A bind group layout of storage buffers (read-only or not) and one optional uniform.
    fn layout(&self, entries: &[(u32, Kind)]) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = entries
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        Kind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Kind::Write => wgpu::BufferBindingType::Storage { read_only: false },
                        Kind::Uniform => wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        self.device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            })
    }

    fn bind(
        &self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        })
    }

    /// A poisoned output buffer, and the output's shape to read it back by.
    fn poisoned_output(&self, poisoned: Tensor) -> (Tensor, Vec<wgpu::Buffer>) {
        let buf = self.buffer(poisoned.name, &poisoned.bytes, wgpu::BufferUsages::empty());
        (
            Tensor::spec(poisoned.name, poisoned.elem, poisoned.shape),
            vec![buf],
        )
    }

    fn stream(self, w: &Stream, inputs: &TensorSet) -> anyhow::Result<Built> {
        const WG: u32 = STREAM_WG;
        let source = stream_source(w.op, self.paths);
        let layout = self.layout(&[
            (0, Kind::Read),
            (1, Kind::Write),
            (2, Kind::Write),
            (3, Kind::Uniform),
        ]);
        let pipeline = self.pipeline(&source, "main", &layout)?;
        let words = w.words();
        // Chunks of whole 16-byte vectors, each within one binding.
        let vecs_per_chunk = (self.max_binding as usize / 16).max(1);
        let total_vecs = words.div_ceil(4);
        let n_chunks = total_vecs.div_ceil(vecs_per_chunk).max(1);
        let src_bytes = inputs.get("src").map(|t| &t.bytes[..]);
        let dummy = self.buffer("dummy", &[0u8; 16], wgpu::BufferUsages::empty());
        let sum = self.buffer("sum", &[0u8; 16], wgpu::BufferUsages::empty());
        let mut dispatches = Vec::new();
        let mut dst_chunks = Vec::new();
        for c in 0..n_chunks {
            let (v0, v1) = (
                c * vecs_per_chunk,
                ((c + 1) * vecs_per_chunk).min(total_vecs),
            );
            let byte_range = (v0 * 16).min(w.bytes as usize)..(v1 * 16).min(w.bytes as usize);
            let src = match src_bytes {
                Some(b) => self.buffer("src", &b[byte_range.clone()], wgpu::BufferUsages::empty()),
                None => dummy.clone(),
            };
            let dst = if w.op == StreamOp::Read {
                dummy.clone()
            } else {
                let poison = vec![0xEFu8; (v1 - v0) * 16];
                let b = self.buffer("dst", &poison, wgpu::BufferUsages::empty());
                dst_chunks.push(b.clone());
                b
            };
            let params: [u32; 4] = [(v0 * 4) as u32, (v1 - v0) as u32, w.pattern_seed(), 0];
            let uniform = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("chunk"),
                    contents: bytemuck::cast_slice(&params),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let bind_group = self.bind(&layout, &[(0, &src), (1, &dst), (2, &sum), (3, &uniform)]);
            let groups = ((v1 - v0).div_ceil(WG as usize) as u32).clamp(1, 4096);
            dispatches.push(Dispatch {
                pipeline: pipeline.clone(),
                bind_group,
                groups: [groups, 1, 1],
            });
        }
        let outputs = match w.op {
            StreamOp::Read => vec![(
                Tensor::spec("sum", crate::workload::Elem::U32, vec![1]),
                vec![sum.clone()],
            )],
            _ => vec![(
                Tensor::spec("dst", crate::workload::Elem::U32, vec![words]),
                dst_chunks,
            )],
        };
        let clear_each_rep = if w.op == StreamOp::Read {
            vec![sum]
        } else {
            vec![]
        };
        Ok(Built {
            ctx: self,
            dispatches,
            clear_each_rep,
            outputs,
        })
    }

    fn kv_decode(self, w: &KvDecode, inputs: &TensorSet) -> anyhow::Result<Built> {
        let mla = w.attention == crate::workload::Attention::Mla;
        let es = w.kv_dtype.size();
        let page_k = w.page_size * w.kv_heads * w.head_dim_k * es;
        let page_v = w.page_size * w.kv_heads * w.head_dim_v * es;
        // Pages per chunk must agree for K and V (one page index picks both).
        let unit = if mla { page_k } else { page_k.max(page_v) };
        if unit as u64 + 16 > self.max_binding {
            bail!(
                "one KV page ({unit} bytes) exceeds a binding ({} bytes)",
                self.max_binding
            );
        }
        let pages_per_chunk = ((self.max_binding as usize).saturating_sub(16) / unit).max(1);
        let (k_chunks, _) = self.chunked(inputs.expect("k_pages"), pages_per_chunk * page_k)?;
        let v_chunks = if mla {
            vec![]
        } else {
            self.chunked(inputs.expect("v_pages"), pages_per_chunk * page_v)?
                .0
        };

        let launch = kv_launch(
            w,
            pages_per_chunk,
            self.limits.max_compute_workgroup_storage_size as usize,
        )?;
        let (splits, hb) = (launch.plan.splits, launch.plan.hb);
        let bindings_k = 10..10 + k_chunks.len() as u32;
        let bindings_v = 40..40 + v_chunks.len() as u32;
        self.check_bindings(7 + k_chunks.len() + v_chunks.len())?;
        let source = kv_source(w, &launch, k_chunks.len(), v_chunks.len(), self.paths);

        let mut entries = vec![
            (0, Kind::Read),
            (1, Kind::Read),
            (2, Kind::Read),
            (3, Kind::Write),
            (4, Kind::Write),
            (5, Kind::Write),
            (6, Kind::Write),
        ];
        entries.extend(bindings_k.clone().map(|b| (b, Kind::Read)));
        entries.extend(bindings_v.clone().map(|b| (b, Kind::Read)));
        let layout = self.layout(&entries);
        let attend = self.pipeline(&source, "attend", &layout)?;
        let merge = self.pipeline(&source, "merge", &layout)?;

        let q = self.buffer("q", &inputs.expect("q").bytes, wgpu::BufferUsages::empty());
        let table = self.buffer(
            "page_table",
            &inputs.expect("page_table").bytes,
            wgpu::BufferUsages::empty(),
        );
        let lens = self.buffer(
            "context_lens",
            &inputs.expect("context_lens").bytes,
            wgpu::BufferUsages::empty(),
        );
        let slots = w.batch * w.q_heads * splits;
        let partial_acc = self.buffer(
            "partial_acc",
            &vec![0u8; slots * w.head_dim_v * 4],
            wgpu::BufferUsages::empty(),
        );
        let partial_ml = self.buffer(
            "partial_ml",
            &vec![0u8; slots * 8],
            wgpu::BufferUsages::empty(),
        );
        let specs = KvDecode::outputs(w);
        let (out_t, out_b) = self.poisoned_output(specs[0].poisoned());
        let (lse_t, lse_b) = self.poisoned_output(specs[1].poisoned());
        let mut binds: Vec<(u32, &wgpu::Buffer)> = vec![
            (0, &q),
            (1, &table),
            (2, &lens),
            (3, &partial_acc),
            (4, &partial_ml),
            (5, &out_b[0]),
            (6, &lse_b[0]),
        ];
        binds.extend(bindings_k.zip(&k_chunks));
        binds.extend(bindings_v.zip(&v_chunks));
        let bind_group = self.bind(&layout, &binds);
        let bh = (w.batch * w.q_heads) as u32;
        let dispatches = vec![
            Dispatch {
                pipeline: attend,
                bind_group: bind_group.clone(),
                groups: [splits as u32, (w.q_heads / hb) as u32, w.batch as u32],
            },
            Dispatch {
                pipeline: merge,
                bind_group,
                groups: [bh.min(65535), bh.div_ceil(65535), 1],
            },
        ];
        let outputs = vec![(out_t, out_b), (lse_t, lse_b)];
        Ok(Built {
            ctx: self,
            dispatches,
            clear_each_rep: vec![],
            outputs,
        })
    }

    fn expert_gemv(self, w: &ExpertGemv, inputs: &TensorSet) -> anyhow::Result<Built> {
        const WG: usize = EXPERT_WG;
        const ROWS: usize = EXPERT_ROWS;
        let es = w.weight_dtype.size();
        let row_bytes = w.d_in * es;
        let (w_chunks, rows_per_chunk) = self.chunked(inputs.expect("w"), row_bytes)?;

        // Routing metadata grouped by expert: offsets, expert ids, then (token, slot) pairs.
        let (groups, weights) = w.grouped(inputs);
        let u = w.touched().len();

        let bindings_w = 10..10 + w_chunks.len() as u32;
        self.check_bindings(6 + w_chunks.len())?;
        let source = expert_source(w, u, rows_per_chunk, w_chunks.len(), self.paths);
        let mut entries = vec![
            (0, Kind::Read),
            (1, Kind::Read),
            (2, Kind::Read),
            (3, Kind::Read),
            (4, Kind::Write),
            (5, Kind::Write),
        ];
        entries.extend(bindings_w.clone().map(|b| (b, Kind::Read)));
        let layout = self.layout(&entries);
        let gemv = self.pipeline(&source, "gemv", &layout)?;
        let combine = self.pipeline(&source, "combine", &layout)?;

        let x = self.buffer("x", &inputs.expect("x").bytes, wgpu::BufferUsages::empty());
        let scale_bytes = inputs
            .get("w_scale")
            .map(|t| t.bytes.clone())
            .unwrap_or_default();
        let w_scale = self.buffer("w_scale", &scale_bytes, wgpu::BufferUsages::empty());
        let groups_b = self.buffer(
            "groups",
            bytemuck::cast_slice(&groups),
            wgpu::BufferUsages::empty(),
        );
        let weights_b = self.buffer(
            "entry_weight",
            bytemuck::cast_slice(&weights),
            wgpu::BufferUsages::empty(),
        );
        let slot_out = self.buffer(
            "slot_out",
            &vec![0u8; w.batch * w.top_k * w.d_out * 4],
            wgpu::BufferUsages::empty(),
        );
        let (y_t, y_b) = self.poisoned_output(w.outputs()[0].poisoned());
        let mut binds: Vec<(u32, &wgpu::Buffer)> = vec![
            (0, &x),
            (1, &w_scale),
            (2, &groups_b),
            (3, &weights_b),
            (4, &slot_out),
            (5, &y_b[0]),
        ];
        binds.extend(bindings_w.zip(&w_chunks));
        let bind_group = self.bind(&layout, &binds);
        let total = (w.batch * w.d_out).div_ceil(WG) as u32;
        let dispatches = vec![
            Dispatch {
                pipeline: gemv,
                bind_group: bind_group.clone(),
                groups: [w.d_out.div_ceil(ROWS) as u32, u as u32, 1],
            },
            Dispatch {
                pipeline: combine,
                bind_group,
                groups: [total.min(65535), total.div_ceil(65535), 1],
            },
        ];
        Ok(Built {
            ctx: self,
            dispatches,
            clear_each_rep: vec![],
            outputs: vec![(y_t, y_b)],
        })
    }
}

const STREAM_WG: u32 = 256;
const KV_WG: usize = 64;
const EXPERT_WG: usize = 64;
const EXPERT_ROWS: usize = 4;
const EXPERT_TB: usize = 8;

pub fn stream_source(op: StreamOp, paths: ShaderPaths) -> String {
    let op = match op {
        StreamOp::Read => 0,
        StreamOp::Copy => 1,
        StreamOp::Write => 2,
    };
    let c = Constants::default()
        .with("OP", Const::U(op))
        .with("WG", Const::U(STREAM_WG as u64));
    assemble(paths, &c.wgsl(), &[STREAM_WGSL])
}

/// How a kv_decode point is cut into workgroups: the shared plan (`backend::plan`) with a
/// WGSL workgroup (64 invocations, the adapter's workgroup memory, about 1024 workgroups to
/// fill a large GPU, slices of at least 4 tiles), and its cache's pages per binding.
#[derive(Clone, Debug)]
pub struct KvLaunch {
    pub plan: KvPlan,
    pub pages_per_chunk: usize,
}

pub fn kv_launch(
    w: &KvDecode,
    pages_per_chunk: usize,
    workgroup_memory: usize,
) -> anyhow::Result<KvLaunch> {
    let target = KvTarget {
        wg: KV_WG,
        shared_bytes: workgroup_memory,
        blocks_wanted: 1024,
        min_tiles: 4,
    };
    let plan = kv_plan(w, &target);
    if !kv_fits(w, &target, plan.hb) {
        bail!(
            "head_dim {} is too large for this adapter's workgroup memory ({workgroup_memory} bytes)",
            w.head_dim_k
        );
    }
    Ok(KvLaunch {
        plan,
        pages_per_chunk,
    })
}

pub fn kv_source(
    w: &KvDecode,
    l: &KvLaunch,
    k_chunks: usize,
    v_chunks: usize,
    paths: ShaderPaths,
) -> String {
    let c =
        kv_constants(w, &l.plan, KV_WG).with("PAGES_PER_CHUNK", Const::U(l.pages_per_chunk as u64));
    let mut prelude = c.wgsl();
    prelude.push_str(&chunk_accessor("k", 10..10 + k_chunks as u32));
    if w.attention == crate::workload::Attention::Mla {
        // MLA: V is the head of the cached latent, read through K's bindings.
        prelude.push_str("fn v_vec(c: u32, i: u32) -> vec4<u32> { return k_vec(c, i); }\n");
    } else {
        prelude.push_str(&chunk_accessor("v", 40..40 + v_chunks as u32));
    }
    assemble(paths, &prelude, &[DTYPE_WGSL, KV_WGSL])
}

pub fn expert_source(
    w: &ExpertGemv,
    touched: usize,
    rows_per_chunk: usize,
    w_chunks: usize,
    paths: ShaderPaths,
) -> String {
    let plan = ExpertPlan {
        wg: EXPERT_WG,
        rows: EXPERT_ROWS,
        tb: EXPERT_TB,
    };
    let c =
        expert_constants(w, touched, &plan).with("ROWS_PER_CHUNK", Const::U(rows_per_chunk as u64));
    let mut prelude = c.wgsl();
    prelude.push_str(&chunk_accessor("w", 10..10 + w_chunks as u32));
    assemble(paths, &prelude, &[DTYPE_WGSL, EXPERT_WGSL])
}

/// Every shader a workload would use, assembled as for a device with `paths`, the default
/// WebGPU workgroup memory (16 KiB) and `chunks` bindings per large tensor. For validating
/// the WGSL without a driver (naga), in tests.
pub fn shader_sources(w: &Workload, paths: ShaderPaths, chunks: usize) -> anyhow::Result<String> {
    Ok(match w {
        Workload::Stream(s) => stream_source(s.op, paths),
        // A link within one adapter is the stream copy shader.
        Workload::Link(_) => stream_source(crate::workload::StreamOp::Copy, paths),
        Workload::KvDecode(k) => {
            let per_chunk = k.num_pages().div_ceil(chunks).max(1);
            let l = kv_launch(k, per_chunk, 16384)?;
            let v = if k.attention == crate::workload::Attention::Mla {
                0
            } else {
                chunks
            };
            kv_source(k, &l, chunks, v, paths)
        }
        Workload::ExpertGemv(e) => {
            let rows = (e.experts * e.d_out).div_ceil(chunks).max(1);
            expert_source(e, e.touched().len(), rows, chunks, paths)
        }
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
    Uniform,
}

/// WGSL for a tensor split over bindings `bindings`: the bindings and `<name>_vec(c, i)`, the
/// i-th 16-byte word of chunk c. WGSL cannot index bindings, hence the switch.
fn chunk_accessor(name: &str, bindings: std::ops::Range<u32>) -> String {
    let mut s = String::new();
    for (c, b) in bindings.clone().enumerate() {
        s.push_str(&format!(
            "@group(0) @binding({b}) var<storage, read> {name}_c{c}: array<vec4<u32>>;\n"
        ));
    }
    s.push_str(&format!(
        "fn {name}_vec(c: u32, i: u32) -> vec4<u32> {{\n    switch c {{\n"
    ));
    for c in 1..bindings.len() {
        s.push_str(&format!(
            "        case {c}u: {{ return {name}_c{c}[i]; }}\n"
        ));
    }
    s.push_str(&format!(
        "        default: {{ return {name}_c0[i]; }}\n    }}\n}}\n"
    ));
    s
}

impl Built {
    fn finish(
        self,
        cache: CacheMode,
        workload: &Workload,
        cpu_adapter: bool,
    ) -> anyhow::Result<Box<dyn Prepared>> {
        if let Some(e) = take_error() {
            bail!("wgpu: {e}");
        }
        // A software adapter shares the host's caches: a small clear keeps it honest without
        // spending seconds per rep; on a GPU, the flush every GPU backend uses.
        let flush_bytes = match (super::gpu_flush_bytes(cache, workload), cpu_adapter) {
            (0, _) => 0,
            (_, true) => 32 << 20,
            (n, false) => n.min(self.ctx.limits.max_buffer_size),
        };
        let flush = (flush_bytes > 0).then(|| {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("l2 flush"),
                size: flush_bytes,
                usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        let method = match (cache, flush_bytes) {
            (CacheMode::Warm, _) => "warm: no flush".to_string(),
            (CacheMode::Cold, 0) => "cold: a step moves over 4x the 512 MiB flush".to_string(),
            (CacheMode::Cold, n) => format!(
                "cold: {} cleared between reps",
                crate::report::human_bytes(n)
            ),
        };
        Ok(Box::new(WgpuPoint {
            built: self,
            flush,
            cache_method: method,
        }))
    }
}

struct WgpuPoint {
    built: Built,
    flush: Option<wgpu::Buffer>,
    cache_method: String,
}

/// Timestamp queries per resolve batch (two per rep; wgpu allows 4096 per set).
const REPS_PER_BATCH: usize = 1024;

impl WgpuPoint {
    /// Encode one rep; with `ts` = Some((set, i)) the pass writes timestamps 2i and 2i + 1.
    fn encode_rep(
        &self,
        enc: &mut wgpu::CommandEncoder,
        ts: Option<(&wgpu::QuerySet, u32)>,
        flush: bool,
    ) {
        if let (Some(f), true) = (&self.flush, flush) {
            enc.clear_buffer(f, 0, None);
        }
        for b in &self.built.clear_each_rep {
            enc.clear_buffer(b, 0, None);
        }
        let timestamp_writes = ts.map(|(set, i)| wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("step"),
            timestamp_writes,
        });
        for d in &self.built.dispatches {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
    }

    fn wait(&self) -> anyhow::Result<()> {
        self.built
            .ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("wgpu poll: {e}"))?;
        if let Some(e) = take_error() {
            bail!("wgpu: {e}");
        }
        Ok(())
    }

    /// Copy `bytes` from the start of `src` to the host.
    fn read(&self, src: &wgpu::Buffer, bytes: u64) -> anyhow::Result<Vec<u8>> {
        let ctx = &self.built.ctx;
        let size = bytes.next_multiple_of(4).max(4);
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        ctx.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .context("wgpu map callback")?
            .map_err(|e| anyhow!("wgpu map: {e}"))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("wgpu map range: {e:?}"))?;
        let mut out = view.to_vec();
        drop(view);
        staging.unmap();
        out.truncate(bytes as usize);
        Ok(out)
    }
}

impl Prepared for WgpuPoint {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn timer(&self) -> Timer {
        if self.built.ctx.timestamps {
            Timer::Gpu
        } else {
            Timer::Host
        }
    }

    fn cache_method(&self) -> String {
        self.cache_method.clone()
    }

    fn run(&mut self, warmup: usize, reps: usize) -> anyhow::Result<Vec<f64>> {
        let ctx = &self.built.ctx;
        for _ in 0..warmup {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            self.encode_rep(&mut enc, None, true);
            ctx.queue.submit([enc.finish()]);
        }
        self.wait()?;
        let mut times = Vec::with_capacity(reps);
        if !ctx.timestamps {
            for _ in 0..reps {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                self.encode_rep(&mut enc, None, true);
                let t0 = Instant::now();
                ctx.queue.submit([enc.finish()]);
                self.wait()?;
                times.push(t0.elapsed().as_secs_f64());
            }
            return Ok(times);
        }
        let period_ns = ctx.queue.get_timestamp_period() as f64;
        let mut done = 0;
        while done < reps {
            let n = (reps - done).min(REPS_PER_BATCH);
            let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * n as u32,
            });
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("resolve"),
                size: 16 * n as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            for i in 0..n {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                self.encode_rep(&mut enc, Some((&set, i as u32)), true);
                if i + 1 == n {
                    enc.resolve_query_set(&set, 0..2 * n as u32, &resolve, 0);
                }
                ctx.queue.submit([enc.finish()]);
            }
            let raw = self.read(&resolve, 16 * n as u64)?;
            let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
            for pair in stamps.chunks_exact(2) {
                let ns = pair[1].wrapping_sub(pair[0]) as f64 * period_ns;
                if !(ns > 0.0 && ns < 1e12) {
                    bail!("GPU timestamps gave {ns} ns for a rep; the adapter's timer is unusable");
                }
                times.push(ns * 1e-9);
            }
            done += n;
        }
        Ok(times)
    }

    fn run_steps(&mut self, steps: u64) -> anyhow::Result<()> {
        let ctx = &self.built.ctx;
        let mut left = steps;
        while left > 0 {
            // Batches of up to 64 steps per submission keep the queue full.
            let n = left.min(64);
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for _ in 0..n {
                self.encode_rep(&mut enc, None, false);
            }
            ctx.queue.submit([enc.finish()]);
            left -= n;
        }
        self.wait()
    }

    fn read_outputs(&mut self) -> anyhow::Result<TensorSet> {
        let mut set = Vec::new();
        for (spec, chunks) in &self.built.outputs {
            let want = spec.len() * spec.elem.size();
            let mut bytes = Vec::with_capacity(want);
            for c in chunks {
                let left = (want - bytes.len()) as u64;
                bytes.extend(self.read(c, left.min(c.size()))?);
            }
            let mut t = spec.clone();
            t.bytes = bytes.into();
            set.push(t);
        }
        Ok(TensorSet(set))
    }
}
