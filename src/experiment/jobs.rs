//! One job of a run: a point on one device, split over the run's devices, or a link between
//! two; each returns its result line (the oracle's check, the timings, the energy).

use super::host::HostData;
use super::preflight::{Meters, Selected, meters_for};
use super::{Experiment, Point};
use crate::backend::How;
use crate::report::{self, CheckOut, Energy, HostSeconds, ResultLine, TimeStats};
use crate::workload::{TensorSet, Workload};
use anyhow::{Context, bail};
use std::path::Path;
use std::time::Instant;

pub(super) fn env_for(
    base: &serde_json::Value,
    exp: &Experiment,
    dev: &crate::backend::DeviceInfo,
    device_index: usize,
) -> serde_json::Value {
    let mut env = base.clone();
    env["device_index"] = device_index.into();
    env["warmup"] = exp.warmup.into();
    for (k, v) in &dev.details {
        env[k.as_str()] = v.clone().into();
    }
    env
}

/// What a job measured, and where: the parts of its result line that differ by job.
pub(super) struct Measured<'a> {
    /// The device's name (a split: the set; a link: `src -> dst`).
    pub device: String,
    pub device_count: usize,
    pub stats: TimeStats,
    pub reps: usize,
    pub check: &'a crate::workload::Check,
    pub energy: Energy,
    pub env: serde_json::Value,
    pub imp: &'a str,
    pub host_s: Option<HostSeconds>,
}

/// A job's result line: the point's own figures, and what the job measured.
pub(super) fn result_line(
    exp: &Experiment,
    p: &Point,
    backend: &dyn crate::backend::Backend,
    m: Measured,
) -> anyhow::Result<ResultLine> {
    let Measured {
        device,
        device_count,
        stats,
        reps,
        check,
        energy,
        env,
        imp,
        host_s,
    } = m;
    let bytes = p.workload.bytes();
    let gbps = crate::split::run::gbps(bytes, stats.median);
    // Against the spec only where the profile describes the device that ran.
    let pct_of_spec = exp
        .hardware
        .as_ref()
        .filter(|h| h.describes(&device))
        .map(|h| 100.0 * gbps / h.memory_bandwidth_gbps);
    Ok(ResultLine {
        schema: report::SCHEMA.into(),
        experiment: exp.name.clone(),
        point: p.index,
        kernel: p.workload.kernel().into(),
        backend: backend.name().into(),
        implementation: imp.into(),
        passed_over: if p.imp.is_none() {
            crate::backend::passed_over(backend, &p.workload, imp)
        } else {
            Vec::new()
        },
        device,
        device_count,
        split: if matches!(p.workload, Workload::Link(_)) {
            "link".into()
        } else {
            p.split.name().into()
        },
        params: p.workload.params_json(),
        bytes,
        flops: p.workload.flops(),
        reps,
        time_s: stats,
        gbps,
        pct_of_spec,
        pct_of_stream: None,
        roofline: None,
        cache: serde_json::to_value(exp.cache)?
            .as_str()
            .unwrap_or("")
            .into(),
        energy,
        check: CheckOut {
            rel_l2_err: Some(check.rel_l2_err).filter(|x| x.is_finite()),
            max_abs_err: Some(check.max_abs_err).filter(|x| x.is_finite()),
            ref_rel_l2_err: check.ref_rel_l2_err,
            pass: check.pass,
            reason: check.reason.clone(),
        },
        env,
        host_s,
        multi: None,
        link: None,
    })
}

