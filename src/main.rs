//! The decodelab command line.

use clap::{Parser, Subcommand};
use decodelab::backend::{self, Probe};
use decodelab::experiment::preflight;
use decodelab::experiment::runner::{self, RunOptions};
use decodelab::experiment::{DeviceChoice, Experiment, Overrides};
use decodelab::report;
use decodelab::split::SplitKind;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "decodelab",
    version,
    about = "A kernel lab for the data movement that limits LLM decode: KV-cache reads, \
             expert-weight streaming and a streaming ceiling, measured in bytes/s against an f64 oracle."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: every point on the chosen backends, checked against the oracle.
    #[command(after_long_help = decodelab::registry::help_text())]
    Run {
        /// The experiment YAML (e.g. experiments/quickstart.yaml).
        file: PathBuf,
        /// Which backend(s): auto (best available), one by name (see --help), or all available.
        /// Overrides the file's `backends:`.
        #[arg(long, value_parser = backend_choices())]
        backend: Option<String>,
        /// Where results go (default results/<experiment>/<timestamp>/).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Also write each point's inputs and outputs as .npy under DIR/<point>/.
        #[arg(long, value_name = "DIR")]
        dump: Option<PathBuf>,
        /// Finish an interrupted run in DIR without redoing its finished points.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// No progress bar (it is also hidden when stdout is not a terminal).
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        over: OverrideArgs,
    },
    /// Validate an experiment: print its points and the memory each needs; runs nothing.
    Check {
        file: PathBuf,
        #[arg(long, value_parser = backend_choices())]
        backend: Option<String>,
        /// Only these points: indices and ranges (3,7-9) or parameters (kernel=kv_decode,batch=16);
        /// several --only keep what any keeps.
        #[arg(long, value_name = "FILTER")]
        only: Vec<String>,
    },
    /// List every backend and its devices, or why it is unavailable.
    Devices,
    /// Compile every CUDA kernel with NVRTC for an architecture (no GPU needed) and print
    /// registers, shared memory and spills per kernel.
    Kernels {
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// One JSON object per variant instead of the table.
        #[arg(long)]
        json: bool,
        /// Also disassemble (nvdisasm) and report loads by width, local memory, tensor cores
        /// and the hottest loop's instructions per streamed byte.
        #[arg(long)]
        sass: bool,
    },
    /// The analytic decode model: where the milliseconds and joules of a token go.
    Model(ModelArgs),
    /// Compare two runs point by point (results.jsonl files or results folders): GB/s, time
    /// and pJ/B of each and the change. Exits 1 when a point of B is slower than in A by more
    /// than the threshold and beyond both medians' noise.
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// A slowdown beyond this many percent (and beyond noise) is a regression.
        #[arg(long, default_value_t = 5.0)]
        threshold: f64,
    },
    /// Draw a run: GB/s against the swept axis per kernel, a line per backend,
    /// implementation and dtype, with the stream ceiling and the spec (SVG, PNG, index.html).
    Plot {
        /// A results.jsonl or a results folder.
        results: PathBuf,
        /// Where the charts go (default: plots/ beside the results).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The hardware profiles and model presets `hardware:`, `model --model` and
    /// `--hardware` take: built in, or a file of the same name here that overrides one.
    Profiles,
    /// Draw the talk's figures from the YAML files in DIR (SVG, PNG and an index.html).
    Figures {
        /// A folder of figure YAMLs (experiments/talk).
        dir: PathBuf,
        #[arg(long, default_value = "figures")]
        out: PathBuf,
        /// A decodelab results.jsonl for the measured-against-modelled figure.
        #[arg(long, value_name = "FILE")]
        measured: Option<PathBuf>,
    },
}

/// `--backend`'s values: auto, every backend the registry knows, all.
fn backend_choices() -> clap::builder::PossibleValuesParser {
    let names = std::iter::once("auto")
        .chain(decodelab::registry::backend_names())
        .chain(std::iter::once("all"));
    clap::builder::PossibleValuesParser::new(names)
}

