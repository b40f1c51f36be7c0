//! Which jobs a point makes on the selected backends (one per device, one split, or one
//! per ordered pair of a link) with the implementation each runs, and the host's part of
//! every result's `env`. Both the loop (`runner.rs`) and the ranks' side of it
//! (`ranked.rs`) take them from here.

use super::Point;
use super::preflight::Selected;
use crate::backend::{self, Backend};
use crate::split::SplitKind;
use crate::workload::Workload;

/// The host's part of every result's `env`: decodelab's version, the OS, the architecture, the host.
pub(super) fn host_env() -> serde_json::Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    serde_json::json!({
        "decodelab": env!("CARGO_PKG_VERSION"),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "host": host.trim(),
    })
}

/// One thing a point runs: on one device, split over the run's devices, or (link) between
/// one ordered pair of them.
/// `imp` is the implementation it runs with, or why none covers the point.
pub(super) enum Job<'s> {
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
    /// `cuda:0`, `cpu:0x4`, `cuda:0->1`, with the implementation where it is not the
    /// default simple one.
    pub(super) fn place(&self, p: &Point) -> String {
        let at = format!("{}:{}", self.backend(), self.label());
        match self.imp() {
            Ok(i) if i != "simple" || p.imp.is_some() => format!("{at} {i}"),
            _ => at,
        }
    }

    pub(super) fn backend(&self) -> &'static str {
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
    pub(super) fn label(&self) -> String {
        match self {
            Job::Single { d, .. } => d.to_string(),
            Job::Split { s, .. } => s.device_set().label(),
            Job::Link { src, dst, .. } => format!("{src}->{dst}"),
        }
    }
}

/// The implementation a point runs with on a backend: the named one where the backend has
/// it and it covers the point (None otherwise: no job there; `impl: all` names every
/// implementation, and a tuned one may take only some shapes), else the best that covers it.
fn impl_on(p: &Point, b: &dyn Backend) -> Option<Result<&'static str, String>> {
    match p.imp {
        Some(name) => {
            let has = backend::has_impl(b.name(), p.workload.kind(), name);
            (has && b.covers(name, &p.workload).is_ok()).then_some(Ok(name))
        }
        None => Some(backend::best_impl(b, &p.workload)),
    }
}

/// Why point `p` has no job on the selected backends (its named implementation is on none,
/// or does not cover it where it is).
pub(super) fn why_no_job(p: &Point, selected: &[Selected]) -> String {
    let name = p.imp.unwrap_or("best");
    let kernel = p.workload.kernel();
    let reasons: Vec<String> = selected
        .iter()
        .filter(|s| backend::has_impl(s.backend.name(), p.workload.kind(), name))
        .filter_map(|s| s.backend.covers(name, &p.workload).err())
        .collect();
    if reasons.is_empty() {
        format!("no selected backend has implementation '{name}' of {kernel}")
    } else {
        format!(
            "implementation '{name}' of {kernel} does not cover this point ({})",
            reasons.join("; ")
        )
    }
}

pub(super) fn jobs_for<'s>(p: &Point, selected: &'s [Selected]) -> Vec<Job<'s>> {
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
            let n = s.device_count();
            for src in 0..n {
                for dst in (0..n).filter(|&d| d != src) {
                    jobs.push(Job::Link { s, src, dst });
                }
            }
        } else if p.split != SplitKind::None {
            jobs.push(Job::Split { s, imp });
        } else if let Some(w) = crate::cluster::world() {
            // Under a launcher the run's devices are its ranks.
            jobs.extend((0..w.size).map(|d| Job::Single {
                s,
                d,
                imp: imp.clone(),
            }));
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
