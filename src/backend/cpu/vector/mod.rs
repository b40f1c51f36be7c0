//! The cpu backend's tuned implementations, one per vector path (`amx`, `avx512`, `avx2`,
//! `portable`): the kernel bodies are generic over `simd::Simd`, and each path instantiates
//! them inside a `#[target_feature]` entry; `amx` adds tile kernels (kv_amx.rs,
//! kv_amx_gqa.rs) and runs the rest as `avx512`; `avx512` takes 4-bit experts in expert4.rs.
//! `simple` stays beside them as the reference.

mod amx;
mod expert;
#[cfg(target_arch = "x86_64")]
mod expert4;
mod kv;
#[cfg(target_arch = "x86_64")]
mod kv_amx;
#[cfg(target_arch = "x86_64")]
mod kv_amx_gqa;
mod peak;
pub mod simd;
mod stream;

use super::kernels::{Partial, merge_partials, out_mut, slots_by_expert, sum_slots};
use crate::workload::{ExpertGemv, KvDecode, TensorSet};
use expert::ExpertCtx;
use kv::KvCtx;
use rayon::prelude::*;
pub use simd::Isa;
use simd::{Portable, Simd};
pub(super) use stream::stream;

/// Whether path `isa` covers this point on this CPU, or why not.
pub fn covers(isa: Isa, workload: &crate::workload::Workload) -> Result<(), String> {
    use crate::workload::Workload;
    isa.allowed()?;
    let dt = match workload {
        #[cfg(target_arch = "x86_64")]
        Workload::KvDecode(w) if isa == Isa::Amx => return kv_amx::covers(w),
        Workload::KvDecode(w) => w.kv_dtype,
        Workload::ExpertGemv(_) if isa == Isa::Amx => {
            return Err("amx runs kv_decode; expert_gemv runs on avx512".into());
        }
        Workload::ExpertGemv(w) if w.weight_dtype.groups().is_some() => {
            return if w.d_in.is_multiple_of(32) {
                Ok(())
            } else {
                Err(format!(
                    "{} with d_in {} (not a multiple of 32) runs in simple",
                    w.weight_dtype, w.d_in
                ))
            };
        }
        Workload::ExpertGemv(w) => w.weight_dtype,
        Workload::Stream(_) if matches!(isa, Isa::Avx512 | Isa::Avx2) => return Ok(()),
        other => {
            return Err(format!(
                "{} is not built for {}",
                isa.name(),
                other.kernel()
            ));
        }
    };
    if simd::decodes(dt) {
        Ok(())
    } else {
        Err(format!("{dt} is decoded by simple only"))
    }
}