fn main() -> ExitCode {
    quiet_mesa_wsi();
    die_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => devices(),
        Command::Profiles => profiles(),
        Command::Plot { results, out } => {
            match decodelab::report::plot::run(&results, out.as_deref()) {
                Ok((dir, n)) => {
                    println!("{n} chart(s) -> {}", dir.join("index.html").display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Compare { a, b, threshold } => {
            match decodelab::report::compare::run(&a, &b, threshold) {
                Ok((table, regressions)) => {
                    print!("{table}");
                    if regressions > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Kernels { arch, json, sass } => kernels(&arch, json, sass),
        Command::Model(args) => match model_cmd(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Figures { dir, out, measured } => {
            match decodelab::model::figures::draw_all(&dir, &out, measured.as_deref()) {
                Ok(d) => {
                    for w in &d.warnings {
                        eprintln!("warning: {w}");
                    }
                    let skipped: Vec<String> = d
                        .skipped
                        .iter()
                        .map(|(f, why)| format!("{f}: {why}"))
                        .collect();
                    println!(
                        "{} figures -> {}{}",
                        d.written,
                        out.join("index.html").display(),
                        if skipped.is_empty() {
                            String::new()
                        } else {
                            format!(" (not drawn: {})", skipped.join("; "))
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check {
            file,
            backend,
            only,
        } => {
            let over = Overrides {
                only,
                ..Default::default()
            };
            check(&file, backend.as_deref(), &over)
        }
        Command::Run {
            file,
            backend,
            out,
            dump,
            resume,
            no_progress,
            over,
        } => {
            let opts = RunOptions {
                backend,
                out,
                dump,
                resume,
                progress: !no_progress,
            };
            run(&file, opts, &over.overrides())
        }
    }
}

/// `decodelab ... | head` closes stdout early: end quietly like any Unix tool, rather than
/// panic in println! (Rust ignores SIGPIPE by default).
fn die_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid" on every instance when it is
/// unset (containers, CI); point it at the temp dir before any thread starts.
fn quiet_mesa_wsi() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

fn load(file: &std::path::Path, over: &Overrides) -> Result<Experiment, ExitCode> {
    let mut exp = Experiment::load(file).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    exp.apply(over).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok(exp)
}

fn select(exp: &Experiment, backend: Option<&str>) -> Result<Vec<preflight::Selected>, ExitCode> {
    let choice = match backend {
        Some(b) => preflight::parse_backend_choice(b).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })?,
        None => exp.backends.clone(),
    };
    let selected = preflight::select(exp, &choice)
        .and_then(|s| preflight::check_fit(exp, &s).map(|_| s))
        .and_then(|s| preflight::check_energy(exp, &s).map(|_| s));
    selected.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn kernels(arch: &str, json: bool, sass: bool) -> ExitCode {
    use decodelab::backend::cuda::{compile, sass as budget};
    let report = match compile::report(arch, sass) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        for v in &report {
            let mut line = serde_json::to_value(v).unwrap_or_default();
            line["arch"] = arch.into();
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    println!("NVRTC, {arch}: registers, shared memory, spills and occupancy per kernel");
    println!(
        "{:<36} {:<7} {:<12} {:>5} {:>7} {:>6} {:>11}",
        "variant", "impl", "kernel", "regs", "smem B", "spill", "CTAs/SM"
    );
    let mut spills = 0;
    for v in &report {
        for k in &v.kernels {
            let spill = k.spill_store_bytes + k.spill_load_bytes;
            spills += spill;
            println!(
                "{:<36} {:<7} {:<12} {:>5} {:>7} {:>6} {:>3} ({})",
                v.variant,
                v.imp,
                k.kernel,
                k.registers,
                k.shared_bytes,
                spill,
                k.ctas_per_sm,
                k.ctas_limited_by
            );
        }
    }
    println!(
        "{} variants compiled, {spills} spill bytes in all",
        report.len()
    );
    if sass {
        println!(
            "\nSASS ({arch}): global loads by width (streamed tensors' in brackets), local memory,\n\
             tensor cores, and the hottest loop's warp-instructions per streamed byte (budget {} at\n\
             4.8 TB/s on 132 SMs; a roofline kernel aims under {})",
            budget::BUDGET_INSTR_PER_BYTE,
            budget::AIM_INSTR_PER_BYTE
        );
        println!(
            "{:<36} {:<7} {:<12} {:>6} {:<26} {:>6} {:>5} {:>9}  streams",
            "variant",
            "impl",
            "kernel",
            "instrs",
            "LDG 128/64/32/16/8 [streamed]",
            "LDL/STL",
            "MMA",
            "instr/B",
        );
        for v in &report {
            for k in &v.kernels {
                let Some(s) = &k.sass else { continue };
                let w = |x: &budget::Widths| {
                    [128, 64, 32, 16, 8]
                        .iter()
                        .map(|b| x.0.get(b).copied().unwrap_or(0).to_string())
                        .collect::<Vec<_>>()
                        .join("/")
                };
                let hot = s.hot_loop.as_ref().map_or("-".to_string(), |h| {
                    let mark = if h.instr_per_byte > budget::BUDGET_INSTR_PER_BYTE {
                        " over"
                    } else {
                        ""
                    };
                    format!("{:.3}{mark}", h.instr_per_byte)
                });
                println!(
                    "{:<36} {:<7} {:<12} {:>6} {:<26} {:>6} {:>5} {:>9}  {}",
                    v.variant,
                    v.imp,
                    k.kernel,
                    s.instructions,
                    format!("{} [{}]", w(&s.loads), w(&s.streamed)),
                    s.local,
                    s.tensor_core,
                    hot,
                    s.streamed_tensors.join(", ")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// The file's settings, overridden for this run.
#[derive(clap::Args)]
struct OverrideArgs {
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
    fn overrides(&self) -> Overrides {
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

#[derive(clap::Args)]
struct ModelArgs {
    /// A preset in experiments/models/ (kimi-k2.5, deepseek-v3, llama-3.1-70b, ...).
    #[arg(long)]
    model: String,
    /// A profile in experiments/hardware/ (h100-sxm, h200-sxm, b200, sram-die).
    #[arg(long)]
    hardware: String,
    /// Concurrent sequences decoded per step.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Tokens in each sequence's context.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Devices the model is spread over.
    #[arg(long, default_value_t = 1)]
    devices: u64,
    /// Weight dtype (default: the preset's): bf16, fp8, mxfp4.
    #[arg(long)]
    weights: Option<String>,
    /// KV-cache dtype (default: the preset's): bf16, fp8.
    #[arg(long)]
    kv: Option<String>,
    /// A decodelab results.jsonl: use its measured bytes/s for weights and KV.
    #[arg(long, value_name = "FILE")]
    measured: Option<PathBuf>,
    /// One JSON object instead of the readable breakdown.
    #[arg(long)]
    json: bool,
}

fn model_cmd(a: &ModelArgs) -> anyhow::Result<()> {
    use decodelab::model::{self, Scenario};
    let here = std::path::Path::new(".");
    let m = model::find_model(here, &a.model)?;
    let h = model::find_hardware(here, &a.hardware)?;
    let s = Scenario::with_dtypes(
        a.batch,
        a.context,
        a.devices,
        a.weights.as_deref(),
        a.kv.as_deref(),
    )?;
    let measured = match &a.measured {
        Some(p) => model::measured_terms(p, &m, &h, &s)?,
        None => Default::default(),
    };
    let b = model::evaluate(&m, &h, &s, &measured)?;
    if let Some(short) = &b.capacity.shortfall {
        anyhow::bail!(
            "{} does not fit {} x {}: {short} (raise --devices, or use smaller --weights / --kv)",
            b.model,
            s.devices,
            b.hardware
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
        return Ok(());
    }
    print!("{}", model::figures::describe(&b));
    Ok(())
}

fn profiles() -> ExitCode {
    use decodelab::profiles::{Kind, find};
    let here = std::path::Path::new(".");
    let mut status = ExitCode::SUCCESS;
    // Where a name resolves from here: a file of the same name overrides the built-in one.
    let source = |f: &decodelab::profiles::Found| match &f.path {
        Some(p) => format!("  (file {})", p.display()),
        None => String::new(),
    };
    println!("hardware profiles (hardware: NAME, model --hardware NAME):");
    for (name, _) in Kind::Hardware.builtin() {
        let found = find(Kind::Hardware, here, name);
        match (decodelab::model::find_hardware(here, name), found) {
            (Ok(h), Ok(f)) => println!(
                "  {name:<16} {:<42} {:>6.1} GB  {:>7} GB/s{}{}",
                h.name,
                h.memory_bytes as f64 / 1e9,
                h.memory_bandwidth_gbps,
                if h.energy.is_some() {
                    "  energy constants"
                } else {
                    ""
                },
                source(&f)
            ),
            (Err(e), _) => {
                println!("  {name:<16} error: {e:#}");
                status = ExitCode::from(1);
            }
            (_, Err(e)) => {
                println!("  {name:<16} error: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    println!("model presets (model --model NAME):");
    for (name, _) in Kind::Model.builtin() {
        match (
            decodelab::model::find_model(here, name),
            find(Kind::Model, here, name),
        ) {
            (Ok(m), Ok(f)) => println!("  {name:<16} {:<14} {}{}", m.name, m.summary(), source(&f)),
            (Err(e), _) => {
                println!("  {name:<16} error: {e:#}");
                status = ExitCode::from(1);
            }
            (_, Err(e)) => {
                println!("  {name:<16} error: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    println!(
        "A file hardware/NAME.yaml or models/NAME.yaml beside an experiment (or in a folder\nabove it), or a path ending in .yaml, overrides or adds to these."
    );
    status
}

fn devices() -> ExitCode {
    for p in backend::probe_all() {
        match p {
            Probe::Available(b) => {
                println!("{}: {} device(s)", b.name(), b.devices().len());
                for d in b.devices() {
                    let mem = d.memory_bytes.map_or("memory unknown".into(), |m| {
                        format!("{} available", report::human_bytes(m))
                    });
                    println!("  [{}] {}  ({mem})", d.index, d.name);
                    for (k, v) in &d.details {
                        println!("      {k}: {v}");
                    }
                }
                if b.name() == "cuda" {
                    print_topology(b.devices());
                }
            }
            Probe::Unavailable { name, reason } => println!("{name}: unavailable ({reason})"),
        }
    }
    match decodelab::backend::cuda::nccl::version() {
        Ok(v) => println!("nccl: {v} (cuda splits combine with it)"),
        Err(why) => println!("nccl: unavailable ({why}); cuda splits need it"),
    }
    ExitCode::SUCCESS
}

/// How the cuda devices connect, as `nvidia-smi topo -m` prints it.
fn print_topology(devices: &[backend::DeviceInfo]) {
    if devices.len() < 2 {
        return;
    }
    match decodelab::backend::cuda::topology::matrix(devices) {
        Ok(rows) => {
            println!(
                "  topology (NV# = NVLinks between the pair; PIX/PXB/PHB/NODE/SYS = PCIe path):"
            );
            let head: Vec<String> = (0..devices.len()).map(|i| format!("{i:>6}")).collect();
            println!("      {}", head.join(""));
            for (i, row) in rows.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|c| format!("{c:>6}")).collect();
                println!("  {i:>3} {}", cells.join(""));
            }
        }
        Err(why) => {
            // The driver still knows which pairs can reach each other directly.
            println!("  topology: NVML cannot tell ({why}); peer access from the driver:");
            for a in 0..devices.len() {
                let cells: Vec<String> = (0..devices.len())
                    .map(|b| {
                        let c = if a == b {
                            "X"
                        } else if backend::cuda::can_access_peer(a, b) {
                            "P2P"
                        } else {
                            "-"
                        };
                        format!("{c:>6}")
                    })
                    .collect();
                println!("  {a:>3} {}", cells.join(""));
            }
        }
    }
}

fn check(file: &std::path::Path, backend: Option<&str>, over: &Overrides) -> ExitCode {
    let exp = match load(file, over) {
        Ok(e) => e,
        Err(c) => return c,
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
    println!(
        "{:>5}  {:<11}  {:<48}  {:<11}  {:<7}  {:>12}  {:>10}  {:>14}  {:>12}",
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
        let (split, memory) = match (w.kernel(), p.split, device_count) {
            ("link", _, n) => (
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
            "{:>5}  {:<11}  {:<48}  {:<11}  {:<7}  {:>12}  {:>10.3}  {:>14}  {:>12}",
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
    let host = decodelab::backend::cpu::mem_available_bytes()
        .map_or("unknown".into(), report::human_bytes);
    println!("ok: every point is valid and fits (host memory available: {host})");
    ExitCode::SUCCESS
}

fn run(file: &std::path::Path, opts: RunOptions, over: &Overrides) -> ExitCode {
    let exp = match load(file, over) {
        Ok(e) => e,
        Err(c) => return c,
    };
    let selected = match select(&exp, opts.backend.as_deref()) {
        Ok(s) => s,
        Err(c) => return c,
    };
    runner::stop_on_ctrl_c();
    match runner::run(&exp, &selected, &opts) {
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
            // A run refused before it starts is like a refused file.
            if e.downcast_ref::<runner::Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
