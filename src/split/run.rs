//! Running a split point: prepare every shard on its device, time the shards (at the same
//! time on distinct devices, one after another on virtual ones), combine their outputs, and
//! run the same point on one device for the scaling and the exactness comparison.

use super::{Plan, compare_outputs};
use crate::backend::{Backend, CacheMode, Gathered, How, Prepared};
use crate::report::{CombineOut, MultiDevice, OneDeviceOut, ShardOut, TimeStats};
use crate::workload::{TensorSet, Workload};
use anyhow::Context;
use std::time::Instant;

/// Where the logical devices of a run live.
#[derive(Clone, Debug)]
pub struct DeviceSet {
    /// physical[i]: the backend device that logical device i runs on.
    pub physical: Vec<usize>,
    /// Several logical devices on one physical device.
    pub virtual_devices: bool,
    /// Logical device i is rank i of a launched run (`cluster`), each on its own host's
    /// device `physical[i]`.
    pub ranks: bool,
}

impl DeviceSet {
    pub fn len(&self) -> usize {
        self.physical.len()
    }

    pub fn is_empty(&self) -> bool {
        self.physical.is_empty()
    }

    /// `0+1+2+3`: what a result line names the set by.
    pub fn label(&self) -> String {
        if self.ranks {
            return (0..self.len())
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("+");
        }
        if self.virtual_devices {
            format!("{}x{}", self.physical[0], self.physical.len())
        } else {
            self.physical
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("+")
        }
    }

    /// Shards may run at the same time only on distinct physical devices (ranks always
    /// run at once: each is its own process).
    pub fn concurrent(&self) -> bool {
        if self.ranks {
            return true;
        }
        let mut seen = self.physical.clone();
        seen.sort_unstable();
        seen.dedup();
        !self.virtual_devices && seen.len() == self.physical.len()
    }
}

pub struct Settings {
    pub warmup: usize,
    pub reps: usize,
    pub cache: CacheMode,
    /// The implementation every shard, and the one-device run, is built with.
    pub imp: &'static str,
}

impl Settings {
    fn how(&self) -> How {
        How {
            imp: self.imp,
            cache: self.cache,
        }
    }
}

/// What a split point produced: the combined outputs (to check against the oracle) and the
/// figures of the result line.
pub struct SplitOutcome {
    pub outputs: TensorSet,
    pub end_to_end: TimeStats,
    pub multi: MultiDevice,
}

/// Combines timed at most this many times: a combine moves the (small) outputs, and every
/// host-staged read-back allocates.
const COMBINE_REPS: usize = 10;

/// Prepare every shard, time them, combine their outputs, and time the same point on one
/// device: the result line's `multi` section.
pub fn run_split(
    backend: &dyn Backend,
    devices: &DeviceSet,
    parent: &Workload,
    parent_inputs: &TensorSet,
    plan: &Plan,
    s: &Settings,
) -> anyhow::Result<SplitOutcome> {
    let concurrent = devices.concurrent();
    let mut prepared = prepare_shards(backend, devices, plan, s)?;
    let times = time_shards(&mut prepared, concurrent, s)?;
    let gathered = backend.gather(&mut prepared, plan, parent, combine_reps(s.reps))?;
    drop(prepared);
    finish(
        backend,
        devices,
        parent,
        parent_inputs,
        plan,
        s,
        times,
        gathered,
    )
}

/// How many times the combine is timed.
pub(super) fn combine_reps(reps: usize) -> usize {
    COMBINE_REPS.min(reps).max(1)
}

