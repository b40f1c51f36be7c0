//! The talk's figures: one YAML per figure in experiments/talk/, each drawn as SVG and PNG
//! (plotters, `charts`), plus an index.html with every figure and the numbers behind it.

mod charts;

use super::{Breakdown, MeasuredTerms, ModelDtype, Scenario, evaluate, find_hardware, find_model};
use anyhow::{Context, anyhow, bail};
use charts::{Plot, Series, draw};
use plotters::prelude::*;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A readable breakdown of one operating point (`decodelab model`).
pub fn describe(b: &Breakdown) -> String {
    let s = &b.scenario;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} on {} x {}: batch {}, context {}, weights {}, KV {}",
        b.model,
        s.devices,
        b.hardware,
        s.batch,
        s.context,
        s.weights.unwrap_or(ModelDtype::Bf16).name(),
        s.kv.unwrap_or(ModelDtype::Bf16).name()
    );
    let _ = writeln!(
        o,
        "per decode step: weights {:.3} GB, KV {:.3} GB, communication {:.3} GB, {:.2} TFLOP",
        b.weight_bytes / 1e9,
        b.kv_bytes / 1e9,
        b.communication_bytes / 1e9,
        b.flops / 1e12
    );
    if let Some(u) = b.experts_touched_per_layer {
        let _ = writeln!(o, "experts touched per MoE layer (expected): {u:.1}");
    }
    let (t, e) = (&b.time_ms, &b.energy_j_per_token);
    let (tp, ep) = (t.percent(), e.percent());
    let _ = writeln!(
        o,
        "\n{:<15} {:>12} {:>7} {:>16} {:>7}",
        "", "ms / token", "%", "J / token", "%"
    );
    for (name, ms, msp, j, jp) in [
        ("weights", t.weights, tp.weights, e.weights, ep.weights),
        ("KV cache", t.kv, tp.kv, e.kv, ep.kv),
        ("compute", t.compute, tp.compute, e.compute, ep.compute),
        (
            "communication",
            t.communication,
            tp.communication,
            e.communication,
            ep.communication,
        ),
        ("total", t.total, 100.0, e.total, 100.0),
    ] {
        let _ = writeln!(o, "{name:<15} {ms:>12.4} {msp:>6.1}% {j:>16.6} {jp:>6.1}%");
    }
    let _ = writeln!(
        o,
        "\nuser {:.1} tokens/s, system {:.0} tokens/s, {:.0} W, {:.3} tokens/s per W",
        b.user_tokens_per_s, b.system_tokens_per_s, b.power_w, b.tokens_per_s_per_watt
    );
    let m = &b.measured;
    if m.weights_gbps.is_some() || m.kv_gbps.is_some() || m.link_gbps.is_some() {
        let g = |x: Option<f64>| x.map_or("the profile's".into(), |v| format!("{v:.1} GB/s"));
        let _ = writeln!(
            o,
            "measured bandwidths from {}: weights {}, KV {}, link {}",
            m.source.as_deref().unwrap_or("?"),
            g(m.weights_gbps),
            g(m.kv_gbps),
            g(m.link_gbps)
        );
    }
    if let Some(w) = &m.warning {
        let _ = writeln!(o, "warning: {w}");
    }
    o
}

/// One operating point as a figure YAML writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSpec {
    #[serde(default)]
    pub label: Option<String>,
    pub model: String,
    pub hardware: String,
    pub batch: u64,
    pub context: u64,
    #[serde(default = "one")]
    pub devices: u64,
    #[serde(default)]
    pub weights: Option<String>,
    #[serde(default)]
    pub kv: Option<String>,
}

fn one() -> u64 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    pub label: String,
    pub hardware: String,
    pub devices: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "figure", rename_all = "snake_case", deny_unknown_fields)]
pub enum FigureSpec {
    JouleBreakdown {
        title: String,
        point: PointSpec,
        /// Contexts at which the split is repeated in the table, to show its sensitivity.
        #[serde(default)]
        sensitivity_contexts: Vec<u64>,
        /// The talk's own split (weights, KV, compute, communication, %), drawn beside ours.
        #[serde(default)]
        talk_percent: Option<[f64; 4]>,
    },
    KeyLimiter {
        title: String,
        points: Vec<PointSpec>,
    },
    Pareto {
        title: String,
        model: String,
        hardware: String,
        context: u64,
        batches: Vec<u64>,
        devices: Vec<u64>,
    },
    CommLatency {
        title: String,
        model: String,
        hardware: String,
        devices: u64,
        context: u64,
        latencies_us: Vec<f64>,
        on_chip_hops: u64,
        cross_chip_hops: u64,
    },
    Sram {
        title: String,
        model: String,
        batch: u64,
        context: u64,
        before: Side,
        after: Side,
    },
    Measured {
        title: String,
        hardware: String,
        model: String,
    },
}

