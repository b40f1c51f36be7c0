//! Results: one JSON object per point, appended and flushed as each point finishes; CSV,
//! summary.md and the terminal table are derived from those lines at the end.

pub mod npy;

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const SCHEMA: &str = "decodelab.result/1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TimeStats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl TimeStats {
    pub fn from_samples(samples: &[f64]) -> Option<TimeStats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        Some(TimeStats {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// The energy of one step: the primary figure (measured where it exists, else modelled),
/// and both sides in full.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Energy {
    /// nvml, model or none: where `joules` and `pj_per_byte` come from.
    pub source: String,
    pub joules: Option<f64>,
    pub pj_per_byte: Option<f64>,
    #[serde(default)]
    pub measured: Option<crate::energy::Figures>,
    #[serde(default)]
    pub modelled: Option<crate::energy::Figures>,
    /// Why a side is missing (no NVML, no profile), when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckOut {
    pub rel_l2_err: Option<f64>,
    pub max_abs_err: Option<f64>,
    /// `math: bf16`: the error of the f64 reference with the same operand rounding, against
    /// the exact answer; the kernel may be at most 2x this (plus 1e-6) off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_rel_l2_err: Option<f64>,
    pub pass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a point's host seconds went, beside its kernel times.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostSeconds {
    /// Seeded inputs (0 when reused from the previous point).
    pub generate: f64,
    /// The f64 oracle (it runs while the point is uploaded and compiled).
    pub oracle: f64,
    /// Uploading the inputs and allocating the outputs (compile time excluded).
    pub upload: f64,
    /// NVRTC, on cuda.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<f64>,
    /// Comparing the outputs with the oracle.
    pub check: f64,
    /// The inputs (and, for the same math, the reference) came from the previous point.
    #[serde(default)]
    pub reused_inputs: bool,
}

/// One result line, in design.md's order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultLine {
    pub schema: String,
    pub experiment: String,
    pub point: usize,
    pub kernel: String,
    pub backend: String,
    /// Which implementation of the kernel ran ("simple", or a tuned one).
    #[serde(rename = "impl", default)]
    pub implementation: String,
    pub device: String,
    pub device_count: usize,
    pub split: String,
    pub params: serde_json::Value,
    pub bytes: u64,
    pub flops: u64,
    pub reps: usize,
    pub time_s: TimeStats,
    pub gbps: f64,
    pub pct_of_spec: Option<f64>,
    pub pct_of_stream: Option<f64>,
    pub cache: String,
    pub energy: Energy,
    pub check: CheckOut,
    pub env: serde_json::Value,
    /// Host seconds of the point (absent for links and for results of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_s: Option<HostSeconds>,
    /// Split points: the shards, the combine and the scaling (absent for one device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi: Option<MultiDevice>,
    /// Link points: which two devices, and the path between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkOut>,
}

/// One shard of a split point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardOut {
    /// Logical device (0..device_count) and the physical device it ran on.
    pub device: usize,
    pub physical: usize,
    pub params: serde_json::Value,
    pub bytes: u64,
    pub time_s: TimeStats,
    pub gbps: f64,
    pub rel_l2_err: Option<f64>,
}

