//! The analytic decode model: for a model preset, a hardware profile and an operating point,
//! the bytes, FLOPs, milliseconds and joules of one decode step, split into weights, KV cache,
//! compute and communication. Data movement and compute are summed, not overlapped: the
//! talk's stacked bars are this sum.

pub mod figures;
mod preset;

pub use preset::{AttentionSpec, ModelPreset, MoeSpec, WeightFormats, find_model};

use crate::hardware::{self, HardwareProfile, PerDtype};
use crate::registry::Kernel;
use serde::Serialize;
use std::path::Path;

// A weight or KV dtype in the model is the workload's storage dtype (one enum: the model's
// gpt-oss experts and a measured mxfp4 expert_gemv count the same 4.25 bits per weight).
pub use crate::workload::DType;

/// Bytes per stored value, block scales included.
fn bytes_per_value(d: DType) -> f64 {
    d.bits_per_value() / 8.0
}

/// The tensor-core rate a dtype's matrix products run at.
fn rate(d: DType, p: &PerDtype) -> f64 {
    match d {
        // int4 is weight-only (W4A16): its products run on bf16 operands.
        DType::F32 | DType::Bf16 | DType::F16 | DType::Int4G32 | DType::Int4G128 => p.bf16,
        DType::Fp8E4m3 => p.fp8,
        DType::Mxfp4 | DType::Nvfp4 => p.fp4,
    }
}

/// The operating point of one decode step.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub batch: u64,
    pub context: u64,
    pub devices: u64,
    /// `--weights` as given (a dtype, or `experts=D,rest=D`), applied over the preset's;
    /// a breakdown's scenario holds the resolved formats' name.
    pub weights: Option<String>,
    pub kv: Option<DType>,
    /// Communications per Transformer block (the talk: 6+ on-chip, 2+ cross-chip).
    pub on_chip_hops: u64,
    pub cross_chip_hops: u64,
    /// Overrides the profile's cross-chip hop latency (figure 4's sweep).
    pub hop_latency_us: Option<f64>,
}

impl Scenario {
    /// A scenario with dtypes given by name (None: the preset's).
    pub fn with_dtypes(
        batch: u64,
        context: u64,
        devices: u64,
        weights: Option<&str>,
        kv: Option<&str>,
    ) -> anyhow::Result<Scenario> {
        let parse = |d: Option<&str>| {
            d.map(str::parse::<DType>)
                .transpose()
                .map_err(anyhow::Error::msg)
        };
        if let Some(w) = weights {
            // Checked here, resolved against the preset in `evaluate`.
            WeightFormats::parse_over(w, WeightFormats::all(DType::Bf16))
                .map_err(anyhow::Error::msg)?;
        }
        Ok(Scenario {
            weights: weights.map(str::to_string),
            kv: parse(kv)?,
            ..Scenario::new(batch, context, devices)
        })
    }

    pub fn new(batch: u64, context: u64, devices: u64) -> Scenario {
        Scenario {
            batch,
            context,
            devices,
            weights: None,
            kv: None,
            on_chip_hops: 6,
            cross_chip_hops: 2,
            hop_latency_us: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Split {
    pub weights: f64,
    pub kv: f64,
    pub compute: f64,
    pub communication: f64,
    pub total: f64,
}

impl Split {
    fn new(weights: f64, kv: f64, compute: f64, communication: f64) -> Split {
        Split {
            weights,
            kv,
            compute,
            communication,
            total: weights + kv + compute + communication,
        }
    }

    /// Each part as a percentage of the total.
    pub fn percent(&self) -> Split {
        let t = if self.total > 0.0 { self.total } else { 1.0 };
        Split::new(
            100.0 * self.weights / t,
            100.0 * self.kv / t,
            100.0 * self.compute / t,
            100.0 * self.communication / t,
        )
    }
}

/// Which bandwidths came from decodelab measurements instead of the profile.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MeasuredTerms {
    pub weights_gbps: Option<f64>,
    pub kv_gbps: Option<f64>,
    /// One-way peer bandwidth between two distinct devices (the link kernel), per direction.
    pub link_gbps: Option<f64>,
    pub source: Option<String>,
    /// The measurements are of another device than the profile describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    pub model: String,
    pub hardware: String,
    pub scenario: Scenario,
    /// Bytes read per decode step over all devices.
    pub weight_bytes: f64,
    pub kv_bytes: f64,
    pub communication_bytes: f64,
    pub flops: f64,
    pub experts_touched_per_layer: Option<f64>,
    /// The weights' dtype per class, as evaluated.
    pub weight_formats: WeightFormats,
    pub time_ms: Split,
    pub energy_j_per_token: Split,
    pub user_tokens_per_s: f64,
    pub system_tokens_per_s: f64,
    pub power_w: f64,
    pub tokens_per_s_per_watt: f64,
    pub measured: MeasuredTerms,
    pub capacity: Capacity,
}

/// Whether the model and its KV cache fit the devices' memory.
#[derive(Clone, Debug, Serialize)]
pub struct Capacity {
    /// Every parameter held on each device (not only those a step reads), bytes.
    pub weights_per_device: f64,
    pub kv_per_device: f64,
    /// Main memory per device, and the KV tier's where the profile has one.
    pub memory_per_device: f64,
    pub kv_memory_per_device: Option<f64>,
    pub fits: bool,
    /// What does not fit, and by how much, when something does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<String>,
}

/// Expected distinct experts touched by `batch` tokens each choosing k of E uniformly.
pub fn expected_experts(experts: f64, top_k: f64, batch: f64) -> f64 {
    experts * (1.0 - (1.0 - top_k / experts).powf(batch))
}

/// The profile fields the model needs, or a clear error naming the missing one.
struct Needs<'a> {
    flops: &'a PerDtype,
    link: &'a hardware::Link,
    power: &'a hardware::Power,
    energy: &'a hardware::EnergyConstants,
}

fn needs(h: &HardwareProfile) -> anyhow::Result<Needs<'_>> {
    let missing = |what: &str| {
        anyhow::anyhow!(
            "hardware profile '{}' has no `{what}` (the model needs it)",
            h.id
        )
    };
    Ok(Needs {
        flops: h
            .flops_tflops
            .as_ref()
            .ok_or_else(|| missing("flops_tflops"))?,
        link: h.link.as_ref().ok_or_else(|| missing("link"))?,
        power: h.power.as_ref().ok_or_else(|| missing("power"))?,
        energy: h.energy.as_ref().ok_or_else(|| missing("energy"))?,
    })
}