/// A point on one device: prepare, warm up, time, read back, check, energy. The oracle runs
/// on another thread while the point is uploaded and compiled (never while it is timed).
pub(super) fn run_single(
    exp: &Experiment,
    p: &Point,
    data: &mut HostData,
    s: &Selected,
    d: usize,
    imp: &'static str,
    env_base: &serde_json::Value,
) -> anyhow::Result<(ResultLine, TensorSet)> {
    let b = s.backend.as_ref();
    let dev = &b.devices()[d];
    let meters = meters_for(exp, dev, Some(&p.workload));
    let how = How {
        imp,
        cache: exp.cache,
    };
    let t0 = Instant::now();
    let needs_oracle = data.reference.is_none();
    let (prepared, oracle) = std::thread::scope(|sc| {
        let inputs = &data.inputs;
        let oracle = needs_oracle.then(|| {
            sc.spawn(|| {
                let t = Instant::now();
                (p.workload.oracle(inputs), t.elapsed().as_secs_f64())
            })
        });
        let prepared = b.prepare(d, &p.workload, inputs, &how);
        let upload_s = t0.elapsed().as_secs_f64();
        let oracle = oracle.map(|h| h.join());
        (prepared.map(|p| (p, upload_s)), oracle)
    });
    if let Some(done) = oracle {
        let (reference, secs) =
            done.map_err(|_| anyhow::anyhow!("the oracle's thread panicked"))?;
        data.reference = Some(reference);
        data.oracle_s += secs;
    }
    let (mut prepared, upload_s) = prepared?;
    let times = timed_reps(prepared.as_mut(), exp.warmup, exp.reps)?;
    let outputs = prepared.read_outputs()?;
    let energy = energy_of(&p.workload, &meters, prepared.as_mut())?;
    let stats = TimeStats::from_samples(&times).context("no timings came back")?;
    let t_check = Instant::now();
    let check = data.reference(&p.workload).check(&outputs);
    let compile_s = prepared.compile_s();
    let host_s = HostSeconds {
        generate: data.generate_s,
        oracle: data.oracle_s,
        upload: upload_s - compile_s.unwrap_or(0.0),
        compile: compile_s,
        check: t_check.elapsed().as_secs_f64(),
        reused_inputs: data.reused,
    };
    let mut env = env_for(env_base, exp, dev, d);
    env["timer"] = serde_json::to_value(prepared.timer())?;
    env["cache_method"] = prepared.cache_method().into();
    let measured = Measured {
        device: dev.name.clone(),
        device_count: 1,
        stats,
        reps: times.len(),
        check: &check,
        energy,
        env,
        imp,
        host_s: Some(host_s),
    };
    let line = result_line(exp, p, b, measured)?;
    Ok((line, outputs))
}

/// When the median stays noisy, more reps are taken: up to this many times the asked-for
/// count, for at most as long as the asked-for reps took and never over this long (a point
/// at most doubles its time).
const MORE_REPS_FACTOR: usize = 4;
const MORE_REPS_SECONDS: f64 = 2.0;

/// `reps` timed reps after `warmup`, and more, in rounds as many again, while
/// `more_reps_wanted` says so.
fn timed_reps(
    prepared: &mut dyn crate::backend::Prepared,
    warmup: usize,
    reps: usize,
) -> anyhow::Result<Vec<f64>> {
    let t0 = Instant::now();
    let mut times = prepared.run(warmup, reps)?;
    let budget = t0.elapsed().as_secs_f64().min(MORE_REPS_SECONDS);
    let t1 = Instant::now();
    while more_reps_wanted(&times, reps, t1.elapsed().as_secs_f64(), budget) {
        times.extend(prepared.run(0, reps)?);
    }
    Ok(times)
}

/// Whether a point with these rep times should take another round: its median is noisy, it
/// asked for 5 reps or more (fewer is taken as asked), it has taken fewer than
/// `MORE_REPS_FACTOR` times them, and the extra rounds have run for less than `budget`
/// seconds (the first always runs).
fn more_reps_wanted(times: &[f64], reps: usize, extra_s: f64, budget_s: f64) -> bool {
    reps >= 5
        && times.len() < MORE_REPS_FACTOR * reps
        && (times.len() == reps || extra_s < budget_s)
        && TimeStats::from_samples(times).is_some_and(|s| s.noisy())
}

