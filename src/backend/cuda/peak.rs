//! The cuda compute ceiling: kernels/peak.cu's FMA chains on every SM (32 blocks of 256
//! threads per SM, 16384 steps: about 2 GFLOP per SM), timed on the host clock around launch
//! and synchronize (best of 3), every thread's sum checked against the closed form.

use super::compile;
use super::fragments::err;
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const STEPS: i32 = 16384;
const THREADS: u32 = 256;

/// What a thread of peak_fma ends with: chains starting at 0..8, each `steps` steps of +1.
pub fn expected(steps: i32) -> f32 {
    28.0 + 8.0 * steps as f32
}

/// GFLOP/s of f32 FMA on `ctx`'s device, with `sms` multiprocessors.
pub fn run_on(ctx: &Arc<CudaContext>, arch: &str, sms: usize) -> Result<f64, String> {
    let c = compile::compile(&compile::peak_source(), "peak", arch)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin))
        .map_err(err("loading peak"))?;
    let f = module.load_function("peak_fma").map_err(err("peak_fma"))?;
    let stream = ctx.default_stream();
    let blocks = (sms.max(1) * 32) as u32;
    let threads = blocks as usize * THREADS as usize;
    let ab = stream.clone_htod(&[1f32, 1f32]).map_err(err("upload"))?;
    let mut out = stream
        .alloc_zeros::<f32>(threads)
        .map_err(err("allocating"))?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut launch = stream.launch_builder(&f);
        launch.arg(&ab).arg(&mut out).arg(&STEPS);
        let t0 = std::time::Instant::now();
        // SAFETY: the arguments match peak_fma's signature; out holds one f32 per thread.
        unsafe { launch.launch(cfg) }.map_err(err("launching peak_fma"))?;
        stream.synchronize().map_err(err("peak_fma"))?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let got = stream.clone_dtoh(&out).map_err(err("reading back"))?;
    let want = expected(STEPS);
    if let Some((i, g)) = got.iter().enumerate().find(|(_, g)| **g != want) {
        return Err(format!("peak_fma: thread {i} summed to {g}, not {want}"));
    }
    Ok(2.0 * 8.0 * STEPS as f64 * threads as f64 / best / 1e9)
}
