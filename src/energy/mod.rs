//! Energy per byte: measured with NVML where it exists, estimated by the energy model
//! everywhere a hardware profile is given, side by side in every result line.

pub mod nvml;

use crate::hardware::HardwareProfile;
use crate::workload::{DType, Workload};
use serde::{Deserialize, Serialize};

/// `energy:` in an experiment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMode {
    /// NVML where the device has it, the model beside it where a profile is given.
    #[default]
    Auto,
    /// NVML required: refused before anything runs where it is absent.
    Nvml,
    /// The model only (needs `hardware:`).
    Model,
    Off,
}

pub use crate::report::Figures;

/// Something that turns a point into joules: NVML around real runs, or the energy model.
pub trait Meter {
    fn source(&self) -> &'static str;
    /// `run(steps)` runs the point's kernel `steps` times and returns when they finished.
    fn measure(
        &self,
        workload: &Workload,
        run: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<Figures>;
}

/// The energy model: the point's minimum bytes through main memory and its FLOPs at the
/// storage dtype's rate, times the profile's constants.
pub struct ModelMeter {
    pub profile: HardwareProfile,
}

impl ModelMeter {
    /// None when the profile has no energy constants.
    pub fn new(profile: &HardwareProfile) -> Option<ModelMeter> {
        profile.energy.as_ref()?;
        Some(ModelMeter {
            profile: profile.clone(),
        })
    }

    pub fn joules(&self, workload: &Workload) -> f64 {
        let e = self.profile.energy.as_ref().expect("checked in new");
        let pj_flop = match workload.storage_dtype() {
            Some(DType::Fp8E4m3) => e.pj_per_flop.fp8,
            _ => e.pj_per_flop.bf16,
        };
        (workload.bytes() as f64 * 8.0 * e.memory_pj_per_bit + workload.flops() as f64 * pj_flop)
            * 1e-12
    }
}

impl Meter for ModelMeter {
    fn source(&self) -> &'static str {
        "model"
    }

    fn measure(
        &self,
        workload: &Workload,
        _run: &mut dyn FnMut(u64) -> anyhow::Result<()>,
    ) -> anyhow::Result<Figures> {
        let j = self.joules(workload);
        Ok(Figures {
            joules_per_step: j,
            pj_per_byte: j * 1e12 / workload.bytes().max(1) as f64,
            pj_per_byte_above_idle: None,
            idle_w: None,
            spread_pj_per_byte: None,
            windows: None,
            window_s: None,
            profile: Some(self.profile.id.clone()),
        })
    }
}

/// A cumulative energy counter (NVML's total energy since driver load) and the clock it runs
/// against; a trait so the windowing can be tested with a fake.
pub trait EnergyCounter {
    /// Millijoules since some fixed origin.
    fn millijoules(&self) -> anyhow::Result<u64>;
    /// Seconds since some fixed origin.
    fn now(&self) -> f64;
    fn sleep(&self, seconds: f64);
}

/// How the counter is read: windows of at least `min_window_s` (NVML updates every
/// ~20-100 ms, so a shorter window is mostly quantisation), idle measured over `idle_s`.
#[derive(Clone, Copy, Debug)]
pub struct Windowing {
    pub min_window_s: f64,
    pub windows: usize,
    pub idle_s: f64,
}

impl Default for Windowing {
    fn default() -> Self {
        Windowing {
            min_window_s: 1.0,
            windows: 3,
            idle_s: 1.0,
        }
    }
}