/// Instantiate `$m::$f::<S>($args)` for a path: an entry with the path's target features per
/// path (so the intrinsics inline), and a dispatcher over `Isa`.
macro_rules! per_isa {
    ($name:ident, $m:ident::$f:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name(isa: Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
            unsafe fn avx512($($arg: $ty),*) -> $ret {
                // SAFETY: reached only where the CPU has these features (below).
                unsafe { $m::$f::<simd::Avx512>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                // SAFETY: as above.
                unsafe { $m::$f::<simd::Avx2>($($arg),*) }
            }
            assert!(isa.on_this_cpu().is_ok(), "{} on a CPU without it", isa.name());
            match isa {
                // SAFETY: the CPU has the path's features (asserted above).
                #[cfg(target_arch = "x86_64")]
                Isa::Amx | Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: the portable path needs no feature.
                _ => unsafe { $m::$f::<Portable>($($arg),*) },
            }
        }
    };
}

per_isa!(kv_task, kv::task, (cx: &KvCtx, t: (usize, usize)) -> Vec<Partial>);
per_isa!(expert_block, expert::block, (cx: &ExpertCtx, blk: usize) -> Vec<f32>);
per_isa!(peak_chains, peak::chains, (n: usize, a: f32, b: f32) -> f64);

/// The measured f32 FMA ceiling of this CPU on path `isa`, every rayon thread at once: the
/// best of 5 rounds of about 20 ms, in GFLOP/s. Err if a chain ends anywhere but where
/// its closed form says (a broken path, not a slow one).
pub fn peak_gflops(isa: Isa) -> Result<f64, String> {
    const STEPS: usize = 1 << 20;
    let lanes = lanes(isa);
    let (a, b) = (std::hint::black_box(1.0f32), std::hint::black_box(1.0f32));
    let chains = || peak_chains(isa, STEPS, a, b);
    best_rate(
        chains,
        peak::expected(STEPS, lanes),
        peak::flops(STEPS, lanes),
    )
    .map_err(|got| {
        format!(
            "{} FMA chains summed to {got}, not {}",
            isa.name(),
            peak::expected(STEPS, lanes)
        )
    })
}

/// The measured AMX ceiling, every rayon thread at once: `tdpbf16ps` chains on tiles of
/// ones, the best of 5 rounds, in GFLOP/s (2 per multiply-add). Err if a sum ends anywhere
/// but where its closed form says.
pub fn amx_peak_gflops() -> Result<f64, String> {
    #[cfg(target_arch = "x86_64")]
    {
        const STEPS: usize = 1 << 16;
        Isa::Amx.on_this_cpu()?;
        // SAFETY: permitted (on_this_cpu asked the OS).
        let chains = || unsafe { amx::chains(STEPS) };
        let flops = 2.0 * (4 * amx::TILE_MACS * STEPS) as f64;
        best_rate(chains, amx::expected(STEPS), flops)
            .map_err(|got| format!("AMX chains summed to {got}, not {}", amx::expected(STEPS)))
    }
    #[cfg(not(target_arch = "x86_64"))]
    Err("AMX runs on x86-64 only".into())
}

/// `chains` on every rayon thread at once, 5 rounds: the best rate in GFLOP/s (`flops` per
/// thread per round), or the first sum that is not `want`.
fn best_rate(chains: impl Fn() -> f64 + Sync, want: f64, flops: f64) -> Result<f64, f64> {
    let threads = rayon::current_num_threads();
    let mut best = 0f64;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let sums: Vec<f64> = (0..threads).into_par_iter().map(|_| chains()).collect();
        let s = t0.elapsed().as_secs_f64();
        if let Some(&got) = sums.iter().find(|&&g| g != want) {
            return Err(got);
        }
        best = best.max(flops * threads as f64 / s / 1e9);
    }
    Ok(best)
}

fn lanes(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx | Isa::Avx512 => simd::Avx512::LANES,
        _ => Portable::LANES,
    }
}

pub(super) fn kv_decode(isa: Isa, w: &KvDecode, inputs: &TensorSet, outputs: &mut TensorSet) {
    let q = inputs.expect("q").view::<f32>();
    let table = inputs.expect("page_table").view::<i32>();
    let k = &inputs.expect("k_pages").bytes;
    let v = inputs.get("v_pages").map(|t| &t.bytes[..]);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx {
        assert!(
            kv_amx::covers(w).is_ok(),
            "amx on a point it does not cover"
        );
        let partials: Vec<Vec<Partial>> = match v {
            Some(v) if kv_amx_gqa::fits(w) => {
                let cx = kv_amx_gqa::GqaCtx::new(w, &q, (k, v), &table);
                kv::tasks(w, cx.chunk)
                    .into_par_iter()
                    // SAFETY: the path is allowed on this CPU (permission asked), covers w
                    // and the kernel fits it.
                    .map(|t| {
                        kv_amx_gqa::with_scratch(w, |s| unsafe { kv_amx_gqa::task(&cx, s, t) })
                    })
                    .collect()
            }
            _ => {
                let cx = kv_amx::AmxCtx::new(w, &q, (k, v), &table);
                kv::tasks(w, cx.chunk)
                    .into_par_iter()
                    // SAFETY: the path is allowed on this CPU (permission asked) and covers w.
                    .map(|t| unsafe { kv_amx::task(&cx, t) })
                    .collect()
            }
        };
        return merge_partials(w, partials.into_iter().flatten().collect(), outputs);
    }
    let cx = KvCtx::new(w, &q, (k, v), &table, lanes(isa));
    let partials: Vec<Vec<Partial>> = cx
        .tasks()
        .into_par_iter()
        .map(|t| kv_task(isa, &cx, t))
        .collect();
    let partials = partials.into_iter().flatten().collect();
    merge_partials(w, partials, outputs);
}

