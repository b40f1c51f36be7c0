//! The decodelab command line: the commands and their options here, each command's work in
//! its own file (run.rs: run and check; info.rs: devices, profiles, kernels; model.rs: the
//! model and the figures).

mod info;
mod model;
mod run;

use clap::{Parser, Subcommand};
use model::ModelArgs;
use run::OverrideArgs;
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
    #[command(after_long_help = run_help())]
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
        /// Under mpirun or srun: seconds a rank waits for another before it ends the run
        /// (default DECODELAB_RANK_TIMEOUT, else 600; longer than the slowest point).
        #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
        rank_timeout: Option<f64>,
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
    /// registers, shared memory and spills per kernel; or, with --wgsl, inspect every WGSL one.
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
        /// Instead of CUDA: every WGSL implementation as wgpu would hand it to a Vulkan
        /// driver (SPIR-V written here by naga, no GPU or driver needed): loop counters under
        /// wgpu's default checks and as built, and per-thread arrays indexed at run time.
        #[arg(long, conflicts_with_all = ["sass", "arch"])]
        wgsl: bool,
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
/// `run --help`'s tail: the registry's kernels and backends, then every implementation.
fn run_help() -> String {
    let mut s = decodelab::registry::help_text();
    s.push_str("\n\nAxes (the fields of a run; a list sweeps, the first listed varying slowest):");
    for k in decodelab::registry::KERNELS {
        for (form, axes) in decodelab::workload::declared_axes(k.kernel) {
            let form = if form.is_empty() {
                String::new()
            } else {
                format!(" (attention: {form})")
            };
            s.push_str(&format!("\n  {}{form}:\n", k.name));
            for a in axes {
                s.push_str(&format!("    {}\n", a.help()));
            }
        }
    }
    s.push_str("\nImplementations (impl:, in the order `best` tries them):\n");
    for i in decodelab::backend::IMPLS {
        let tuned = if i.tuned { " (tuned)" } else { "" };
        s.push_str(&format!(
            "  {:<5} {:<12} {:<9} {}{tuned}\n",
            i.backend,
            i.kernel.name(),
            i.name,
            i.about
        ));
    }
    s.pop();
    s
}

fn backend_choices() -> clap::builder::PossibleValuesParser {
    let names = std::iter::once("auto")
        .chain(decodelab::registry::backend_names())
        .chain(std::iter::once("all"));
    clap::builder::PossibleValuesParser::new(names)
}

fn main() -> ExitCode {
    quiet_mesa_wsi();
    die_quietly_on_a_closed_pipe();
    match Cli::parse().command {
        Command::Devices => info::devices(),
        Command::Profiles => info::profiles(),
        Command::Kernels {
            wgsl: true, json, ..
        } => info::wgsl_kernels(json),
        Command::Kernels {
            arch, json, sass, ..
        } => info::kernels(&arch, json, sass),
        Command::Plot { results, out } => plot(&results, out.as_deref()),
        Command::Compare { a, b, threshold } => compare(&a, &b, threshold),
        Command::Model(args) => model::model(&args),
        Command::Figures { dir, out, measured } => model::figures(&dir, &out, measured.as_deref()),
        Command::Check {
            file,
            backend,
            only,
        } => {
            let over = decodelab::experiment::Overrides {
                only,
                ..Default::default()
            };
            run::check(&file, backend.as_deref(), &over)
        }
        Command::Run {
            file,
            backend,
            out,
            dump,
            resume,
            no_progress,
            rank_timeout,
            over,
        } => {
            let opts = decodelab::experiment::runner::RunOptions {
                backend,
                out,
                dump,
                resume,
                progress: !no_progress,
            };
            run::run(&file, opts, &over.overrides(), rank_timeout)
        }
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

/// A command that could not do its work: the message, exit code 2.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn plot(results: &std::path::Path, out: Option<&std::path::Path>) -> ExitCode {
    match decodelab::report::plot::run(results, out) {
        Ok((dir, n)) => {
            println!("{n} chart(s) -> {}", dir.join("index.html").display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// Exit 1 when B regressed against A, 2 when the runs could not be compared.
fn compare(a: &std::path::Path, b: &std::path::Path, threshold: f64) -> ExitCode {
    match decodelab::report::compare::run(a, b, threshold) {
        Ok((table, regressions)) => {
            print!("{table}");
            if regressions > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(format!("{e:#}")),
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