/// Measure a point's energy with a counter: idle power first (nothing running), then
/// `windows` windows each running as many steps as fill `min_window_s`.
pub fn measure_windows(
    counter: &dyn EnergyCounter,
    w: Windowing,
    bytes_per_step: u64,
    run: &mut dyn FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<Figures> {
    let (t0, e0) = (counter.now(), counter.millijoules()?);
    counter.sleep(w.idle_s);
    let (t1, e1) = (counter.now(), counter.millijoules()?);
    anyhow::ensure!(t1 > t0, "the energy counter's clock did not advance");
    let idle_w = e1.saturating_sub(e0) as f64 * 1e-3 / (t1 - t0);

    // Size the window from one timed probe step.
    let start = counter.now();
    run(1)?;
    let one = (counter.now() - start).max(1e-9);
    // (1 - 1e-9): 1 s / 2 ms is 500 steps, not 501 through rounding noise.
    let steps = ((w.min_window_s / one * (1.0 - 1e-9)).ceil() as u64).max(1);

    let bytes = bytes_per_step.max(1) as f64;
    let mut per_window = Vec::with_capacity(w.windows);
    let mut above = Vec::with_capacity(w.windows);
    let mut total_s = 0.0;
    for _ in 0..w.windows.max(1) {
        let (ta, ea) = (counter.now(), counter.millijoules()?);
        run(steps)?;
        let (tb, eb) = (counter.now(), counter.millijoules()?);
        let joules = eb.saturating_sub(ea) as f64 * 1e-3;
        let secs = tb - ta;
        total_s += secs;
        per_window.push(joules / steps as f64);
        above.push((joules - idle_w * secs).max(0.0) / steps as f64);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let j = mean(&per_window);
    let lo = per_window.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = per_window.iter().cloned().fold(0.0, f64::max);
    Ok(Figures {
        joules_per_step: j,
        pj_per_byte: j * 1e12 / bytes,
        pj_per_byte_above_idle: Some(mean(&above) * 1e12 / bytes),
        idle_w: Some(idle_w),
        spread_pj_per_byte: Some([lo * 1e12 / bytes, hi * 1e12 / bytes]),
        windows: Some(per_window.len()),
        window_s: Some(total_s / per_window.len() as f64),
        profile: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A counter on a simulated clock: the device burns `idle_w` always, plus `step_j` per
    /// step, and each step takes `step_s`. Readings are whole millijoules, like NVML's.
    struct Fake {
        t: Cell<f64>,
        joules: Cell<f64>,
        idle_w: f64,
        step_j: f64,
        step_s: f64,
    }

    impl Fake {
        fn advance(&self, secs: f64, extra_j: f64) {
            self.t.set(self.t.get() + secs);
            self.joules
                .set(self.joules.get() + self.idle_w * secs + extra_j);
        }
    }

    impl EnergyCounter for Fake {
        fn millijoules(&self) -> anyhow::Result<u64> {
            Ok((self.joules.get() * 1e3).floor() as u64)
        }
        fn now(&self) -> f64 {
            self.t.get()
        }
        fn sleep(&self, seconds: f64) {
            self.advance(seconds, 0.0);
        }
    }

    #[test]
    fn windows_subtract_idle_and_fill_a_second() {
        let fake = Fake {
            t: Cell::new(5.0),
            joules: Cell::new(1234.0),
            idle_w: 100.0,
            step_j: 0.5,
            step_s: 0.002,
        };
        let mut steps_run = 0;
        let mut run = |n: u64| {
            steps_run += n;
            fake.advance(n as f64 * fake.step_s, n as f64 * fake.step_j);
            Ok(())
        };
        let bytes = 1_000_000_000u64;
        let f = measure_windows(&fake, Windowing::default(), bytes, &mut run).unwrap();
        // Worked by hand: idle 100 W; a step is 0.5 J + 100 W x 2 ms = 0.7 J; above idle 0.5 J.
        assert!((f.idle_w.unwrap() - 100.0).abs() < 0.01, "{f:?}");
        assert!((f.joules_per_step - 0.7).abs() < 1e-5, "{f:?}");
        assert!((f.pj_per_byte - 700.0).abs() < 0.01, "{f:?}");
        assert!(
            (f.pj_per_byte_above_idle.unwrap() - 500.0).abs() < 0.05,
            "{f:?}"
        );
        assert_eq!(f.windows, Some(3));
        assert!((f.window_s.unwrap() - 1.0).abs() < 0.01, "{f:?}");
        // 1 probe step + 3 windows of 500 steps (1 s / 2 ms).
        assert_eq!(steps_run, 1 + 3 * 500);
        let [lo, hi] = f.spread_pj_per_byte.unwrap();
        assert!(
            lo * (1.0 - 1e-9) <= f.pj_per_byte && f.pj_per_byte <= hi * (1.0 + 1e-9),
            "{f:?}"
        );
    }

    #[test]
    fn the_model_multiplies_bytes_and_flops_by_the_constants() {
        let profile: HardwareProfile = serde_saphyr::from_str(
            "name: t\nmemory_bytes: 1\nmemory_bandwidth_gbps: 1\nenergy: {memory_pj_per_bit: 10, sram_pj_per_bit: 1, link_pj_per_bit: 1, pj_per_flop: {bf16: 0.5, fp8: 0.25, fp4: 0.1}}\n",
        )
        .unwrap();
        let m = ModelMeter::new(&profile).unwrap();
        let stream = Workload::Stream(crate::workload::Stream {
            op: crate::workload::StreamOp::Copy,
            bytes: 1000,
            seed: 0,
        });
        // 2000 bytes x 8 bits x 10 pJ = 160000 pJ; no FLOPs.
        assert!((m.joules(&stream) - 160_000e-12).abs() < 1e-18);
        let f = m.measure(&stream, &mut |_| Ok(())).unwrap();
        assert!((f.pj_per_byte - 80.0).abs() < 1e-9);
    }
}