/// The combine of a split point: what moved, how, and how fast.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CombineOut {
    /// `host-staged` (read back to the host and merged there) or `nccl`.
    pub method: String,
    /// Bytes of shard outputs moved to where the point's outputs are assembled.
    pub bytes: u64,
    /// Bytes sent to the shards before the step (experts: token rows to expert owners);
    /// placed before timing, so counted here and not timed.
    pub dispatch_bytes: u64,
    /// transport + merge.
    pub time_s: TimeStats,
    /// bytes / transport median: what the link or the host path carried.
    pub gbps: f64,
    /// Moving the shard outputs (device timers or host clock, as the method says).
    pub transport_s: TimeStats,
    /// Merging them on the host (lse merge, slot sums, gathers).
    pub merge_s: TimeStats,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OneDeviceOut {
    pub device: usize,
    pub time_s: TimeStats,
    pub gbps: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MultiDevice {
    /// Logical devices were placed on one physical device.
    #[serde(rename = "virtual")]
    pub virtual_devices: bool,
    /// Shards ran at the same time (one thread per device) rather than one after another.
    pub concurrent: bool,
    pub shards: Vec<ShardOut>,
    pub combine: CombineOut,
    /// Bytes the shards' kernels had to move (more than the point's minimum where a split
    /// replicates data, as MLA heads does with the latent cache).
    pub shard_bytes: u64,
    /// shard_bytes / end-to-end median.
    pub aggregate_gbps: f64,
    /// The same point on one device, same backend, same run.
    pub one_device: Option<OneDeviceOut>,
    /// one-device time / (devices x end-to-end time).
    pub scaling_efficiency: Option<f64>,
    pub vs_one_device: Option<crate::split::VsOneDevice>,
    /// How end-to-end time was formed.
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LinkOut {
    pub src: usize,
    pub dst: usize,
    /// e.g. `peer (NVLink x18)`, `same device (virtual)`, `host memory`.
    pub path: String,
}

impl ResultLine {
    /// Which (point, backend, device set) this line finished: what `--resume` skips. The
    /// device set is `0` for one device, `0+1+2+3` for a split, `0->1` for a link.
    pub fn key(&self) -> (usize, String, String) {
        let label = self
            .env
            .get("devices")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.env
                    .get("device_index")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    .to_string()
            });
        (self.point, self.backend.clone(), label)
    }
}

/// The results file: every line is written whole and flushed before the next point starts,
/// so SIGKILL leaves only complete lines (at worst one torn tail, cut off on resume).
pub struct ResultsFile {
    file: File,
    pub path: PathBuf,
}

