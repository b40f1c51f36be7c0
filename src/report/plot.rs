//! `decodelab plot RESULTS`: the sweep a user ran, drawn. One chart per kernel: GB/s against
//! the swept axis (context, batch, bytes, ...), one line per backend, implementation and
//! every other parameter that varies (dtype, math, ...), with the stream-read ceiling and the
//! spec line where the results know them. SVG and PNG, and an index.html beside them.

use super::format::{params_label, sig, tick};
use super::{ResultLine, load_lines};
use crate::registry::Kernel;
use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Numeric parameters a sweep runs along, in the order one is picked as the x axis.
const AXES: [&str; 9] = [
    "context",
    "batch",
    "bytes",
    "experts",
    "d_in",
    "d_out",
    "q_heads",
    "top_k",
    "page_size",
];
/// Parameters that never tell series apart (derived from others, or constant by nature).
const IGNORED: [&str; 4] = ["scale", "context_lens", "experts_touched", "v_head_dim"];

/// One chart: its lines and reference levels.
pub struct Chart {
    /// The kernel, with its attention kind for kv_decode (GQA and MLA are other shapes).
    pub kernel: String,
    pub axis: String,
    /// (series label, points (x, GB/s)), points sorted by x.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// (label, GB/s): the stream-read ceiling per backend device, the spec.
    pub levels: Vec<(String, f64)>,
    /// What was left out, e.g. points that failed the check.
    pub notes: Vec<String>,
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a chart is of: the kernel, and kv_decode's attention kind.
fn chart_of(l: &ResultLine) -> String {
    match l.params.get("attention").and_then(|a| a.as_str()) {
        Some(a) => format!("{}-{a}", l.kernel),
        None => l.kernel.clone(),
    }
}

/// The charts of a run: one per kernel (and attention kind) with a swept numeric axis. (About
/// 100 lines: finding the swept axis and the series are one pass over a kernel's lines.)
pub fn charts(lines: &[ResultLine]) -> Vec<Chart> {
    let mut kernels: Vec<String> = lines.iter().map(chart_of).collect();
    kernels.sort();
    kernels.dedup();
    let mut out = Vec::new();
    for kernel in kernels {
        let of: Vec<&ResultLine> = lines
            .iter()
            .filter(|l| chart_of(l) == kernel && l.split == "none" && l.link.is_none())
            .collect();
        let failed = of.iter().filter(|l| !l.check.pass).count();
        let ok: Vec<&&ResultLine> = of.iter().filter(|l| l.check.pass).collect();
        // Every parameter's distinct values over the kernel's points.
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in &ok {
            if let Some(m) = l.params.as_object() {
                for (k, v) in m {
                    let e = values.entry(k.clone()).or_default();
                    let t = value_text(v);
                    if !e.contains(&t) {
                        e.push(t);
                    }
                }
            }
        }
        let Some(axis) = AXES
            .iter()
            .find(|a| values.get(**a).is_some_and(|v| v.len() > 1))
        else {
            continue;
        };
        let varying: Vec<&String> = values
            .iter()
            .filter(|(k, v)| v.len() > 1 && k.as_str() != *axis && !IGNORED.contains(&k.as_str()))
            .map(|(k, _)| k)
            .collect();
        let multi_backend = ok
            .iter()
            .map(|l| (l.backend.as_str(), l.implementation.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for l in &ok {
            let Some(x) = l.params.get(*axis).and_then(|v| v.as_f64()) else {
                continue;
            };
            let mut name = vec![format!("{}:{} {}", l.backend, l.key().2, l.implementation)];
            if !multi_backend {
                name.clear();
            }
            for k in &varying {
                if let Some(v) = l.params.get(k.as_str()) {
                    name.push(format!("{k}={}", value_text(v)));
                }
            }
            let label = if name.is_empty() {
                format!("{}:{}", l.backend, l.key().2)
            } else {
                name.join(" ")
            };
            series.entry(label).or_default().push((x, l.gbps));
        }
        for p in series.values_mut() {
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let mut levels = Vec::new();
        for l in lines.iter().filter(|l| {
            l.is(Kernel::Stream)
                && l.params.get("op").and_then(|v| v.as_str()) == Some("read")
                && l.check.pass
                && l.split == "none"
        }) {
            let label = format!("stream read {}:{}", l.backend, l.key().2);
            match levels
                .iter_mut()
                .find(|(n, _): &&mut (String, f64)| *n == label)
            {
                Some((_, g)) => *g = f64::max(*g, l.gbps),
                None => levels.push((label, l.gbps)),
            }
        }
        if let Some(spec) = ok.iter().find_map(|l| {
            l.pct_of_spec
                .filter(|p| *p > 0.0)
                .map(|p| l.gbps * 100.0 / p)
        }) {
            levels.push(("spec".into(), spec));
        }
        let mut notes = Vec::new();
        if failed > 0 {
            notes.push(format!(
                "{failed} point(s) failed the oracle check and are not drawn"
            ));
        }
        out.push(Chart {
            kernel,
            axis: axis.to_string(),
            series: series.into_iter().collect(),
            levels,
            notes,
        });
    }
    out
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting: {x:?}");
    area.fill(&WHITE).map_err(e)?;
    let xs = c.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y1 = c
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .chain(c.levels.iter().map(|l| l.1))
        .fold(0.0, f64::max)
        * 1.12
        + 1e-12;
    let title = format!("{}: GB/s against {}", c.kernel, c.axis);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0.0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(c.axis.as_str())
        .y_desc("GB/s")
        .x_label_formatter(&|x| tick(*x))
        .y_label_formatter(&|y| tick(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (i, (label, gbps)) in c.levels.iter().enumerate() {
        let style = if label == "spec" {
            BLACK.stroke_width(1)
        } else {
            super::style::colour(i).mix(0.6).stroke_width(1)
        };
        chart
            .draw_series(DashedLineSeries::new(
                [(x0 * 0.8, *gbps), (x1 * 1.25, *gbps)],
                6,
                4,
                style,
            ))
            .map_err(e)?
            .label(format!("{label} ({} GB/s)", sig(*gbps, 3)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], style));
    }
    for (i, (label, p)) in c.series.iter().enumerate() {
        let k = i + c.levels.len();
        chart
            .draw_series(LineSeries::new(
                p.iter().copied(),
                super::style::colour(k).stroke_width(2),
            ))
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 15, y)],
                    super::style::colour(k).stroke_width(2),
                )
            });
        chart
            .draw_series(
                p.iter()
                    .map(|&q| Circle::new(q, 3, super::style::colour(k).filled())),
            )
            .map_err(e)?;
    }
    super::style::legend_and_present(&mut chart, area, SeriesLabelPosition::UpperLeft)
}

