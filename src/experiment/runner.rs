//! The runner: picks backends and devices, refuses points that cannot fit, then for every
//! point x backend x device: prepare, warm up, time, read back, check against the oracle,
//! and append the result line before the next point starts.

use super::{BackendChoice, ConfigError, DeviceChoice, Experiment, Point};
use crate::backend::{self, Backend, How, Probe};
use crate::report::{self, CheckOut, Energy, HostSeconds, ResultLine, ResultsFile, TimeStats};
use crate::split::SplitKind;
use crate::split::run::DeviceSet;
use crate::workload::{Reference, TensorSet, Workload};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A backend with the devices this run uses on it.
pub struct Selected {
    pub backend: Box<dyn Backend>,
    /// Why `auto` chose this backend over the others, when it did.
    pub chosen: Option<String>,
    /// The run's logical devices: devices[i] is the physical device logical device i is on
    /// (all the same one with `virtual: true`).
    pub devices: Vec<usize>,
    pub virtual_devices: bool,
}

impl Selected {
    /// Each physical device once, in order: where one-device points run.
    pub fn physical_devices(&self) -> Vec<usize> {
        let mut v = Vec::new();
        for &d in &self.devices {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    }

    pub fn device_set(&self) -> DeviceSet {
        DeviceSet {
            physical: self.devices.clone(),
            virtual_devices: self.virtual_devices,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--backend`: overrides the file's `backends:`.
    pub backend: Option<String>,
    pub out: Option<PathBuf>,
    pub dump: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    /// Show a progress bar (only when stdout is a terminal).
    pub progress: bool,
}

pub struct Outcome {
    pub out_dir: PathBuf,
    pub lines: Vec<ResultLine>,
    pub failed_checks: usize,
    pub errors: usize,
    pub skipped_done: usize,
    /// Points whose implementation no selected backend has.
    pub skipped_no_impl: usize,
    /// Ctrl-C stopped the run before its end.
    pub interrupted: bool,
}

pub fn parse_backend_choice(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "all" => Ok(BackendChoice::All),
        n if backend::BACKEND_NAMES.contains(&n) => Ok(BackendChoice::Named(vec![n.to_string()])),
        n => Err(format!(
            "unknown backend '{n}' (expected auto, all, cpu, wgpu or cuda)"
        )),
    }
}

/// Resolve backends and devices, with every unavailable one explained.
pub fn select(exp: &Experiment, choice: &BackendChoice) -> Result<Vec<Selected>, ConfigError> {
    let file = exp.file.display().to_string();
    let mut available = Vec::new();
    let mut reasons = Vec::new();
    for p in backend::probe_all() {
        match p {
            Probe::Available(b) => available.push(b),
            Probe::Unavailable { name, reason } => reasons.push((name, reason)),
        }
    }
    let mut why_auto = None;
    let chosen: Vec<Box<dyn Backend>> = match choice {
        // The first backend with a real device: a GPU, else the CPU (never an emulated GPU).
        BackendChoice::Auto => {
            let mut passed: Vec<String> = reasons
                .iter()
                .map(|(n, why)| format!("{n} unavailable ({why})"))
                .collect();
            let mut pick = Vec::new();
            for b in available {
                if b.devices().iter().any(|d| !d.emulated) {
                    pick.push(b);
                    break;
                }
                let names: Vec<&str> = b.devices().iter().map(|d| d.name.as_str()).collect();
                passed.push(format!(
                    "{} has only an emulated GPU ({})",
                    b.name(),
                    names.join(", ")
                ));
            }
            if !passed.is_empty() {
                why_auto = Some(format!("auto: {}", passed.join("; ")));
            }
            pick
        }
        BackendChoice::All => available,
        BackendChoice::Named(names) => {
            let mut out = Vec::new();
            for n in names {
                match available.iter().position(|b| b.name() == n) {
                    Some(i) => out.push(available.remove(i)),
                    None => {
                        let why = reasons
                            .iter()
                            .find(|(r, _)| r == n)
                            .map_or("not known".to_string(), |(_, w)| w.clone());
                        return Err(ConfigError::whole_file(
                            &file,
                            format!("backend {n}: unavailable ({why}); try --backend auto"),
                        ));
                    }
                }
            }
            out
        }
    };
    let mut selected = Vec::new();
    for b in chosen {
        let n = b.devices().len();
        let devices = match &exp.devices {
            DeviceChoice::Count(c) if exp.virtual_devices => vec![0; *c],
            DeviceChoice::All => (0..n).collect(),
            DeviceChoice::Count(c) => (0..*c).collect(),
            DeviceChoice::Indices(v) => v.clone(),
        };
        if let Some(bad) = devices.iter().find(|&&d| d >= n) {
            let msg = format!(
                "{} has {n} device(s); device {bad} does not exist (see `decodelab devices`)",
                b.name()
            );
            return Err(if exp.devices_line > 0 {
                ConfigError::at(&file, &exp.source, exp.devices_line, 0, "devices", msg)
            } else {
                ConfigError::whole_file(&file, msg)
            });
        }
        selected.push(Selected {
            backend: b,
            chosen: why_auto.clone(),
            devices,
            virtual_devices: exp.virtual_devices,
        });
    }
    Ok(selected)
}

/// Host memory a point needs at its peak: its inputs, outputs and reference
/// (`Workload::host_bytes`); a split also holds its shards' inputs, sliced from the point's.
pub fn host_bytes_needed(p: &Point) -> u64 {
    let w = &p.workload;
    if p.split == SplitKind::None {
        w.host_bytes()
    } else {
        w.host_bytes() + w.input_bytes() + w.output_bytes()
    }
}

/// Refuse, before anything runs, a point that cannot fit the host's memory or a device's.
pub fn check_fit(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    check_fit_host(exp, crate::backend::cpu::mem_available_bytes())?;
    check_fit_devices(exp, selected)
}

/// Refuse a point whose host memory (`host_bytes_needed`) exceeds `available` bytes.
pub fn check_fit_host(exp: &Experiment, available: Option<u64>) -> Result<(), ConfigError> {
    let Some(mem) = available else {
        return Ok(());
    };
    let file = exp.file.display().to_string();
    for p in &exp.points {
        let need = host_bytes_needed(p);
        if need > mem {
            let msg = format!(
                "point {} ({}) needs {} of host memory (inputs, outputs and the f64 reference); this machine has {} available",
                p.index,
                report::params_label(p.workload.kernel(), &p.workload.params_json()),
                report::human_bytes(need),
                report::human_bytes(mem)
            );
            return Err(ConfigError::at(
                &file,
                &exp.source,
                p.line,
                0,
                format!("runs[{}]", p.run),
                msg,
            ));
        }
    }
    Ok(())
}

fn check_fit_devices(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    let file = exp.file.display().to_string();
    // A refusal at a point's run, naming one of its fields.
    let at_run = |p: &Point, field: &str, msg: String| {
        ConfigError::at(
            &file,
            &exp.source,
            p.line,
            0,
            format!("runs[{}]{field}", p.run),
            msg,
        )
    };
    for s in selected {
        let n = s.devices.len();
        // A split the file could not check (devices: all) is checked now the count is known.
        for p in exp.points.iter().filter(|p| p.split != SplitKind::None) {
            if let Err(msg) = crate::split::validate(&p.workload, p.split, n) {
                let msg = format!("on {} ({n} devices): {msg}", s.backend.name());
                return Err(at_run(p, ".split", msg));
            }
        }
        if n < 2
            && let Some(p) = exp
                .points
                .iter()
                .find(|p| matches!(p.workload, Workload::Link(_)))
        {
            let msg = format!(
                "link runs between pairs of devices; {} gives this run {n}",
                s.backend.name()
            );
            return Err(at_run(p, ".kernel", msg));
        }
        if s.backend.name() == "cuda"
            && let Some(p) = exp.points.iter().find(|p| p.split != SplitKind::None)
            && let Err(msg) = crate::split::nccl::require()
        {
            return Err(at_run(p, ".split", msg));
        }
        // A backend in host memory (cpu) needs what the host check already counted.
        if s.backend.shares_host_memory() {
            continue;
        }
        for d in s.physical_devices() {
            let Some(mem) = s.backend.devices()[d].memory_bytes else {
                continue;
            };
            for p in &exp.points {
                let whole = s.backend.memory_needed(&p.workload);
                // A split spreads the point over the devices; virtual devices hold every
                // shard at once on this one device.
                let share = crate::split::per_device_bytes(&p.workload, p.split, n, whole);
                let need = if s.virtual_devices && p.split != SplitKind::None {
                    share.saturating_mul(n as u64)
                } else {
                    share
                };
                if need > mem {
                    let msg = format!(
                        "point {} ({}) needs {} on {}:{d}, which has {}",
                        p.index,
                        report::params_label(p.workload.kernel(), &p.workload.params_json()),
                        report::human_bytes(need),
                        s.backend.name(),
                        report::human_bytes(mem)
                    );
                    return Err(at_run(p, "", msg));
                }
            }
        }
    }
    Ok(())
}

/// The meters of one device: measured (NVML) and modelled. None: not asked for by
/// `energy:`; Err: asked for, with the reason it is absent (or not used for this point).
pub struct Meters {
    pub measured: Option<Result<crate::energy::nvml::NvmlMeter, String>>,
    pub modelled: Option<Result<crate::energy::ModelMeter, String>>,
}

/// `energy: auto` measures with NVML only points that move at least this much per step:
/// the counter updates every 20-100 ms and a window loops the step for a second, so a small
/// step's window is mostly launch gaps, and its three windows cost seconds per point.
pub const NVML_MIN_STEP_BYTES: u64 = 256 << 20;

/// The meters `exp.energy` asks for on `device`, for `workload` where one is given.
pub fn meters_for(
    exp: &Experiment,
    device: &crate::backend::DeviceInfo,
    workload: Option<&Workload>,
) -> Meters {
    use crate::energy::EnergyMode::*;
    let small = workload
        .map(Workload::bytes)
        .filter(|&b| b < NVML_MIN_STEP_BYTES);
    let measured = match (exp.energy, &device.pci_bus_id, small) {
        (Model | Off, _, _) => None,
        (Auto | Nvml, None, _) => Some(Err("no NVML for this device (no PCI bus id)".into())),
        (Auto, Some(_), Some(bytes)) => Some(Err(format!(
            "not measured: a step moves {} (energy: auto measures steps of {} or more; energy: nvml measures every point)",
            report::human_bytes(bytes),
            report::human_bytes(NVML_MIN_STEP_BYTES)
        ))),
        (Auto | Nvml, Some(bus), _) => Some(crate::energy::nvml::NvmlMeter::for_bus(bus)),
    };
    let modelled = match exp.energy {
        Auto | Model => Some(match &exp.hardware {
            Some(h) => crate::energy::ModelMeter::new(h)
                .ok_or_else(|| format!("profile {} has no energy constants", h.id)),
            None => Err("no hardware profile (hardware:) to model energy with".into()),
        }),
        Nvml | Off => None,
    };
    Meters { measured, modelled }
}

/// `energy: nvml` is refused before anything runs on a device NVML cannot measure.
pub fn check_energy(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    if exp.energy != crate::energy::EnergyMode::Nvml {
        return Ok(());
    }
    let file = exp.file.display().to_string();
    for s in selected {
        for &d in &s.devices {
            let dev = &s.backend.devices()[d];
            if let Some(Err(why)) = meters_for(exp, dev, None).measured {
                let msg = format!(
                    "energy: nvml on {}:{d} ({}): {why}; use energy: auto or model",
                    s.backend.name(),
                    dev.name
                );
                return Err(if exp.energy_line > 0 {
                    ConfigError::at(&file, &exp.source, exp.energy_line, 0, "energy", msg)
                } else {
                    ConfigError::whole_file(&file, msg)
                });
            }
        }
    }
    Ok(())
}

fn default_out_dir(exp: &Experiment) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    Path::new("results").join(&exp.name).join(stamp)
}

/// The stream op a point is held against: its own for a stream point (copy against copy),
/// read for the decode kernels (they read what they stream), none for a link.
fn ceiling_op(kernel: &str, params: &serde_json::Value) -> Option<String> {
    match kernel {
        "stream" => params
            .get("op")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        "link" => None,
        _ => Some("read".into()),
    }
}

fn host_env() -> serde_json::Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    serde_json::json!({
        "decodelab": env!("CARGO_PKG_VERSION"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "host": host.trim(),
    })
}

/// A run refused before it starts (exit code 2, like a refused file).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Two experiment texts that say the same: equal as YAML data, whatever their comments,
/// spacing or key order.
fn same_experiment(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let value = |t: &str| serde_saphyr::from_str::<serde_json::Value>(t).ok();
    matches!((value(a), value(b)), (Some(x), Some(y)) if x == y)
}

/// Set by the first Ctrl-C: the run stops after the job in hand.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ctrl-C stops a run between jobs (what finished is kept, the CSV and summary are written,
/// and the resume command is printed); a second Ctrl-C stops it at once (results.jsonl holds
/// whole lines only, so nothing is torn).
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\ninterrupted again: stopping now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the point in hand (Ctrl-C again to stop at once)");
    });
}

fn stopping() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

pub fn run(exp: &Experiment, selected: &[Selected], opts: &RunOptions) -> anyhow::Result<Outcome> {
    let out_dir = match (&opts.resume, &opts.out) {
        (Some(r), _) => {
            let saved_file = r.join("experiment.yaml");
            let saved = std::fs::read_to_string(&saved_file).map_err(|e| {
                Refused(format!(
                    "--resume {}: no experiment.yaml there ({e}); is it a results folder?",
                    r.display()
                ))
            })?;
            if !same_experiment(&saved, &exp.source) {
                return Err(Refused(format!(
                    "--resume {}: {} (saved when that run began) and {} differ beyond comments; resume with the same experiment, or start a new run",
                    r.display(),
                    saved_file.display(),
                    exp.file.display()
                ))
                .into());
            }
            r.clone()
        }
        (None, Some(o)) => o.clone(),
        (None, None) => default_out_dir(exp),
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    if opts.resume.is_none() {
        let existing = out_dir.join("results.jsonl");
        if existing.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            return Err(Refused(format!(
                "{} already holds results; use --resume {} to finish them, or another --out",
                existing.display(),
                out_dir.display()
            ))
            .into());
        }
        report::write_atomic(&out_dir.join("experiment.yaml"), &exp.source)?;
    }
    let (mut results, mut lines) = ResultsFile::open(&out_dir)?;
    let done: HashSet<(usize, String, String)> = lines.iter().map(ResultLine::key).collect();

    // Stream points run first, so every later point can be held against the ceiling of its
    // kind (read for the decode kernels, copy for a copy) measured on the same device in the
    // same run.
    let mut order: Vec<&Point> = exp.points.iter().collect();
    order.sort_by_key(|p| p.workload.kernel() != "stream");
    let mut stream_best: HashMap<(String, String, String), f64> = HashMap::new();
    let record = |l: &ResultLine, best: &mut HashMap<_, f64>| {
        if l.kernel == "stream" && l.check.pass && l.split == "none" {
            let op = ceiling_op(&l.kernel, &l.params).unwrap_or_default();
            let e = best
                .entry((l.backend.clone(), l.key().2, op))
                .or_insert(0.0);
            *e = e.max(l.gbps);
        }
    };
    for l in &lines {
        record(l, &mut stream_best);
    }

    let pending: usize = order
        .iter()
        .map(|p| {
            jobs_for(p, selected)
                .iter()
                .filter(|j| !done.contains(&(p.index, j.backend().to_string(), j.label())))
                .count()
        })
        .sum();
    let skipped_done = lines.len();
    // Points whose named implementation no selected backend has: said once, not run.
    let no_impl: Vec<&Point> = order
        .iter()
        .copied()
        .filter(|p| jobs_for(p, selected).is_empty())
        .collect();
    let bar = if opts.progress && std::io::stdout().is_terminal() {
        let b = ProgressBar::new(pending as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:32} {pos}/{len} points  {elapsed_precise} (eta {eta})  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let say = |s: String| {
        if bar.is_hidden() {
            println!("{s}")
        } else {
            bar.println(s)
        }
    };
    for s in selected {
        let devs: Vec<String> = s
            .physical_devices()
            .iter()
            .map(|&d| format!("{}:{d} = {}", s.backend.name(), s.backend.devices()[d].name))
            .collect();
        let what = if s.backend.name() == "cpu" {
            " (the CPU reference backend)"
        } else {
            ""
        };
        let why = s
            .chosen
            .as_ref()
            .map_or(String::new(), |w| format!(" [{w}]"));
        say(format!("running on {}{what}{why}", devs.join(", ")));
        if let Some(h) = &exp.hardware {
            for d in s.physical_devices() {
                let dev = &s.backend.devices()[d];
                if !h.describes(&dev.name) {
                    say(format!(
                        "warning: hardware: {} describes {}, not {}:{d} ({}): %spec is left out, and modelled energy is that card's, not this device's",
                        h.id,
                        h.name,
                        s.backend.name(),
                        dev.name
                    ));
                }
            }
        }
    }
    if skipped_done > 0 {
        say(format!(
            "resuming {}: {skipped_done} results already there, {pending} to go",
            out_dir.display()
        ));
    }
    let total_runs: usize = exp.points.iter().map(|p| jobs_for(p, selected).len()).sum();
    for p in &no_impl {
        say(format!(
            "point {:>3}: no selected backend has implementation '{}' of {}; skipped",
            p.index,
            p.imp.unwrap_or("best"),
            p.workload.kernel()
        ));
    }

    let env_base = host_env();
    let (mut failed_checks, mut errors) = (0, 0);
    // The last point's inputs and reference: its neighbours in the sweep (other
    // implementations, other splits of the same shape) reuse them.
    let mut host: Option<HostData> = None;
    for p in order {
        if stopping() {
            break;
        }
        let todo: Vec<Job> = jobs_for(p, selected)
            .into_iter()
            .filter(|j| !done.contains(&(p.index, j.backend().to_string(), j.label())))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let label = report::params_label(p.workload.kernel(), &p.workload.params_json());
        bar.set_message(format!("point {} {} {label}", p.index, p.workload.kernel()));
        let data = HostData::for_point(&mut host, &p.workload);
        let inputs = data.inputs.clone();
        let mut dumped = false;
        let mut ran_here: Vec<usize> = Vec::new();
        for job in todo {
            if stopping() {
                break;
            }
            let where_ = format!("{}:{}", job.backend(), job.label());
            let where_ = match job.imp() {
                Ok(i) if i != "simple" || p.imp.is_some() => format!("{where_} {i}"),
                _ => where_,
            };
            let attempt = match &job {
                Job::Single { s, d, imp } => imp
                    .clone()
                    .map_err(anyhow::Error::msg)
                    .and_then(|imp| run_single(exp, p, data, s, *d, imp, &env_base))
                    .map(|(line, outputs)| (line, Some(outputs))),
                Job::Split { s, imp } => imp
                    .clone()
                    .map_err(anyhow::Error::msg)
                    .and_then(|imp| run_split_point(exp, p, data, s, imp, &env_base))
                    .map(|(line, outputs)| (line, Some(outputs))),
                Job::Link { s, src, dst } => {
                    run_link_point(exp, p, &inputs, s, *src, *dst, &env_base)
                        .map(|line| (line, None))
                }
            };
            let (mut line, outputs) = match attempt {
                Ok(v) => v,
                Err(e) => {
                    errors += 1;
                    bar.inc(1);
                    say(format!("point {} on {where_}: error: {e:#}", p.index));
                    continue;
                }
            };
            if let (Some(dump), Some(outputs)) = (opts.dump.as_ref().filter(|_| !dumped), &outputs)
            {
                let dir = dump.join(p.index.to_string());
                let from = if p.split == SplitKind::None {
                    where_.clone()
                } else {
                    format!("{where_} (split {}, combined)", p.split.name())
                };
                dump_point(&dir, p, &inputs, outputs, &from)
                    .with_context(|| format!("--dump {}", dir.display()))?;
                dumped = true;
            }
            record(&line, &mut stream_best);
            line.pct_of_stream = ceiling_op(&line.kernel, &line.params)
                .and_then(|op| stream_best.get(&(line.backend.clone(), line.key().2, op)))
                .filter(|&&best| best > 0.0)
                .map(|best| 100.0 * line.gbps / best);
            results.append(&line)?;
            if !line.check.pass {
                failed_checks += 1;
            }
            bar.inc(1);
            let mut extra = String::new();
            if let Some(m) = &line.multi {
                extra = format!(
                    "  combine {:.2} GB/s ({})",
                    m.combine.gbps,
                    report::human_time(m.combine.time_s.median)
                );
                if let Some(eff) = m.scaling_efficiency {
                    extra.push_str(&format!("  scaling {:.0} %", 100.0 * eff));
                }
                if let Some(v) = &m.vs_one_device {
                    extra.push_str(if v.identical {
                        "  = 1 device (bit-exact)"
                    } else if v.pass {
                        "  ~ 1 device"
                    } else {
                        "  != 1 device"
                    });
                }
            }
            say(format!(
                "[{}/{}] point {:>3}  {:<11} {:<44} {where_}{}  {:>9.2} GB/s  {:>10}  rel err {:.1e}  {}{extra}",
                lines.len() + 1,
                total_runs,
                p.index,
                p.workload.kernel(),
                label,
                if p.split == SplitKind::None {
                    String::new()
                } else {
                    format!(" split {}", p.split.name())
                },
                line.gbps,
                report::human_time(line.time_s.median),
                line.check.rel_l2_err.unwrap_or(f64::NAN),
                if line.check.pass {
                    "ok".to_string()
                } else {
                    format!("FAIL ({})", line.check.reason.clone().unwrap_or_default())
                }
            ));
            lines.push(line);
            if matches!(job, Job::Single { .. }) {
                ran_here.push(lines.len() - 1);
            }
        }
        if ran_here.len() > 1 {
            let parts: Vec<String> = ran_here
                .iter()
                .map(|&i| {
                    let l = &lines[i];
                    format!(
                        "{}:{} {:.2} GB/s ({:.1e})",
                        l.backend,
                        l.key().2,
                        l.gbps,
                        l.check.rel_l2_err.unwrap_or(f64::NAN)
                    )
                })
                .collect();
            say(format!(
                "        point {:>3} side by side: {}",
                p.index,
                parts.join(" | ")
            ));
        }
    }
    bar.finish_and_clear();
    lines.sort_by_key(|l| (l.point, l.backend.clone(), l.key().2));
    report::write_atomic(&out_dir.join("results.csv"), &report::to_csv(&lines))?;
    report::write_atomic(
        &out_dir.join("summary.md"),
        &report::summary_markdown(
            &exp.name,
            &exp.file.display().to_string(),
            &lines,
            &out_dir.join("results.jsonl"),
        ),
    )?;
    Ok(Outcome {
        out_dir,
        lines,
        failed_checks,
        errors,
        skipped_done,
        skipped_no_impl: no_impl.len(),
        interrupted: stopping(),
    })
}

/// A point's inputs and reference on the host, and what they cost.
struct HostData {
    /// The workload the inputs were generated for (math and launch hints aside: they do not
    /// change the inputs).
    inputs_key: String,
    /// The workload the reference was computed for.
    reference_key: String,
    inputs: TensorSet,
    reference: Option<Reference>,
    generate_s: f64,
    oracle_s: f64,
    /// The inputs came from the previous point.
    reused: bool,
}

impl HostData {
    /// The inputs of `w`: the previous point's when they are the same, else generated (the
    /// previous ones dropped first, so two points' inputs never live at once).
    fn for_point<'h>(slot: &'h mut Option<HostData>, w: &Workload) -> &'h mut HostData {
        let mut plain = w.clone();
        match &mut plain {
            Workload::KvDecode(k) => {
                k.math = Default::default();
                k.launch_hint = None;
            }
            Workload::ExpertGemv(e) => e.math = Default::default(),
            Workload::Stream(_) | Workload::Link(_) => {}
        }
        let inputs_key = format!("{plain:?}");
        let reference_key = format!("{w:?}");
        match slot {
            Some(h) if h.inputs_key == inputs_key => {
                h.reused = true;
                h.generate_s = 0.0;
                if h.reference_key != reference_key {
                    h.reference = None;
                    h.reference_key = reference_key;
                }
                h.oracle_s = 0.0;
            }
            _ => {
                *slot = None;
                let t0 = Instant::now();
                let inputs = w.inputs();
                *slot = Some(HostData {
                    inputs_key,
                    reference_key,
                    inputs,
                    reference: None,
                    generate_s: t0.elapsed().as_secs_f64(),
                    oracle_s: 0.0,
                    reused: false,
                });
            }
        }
        slot.as_mut().expect("set above")
    }

    /// The reference, computed now if it is not yet.
    fn reference(&mut self, w: &Workload) -> &Reference {
        if self.reference.is_none() {
            let t0 = Instant::now();
            self.reference = Some(w.oracle(&self.inputs));
            self.oracle_s += t0.elapsed().as_secs_f64();
        }
        self.reference.as_ref().expect("set above")
    }
}

/// One thing a point runs: on one device, split over the run's devices, or (link) between
/// one ordered pair of them.
/// `imp` is the implementation it runs with, or why none covers the point.
enum Job<'s> {
    Single {
        s: &'s Selected,
        d: usize,
        imp: Result<&'static str, String>,
    },
    Split {
        s: &'s Selected,
        imp: Result<&'static str, String>,
    },
    Link {
        s: &'s Selected,
        src: usize,
        dst: usize,
    },
}

impl Job<'_> {
    fn backend(&self) -> &'static str {
        match self {
            Job::Single { s, .. } | Job::Split { s, .. } | Job::Link { s, .. } => s.backend.name(),
        }
    }

    fn imp(&self) -> Result<&'static str, String> {
        match self {
            Job::Single { imp, .. } | Job::Split { imp, .. } => imp.clone(),
            Job::Link { .. } => Ok("simple"),
        }
    }

    /// The device part of the result's key: `0`, `0+1+2+3` (`0x4` virtual), `0->1`.
    fn label(&self) -> String {
        match self {
            Job::Single { d, .. } => d.to_string(),
            Job::Split { s, .. } => s.device_set().label(),
            Job::Link { src, dst, .. } => format!("{src}->{dst}"),
        }
    }
}

/// The implementation a point runs with on a backend: the named one where the backend has
/// it (None where it does not: no job there), else the best that covers the point.
fn impl_on(p: &Point, b: &dyn Backend) -> Option<Result<&'static str, String>> {
    match p.imp {
        Some(name) => {
            let has = backend::impls_of(b.name(), p.workload.kernel())
                .iter()
                .any(|i| i.name == name);
            has.then(|| {
                b.covers(name, &p.workload).map(|()| name).map_err(|why| {
                    format!("implementation '{name}' does not cover this point: {why}")
                })
            })
        }
        None => Some(backend::best_impl(b, &p.workload)),
    }
}

fn jobs_for<'s>(p: &Point, selected: &'s [Selected]) -> Vec<Job<'s>> {
    let mut jobs = Vec::new();
    for s in selected {
        let is_link = matches!(p.workload, Workload::Link(_));
        let Some(imp) = (if is_link {
            Some(Ok("simple"))
        } else {
            impl_on(p, s.backend.as_ref())
        }) else {
            continue;
        };
        if is_link {
            let n = s.devices.len();
            for src in 0..n {
                for dst in (0..n).filter(|&d| d != src) {
                    jobs.push(Job::Link { s, src, dst });
                }
            }
        } else if p.split != SplitKind::None {
            jobs.push(Job::Split { s, imp });
        } else {
            jobs.extend(s.physical_devices().into_iter().map(|d| Job::Single {
                s,
                d,
                imp: imp.clone(),
            }));
        }
    }
    jobs
}

fn env_for(
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

/// The parts of a result line every job fills the same way.
#[allow(clippy::too_many_arguments)]
fn result_line(
    exp: &Experiment,
    p: &Point,
    backend: &str,
    device: String,
    device_count: usize,
    stats: TimeStats,
    reps: usize,
    check: &crate::workload::Check,
    energy: Energy,
    env: serde_json::Value,
    imp: &str,
    host_s: Option<HostSeconds>,
) -> anyhow::Result<ResultLine> {
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
        backend: backend.into(),
        implementation: imp.into(),
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
fn run_single(
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
    let line = result_line(
        exp,
        p,
        b.name(),
        dev.name.clone(),
        1,
        stats,
        times.len(),
        &check,
        energy,
        env,
        imp,
        Some(host_s),
    )?;
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
fn run_split_point(
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
    let plan = crate::split::plan(&p.workload, inputs, p.split, set.len())
        .map_err(|m| anyhow::anyhow!(m))?;
    let settings = crate::split::run::Settings {
        warmup: exp.warmup,
        reps: exp.reps,
        cache: exp.cache,
        imp,
    };
    let outcome = crate::split::run::run_split(b, &set, &p.workload, inputs, &plan, &settings)?;
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
    let names: Vec<String> = s
        .physical_devices()
        .iter()
        .map(|&d| b.devices()[d].name.clone())
        .collect();
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
    let mut line = result_line(
        exp,
        p,
        b.name(),
        device,
        set.len(),
        outcome.end_to_end,
        exp.reps,
        &check,
        energy,
        env,
        imp,
        Some(host_s),
    )?;
    line.multi = Some(outcome.multi);
    Ok((line, outcome.outputs))
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
fn run_link_point(
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
    let (ps, pd) = (s.devices[src], s.devices[dst]);
    let (mut prepared, path) = b.prepare_link(ps, pd, link, inputs)?;
    let times = prepared.run(exp.warmup, exp.reps)?;
    let outputs = prepared.read_outputs()?;
    let stats = TimeStats::from_samples(&times).context("no timings came back")?;
    let check = p.workload.oracle(inputs).check(&outputs);
    let dev = &b.devices()[ps];
    let mut env = env_for(env_base, exp, dev, ps);
    env["devices"] = format!("{src}->{dst}").into();
    env["timer"] = serde_json::to_value(prepared.timer())?;
    let path = if s.virtual_devices && ps == pd {
        format!("{path}; virtual devices: a copy within one device, not a link")
    } else {
        path
    };
    let energy = Energy {
        source: "none".into(),
        joules: None,
        pj_per_byte: None,
        measured: None,
        modelled: None,
        note: Some("link energy is not measured or modelled".into()),
    };
    let mut line = result_line(
        exp,
        p,
        b.name(),
        format!("{} -> {}", dev.name, b.devices()[pd].name),
        2,
        stats,
        times.len(),
        &check,
        energy,
        env,
        "simple",
        None,
    )?;
    line.link = Some(report::LinkOut {
        src: ps,
        dst: pd,
        path,
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
fn dump_point(
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