/// A split point: shards on every device of the run, the combine, the one-device baseline.
pub(super) fn run_split_point(
    exp: &Experiment,
    p: &Point,
    data: &mut HostData,
    s: &Selected,
    imp: &'static str,
    env_base: &serde_json::Value,
) -> anyhow::Result<(ResultLine, TensorSet)> {
    let b = s.backend.as_ref();
    let inputs = &data.inputs.clone();
    let set = s.device_set();
    let (plan, settings) = split_plan(exp, p, inputs, s, imp)?;
    let outcome = match crate::cluster::world() {
        Some(w) => crate::split::ranked::run_split_ranked(
            w,
            b,
            s.devices[0],
            &set,
            &p.workload,
            inputs,
            &plan,
            &settings,
        )?
        .context("rank 0 holds the outcome of a split")?,
        None => crate::split::run::run_split(b, &set, &p.workload, inputs, &plan, &settings)?,
    };
    let t_check = Instant::now();
    let mut check = data.reference(&p.workload).check(&outcome.outputs);
    if let Some(v) = outcome.multi.vs_one_device.as_ref().filter(|v| !v.pass) {
        check.pass = false;
        check.reason = Some(format!(
            "combined outputs differ from the one-device run (rel L2 {:.2e}, max abs {:.2e}; split {} allows {})",
            v.rel_l2_diff,
            v.max_abs_diff,
            p.split.name(),
            p.split.one_device_tolerance(p.workload.math())
        ));
    }
    // Energy: the model over what the shards moved; a measured figure per device set is not
    // built (NVML windows are per device and per prepared point).
    let energy = split_energy(exp, &plan);
    let first = set.physical[0];
    let dev = &b.devices()[first];
    let mut env = env_for(env_base, exp, dev, first);
    env["devices"] = set.label().into();
    env["physical_devices"] = serde_json::to_value(&set.physical)?;
    let mut names: Vec<String> = s
        .physical_devices()
        .iter()
        .map(|&d| b.devices()[d].name.clone())
        .collect();
    if let Some(w) = crate::cluster::world() {
        env["world"] = w.describe();
        env["rank_devices"] = s.rank_devices.iter().map(|d| d.1.clone()).collect();
        names = s.rank_devices.iter().map(|d| d.1.clone()).collect();
    }
    let device = if set.virtual_devices {
        format!("{} x{} (virtual)", names[0], set.len())
    } else if names.iter().all(|n| *n == names[0]) {
        format!("{} x{}", names[0], set.len())
    } else {
        names.join(" + ")
    };
    let host_s = HostSeconds {
        generate: data.generate_s,
        oracle: data.oracle_s,
        upload: 0.0,
        compile: None,
        check: t_check.elapsed().as_secs_f64(),
        reused_inputs: data.reused,
    };
    let measured = Measured {
        device,
        device_count: set.len(),
        stats: outcome.end_to_end,
        reps: exp.reps,
        check: &check,
        energy,
        env,
        imp,
        host_s: Some(host_s),
    };
    let mut line = result_line(exp, p, b, measured)?;
    line.multi = Some(outcome.multi);
    Ok((line, outcome.outputs))
}

/// A split point's plan over the run's devices, and the settings its shards run with.
fn split_plan(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    s: &Selected,
    imp: &'static str,
) -> anyhow::Result<(crate::split::Plan, crate::split::run::Settings)> {
    let plan = crate::split::plan(&p.workload, inputs, p.split, s.device_count())
        .map_err(|m| anyhow::anyhow!(m))?;
    let settings = crate::split::run::Settings {
        warmup: exp.warmup,
        reps: exp.reps,
        cache: exp.cache,
        imp,
    };
    Ok((plan, settings))
}

