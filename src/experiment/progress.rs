//! What a run says as it goes: the progress bar (on a terminal), where it runs, and one line
//! per finished job.

use super::preflight::Selected;
use super::{Experiment, Point};
use crate::report::{self, ResultLine};
use crate::split::SplitKind;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// The progress bar (on a terminal) and the lines printed around it.
pub(super) struct Progress {
    pub(super) bar: ProgressBar,
}

impl Progress {
    pub(super) fn new(wanted: bool, pending: usize) -> Progress {
        let bar = if wanted && std::io::stdout().is_terminal() {
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
        Progress { bar }
    }

    pub(super) fn say(&self, s: String) {
        if self.bar.is_hidden() {
            println!("{s}")
        } else {
            self.bar.println(s)
        }
    }
}

/// Where the run runs, why `auto` chose it, and a profile that is not this device.
pub(super) fn announce(exp: &Experiment, selected: &[Selected], progress: &Progress) {
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
        progress.say(format!("running on {}{what}{why}", devs.join(", ")));
        let Some(h) = &exp.hardware else { continue };
        for d in s.physical_devices() {
            let dev = &s.backend.devices()[d];
            if !h.describes(&dev.name) {
                progress.say(format!(
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

/// The line printed when a job finishes.
pub(super) fn point_line(
    line: &ResultLine,
    p: &Point,
    label: &str,
    where_: &str,
    n: usize,
    total: usize,
) -> String {
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
    format!(
        "[{n}/{total}] point {:>3}  {:<11} {:<44} {where_:<15}{}  {:>9.2} GB/s  {:>10}  rel err {:.1e}  {}{extra}",
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
    )
}
