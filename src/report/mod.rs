//! Results: one JSON object per point, appended and flushed as each point finishes; CSV,
//! summary.md and the terminal table are derived from those lines at the end.

pub mod compare;
pub mod csv;
pub mod format;
pub mod npy;
pub mod plot;
pub mod plot_roofline;
pub mod roofline;
pub mod store;
pub mod style;
pub mod table;

pub use csv::to_csv;
pub use format::{human_bytes, human_time, params_label};
pub use roofline::Roofline;
pub use store::{FolderLock, ResultsFile, StoreFailed, write_atomic};
pub use table::{
    cross_check_table, link_table, split_table, summary_markdown, terminal_table, verdict,
};

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA: &str = "decodelab.result/1";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeStats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median: how far the reps strayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<f64>,
    /// Half the width of the median's 95 % confidence interval, over the median (from order
    /// statistics; none under 5 samples): how well the median is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci95: Option<f64>,
}

/// A median known no better than this (half its 95 % confidence interval, over the median)
/// takes more reps, and is marked noisy if it still is.
pub const NOISY_CI95: f64 = 0.02;

impl TimeStats {
    pub fn from_samples(samples: &[f64]) -> Option<TimeStats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        // The 95 % interval of the median lies between the order statistics n/2 -+ 0.98 sqrt(n).
        let ci95 = (n >= 5 && median > 0.0).then(|| {
            let h = 0.98 * (n as f64).sqrt();
            let lo = ((n as f64 / 2.0 - h).floor().max(0.0)) as usize;
            let hi = ((n as f64 / 2.0 + h).ceil() as usize).min(n - 1);
            (s[hi] - s[lo]) / (2.0 * median)
        });
        Some(TimeStats {
            median,
            min: s[0],
            max: s[n - 1],
            spread: (median > 0.0).then(|| (s[n - 1] - s[0]) / median),
            ci95,
        })
    }

    /// The median is not known to within `NOISY_CI95`.
    pub fn noisy(&self) -> bool {
        self.ci95.is_some_and(|c| c > NOISY_CI95)
    }
}

/// What a meter reports for one point (`energy` fills it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub joules_per_step: f64,
    pub pj_per_byte: f64,
    /// Measured only: energy above the idle power over the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pj_per_byte_above_idle: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_w: Option<f64>,
    /// Measured only: the lowest and highest pJ/byte over the windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_pj_per_byte: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<f64>,
    /// Modelled only: which profile's constants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// The energy of one step: the primary figure (measured where it exists, else modelled),
/// and both sides in full.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Energy {
    /// nvml, model or none: where `joules` and `pj_per_byte` come from.
    pub source: String,
    pub joules: Option<f64>,
    pub pj_per_byte: Option<f64>,
    #[serde(default)]
    pub measured: Option<Figures>,
    #[serde(default)]
    pub modelled: Option<Figures>,
    /// Why a side is missing (no NVML, no profile), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckOut {
    pub rel_l2_err: Option<f64>,
    pub max_abs_err: Option<f64>,
    /// `math: bf16`: the error of the f64 reference with the same operand rounding, against
    /// the exact answer; the kernel may be at most 2x this (plus 1e-6) off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_rel_l2_err: Option<f64>,
    pub pass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a point's host seconds went, beside its kernel times.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostSeconds {
    /// Seeded inputs (0 when reused from the previous point).
    pub generate: f64,
    /// The f64 oracle (it runs while the point is uploaded and compiled).
    pub oracle: f64,
    /// Uploading the inputs and allocating the outputs (compile time excluded).
    pub upload: f64,
    /// NVRTC, on cuda.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<f64>,
    /// Comparing the outputs with the oracle.
    pub check: f64,
    /// The inputs (and, for the same math, the reference) came from the previous point.
    #[serde(default)]
    pub reused_inputs: bool,
}

/// One result line, fields in the order docs/results.md shows them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultLine {
    pub schema: String,
    pub experiment: String,
    pub point: usize,
    pub kernel: String,
    pub backend: String,
    /// Which implementation of the kernel ran ("simple", or a tuned one).
    #[serde(rename = "impl", default)]
    pub implementation: String,
    /// Under `impl: best`, the implementations preferred to the one that ran which do not
    /// cover this point here, each with why (`mma: ...`); absent when the first ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
    pub device: String,
    pub device_count: usize,
    pub split: String,
    pub params: serde_json::Value,
    pub bytes: u64,
    pub flops: u64,
    pub reps: usize,
    pub time_s: TimeStats,
    pub gbps: f64,
    pub pct_of_spec: Option<f64>,
    pub pct_of_stream: Option<f64>,
    /// Decode points: the point against both of this run's ceilings (absent for stream and
    /// link points, and in results of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roofline: Option<Roofline>,
    pub cache: String,
    pub energy: Energy,
    pub check: CheckOut,
    pub env: serde_json::Value,
    /// Host seconds of the point (absent for links and for results of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_s: Option<HostSeconds>,
    /// Split points: the shards, the combine and the scaling (absent for one device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi: Option<MultiDevice>,
    /// Link points: which two devices, and the path between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkOut>,
}