/// A split point on a rank other than 0: its shard, run with everyone's (rank 0 reports).
pub(super) fn follow_split_point(
    exp: &Experiment,
    p: &Point,
    data: &HostData,
    s: &Selected,
    imp: &'static str,
    w: &crate::cluster::World,
) -> anyhow::Result<()> {
    let (plan, settings) = match split_plan(exp, p, &data.inputs, s, imp) {
        Ok(v) => v,
        // Rank 0 makes the same plan from the same file, fails the same way, and says so.
        Err(_) => return Ok(()),
    };
    let b = s.backend.as_ref();
    let set = s.device_set();
    let ranked = crate::split::ranked::run_split_ranked;
    ranked(
        w,
        b,
        s.devices[0],
        &set,
        &p.workload,
        &data.inputs,
        &plan,
        &settings,
    )
    .map(|_| ())
}

fn split_energy(exp: &Experiment, plan: &crate::split::Plan) -> Energy {
    use crate::energy::Meter;
    let meter = exp
        .hardware
        .as_ref()
        .and_then(crate::energy::ModelMeter::new);
    let modelled = match (&meter, exp.energy) {
        (Some(m), crate::energy::EnergyMode::Auto | crate::energy::EnergyMode::Model) => {
            let mut joules = 0.0;
            let mut bytes = 0u64;
            for shard in &plan.shards {
                if let Ok(f) = m.measure(&shard.workload, &mut |_| Ok(())) {
                    joules += f.joules_per_step;
                    bytes += shard.workload.bytes();
                }
            }
            Some((joules, bytes))
        }
        _ => None,
    };
    Energy {
        source: if modelled.is_some() { "model" } else { "none" }.into(),
        joules: modelled.map(|m| m.0),
        pj_per_byte: modelled.map(|(j, b)| j / b.max(1) as f64 * 1e12),
        measured: None,
        modelled: None,
        note: Some(
            "split points: energy is the model summed over the shards; NVML is measured on one-device points"
                .into(),
        ),
    }
}

/// A link point between logical devices `src` and `dst`.
pub(super) fn run_link_point(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    s: &Selected,
    src: usize,
    dst: usize,
    env_base: &serde_json::Value,
) -> anyhow::Result<ResultLine> {
    let Workload::Link(link) = &p.workload else {
        bail!("not a link point");
    };
    let b = s.backend.as_ref();
    let world = crate::cluster::world();
    let (ps, pd) = match world {
        Some(_) => (s.rank_devices[src].0, s.rank_devices[dst].0),
        None => (s.devices[src], s.devices[dst]),
    };
    let run = match world {
        Some(w) => {
            let ranked = crate::split::link::run_link_ranked;
            ranked(w, (src, dst), link, inputs, (exp.warmup, exp.reps))?
                .context("the link's source rank holds its outcome")?
        }
        None => crate::split::link::run_link(
            b,
            (ps, pd),
            link,
            inputs,
            (exp.warmup, exp.reps),
            s.virtual_devices,
        )?,
    };
    let stats = TimeStats::from_samples(&run.times).context("no timings came back")?;
    let check = p.workload.oracle(inputs).check(&run.outputs);
    // Under a launcher this process is the source rank, on its own device.
    let dev = &b.devices()[if world.is_some() { s.devices[0] } else { ps }];
    let mut env = env_for(env_base, exp, dev, ps);
    env["devices"] = format!("{src}->{dst}").into();
    env["timer"] = serde_json::to_value(run.timer)?;
    let mut device = format!("{} -> {}", dev.name, b.devices()[pd].name);
    if let Some(w) = world {
        env["world"] = w.describe();
        device = format!("{} -> {}", s.rank_devices[src].1, s.rank_devices[dst].1);
    }
    let energy = Energy {
        source: "none".into(),
        joules: None,
        pj_per_byte: None,
        measured: None,
        modelled: None,
        note: Some("link energy is not measured or modelled".into()),
    };
    let measured = Measured {
        device,
        device_count: 2,
        stats,
        reps: run.times.len(),
        check: &check,
        energy,
        env,
        imp: "simple",
        host_s: None,
    };
    let mut line = result_line(exp, p, b, measured)?;
    // Between ranks the ends are named by rank (two ranks may each use their device 0).
    let (src, dst) = if world.is_some() {
        (src, dst)
    } else {
        (ps, pd)
    };
    line.link = Some(report::LinkOut {
        src,
        dst,
        path: run.path,
    });
    Ok(line)
}

