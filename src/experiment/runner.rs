//! The runner: for every point x backend x device, in order (stream points first): prepare,
//! warm up, time, read back, check against the oracle, and append the result line before the
//! next point starts. What is refused before a run is in `preflight`; one job is in `jobs`.

use super::host::HostData;
use super::jobs;
use super::place::{Place, run_job};
use super::preflight::Selected;
use super::progress::{Progress, announce, point_line};
use super::schedule::{Job, host_env, jobs_for, why_no_job};
use super::{Experiment, Point};
use crate::backend::Backend;
use crate::registry::Kernel;
use crate::report::{self, FolderLock, ResultLine, ResultsFile, Roofline};
use crate::split::SplitKind;
use anyhow::Context;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

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

fn default_out_dir(exp: &Experiment) -> PathBuf {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    Path::new("results").join(&exp.name).join(stamp)
}

/// The stream op a point is held against: its own for a stream point (copy against copy),
/// read for the decode kernels (they read what they stream), none for a link.
fn ceiling_op(kernel: &str, params: &serde_json::Value) -> Option<String> {
    match Kernel::from_name(kernel)? {
        Kernel::Stream => params
            .get("op")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        Kernel::Link => None,
        Kernel::KvDecode | Kernel::ExpertGemv => Some("read".into()),
    }
}

/// The best stream GB/s of each kind on each backend device, each device unit's compute
/// ceiling (measured once, when its first decode point on that unit finishes), and points
/// held against them.
#[derive(Default)]
struct Ceilings(
    HashMap<(String, String, String), f64>,
    HashMap<(String, String, crate::backend::Unit), Result<crate::backend::Peak, String>>,
);

impl Ceilings {
    fn record(&mut self, l: &ResultLine) {
        if l.is(Kernel::Stream) && l.check.pass && l.split == "none" {
            let op = ceiling_op(&l.kernel, &l.params).unwrap_or_default();
            let e = self
                .0
                .entry((l.backend.clone(), l.key().2, op))
                .or_insert(0.0);
            *e = e.max(l.gbps);
        }
    }

    /// `l` against both ceilings of its device (decode points only).
    fn roofline(&mut self, l: &ResultLine, b: &dyn Backend, device: usize) -> Option<Roofline> {
        if l.flops == 0 || l.split != "none" {
            return None;
        }
        let unit = b.compute_unit(&l.implementation);
        let peak = self
            .1
            .entry((l.backend.clone(), l.key().2, unit))
            .or_insert_with(|| b.compute_ceiling(device, unit));
        let op = ceiling_op(&l.kernel, &l.params)?;
        let stream = self.0.get(&(l.backend.clone(), l.key().2, op));
        Some(Roofline::of(
            l.flops,
            l.bytes,
            l.time_s.median,
            stream.copied(),
            peak,
        ))
    }

