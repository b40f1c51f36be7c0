//! A built point timed: reps recorded with GPU timestamp queries where the adapter has them
//! (the host clock around submit-and-wait where not), outputs read back through staging.

use super::build::Built;
use super::take_error;
use crate::backend::{CacheMode, Prepared, Timer};
use crate::workload::{TensorSet, Workload};
use anyhow::{anyhow, bail};
use std::time::Instant;

pub(super) struct WgpuPoint {
    pub(super) built: Built,
    pub(super) flush: Option<wgpu::Buffer>,
    pub(super) cache_method: String,
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
        let out = self.built.ctx.read_back(src, bytes)?;
        if let Some(e) = take_error() {
            bail!("wgpu: {e}");
        }
        Ok(out)
    }
}

impl Built {
    /// The point, its cache flush attached.
    pub(super) fn finish(
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
        let flush_bytes = match (
            crate::backend::gpu_flush_bytes(cache, workload),
            cpu_adapter,
        ) {
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
                crate::workload::human_bytes(n)
            ),
        };
        Ok(Box::new(WgpuPoint {
            built: self,
            flush,
            cache_method: method,
        }))
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
            let want = spec.elem.bytes_for(spec.len());
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
