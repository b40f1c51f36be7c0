//! The wgpu compute ceiling: shaders/peak.wgsl's FMA chains over enough threads to fill the
//! adapter, timed on the host clock around submit-and-wait (best of 3), every thread's sum
//! checked against the closed form.

use super::bindings::Bindings;
use super::build::Ctx;
use anyhow::{anyhow, bail};

/// Steps and lanes of peak.wgsl: a thread's 32 lanes, starting at 0..32, end at s + STEPS.
const STEPS: u64 = 4096;
const LANES: u64 = 32;
const WG: u32 = 256;

impl Ctx {
    /// GFLOP/s of f32 FMA on this adapter, over `groups` workgroups of 256 threads.
    pub(super) fn peak_gflops(&self, groups: u32) -> anyhow::Result<f64> {
        let source = include_str!("../../../shaders/peak.wgsl");
        let bindings = Bindings::of(source)?;
        let layout = self.layout(&bindings)?;
        let pipeline = self.pipeline(source, "peak", &layout)?;
        let ab = self.buffer(
            "ab",
            bytemuck::cast_slice(&[1f32, 1f32]),
            wgpu::BufferUsages::empty(),
        );
        let threads = groups as u64 * WG as u64;
        let out = self.buffer(
            "out",
            &vec![0u8; threads as usize * 4],
            wgpu::BufferUsages::empty(),
        );
        let bind = self.bind(&layout, &bindings, &[("ab", &ab), ("out", &out)], &[])?;
        // Workgroups over x and y, within the per-dimension limit.
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        let (gx, gy) = (groups.min(max), groups.div_ceil(max));
        anyhow::ensure!(
            gx * gy == groups,
            "{groups} workgroups do not tile {max} per row"
        );
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
            let t0 = std::time::Instant::now();
            self.queue.submit([enc.finish()]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| anyhow!("wgpu poll: {e}"))?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        let sums: Vec<f32> = bytemuck::pod_collect_to_vec(&self.read_back(&out, threads * 4)?);
        let want = (0..LANES).map(|s| (s + STEPS) as f32).sum::<f32>();
        if let Some((i, got)) = sums.iter().enumerate().find(|(_, g)| **g != want) {
            bail!("peak.wgsl: thread {i} summed to {got}, not {want}");
        }
        Ok(2.0 * (threads * LANES * STEPS) as f64 / best / 1e9)
    }
}
