//! The cuda compute ceilings (kernels/peak.cu), timed on the host clock around launch and
//! synchronize (best of 3), every thread's sum checked against the closed form:
//! - the CUDA cores: `peak_fma`, 32 blocks of 256 threads per SM, 16384 steps of 8 FMA
//!   chains (about 2 GFLOP per SM);
//! - the tensor cores: `peak_mma`, 4 blocks of 256 threads per SM, 512 steps of 8 bf16
//!   m16n8k16 chains per warp (about 0.5 TFLOP per SM), sm_80 and later.

use super::compile;
use super::fragments::err;
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const STEPS: i32 = 16384;
const MMA_STEPS: i32 = 512;
const THREADS: u32 = 256;

/// What a thread of peak_fma ends with: chains starting at 0..8, each `steps` steps of +1.
pub fn expected(steps: i32) -> f32 {
    28.0 + 8.0 * steps as f32
}

/// What a thread of peak_mma ends with: 8 chains x 4 accumulators, each `steps` steps of
/// +16 (a row of 16 ones times a column of 16 ones).
pub fn expected_mma(steps: i32) -> f32 {
    512.0 * steps as f32
}

/// GFLOP/s of f32 FMA on `ctx`'s device, with `sms` multiprocessors.
pub fn run_on(ctx: &Arc<CudaContext>, arch: &str, sms: usize) -> Result<f64, String> {
    let ab = [1f32, 1f32];
    let threads = sms.max(1) * 32 * THREADS as usize;
    let s = time(
        ctx,
        arch,
        "peak_fma",
        bytemuck::cast_slice(&ab),
        threads,
        STEPS,
        expected(STEPS),
    )?;
    Ok(2.0 * 8.0 * STEPS as f64 * threads as f64 / s / 1e9)
}

/// GFLOP/s of bf16 `mma.sync` (f32 accumulate) on `ctx`'s device.
pub fn run_mma_on(ctx: &Arc<CudaContext>, arch: &str, sms: usize) -> Result<f64, String> {
    let one = 0x3F80_3F80u32; // two bf16 1.0
    let threads = sms.max(1) * 4 * THREADS as usize;
    let want = expected_mma(MMA_STEPS);
    let s = time(
        ctx,
        arch,
        "peak_mma",
        bytemuck::bytes_of(&one),
        threads,
        MMA_STEPS,
        want,
    )?;
    let warps = (threads / 32) as f64;
    Ok(2.0 * (16 * 8 * 16) as f64 * 8.0 * MMA_STEPS as f64 * warps / s / 1e9)
}

/// The best of 3 launches of `kernel(input, out, steps)` over `threads` threads, in seconds,
/// after checking every thread wrote `want`.
fn time(
    ctx: &Arc<CudaContext>,
    arch: &str,
    kernel: &'static str,
    input: &[u8],
    threads: usize,
    steps: i32,
    want: f32,
) -> Result<f64, String> {
    let c = compile::compile(&compile::peak_source(), "peak", arch)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin))
        .map_err(err("loading peak"))?;
    let f = module.load_function(kernel).map_err(err(kernel))?;
    let stream = ctx.default_stream();
    let input = stream.clone_htod(input).map_err(err("upload"))?;
    let mut out = stream
        .alloc_zeros::<f32>(threads)
        .map_err(err("allocating"))?;
    let cfg = LaunchConfig {
        grid_dim: ((threads / THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut launch = stream.launch_builder(&f);
        launch.arg(&input).arg(&mut out).arg(&steps);
        let t0 = std::time::Instant::now();
        // SAFETY: the arguments match peak_fma's and peak_mma's signature (a pointer to the
        // constants, one f32 out per thread, the steps); out holds one f32 per thread.
        unsafe { launch.launch(cfg) }.map_err(err(kernel))?;
        stream.synchronize().map_err(err(kernel))?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let got = stream.clone_dtoh(&out).map_err(err("reading back"))?;
    if let Some((i, g)) = got.iter().enumerate().find(|(_, g)| **g != want) {
        return Err(format!("{kernel}: thread {i} summed to {g}, not {want}"));
    }
    Ok(best)
}
