//! Before a run: which backends and devices, and everything refused before anything runs
//! (points that cannot fit the host or a device, splits the device count cannot make, NVML
//! asked for where there is none, implementations that cover no point).

use super::{BackendChoice, ConfigError, DeviceChoice, Experiment, Point};
use crate::backend::{self, Backend, Probe};
use crate::report;
use crate::split::SplitKind;
use crate::split::run::DeviceSet;
use crate::workload::Workload;

/// A backend with the devices this run uses on it.
pub struct Selected {
    pub backend: Box<dyn Backend>,
    /// Why `auto` chose this backend over the others, when it did.
    pub chosen: Option<String>,
    /// The run's logical devices: devices[i] is the physical device logical device i is on
    /// (all the same one with `virtual: true`).
    pub devices: Vec<usize>,
    pub virtual_devices: bool,
    /// Under a launcher: the device each rank runs on (its index on its host, and
    /// `host: name (index)`), in rank order.
    pub rank_devices: Vec<(usize, String)>,
}

impl Selected {
    /// How many devices the run spreads a split over: its ranks under a launcher (each
    /// holds one device), else its logical devices.
    pub fn device_count(&self) -> usize {
        crate::cluster::world().map_or(self.devices.len(), |w| w.size)
    }

    /// Each physical device once, in order: where one-device points run.
    pub fn physical_devices(&self) -> Vec<usize> {
        let mut v = Vec::new();
        for &d in &self.devices {
            if !v.contains(&d) {
                v.push(d);
            }
        }
        v
    }

    pub fn device_set(&self) -> DeviceSet {
        if !self.rank_devices.is_empty() {
            return DeviceSet {
                physical: self.rank_devices.iter().map(|d| d.0).collect(),
                virtual_devices: false,
                ranks: true,
            };
        }
        DeviceSet {
            physical: self.devices.clone(),
            virtual_devices: self.virtual_devices,
            ranks: false,
        }
    }
}

pub fn parse_backend_choice(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "all" => Ok(BackendChoice::All),
        n if crate::registry::is_backend(n) => Ok(BackendChoice::Named(vec![n.to_string()])),
        n => Err(format!(
            "unknown backend '{n}' (expected auto, all, {})",
            crate::registry::one_of(crate::registry::backend_names())
        )),
    }
}

/// Resolve backends and devices, with every unavailable one explained. (About 100 lines:
/// one pass over the choice, each refusal worded where its reason is known.)
pub fn select(exp: &Experiment, choice: &BackendChoice) -> Result<Vec<Selected>, ConfigError> {
    let file = exp.file.display().to_string();
    let mut available = Vec::new();
    let mut reasons = Vec::new();
    for p in backend::probe_all() {
        match p {
            Probe::Available(b) => available.push(b),
            Probe::Unavailable { name, reason } => reasons.push((name, reason)),
        }
    }
    let mut why_auto = None;
    let chosen: Vec<Box<dyn Backend>> = match choice {
        // The first backend with a real device: a GPU, else the CPU (never an emulated GPU).
        BackendChoice::Auto => {
            let mut passed: Vec<String> = reasons
                .iter()
                .map(|(n, why)| format!("{n} unavailable ({why})"))
                .collect();
            let mut pick = Vec::new();
            for b in available {
                if b.devices().iter().any(|d| !d.emulated) {
                    pick.push(b);
                    break;
                }
                let names: Vec<&str> = b.devices().iter().map(|d| d.name.as_str()).collect();
                passed.push(format!(
                    "{} has only an emulated GPU ({})",
                    b.name(),
                    names.join(", ")
                ));
            }
            if !passed.is_empty() {
                why_auto = Some(format!("auto: {}", passed.join("; ")));
            }
            pick
        }
        BackendChoice::All => available,
        BackendChoice::Named(names) => {
            let mut out = Vec::new();
            for n in names {
                match available.iter().position(|b| b.name() == n) {
                    Some(i) => out.push(available.remove(i)),
                    None => {
                        let why = reasons
                            .iter()
                            .find(|(r, _)| r == n)
                            .map_or("not known".to_string(), |(_, w)| w.clone());
                        return Err(ConfigError::whole_file(
                            &file,
                            format!("backend {n}: unavailable ({why}); try --backend auto"),
                        ));
                    }
                }
            }
            out
        }
    };
    let mut selected = Vec::new();
    for b in chosen {
        let n = b.devices().len();
        let refuse = |msg: String| {
            if exp.devices_line > 0 {
                ConfigError::at(&file, &exp.source, exp.devices_line, 0, "devices", msg)
            } else {
                ConfigError::whole_file(&file, msg)
            }
        };
        if let Some(w) = crate::cluster::world() {
            let devices = rank_device(exp, w, b.name(), n).map_err(refuse)?;
            selected.push(Selected {
                backend: b,
                chosen: why_auto.clone(),
                devices,
                virtual_devices: false,
                rank_devices: Vec::new(),
            });
            continue;
        }
        let devices = match &exp.devices {
            DeviceChoice::Count(c) if exp.virtual_devices => vec![0; *c],
            DeviceChoice::All => (0..n).collect(),
            DeviceChoice::Count(c) => (0..*c).collect(),
            DeviceChoice::Indices(v) => v.clone(),
        };
        if let Some(bad) = devices.iter().find(|&&d| d >= n) {
            let msg = format!(
                "{} has {n} device(s); device {bad} does not exist (see `decodelab devices`)",
                b.name()
            );
            return Err(refuse(msg));
        }
        selected.push(Selected {
            backend: b,
            chosen: why_auto.clone(),
            devices,
            virtual_devices: exp.virtual_devices,
            rank_devices: Vec::new(),
        });
    }
    Ok(selected)
}

