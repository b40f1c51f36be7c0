//! Hardware profiles: `experiments/hardware/<name>.yaml` (built into the binary, see
//! `profiles`), the spec figures a result is held against. Data, not code: each figure
//! carries its source in a comment in the file.

use crate::error::ConfigError;
use serde::Deserialize;
use std::path::Path;

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

impl HardwareProfile {
    /// Whether a device of this name is the card the profile describes: the profile id's
    /// first word (h100, h200, b200) in the device's name. The CPU backend and lavapipe never
    /// are.
    pub fn describes(&self, device: &str) -> bool {
        let key = self
            .id
            .split('-')
            .next()
            .unwrap_or(&self.id)
            .to_ascii_lowercase();
        !key.is_empty() && device.to_ascii_lowercase().contains(&key)
    }
}

/// The profile `name` for an experiment in `folder` (see `profiles::find`: a file beside or
/// above it, a path, or the built-in one). `Err(Ok(message))`: no such profile;
/// `Err(Err(e))`: a profile file that does not parse.
pub fn find(folder: &Path, name: &str) -> Result<HardwareProfile, Result<String, ConfigError>> {
    let found = crate::profiles::find(crate::profiles::Kind::Hardware, folder, name).map_err(Ok)?;
    parse_profile(&found.label, &found.text, name).map_err(Err)
}

/// Parse a profile's text; `label` names it in errors, `id` is what it is called by.
fn parse_profile(label: &str, source: &str, id: &str) -> Result<HardwareProfile, ConfigError> {
    let mut p: HardwareProfile =
        serde_saphyr::from_str(source).map_err(|e| ConfigError::from_yaml(label, source, &e))?;
    if !(p.memory_bandwidth_gbps.is_finite() && p.memory_bandwidth_gbps > 0.0) {
        return Err(ConfigError::whole_file(
            label,
            "memory_bandwidth_gbps must be a positive number",
        ));
    }
    p.id = Path::new(id)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(p)
}
