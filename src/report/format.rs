//! How numbers and points are written in tables, CSV and messages.

use crate::registry::Kernel;

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
    // A line from another version may name a kernel this one does not know: its raw params.
    let Some(kernel) = Kernel::from_name(kernel) else {
        return p.to_string();
    };
    match kernel {
        Kernel::Link => format!(
            "{} {}",
            g("direction"),
            human_bytes(p.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        Kernel::Stream => format!(
            "{} {}",
            g("op"),
            human_bytes(p.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0))
        ),
        Kernel::KvDecode if g("attention") == "mla" => format!(
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
        Kernel::KvDecode => format!(
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
        Kernel::ExpertGemv => {
            let routing = match p.get("routing") {
                Some(serde_json::Value::Object(m)) => {
                    m.iter().map(|(k, v)| format!("{k}{v}")).collect::<String>()
                }
                Some(v) => v.to_string().trim_matches('"').to_string(),
                None => String::new(),
            };
            // Block scales are named; per-row scales (fp8's default) are not.
            let dtype = match p.get("weight_scale").and_then(|v| v.as_str()) {
                Some(s) if s != "row" => format!("{}/{s}", g("weight_dtype")),
                _ => g("weight_dtype"),
            };
            format!(
                "E{} k{} T{} {}x{} {} {} U{}",
                g("experts"),
                g("top_k"),
                g("batch"),
                g("d_out"),
                g("d_in"),
                dtype,
                routing,
                g("experts_touched")
            )
        }
    }
}

pub use crate::workload::human_bytes;

pub(super) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |x| format!("{x:.digits$}"))
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

/// `x` to `digits` significant figures in plain decimals: 4450, 12.3, 0.0213 (a slow
/// backend's GB/s keeps its digits; no exponent).
pub fn sig(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - magnitude).max(0) as usize;
    format!("{x:.decimals$}")
}

/// An axis tick: three significant figures without trailing zeros (5, not 5.00; 0.25).
pub fn tick(x: f64) -> String {
    let s = sig(x, 3);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Microseconds, to three significant figures at least (one unit for a whole column).
pub fn micros(s: f64) -> String {
    let us = s * 1e6;
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        sig(us, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_figures_in_plain_decimals() {
        assert_eq!(sig(4450.3, 3), "4450");
        assert_eq!(sig(12.345, 3), "12.3");
        assert_eq!(sig(0.021345, 3), "0.0213");
        assert_eq!(sig(0.0063820395000000005, 6), "0.00638204");
        assert_eq!(sig(-1.5, 2), "-1.5");
        assert_eq!(sig(0.0, 3), "0");
        assert_eq!(
            (tick(5.0), tick(0.25), tick(600.0), tick(1e4)),
            ("5".into(), "0.25".into(), "600".into(), "10000".into())
        );
        assert_eq!(micros(0.0137), "13700");
        assert_eq!(micros(3.2e-6), "3.20");
    }
}