pub(super) fn expert_gemv(isa: Isa, w: &ExpertGemv, inputs: &TensorSet, outputs: &mut TensorSet) {
    let dip = w.d_in.next_multiple_of(lanes(isa));
    let x_in = inputs.expect("x").view::<f32>();
    let mut x = simd::Aligned::zeroed(w.batch * dip);
    for (row, src) in x.chunks_exact_mut(dip).zip(x_in.chunks_exact(w.d_in)) {
        for (o, &v) in row.iter_mut().zip(src) {
            *o = w.math.operand(v);
        }
    }
    // 4-bit weights: the AVX-512 kernel takes x in its own order (expert4.rs), the others
    // as `four_bit_x` lays it out.
    let four_bit = w.weight_dtype.groups().is_some();
    let avx512 = cfg!(target_arch = "x86_64") && matches!(isa, Isa::Amx | Isa::Avx512);
    #[cfg(target_arch = "x86_64")]
    let lanes4 = (four_bit && avx512).then(|| expert4::XLanes::new(&x, dip, w.d_in));
    if (four_bit && !avx512) || expert::bf16_pairs(w) {
        let whole = w.d_in / 32 * 32;
        x.chunks_exact_mut(dip)
            .for_each(|row| expert::four_bit_x(&mut row[..whole]));
    }
    let scales = w.dot_scales(inputs);
    let rw = inputs.expect("topk_weights").view::<f32>();
    let ids = inputs.expect("topk_ids").view::<i32>();
    let cx = ExpertCtx {
        w,
        x,
        dip,
        wt: &inputs.expect("w").bytes,
        scales: scales.as_deref(),
        group_scales: four_bit.then(|| &inputs.expect("w_scale").bytes[..]),
        touched: slots_by_expert(w, &ids),
        rw: &rw,
        rows: expert::block_rows(w, rayon::current_num_threads()),
    };
    let blocks: Vec<Vec<f32>> = (0..w.d_out.div_ceil(cx.rows))
        .into_par_iter()
        .map(|blk| {
            #[cfg(target_arch = "x86_64")]
            if let Some(x4) = &lanes4 {
                assert!(
                    isa.on_this_cpu().is_ok(),
                    "{} on a CPU without it",
                    isa.name()
                );
                // SAFETY: the CPU has AVX-512 F and BW (asserted); the dtype is 4-bit and d_in
                // a multiple of 32 (`covers`).
                return unsafe { expert4::block(&cx, x4, blk) };
            }
            expert_block(isa, &cx, blk)
        })
        .collect();
    let y = sum_slots(w, cx.rows, &blocks);
    out_mut(outputs, "y").copy_from_slice(bytemuck::cast_slice(&y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::DType;

    /// Every vector operation the kernels use, on path S, against scalar arithmetic: the
    /// decoders of every dtype (whole vectors and the row tail), the shuffle tree, exp.
    #[inline(always)]
    unsafe fn ops_match_scalar<S: Simd>() -> Result<(), String> {
        let l = S::LANES;
        // Decoders: every code of fp8 (the extremes and subnormals too), and values that
        // round in the 16-bit formats.
        for dt in [DType::F32, DType::F16, DType::Bf16, DType::Fp8E4m3] {
            let n = if dt == DType::Fp8E4m3 { 256 } else { 3 * l + 5 };
            let bytes: Vec<u8> = match dt {
                DType::Fp8E4m3 => (0..=255u8).filter(|&c| c & 0x7F != 0x7F).collect(),
                _ => dt.encode(
                    &(0..n)
                        .map(|i| (i as f32 - 20.3) * 0.731)
                        .collect::<Vec<_>>(),
                ),
            };
            let n = bytes.len() / dt.size();
            let mut want = vec![0f32; n];
            dt.decode_slice(&bytes, 0, &mut want);
            for start in [0, 1] {
                let mut got = vec![f32::NAN; n - start];
                // SAFETY: the caller's contract.
                unsafe { simd::decode_row::<S>(dt, &bytes, start, &mut got) };
                if got != want[start..] {
                    return Err(format!(
                        "{dt} from {start}: {got:?} vs {:?}",
                        &want[start..]
                    ));
                }
            }
        }
        // 4-bit chunks: every code in both nibbles of both halves, a table of distinct
        // values; even positions first, then odd.
        let table: [f32; 16] = std::array::from_fn(|c| c as f32 * 0.75 - 5.0);
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) | ((15 - i as u8) << 4));
        let mut wv = [unsafe { S::splat(0.0) }; 4];
        unsafe { S::nibbles32(bytes.as_ptr(), &table, &mut wv) };
        let mut got = [0f32; 32];
        for v in 0..32 / l {
            unsafe { S::store(got[v * l..].as_mut_ptr(), wv[v]) };
        }
        for i in 0..16 {
            let (lo, hi) = (table[i], table[15 - i]);
            if got[i] != lo || got[16 + i] != hi {
                return Err(format!(
                    "nibbles32 byte {i}: {} {} vs {lo} {hi}",
                    got[i],
                    got[16 + i]
                ));
            }
        }
        // int4 without a table: every code in both nibbles of both halves.
        let mut wv = [unsafe { S::splat(0.0) }; 4];
        unsafe { S::int4_32(bytes.as_ptr(), &mut wv) };
        let mut got = [0f32; 32];
        for v in 0..32 / l {
            unsafe { S::store(got[v * l..].as_mut_ptr(), wv[v]) };
        }
        for (i, &b) in bytes.iter().enumerate() {
            let (lo, hi) = (((b << 4) as i8 >> 4) as f32, (b as i8 >> 4) as f32);
            if got[i] != lo || got[16 + i] != hi {
                return Err(format!(
                    "int4_32 byte {i}: {} {} vs {lo} {hi}",
                    got[i],
                    got[16 + i]
                ));
            }
        }
        // The shuffle tree: lane i is the sum of vector i.
        let vals: Vec<f32> = (0..16 * l)
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
            .collect();
        let mut acc = [unsafe { S::splat(0.0) }; 16];
        for (i, a) in acc.iter_mut().enumerate().take(l) {
            *a = unsafe { S::load(vals[i * l..].as_ptr()) };
        }
        let mut out = vec![0f32; l];
        unsafe { S::store(out.as_mut_ptr(), S::transpose_sum(&acc)) };
        for (i, &o) in out.iter().enumerate() {
            let want: f32 = vals[i * l..(i + 1) * l].iter().sum();
            if o != want {
                return Err(format!("transpose_sum lane {i}: {o} vs {want}"));
            }
        }
        // exp over softmax's range, within 4 ulp.
        for k in 0..2000 {
            let x = -87.0 + k as f32 * 0.0435;
            let mut e = vec![0f32; l];
            unsafe { S::store(e.as_mut_ptr(), S::exp(S::splat(x))) };
            let want = (x as f64).exp();
            if ((e[0] as f64 - want) / want).abs() > 4.0 * f32::EPSILON as f64 {
                return Err(format!("exp({x}) = {} vs {want}", e[0]));
            }
        }
        Ok(())
    }

    per_isa!(check_ops, tests::ops_match_scalar, () -> Result<(), String>);

    #[test]
    fn every_path_on_this_cpu_matches_scalar_arithmetic() {
        let mut ran = 0;
        for isa in Isa::ALL {
            match isa.on_this_cpu() {
                Ok(()) => {
                    check_ops(isa).unwrap_or_else(|e| panic!("{}: {e}", isa.name()));
                    ran += 1;
                }
                Err(why) => eprintln!("SKIPPED: the {} path ({why})", isa.name()),
            }
        }
        assert!(ran >= 1, "the portable path runs everywhere");
    }

    #[test]
    fn the_fma_ceiling_is_measured_and_checked() {
        let isa = Isa::ALL
            .into_iter()
            .find(|i| i.on_this_cpu().is_ok())
            .unwrap();
        let g = peak_gflops(isa).expect("the chains end where their closed form says");
        assert!(g > 0.5, "{g} GFLOP/s");
        // The closed form: chain i of every lane ends at i + n.
        assert_eq!(
            peak::expected(10, 4),
            (0..peak::CHAINS)
                .map(|i| 4.0 * (i + 10) as f64)
                .sum::<f64>()
        );
    }
}
