//! `decodelab run` and `decodelab check`: an experiment file loaded, overridden from the
//! command line, checked against this machine, and run or listed.

use decodelab::experiment::preflight;
use decodelab::experiment::runner::{self, RunOptions};
use decodelab::experiment::{DeviceChoice, Experiment, Overrides};
use decodelab::registry::Kernel;
use decodelab::report;
use decodelab::split::SplitKind;
use std::process::ExitCode;

/// The file's settings, overridden for this run.
#[derive(clap::Args)]
pub struct OverrideArgs {
    /// Timed reps per point (overrides `reps:`).
    #[arg(long)]
    reps: Option<usize>,
    /// Untimed reps first (overrides `warmup:`).
    #[arg(long)]
    warmup: Option<usize>,
    /// Energy: auto, nvml, model or off (overrides `energy:`).
    #[arg(long, value_parser = ["auto", "nvml", "model", "off"])]
    energy: Option<String>,
    /// Only these points: indices and ranges (3,7-9) or parameters
    /// (kernel=kv_decode,batch=16; the same key twice is either value; impl=simple).
    /// Several --only keep what any of them keeps.
    #[arg(long, value_name = "FILTER")]
    only: Vec<String>,
}

impl OverrideArgs {
    pub fn overrides(&self) -> Overrides {
        use decodelab::energy::EnergyMode;
        Overrides {
            reps: self.reps,
            warmup: self.warmup,
            energy: self.energy.as_deref().map(|e| match e {
                "nvml" => EnergyMode::Nvml,
                "model" => EnergyMode::Model,
                "off" => EnergyMode::Off,
                _ => EnergyMode::Auto,
            }),
            only: self.only.clone(),
        }
    }
}

/// A refusal before anything runs: the message, exit code 2.
fn refused(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn load(file: &std::path::Path, over: &Overrides) -> Result<Experiment, String> {
    let mut exp = Experiment::load(file).map_err(|e| e.to_string())?;
    exp.apply(over).map_err(|e| e.to_string())?;
    Ok(exp)
}

fn select(exp: &Experiment, backend: Option<&str>) -> Result<Vec<preflight::Selected>, String> {
    let choice = match backend {
        Some(b) => preflight::parse_backend_choice(b)?,
        None => exp.backends.clone(),
    };
    let selected = preflight::select(exp, &choice)
        .and_then(|s| preflight::check_fit(exp, &s).map(|_| s))
        .and_then(|s| preflight::check_energy(exp, &s).map(|_| s));
    selected.map_err(|e| e.to_string())
}

pub fn check(file: &std::path::Path, backend: Option<&str>, over: &Overrides) -> ExitCode {
    let exp = match load(file, over) {
        Ok(e) => e,
        Err(m) => return refused(m),
    };
    // Backends and devices are this machine's business, not the file's: where they are
    // missing the file is still checked, and the gap is a warning (run refuses it).
    let choice = match backend.map(preflight::parse_backend_choice).transpose() {
        Ok(c) => c.unwrap_or_else(|| exp.backends.clone()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let selected = match preflight::select(&exp, &choice) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "warning: {e}\nwarning: the file is valid; this machine cannot run it as written"
            );
            Vec::new()
        }
    };
    if let Err(e) = preflight::check_fit(&exp, &selected) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = preflight::check_energy(&exp, &selected) {
        eprintln!("warning: {e}");
    }
    println!(
        "{}: experiment '{}', {} points",
        file.display(),
        exp.name,
        exp.points.len()
    );
    let names: Vec<String> = selected
        .iter()
        .map(|s| {
            let d: Vec<String> = s.devices.iter().map(|d| d.to_string()).collect();
            format!("{}:{}", s.backend.name(), d.join(","))
        })
        .collect();
    println!(
        "backends: {}  warmup {}  reps {}  cache {}",
        if names.is_empty() {
            "none available here".to_string()
        } else {
            names.join(" ")
        },
        exp.warmup,
        exp.reps,
        if exp.cache == decodelab::backend::CacheMode::Cold {
            "cold"
        } else {
            "warm"
        }
    );
    if let Some(h) = &exp.hardware {
        println!(
            "hardware: {} ({} GB/s spec)",
            h.name, h.memory_bandwidth_gbps
        );
    }
    print_points(&exp, &selected);
    let host = decodelab::backend::cpu::mem_available_bytes()
        .map_or("unknown".into(), report::human_bytes);
    println!("ok: every point is valid and fits (host memory available: {host})");
    ExitCode::SUCCESS
}