impl ResultsFile {
    /// Open for appending, first cutting any torn last line a killed run left.
    pub fn open(dir: &Path) -> anyhow::Result<(ResultsFile, Vec<ResultLine>)> {
        let path = dir.join("results.jsonl");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut lines = Vec::new();
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&file);
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = reader.read_line(&mut buf)?;
            if n == 0 || !buf.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<ResultLine>(buf.trim_end()) {
                Ok(l) => lines.push(l),
                Err(_) => break, // a torn or foreign line: everything from here is cut
            }
            good_len += n as u64;
        }
        drop(reader);
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.seek(SeekFrom::End(0))?;
        }
        Ok((ResultsFile { file, path }, lines))
    }

    pub fn append(&mut self, line: &ResultLine) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        // One write of the whole line, then to disk: a crash never splits earlier lines.
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// Write a file whole or not at all (temp file + rename).
pub fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |x| format!("{x:.digits$}"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A short label of a point's parameters, e.g. `gqa b8 hq64/8 d128 ctx4096 p16 bf16` (with
/// ` math=bf16` when the precision mode is not the default).
pub fn params_label(kernel: &str, p: &serde_json::Value) -> String {
    let label = params_label_core(kernel, p);
    match p.get("math").and_then(|m| m.as_str()) {
        Some(m) if m != "f32" => format!("{label} math={m}"),
        _ => label,
    }
}

fn params_label_core(kernel: &str, p: &serde_json::Value) -> String {
    let g = |k: &str| {
        p.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    match kernel {
        "link" => format!(
            "{} {}",
            g("direction"),
            human_bytes(p.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        "stream" => format!(
            "{} {}",
            g("op"),
            human_bytes(p.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        "kv_decode" if g("attention") == "mla" => format!(
            "mla b{} hq{} d{}+{} ctx{}{} p{} {}",
            g("batch"),
            g("q_heads"),
            g("kv_lora_rank"),
            g("rope_dim"),
            g("context"),
            if p.get("lengths").is_some() {
                "(mixed)"
            } else {
                ""
            },
            g("page_size"),
            g("kv_dtype")
        ),
        "kv_decode" => format!(
            "gqa b{} hq{}/{} d{} ctx{}{} p{} {}",
            g("batch"),
            g("q_heads"),
            g("kv_heads"),
            g("head_dim"),
            g("context"),
            if p.get("lengths").is_some() {
                "(mixed)"
            } else {
                ""
            },
            g("page_size"),
            g("kv_dtype")
        ),
        "expert_gemv" => {
            let routing = match p.get("routing") {
                Some(serde_json::Value::Object(m)) => {
                    m.iter().map(|(k, v)| format!("{k}{v}")).collect::<String>()
                }
                Some(v) => v.to_string().trim_matches('"').to_string(),
                None => String::new(),
            };
            format!(
                "E{} k{} T{} {}x{} {} {} U{}",
                g("experts"),
                g("top_k"),
                g("batch"),
                g("d_out"),
                g("d_in"),
                g("weight_dtype"),
                routing,
                g("experts_touched")
            )
        }
        _ => p.to_string(),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

const COLUMNS: [&str; 23] = [
    "point",
    "kernel",
    "params",
    "backend",
    "device",
    "devices",
    "split",
    "scaling_efficiency",
    "combine_gbps",
    "one_device_gbps",
    "bytes",
    "reps",
    "median_s",
    "min_s",
    "max_s",
    "gbps",
    "pct_of_spec",
    "pct_of_stream",
    "cache",
    "rel_l2_err",
    "max_abs_err",
    "pass",
    "experiment",
];

pub fn to_csv(lines: &[ResultLine]) -> String {
    let mut s = COLUMNS.join(",");
    s.push('\n');
    for l in lines {
        let row = [
            l.point.to_string(),
            l.kernel.clone(),
            params_label(&l.kernel, &l.params),
            l.backend.clone(),
            l.device.clone(),
            l.key().2,
            l.split.clone(),
            fmt_opt(l.multi.as_ref().and_then(|m| m.scaling_efficiency), 4),
            fmt_opt(l.multi.as_ref().map(|m| m.combine.gbps), 3),
            fmt_opt(
                l.multi
                    .as_ref()
                    .and_then(|m| m.one_device.as_ref().map(|o| o.gbps)),
                3,
            ),
            l.bytes.to_string(),
            l.reps.to_string(),
            format!("{:e}", l.time_s.median),
            format!("{:e}", l.time_s.min),
            format!("{:e}", l.time_s.max),
            format!("{:.3}", l.gbps),
            fmt_opt(l.pct_of_spec, 2),
            fmt_opt(l.pct_of_stream, 2),
            l.cache.clone(),
            l.check
                .rel_l2_err
                .map_or("NaN".into(), |x| format!("{x:e}")),
            l.check
                .max_abs_err
                .map_or("NaN".into(), |x| format!("{x:e}")),
            l.check.pass.to_string(),
            l.experiment.clone(),
        ];
        s.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        s.push('\n');
    }
    s
}

/// The cells every table starts a result's row with: point, kernel, params, where it ran
/// (backend:device set), split, GB/s.
fn row_head(l: &ResultLine) -> Vec<String> {
    vec![
        l.point.to_string(),
        l.kernel.clone(),
        params_label(&l.kernel, &l.params),
        format!("{}:{}", l.backend, l.key().2),
        l.split.clone(),
        format!("{:.2}", l.gbps),
    ]
}

/// The rows of the terminal table and summary.md.
fn table_rows(lines: &[ResultLine]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "pt", "kernel", "params", "backend", "split", "GB/s", "%spec", "%stream", "median",
        "rel err", "check",
    ];
    let rows = lines
        .iter()
        .map(|l| {
            let mut row = row_head(l);
            row.extend([
                fmt_opt(l.pct_of_spec, 1),
                fmt_opt(l.pct_of_stream, 1),
                human_time(l.time_s.median),
                l.check
                    .rel_l2_err
                    .map_or("NaN".into(), |x| format!("{x:.1e}")),
                if l.check.pass {
                    "ok".into()
                } else {
                    "FAIL".into()
                },
            ]);
            row
        })
        .collect();
    (header, rows)
}

pub fn human_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
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

fn format_columns(header: &[String], rows: &[Vec<String>]) -> String {
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

pub fn summary_markdown(experiment: &str, source_file: &str, lines: &[ResultLine]) -> String {
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
            params_label("link", &first.params),
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