pub fn evaluate(
    m: &ModelPreset,
    h: &HardwareProfile,
    s: &Scenario,
    measured: &MeasuredTerms,
) -> anyhow::Result<Breakdown> {
    anyhow::ensure!(
        s.batch >= 1 && s.context >= 1 && s.devices >= 1,
        "batch, context and devices must be at least 1"
    );
    let n = needs(h)?;
    let (b, d) = (s.batch as f64, s.devices as f64);
    let formats = match &s.weights {
        Some(text) => WeightFormats::parse_over(text, m.weights).map_err(anyhow::Error::msg)?,
        None => m.weights,
    };
    let (w, ew) = (formats.rest, formats.experts);
    let kv = s.kv.unwrap_or(m.kv);
    let touched = m
        .moe
        .as_ref()
        .map(|x| expected_experts(x.experts as f64, x.top_k as f64, b));
    let weight_bytes = weight_bytes_per_step(m, b, w, ew, touched);

    // KV: every sequence's cache, every layer.
    let cached: f64 = (0..m.layers)
        .map(|l| m.cached_tokens(l, s.context) as f64)
        .sum();
    let kv_bytes = b * cached * m.kv_bytes_per_token_layer(kv);

    // FLOPs: 2 per active parameter per token, the routed experts' at their dtype's rate
    // and the rest at theirs; attention at the KV's.
    let routed_active = m
        .moe
        .as_ref()
        .map_or(0.0, |x| m.moe_layers() * x.top_k as f64 * m.expert_params());
    let expert_flops = 2.0 * routed_active * b;
    let rest_flops = 2.0 * (m.active_params() - routed_active) * b;
    let attention_flops = b * cached * m.attention_flops_per_token();
    let flops = expert_flops + rest_flops + attention_flops;
    let compute_s = (expert_flops / rate(ew, n.flops)
        + rest_flops / rate(w, n.flops)
        + attention_flops / rate(kv, n.flops))
        / (d * 1e12);
    let compute_j = (expert_flops * rate(ew, &n.energy.pj_per_flop)
        + rest_flops * rate(w, &n.energy.pj_per_flop)
        + attention_flops * rate(kv, &n.energy.pj_per_flop))
        * 1e-12;

    let (comm_bytes, comm_s) = communication(m, s, &n, measured);

    let weights_gbps = measured.weights_gbps.unwrap_or(h.memory_bandwidth_gbps);
    let (kv_spec_gbps, kv_pj_bit) = match &h.kv_memory {
        Some(t) => (t.bandwidth_gbps, t.pj_per_bit),
        None => (h.memory_bandwidth_gbps, n.energy.memory_pj_per_bit),
    };
    let kv_gbps = measured.kv_gbps.unwrap_or(kv_spec_gbps);
    let time_s = Split::new(
        weight_bytes / (d * weights_gbps * 1e9),
        kv_bytes / (d * kv_gbps * 1e9),
        compute_s,
        comm_s,
    );
    let energy_step = Split::new(
        weight_bytes * 8.0 * n.energy.memory_pj_per_bit * 1e-12,
        kv_bytes * 8.0 * kv_pj_bit * 1e-12,
        compute_j,
        comm_bytes * 8.0 * n.energy.link_pj_per_bit * 1e-12,
    );
    let per_token = |x: f64| x / b;
    let energy_j_per_token = Split::new(
        per_token(energy_step.weights),
        per_token(energy_step.kv),
        per_token(energy_step.compute),
        per_token(energy_step.communication),
    );
    let step = time_s.total;
    let power_w = (d * n.power.idle_w + energy_step.total / step).min(d * n.power.max_w);
    let system_tokens_per_s = b / step;
    Ok(Breakdown {
        model: m.name.clone(),
        hardware: h.name.clone(),
        scenario: Scenario {
            weights: Some(formats.name()),
            kv: Some(kv),
            ..s.clone()
        },
        weight_bytes,
        kv_bytes,
        communication_bytes: comm_bytes,
        flops,
        experts_touched_per_layer: touched,
        weight_formats: formats,
        time_ms: Split::new(
            time_s.weights * 1e3,
            time_s.kv * 1e3,
            time_s.compute * 1e3,
            time_s.communication * 1e3,
        ),
        energy_j_per_token,
        user_tokens_per_s: 1.0 / step,
        system_tokens_per_s,
        power_w,
        tokens_per_s_per_watt: system_tokens_per_s / power_w,
        measured: measured.clone(),
        capacity: capacity(m, h, s, w, ew, kv_bytes),
    })
}