/// One row per point: what it moves and computes, and the memory it needs where it runs.
fn print_points(exp: &Experiment, selected: &[preflight::Selected]) {
    println!(
        "{:>5}  {:<11}  {:<48}  {:<11}  {:<9}  {:>12}  {:>10}  {:>14}  {:>12}",
        "point",
        "kernel",
        "params",
        "split",
        "impl",
        "min bytes",
        "GFLOP",
        "device memory",
        "host memory"
    );
    let device_count = match &exp.devices {
        DeviceChoice::Count(n) => Some(*n),
        DeviceChoice::Indices(v) => Some(v.len()),
        DeviceChoice::All => None,
    };
    for p in &exp.points {
        let w = &p.workload;
        let whole = selected
            .iter()
            .map(|s| s.backend.memory_needed(w))
            .max()
            .unwrap_or(w.device_bytes());
        // What one device holds: a split's share on real devices, the whole point otherwise.
        let (split, memory) = match (w.kind(), p.split, device_count) {
            (Kernel::Link, _, n) => (
                n.map_or("pairs".into(), |n| {
                    format!("{} pairs", n * n.saturating_sub(1))
                }),
                whole,
            ),
            (_, SplitKind::None, _) => ("none".to_string(), whole),
            (_, k, Some(n)) if !exp.virtual_devices => (
                format!("{} /{n}", k.name()),
                decodelab::split::per_device_bytes(w, k, n, whole),
            ),
            // Virtual devices hold every shard on one device at once.
            (_, k, n) => (
                k.name().to_string(),
                n.map_or(whole, |n| {
                    decodelab::split::per_device_bytes(w, k, n, whole).saturating_mul(n as u64)
                }),
            ),
        };
        println!(
            "{:>5}  {:<11}  {:<48}  {:<11}  {:<9}  {:>12}  {:>10.3}  {:>14}  {:>12}",
            p.index,
            w.kernel(),
            report::params_label(w.kernel(), &w.params_json()),
            split,
            p.imp.unwrap_or("best"),
            report::human_bytes(w.bytes()),
            w.flops() as f64 / 1e9,
            report::human_bytes(memory),
            report::human_bytes(preflight::host_bytes_needed(p)),
        );
    }
}

pub fn run(
    file: &std::path::Path,
    opts: RunOptions,
    over: &Overrides,
    rank_timeout: Option<f64>,
) -> ExitCode {
    if let Some(t) = rank_timeout {
        decodelab::cluster::set_timeout(t);
    }
    match decodelab::cluster::join_world() {
        Ok(Some(w)) => return run_ranked(file, opts, over, w),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    }
    let exp = match load(file, over) {
        Ok(e) => e,
        Err(m) => return refused(m),
    };
    let selected = match select(&exp, opts.backend.as_deref()) {
        Ok(s) => s,
        Err(m) => return refused(m),
    };
    runner::stop_on_ctrl_c();
    report_run(file, runner::run(&exp, &selected, &opts))
}