/// Under a launcher every rank is one device of the run: its local rank's device on its
/// host (local rank modulo the devices it sees, so one GPU per rank as nccl-tests does).
fn rank_device(
    exp: &Experiment,
    w: &crate::cluster::World,
    backend: &str,
    n: usize,
) -> Result<Vec<usize>, String> {
    let ranks = w.size;
    if exp.virtual_devices {
        return Err(format!(
            "virtual: true shares one device among the logical devices of one process; under a \
             launcher ({}, {ranks} ranks) every rank is a device: drop virtual:",
            w.launcher
        ));
    }
    match &exp.devices {
        DeviceChoice::All => {}
        DeviceChoice::Count(c) if *c == ranks => {}
        other => {
            let said = match other {
                DeviceChoice::Count(c) => c.to_string(),
                DeviceChoice::Indices(v) => format!("{v:?}"),
                DeviceChoice::All => unreachable!("accepted above"),
            };
            return Err(format!(
                "devices: {said}, but {} started {ranks} ranks, and under a launcher the run's \
                 devices are its ranks (one device each); write devices: all (or {ranks}), or \
                 start as many ranks as devices",
                w.launcher
            ));
        }
    }
    if n == 0 {
        return Err(format!("rank {}: {backend} has no device here", w.rank));
    }
    Ok(vec![w.local_rank % n])
}

/// Host memory a point needs at its peak: its inputs, outputs and reference
/// (`Workload::host_bytes`); a split also holds its shards' inputs, sliced from the point's.
pub fn host_bytes_needed(p: &Point) -> u64 {
    let w = &p.workload;
    if p.split == SplitKind::None {
        w.host_bytes()
    } else {
        w.host_bytes() + w.input_bytes() + w.output_bytes()
    }
}

/// Refuse, before anything runs, a point that cannot fit the host's memory or a device's.
pub fn check_fit(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    check_fit_host(exp, crate::backend::cpu::mem_available_bytes())?;
    check_fit_devices(exp, selected)
}

/// Refuse a point whose host memory (`host_bytes_needed`) exceeds `available` bytes.
pub fn check_fit_host(exp: &Experiment, available: Option<u64>) -> Result<(), ConfigError> {
    let Some(mem) = available else {
        return Ok(());
    };
    let file = exp.file.display().to_string();
    for p in &exp.points {
        let need = host_bytes_needed(p);
        if need > mem {
            let msg = format!(
                "point {} ({}) needs {} of host memory (inputs, outputs and the f64 reference); this machine has {} available",
                p.index,
                report::params_label(p.workload.kernel(), &p.workload.params_json()),
                report::human_bytes(need),
                report::human_bytes(mem)
            );
            return Err(ConfigError::at(
                &file,
                &exp.source,
                p.line,
                0,
                format!("runs[{}]", p.run),
                msg,
            ));
        }
    }
    Ok(())
}

