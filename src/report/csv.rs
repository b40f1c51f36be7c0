//! results.csv: one row per result line, one column per parameter, plain decimals.

use super::ResultLine;
use super::format::params_label;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The fixed columns before the parameters, and after them.
const HEAD: [&str; 7] = [
    "point", "kernel", "backend", "impl", "device", "devices", "split",
];
const TAIL: [&str; 30] = [
    "label",
    "bytes",
    "reps",
    "median_s",
    "min_s",
    "max_s",
    "ci95",
    "gbps",
    "pct_of_spec",
    "pct_of_stream",
    "flop_per_byte",
    "bound",
    "roofline_s",
    "pct_of_roofline",
    "cache",
    "energy_source",
    "pj_per_byte",
    "pj_per_byte_measured",
    "pj_per_byte_modelled",
    "rel_l2_err",
    "ref_rel_l2_err",
    "max_abs_err",
    "pass",
    "noisy",
    "scaling_efficiency",
    "combine_gbps",
    "one_device_gbps",
    "host_generate_s",
    "host_oracle_s",
    "experiment",
];

/// Plain decimals, six significant figures; empty where there is no value.
fn num(x: Option<f64>) -> String {
    x.map_or(String::new(), |v| super::format::sig(v, 6))
}

pub fn to_csv(lines: &[ResultLine]) -> String {
    // One column per parameter any line has, in the order they first appear.
    let mut params: Vec<String> = Vec::new();
    for l in lines {
        if let Some(m) = l.params.as_object() {
            for k in m.keys() {
                if !params.contains(k) {
                    params.push(k.clone());
                }
            }
        }
    }
    let mut s: Vec<String> = HEAD.iter().map(|c| c.to_string()).collect();
    // A parameter named like a fixed column (stream's `bytes`) is `params.<name>`.
    s.extend(params.iter().map(|k| {
        if HEAD.contains(&k.as_str()) || TAIL.contains(&k.as_str()) {
            format!("params.{k}")
        } else {
            k.clone()
        }
    }));
    s.extend(TAIL.iter().map(|c| c.to_string()));
    let mut out = s.join(",");
    out.push('\n');
    for l in lines {
        let mut row = vec![
            l.point.to_string(),
            l.kernel.clone(),
            l.backend.clone(),
            l.implementation.clone(),
            l.device.clone(),
            l.key().2,
            l.split.clone(),
        ];
        for k in &params {
            row.push(match l.params.get(k) {
                None => String::new(),
                Some(serde_json::Value::String(v)) => v.clone(),
                Some(v @ serde_json::Value::Number(_)) => v.to_string(),
                Some(v) => v.to_string(),
            });
        }
        let multi = l.multi.as_ref();
        let host = l.host_s.as_ref();
        row.extend([
            params_label(&l.kernel, &l.params),
            l.bytes.to_string(),
            l.reps.to_string(),
            num(Some(l.time_s.median)),
            num(Some(l.time_s.min)),
            num(Some(l.time_s.max)),
            num(l.time_s.ci95),
            num(Some(l.gbps)),
            num(l.pct_of_spec),
            num(l.pct_of_stream),
            num(l.roofline.as_ref().map(|r| r.flop_per_byte)),
            l.roofline
                .as_ref()
                .map_or(String::new(), |r| r.bound.clone()),
            num(l.roofline.as_ref().and_then(|r| r.time_s)),
            num(l.roofline.as_ref().and_then(|r| r.pct)),
            l.cache.clone(),
            l.energy.source.clone(),
            num(l.energy.pj_per_byte),
            num(l.energy.measured.as_ref().map(|f| f.pj_per_byte)),
            num(l.energy.modelled.as_ref().map(|f| f.pj_per_byte)),
            num(l.check.rel_l2_err),
            num(l.check.ref_rel_l2_err),
            num(l.check.max_abs_err),
            l.check.pass.to_string(),
            l.time_s.noisy().to_string(),
            num(multi.and_then(|m| m.scaling_efficiency)),
            num(multi.map(|m| m.combine.gbps)),
            num(multi.and_then(|m| m.one_device.as_ref().map(|o| o.gbps))),
            num(host.map(|h| h.generate)),
            num(host.map(|h| h.oracle)),
            l.experiment.clone(),
        ]);
        out.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}