/// From the shards' rep times and gathered outputs: the combine, the one-device baseline
/// and the figures (wherever the shards ran: threads of this process, or ranks).
#[allow(clippy::too_many_arguments)]
pub(super) fn finish(
    backend: &dyn Backend,
    devices: &DeviceSet,
    parent: &Workload,
    parent_inputs: &TensorSet,
    plan: &Plan,
    s: &Settings,
    times: Vec<Vec<f64>>,
    gathered: Gathered,
) -> anyhow::Result<SplitOutcome> {
    let concurrent = devices.concurrent();
    for (t, shard) in times.iter().zip(&plan.shards) {
        anyhow::ensure!(
            t.len() == s.reps,
            "shard {} returned {} timings for {} reps",
            shard.device,
            t.len(),
            s.reps
        );
    }
    let c = combine(gathered, plan, parent)?;

    // End to end, per rep: the slowest shard (at once) or the sum of shards (in turn), plus
    // the combine's median.
    let e2e: Vec<f64> = (0..s.reps)
        .map(|r| {
            let shard_part = if concurrent {
                times.iter().map(|t| t[r]).fold(0.0, f64::max)
            } else {
                times.iter().map(|t| t[r]).sum()
            };
            shard_part + c.out.time_s.median
        })
        .collect();
    let end_to_end = TimeStats::from_samples(&e2e).context("no end-to-end timing")?;
    let shards = shard_results(devices, plan, &times, &c.shard_outputs);
    let shard_bytes: u64 = shards.iter().map(|s| s.bytes).sum();
    let baseline = one_device(backend, devices, parent, parent_inputs, s)?;
    let (one_device, vs_one_device) = match baseline {
        Some((o, out)) => {
            let tolerance = plan.kind.one_device_tolerance(parent.math());
            let vs = compare_outputs(tolerance, &c.outputs, &out);
            (Some(o), Some(vs))
        }
        None => (None, None),
    };
    let n = devices.len() as f64;
    let scaling_efficiency = one_device
        .as_ref()
        .map(|o| o.time_s.median / (n * end_to_end.median))
        .filter(|x| x.is_finite());
    let idle = devices.len() - plan.shards.len();
    let mut note = if devices.ranks {
        "shards ran at once, one rank (process) per device, started together by a message from rank 0; end-to-end = slowest shard per rep + combine median".to_string()
    } else if concurrent {
        "shards ran at once, one thread per device; end-to-end = slowest shard per rep + combine median".to_string()
    } else {
        "virtual devices share one device, so shards ran one after another; end-to-end = sum of shards per rep + combine median".to_string()
    };
    if idle > 0 {
        note.push_str(&format!("; {idle} device(s) had no work"));
    }
    if one_device.is_none() {
        note.push_str("; the point does not fit one device, so no one-device baseline");
    }
    Ok(SplitOutcome {
        outputs: c.outputs,
        multi: MultiDevice {
            virtual_devices: devices.virtual_devices,
            concurrent,
            shards,
            combine: c.out,
            shard_bytes,
            aggregate_gbps: gbps(shard_bytes, end_to_end.median),
            one_device,
            scaling_efficiency,
            vs_one_device,
            note,
        },
        end_to_end,
    })
}

/// Every shard built on its device, with the shard named if one fails.
pub(super) fn prepare_shards<'b>(
    backend: &'b dyn Backend,
    devices: &DeviceSet,
    plan: &Plan,
    s: &Settings,
) -> anyhow::Result<Vec<Box<dyn Prepared + 'b>>> {
    let mut prepared: Vec<Box<dyn Prepared + 'b>> = Vec::new();
    for shard in &plan.shards {
        let phys = devices.physical[shard.device];
        prepared.push(
            backend
                .prepare(phys, &shard.workload, &shard.inputs, &s.how())
                .with_context(|| {
                    format!(
                        "shard {} ({}) on {}:{phys}",
                        shard.device,
                        crate::report::params_label(
                            shard.workload.kernel(),
                            &shard.workload.params_json()
                        ),
                        backend.name()
                    )
                })?,
        );
    }
    Ok(prepared)
}

/// Per-shard rep times. On distinct devices the shards run at once, one thread each,
/// released together; on virtual devices they share one device and run in turn.
pub(super) fn time_shards(
    prepared: &mut [Box<dyn Prepared + '_>],
    concurrent: bool,
    s: &Settings,
) -> anyhow::Result<Vec<Vec<f64>>> {
    if !(concurrent && prepared.len() > 1) {
        return prepared
            .iter_mut()
            .map(|p| p.run(s.warmup, s.reps))
            .collect();
    }
    let barrier = std::sync::Barrier::new(prepared.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = prepared
            .iter_mut()
            .map(|p| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    p.run(s.warmup, s.reps)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a shard's thread panicked"))?
            })
            .collect()
    })
}

