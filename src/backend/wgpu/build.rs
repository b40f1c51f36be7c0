//! A point built on a device: its buffers (large tensors split over bindings), pipelines and
//! dispatches, per kernel; `Built::finish` adds the cold-cache flush and the timing harness.

use super::bindings::{Bindings, Kind};
use super::shaders::{STREAM_WG, ShaderPaths};
use super::{WgpuOptions, error_chain, impls};
use crate::workload::{ExpertGemv, Stream, StreamOp, Tensor, TensorSet};
use anyhow::bail;
use wgpu::util::DeviceExt;

/// What building a point needs: the device, its limits, and the shader assembly.
pub(super) struct Ctx {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) limits: wgpu::Limits,
    pub(super) timestamps: bool,
    pub(super) paths: ShaderPaths,
    pub(super) max_binding: u64,
    pub(super) runtime_checks: bool,
}

/// One pipeline dispatch of a step.
pub(super) struct Dispatch {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) groups: [u32; 3],
}

/// A point built on the device, before the timing harness is attached.
pub(super) struct Built {
    pub(super) ctx: Ctx,
    pub(super) dispatches: Vec<Dispatch>,
    /// Buffers cleared before every rep (stream read's atomic sum).
    pub(super) clear_each_rep: Vec<wgpu::Buffer>,
    /// (name, chunks, bytes to keep, element type/shape) of every output.
    pub(super) outputs: Vec<(Tensor, Vec<wgpu::Buffer>)>,
}

