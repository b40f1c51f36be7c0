//! Experiments: the YAML schema, validation and sweep expansion, and the runner.
//! Everything a file can get wrong is refused here, before anything runs.

pub mod filter;
mod jobs;
pub mod preflight;
pub mod runner;
pub mod schema;

pub use crate::error::ConfigError;
use crate::hardware;
pub use crate::hardware::HardwareProfile;

use crate::backend::CacheMode;
use crate::split::SplitKind;
use crate::workload::{
    Attention, DType, ExpertGemv, KvDecode, Lengths, Math, Routing, Stream, StreamOp, Workload,
};
use crate::workload::{Direction, Link};
use schema::{ExperimentFile, Field, LengthsSpec, NameOrNumber, RoutingSpec, RunSpec};
use std::path::{Path, PathBuf};

/// An experiment file larger than this is not an experiment.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// A file may expand to at most this many points unless it says `max_points:`: a sweep of
/// millions is a typo, refused before it is expanded.
pub const DEFAULT_MAX_POINTS: u64 = 100_000;
/// Limits that keep every size computation far from overflow; larger is refused by name.
const MAX_COUNT: u64 = 1 << 24;
const MAX_BYTES: u64 = 1 << 44;
/// No point may hold more elements than this (16 TiB of fp8); the device-fit check is finer.
const MAX_ELEMENTS: u128 = 1 << 44;

#[derive(Clone, Debug, PartialEq)]
pub enum BackendChoice {
    /// The best available backend.
    Auto,
    /// Every available backend.
    All,
    Named(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeviceChoice {
    Indices(Vec<usize>),
    All,
    /// The first n devices.
    Count(usize),
}

#[derive(Clone, Debug)]
pub struct Point {
    /// Position in the expanded sweep: stable for a given file, so `--resume` can find it.
    pub index: usize,
    /// Which entry of `runs:`, and its line.
    pub run: usize,
    pub line: u64,
    pub workload: Workload,
    /// How the point is spread over the run's devices.
    pub split: SplitKind,
    /// The implementation it runs with; None: the best that covers it on each backend.
    pub imp: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    pub file: PathBuf,
    pub source: String,
    pub name: String,
    pub backends: BackendChoice,
    pub devices: DeviceChoice,
    /// Line of `devices:` (0 when defaulted), for refusals made once backends are known.
    pub devices_line: u64,
    /// `virtual: true`: the logical devices all live on device 0.
    pub virtual_devices: bool,
    pub hardware: Option<HardwareProfile>,
    pub warmup: usize,
    pub reps: usize,
    pub seed: u64,
    pub cache: CacheMode,
    pub energy: crate::energy::EnergyMode,
    /// Line of `energy:` (0 when defaulted).
    pub energy_line: u64,
    pub points: Vec<Point>,
}

/// Settings given on the command line over the file's: rerun a few points fast.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub reps: Option<usize>,
    pub warmup: Option<usize>,
    pub energy: Option<crate::energy::EnergyMode>,
    /// `--only`: the points to keep (see `filter`); several keep what any keeps.
    pub only: Vec<String>,
}

impl Experiment {
    /// Apply command-line overrides; a bad one is refused like a bad file.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let file = self.file.display().to_string();
        let refuse = |m: String| ConfigError::whole_file(&file, m);
        if let Some(r) = o.reps {
            if !(1..=1_000_000).contains(&r) {
                return Err(refuse(format!("--reps {r} is out of range (1..=1000000)")));
            }
            self.reps = r;
        }
        if let Some(w) = o.warmup {
            if w > 100_000 {
                return Err(refuse(format!("--warmup {w} is out of range (0..=100000)")));
            }
            self.warmup = w;
        }
        if let Some(e) = o.energy {
            if e == crate::energy::EnergyMode::Model
                && self
                    .hardware
                    .as_ref()
                    .and_then(|h| h.energy.as_ref())
                    .is_none()
            {
                return Err(refuse(
                    "--energy model needs the file's `hardware:` to name a profile with energy constants"
                        .into(),
                ));
            }
            self.energy = e;
            self.energy_line = 0;
        }
        if !o.only.is_empty() {
            let filters = o
                .only
                .iter()
                .map(|t| filter::Filter::parse(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(refuse)?;
            let points = std::mem::take(&mut self.points);
            self.points = filter::apply(&filters, points).map_err(refuse)?;
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Experiment, ConfigError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| ConfigError::whole_file(&file, format!("cannot read: {e}")))?;
        Self::parse(path, &bytes)
    }

    /// Parse and validate an experiment from bytes (`path` names it and anchors `hardware:`).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Experiment, ConfigError> {
        let file = path.display().to_string();
        if bytes.len() > MAX_FILE_BYTES {
            return Err(ConfigError::whole_file(
                &file,
                format!(
                    "{} bytes is too large for an experiment file (limit {} bytes)",
                    bytes.len(),
                    MAX_FILE_BYTES
                ),
            ));
        }
        let source = std::str::from_utf8(bytes).map_err(|e| {
            ConfigError::whole_file(
                &file,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            )
        })?;
        let spec: ExperimentFile = serde_saphyr::from_str(source)
            .map_err(|e| ConfigError::from_yaml(&file, source, &e))?;
        Builder {
            file: &file,
            source,
        }
        .build(path, spec)
    }
}

struct Builder<'a> {
    file: &'a str,
    source: &'a str,
}