/// The combined outputs, the shards' own outputs, and the combine's figures.
struct Combined {
    outputs: TensorSet,
    shard_outputs: Vec<TensorSet>,
    out: CombineOut,
}

/// The combine: the shards' outputs moved by a transport (host-staged, NCCL on cuda, or MPI
/// between ranks), then merged where the backend merged them (cuda: a sequence split on the
/// first device, timed with events) or on the host; both timed, the combine is their sum.
fn combine(gathered: Gathered, plan: &Plan, parent: &Workload) -> anyhow::Result<Combined> {
    let (outputs, merge_times, merge_on) = match gathered.merged {
        Some(m) => (m.outputs, m.times, m.on),
        None => {
            let mut merge_times = Vec::new();
            let mut combined = None;
            for _ in 0..gathered.times.len().max(1) {
                let t0 = Instant::now();
                combined = Some(plan.combine(parent, &gathered.outputs)?);
                merge_times.push(t0.elapsed().as_secs_f64());
            }
            (
                combined.context("no combine ran")?,
                merge_times,
                "host".into(),
            )
        }
    };
    let transport = TimeStats::from_samples(&gathered.times).context("no transport timing")?;
    let merge = TimeStats::from_samples(&merge_times).context("no merge timing")?;
    let time_s = TimeStats {
        median: transport.median + merge.median,
        min: transport.min + merge.min,
        max: transport.max + merge.max,
        ..Default::default()
    };
    let bytes = plan.combine_bytes();
    Ok(Combined {
        outputs,
        shard_outputs: gathered.outputs,
        out: CombineOut {
            method: gathered.method,
            gbps: gbps(bytes, transport.median),
            transport_s: transport,
            merge_s: merge,
            merge_on,
            bytes,
            dispatch_bytes: plan.dispatch_bytes,
            time_s,
        },
    })
}

/// Each shard's figures, and its own check against its own oracle, so a bad shard is named.
fn shard_results(
    devices: &DeviceSet,
    plan: &Plan,
    times: &[Vec<f64>],
    shard_outputs: &[TensorSet],
) -> Vec<ShardOut> {
    plan.shards
        .iter()
        .zip(times)
        .zip(shard_outputs)
        .map(|((shard, t), out)| {
            let stats = TimeStats::from_samples(t).unwrap_or(TimeStats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                ..Default::default()
            });
            let bytes = shard.workload.bytes();
            let check = shard.workload.oracle(&shard.inputs).check(out);
            ShardOut {
                device: shard.device,
                physical: devices.physical[shard.device],
                params: shard.workload.params_json(),
                bytes,
                gbps: gbps(bytes, stats.median),
                time_s: stats,
                rel_l2_err: Some(check.rel_l2_err).filter(|x| x.is_finite()),
            }
        })
        .collect()
}

/// The same point on the first device, when it fits there: the scaling baseline, and its
/// outputs for the exactness comparison.
fn one_device(
    backend: &dyn Backend,
    devices: &DeviceSet,
    parent: &Workload,
    parent_inputs: &TensorSet,
    s: &Settings,
) -> anyhow::Result<Option<(OneDeviceOut, TensorSet)>> {
    let first = devices.physical[0];
    let fits = backend.devices()[first]
        .memory_bytes
        .is_none_or(|m| backend.memory_needed(parent) <= m);
    if !fits {
        return Ok(None);
    }
    let mut p = backend
        .prepare(first, parent, parent_inputs, &s.how())
        .context("the one-device run of the same point")?;
    let t = p.run(s.warmup, s.reps)?;
    let out = p.read_outputs()?;
    let stats = TimeStats::from_samples(&t).context("one-device run: no timings")?;
    let o = OneDeviceOut {
        device: first,
        gbps: gbps(parent.bytes(), stats.median),
        time_s: stats,
    };
    Ok(Some((o, out)))
}

pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}
