//! The talk's figures: one YAML per figure in experiments/talk/, each drawn as SVG and PNG
//! (plotters), plus an index.html with every figure and the numbers behind it.

use super::{Breakdown, MeasuredTerms, ModelDtype, Scenario, evaluate, find_hardware, find_model};
use anyhow::{Context, anyhow, bail};
use plotters::coord::Shift;
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
    plot: Plot,
}

enum Plot {
    /// Labelled bars, each a stack of (series, value); y label.
    Stacked {
        bars: Vec<(String, Vec<f64>)>,
        series: Vec<&'static str>,
        y_label: String,
        percent_labels: bool,
    },
    /// Several (label, points) series on x/y axes; marked points with labels.
    Lines {
        series: Vec<(String, Vec<(f64, f64)>)>,
        marks: Vec<(String, (f64, f64))>,
        x_label: String,
        y_label: String,
        log_x: bool,
    },
    /// Two stacked panels side by side.
    Pair(Box<Plot>, Box<Plot>),
    Nothing,
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
    Ok(match spec {
        FigureSpec::JouleBreakdown {
            point: p,
            sensitivity_contexts,
            ..
        } => {
            let b = point(dir, p)?;
            let pct = b.energy_j_per_token.percent();
            let e = &b.energy_j_per_token;
            let mut rows: Vec<Vec<String>> = SERIES
                .iter()
                .zip(split_values(e).into_iter().zip(split_values(&pct)))
                .map(|(n, (j, p))| vec![n.to_string(), format!("{j:.5}"), format!("{p:.1}")])
                .collect();
            for &ctx in sensitivity_contexts {
                let other = point(
                    dir,
                    &PointSpec {
                        context: ctx,
                        ..p.clone()
                    },
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
                ]);
            }
            Computed {
                columns: vec!["part".into(), "J / token".into(), "% of J / token".into()],
                rows,
                note: Some(format!(
                    "{}: batch {}, context {}, {} devices, {:.2} TB of weights and {:.2} TB of KV per step",
                    label_of(p, &b),
                    p.batch,
                    p.context,
                    p.devices,
                    b.weight_bytes / 1e12,
                    b.kv_bytes / 1e12
                )),
                plot: Plot::Stacked {
                    bars: SERIES
                        .iter()
                        .zip(split_values(&pct))
                        .map(|(n, v)| {
                            let mut stack = vec![0.0; 4];
                            stack[SERIES.iter().position(|s| s == n).unwrap_or(0)] = v;
                            (n.to_string(), stack)
                        })
                        .collect(),
                    series: SERIES.to_vec(),
                    y_label: "% of joules per token".into(),
                    percent_labels: true,
                },
            }
        }
        FigureSpec::KeyLimiter { points, .. } => {
            let mut rows = Vec::new();
            let mut bars = Vec::new();
            for p in points {
                let b = point(dir, p)?;
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
            Computed {
                columns: [
                    "point",
                    "weights ms",
                    "KV ms",
                    "compute ms",
                    "comm ms",
                    "total ms",
                    "% W/KV/C/comm",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                note: None,
                plot: Plot::Stacked {
                    bars,
                    series: SERIES.to_vec(),
                    y_label: "ms per token".into(),
                    percent_labels: false,
                },
            }
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
                        label: None,
                        model: model.clone(),
                        hardware: hardware.clone(),
                        batch: b,
                        context: *context,
                        devices: d,
                        weights: None,
                        kv: None,
                    };
                    let r = point(dir, &p)?;
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
                series.push((format!("{d} devices"), pts));
            }
            let eff = all
                .iter()
                .max_by(|a, b| a.3.total_cmp(&b.3))
                .ok_or_else(|| anyhow!("no points"))?;
            let lat = all
                .iter()
                .max_by(|a, b| a.2.total_cmp(&b.2))
                .ok_or_else(|| anyhow!("no points"))?;
            Computed {
                columns: [
                    "devices",
                    "batch",
                    "user tokens/s",
                    "system tokens/s",
                    "tokens/s per W",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                note: Some(format!(
                    "high-efficiency decode: {} devices, batch {} ({:.2} tokens/s/W at {:.0} user tokens/s); low-latency decode: {} devices, batch {} ({:.0} user tokens/s at {:.3} tokens/s/W)",
                    eff.0, eff.1, eff.3, eff.2, lat.0, lat.1, lat.2, lat.3
                )),
                plot: Plot::Lines {
                    series,
                    marks: vec![
                        ("high-efficiency (peak throughput)".into(), (eff.2, eff.3)),
                        ("low-latency".into(), (lat.2, lat.3)),
                    ],
                    x_label: "user tokens/s".into(),
                    y_label: "system tokens/s per W".into(),
                    log_x: true,
                },
            }
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
            let tenth = eval(base / 10.0)?;
            Computed {
                columns: [
                    "cross-chip hop latency (us)",
                    "communication ms/token",
                    "total ms/token",
                    "single-user tokens/s",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                note: Some(format!(
                    "{} blocks x ({on_chip_hops} on-chip + {cross_chip_hops} cross-chip) hops; at {base} us per cross-chip hop: {:.0} tokens/s, at {} us (10x lower): {:.0} tokens/s ({:.1}x)",
                    m.layers,
                    now.user_tokens_per_s,
                    base / 10.0,
                    tenth.user_tokens_per_s,
                    tenth.user_tokens_per_s / now.user_tokens_per_s
                )),
                plot: Plot::Lines {
                    series: vec![(format!("{} on {devices} x {}", m.name, h.name), pts)],
                    marks: vec![
                        ("today".into(), (base, now.user_tokens_per_s)),
                        (
                            "10x lower latency".into(),
                            (base / 10.0, tenth.user_tokens_per_s),
                        ),
                    ],
                    x_label: "latency per cross-chip hop (us)".into(),
                    y_label: "speed-of-light single-user tokens/s".into(),
                    log_x: true,
                },
            }
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
            let (mut ebars, mut tbars) = (Vec::new(), Vec::new());
            let mut totals = Vec::new();
            for side in [before, after] {
                let p = PointSpec {
                    label: None,
                    model: model.clone(),
                    hardware: side.hardware.clone(),
                    batch: *batch,
                    context: *context,
                    devices: side.devices,
                    weights: None,
                    kv: None,
                };
                let b = point(dir, &p)?;
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
                ebars.push((side.label.clone(), split_values(e)));
                tbars.push((side.label.clone(), split_values(t)));
                totals.push((e.total, t.total));
            }
            Computed {
                columns: [
                    "system",
                    "devices",
                    "weights J",
                    "KV J",
                    "compute J",
                    "comm J",
                    "total J/token",
                    "ms/token",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                note: Some(format!(
                    "energy per token {:.1}x lower, time per token {:.1}x lower",
                    totals[0].0 / totals[1].0,
                    totals[0].1 / totals[1].1
                )),
                plot: Plot::Pair(
                    Box::new(Plot::Stacked {
                        bars: ebars,
                        series: SERIES.to_vec(),
                        y_label: "J per token".into(),
                        percent_labels: false,
                    }),
                    Box::new(Plot::Stacked {
                        bars: tbars,
                        series: SERIES.to_vec(),
                        y_label: "ms per token".into(),
                        percent_labels: false,
                    }),
                ),
            }
        }
        FigureSpec::Measured { hardware, .. } => {
            let h = find_hardware(dir, hardware)?;
            let Some(path) = measured else {
                return Ok(Computed {
                    columns: vec![],
                    rows: vec![],
                    note: Some("skipped: no results file given (decodelab figures DIR --measured results.jsonl)".into()),
                    plot: Plot::Nothing,
                });
            };
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--measured {}", path.display()))?;
            let pj = h.energy.as_ref().map(|e| e.memory_pj_per_bit * 8.0);
            let mut rows = Vec::new();
            let mut bars = Vec::new();
            for l in text
                .lines()
                .filter_map(|l| serde_json::from_str::<crate::report::ResultLine>(l).ok())
            {
                let label = format!(
                    "{} {} {}",
                    l.point,
                    l.backend,
                    crate::report::params_label(&l.kernel, &l.params)
                );
                rows.push(vec![
                    label.clone(),
                    l.device.clone(),
                    format!("{:.2}", l.gbps),
                    format!("{:.0}", h.memory_bandwidth_gbps),
                    l.energy
                        .pj_per_byte
                        .map_or("-".into(), |x| format!("{x:.1}")),
                    pj.map_or("-".into(), |x| format!("{x:.1}")),
                ]);
                bars.push((
                    format!("{} {}", l.point, l.backend),
                    vec![l.gbps, 0.0, 0.0, 0.0],
                ));
            }
            Computed {
                columns: [
                    "point",
                    "device",
                    "measured GB/s",
                    "profile GB/s",
                    "measured pJ/byte",
                    "profile pJ/byte",
                ]
                .map(String::from)
                .to_vec(),
                rows,
                note: Some(format!(
                    "measured in {} (see the device column) against the {} profile",
                    path.display(),
                    h.name
                )),
                plot: Plot::Stacked {
                    bars,
                    series: vec!["measured GB/s"],
                    y_label: "GB/s".into(),
                    percent_labels: false,
                },
            }
        }
    })
}

fn colour(i: usize) -> RGBColor {
    [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
    ][i % 5]
}

type DrawResult = anyhow::Result<()>;

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, plot: &Plot) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    area.fill(&WHITE).map_err(e)?;
    match plot {
        Plot::Nothing => {
            area.draw(&Text::new(
                format!("{title}: no data (skipped)"),
                (20, 40),
                ("sans-serif", 20),
            ))
            .map_err(e)?;
        }
        Plot::Pair(a, b) => {
            let titled = area.titled(title, ("sans-serif", 22)).map_err(e)?;
            let (l, r) = titled.split_horizontally(titled.dim_in_pixel().0 / 2);
            draw(&l, "", a)?;
            draw(&r, "", b)?;
        }
        Plot::Stacked {
            bars,
            series,
            y_label,
            percent_labels,
        } => {
            let max = bars
                .iter()
                .map(|(_, v)| v.iter().sum::<f64>())
                .fold(0.0, f64::max)
                .max(1e-12)
                * 1.15;
            let n = bars.len();
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..max)
                .map_err(e)?;
            let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n.max(1))
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc(y_label.as_str())
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(e)?;
            for (si, name) in series.iter().enumerate() {
                let rects: Vec<Rectangle<(f64, f64)>> = bars
                    .iter()
                    .enumerate()
                    .map(|(i, (_, v))| {
                        let base: f64 = v[..si].iter().sum();
                        let top = base + v.get(si).copied().unwrap_or(0.0);
                        Rectangle::new(
                            [(i as f64 - 0.35, base), (i as f64 + 0.35, top)],
                            colour(si).filled(),
                        )
                    })
                    .collect();
                chart
                    .draw_series(rects)
                    .map_err(e)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour(si).filled())
                    });
            }
            if *percent_labels {
                chart
                    .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                        let s: f64 = v.iter().sum();
                        Text::new(
                            format!("{s:.1} %"),
                            (i as f64 - 0.15, s + max * 0.02),
                            ("sans-serif", 16),
                        )
                    }))
                    .map_err(e)?;
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(e)?;
            }
        }
        Plot::Lines {
            series,
            marks,
            x_label,
            y_label,
            log_x,
        } => {
            let pts = series
                .iter()
                .flat_map(|(_, p)| p.iter())
                .chain(marks.iter().map(|(_, p)| p));
            let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
            for &(x, y) in pts {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
            let y1 = y1 * 1.15 + 1e-12;
            let mut cb = ChartBuilder::on(area);
            cb.caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70);
            if *log_x {
                let mut chart = cb
                    .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..y1)
                    .map_err(e)?;
                chart
                    .configure_mesh()
                    .x_desc(x_label.as_str())
                    .y_desc(y_label.as_str())
                    .label_style(("sans-serif", 13))
                    .draw()
                    .map_err(e)?;
                for (i, (name, p)) in series.iter().enumerate() {
                    chart
                        .draw_series(LineSeries::new(
                            p.iter().copied(),
                            colour(i).stroke_width(2),
                        ))
                        .map_err(e)?
                        .label(name.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 15, y)], colour(i).stroke_width(2))
                        });
                    chart
                        .draw_series(p.iter().map(|&q| Circle::new(q, 3, colour(i).filled())))
                        .map_err(e)?;
                }
                for (label, q) in marks {
                    chart
                        .draw_series([Circle::new(*q, 7, BLACK.stroke_width(2))])
                        .map_err(e)?;
                    // Labels in the right half of the plot go to the left of their point.
                    let span = (x1 * 1.25).ln() - (x0 * 0.8).ln();
                    let right = q.0.ln() - (x0 * 0.8).ln() > 0.5 * span;
                    let dx = if right {
                        -(label.len() as i32) * 8 - 10
                    } else {
                        10
                    };
                    chart
                        .draw_series([EmptyElement::at(*q)
                            + Text::new(label.clone(), (dx, -18), ("sans-serif", 15))])
                        .map_err(e)?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(e)?;
            } else {
                bail!("only log-x line plots are drawn");
            }
        }
    }
    area.present().map_err(e)?;
    Ok(())
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

