//! The terminal table, summary.md and the side-by-side, split and link tables, and the
//! verdict at the end of a run.

use super::format::{fmt_opt, human_bytes, human_time, micros, params_label, sig};
use super::{LinkOut, ResultLine};
use crate::registry::Kernel;

/// The cells every table starts a result's row with: point, kernel, params, where it ran
/// (backend:device set), its implementation, split, GB/s (three significant figures).
fn row_head(l: &ResultLine) -> Vec<String> {
    vec![
        l.point.to_string(),
        l.kernel.clone(),
        params_label(&l.kernel, &l.params),
        format!("{}:{}", l.backend, l.key().2),
        if l.implementation.is_empty() {
            "-".into()
        } else {
            l.implementation.clone()
        },
        l.split.clone(),
        sig(l.gbps, 3),
    ]
}

/// The rows of the terminal table and summary.md: one unit per column (µs for times).
fn table_rows(lines: &[ResultLine]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "pt",
        "kernel",
        "params",
        "backend",
        "impl",
        "split",
        "GB/s",
        "%spec",
        "%stream",
        "F/B",
        "%roof",
        "median us",
        "+-%",
        "pJ/B",
        "rel err",
        "check",
    ];
    let rows = lines
        .iter()
        .map(|l| {
            let mut row = row_head(l);
            row.extend([
                fmt_opt(l.pct_of_spec, 1),
                fmt_opt(l.pct_of_stream, 1),
                l.roofline
                    .as_ref()
                    .map_or("-".into(), |r| sig(r.flop_per_byte, 3)),
                roof_cell(l),
                micros(l.time_s.median),
                l.time_s
                    .ci95
                    .map_or(String::new(), |c| format!("{:.1}", 100.0 * c)),
                l.energy.pj_per_byte.map_or("-".into(), |p| {
                    format!("{} ({})", sig(p, 3), l.energy.source)
                }),
                l.check
                    .rel_l2_err
                    .map_or("NaN".into(), |x| format!("{x:.1e}")),
                match (l.check.pass, l.time_s.noisy()) {
                    (false, _) => "FAIL".into(),
                    (true, true) => "ok, noisy".into(),
                    (true, false) => "ok".into(),
                },
            ]);
            row
        })
        .collect();
    (header, rows)
}

/// `62.1 mem` / `40.3 cmp` (% of the roofline, and the ceiling that sets it), or `-`.
fn roof_cell(l: &ResultLine) -> String {
    match l.roofline.as_ref() {
        Some(r) => match r.pct {
            Some(p) => format!(
                "{p:.1} {}",
                if r.bound == "compute" { "cmp" } else { "mem" }
            ),
            None => "?".into(),
        },
        None => "-".into(),
    }
}