fn check_fit_devices(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    let file = exp.file.display().to_string();
    // A refusal at a point's run, naming one of its fields.
    let at_run = |p: &Point, field: &str, msg: String| {
        ConfigError::at(
            &file,
            &exp.source,
            p.line,
            0,
            format!("runs[{}]{field}", p.run),
            msg,
        )
    };
    for s in selected {
        let n = s.device_count();
        // A point no implementation on the backend covers (mxfp4 on a GPU backend). A named
        // implementation that does not cover a point skips it there (`impl: all` names
        // tuned ones that take only some shapes); the run says so.
        for p in exp
            .points
            .iter()
            .filter(|p| !matches!(p.workload, Workload::Link(_)) && p.imp.is_none())
        {
            let b = s.backend.as_ref();
            if let Err(why) = crate::backend::best_impl(b, &p.workload).map(|_| ()) {
                let msg = format!(
                    "point {} on {}: {why} (choose another backend with --backend or backends:)",
                    p.index,
                    b.name()
                );
                return Err(at_run(p, "", msg));
            }
        }
        // A split the file could not check (devices: all) is checked now the count is known.
        for p in exp.points.iter().filter(|p| p.split != SplitKind::None) {
            if let Err(msg) = crate::split::validate(&p.workload, p.split, n) {
                let msg = format!("on {} ({n} devices): {msg}", s.backend.name());
                return Err(at_run(p, ".split", msg));
            }
        }
        if let Some((p, msg)) = exp
            .points
            .iter()
            .find_map(|p| p.workload.kind().check_devices(n).err().map(|m| (p, m)))
        {
            let msg = format!("on {}: {msg}", s.backend.name());
            return Err(at_run(p, ".kernel", msg));
        }
        if s.backend.name() == "cuda"
            && let Some(p) = exp.points.iter().find(|p| p.split != SplitKind::None)
            && let Err(msg) = crate::backend::cuda::nccl::require()
        {
            return Err(at_run(p, ".split", msg));
        }
        // A backend in host memory (cpu) needs what the host check already counted.
        if s.backend.shares_host_memory() {
            continue;
        }
        for d in s.physical_devices() {
            let Some(mem) = s.backend.devices()[d].memory_bytes else {
                continue;
            };
            for p in &exp.points {
                let whole = s.backend.memory_needed(&p.workload);
                // A split spreads the point over the devices; virtual devices hold every
                // shard at once on this one device.
                let share = crate::split::per_device_bytes(&p.workload, p.split, n, whole);
                let need = if s.virtual_devices && p.split != SplitKind::None {
                    share.saturating_mul(n as u64)
                } else {
                    share
                };
                if need > mem {
                    let msg = format!(
                        "point {} ({}) needs {} on {}:{d}, which has {}",
                        p.index,
                        report::params_label(p.workload.kernel(), &p.workload.params_json()),
                        report::human_bytes(need),
                        s.backend.name(),
                        report::human_bytes(mem)
                    );
                    return Err(at_run(p, "", msg));
                }
            }
        }
    }
    Ok(())
}

/// The meters of one device: measured (NVML) and modelled. None: not asked for by
/// `energy:`; Err: asked for, with the reason it is absent (or not used for this point).
pub struct Meters {
    pub measured: Option<Result<crate::energy::nvml::NvmlMeter, String>>,
    pub modelled: Option<Result<crate::energy::ModelMeter, String>>,
}

/// `energy: auto` measures with NVML only points that move at least this much per step:
/// the counter updates every 20-100 ms and a window loops the step for a second, so a small
/// step's window is mostly launch gaps, and its three windows cost seconds per point.
pub const NVML_MIN_STEP_BYTES: u64 = 256 << 20;

/// The meters `exp.energy` asks for on `device`, for `workload` where one is given.
pub fn meters_for(
    exp: &Experiment,
    device: &crate::backend::DeviceInfo,
    workload: Option<&Workload>,
) -> Meters {
    use crate::energy::EnergyMode::*;
    let small = workload
        .map(Workload::bytes)
        .filter(|&b| b < NVML_MIN_STEP_BYTES);
    let measured = match (exp.energy, &device.pci_bus_id, small) {
        (Model | Off, _, _) => None,
        (Auto | Nvml, None, _) => Some(Err("no NVML for this device (no PCI bus id)".into())),
        (Auto, Some(_), Some(bytes)) => Some(Err(format!(
            "not measured: a step moves {} (energy: auto measures steps of {} or more; energy: nvml measures every point)",
            report::human_bytes(bytes),
            report::human_bytes(NVML_MIN_STEP_BYTES)
        ))),
        (Auto | Nvml, Some(bus), _) => Some(crate::energy::nvml::NvmlMeter::for_bus(bus)),
    };
    let modelled = match exp.energy {
        Auto | Model => Some(match &exp.hardware {
            Some(h) => crate::energy::ModelMeter::new(h)
                .ok_or_else(|| format!("profile {} has no energy constants", h.id)),
            None => Err("no hardware profile (hardware:) to model energy with".into()),
        }),
        Nvml | Off => None,
    };
    Meters { measured, modelled }
}

/// `energy: nvml` is refused before anything runs on a device NVML cannot measure.
pub fn check_energy(exp: &Experiment, selected: &[Selected]) -> Result<(), ConfigError> {
    if exp.energy != crate::energy::EnergyMode::Nvml {
        return Ok(());
    }
    let file = exp.file.display().to_string();
    for s in selected {
        for &d in &s.devices {
            let dev = &s.backend.devices()[d];
            if let Some(Err(why)) = meters_for(exp, dev, None).measured {
                let msg = format!(
                    "energy: nvml on {}:{d} ({}): {why}; use energy: auto or model",
                    s.backend.name(),
                    dev.name
                );
                return Err(if exp.energy_line > 0 {
                    ConfigError::at(&file, &exp.source, exp.energy_line, 0, "energy", msg)
                } else {
                    ConfigError::whole_file(&file, msg)
                });
            }
        }
    }
    Ok(())
}
