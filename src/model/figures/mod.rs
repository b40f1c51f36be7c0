//! The talk's figures: one YAML per figure in experiments/talk/, each drawn as SVG and PNG
//! (plotters, `charts`), plus an index.html with every figure and the numbers behind it.

mod charts;
mod compute;

pub use compute::compute;

use super::{Breakdown, DType, MeasuredTerms, Scenario, evaluate, find_hardware, find_model};
use anyhow::{Context, bail};
use charts::{Plot, draw};
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
        "{} on {} x {}: batch {}, context {}, KV {}",
        b.model,
        s.devices,
        b.hardware,
        s.batch,
        s.context,
        s.kv.unwrap_or(DType::Bf16).name()
    );
    let f = &b.weight_formats;
    let bits = |d: DType| format!("{d} ({} bits per weight)", d.bits_per_value());
    let _ = writeln!(
        o,
        "weights: routed experts {}, the rest {} (embedding and lm_head bf16)",
        bits(f.experts),
        bits(f.rest)
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
        .map_err(|e| crate::error::ConfigError::from_yaml(&file, &source, &e))?;
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
/// figure without data is left out and named in `skipped`. (About 100 lines: reading, drawing
/// and indexing the figures are one loop with one error path per figure.)
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
    crate::report::style::register_font()?;
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