impl FigureSpec {
    pub fn title(&self) -> &str {
        match self {
            FigureSpec::JouleBreakdown { title, .. }
            | FigureSpec::KeyLimiter { title, .. }
            | FigureSpec::Pareto { title, .. }
            | FigureSpec::CommLatency { title, .. }
            | FigureSpec::Sram { title, .. }
            | FigureSpec::Measured { title, .. } => title,
        }
    }
}

pub fn load_figure(path: &Path) -> anyhow::Result<(FigureSpec, String)> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
    let spec = serde_saphyr::from_str(&source)
        .map_err(|e| crate::experiment::ConfigError::from_yaml(&file, &source, &e))?;
    Ok((spec, source))
}

/// Evaluate a point of a figure, and note where it does not fit its devices.
fn point_noted(dir: &Path, p: &PointSpec, warnings: &mut Vec<String>) -> anyhow::Result<Breakdown> {
    let b = point(dir, p)?;
    if let Some(short) = &b.capacity.shortfall {
        let w = format!(
            "{} does not fit {} x {}: {short}",
            p.label.clone().unwrap_or_else(|| b.model.clone()),
            p.devices,
            b.hardware
        );
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    Ok(b)
}

/// Evaluate a point of a figure (data files are looked up from the figure's folder up).
pub fn point(dir: &Path, p: &PointSpec) -> anyhow::Result<Breakdown> {
    let m = find_model(dir, &p.model)?;
    let h = find_hardware(dir, &p.hardware)?;
    let s = Scenario::with_dtypes(
        p.batch,
        p.context,
        p.devices,
        p.weights.as_deref(),
        p.kv.as_deref(),
    )?;
    evaluate(&m, &h, &s, &MeasuredTerms::default())
}

/// What a figure computed: rows for the page's table, and what to draw.
pub struct Computed {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub note: Option<String>,
    /// Configurations the model says cannot run (they do not fit their devices), and
    /// measurements held against another card: shown on the page and printed.
    pub warnings: Vec<String>,
    /// Why the figure is not drawn (figure 6 without a results file).
    pub skipped: Option<String>,
    plot: Plot,
}

const SERIES: [&str; 4] = ["weights", "KV cache", "compute", "communication"];

fn split_values(s: &super::Split) -> Vec<f64> {
    vec![s.weights, s.kv, s.compute, s.communication]
}

fn label_of(p: &PointSpec, b: &Breakdown) -> String {
    p.label
        .clone()
        .unwrap_or_else(|| format!("{} B{} ctx{}", b.model, p.batch, p.context))
}

pub fn compute(dir: &Path, spec: &FigureSpec, measured: Option<&Path>) -> anyhow::Result<Computed> {
    let f = |x: f64| format!("{x:.4}");
    let mut warnings = Vec::new();
    let done = |columns: &[&str], rows, note, plot, warnings| Computed {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        note,
        warnings,
        skipped: None,
        plot,
    };
    Ok(match spec {
        FigureSpec::JouleBreakdown {
            point: p,
            sensitivity_contexts,
            talk_percent,
            ..
        } => {
            let b = point_noted(dir, p, &mut warnings)?;
            let pct = b.energy_j_per_token.percent();
            let e = &b.energy_j_per_token;
            let mut rows: Vec<Vec<String>> = SERIES
                .iter()
                .enumerate()
                .zip(split_values(e).into_iter().zip(split_values(&pct)))
                .map(|((i, n), (j, p))| {
                    let talk = talk_percent.map_or("-".into(), |t| format!("{:.0}", t[i]));
                    vec![n.to_string(), format!("{j:.5}"), format!("{p:.1}"), talk]
                })
                .collect();
            for &ctx in sensitivity_contexts {
                let other = point_noted(
                    dir,
                    &PointSpec {
                        context: ctx,
                        ..p.clone()
                    },
                    &mut warnings,
                )?
                .energy_j_per_token
                .percent();
                rows.push(vec![
                    format!("at context {ctx}: weights / KV / compute / comm"),
                    String::new(),
                    format!(
                        "{:.1} / {:.1} / {:.1} / {:.1}",
                        other.weights, other.kv, other.compute, other.communication
                    ),
                    String::new(),
                ]);
            }
            let mut series = vec![("reproduced".to_string(), split_values(&pct))];
            if let Some(t) = talk_percent {
                series.push(("the talk".to_string(), t.to_vec()));
            }
            let note = format!(
                "{}: batch {}, context {}, {} devices, {:.2} TB of weights and {:.2} TB of KV per step",
                label_of(p, &b),
                p.batch,
                p.context,
                p.devices,
                b.weight_bytes / 1e12,
                b.kv_bytes / 1e12
            );
            let plot = Plot::Grouped {
                groups: SERIES.iter().map(|s| s.to_string()).collect(),
                series,
                y_label: "% of joules per token".into(),
                unit: " %",
                log_y: false,
            };
            let cols = ["part", "J / token", "% of J / token", "the talk's %"];
            done(&cols, rows, Some(note), plot, warnings)
        }
        FigureSpec::KeyLimiter { points, .. } => {
            let mut rows = Vec::new();
            let mut bars = Vec::new();
            for p in points {
                let b = point_noted(dir, p, &mut warnings)?;
                let t = &b.time_ms;
                let pc = t.percent();
                rows.push(vec![
                    label_of(p, &b),
                    f(t.weights),
                    f(t.kv),
                    f(t.compute),
                    f(t.communication),
                    f(t.total),
                    format!(
                        "{:.0} / {:.0} / {:.0} / {:.0}",
                        pc.weights, pc.kv, pc.compute, pc.communication
                    ),
                ]);
                bars.push((label_of(p, &b), split_values(t)));
            }
            let cols = [
                "point",
                "weights ms",
                "KV ms",
                "compute ms",
                "comm ms",
                "total ms",
                "% W/KV/C/comm",
            ];
            let plot = Plot::Stacked {
                bars,
                series: SERIES.to_vec(),
                y_label: "ms per token".into(),
                unit: " ms",
            };
            done(&cols, rows, None, plot, warnings)
        }
        FigureSpec::Pareto {
            model,
            hardware,
            context,
            batches,
            devices,
            ..
        } => {
            let mut rows = Vec::new();
            let mut series = Vec::new();
            let mut all = Vec::new();
            for &d in devices {
                let mut pts = Vec::new();
                for &b in batches {
                    let p = PointSpec {
                        label: Some(format!("B{b} on {d}")),
                        model: model.clone(),
                        hardware: hardware.clone(),
                        batch: b,
                        context: *context,
                        devices: d,
                        weights: None,
                        kv: None,
                    };
                    let r = point_noted(dir, &p, &mut warnings)?;
                    rows.push(vec![
                        d.to_string(),
                        b.to_string(),
                        format!("{:.1}", r.user_tokens_per_s),
                        format!("{:.0}", r.system_tokens_per_s),
                        format!("{:.3}", r.tokens_per_s_per_watt),
                    ]);
                    pts.push((r.user_tokens_per_s, r.tokens_per_s_per_watt));
                    all.push((d, b, r.user_tokens_per_s, r.tokens_per_s_per_watt));
                }
                series.push(Series {
                    label: format!("{d} devices"),
                    points: pts,
                    line: false,
                });
            }
            let eff = all
                .iter()
                .max_by(|a, b| a.3.total_cmp(&b.3))
                .ok_or_else(|| anyhow!("no points"))?;
            let lat = all
                .iter()
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .ok_or_else(|| anyhow!("no points"))?;
            let frontier = pareto_frontier(&all)
                .into_iter()
                .map(|(d, b, x, y)| (format!("B{b} x{d}"), (x, y)))
                .collect();
            let note = format!(
                "high-efficiency decode: {} devices, batch {} ({:.2} tokens/s/W at {:.0} user tokens/s); low-latency decode: {} devices, batch {} ({:.0} user tokens/s at {:.3} tokens/s/W); the line is the Pareto frontier over every configuration",
                eff.0, eff.1, eff.3, eff.2, lat.0, lat.1, lat.2, lat.3
            );
            let plot = Plot::Lines {
                series,
                frontier,
                marks: vec![
                    (
                        format!("high-efficiency (peak throughput): B{} x{}", eff.1, eff.0),
                        (eff.2, eff.3),
                    ),
                    (
                        format!("low-latency: B{} x{}", lat.1, lat.0),
                        (lat.2, lat.3),
                    ),
                ],
                x_label: "user tokens/s".into(),
                y_label: "system tokens/s per W".into(),
            };
            let cols = [
                "devices",
                "batch",
                "user tokens/s",
                "system tokens/s",
                "tokens/s per W",
            ];
            done(&cols, rows, Some(note), plot, warnings)
        }
        FigureSpec::CommLatency {
            model,
            hardware,
            devices,
            context,
            latencies_us,
            on_chip_hops,
            cross_chip_hops,
            ..
        } => {
            let m = find_model(dir, model)?;
            let h = find_hardware(dir, hardware)?;
            let base = h
                .link
                .as_ref()
                .map(|l| l.latency_us)
                .ok_or_else(|| anyhow!("{hardware} has no link"))?;
            let on_chip = h.link.as_ref().map(|l| l.on_chip_latency_us).unwrap_or(0.0);
            let mut rows = Vec::new();
            let mut pts = Vec::new();
            let eval = |lat: f64| -> anyhow::Result<Breakdown> {
                let mut s = Scenario::new(1, *context, *devices);
                s.on_chip_hops = *on_chip_hops;
                s.cross_chip_hops = *cross_chip_hops;
                s.hop_latency_us = Some(lat);
                // Both kinds of hop scale together: "latency per hop".
                let mut hh = h.clone();
                if let Some(l) = hh.link.as_mut() {
                    l.on_chip_latency_us = on_chip * lat / base;
                }
                evaluate(&m, &hh, &s, &MeasuredTerms::default())
            };
            for &lat in latencies_us {
                let r = eval(lat)?;
                rows.push(vec![
                    format!("{lat}"),
                    format!("{:.3}", r.time_ms.communication),
                    format!("{:.3}", r.time_ms.total),
                    format!("{:.1}", r.user_tokens_per_s),
                ]);
                pts.push((lat, r.user_tokens_per_s));
            }
            let now = eval(base)?;
            if let Some(short) = &now.capacity.shortfall {
                warnings.push(format!(
                    "{} does not fit {devices} x {}: {short}",
                    m.name, h.name
                ));
            }
            let tenth = eval(base / 10.0)?;
            let note = format!(
                "{} blocks x ({on_chip_hops} on-chip + {cross_chip_hops} cross-chip) hops; at {base} us per cross-chip hop: {:.0} tokens/s, at {} us (10x lower): {:.0} tokens/s ({:.1}x)",
                m.layers,
                now.user_tokens_per_s,
                base / 10.0,
                tenth.user_tokens_per_s,
                tenth.user_tokens_per_s / now.user_tokens_per_s
            );
            let plot = Plot::Lines {
                series: vec![Series {
                    label: format!("{} on {devices} x {}", m.name, h.name),
                    points: pts,
                    line: true,
                }],
                frontier: vec![],
                marks: vec![
                    ("today".into(), (base, now.user_tokens_per_s)),
                    (
                        "10x lower latency".into(),
                        (base / 10.0, tenth.user_tokens_per_s),
                    ),
                ],
                x_label: "latency per cross-chip hop (us)".into(),
                y_label: "speed-of-light single-user tokens/s".into(),
            };
            let cols = [
                "cross-chip hop latency (us)",
                "communication ms/token",
                "total ms/token",
                "single-user tokens/s",
            ];
            done(&cols, rows, Some(note), plot, warnings)
        }
        FigureSpec::Sram {
            model,
            batch,
            context,
            before,
            after,
            ..
        } => {
            let mut rows = Vec::new();
            let (mut energy, mut time) = (Vec::new(), Vec::new());
            let mut totals = Vec::new();
            for side in [before, after] {
                let p = PointSpec {
                    label: Some(side.label.clone()),
                    model: model.clone(),
                    hardware: side.hardware.clone(),
                    batch: *batch,
                    context: *context,
                    devices: side.devices,
                    weights: None,
                    kv: None,
                };
                let b = point_noted(dir, &p, &mut warnings)?;
                let (e, t) = (&b.energy_j_per_token, &b.time_ms);
                rows.push(vec![
                    side.label.clone(),
                    format!("{}", side.devices),
                    format!("{:.5}", e.weights),
                    format!("{:.5}", e.kv),
                    format!("{:.5}", e.compute),
                    format!("{:.5}", e.communication),
                    format!("{:.5}", e.total),
                    f(t.total),
                ]);
                energy.push((side.label.clone(), split_values(e)));
                time.push((side.label.clone(), split_values(t)));
                totals.push((e.total, t.total));
            }
            // Per part, before and after side by side on a log axis: the SRAM side is tens
            // of times smaller, and a linear stack would leave it a sliver.
            let panel = |series: Vec<(String, Vec<f64>)>, y: &str, unit| Plot::Grouped {
                groups: SERIES.iter().map(|s| s.to_string()).collect(),
                series,
                y_label: y.into(),
                unit,
                log_y: true,
            };
            let note = format!(
                "energy per token {:.1}x lower, time per token {:.1}x lower (both panels on a log scale)",
                totals[0].0 / totals[1].0,
                totals[0].1 / totals[1].1
            );
            let plot = Plot::Pair(
                Box::new(panel(energy, "J per token", "")),
                Box::new(panel(time, "ms per token", "")),
            );
            let cols = [
                "system",
                "devices",
                "weights J",
                "KV J",
                "compute J",
                "comm J",
                "total J/token",
                "ms/token",
            ];
            done(&cols, rows, Some(note), plot, warnings)
        }
        FigureSpec::Measured { hardware, .. } => {
            let h = find_hardware(dir, hardware)?;
            let Some(path) = measured else {
                let mut c = done(&[], vec![], None, Plot::Nothing, warnings);
                c.skipped = Some(
                    "no results file given (decodelab figures DIR --measured results.jsonl)".into(),
                );
                return Ok(c);
            };
            let lines = crate::report::load_lines(path)
                .with_context(|| format!("--measured {}", path.display()))?;
            let pj = h.energy.as_ref().map(|e| e.memory_pj_per_bit * 8.0);
            let mut rows = Vec::new();
            let mut bars = Vec::new();
            let mut foreign: Vec<String> = Vec::new();
            for l in lines.iter().filter(|l| l.split == "none" && l.check.pass) {
                let shape = crate::report::params_label(&l.kernel, &l.params);
                if !h.describes(&l.device) && !foreign.contains(&l.device) {
                    foreign.push(l.device.clone());
                }
                rows.push(vec![
                    l.point.to_string(),
                    format!("{} {shape}", l.kernel),
                    format!("{}:{} {}", l.backend, l.key().2, l.device),
                    format!("{:.2}", l.gbps),
                    format!("{:.0}", h.memory_bandwidth_gbps),
                    l.energy
                        .pj_per_byte
                        .map_or("-".into(), |x| format!("{x:.1}")),
                    pj.map_or("-".into(), |x| format!("{x:.1}")),
                ]);
                bars.push((format!("{shape} ({})", l.backend), l.gbps));
            }
            if !foreign.is_empty() {
                warnings.push(format!(
                    "measured on {}, not on the {} the line is drawn for",
                    foreign.join(", "),
                    h.name
                ));
            }
            let note = format!(
                "measured in {} against the {} profile",
                path.display(),
                h.name
            );
            let plot = Plot::BarsWithLevel {
                bars,
                y_label: "GB/s".into(),
                level: (format!("{} spec", h.name), h.memory_bandwidth_gbps),
            };
            let cols = [
                "point",
                "shape",
                "device",
                "measured GB/s",
                "profile GB/s",
                "measured pJ/byte",
                "profile pJ/byte",
            ];
            done(&cols, rows, Some(note), plot, warnings)
        }
    })
}

/// The configurations no other beats on both user tokens/s and tokens/s per W, in order of
/// user tokens/s: (devices, batch, user tokens/s, tokens/s per W).
fn pareto_frontier(all: &[(u64, u64, f64, f64)]) -> Vec<(u64, u64, f64, f64)> {
    let mut v = all.to_vec();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut best = f64::MIN;
    let mut front = Vec::new();
    for p in v {
        if p.3 > best {
            best = p.3;
            front.push(p);
        }
    }
    front.reverse();
    front
}

/// The font PNGs are drawn with (SVG names it and lets the browser draw). Debian's
/// fonts-dejavu-core, or DECODELAB_FONT.
pub(crate) fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("DECODELAB_FONT").unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
        let bytes = std::fs::read(&path).map_err(|e| format!(
            "PNG figures need a TrueType font: {path}: {e} (apt-get install fonts-dejavu-core, or set DECODELAB_FONT)"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What `draw_all` did: figures drawn, figures skipped (and why), warnings.
pub struct Drawn {
    pub written: usize,
    pub skipped: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

/// Draw every figure YAML in `dir` into `out` (SVG + PNG each) and write out/index.html. A
/// figure without data is left out and named in `skipped`.
pub fn draw_all(dir: &Path, out: &Path, measured: Option<&Path>) -> anyhow::Result<Drawn> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no figure YAMLs in {}", dir.display());
    }
    std::fs::create_dir_all(out)?;
    register_font()?;
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>decodelab: the talk's figures</title>\n\
         <style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%;border:1px solid #ccc}\
         table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}\
         pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}.warning{color:#a00}</style></head><body>\n\
         <h1>The Key Limiter of LLM Decode: Data Movement</h1>\n\
         <p>Figures of the talk reproduced by decodelab's analytic decode model. Each figure's YAML states its \
         assumptions; the numbers behind each figure are in the table under it.</p>\n",
    );
    let mut drawn = Drawn {
        written: 0,
        skipped: Vec::new(),
        warnings: Vec::new(),
    };
    for file in &files {
        let (spec, source) = load_figure(file)?;
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = compute(file.parent().unwrap_or(Path::new(".")), &spec, measured)
            .with_context(|| format!("figure {}", file.display()))?;
        if let Some(why) = &c.skipped {
            let _ = writeln!(
                html,
                "<h2 id=\"{stem}\">{}</h2>\n<p><i>Not drawn: {}.</i></p>",
                html_escape(spec.title()),
                html_escape(why)
            );
            drawn.skipped.push((stem, why.clone()));
            continue;
        }
        for w in &c.warnings {
            drawn.warnings.push(format!("{stem}: {w}"));
        }
        let (svg, png) = (
            out.join(format!("{stem}.svg")),
            out.join(format!("{stem}.png")),
        );
        let size = c.plot.size();
        draw(
            &SVGBackend::new(&svg, size).into_drawing_area(),
            spec.title(),
            &c.plot,
        )?;
        draw(
            &BitMapBackend::new(&png, size).into_drawing_area(),
            spec.title(),
            &c.plot,
        )?;
        drawn.written += 1;
        let _ = write!(
            html,
            "<h2 id=\"{stem}\">{}</h2>\n<img src=\"{stem}.svg\" alt=\"{}\">\n<p><a href=\"{stem}.png\">PNG</a></p>\n",
            html_escape(spec.title()),
            html_escape(spec.title())
        );
        if let Some(note) = &c.note {
            let _ = writeln!(html, "<p><b>{}</b></p>", html_escape(note));
        }
        for w in &c.warnings {
            let _ = writeln!(html, "<p class=\"warning\">warning: {}</p>", html_escape(w));
        }
        if !c.rows.is_empty() {
            html.push_str("<table><tr>");
            for col in &c.columns {
                let _ = write!(html, "<th>{}</th>", html_escape(col));
            }
            html.push_str("</tr>\n");
            for r in &c.rows {
                html.push_str("<tr>");
                for cell in r {
                    let _ = write!(html, "<td>{}</td>", html_escape(cell));
                }
                html.push_str("</tr>\n");
            }
            html.push_str("</table>\n");
        }
        let _ = writeln!(
            html,
            "<details><summary>{}</summary><pre>{}</pre></details>",
            html_escape(&file.display().to_string()),
            html_escape(&source)
        );
    }
    html.push_str("</body></html>\n");
    crate::report::write_atomic(&out.join("index.html"), &html)?;
    Ok(drawn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_keeps_only_points_no_other_beats() {
        // (devices, batch, user tokens/s, tokens/s per W)
        let all = [
            (16, 1, 100.0, 1.0),
            (16, 8, 50.0, 3.0),
            (32, 1, 200.0, 0.5),
            (32, 8, 60.0, 2.0), // beaten by (16, 8)? no: faster for users, less efficient
            (72, 1, 150.0, 0.4), // beaten by (32, 1): slower and less efficient
        ];
        let f: Vec<(u64, u64)> = pareto_frontier(&all).iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(f, [(16, 8), (32, 8), (16, 1), (32, 1)]);
    }
}