/// Weights read once per step: everything dense, plus the experts this batch touches
/// (`touched` per MoE layer), the lm_head and the looked-up embedding rows in bf16.
fn weight_bytes_per_step(
    m: &ModelPreset,
    b: f64,
    w: DType,
    ew: DType,
    touched: Option<f64>,
) -> f64 {
    let hidden = m.hidden as f64;
    let bf16 = bytes_per_value(DType::Bf16);
    let mut bytes = m.layers as f64 * m.attention_params() * bytes_per_value(w)
        + m.dense_layers as f64 * m.dense_mlp_params() * bytes_per_value(w)
        + (m.vocab as f64 * hidden) * bf16 // lm_head, kept in bf16
        + b * hidden * bf16; // the looked-up embedding rows
    if let (Some(x), Some(u)) = (&m.moe, touched) {
        bytes += m.moe_layers()
            * (x.shared as f64 * m.expert_params() * bytes_per_value(w)
                + u * m.expert_params() * bytes_per_value(ew)
                + (m.hidden * x.experts) as f64 * bf16);
    }
    bytes
}

/// Communication across devices, bytes and seconds: MoE dispatch + combine (all-to-all) and
/// an all-reduce per block of bf16 activations, plus a latency per hop.
fn communication(
    m: &ModelPreset,
    s: &Scenario,
    n: &Needs<'_>,
    measured: &MeasuredTerms,
) -> (f64, f64) {
    if s.devices < 2 {
        return (0.0, 0.0);
    }
    let (b, d) = (s.batch as f64, s.devices as f64);
    let hidden = m.hidden as f64;
    let bf16 = bytes_per_value(DType::Bf16);
    let k = m.moe.as_ref().map_or(0.0, |x| x.top_k as f64);
    let bytes =
        m.layers as f64 * 2.0 * b * hidden * bf16 + m.moe_layers() * 2.0 * b * k * hidden * bf16;
    let hop = s.hop_latency_us.unwrap_or(n.link.latency_us);
    let latency = m.layers as f64
        * (s.on_chip_hops as f64 * n.link.on_chip_latency_us + s.cross_chip_hops as f64 * hop)
        * 1e-6;
    let link_gbps = measured.link_gbps.unwrap_or(n.link.bandwidth_gbps);
    (bytes, bytes / (d * link_gbps * 1e9) + latency)
}