/// Draw every chart of `results` into `out` (default: `plots/` beside the results), with an
/// index.html; the folder and how many charts were drawn.
pub fn run(results: &Path, out: Option<&Path>) -> anyhow::Result<(PathBuf, usize)> {
    let lines = load_lines(results)?;
    let folder = if results.is_dir() {
        results.to_path_buf()
    } else {
        results.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let out = out.map_or_else(|| folder.join("plots"), Path::to_path_buf);
    let charts = charts(&lines);
    let roofs = super::plot_roofline::roofs(&lines);
    anyhow::ensure!(
        !charts.is_empty() || !roofs.is_empty(),
        "{}: nothing to plot: no kernel was swept along {} and no point carries both ceilings \
         (a single shape is a table, not a plot)",
        results.display(),
        AXES.join(", ")
    );
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    super::style::register_font()?;
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>decodelab: {}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}img{{max-width:100%;border:1px solid #ccc}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:2px 6px;text-align:right}}</style></head><body>\n\
         <h1>{}</h1>\n<p>{} result lines from <code>{}</code>.</p>\n",
        lines[0].experiment,
        lines[0].experiment,
        lines.len(),
        results.display()
    );
    for (i, r) in roofs.iter().enumerate() {
        let stem = format!("roofline-{i}");
        let size = (1000, 620);
        let svg = out.join(format!("{stem}.svg"));
        super::plot_roofline::draw(&SVGBackend::new(&svg, size).into_drawing_area(), r)?;
        let png = out.join(format!("{stem}.png"));
        super::plot_roofline::draw(&BitMapBackend::new(&png, size).into_drawing_area(), r)?;
        let _ = writeln!(
            html,
            "<h2>{} against its roofline</h2>\n<img src=\"{stem}.svg\" alt=\"roofline of {}\">\n<p><a href=\"{stem}.png\">PNG</a>. \
             The bent line: stream read x FLOP per byte, up to the compute ceiling ({}). A point on the slope \
             is held by memory; under the flat part, by compute.</p>",
            r.device, r.device, r.peak
        );
    }
    for c in &charts {
        let stem = c.kernel.clone();
        let size = (1000, 560);
        draw(
            &SVGBackend::new(&out.join(format!("{stem}.svg")), size).into_drawing_area(),
            c,
        )?;
        draw(
            &BitMapBackend::new(&out.join(format!("{stem}.png")), size).into_drawing_area(),
            c,
        )?;
        let _ = writeln!(
            html,
            "<h2>{}</h2>\n<img src=\"{stem}.svg\" alt=\"{} GB/s against {}\">\n<p><a href=\"{stem}.png\">PNG</a></p>",
            c.kernel, c.kernel, c.axis
        );
        for n in &c.notes {
            let _ = writeln!(html, "<p><b>{n}</b></p>");
        }
    }
    html.push_str("<h2>Points</h2>\n<table><tr><th>point</th><th>kernel</th><th>params</th><th>backend</th><th>impl</th><th>GB/s</th><th>% stream</th><th>% roofline</th><th>check</th></tr>\n");
    for l in &lines {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.point,
            l.kernel,
            params_label(&l.kernel, &l.params).replace('<', "&lt;"),
            l.backend,
            l.key().2,
            l.implementation,
            sig(l.gbps, 3),
            l.pct_of_stream.map_or("-".into(), |p| format!("{p:.1}")),
            l.roofline.as_ref().map_or("-".into(), |r| r.short()),
            if l.check.pass { "ok" } else { "FAIL" }
        );
    }
    html.push_str("</table></body></html>\n");
    super::write_atomic(&out.join("index.html"), &html)?;
    Ok((out, charts.len() + roofs.len()))
}
