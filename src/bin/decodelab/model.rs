//! `decodelab model` and `decodelab figures`: the analytic decode model, as a breakdown and
//! as the talk's figures.

use super::fail;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A preset in experiments/models/ (kimi-k2.5, deepseek-v3, llama-3.1-70b, ...).
    #[arg(long)]
    model: String,
    /// A profile in experiments/hardware/ (h100-sxm, h200-sxm, b200, sram-die).
    #[arg(long)]
    hardware: String,
    /// Concurrent sequences decoded per step.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Tokens in each sequence's context.
    #[arg(long, default_value_t = 4096)]
    context: u64,
    /// Devices the model is spread over.
    #[arg(long, default_value_t = 1)]
    devices: u64,
    /// Weight dtype (default: the preset's): one for every class (bf16, fp8, int4_g32,
    /// int4_g128, mxfp4, nvfp4), or per class over the preset's: experts=nvfp4,rest=fp8.
    #[arg(long)]
    weights: Option<String>,
    /// KV-cache dtype (default: the preset's): bf16, fp8.
    #[arg(long)]
    kv: Option<String>,
    /// A decodelab results.jsonl: use its measured bytes/s for weights and KV.
    #[arg(long, value_name = "FILE")]
    measured: Option<PathBuf>,
    /// One JSON object instead of the readable breakdown.
    #[arg(long)]
    json: bool,
}

fn model_cmd(a: &ModelArgs) -> anyhow::Result<()> {
    use decodelab::model::{self, Scenario};
    let here = std::path::Path::new(".");
    let m = model::find_model(here, &a.model)?;
    let h = model::find_hardware(here, &a.hardware)?;
    let s = Scenario::with_dtypes(
        a.batch,
        a.context,
        a.devices,
        a.weights.as_deref(),
        a.kv.as_deref(),
    )?;
    let measured = match &a.measured {
        Some(p) => model::measured_terms(p, &m, &h, &s)?,
        None => Default::default(),
    };
    let b = model::evaluate(&m, &h, &s, &measured)?;
    if let Some(short) = &b.capacity.shortfall {
        anyhow::bail!(
            "{} does not fit {} x {}: {short} (raise --devices, or use smaller --weights / --kv)",
            b.model,
            s.devices,
            b.hardware
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
        return Ok(());
    }
    print!("{}", model::figures::describe(&b));
    Ok(())
}

pub fn model(a: &ModelArgs) -> ExitCode {
    model_cmd(a).map_or_else(|e| fail(format!("{e:#}")), |()| ExitCode::SUCCESS)
}

pub fn figures(dir: &Path, out: &Path, measured: Option<&Path>) -> ExitCode {
    let d = match decodelab::model::figures::draw_all(dir, out, measured) {
        Ok(d) => d,
        Err(e) => return fail(format!("{e:#}")),
    };
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    let skipped: Vec<String> = d
        .skipped
        .iter()
        .map(|(f, why)| format!("{f}: {why}"))
        .collect();
    println!(
        "{} figures -> {}{}",
        d.written,
        out.join("index.html").display(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (not drawn: {})", skipped.join("; "))
        }
    );
    ExitCode::SUCCESS
}