type Spanned<T> = serde_saphyr::Spanned<T>;

impl Builder<'_> {
    fn err(
        &self,
        line: u64,
        col: u64,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.file, self.source, line, col, field, msg)
    }

    fn build(&self, path: &Path, spec: ExperimentFile) -> Result<Experiment, ConfigError> {
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

        let backends = match &spec.backends {
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
                        if !crate::backend::BACKEND_NAMES.contains(&n.as_str()) {
                            return Err(self.err(l.line(), l.column(), "backends", format!(
                                "unknown backend '{n}' (expected auto, all, or a list of cpu, wgpu, cuda)")));
                        }
                    }
                    BackendChoice::Named(v.clone())
                }
            }
        };

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
            let splits = ctx.optional(&run.value.split, SplitKind::None);
            let imps = ctx.impls()?;
            for workload in ctx.expand(seed, points.len())? {
                if workload.kernel() == "link" && device_count.is_some_and(|n| n < 2) {
                    return Err(ctx.err_run(
                        "kernel",
                        "link runs between pairs of devices: give devices: 2 or more (or virtual: true with a count)",
                    ));
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
}

/// Expansion of one entry of `runs:` into points.
struct RunCtx<'a> {
    b: &'a Builder<'a>,
    index: usize,
    spec: &'a RunSpec,
    line: u64,
}

/// Every combination of axis positions, first axis slowest.
fn product(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in dims {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..d).map(move |i| {
                    let mut p = prefix.clone();
                    p.push(i);
                    p
                })
            })
            .collect();
    }
    out
}