/// Both sides of a point's energy: NVML windows around back-to-back steps where a meter
/// exists, the model where a profile is given; the primary figure is the measured one.
fn energy_of(
    w: &Workload,
    m: &Meters,
    prepared: &mut dyn crate::backend::Prepared,
) -> anyhow::Result<Energy> {
    use crate::energy::Meter;
    let mut run = |steps: u64| prepared.run_steps(steps);
    let measured = match &m.measured {
        Some(Ok(meter)) => Some(meter.measure(w, &mut run)?),
        _ => None,
    };
    let modelled = match &m.modelled {
        Some(Ok(meter)) => Some(meter.measure(w, &mut |_| Ok(()))?),
        _ => None,
    };
    let mut notes = Vec::new();
    if let Some(Err(why)) = &m.measured {
        notes.push(format!("measured: {why}"));
    }
    if let Some(Err(why)) = &m.modelled {
        notes.push(format!("modelled: {why}"));
    }
    let (source, primary) = match (&measured, &modelled) {
        (Some(f), _) => ("nvml", Some(f)),
        (None, Some(f)) => ("model", Some(f)),
        (None, None) => ("none", None),
    };
    Ok(Energy {
        source: source.into(),
        joules: primary.map(|f| f.joules_per_step),
        pj_per_byte: primary.map(|f| f.pj_per_byte),
        measured,
        modelled,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// `--dump`: a point's inputs and outputs as .npy, with meta.json saying what they are.
pub(super) fn dump_point(
    dir: &Path,
    p: &Point,
    inputs: &TensorSet,
    outputs: &TensorSet,
    from: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors = serde_json::Map::new();
    for (role, set) in [("input", inputs), ("output", outputs)] {
        for t in &set.0 {
            report::npy::write_npy(&dir.join(format!("{}.npy", t.name)), t)?;
            tensors.insert(
                t.name.into(),
                serde_json::json!({
                    "role": role,
                    "dtype": t.elem.name(),
                    "npy_dtype": t.elem.npy_descr(),
                    "shape": t.shape,
                }),
            );
        }
    }
    let meta = serde_json::json!({
        "kernel": p.workload.kernel(),
        "point": p.index,
        "params": p.workload.params_json(),
        "tensors": tensors,
        "outputs_from": from,
        "byte_table": p.workload.byte_table(),
        "notes": "bf16/f16 are raw uint16 bits, fp8_e4m3 raw uint8 bits (OCP E4M3FN, bias 7); \
                  fp8 values are multiplied by kv_scale[0] (K) / kv_scale[1] (V) or w_scale[e, o]; \
                  page_table entries of -1 are unused; MLA reads V as the first kv_lora_rank entries of k_pages",
    });
    report::write_atomic(
        &dir.join("meta.json"),
        &serde_json::to_string_pretty(&meta)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noisy_median_takes_more_reps_and_a_steady_one_does_not() {
        let steady = vec![1e-6; 10];
        assert!(!more_reps_wanted(&steady, 10, 0.0, 1.0));
        // Half the reps 20 % slower: the median never settles.
        let noisy = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|i| 1e-6 * (1.0 + 0.2 * (i % 2) as f64))
                .collect()
        };
        assert!(TimeStats::from_samples(&noisy(40)).unwrap().noisy());
        // The first extra round always runs; later ones within the time budget; never past 4x.
        assert!(more_reps_wanted(&noisy(10), 10, 5.0, 1.0));
        assert!(more_reps_wanted(&noisy(20), 10, 0.5, 1.0));
        assert!(!more_reps_wanted(&noisy(20), 10, 1.5, 1.0));
        assert!(!more_reps_wanted(&noisy(40), 10, 0.0, 1.0));
        // Under five reps asked for is taken as asked.
        assert!(!more_reps_wanted(&noisy(3), 3, 0.0, 1.0));
    }
}
