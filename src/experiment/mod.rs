//! Experiments: the YAML schema, validation and sweep expansion, and the runner.
//! Everything a file can get wrong is refused here, before anything runs.

mod build;
mod expand;
pub mod filter;
mod host;
mod jobs;
mod place;
pub mod preflight;
mod progress;
pub mod ranked;
pub mod runner;
mod schedule;
pub mod schema;
mod sweep;

pub use crate::error::ConfigError;
pub use crate::hardware::HardwareProfile;

use crate::backend::CacheMode;
use crate::split::SplitKind;
use crate::workload::Workload;
use expand::Builder;
use schema::ExperimentFile;
use std::path::{Path, PathBuf};

/// An experiment file larger than this is not an experiment.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// A file may expand to at most this many points unless it says `max_points:`: a sweep of
/// millions is a typo, refused before it is expanded.
pub const DEFAULT_MAX_POINTS: u64 = 100_000;
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
