//! What each figure computes from the model: the numbers of its table and what it draws.

use super::charts::{Plot, Series};
use super::{Computed, FigureSpec, PointSpec, SERIES, label_of, point_noted, split_values};
use crate::model::{Breakdown, MeasuredTerms, Scenario, evaluate, find_hardware, find_model};
use anyhow::{Context, anyhow};
use std::path::Path;

/// A figure's numbers and drawing, by its kind.
pub fn compute(dir: &Path, spec: &FigureSpec, measured: Option<&Path>) -> anyhow::Result<Computed> {
    match spec {
        FigureSpec::JouleBreakdown { .. } => joule_breakdown(dir, spec),
        FigureSpec::KeyLimiter { .. } => key_limiter(dir, spec),
        FigureSpec::Pareto { .. } => pareto(dir, spec),
        FigureSpec::CommLatency { .. } => comm_latency(dir, spec),
        FigureSpec::Sram { .. } => sram(dir, spec),
        FigureSpec::Measured { .. } => against_measured(dir, spec, measured),
    }
}

/// A figure's table and drawing, with the warnings its points raised.
fn done(
    columns: &[&str],
    rows: Vec<Vec<String>>,
    note: Option<String>,
    plot: Plot,
    warnings: Vec<String>,
) -> Computed {
    Computed {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        note,
        warnings,
        skipped: None,
        plot,
    }
}

/// Milliseconds in the tables.
fn f(x: f64) -> String {
    format!("{x:.4}")
}

fn joule_breakdown(dir: &Path, spec: &FigureSpec) -> anyhow::Result<Computed> {
    let FigureSpec::JouleBreakdown {
        point: p,
        sensitivity_contexts,
        talk_percent,
        ..
    } = spec
    else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
    })
}

fn key_limiter(dir: &Path, spec: &FigureSpec) -> anyhow::Result<Computed> {
    let FigureSpec::KeyLimiter { points, .. } = spec else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
    })
}

fn pareto(dir: &Path, spec: &FigureSpec) -> anyhow::Result<Computed> {
    let FigureSpec::Pareto {
        model,
        hardware,
        context,
        batches,
        devices,
        ..
    } = spec
    else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
    })
}

fn comm_latency(dir: &Path, spec: &FigureSpec) -> anyhow::Result<Computed> {
    let FigureSpec::CommLatency {
        model,
        hardware,
        devices,
        context,
        latencies_us,
        on_chip_hops,
        cross_chip_hops,
        ..
    } = spec
    else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
    })
}

fn sram(dir: &Path, spec: &FigureSpec) -> anyhow::Result<Computed> {
    let FigureSpec::Sram {
        model,
        batch,
        context,
        before,
        after,
        ..
    } = spec
    else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
    })
}

fn against_measured(
    dir: &Path,
    spec: &FigureSpec,
    measured: Option<&Path>,
) -> anyhow::Result<Computed> {
    let FigureSpec::Measured { hardware, .. } = spec else {
        unreachable!("dispatched by kind")
    };
    let mut warnings = Vec::new();
    Ok({
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