    /// `l`'s GB/s as a percentage of its ceiling, once one was measured.
    fn pct(&self, l: &ResultLine) -> Option<f64> {
        ceiling_op(&l.kernel, &l.params)
            .and_then(|op| self.0.get(&(l.backend.clone(), l.key().2, op)))
            .filter(|&&best| best > 0.0)
            .map(|best| 100.0 * l.gbps / best)
    }
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

/// A result line could not be written (disk full, I/O error): the run stopped, the file holds
/// whole lines only (exit code 3).
#[derive(Debug)]
pub struct StoreStopped {
    pub message: String,
}

impl std::fmt::Display for StoreStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreStopped {}

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
        crate::cluster::interrupt();
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

/// Run every point of `exp` on `selected`, appending each result as it finishes. (About 100
/// lines: the per-point loop's stops, the store's faults and the progress share its state.)
pub fn run(exp: &Experiment, selected: &[Selected], opts: &RunOptions) -> anyhow::Result<Outcome> {
    let (out_dir, lock) = results_folder(exp, opts)?;
    let opened =
        ResultsFile::open(&out_dir, lock, &exp.name).map_err(|e| Refused(format!("{e:#}")))?;
    let (results, lines) = (opened.file, opened.lines);
    let done: HashSet<(usize, String, String)> = lines.iter().map(ResultLine::key).collect();
    let not_done = |p: &Point| -> Vec<Job> {
        jobs_for(p, selected)
            .into_iter()
            .filter(|j| !done.contains(&(p.index, j.backend().to_string(), j.label())))
            .collect()
    };

    // Stream points run first, so every later point can be held against the ceiling of its
    // kind measured on the same device in the same run.
    let mut order: Vec<&Point> = exp.points.iter().collect();
    order.sort_by_key(|p| p.workload.kind() != Kernel::Stream);
    let mut ceilings = Ceilings::default();
    lines.iter().for_each(|l| ceilings.record(l));

    let pending: usize = order.iter().map(|p| not_done(p).len()).sum();
    let skipped_done = lines.len();
    // Points whose named implementation no selected backend has: said once, not run.
    let no_impl: Vec<&Point> = order
        .iter()
        .copied()
        .filter(|p| jobs_for(p, selected).is_empty())
        .collect();
    let progress = Progress::new(opts.progress, pending);
    announce(exp, selected, &progress);
    for note in &opened.notes {
        progress.say(format!("resume: {note}"));
    }
    if skipped_done > 0 {
        progress.say(format!(
            "resuming {}: {skipped_done} results already there, {pending} to go",
            out_dir.display()
        ));
    }
    for p in &no_impl {
        progress.say(format!(
            "point {:>3}: {}; skipped",
            p.index,
            why_no_job(p, selected)
        ));
    }
    let mut r = Running {
        exp,
        opts,
        total_runs: exp.points.iter().map(|p| jobs_for(p, selected).len()).sum(),
        env_base: host_env(),
        progress,
        results,
        lines,
        ceilings,
        failed_checks: 0,
        errors: 0,
    };
    // The last point's inputs and reference: its neighbours in the sweep (other
    // implementations, other splits of the same shape) reuse them.
    let mut host: Option<HostData> = None;
    let ended = r.all_points(&order, not_done, &mut host);
    r.progress.bar.finish_and_clear();
    let mut lines = r.lines;
    lines.sort_by_key(|l| (l.point, l.backend.clone(), l.key().2));
    // What finished is kept, even when a lost rank ended the run early. After a failed write
    // the tables are tried too (whole or not at all), but the store's error is the one said.
    let tables = write_tables(exp, &out_dir, &lines);
    if let Err(e) = &ended
        && let Some(f) = e.downcast_ref::<report::StoreFailed>()
    {
        return Err(StoreStopped {
            message: format!(
                "{f}
the run stopped after {} results; free the space (or fix the disk), then finish it with: decodelab run {} --resume {}",
                lines.len(),
                exp.file.display(),
                out_dir.display()
            ),
        }
        .into());
    }
    tables?;
    ended.with_context(|| {
        format!(
            "the run ended early; its {} results are kept in {} (finish it with --resume {})",
            lines.len(),
            out_dir.display(),
            out_dir.display()
        )
    })?;
    Ok(Outcome {
        out_dir,
        lines,
        failed_checks: r.failed_checks,
        errors: r.errors,
        skipped_done,
        skipped_no_impl: no_impl.len(),
        interrupted: stopping(),
    })
}

/// A run under way: where its lines go and what it has counted so far.
struct Running<'a> {
    exp: &'a Experiment,
    opts: &'a RunOptions,
    total_runs: usize,
    env_base: serde_json::Value,
    progress: Progress,
    results: ResultsFile,
    lines: Vec<ResultLine>,
    ceilings: Ceilings,
    failed_checks: usize,
    errors: usize,
}