/// The end of a run in a few lines: which backends ran where, the points closest to and
/// furthest from their ceiling, the noisy and the failed ones, and what to run next. (About
/// 100 lines: the verdict's paragraphs in the order it prints them, each a few lines.)
pub fn verdict(lines: &[ResultLine], results: &std::path::Path) -> String {
    let mut out = String::new();
    let mut ran: Vec<String> = lines
        .iter()
        .map(|l| format!("{}:{} = {}", l.backend, l.key().2, l.device))
        .collect();
    ran.sort();
    ran.dedup();
    out.push_str(&format!("ran on: {}\n", ran.join("; ")));
    // Held against the roofline where both ceilings were measured, else the stream ceiling.
    let roof = |l: &ResultLine| l.roofline.as_ref().and_then(|r| r.pct);
    let by_roof = lines.iter().any(|l| roof(l).is_some());
    let judged: Vec<&ResultLine> = lines
        .iter()
        .filter(|l| !l.is(Kernel::Stream) && l.check.pass)
        .filter(|l| match by_roof {
            true => roof(l).is_some(),
            false => l.pct_of_stream.is_some(),
        })
        .collect();
    let pct = |l: &&ResultLine| match by_roof {
        true => roof(l).unwrap_or(0.0),
        false => l.pct_of_stream.unwrap_or(0.0),
    };
    let what = if by_roof {
        "its roofline"
    } else {
        "the stream ceiling"
    };
    let bound = |l: &ResultLine| {
        l.roofline
            .as_ref()
            .filter(|_| by_roof)
            .map_or(String::new(), |r| format!(", {}-bound", r.bound))
    };
    let name = |l: &ResultLine| {
        format!(
            "point {} {} {} on {}:{} {}",
            l.point,
            l.kernel,
            params_label(&l.kernel, &l.params),
            l.backend,
            l.key().2,
            l.implementation
        )
    };
    if let (Some(best), Some(worst)) = (
        judged.iter().max_by(|a, b| pct(a).total_cmp(&pct(b))),
        judged.iter().min_by(|a, b| pct(a).total_cmp(&pct(b))),
    ) {
        out.push_str(&format!(
            "closest to {what}: {} at {:.1} % ({} GB/s{})\n",
            name(best),
            pct(best),
            sig(best.gbps, 3),
            bound(best)
        ));
        if judged.len() > 1 {
            out.push_str(&format!(
                "furthest from it: {} at {:.1} % ({} GB/s{})\n",
                name(worst),
                pct(worst),
                sig(worst.gbps, 3),
                bound(worst)
            ));
        }
    }
    let list = |pick: &dyn Fn(&ResultLine) -> bool| {
        let mut v: Vec<String> = lines
            .iter()
            .filter(|l| pick(l))
            .map(|l| l.point.to_string())
            .collect();
        v.dedup();
        v
    };
    let noisy = list(&|l| l.check.pass && l.time_s.noisy());
    if !noisy.is_empty() {
        out.push_str(&format!(
            "noisy (the median's 95 % interval wider than +-{:.0} % after up to 4x the reps): points {}; rerun them with --only {} --reps N\n",
            100.0 * super::NOISY_CI95,
            noisy.join(", "),
            noisy.join(",")
        ));
    }
    let failed = list(&|l| !l.check.pass);
    if !failed.is_empty() {
        out.push_str(&format!(
            "FAILED the oracle check: points {} (the reason is in each line's check.reason)\n",
            failed.join(", ")
        ));
    }
    let file = results.display();
    out.push_str(&format!(
        "next: decodelab plot {file}   (GB/s against the swept axis)\n      decodelab compare OTHER {file}   (against an earlier run)\n"
    ));
    if lines
        .iter()
        .any(|l| l.is(Kernel::KvDecode) || l.is(Kernel::ExpertGemv))
    {
        out.push_str(&format!(
            "      decodelab figures experiments/talk --measured {file}   (the talk's figures with these bandwidths)\n"
        ));
    }
    out
}

pub fn terminal_table(lines: &[ResultLine]) -> String {
    let (header, rows) = table_rows(lines);
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    format_columns(&header, &rows)
}

/// Backends side by side: one row per point, one `GB/s (rel err)` column per backend and
/// device. None when only one backend-device ran.
pub fn cross_check_table(lines: &[ResultLine]) -> Option<String> {
    let lines: Vec<&ResultLine> = lines.iter().filter(|l| l.split == "none").collect();
    let mut columns: Vec<String> = Vec::new();
    for l in &lines {
        let c = format!("{}:{}", l.backend, l.key().2);
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    if columns.len() < 2 {
        return None;
    }
    let mut points: Vec<usize> = lines.iter().map(|l| l.point).collect();
    points.sort();
    points.dedup();
    let mut rows = Vec::new();
    for p in points {
        let of_point: Vec<&&ResultLine> = lines.iter().filter(|l| l.point == p).collect();
        let first = of_point[0];
        let mut row = vec![
            p.to_string(),
            first.kernel.clone(),
            params_label(&first.kernel, &first.params),
        ];
        for c in &columns {
            row.push(
                match of_point
                    .iter()
                    .find(|l| format!("{}:{}", l.backend, l.key().2) == *c)
                {
                    Some(l) => format!(
                        "{:.2} ({}){}",
                        l.gbps,
                        l.check
                            .rel_l2_err
                            .map_or("NaN".into(), |x| format!("{x:.1e}")),
                        if l.check.pass { "" } else { " FAIL" }
                    ),
                    None => "-".into(),
                },
            );
        }
        rows.push(row);
    }
    let mut header = vec!["pt".to_string(), "kernel".into(), "params".into()];
    header.extend(columns.iter().map(|c| format!("{c} GB/s (err)")));
    Some(format_columns(&header, &rows))
}

pub(super) fn format_columns(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let fmt_row = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = fmt_row(header);
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&fmt_row(r));
        out.push('\n');
    }
    out
}