/// Draw every figure YAML in `dir` into `out` (SVG + PNG each) and write out/index.html.
pub fn draw_all(dir: &Path, out: &Path, measured: Option<&Path>) -> anyhow::Result<usize> {
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
         pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}</style></head><body>\n\
         <h1>The Key Limiter of LLM Decode: Data Movement</h1>\n\
         <p>Figures of the talk reproduced by decodelab's analytic decode model. Each figure's YAML states its \
         assumptions; the numbers behind each figure are in the table under it.</p>\n",
    );
    let mut written = 0;
    for file in &files {
        let (spec, source) = load_figure(file)?;
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let c = compute(file.parent().unwrap_or(Path::new(".")), &spec, measured)
            .with_context(|| format!("figure {}", file.display()))?;
        let (svg, png) = (
            out.join(format!("{stem}.svg")),
            out.join(format!("{stem}.png")),
        );
        let size = (1000, 560);
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
        written += 1;
        let _ = write!(
            html,
            "<h2 id=\"{stem}\">{}</h2>\n<img src=\"{stem}.svg\" alt=\"{}\">\n<p><a href=\"{stem}.png\">PNG</a></p>\n",
            html_escape(spec.title()),
            html_escape(spec.title())
        );
        if let Some(note) = &c.note {
            let _ = writeln!(html, "<p><b>{}</b></p>", html_escape(note));
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
    Ok(written)
}