impl Ctx {
    pub(super) fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        options: WgpuOptions,
        subgroup_min: usize,
    ) -> Ctx {
        let limits = device.limits();
        let mut max_binding = limits.max_storage_buffer_binding_size;
        if let Some(cap) = options.max_binding {
            max_binding = max_binding.min(cap.max(256));
        }
        let f = device.features();
        let timestamps = f.contains(wgpu::Features::TIMESTAMP_QUERY);
        let paths = ShaderPaths {
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            subgroup_min: subgroup_min.max(4),
        };
        Ctx {
            device,
            queue,
            limits,
            timestamps,
            paths,
            max_binding,
            runtime_checks: options.runtime_checks,
        }
    }

    pub(super) fn buffer(
        &self,
        label: &str,
        bytes: &[u8],
        extra: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
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
    pub(super) fn chunked(
        &self,
        t: &Tensor,
        unit_bytes: usize,
    ) -> anyhow::Result<(Vec<wgpu::Buffer>, usize)> {
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

    pub(super) fn pipeline(
        &self,
        source: &str,
        entry: &str,
        layout: &wgpu::BindGroupLayout,
    ) -> anyhow::Result<wgpu::ComputePipeline> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(entry),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        let module = if self.runtime_checks {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: these are decodelab's own shaders, not untrusted input. Every loop is
            // bounded by a compile-time constant or a count the host computed from the
            // point's shape; every index into a private or workgroup array is in range by
            // construction (the conformance suite runs them, awkward shapes included); buffer
            // accesses stay within the bindings the host sized, and the driver's robust
            // buffer access (which wgpu enables) still bounds them. Integer divisors are
            // constants or nonzero shape values.
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        };
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

    /// The bind group layout of a shader's bindings (numbers and access as it declares
    /// them), or why the adapter cannot hold them.
    pub(super) fn layout(&self, bindings: &Bindings) -> anyhow::Result<wgpu::BindGroupLayout> {
        let (needed, max) = (
            bindings.storage(),
            self.limits.max_storage_buffers_per_shader_stage as usize,
        );
        if needed > max {
            bail!(
                "this point needs {needed} storage bindings; the adapter allows {max} per shader stage"
            );
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .0
            .iter()
            .map(|&(_, binding, kind)| wgpu::BindGroupLayoutEntry {
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
        Ok(self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            }))
    }

    /// A bind group of buffers named as the shader names their bindings (a chunked tensor by
    /// its base name); see `Bindings::place`.
    pub(super) fn bind(
        &self,
        layout: &wgpu::BindGroupLayout,
        bindings: &Bindings,
        buffers: &[(&str, &wgpu::Buffer)],
        chunked: &[(&str, &[wgpu::Buffer])],
    ) -> anyhow::Result<wgpu::BindGroup> {
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .place(buffers, chunked)?
            .into_iter()
            .map(|(binding, b)| wgpu::BindGroupEntry {
                binding,
                resource: b.as_entire_binding(),
            })
            .collect();
        Ok(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        }))
    }

    /// Copy `bytes` from the start of `src` to the host (through a mapped staging buffer).
    pub(super) fn read_back(&self, src: &wgpu::Buffer, bytes: u64) -> anyhow::Result<Vec<u8>> {
        let size = bytes.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow::anyhow!("wgpu poll: {e}"))?;
        rx.recv()
            .map_err(|e| anyhow::anyhow!("wgpu map callback: {e}"))?
            .map_err(|e| anyhow::anyhow!("wgpu map: {e}"))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow::anyhow!("wgpu map range: {e:?}"))?;
        let mut out = view.to_vec();
        drop(view);
        staging.unmap();
        out.truncate(bytes as usize);
        Ok(out)
    }

    /// A poisoned output buffer, and the output's shape to read it back by.
    pub(super) fn poisoned_output(&self, poisoned: Tensor) -> (Tensor, Vec<wgpu::Buffer>) {
        let buf = self.buffer(poisoned.name, &poisoned.bytes, wgpu::BufferUsages::empty());
        (
            Tensor::spec(poisoned.name, poisoned.elem, poisoned.shape),
            vec![buf],
        )
    }

    pub(super) fn stream(self, w: &Stream, inputs: &TensorSet, imp: &str) -> anyhow::Result<Built> {
        const WG: u32 = STREAM_WG;
        let source = impls::stream_for(w.op, imp, self.paths);
        let bindings = Bindings::of(&source)?;
        let layout = self.layout(&bindings)?;
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
            let named = [
                ("src", &src),
                ("dst", &dst),
                ("sum", &sum),
                ("chunk", &uniform),
            ];
            let bind_group = self.bind(&layout, &bindings, &named, &[])?;
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

    /// expert_gemv's buffers, named as its shader names their bindings, and its two
    /// dispatches (the products per touched expert, then the sum over each token's slots).
    pub(super) fn expert_gemv(
        self,
        w: &ExpertGemv,
        inputs: &TensorSet,
        imp: &str,
    ) -> anyhow::Result<Built> {
        let row_bytes = w.w_row_bytes() as usize;
        let (w_chunks, rows_per_chunk) = self.chunked(inputs.expect("w"), row_bytes)?;

        // Routing metadata grouped by expert: offsets, expert ids, then (token, slot) pairs.
        let (groups, weights) = w.grouped(inputs);
        let u = w.touched().len();

        let (source, wg, rows) =
            impls::expert_for(w, imp, rows_per_chunk, w_chunks.len(), self.paths);
        let bindings = Bindings::of(&source)?;
        let layout = self.layout(&bindings)?;
        let gemv = self.pipeline(&source, "gemv", &layout)?;
        let combine = self.pipeline(&source, "combine", &layout)?;

        let x = self.buffer("x", &inputs.expect("x").bytes, wgpu::BufferUsages::empty());
        let scale_bytes = crate::backend::plan::expert_scale_bytes(w, inputs);
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
        let named = [
            ("x", &x),
            ("w_scale", &w_scale),
            ("groups", &groups_b),
            ("entry_weight", &weights_b),
            ("slot_out", &slot_out),
            ("y", &y_b[0]),
        ];
        let bind_group = self.bind(&layout, &bindings, &named, &[("w", &w_chunks)])?;
        let total = (w.batch * w.d_out).div_ceil(wg) as u32;
        let dispatches = vec![
            Dispatch {
                pipeline: gemv,
                bind_group: bind_group.clone(),
                groups: [w.d_out.div_ceil(rows) as u32, u as u32, 1],
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