/// A run under a launcher: every rank loads and selects; rank 0 runs and reports, the others
/// follow it. A lost rank ends every rank through the launcher (exit 1), after rank 0 kept
/// what finished.
fn run_ranked(
    file: &std::path::Path,
    opts: RunOptions,
    over: &Overrides,
    w: &'static decodelab::cluster::World,
) -> ExitCode {
    // Only rank 0 prints a refusal, once for every rank.
    let mut setup = load(file, over).and_then(|exp| {
        let sel = select(&exp, opts.backend.as_deref())?;
        Ok((exp, sel))
    });
    let mine = match &mut setup {
        Ok((_, sel)) => Ok(sel.as_mut_slice()),
        Err(e) => Err(e.clone()),
    };
    match decodelab::experiment::ranked::agree_setup(w, mine) {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => {
            if w.is_root() {
                eprintln!("error: {msg}");
            }
            w.finalize();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("rank {}: error: {e:#}", w.rank);
            w.abort(2);
        }
    }
    let (exp, selected) = setup.expect("agreed above");
    if !w.is_root() {
        // Rank 0 decides when to stop: a Ctrl-C the launcher forwards here is its business.
        let _ = ctrlc::set_handler(|| {});
        if let Err(e) = decodelab::experiment::ranked::follow(&exp, &selected, w) {
            eprintln!("rank {}: error: {e:#}", w.rank);
            w.abort(1);
        }
        w.finalize();
        return ExitCode::SUCCESS;
    }
    let hosts: Vec<String> = w.hosts().iter().map(|(h, n)| format!("{h} x{n}")).collect();
    println!(
        "world: {} ranks from {} over {}, on {}; rank timeout {} s",
        w.size,
        w.launcher,
        w.library(),
        hosts.join(", "),
        decodelab::cluster::timeout().as_secs_f64()
    );
    runner::stop_on_ctrl_c();
    let opts = RunOptions {
        progress: false,
        ..opts
    };
    let result = runner::run(&exp, &selected, &opts);
    if let Err(e) = &result
        && decodelab::cluster::is_lost(e)
    {
        eprintln!("error: {e:#}\nevery rank is being stopped");
        w.abort(1);
    }
    let code = report_run(file, result);
    w.finalize();
    code
}

fn report_run(file: &std::path::Path, result: anyhow::Result<runner::Outcome>) -> ExitCode {
    match result {
        Ok(o) if o.interrupted => {
            println!(
                "\ninterrupted: {} results kept in {} (results.csv and summary.md written for them)\nresume with: decodelab run {} --resume {}",
                o.lines.len(),
                o.out_dir.join("results.jsonl").display(),
                file.display(),
                o.out_dir.display()
            );
            ExitCode::from(130)
        }
        Ok(o) => {
            println!();
            print!("{}", report::terminal_table(&o.lines));
            if let Some(cross) = report::cross_check_table(&o.lines) {
                println!("\nbackends side by side:");
                print!("{cross}");
            }
            if let Some(t) = report::split_table(&o.lines) {
                println!("\nsplits (scaling = one-device time / (devices x end-to-end time)):");
                print!("{t}");
            }
            if let Some(t) = report::link_table(&o.lines) {
                println!("\nlinks:");
                print!("{t}");
            }
            print!(
                "\n{}",
                report::verdict(&o.lines, &o.out_dir.join("results.jsonl"))
            );
            let no_impl = if o.skipped_no_impl > 0 {
                format!(
                    ", {} skipped (implementation not on these backends)",
                    o.skipped_no_impl
                )
            } else {
                String::new()
            };
            println!(
                "\n{} results ({} resumed), {} failed the check, {} errors{no_impl} -> {}",
                o.lines.len(),
                o.skipped_done,
                o.failed_checks,
                o.errors,
                o.out_dir.join("results.jsonl").display()
            );
            if o.failed_checks + o.errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // A run refused before it starts is like a refused file; a run whose results
            // could not be written has its own code (the file holds whole lines: resume).
            if e.downcast_ref::<runner::StoreStopped>().is_some() {
                ExitCode::from(3)
            } else if e.downcast_ref::<runner::Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