impl Running<'_> {
    /// Every point in `order` with jobs left, until the end, a stop, or a lost rank (the
    /// error). Under a launcher rank 0 first tells the others which jobs of the point to run,
    /// and at the end that the run is over.
    fn all_points<'s>(
        &mut self,
        order: &[&Point],
        not_done: impl Fn(&Point) -> Vec<Job<'s>>,
        host: &mut Option<HostData>,
    ) -> anyhow::Result<()> {
        let world = crate::cluster::world();
        for &p in order {
            let todo = not_done(p);
            if stopping() {
                break;
            }
            if todo.is_empty() {
                continue;
            }
            if let Some(w) = world {
                let jobs = todo.iter().map(|j| (j.backend().to_string(), j.label()));
                let order = super::ranked::Order::Point {
                    index: p.index,
                    jobs: jobs.collect(),
                };
                w.broadcast(Some(&order))?;
            }
            self.point(p, todo, host)?;
        }
        if let Some(w) = world {
            w.broadcast(Some(&super::ranked::Order::End))?;
        }
        Ok(())
    }

    /// Every job of one point: run, dumped (once), held against the ceilings, appended and
    /// said; an error is counted and said, and the run goes on.
    fn point(
        &mut self,
        p: &Point,
        todo: Vec<Job>,
        host: &mut Option<HostData>,
    ) -> anyhow::Result<()> {
        let label = report::params_label(p.workload.kernel(), &p.workload.params_json());
        self.progress
            .bar
            .set_message(format!("point {} {} {label}", p.index, p.workload.kernel()));
        let data = HostData::for_point(host, &p.workload);
        let mut dumped = false;
        let mut ran_here: Vec<usize> = Vec::new();
        for job in todo {
            if stopping() {
                break;
            }
            let where_ = job.place(p);
            let place = match crate::cluster::world() {
                Some(w) => Place::Root(w),
                None => Place::Local,
            };
            let ran = run_job(place, (self.exp, p, data), &job, &self.env_base)
                .and_then(|r| r.context("rank 0 gets every line"));
            let (mut line, outputs) = match ran {
                Ok(v) => v,
                Err(e) if crate::cluster::is_lost(&e) => {
                    self.errors += 1;
                    return Err(e.context(format!("point {} on {where_}", p.index)));
                }
                Err(e) => {
                    self.errors += 1;
                    self.progress.bar.inc(1);
                    self.progress
                        .say(format!("point {} on {where_}: error: {e:#}", p.index));
                    continue;
                }
            };
            if let (Some(dump), Some(outputs)) =
                (self.opts.dump.as_ref().filter(|_| !dumped), &outputs)
            {
                let dir = dump.join(p.index.to_string());
                let from = if p.split == SplitKind::None {
                    where_.clone()
                } else {
                    format!("{where_} (split {}, combined)", p.split.name())
                };
                jobs::dump_point(&dir, p, &data.inputs, outputs, &from)
                    .with_context(|| format!("--dump {}", dir.display()))?;
                dumped = true;
            }
            self.ceilings.record(&line);
            line.pct_of_stream = self.ceilings.pct(&line);
            if let Job::Single { s, d, .. } = &job {
                line.roofline = self.ceilings.roofline(&line, s.backend.as_ref(), *d);
            }
            self.results.append(&line)?;
            self.failed_checks += usize::from(!line.check.pass);
            self.progress.bar.inc(1);
            let n = self.lines.len() + 1;
            let said = point_line(&line, p, &label, &where_, n, self.total_runs);
            self.progress.say(said);
            self.lines.push(line);
            if matches!(job, Job::Single { .. }) {
                ran_here.push(self.lines.len() - 1);
            }
        }
        if ran_here.len() > 1 {
            let parts: Vec<String> = ran_here
                .iter()
                .map(|&i| {
                    let l = &self.lines[i];
                    format!(
                        "{}:{} {:.2} GB/s ({:.1e})",
                        l.backend,
                        l.key().2,
                        l.gbps,
                        l.check.rel_l2_err.unwrap_or(f64::NAN)
                    )
                })
                .collect();
            self.progress.say(format!(
                "        point {:>3} side by side: {}",
                p.index,
                parts.join(" | ")
            ));
        }
        Ok(())
    }
}

/// The folder results go to: a resumed run's (refused when its experiment differs beyond
/// comments), `--out`, or a new timestamped one; never one that already holds results.
fn results_folder(exp: &Experiment, opts: &RunOptions) -> anyhow::Result<(PathBuf, FolderLock)> {
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
    // One writer per folder, before anything in it is read or written.
    let lock = FolderLock::acquire(&out_dir).map_err(|e| Refused(format!("{e:#}")))?;
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
    Ok((out_dir, lock))
}

/// results.csv and summary.md, from every line of the run (resumed ones too).
fn write_tables(exp: &Experiment, out_dir: &Path, lines: &[ResultLine]) -> anyhow::Result<()> {
    report::write_atomic(&out_dir.join("results.csv"), &report::to_csv(lines))?;
    report::write_atomic(
        &out_dir.join("summary.md"),
        &report::summary_markdown(
            &exp.name,
            &exp.file.display().to_string(),
            lines,
            &out_dir.join("results.jsonl"),
        ),
    )
}
