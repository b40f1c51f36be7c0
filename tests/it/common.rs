//! Helpers shared by the integration tests: building points, and finding backends (skipped
//! loudly when absent, a failure when DECODELAB_REQUIRE names them).
#![allow(dead_code)]

use decodelab::backend::{self, Backend, Probe};
use decodelab::report::ResultLine;
use decodelab::workload::*;
use std::path::{Path, PathBuf};

/// Is `what` (a backend name, or `numpy`, `nvrtc`) required to be present in this run?
pub fn required(what: &str) -> bool {
    std::env::var("DECODELAB_REQUIRE")
        .map(|v| v.split(',').any(|x| x.trim() == what))
        .unwrap_or(false)
}

/// Whether `tool` (a name DECODELAB_REQUIRE may list: nvrtc, gxx, numpy, mpi, ...) is here:
/// `found` is Ok, or says why not; then the test is skipped with the reason printed, or fails
/// when DECODELAB_REQUIRE names the tool.
pub fn tool_or_skip(tool: &str, found: Result<(), String>) -> bool {
    match found {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !required(tool),
                "DECODELAB_REQUIRE includes {tool}, but: {why}"
            );
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {tool} unavailable ({why})");
            false
        }
    }
}

/// The backend, or None after printing why it is skipped. Panics if it is required.
pub fn backend_or_skip(name: &str) -> Option<Box<dyn Backend>> {
    match backend::probe(name) {
        Some(Probe::Available(b)) if !b.devices().is_empty() => Some(b),
        Some(Probe::Available(_)) => skip(name, "no devices"),
        Some(Probe::Unavailable { reason, .. }) => skip(name, &reason),
        None => skip(name, "unknown backend"),
    }
}

fn skip(name: &str, reason: &str) -> Option<Box<dyn Backend>> {
    if required(name) {
        panic!("DECODELAB_REQUIRE includes {name}, but it is unavailable: {reason}");
    }
    // Written to the real stderr: the test harness captures eprintln!, which would hide it.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: backend {name} unavailable ({reason})"
    );
    None
}

/// A wgpu backend with non-default options, or None (skipped, or failing if required).
pub fn wgpu_with(options: decodelab::backend::wgpu::WgpuOptions) -> Option<Box<dyn Backend>> {
    backend_or_skip("wgpu")?;
    let b = decodelab::backend::wgpu::WgpuBackend::probe()
        .ok()?
        .with_options(options);
    Some(Box::new(b))
}

#[allow(clippy::too_many_arguments)] // mirrors the kernel's parameter list
pub fn gqa(
    batch: usize,
    hq: usize,
    hkv: usize,
    dk: usize,
    dv: usize,
    lens: Vec<usize>,
    page: usize,
    dtype: DType,
) -> Workload {
    assert_eq!(lens.len(), batch);
    Workload::KvDecode(KvDecode {
        attention: Attention::Gqa,
        batch,
        q_heads: hq,
        kv_heads: hkv,
        head_dim_k: dk,
        head_dim_v: dv,
        page_size: page,
        kv_dtype: dtype,
        scale: 1.0 / (dk as f32).sqrt(),
        context: *lens.iter().max().unwrap(),
        lengths: Lengths::Explicit(lens.clone()),
        context_lens: lens,
        seed: 7,
        math: Math::F32,
        launch_hint: None,
    })
}

pub fn mla(
    batch: usize,
    hq: usize,
    rank: usize,
    rope: usize,
    lens: Vec<usize>,
    page: usize,
    dtype: DType,
) -> Workload {
    Workload::KvDecode(KvDecode {
        attention: Attention::Mla,
        batch,
        q_heads: hq,
        kv_heads: 1,
        head_dim_k: rank + rope,
        head_dim_v: rank,
        page_size: page,
        kv_dtype: dtype,
        scale: 1.0 / ((rank + rope) as f32).sqrt(),
        context: *lens.iter().max().unwrap(),
        lengths: Lengths::Explicit(lens.clone()),
        context_lens: lens,
        seed: 11,
        math: Math::F32,
        launch_hint: None,
    })
}

pub fn experts(
    e: usize,
    k: usize,
    t: usize,
    d_in: usize,
    d_out: usize,
    dtype: DType,
    routing: Routing,
) -> Workload {
    let topk_ids = ExpertGemv::route(&routing, e, k, t, 5).expect("valid routing");
    Workload::ExpertGemv(ExpertGemv {
        experts: e,
        top_k: k,
        batch: t,
        d_in,
        d_out,
        weight_dtype: dtype,
        weight_scale: WeightScale::Row,
        routing,
        topk_ids,
        seed: 5,
        math: Math::F32,
    })
}

/// The same point with its fp8 weights scaled per 128 x 128 block.
pub fn with_block_scales(mut w: Workload) -> Workload {
    if let Workload::ExpertGemv(e) = &mut w {
        e.weight_scale = WeightScale::Block128;
    }
    w
}

/// The same point at another precision mode.
pub fn with_math(mut w: Workload, math: Math) -> Workload {
    match &mut w {
        Workload::KvDecode(k) => k.math = math,
        Workload::ExpertGemv(e) => e.math = math,
        Workload::Stream(_) | Workload::Link(_) => {}
    }
    w
}

/// Every implementation of `w`'s kernel on `b` that covers it: what the suites run.
pub fn impls_covering(b: &dyn Backend, w: &Workload) -> Vec<&'static str> {
    let v: Vec<&'static str> = decodelab::backend::impls_of(b.name(), w.kind())
        .into_iter()
        .filter(|i| b.covers(i.name, w).is_ok())
        .map(|i| i.name)
        .collect();
    assert!(
        !v.is_empty(),
        "no implementation of {} on {} covers {}",
        w.kernel(),
        b.name(),
        w.params_json()
    );
    v
}

pub fn stream(op: StreamOp, bytes: u64) -> Workload {
    Workload::Stream(Stream { op, bytes, seed: 3 })
}

/// A fresh folder for one test, named by the test binary's pid and `name`.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("decodelab-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every line of a results.jsonl; a torn or invalid line fails the test.
pub fn read_lines(path: &Path) -> Vec<ResultLine> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid line {l:?}: {e}")))
        .collect()
}

/// Wait, polling every 2 ms for at most `limit`, until `results` holds at least `n` lines (the
/// moment a test kills or signals a run); with `child`, fail if the run ends first.
pub fn wait_for_lines(
    results: &Path,
    n: usize,
    mut child: Option<&mut std::process::Child>,
    limit: std::time::Duration,
) {
    let start = std::time::Instant::now();
    let lines = || {
        std::fs::read_to_string(results)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while lines() < n {
        assert!(
            start.elapsed() < limit,
            "{n} results did not appear in {limit:?}"
        );
        if let Some(c) = child.as_deref_mut() {
            assert!(
                c.try_wait().unwrap().is_none(),
                "the run ended before it had {n} results"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