pub fn summary_markdown(
    experiment: &str,
    source_file: &str,
    lines: &[ResultLine],
    results: &std::path::Path,
) -> String {
    let (header, rows) = table_rows(lines);
    let passed = lines.iter().filter(|l| l.check.pass).count();
    let mut s = format!(
        "# {experiment}\n\nFrom `{source_file}`: {} results, {passed} passed the oracle check.\n\n",
        lines.len()
    );
    if let Some(env) = lines.first().map(|l| &l.env) {
        s.push_str(&format!(
            "decodelab {}, timer per backend in results.jsonl (`env.timer`).\n\n",
            env.get("decodelab").and_then(|v| v.as_str()).unwrap_or("?")
        ));
    }
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    if let Some(cross) = cross_check_table(lines) {
        s.push_str(&format!("\n## Backends side by side\n\n```\n{cross}```\n"));
    }
    if let Some(t) = split_table(lines) {
        s.push_str(&format!("\n## Splits\n\n```\n{t}```\n"));
    }
    if let Some(t) = link_table(lines) {
        s.push_str(&format!("\n## Links\n\n```\n{t}```\n"));
    }
    s.push_str(&format!(
        "\n## Verdict\n\n```\n{}```\n",
        verdict(lines, results)
    ));
    s
}

/// Split points: end to end against one device, the slowest and fastest shard, the combine.
pub fn split_table(lines: &[ResultLine]) -> Option<String> {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .filter_map(|l| l.multi.as_ref().map(|m| (l, m)))
        .map(|(l, m)| {
            let shard_gbps = m.shards.iter().map(|s| s.gbps);
            let (lo, hi) = shard_gbps.fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(x), b.max(x)));
            let mut row = row_head(l);
            row.extend([
                m.one_device
                    .as_ref()
                    .map_or("-".into(), |o| format!("{:.2}", o.gbps)),
                m.scaling_efficiency
                    .map_or("-".into(), |e| format!("{:.0} %", 100.0 * e)),
                format!("{lo:.2}..{hi:.2}"),
                format!(
                    "{} {} in {}",
                    m.combine.method,
                    human_bytes(m.combine.bytes),
                    human_time(m.combine.time_s.median)
                ),
                match &m.vs_one_device {
                    Some(v) if v.identical => "identical".into(),
                    Some(v) => {
                        format!("{:.1e}{}", v.rel_l2_diff, if v.pass { "" } else { " FAIL" })
                    }
                    None => "-".into(),
                },
            ]);
            row
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let header: Vec<String> = [
        "pt",
        "kernel",
        "params",
        "devices",
        "split",
        "GB/s",
        "1-dev GB/s",
        "scaling",
        "shard GB/s",
        "combine",
        "vs 1 device",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Some(format_columns(&header, &rows))
}

/// Link points: one row per (point, backend, source), one GB/s column per destination.
pub fn link_table(lines: &[ResultLine]) -> Option<String> {
    let links: Vec<(&ResultLine, &LinkOut)> = lines
        .iter()
        .filter_map(|l| l.link.as_ref().map(|k| (l, k)))
        .collect();
    if links.is_empty() {
        return None;
    }
    // Logical device labels come from the result key: "src->dst".
    let ends = |l: &ResultLine| -> (String, String) {
        let k = l.key().2;
        let (a, b) = k.split_once("->").unwrap_or((&k, ""));
        (a.to_string(), b.to_string())
    };
    let mut dsts: Vec<String> = links.iter().map(|(l, _)| ends(l).1).collect();
    dsts.sort_by_key(|d| d.parse::<usize>().unwrap_or(usize::MAX));
    dsts.dedup();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut keys: Vec<(usize, String, String)> = Vec::new();
    for (l, _) in &links {
        let key = (l.point, l.backend.clone(), ends(l).0);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (point, backend, src) in &keys {
        let of: Vec<&(&ResultLine, &LinkOut)> = links
            .iter()
            .filter(|(l, _)| l.point == *point && l.backend == *backend && ends(l).0 == *src)
            .collect();
        let first = of[0].0;
        let mut row = vec![
            point.to_string(),
            params_label(Kernel::Link.name(), &first.params),
            format!("{backend}:{src}"),
        ];
        for d in &dsts {
            row.push(
                of.iter()
                    .find(|(l, _)| ends(l).1 == *d)
                    .map_or("-".into(), |(l, _)| {
                        format!("{:.2}{}", l.gbps, if l.check.pass { "" } else { " FAIL" })
                    }),
            );
        }
        row.push(of[0].1.path.clone());
        rows.push(row);
    }
    let mut header = vec!["pt".to_string(), "link".into(), "from".into()];
    header.extend(dsts.iter().map(|d| format!("to {d} GB/s")));
    header.push("path".into());
    Some(format_columns(&header, &rows))
}