impl RunCtx<'_> {
    fn field(&self, name: &str) -> String {
        format!("runs[{}].{name}", self.index)
    }

    fn err_at<T>(&self, f: &Spanned<T>, name: &str, msg: impl Into<String>) -> ConfigError {
        self.b.err(
            f.referenced.line(),
            f.referenced.column(),
            self.field(name),
            msg,
        )
    }

    fn err_run(&self, name: &str, msg: impl Into<String>) -> ConfigError {
        self.b.err(self.line, 0, self.field(name), msg)
    }

    fn required<T: Clone>(
        &self,
        f: &Field<T>,
        name: &str,
        kernel: &str,
    ) -> Result<Vec<T>, ConfigError> {
        f.as_ref()
            .map(|s| s.value.values.clone())
            .ok_or_else(|| self.err_run(name, format!("missing: {kernel} needs `{name}`")))
    }

    fn optional<T: Clone>(&self, f: &Field<T>, default: T) -> Vec<T> {
        f.as_ref().map_or(vec![default], |s| s.value.values.clone())
    }

    /// A required count: every value in 1..=max.
    fn count(
        &self,
        f: &Field<u64>,
        name: &str,
        kernel: &str,
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        let v = self.required(f, name, kernel)?;
        self.check_counts(f, name, &v, max)
    }

    fn count_or(
        &self,
        f: &Field<u64>,
        name: &str,
        default: u64,
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        let v = self.optional(f, default);
        self.check_counts(f, name, &v, max)
    }

    fn check_counts(
        &self,
        f: &Field<u64>,
        name: &str,
        v: &[u64],
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        for &x in v {
            if x == 0 || x > max {
                let msg = if x == 0 {
                    "must be at least 1 (got 0)".to_string()
                } else {
                    format!("{x} is larger than the limit {max}")
                };
                return Err(match f {
                    Some(s) => self.err_at(s, name, msg),
                    None => self.err_run(name, msg),
                });
            }
        }
        Ok(v.iter().map(|&x| x as usize).collect())
    }

    fn refuse_fields(&self, allowed: &[&str], kernel: &str) -> Result<(), ConfigError> {
        for (name, line) in self.spec.present_fields() {
            if !allowed.contains(&name) {
                return Err(self.b.err(
                    line,
                    0,
                    self.field(name),
                    format!(
                        "does not apply to kernel {kernel} (its fields: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How many points this run expands to, and the axes that multiply (`batch 10 x ...`).
    fn sweep_size(&self) -> (u64, String) {
        let kernel = self.spec.kernel.value.as_str();
        let mut count: u64 = 1;
        let mut parts = Vec::new();
        let mut axes = self.spec.axes();
        axes.sort_by_key(|&(_, line, _)| line); // as the file lists them
        for (name, _, n) in axes {
            let n = if name == "impl"
                && self
                    .spec
                    .imp
                    .as_ref()
                    .is_some_and(|f| f.value.values.iter().any(|v| v == "all"))
            {
                crate::backend::impl_names(kernel).len().max(n)
            } else {
                n
            };
            if n > 1 {
                parts.push(format!("{name} {n}"));
            }
            count = count.saturating_mul(n as u64);
        }
        let axes = if parts.is_empty() {
            "no sweep axis".into()
        } else {
            parts.join(" x ")
        };
        (count, axes)
    }

    /// `impl:` as a list of implementations (None: best), each a name some backend has.
    fn impls(&self) -> Result<Vec<Option<&'static str>>, ConfigError> {
        let kernel = self.spec.kernel.value.as_str();
        let known = crate::backend::impl_names(kernel);
        let Some(f) = &self.spec.imp else {
            return Ok(vec![None]);
        };
        let mut out = Vec::new();
        for name in &f.value.values {
            match name.as_str() {
                "best" => out.push(None),
                "all" => out.extend(known.iter().map(|&n| Some(n))),
                n => match known.iter().find(|&&k| k == n) {
                    Some(&k) => out.push(Some(k)),
                    None => {
                        return Err(self.err_at(
                            f,
                            "impl",
                            format!(
                                "no implementation '{n}' of {kernel} (known: {}; or best, all)",
                                known.join(", ")
                            ),
                        ));
                    }
                },
            }
        }
        out.dedup();
        Ok(out)
    }

    fn too_large(&self, elements: u128) -> Result<(), ConfigError> {
        if elements > MAX_ELEMENTS {
            return Err(self.err_run("kernel", format!("a point of this run holds {elements} elements, more than any device (limit {MAX_ELEMENTS})")));
        }
        Ok(())
    }

    fn expand(&self, seed: u64, first_index: usize) -> Result<Vec<Workload>, ConfigError> {
        let kernel = self.spec.kernel.value.as_str();
        let point_seed = |i: usize| {
            seed.wrapping_mul(1_000_003)
                .wrapping_add((first_index + i) as u64)
        };
        match kernel {
            "stream" => self.expand_stream(point_seed),
            "kv_decode" => self.expand_kv(point_seed),
            "expert_gemv" => self.expand_expert(point_seed),
            "link" => self.expand_link(point_seed),
            other => Err(self.err_at(
                &self.spec.kernel,
                "kernel",
                format!(
                    "unknown kernel '{other}' (expected stream, kv_decode, expert_gemv or link)"
                ),
            )),
        }
    }

    fn expand_stream(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        self.refuse_fields(&["split", "impl", "op", "bytes"], "stream")?;
        let s = self.spec;
        let ops = self.optional(&s.op, StreamOp::Read);
        let sizes = self.required(&s.bytes, "bytes", "stream")?;
        let bytes_field = s.bytes.as_ref().expect("required above");
        for sz in &sizes {
            if sz.0 < 4 || sz.0 % 4 != 0 || sz.0 > MAX_BYTES {
                return Err(self.err_at(bytes_field, "bytes", format!(
                    "{} bytes: stream moves whole u32 words, so bytes must be a positive multiple of 4 (at most {MAX_BYTES})", sz.0)));
            }
        }
        let mut out = Vec::new();
        for (i, ix) in product(&[ops.len(), sizes.len()]).into_iter().enumerate() {
            out.push(Workload::Stream(Stream {
                op: ops[ix[0]],
                bytes: sizes[ix[1]].0,
                seed: seed(i),
            }));
        }
        Ok(out)
    }

    fn expand_link(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        self.refuse_fields(&["impl", "bytes", "direction"], "link")?;
        let s = self.spec;
        let directions = self.optional(&s.direction, Direction::OneWay);
        let sizes = self.required(&s.bytes, "bytes", "link")?;
        let bytes_field = s.bytes.as_ref().expect("required above");
        for sz in &sizes {
            if sz.0 < 4 || sz.0 % 4 != 0 || sz.0 > MAX_BYTES {
                return Err(self.err_at(bytes_field, "bytes", format!(
                    "{} bytes: link moves whole u32 words, so bytes must be a positive multiple of 4 (at most {MAX_BYTES})", sz.0)));
            }
        }
        Ok(product(&[directions.len(), sizes.len()])
            .into_iter()
            .enumerate()
            .map(|(i, ix)| {
                Workload::Link(Link {
                    bytes: sizes[ix[1]].0,
                    direction: directions[ix[0]],
                    seed: seed(i),
                })
            })
            .collect())
    }

    fn expand_kv(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let s = self.spec;
        let attention = self.optional(&s.attention, Attention::Gqa);
        if attention.len() > 1 {
            return Err(self.err_at(
                s.attention.as_ref().expect("a list"),
                "attention",
                "attention cannot be swept: write one run for gqa and one for mla",
            ));
        }
        let attention = attention[0];
        let common = [
            "split",
            "impl",
            "math",
            "attention",
            "batch",
            "q_heads",
            "context",
            "lengths",
            "page_size",
            "kv_dtype",
            "scale",
        ];
        let (own, kernel): (&[&str], _) = match attention {
            Attention::Gqa => (&["kv_heads", "head_dim", "v_head_dim"], "kv_decode (gqa)"),
            Attention::Mla => (&["kv_lora_rank", "rope_dim"], "kv_decode (mla)"),
        };
        let allowed: Vec<&str> = common.iter().chain(own).copied().collect();
        self.refuse_fields(&allowed, kernel)?;

        let batch = self.count(&s.batch, "batch", kernel, MAX_COUNT)?;
        let q_heads = self.count(&s.q_heads, "q_heads", kernel, 1 << 16)?;
        let context = self.count(&s.context, "context", kernel, MAX_COUNT)?;
        let page_size = self.count_or(&s.page_size, "page_size", 16, 1 << 20)?;
        let lengths = self.optional(&s.lengths, LengthsSpec::Equal);
        let dtypes = self.optional(&s.kv_dtype, DType::Bf16);
        let maths = self.optional(&s.math, Math::F32);
        let scales: Vec<Option<f64>> = match &s.scale {
            None => vec![None],
            Some(f) => {
                for &x in &f.value.values {
                    if !(x.is_finite() && x > 0.0) {
                        return Err(self.err_at(
                            f,
                            "scale",
                            format!("{x} is not a positive finite number"),
                        ));
                    }
                }
                f.value.values.iter().map(|&x| Some(x)).collect()
            }
        };
        // (kv_heads, Dk, Dv) per head-shape combination.
        let shapes: Vec<(usize, usize, usize)> = match attention {
            Attention::Gqa => {
                let kvh = self.count(&s.kv_heads, "kv_heads", kernel, 1 << 16)?;
                let hd = self.count(&s.head_dim, "head_dim", kernel, 1 << 16)?;
                let vhd = match &s.v_head_dim {
                    None => vec![None],
                    Some(_) => self
                        .count(&s.v_head_dim, "v_head_dim", kernel, 1 << 16)?
                        .into_iter()
                        .map(Some)
                        .collect(),
                };
                product(&[kvh.len(), hd.len(), vhd.len()])
                    .into_iter()
                    .map(|ix| (kvh[ix[0]], hd[ix[1]], vhd[ix[2]].unwrap_or(hd[ix[1]])))
                    .collect()
            }
            Attention::Mla => {
                let rank = self.count_or(&s.kv_lora_rank, "kv_lora_rank", 512, 1 << 16)?;
                let rope = self.optional(&s.rope_dim, 64);
                product(&[rank.len(), rope.len()])
                    .into_iter()
                    .map(|ix| (1, rank[ix[0]] + rope[ix[1]] as usize, rank[ix[0]]))
                    .collect()
            }
        };

        let mut out = Vec::new();
        let dims = [
            batch.len(),
            q_heads.len(),
            shapes.len(),
            context.len(),
            lengths.len(),
            page_size.len(),
            dtypes.len(),
            scales.len(),
            maths.len(),
        ];
        for ix in product(&dims) {
            let (b, hq, (hkv, dk, dv), ctx) =
                (batch[ix[0]], q_heads[ix[1]], shapes[ix[2]], context[ix[3]]);
            let page = page_size[ix[5]];
            if hq % hkv != 0 {
                let f = s
                    .kv_heads
                    .as_ref()
                    .or(s.q_heads.as_ref())
                    .expect("gqa has kv_heads");
                return Err(self.err_at(f, "kv_heads", format!(
                    "q_heads ({hq}) is not a multiple of kv_heads ({hkv}): each KV head serves a whole group of query heads")));
            }
            let pages = (b as u128) * (ctx as u128).div_ceil(page as u128);
            self.too_large(
                pages * page as u128 * hkv as u128 * (dk + dv) as u128 + (b * hq * dk) as u128,
            )?;
            let lengths = match lengths[ix[4]] {
                LengthsSpec::Equal => Lengths::Equal,
                LengthsSpec::Random => Lengths::Random,
            };
            // The math axis is innermost and shares its neighbours' seed: f32 and bf16 of a
            // shape judge the same inputs.
            let point_seed = seed(out.len() / maths.len());
            let context_lens = KvDecode::resolve_lengths(&lengths, ctx, b, point_seed);
            out.push(Workload::KvDecode(KvDecode {
                attention,
                batch: b,
                q_heads: hq,
                kv_heads: hkv,
                head_dim_k: dk,
                head_dim_v: dv,
                page_size: page,
                kv_dtype: dtypes[ix[6]],
                scale: scales[ix[7]].map_or(1.0 / (dk as f32).sqrt(), |x| x as f32),
                context: ctx,
                lengths,
                context_lens,
                seed: point_seed,
                math: maths[ix[8]],
                launch_hint: None,
            }));
        }
        Ok(out)
    }

    fn expand_expert(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let kernel = "expert_gemv";
        self.refuse_fields(
            &[
                "split",
                "impl",
                "math",
                "experts",
                "top_k",
                "batch",
                "d_in",
                "d_out",
                "weight_dtype",
                "routing",
            ],
            kernel,
        )?;
        let s = self.spec;
        let experts = self.count(&s.experts, "experts", kernel, 1 << 16)?;
        let top_k = self.count(&s.top_k, "top_k", kernel, 1 << 16)?;
        let batch = self.count(&s.batch, "batch", kernel, MAX_COUNT)?;
        let d_in = self.count(&s.d_in, "d_in", kernel, MAX_COUNT)?;
        let d_out = self.count(&s.d_out, "d_out", kernel, MAX_COUNT)?;
        let dtypes = self.optional(&s.weight_dtype, DType::Bf16);
        let routings = self.optional(&s.routing, RoutingSpec::Uniform);
        let maths = self.optional(&s.math, Math::F32);
        let routing_err = |msg: String| match &s.routing {
            Some(f) => self.err_at(f, "routing", msg),
            None => self.err_run("routing", msg),
        };
        let mut out = Vec::new();
        let dims = [
            experts.len(),
            top_k.len(),
            batch.len(),
            d_in.len(),
            d_out.len(),
            dtypes.len(),
            routings.len(),
            maths.len(),
        ];
        for ix in product(&dims) {
            let (e, k, t, di, dout) = (
                experts[ix[0]],
                top_k[ix[1]],
                batch[ix[2]],
                d_in[ix[3]],
                d_out[ix[4]],
            );
            if k > e {
                let f = s.top_k.as_ref().expect("required above");
                return Err(self.err_at(
                    f,
                    "top_k",
                    format!(
                        "top_k ({k}) is larger than experts ({e}): a token picks distinct experts"
                    ),
                ));
            }
            self.too_large(e as u128 * dout as u128 * di as u128 + (t * di) as u128)?;
            let routing = match &routings[ix[6]] {
                RoutingSpec::Uniform => Routing::Uniform,
                RoutingSpec::Zipf(z) if z.is_finite() && *z >= 0.0 && *z <= 100.0 => {
                    Routing::Zipf(*z)
                }
                RoutingSpec::Zipf(z) => {
                    return Err(routing_err(format!("zipf exponent {z} must be in 0..=100")));
                }
                RoutingSpec::Ids(ids) => Routing::Ids(ids.clone()),
            };
            let point_seed = seed(out.len() / maths.len());
            let topk_ids = ExpertGemv::route(&routing, e, k, t, point_seed).map_err(routing_err)?;
            out.push(Workload::ExpertGemv(ExpertGemv {
                experts: e,
                top_k: k,
                batch: t,
                d_in: di,
                d_out: dout,
                weight_dtype: dtypes[ix[5]],
                routing,
                topk_ids,
                seed: point_seed,
                math: maths[ix[7]],
            }));
        }
        Ok(out)
    }
}