/// Weights and KV per device against the profile's memory.
fn capacity(
    m: &ModelPreset,
    h: &HardwareProfile,
    s: &Scenario,
    w: DType,
    ew: DType,
    kv_bytes: f64,
) -> Capacity {
    let d = s.devices as f64;
    let bf16 = bytes_per_value(DType::Bf16);
    // Routed experts in their own dtype, everything else in the weights' (embedding and
    // lm_head in bf16, as the step's reads count them).
    let routed = m.moe.as_ref().map_or(0.0, |x| {
        m.moe_layers() * x.experts as f64 * m.expert_params()
    });
    let embeddings = 2.0 * (m.vocab * m.hidden) as f64;
    let rest = m.total_params() - routed - embeddings;
    let weights = rest * bytes_per_value(w) + routed * bytes_per_value(ew) + embeddings * bf16;
    let (weights_pd, kv_pd) = (weights / d, kv_bytes / d);
    let memory = h.memory_bytes as f64;
    let kv_memory = h.kv_memory.as_ref().map(|t| t.bytes as f64);
    let gb = |x: f64| format!("{:.1} GB", x / 1e9);
    let shortfall = match kv_memory {
        None if weights_pd + kv_pd > memory => Some(format!(
            "weights {} + KV {} per device need {}, the device has {}; {} devices would hold it",
            gb(weights_pd),
            gb(kv_pd),
            gb(weights_pd + kv_pd),
            gb(memory),
            ((weights + kv_bytes) / memory).ceil()
        )),
        Some(kvm) if weights_pd > memory || kv_pd > kvm => Some(format!(
            "weights {} per device in {} of memory, KV {} in {} of KV memory",
            gb(weights_pd),
            gb(memory),
            gb(kv_pd),
            gb(kvm)
        )),
        _ => None,
    };
    Capacity {
        weights_per_device: weights_pd,
        kv_per_device: kv_pd,
        memory_per_device: memory,
        kv_memory_per_device: kv_memory,
        fits: shortfall.is_none(),
        shortfall,
    }
}

/// The hardware profile `name`, found as `find_model` finds presets.
pub fn find_hardware(start: &Path, name: &str) -> anyhow::Result<HardwareProfile> {
    match hardware::find(start, name) {
        Ok(p) => Ok(p),
        Err(Ok(missing)) => Err(anyhow::anyhow!(missing)),
        Err(Err(bad)) => Err(bad.into()),
    }
}

/// Bandwidths decodelab measured, for `--measured`: the expert_gemv result nearest the
/// batch (weights) and the kv_decode result of the same attention kind nearest the batch and
/// context (KV), one-device passing points only (a split's GB/s is over several devices); and
/// the mean one-way link GB/s between distinct devices (communication).
pub fn measured_terms(
    path: &Path,
    m: &ModelPreset,
    h: &HardwareProfile,
    s: &Scenario,
) -> anyhow::Result<MeasuredTerms> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--measured {}: {e}", path.display()))?;
    let lines: Vec<crate::report::ResultLine> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    anyhow::ensure!(
        !lines.is_empty(),
        "--measured {}: no result lines",
        path.display()
    );
    let dist = |a: f64, b: f64| (a.max(1.0) / b.max(1.0)).ln().abs();
    let p = |l: &crate::report::ResultLine, k: &str| {
        l.params.get(k).and_then(|v| v.as_f64()).unwrap_or(1.0)
    };
    let mla = matches!(m.attention, AttentionSpec::Mla { .. });
    let weights = lines
        .iter()
        .filter(|l| l.is(Kernel::ExpertGemv) && l.check.pass && l.split == "none")
        .min_by(|a, b| {
            dist(p(a, "batch"), s.batch as f64).total_cmp(&dist(p(b, "batch"), s.batch as f64))
        })
        .map(|l| (l, l.gbps));
    let kv = lines
        .iter()
        .filter(|l| l.is(Kernel::KvDecode) && l.check.pass && l.split == "none")
        .filter(|l| (l.params.get("attention").and_then(|v| v.as_str()) == Some("mla")) == mla)
        .min_by(|a, b| {
            let da = dist(p(a, "batch"), s.batch as f64) + dist(p(a, "context"), s.context as f64);
            let db = dist(p(b, "batch"), s.batch as f64) + dist(p(b, "context"), s.context as f64);
            da.total_cmp(&db)
        })
        .map(|l| (l, l.gbps));
    let links: Vec<f64> = lines
        .iter()
        .filter(|l| l.check.pass)
        .filter(|l| l.params.get("direction").and_then(|v| v.as_str()) == Some("one_way"))
        .filter(|l| l.link.as_ref().is_some_and(|k| k.src != k.dst))
        .map(|l| l.gbps)
        .collect();
    let link = (!links.is_empty()).then(|| links.iter().sum::<f64>() / links.len() as f64);
    // Which devices the used figures were measured on, against the profile they replace.
    let mut on: Vec<&str> = [weights, kv]
        .iter()
        .flatten()
        .map(|(l, _)| l.device.as_str())
        .collect();
    on.dedup();
    let foreign: Vec<&str> = on.iter().copied().filter(|d| !h.describes(d)).collect();
    let warning = (!foreign.is_empty()).then(|| {
        format!(
            "the measurements were taken on {}, not on the profile's {}: the model mixes their bandwidths with its compute and links",
            foreign.join(", "),
            h.name
        )
    });
    Ok(MeasuredTerms {
        weights_gbps: weights.map(|(_, g)| g),
        kv_gbps: kv.map(|(_, g)| g),
        link_gbps: link,
        source: Some(path.display().to_string()),
        warning,
    })
}
