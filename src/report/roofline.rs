//! A point against its roofline: the time the slower of its two ceilings allows, from this
//! run's stream read (bytes) and compute ceiling (FLOPs), and how close the point came.

use crate::backend::Peak;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Roofline {
    /// The point's FLOPs over its minimum bytes.
    pub flop_per_byte: f64,
    /// `memory` or `compute`: which ceiling sets the roofline time; `unknown` when one is
    /// missing (then `why` says which).
    pub bound: String,
    pub stream_gbps: Option<f64>,
    pub peak_gflops: Option<f64>,
    /// How the compute ceiling was measured, or why there is none.
    pub peak: String,
    /// max(bytes / stream, FLOPs / peak), seconds.
    pub time_s: Option<f64>,
    /// The roofline time over the measured median, as a percentage.
    pub pct: Option<f64>,
}

impl Roofline {
    /// The roofline of a point that moved `bytes` and did `flops` in `median_s`.
    pub fn of(
        flops: u64,
        bytes: u64,
        median_s: f64,
        stream_gbps: Option<f64>,
        peak: &Result<Peak, String>,
    ) -> Roofline {
        let flop_per_byte = if bytes == 0 {
            0.0
        } else {
            flops as f64 / bytes as f64
        };
        let (peak_gflops, peak_text) = match peak {
            Ok(p) => (Some(p.gflops), p.unit.clone()),
            Err(why) => (None, why.clone()),
        };
        let (bound, time_s) = match (stream_gbps.filter(|&g| g > 0.0), peak_gflops) {
            (Some(g), Some(p)) => {
                let memory = bytes as f64 / (g * 1e9);
                let compute = flops as f64 / (p * 1e9);
                let bound = if compute > memory {
                    "compute"
                } else {
                    "memory"
                };
                (bound, Some(memory.max(compute)))
            }
            _ => ("unknown", None),
        };
        Roofline {
            flop_per_byte,
            bound: bound.into(),
            stream_gbps,
            peak_gflops,
            peak: peak_text,
            time_s,
            pct: time_s
                .filter(|_| median_s > 0.0)
                .map(|t| 100.0 * t / median_s),
        }
    }

    /// `compute 62.1 %`, or `roofline: unknown (why)`.
    pub fn short(&self) -> String {
        match self.pct {
            Some(p) => format!("{} {p:.1}", self.bound),
            None => format!("roofline: unknown ({})", self.peak),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(gflops: f64) -> Result<Peak, String> {
        Ok(Peak {
            gflops,
            unit: "test".into(),
        })
    }

    #[test]
    fn the_slower_ceiling_sets_the_time() {
        // 1 GB at 10 GB/s is 0.1 s; 2 GFLOP at 100 GFLOP/s is 0.02 s: memory-bound.
        let r = Roofline::of(2_000_000_000, 1_000_000_000, 0.2, Some(10.0), &peak(100.0));
        assert_eq!(r.bound, "memory");
        assert_eq!(r.flop_per_byte, 2.0);
        assert!((r.time_s.unwrap() - 0.1).abs() < 1e-12);
        assert!((r.pct.unwrap() - 50.0).abs() < 1e-9);
        // 30 GFLOP at 100 GFLOP/s is 0.3 s, over the 0.1 s of bytes: compute-bound.
        let r = Roofline::of(30_000_000_000, 1_000_000_000, 0.6, Some(10.0), &peak(100.0));
        assert_eq!(r.bound, "compute");
        assert!((r.time_s.unwrap() - 0.3).abs() < 1e-12);
        assert!((r.pct.unwrap() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_missing_ceiling_is_unknown_and_says_why() {
        let why: Result<Peak, String> = Err("no compute ceiling on wgpu".into());
        let r = Roofline::of(10, 10, 1.0, Some(10.0), &why);
        assert_eq!(r.bound, "unknown");
        assert_eq!(r.pct, None);
        assert_eq!(r.short(), "roofline: unknown (no compute ceiling on wgpu)");
        let r = Roofline::of(10, 10, 1.0, None, &peak(1.0));
        assert_eq!(r.bound, "unknown");
    }
}