/// One shard of a split point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardOut {
    /// Logical device (0..device_count) and the physical device it ran on.
    pub device: usize,
    pub physical: usize,
    pub params: serde_json::Value,
    pub bytes: u64,
    pub time_s: TimeStats,
    pub gbps: f64,
    pub rel_l2_err: Option<f64>,
}

/// The combine of a split point: what moved, how, and how fast.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CombineOut {
    /// `host-staged` (read back to the host and merged there) or `nccl`.
    pub method: String,
    /// Bytes of shard outputs moved to where the point's outputs are assembled.
    pub bytes: u64,
    /// Bytes sent to the shards before the step (experts: token rows to expert owners);
    /// placed before timing, so counted here and not timed.
    pub dispatch_bytes: u64,
    /// transport + merge.
    pub time_s: TimeStats,
    /// bytes / transport median: what the link or the host path carried.
    pub gbps: f64,
    /// Moving the shard outputs (device timers or host clock, as the method says).
    pub transport_s: TimeStats,
    /// Merging them (lse merge, slot sums, gathers), where `merge_on` says.
    pub merge_s: TimeStats,
    /// `host`, or the kernel and device that merged (cuda's sequence split:
    /// `merge_shards on cuda:0`, timed with events).
    #[serde(default)]
    pub merge_on: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OneDeviceOut {
    pub device: usize,
    pub time_s: TimeStats,
    pub gbps: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MultiDevice {
    /// Logical devices were placed on one physical device.
    #[serde(rename = "virtual")]
    pub virtual_devices: bool,
    /// Shards ran at the same time (one thread per device) rather than one after another.
    pub concurrent: bool,
    pub shards: Vec<ShardOut>,
    pub combine: CombineOut,
    /// Bytes the shards' kernels had to move (more than the point's minimum where a split
    /// replicates data, as MLA heads does with the latent cache).
    pub shard_bytes: u64,
    /// shard_bytes / end-to-end median.
    pub aggregate_gbps: f64,
    /// The same point on one device, same backend, same run.
    pub one_device: Option<OneDeviceOut>,
    /// one-device time / (devices x end-to-end time).
    pub scaling_efficiency: Option<f64>,
    pub vs_one_device: Option<VsOneDevice>,
    /// How end-to-end time was formed.
    pub note: String,
}

/// How a combined output compares with the one-device output of the same point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VsOneDevice {
    /// Every element bit for bit equal.
    pub identical: bool,
    pub max_abs_diff: f64,
    pub rel_l2_diff: f64,
    /// Within the split's tolerance (exact for heads, tensor, experts, data; the sequence
    /// merge's, `SplitKind::one_device_tolerance`).
    pub pass: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LinkOut {
    /// The physical devices at the two ends; between ranks, the ranks.
    pub src: usize,
    pub dst: usize,
    /// e.g. `peer (NVLink x18)`, `same device (virtual)`, `host memory`.
    pub path: String,
}

impl ResultLine {
    /// Whether this line is of kernel `k`.
    pub fn is(&self, k: crate::registry::Kernel) -> bool {
        self.kernel == k.name()
    }

    /// Which (point, backend, device set) this line finished: what `--resume` skips. The
    /// device set is `0` for one device, `0+1+2+3` for a split, `0->1` for a link.
    pub fn key(&self) -> (usize, String, String) {
        let label = self
            .env
            .get("devices")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.env
                    .get("device_index")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    .to_string()
            });
        (self.point, self.backend.clone(), label)
    }
}

/// The result lines of a run: a results.jsonl, or a results folder holding one. A line that
/// is not a result is refused with its number.
pub fn load_lines(path: &Path) -> anyhow::Result<Vec<ResultLine>> {
    let file = if path.is_dir() {
        path.join("results.jsonl")
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut lines = Vec::new();
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        lines.push(serde_json::from_str(l).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not a decodelab result line: {e}",
                file.display(),
                i + 1
            )
        })?);
    }
    anyhow::ensure!(!lines.is_empty(), "{}: no result lines", file.display());
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_known_better_with_more_samples() {
        // 20 samples alternating 1.0 and 1.1: the median's interval spans both values.
        let wide: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 1.0 } else { 1.1 })
            .collect();
        let s = TimeStats::from_samples(&wide).unwrap();
        assert!((s.spread.unwrap() - 0.1 / 1.05).abs() < 1e-12);
        assert!(s.noisy(), "{s:?}");
        // Mostly 1.0 with a few outliers: the middle order statistics agree.
        let mut tight = vec![1.0; 17];
        tight.extend([1.5, 2.0, 0.9]);
        let s = TimeStats::from_samples(&tight).unwrap();
        assert_eq!(s.ci95, Some(0.0));
        assert!(!s.noisy() && s.spread.unwrap() > 1.0);
        // Too few samples to say.
        assert_eq!(
            TimeStats::from_samples(&[1.0, 2.0, 3.0]).unwrap().ci95,
            None
        );
    }
}
