//! The file's settings: name, backends, devices, hardware, reps, cache, energy; then its
//! points (`expand`). Every refusal names the file, line and field.

use super::expand::{Builder, RunCtx};
use super::schema::{ExperimentFile, NameOrNumber};
use super::{BackendChoice, DEFAULT_MAX_POINTS, DeviceChoice, Experiment, Point};
use crate::backend::CacheMode;
use crate::error::ConfigError;
use crate::hardware::{self, HardwareProfile};
use crate::registry::{self, KERNELS, Kernel};
use crate::split::SplitKind;
use std::path::Path;

type Spanned<T> = serde_saphyr::Spanned<T>;

impl Builder<'_> {
    pub(super) fn build(
        &self,
        path: &Path,
        spec: ExperimentFile,
    ) -> Result<Experiment, ConfigError> {
        let name = self.name(&spec)?;
        let backends = self.backends(&spec)?;
        let devices = self.devices(&spec)?;
        let virtual_devices = spec.virtual_devices.as_ref().is_some_and(|v| v.value);
        if virtual_devices && !matches!(devices, DeviceChoice::Count(_)) {
            let l = &spec.virtual_devices.as_ref().expect("set").referenced;
            return Err(self.err(
                l.line(),
                l.column(),
                "virtual",
                "virtual: true places `devices: N` logical devices on device 0; give devices a count (e.g. devices: 4)",
            ));
        }
        // The number of devices a split spreads over, when the file alone says it.
        let device_count = match &devices {
            DeviceChoice::Count(n) => Some(*n),
            DeviceChoice::Indices(v) => Some(v.len()),
            DeviceChoice::All => None,
        };

        let hardware = self.hardware(path, &spec)?;
        let bounded =
            |f: &Option<Spanned<u64>>, field: &str, default: u64, min: u64, max: u64| match f {
                None => Ok(default),
                Some(s) if s.value >= min && s.value <= max => Ok(s.value),
                Some(s) => Err(self.err(
                    s.referenced.line(),
                    s.referenced.column(),
                    field,
                    format!("{} is out of range ({min}..={max})", s.value),
                )),
            };
        let warmup = bounded(&spec.warmup, "warmup", 5, 0, 100_000)? as usize;
        let reps = bounded(&spec.reps, "reps", 50, 1, 1_000_000)? as usize;
        let seed = spec.seed.as_ref().map_or(0, |s| s.value);
        let cache = spec.cache.as_ref().map_or(CacheMode::Cold, |c| c.value);
        let energy = spec
            .energy
            .as_ref()
            .map_or(crate::energy::EnergyMode::Auto, |e| e.value);
        if energy == crate::energy::EnergyMode::Model
            && hardware.as_ref().and_then(|h| h.energy.as_ref()).is_none()
        {
            let l = &spec.energy.as_ref().expect("set").referenced;
            return Err(self.err(
                l.line(),
                l.column(),
                "energy",
                "energy: model needs `hardware:` naming a profile with energy constants",
            ));
        }

        let points = self.points(&spec, seed, device_count)?;
        Ok(Experiment {
            file: path.to_path_buf(),
            source: self.source.to_string(),
            name,
            backends,
            devices,
            devices_line: spec.devices.as_ref().map_or(0, |d| d.referenced.line()),
            virtual_devices,
            hardware,
            warmup,
            reps,
            seed,
            cache,
            energy,
            energy_line: spec.energy.as_ref().map_or(0, |e| e.referenced.line()),
            points,
        })
    }

    /// `name:` names the results folder: letters, digits, '-', '_' and '.' only.
    fn name(&self, spec: &ExperimentFile) -> Result<String, ConfigError> {
        let name = spec.name.value.trim().to_string();
        let safe = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !name.starts_with('.');
        if !safe {
            let l = &spec.name.referenced;
            return Err(self.err(
                l.line(),
                l.column(),
                "name",
                "use letters, digits, '-', '_' or '.' (it names the results folder)",
            ));
        }

        Ok(name)
    }

    /// `kernel:` of run `r`, looked up in the registry.
    fn kernel(&self, r: usize, f: &Spanned<String>) -> Result<Kernel, ConfigError> {
        Kernel::from_name(&f.value).ok_or_else(|| {
            let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
            let hint = crate::error::nearest(&f.value, &names)
                .map_or(String::new(), |n| format!("did you mean {n}? "));
            self.err(
                f.referenced.line(),
                f.referenced.column(),
                format!("runs[{r}].kernel"),
                format!(
                    "unknown kernel '{}' ({hint}expected {})",
                    f.value,
                    registry::one_of(names)
                ),
            )
        })
    }

    fn backends(&self, spec: &ExperimentFile) -> Result<BackendChoice, ConfigError> {
        let backends =
            match &spec.backends {
                None => BackendChoice::Auto,
                Some(b) => {
                    let l = &b.referenced;
                    let v = &b.value.values;
                    if v.len() == 1 && (v[0] == "auto" || v[0] == "all") {
                        if v[0] == "auto" {
                            BackendChoice::Auto
                        } else {
                            BackendChoice::All
                        }
                    } else {
                        for n in v {
                            if !registry::is_backend(n) {
                                return Err(self.err(l.line(), l.column(), "backends", format!(
                                "unknown backend '{n}' (expected auto, all, or a list of {})",
                                registry::one_of(registry::backend_names()))));
                            }
                        }
                        BackendChoice::Named(v.clone())
                    }
                }
            };

        Ok(backends)
    }

    fn devices(&self, spec: &ExperimentFile) -> Result<DeviceChoice, ConfigError> {
        let devices = match &spec.devices {
            None => DeviceChoice::Indices(vec![0]),
            Some(d) => {
                let l = &d.referenced;
                let bad = |m: &str| self.err(l.line(), l.column(), "devices", m.to_string());
                match (d.value.was_list, d.value.values.as_slice()) {
                    (false, [NameOrNumber::Name(s)]) if s == "all" => DeviceChoice::All,
                    (false, [NameOrNumber::Number(0)]) => {
                        return Err(bad("a device count must be at least 1"));
                    }
                    (false, [NameOrNumber::Number(n)]) if *n <= 4096 => {
                        DeviceChoice::Count(*n as usize)
                    }
                    (true, items) => {
                        let mut idx = Vec::new();
                        for it in items {
                            match it {
                                NameOrNumber::Number(n)
                                    if *n <= 4096 && !idx.contains(&(*n as usize)) =>
                                {
                                    idx.push(*n as usize)
                                }
                                NameOrNumber::Number(n) if *n <= 4096 => {
                                    return Err(bad(&format!("device {n} is listed twice")));
                                }
                                _ => {
                                    return Err(bad(
                                        "a list of devices holds device indices (0, 1, ...)",
                                    ));
                                }
                            }
                        }
                        DeviceChoice::Indices(idx)
                    }
                    _ => return Err(bad("expected a list of device indices, a count, or all")),
                }
            }
        };

        Ok(devices)
    }

    fn hardware(
        &self,
        path: &Path,
        spec: &ExperimentFile,
    ) -> Result<Option<HardwareProfile>, ConfigError> {
        let hardware = match &spec.hardware {
            None => None,
            Some(h) => {
                let l = &h.referenced;
                let folder = path.parent().unwrap_or(Path::new("."));
                match hardware::find(folder, &h.value) {
                    Ok(p) => Some(p),
                    Err(Ok(missing)) => {
                        return Err(self.err(l.line(), l.column(), "hardware", missing));
                    }
                    Err(Err(bad_file)) => return Err(bad_file),
                }
            }
        };

        Ok(hardware)
    }

    /// Every run's points, counted before they are expanded (a sweep over `max_points:` is
    /// refused), each checked against the device count where the file gives it.
    fn points(
        &self,
        spec: &ExperimentFile,
        seed: u64,
        device_count: Option<usize>,
    ) -> Result<Vec<Point>, ConfigError> {
        let max_points = spec
            .max_points
            .as_ref()
            .map_or(DEFAULT_MAX_POINTS, |m| m.value);
        if spec.runs.value.is_empty() {
            let l = &spec.runs.referenced;
            return Err(self.err(
                l.line(),
                l.column(),
                "runs",
                "no runs: list at least one kernel to run",
            ));
        }
        let mut points = Vec::new();
        let mut expected: u64 = 0;
        for (r, run) in spec.runs.value.iter().enumerate() {
            let ctx = RunCtx {
                b: self,
                index: r,
                spec: &run.value,
                line: run.value.kernel.referenced.line(),
                kernel: self.kernel(r, &run.value.kernel)?,
            };
            // Counted from the axes' lengths before anything is expanded.
            let (count, axes) = ctx.sweep_size();
            expected = expected.saturating_add(count);
            if expected > max_points {
                return Err(ctx.err_run(
                    "kernel",
                    format!(
                        "this run expands to {count} points ({axes}){}, over the limit of {max_points}: narrow the sweep, or raise the limit with max_points: N",
                        if expected > count {
                            format!(", {expected} in the file so far")
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            // The run's split axis, outside the kernel's own (expand refuses it where the
            // kernel declares none; validate below refuses a split the kernel lacks).
            let split_axis = crate::workload::axes::split(&[]);
            let splits: Vec<SplitKind> = ctx.values(&split_axis, ctx.kernel.name())?;
            let imps = ctx.impls()?;
            for workload in ctx.expand(seed, points.len())? {
                if let Some(n) = device_count
                    && let Err(msg) = ctx.kernel.check_devices(n)
                {
                    return Err(ctx.err_run("kernel", msg));
                }
                for &split in &splits {
                    if let Some(n) = device_count {
                        crate::split::validate(&workload, split, n).map_err(|msg| {
                            match &run.value.split {
                                Some(f) => ctx.err_at(f, "split", msg),
                                None => ctx.err_run("split", msg),
                            }
                        })?;
                    }
                    // Implementations innermost: a point's neighbours share its inputs.
                    for &imp in &imps {
                        points.push(Point {
                            index: points.len(),
                            run: r,
                            line: ctx.line,
                            workload: workload.clone(),
                            split,
                            imp,
                        });
                    }
                }
            }
        }
        Ok(points)
    }
}
