//! Hardware profiles: `experiments/hardware/<name>.yaml`, the spec figures a result is held
//! against. Data, not code: each figure carries its source in a comment in the file.

use super::error::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// Short id, the file's stem (h100-sxm).
    #[serde(skip_deserializing)]
    pub id: String,
    /// What a person calls it (NVIDIA H100 SXM5 80GB).
    pub name: String,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// Spec memory bandwidth, GB/s (10^9 bytes per second).
    pub memory_bandwidth_gbps: f64,
    /// A separate memory tier for the KV cache (the talk's "new DRAM for the KV cache");
    /// absent: the KV cache lives in the main memory.
    #[serde(default)]
    pub kv_memory: Option<MemoryTier>,
    /// Dense tensor throughput per dtype, TFLOP/s.
    #[serde(default)]
    pub flops_tflops: Option<PerDtype>,
    /// The chip-to-chip link (NVLink): per direction per device.
    #[serde(default)]
    pub link: Option<Link>,
    #[serde(default)]
    pub power: Option<Power>,
    #[serde(default)]
    pub energy: Option<EnergyConstants>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTier {
    pub bytes: u64,
    pub bandwidth_gbps: f64,
    pub pj_per_bit: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerDtype {
    pub bf16: f64,
    pub fp8: f64,
    pub fp4: f64,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub bandwidth_gbps: f64,
    /// One cross-chip hop, microseconds.
    pub latency_us: f64,
    /// One on-chip all-to-all step, microseconds.
    pub on_chip_latency_us: f64,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    pub idle_w: f64,
    pub max_w: f64,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnergyConstants {
    /// Main memory, end to end (device to SM), pJ per bit moved.
    pub memory_pj_per_bit: f64,
    /// Last-level cache / on-chip SRAM, pJ per bit.
    pub sram_pj_per_bit: f64,
    pub link_pj_per_bit: f64,
    /// Arithmetic, pJ per FLOP.
    pub pj_per_flop: PerDtype,
}

/// Find `<dir>/hardware/<name>.yaml` in the experiment's folder or any folder above it, or
/// take `name` as a path when it ends in `.yaml`.
pub fn find_profile(experiment_file: &Path, name: &str) -> Option<PathBuf> {
    if name.ends_with(".yaml") {
        let p = experiment_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(name);
        return p.exists().then_some(p);
    }
    let start = experiment_file.parent().unwrap_or(Path::new("."));
    let start = if start.as_os_str().is_empty() {
        Path::new(".")
    } else {
        start
    };
    start
        .ancestors()
        .map(|d| d.join("hardware").join(format!("{name}.yaml")))
        .find(|p| p.exists())
}

pub fn load_profile(path: &Path) -> Result<HardwareProfile, ConfigError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole_file(&file, format!("cannot read: {e}")))?;
    let mut p: HardwareProfile =
        serde_saphyr::from_str(&source).map_err(|e| ConfigError::from_yaml(&file, &source, &e))?;
    if !(p.memory_bandwidth_gbps.is_finite() && p.memory_bandwidth_gbps > 0.0) {
        return Err(ConfigError::whole_file(
            &file,
            "memory_bandwidth_gbps must be a positive number",
        ));
    }
    p.id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(p)
}
