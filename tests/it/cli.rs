//! The binary end to end: the quickstart, kill mid-sweep and resume, --dump read by numpy,
//! check and devices.

use crate::common;

use common::{read_lines, tempdir, wait_for_lines};
use decodelab::report::ResultLine;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_decodelab"))
}

#[test]
fn quickstart_runs_and_every_check_passes() {
    let out = tempdir("quickstart");
    let o = bin()
        .args([
            "run",
            "experiments/quickstart.yaml",
            "--backend",
            "cpu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = read_lines(&out.join("results.jsonl"));
    let exp =
        decodelab::experiment::Experiment::load(Path::new("experiments/quickstart.yaml")).unwrap();
    assert_eq!(lines.len(), exp.points.len());
    for l in &lines {
        assert!(l.check.pass && l.gbps > 0.0 && l.bytes > 0, "{l:?}");
        assert_eq!(l.schema, "decodelab.result/1");
        assert_eq!(l.cache, "cold");
        assert!(l.time_s.min <= l.time_s.median && l.time_s.median <= l.time_s.max);
        assert!((l.gbps - l.bytes as f64 / l.time_s.median / 1e9).abs() < 1e-9 * l.gbps.max(1.0));
        if l.kernel != "stream" {
            assert!(
                l.pct_of_stream.is_some(),
                "stream read ran first, so {l:?} has pct_of_stream"
            );
            // The roofline, worked again from the line's own figures: the slower ceiling
            // sets the time, and the point cannot beat it by more than the noise.
            let r = l
                .roofline
                .as_ref()
                .expect("a decode point has its roofline");
            let (g, p) = (r.stream_gbps.unwrap(), r.peak_gflops.unwrap());
            let (mem, cmp) = (l.bytes as f64 / g / 1e9, l.flops as f64 / p / 1e9);
            assert_eq!(
                r.bound,
                if cmp > mem { "compute" } else { "memory" },
                "{l:?}"
            );
            assert!((r.flop_per_byte - l.flops as f64 / l.bytes as f64).abs() < 1e-12);
            let pct = 100.0 * mem.max(cmp) / l.time_s.median;
            assert!((r.pct.unwrap() - pct).abs() < 1e-6 * pct, "{l:?}");
            // Each point against the unit it computes on: AMX tiles, or FMA lanes.
            let unit = if l.implementation == "amx" {
                "AMX tdpbf16ps"
            } else {
                "FMA chains"
            };
            assert!(r.peak.contains(unit), "{}: {}", l.implementation, r.peak);
        } else {
            assert!(l.roofline.is_none());
        }
    }
    // Each stream op is its own ceiling (copy against copy); the decode kernels are held
    // against the read.
    let read = lines
        .iter()
        .find(|l| l.kernel == "stream" && l.params["op"] == "read")
        .unwrap();
    for l in &lines {
        let want = if l.kernel == "stream" {
            100.0
        } else {
            100.0 * l.gbps / read.gbps
        };
        let got = l.pct_of_stream.expect("every point has a ceiling");
        if l.kernel != "stream"
            || l.params["op"] == "read"
            || lines
                .iter()
                .filter(|m| m.params["op"] == l.params["op"])
                .count()
                == 1
        {
            assert!(
                (got - want).abs() < 1e-9 * want,
                "{} {:?}: {got} vs {want}",
                l.kernel,
                l.params
            );
        }
    }
    // The run ends with its verdict.
    assert!(
        stdout.contains("ran on: cpu:0") && stdout.contains("closest to its roofline"),
        "{stdout}"
    );
    assert!(
        stdout.contains("running on cpu:0") && stdout.contains("(the CPU reference backend)"),
        "{stdout}"
    );
    // CSV: a column per parameter, plain decimals.
    let csv_text = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv_text.lines().next().unwrap().split(',').collect();
    for c in [
        "batch",
        "context",
        "kv_dtype",
        "params.bytes",
        "bytes",
        "gbps",
        "pj_per_byte_modelled",
        "noisy",
        "flop_per_byte",
        "bound",
        "pct_of_roofline",
    ] {
        assert!(header.contains(&c), "no column {c} in {header:?}");
    }
    assert!(!csv_text.contains("e-"), "no exponents: {csv_text}");
    // Every line names its implementation and where its host seconds went.
    // The fastest path this CPU has: AMX for bf16 and fp8 caches, AVX-512 or AVX2 for the
    // rest (stream: simple without either).
    use decodelab::backend::cpu::vector::Isa;
    let best = |of: &[Isa]| of.iter().copied().find(|i| i.allowed().is_ok());
    let vector = best(&[Isa::Avx512, Isa::Avx2, Isa::Portable]).unwrap();
    for l in &lines {
        let want = match l.kernel.as_str() {
            "stream" => best(&[Isa::Avx512, Isa::Avx2]).map_or("simple", Isa::name),
            "kv_decode"
                if ["bf16", "fp8_e4m3"].contains(&l.params["kv_dtype"].as_str().unwrap()) =>
            {
                best(&[Isa::Amx]).unwrap_or(vector).name()
            }
            _ => vector.name(),
        };
        assert_eq!(l.implementation, want, "{l:?}");
        let h = l.host_s.as_ref().expect("host_s");
        assert!(h.generate >= 0.0 && h.oracle >= 0.0 && h.upload >= 0.0 && h.check >= 0.0);
        assert!(h.generate > 0.0 || h.reused_inputs, "{h:?}");
    }
    assert!(stdout.contains("GB/s"));
    for f in ["results.csv", "summary.md", "experiment.yaml"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), lines.len() + 1);
}

#[test]
fn a_few_points_rerun_fast_with_overrides() {
    // Two implementations of one shape share its inputs: generated once, reused by the next.
    let dir = tempdir("rerun");
    let file = dir.join("few.yaml");
    std::fs::write(&file, "name: few\nbackends: [cpu]\nreps: 40\nwarmup: 9\nruns:\n  - kernel: kv_decode\n    batch: [1, 2, 3]\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: 300\n    math: [f32, bf16]\n  - kernel: stream\n    bytes: 64KiB\n").unwrap();
    let out = dir.join("out");
    let o = bin()
        .args([
            "run",
            "--no-progress",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--energy",
            "off",
        ])
        .args(["--only", "kernel=kv_decode,batch=2,batch=3", "--out"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = read_lines(&out.join("results.jsonl"));
    let points: Vec<usize> = lines.iter().map(|l| l.point).collect();
    assert_eq!(
        points,
        [2, 3, 4, 5],
        "batch 2 and 3, f32 and bf16; stream not run"
    );
    for l in &lines {
        assert_eq!(l.reps, 2);
        assert_eq!(l.env["warmup"], 0);
        assert_eq!(l.energy.source, "none");
    }
    // The bf16 point reuses its f32 neighbour's inputs, and is judged by its own rule.
    let h = |i: usize| lines[i].host_s.clone().unwrap();
    assert!(!h(0).reused_inputs && h(1).reused_inputs && h(1).generate == 0.0);
    assert!(h(1).oracle > 0.0, "a new math needs its own reference");
    assert!(lines[1].check.ref_rel_l2_err.is_some() && lines[0].check.ref_rel_l2_err.is_none());
    // check takes the same filter.
    let o = bin()
        .args(["check", "--only", "3"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("1 points") && text.contains("host memory"),
        "{text}"
    );
}

#[test]
fn profiles_and_presets_work_from_any_folder() {
    let dir = tempdir("anywhere");
    std::fs::write(dir.join("mine.yaml"), "name: mine\nbackends: [cpu]\nhardware: h100-sxm\nruns:\n  - kernel: stream\n    bytes: 4KiB\n").unwrap();
    let o = bin()
        .current_dir(&dir)
        .args(["check", "mine.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("NVIDIA H100"),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A typo names what it probably meant, at its line.
    std::fs::write(
        dir.join("typo.yaml"),
        "name: typo\nhardware: h100\nruns:\n  - kernel: stream\n    bytes: 4KiB\n",
    )
    .unwrap();
    let o = bin()
        .current_dir(&dir)
        .args(["check", "typo.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("typo.yaml:2") && err.contains("did you mean h100-sxm?"),
        "{err}"
    );
    let o = bin()
        .current_dir(&dir)
        .args([
            "model",
            "--model",
            "kimi-k2.5",
            "--hardware",
            "b200",
            "--devices",
            "8",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The readable form says int4_g32 and bf16 as a person writes them, never Rust's Debug,
    // with each class's bits per weight.
    let o = bin()
        .current_dir(&dir)
        .args([
            "model",
            "--model",
            "kimi-k2.5",
            "--hardware",
            "b200",
            "--devices",
            "8",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("KV bf16"), "{text}");
    assert!(
        text.contains("routed experts int4_g32 (4.5 bits per weight), the rest bf16 (16 bits"),
        "{text}"
    );
    assert!(
        !text.contains("Some(") && !text.contains("Int4") && !text.contains("Bf16"),
        "{text}"
    );
    let o = bin()
        .current_dir(&dir)
        .args(["model", "--model", "kimi", "--hardware", "b200"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("did you mean kimi-k2.5?"));
    // The listing names every built-in profile and preset.
    let o = bin().current_dir(&dir).arg("profiles").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    for (name, _) in decodelab::profiles::HARDWARE
        .iter()
        .chain(decodelab::profiles::MODELS)
    {
        assert!(
            text.contains(&format!("  {name} ")),
            "{name} not listed:\n{text}"
        );
    }
    assert!(
        !text.contains("(file "),
        "nothing here overrides a built-in one:\n{text}"
    );
}

#[test]
fn compare_and_plot_read_a_run() {
    let dir = tempdir("compare");
    let file = dir.join("sweep.yaml");
    std::fs::write(&file, "name: cmp\nbackends: [cpu]\nwarmup: 1\nreps: 5\nruns:\n  - kernel: stream\n    bytes: 1MiB\n  - kernel: kv_decode\n    batch: 1\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: [64, 300, 1000]\n    kv_dtype: [bf16, fp8_e4m3]\n").unwrap();
    let a = dir.join("a");
    let o = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(&a)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The run against itself: every point matched, no regression.
    let o = bin()
        .arg("compare")
        .arg(&a)
        .arg(a.join("results.jsonl"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("7 matched, 0 regression(s)"), "{text}");
    // B: every kv point 20 % slower, its reps steady (no noise to hide in).
    let slower: String = read_lines(&a.join("results.jsonl"))
        .into_iter()
        .map(|mut l| {
            if l.kernel == "kv_decode" {
                l.gbps *= 0.8;
                l.time_s.median /= 0.8;
                l.time_s.ci95 = Some(0.001);
            }
            serde_json::to_string(&l).unwrap() + "\n"
        })
        .collect();
    let b = dir.join("b.jsonl");
    std::fs::write(&b, slower).unwrap();
    let o = bin()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .args(["--threshold", "10"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("-20.0 %") && text.contains("REGRESSION"),
        "{text}"
    );
    // Beyond the threshold it is no regression.
    let o = bin()
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .args(["--threshold", "25"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    // Nothing in common is an error, not a pass.
    std::fs::write(
        dir.join("other.yaml"),
        "name: other\nbackends: [cpu]\nreps: 2\nruns:\n  - kernel: stream\n    bytes: 2MiB\n",
    )
    .unwrap();
    let c = dir.join("c");
    assert!(
        bin()
            .args(["run", "--no-progress", "--out"])
            .arg(&c)
            .arg(dir.join("other.yaml"))
            .status()
            .unwrap()
            .success()
    );
    let o = bin().arg("compare").arg(&a).arg(&c).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no point"));

    // plot: GB/s against context, a line per dtype, the stream ceiling drawn.
    let o = bin().arg("plot").arg(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svg = std::fs::read_to_string(a.join("plots/kv_decode-gqa.svg")).unwrap();
    assert!(
        svg.contains("against context")
            && svg.contains("kv_dtype=fp8_e4m3")
            && svg.contains("stream read cpu:0"),
        "{svg}"
    );
    assert!(a.join("plots/kv_decode-gqa.png").metadata().unwrap().len() > 1000);
    let html = std::fs::read_to_string(a.join("plots/index.html")).unwrap();
    assert!(html.contains("kv_decode-gqa.svg"));
    // A run of one shape has nothing to plot, and says so.
    let o = bin().arg("plot").arg(&c).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to plot"));
}

const SWEEP: &str = "name: killme\nbackends: [cpu]\nwarmup: 1\nreps: 3\nruns:\n  - kernel: kv_decode\n    batch: [1, 2, 3, 4, 5, 6, 7, 8]\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: [1500, 1501, 1502, 1503, 1504]\n";

#[test]
fn sigkill_mid_sweep_leaves_whole_lines_and_resume_finishes() {
    let dir = tempdir("kill");
    let file = dir.join("sweep.yaml");
    std::fs::write(&file, SWEEP).unwrap();
    let out = dir.join("out");
    let mut child = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(&out)
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let results = out.join("results.jsonl");
    wait_for_lines(&results, 3, Some(&mut child), Duration::from_secs(120));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = std::fs::read_to_string(&results).unwrap();
    let killed = read_lines(&results);
    assert!(
        killed.len() >= 3 && killed.len() < 40,
        "killed after {} of 40 points",
        killed.len()
    );

    // A torn tail, as a kill in the middle of a write would leave, is cut on resume.
    let mut torn = before.clone();
    torn.push_str("{\"schema\":\"decodelab.result/1\",\"experiment\":\"kil");
    std::fs::write(&results, torn).unwrap();

    let o = bin()
        .args(["run", "--no-progress", "--resume"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = std::fs::read_to_string(&results).unwrap();
    assert!(after.starts_with(&before), "resume rewrote finished lines");
    let all = read_lines(&results);
    let mut points: Vec<usize> = all.iter().map(|l| l.point).collect();
    points.sort();
    assert_eq!(
        points,
        (0..40).collect::<Vec<_>>(),
        "each point exactly once"
    );
    assert!(all.iter().all(|l| l.check.pass));

    // Resuming a finished run redoes nothing; resuming with another file is refused.
    let o = bin()
        .args(["run", "--no-progress", "--resume"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(read_lines(&results).len(), 40);
    // Comments and spacing are not a change; a value is, refused naming both files.
    std::fs::write(
        &file,
        format!(
            "# the same sweep, commented\n{}",
            SWEEP.replace("reps: 3", "reps:   3   # three")
        ),
    )
    .unwrap();
    let o = bin()
        .args(["run", "--no-progress", "--resume"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(&file, SWEEP.replace("reps: 3", "reps: 4")).unwrap();
    let o = bin()
        .args(["run", "--resume"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a refused resume is a refused file"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("differ") && err.contains("experiment.yaml") && err.contains("sweep.yaml"),
        "{err}"
    );
}

#[test]
fn ctrl_c_keeps_what_finished_and_says_how_to_resume() {
    let dir = tempdir("ctrlc");
    let file = dir.join("sweep.yaml");
    std::fs::write(&file, SWEEP).unwrap();
    let out = dir.join("out");
    let child = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(&out)
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let results = out.join("results.jsonl");
    wait_for_lines(&results, 2, None, Duration::from_secs(120));
    // SAFETY: signalling a child process this test spawned and still owns.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(130),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let kept = read_lines(&results);
    assert!(kept.len() >= 2 && kept.len() < 40, "{} kept", kept.len());
    assert!(
        stdout.contains(&format!("{} results kept", kept.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--resume {}", out.display())),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        kept.len() + 1,
        "the CSV holds what finished"
    );
    assert!(out.join("summary.md").exists());
    // The printed command finishes the run.
    let o = bin()
        .args(["run", "--no-progress", "--resume"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(read_lines(&results).len(), 40);
}

#[test]
fn an_existing_results_folder_is_not_overwritten() {
    let dir = tempdir("exists");
    let file = dir.join("s.yaml");
    std::fs::write(
        &file,
        "name: s\nreps: 2\nruns:\n  - kernel: stream\n    bytes: 4096\n",
    )
    .unwrap();
    let out = dir.join("out");
    assert!(
        bin()
            .args(["run", "--no-progress", "--out"])
            .arg(&out)
            .arg(&file)
            .status()
            .unwrap()
            .success()
    );
    let o = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "refused like a bad file");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

const DUMP: &str = r#"name: dump
backends: [cpu]
warmup: 0
reps: 1
runs:
  - kernel: kv_decode
    batch: 3
    q_heads: 8
    kv_heads: 2
    head_dim: 40
    context: 37
    lengths: random
    page_size: 16
    kv_dtype: [f32, f16, bf16, fp8_e4m3]
  - kernel: kv_decode
    attention: mla
    batch: 2
    q_heads: 4
    kv_lora_rank: 64
    rope_dim: 16
    context: 70
    page_size: 32
    kv_dtype: [bf16, fp8_e4m3]
  - kernel: expert_gemv
    experts: 8
    top_k: 2
    batch: 5
    d_in: 96
    d_out: 24
    weight_dtype: [f16, bf16, fp8_e4m3, mxfp4, int4_g32, nvfp4]
    routing: {zipf: 1.0}
  - kernel: stream
    op: [read, copy]
    bytes: 4KiB
  - kernel: expert_gemv
    experts: 4
    top_k: 2
    batch: 3
    d_in: 200
    d_out: 130
    weight_dtype: fp8_e4m3
    weight_scale: block128
"#;

/// The Python that has numpy (DECODELAB_PYTHON, else python3), or None after saying why the
/// numpy check is skipped (a failure when DECODELAB_REQUIRE includes numpy).
fn python_with_numpy() -> Option<String> {
    let python = std::env::var("DECODELAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_numpy = Command::new(&python)
        .args(["-c", "import numpy"])
        .status()
        .is_ok_and(|s| s.success());
    let found = has_numpy
        .then_some(())
        .ok_or(format!("not importable by {python}; set DECODELAB_PYTHON"));
    common::tool_or_skip("numpy", found).then_some(python)
}

/// scripts/check_dump.py over a --dump folder; its report, having asserted it passed.
fn check_dump(python: &str, dump: &Path) -> String {
    let o = Command::new(python)
        .arg("scripts/check_dump.py")
        .arg(dump)
        .args(["--tol", "1e-5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

#[test]
fn numpy_recomputes_every_dumped_point() {
    let Some(python) = python_with_numpy() else {
        return;
    };
    let dir = tempdir("dump");
    let file = dir.join("dump.yaml");
    std::fs::write(&file, DUMP).unwrap();
    let dump = dir.join("arrays");
    let o = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(dir.join("out"))
        .arg("--dump")
        .arg(&dump)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("0/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["tensors"]["k_pages"]["npy_dtype"], "<f4");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("2/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["tensors"]["k_pages"]["npy_dtype"], "<u2"); // bf16 as raw uint16

    // mxfp4 weights as raw bytes: 8 experts x 24 rows x 48 bytes of codes, and an E8M0
    // scale per 32 (point 9); nvfp4's per-expert f32 (point 11).
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("9/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["tensors"]["w"]["dtype"], "mxfp4");
    assert_eq!(meta["tensors"]["w"]["npy_dtype"], "|u1");
    let head = |f: &str| {
        let b = std::fs::read(dump.join(f)).unwrap();
        String::from_utf8_lossy(&b[..128]).to_string()
    };
    assert!(head("9/w.npy").contains("'shape': (8, 24, 48)"));
    assert!(head("9/w_scale.npy").contains("'shape': (8, 24, 3)"));
    assert!(
        head("10/w_scale.npy").contains("'descr': '<u2'"),
        "bf16 scales"
    );
    assert!(head("11/w_scale_2.npy").contains("'shape': (8,)"));

    let text = check_dump(&python, &dump);
    // 4 GQA + 2 MLA points x (out, lse), 7 expert points x y, read + copy.
    assert!(text.contains("21 outputs recomputed"), "{text}");
}

#[test]
fn check_prints_points_and_memory() {
    let o = bin()
        .args(["check", "experiments/quickstart.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("20 points"), "{text}");
    assert!(
        text.contains("device memory") && text.contains("MiB"),
        "{text}"
    );
}

#[test]
fn bad_files_exit_non_zero_with_the_location() {
    let dir = tempdir("bad");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "name: b\nruns:\n  - kernel: kv_decode\n    batch: 1\n    q_heads: 6\n    kv_heads: 4\n    head_dim: 8\n    context: 9\n").unwrap();
    for cmd in ["check", "run"] {
        let o = bin().arg(cmd).arg(&file).output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("bad.yaml:6") && err.contains("kv_heads"),
            "{err}"
        );
    }
    let o = bin().args(["check", "/nonexistent.yaml"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn devices_lists_every_backend() {
    let o = bin().arg("devices").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    // Each backend is either listed with its devices or unavailable with a reason.
    for name in decodelab::registry::backend_names() {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        let available = line.contains("device(s)");
        assert!(
            available || (line.contains("unavailable (") && line.len() > name.len() + 16),
            "{line}"
        );
        if available || common::required(name) {
            // What only a backend that found a device prints: the device and its facts.
            let after: Vec<&str> = text.lines().skip_while(|l| *l != line).skip(1).collect();
            assert!(
                after
                    .first()
                    .is_some_and(|l| l.trim_start().starts_with("[0] ")),
                "{name}: no device line after {line:?}:\n{text}"
            );
        }
    }
    // The CPU always has a device, with its thread count; where lavapipe is required, wgpu
    // lists it.
    assert!(
        text.contains("cpu: 1 device(s)") && text.contains("threads:"),
        "{text}"
    );
    if common::required("wgpu") {
        assert!(
            text.contains("wgpu: ") && text.contains("llvmpipe"),
            "{text}"
        );
    }
}

const SMALL: &str = "name: small\nwarmup: 1\nreps: 3\nruns:\n  - kernel: kv_decode\n    batch: 2\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: 300\n    kv_dtype: [bf16, fp8_e4m3]\n  - kernel: kv_decode\n    attention: mla\n    batch: 2\n    q_heads: 4\n    context: 100\n  - kernel: expert_gemv\n    experts: 8\n    top_k: 2\n    batch: 4\n    d_in: 256\n    d_out: 64\n  - kernel: stream\n    op: [read, copy, write]\n    bytes: 1MiB\n";

/// mxfp4 runs on the cpu backend and on wgpu (lavapipe here), each point checked against the
/// oracle, with the bytes of its codes and scales.
#[test]
fn mxfp4_runs_on_cpu_and_wgpu() {
    let dir = tempdir("mxfp4");
    let file = dir.join("mx.yaml");
    std::fs::write(&file, "name: mx\nwarmup: 1\nreps: 3\nruns:\n  - kernel: expert_gemv\n    experts: 16\n    top_k: 2\n    batch: 3\n    d_in: 96\n    d_out: 40\n    weight_dtype: mxfp4\n").unwrap();
    let run_on = |backend: &str| {
        let out = dir.join(backend);
        let o = bin()
            .args(["run", "--no-progress", "--backend", backend, "--out"])
            .arg(&out)
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let lines = read_lines(&out.join("results.jsonl"));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].check.pass && lines[0].params["weight_dtype"] == "mxfp4");
        // U touched experts x 40 rows x (48 bytes of codes + 3 scales), plus x, y, routing.
        let u = lines[0].params["experts_touched"].as_u64().unwrap();
        assert!(lines[0].bytes > u * 40 * (48 + 3));
    };
    run_on("cpu");
    if common::backend_or_skip("wgpu").is_some() {
        run_on("wgpu");
    }
}

#[test]
fn backend_all_runs_every_point_on_cpu_and_wgpu_side_by_side() {
    if common::backend_or_skip("wgpu").is_none() {
        return;
    }
    let dir = tempdir("all");
    let file = dir.join("small.yaml");
    std::fs::write(&file, SMALL).unwrap();
    let out = dir.join("out");
    let o = bin()
        .args(["run", "--no-progress", "--backend", "all", "--out"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = read_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len(), 2 * 7);
    for p in 0..7 {
        for b in ["cpu", "wgpu"] {
            let l = lines
                .iter()
                .find(|l| l.point == p && l.backend == b)
                .unwrap_or_else(|| panic!("point {p} missing on {b}"));
            assert!(l.check.pass, "{l:?}");
        }
    }
    let wgpu = lines.iter().find(|l| l.backend == "wgpu").unwrap();
    assert!(["gpu", "host"].contains(&wgpu.env["timer"].as_str().unwrap()));
    assert!(
        text.contains("backends side by side") && text.contains("wgpu:0 GB/s"),
        "{text}"
    );
}

#[test]
fn model_json_has_every_field() {
    let o = bin()
        .args([
            "model",
            "--model",
            "kimi-k2.5",
            "--hardware",
            "b200",
            "--batch",
            "64",
            "--context",
            "8192",
            "--devices",
            "72",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "weight_bytes",
        "kv_bytes",
        "flops",
        "user_tokens_per_s",
        "system_tokens_per_s",
        "tokens_per_s_per_watt",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {}", v[k]);
    }
    for part in ["weights", "kv", "compute", "communication", "total"] {
        assert!(v["time_ms"][part].as_f64().is_some(), "time_ms.{part}");
        assert!(
            v["energy_j_per_token"][part].as_f64().is_some(),
            "energy_j_per_token.{part}"
        );
    }
    let o = bin()
        .args(["model", "--model", "nope", "--hardware", "b200"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no model preset 'nope'"));
}

#[test]
fn figures_writes_every_figure_and_the_page() {
    let out = tempdir("figures");
    let o = bin()
        .args(["figures", "experiments/talk", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Without results, figure 6 has no data: left out, and not counted.
    assert!(
        stdout.starts_with("5 figures") && stdout.contains("not drawn: 6-measured"),
        "{stdout}"
    );
    // Every shipped configuration fits its devices: no warning.
    assert!(!String::from_utf8_lossy(&o.stderr).contains("does not fit"));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir("experiments/talk").unwrap() {
        let stem = entry
            .unwrap()
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let drawn = stem != "6-measured";
        for ext in ["svg", "png"] {
            let f = out.join(format!("{stem}.{ext}"));
            assert_eq!(
                f.metadata().map(|m| m.len() > 300).unwrap_or(false),
                drawn,
                "{}",
                f.display()
            );
        }
        assert_eq!(
            html.contains(&format!("src=\"{stem}.svg\"")),
            drawn,
            "page and {stem}"
        );
        n += 1;
    }
    assert_eq!(n, 6);
    assert!(html.contains("Not drawn: no results file"));
    // Figure 1 draws the talk's split beside the reproduced one; figure 3 its frontier.
    let svg = std::fs::read_to_string(out.join("1-joule-breakdown.svg")).unwrap();
    assert!(
        svg.contains("the talk") && svg.contains("59 %"),
        "figure 1 lacks the talk's split"
    );
    let svg = std::fs::read_to_string(out.join("3-pareto.svg")).unwrap();
    assert!(svg.contains("Pareto frontier") && svg.contains("B1024 x16"));
    assert!(
        !svg.contains(".0<") && !svg.contains("700</text>"),
        "ticks: no .0, log axes at 1/2/5 only"
    );

    // With results, figure 6 is drawn, labelled by shape, with the hardware's line.
    let run = tempdir("figures-run");
    let file = run.join("r.yaml");
    std::fs::write(&file, "name: r\nbackends: [cpu]\nreps: 2\nruns:\n  - kernel: stream\n    bytes: 1MiB\n  - kernel: kv_decode\n    batch: 1\n    q_heads: 4\n    kv_heads: 1\n    head_dim: 32\n    context: 100\n").unwrap();
    assert!(
        bin()
            .args(["run", "--no-progress", "--out"])
            .arg(run.join("o"))
            .arg(&file)
            .status()
            .unwrap()
            .success()
    );
    let out2 = tempdir("figures-measured");
    let o = bin()
        .args(["figures", "experiments/talk", "--out"])
        .arg(&out2)
        .arg("--measured")
        .arg(run.join("o"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("6 figures"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("measured on"),
        "a cpu run is not the H100 of the line"
    );
    let svg = std::fs::read_to_string(out2.join("6-measured.svg")).unwrap();
    assert!(
        svg.contains("gqa b1 hq4/1 d32 ctx100") && svg.contains("spec (3350 GB/s)"),
        "{svg}"
    );

    // A real browser renders every figure, without a console error.
    check_page(&out2.join("index.html"), 6);
}

/// Open `page` in headless Chromium (Playwright) and check `images` figures rendered:
/// skipped with a reason where Playwright or Chromium is missing, unless
/// DECODELAB_REQUIRE includes `browser`.
fn check_page(page: &Path, images: usize) {
    let python = std::env::var("DECODELAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = Command::new(&python)
        .args(["-c", "import playwright"])
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new("/usr/bin/chromium").exists();
    let found = have.then_some(()).ok_or(format!(
        "no playwright in {python}, or no /usr/bin/chromium"
    ));
    if !common::tool_or_skip("browser", found) {
        return;
    }
    let o = Command::new(&python)
        .arg("scripts/check_page.py")
        .arg(page)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains(&format!("{images} images, 0 problems")),
        "{text}"
    );
}

#[test]
fn energy_falls_back_to_the_model_without_nvml() {
    let dir = tempdir("energy");
    // The profile is looked up beside and above the experiment: copy it next to the file.
    std::fs::create_dir_all(dir.join("hardware")).unwrap();
    std::fs::copy(
        "experiments/hardware/h100-sxm.yaml",
        dir.join("hardware/h100-sxm.yaml"),
    )
    .unwrap();
    let body = "backends: [cpu]\nhardware: h100-sxm\nreps: 2\nruns:\n  - kernel: stream\n    op: copy\n    bytes: 4096\n";
    let auto = dir.join("auto.yaml");
    std::fs::write(&auto, format!("name: auto\nenergy: auto\n{body}")).unwrap();
    let out = dir.join("out");
    let o = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(&out)
        .arg(&auto)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = &read_lines(&out.join("results.jsonl"))[0];
    // An H100 profile on a CPU run: no %spec, and a warning that says why.
    assert_eq!(l.pct_of_spec, None);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("warning: hardware: h100-sxm describes NVIDIA H100"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(l.energy.source, "model");
    assert!(l.energy.measured.is_none());
    assert!(
        l.energy.note.as_deref().unwrap_or("").contains("measured:"),
        "{:?}",
        l.energy.note
    );
    // h100-sxm: 10 pJ/bit = 80 pJ per byte; a copy does no FLOPs.
    let m = l.energy.modelled.as_ref().unwrap();
    assert!((m.pj_per_byte - 80.0).abs() < 1e-9, "{m:?}");
    assert_eq!(l.energy.pj_per_byte, Some(m.pj_per_byte));
    assert!((l.energy.joules.unwrap() - 8192.0 * 80e-12).abs() < 1e-18);

    // energy: nvml where there is no NVML: refused before anything runs, naming the line.
    let nvml = dir.join("nvml.yaml");
    std::fs::write(&nvml, format!("name: nvml\nenergy: nvml\n{body}")).unwrap();
    let o = bin()
        .args(["run", "--no-progress", "--out"])
        .arg(dir.join("out2"))
        .arg(&nvml)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nvml.yaml:2") && err.contains("energy"),
        "{err}"
    );
    assert!(!dir.join("out2").join("results.jsonl").exists());

    // energy: model without a profile is refused too.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nenergy: model\nruns:\n  - kernel: stream\n    bytes: 4096\n",
    )
    .unwrap();
    let o = bin().args(["check"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.yaml:2"));
}

#[test]
fn check_validates_a_gpu_experiment_on_any_machine() {
    // Every shipped experiment is valid; where its backends are missing, check warns.
    for f in [
        "experiments/device-check.yaml",
        "experiments/device-check-dump.yaml",
        "experiments/quickstart.yaml",
    ] {
        let o = bin().args(["check", f]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{f}: {text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(text.contains(" points"), "{text}");
    }
}

#[test]
fn split_and_link_points_run_on_virtual_devices_and_resume() {
    let dir = tempdir("split");
    let file = dir.join("split.yaml");
    std::fs::write(
        &file,
        "name: split\nbackends: [cpu]\ndevices: 3\nvirtual: true\nwarmup: 1\nreps: 3\nruns:\n  \
         - kernel: kv_decode\n    split: [heads, sequence]\n    batch: 2\n    q_heads: 6\n    kv_heads: 3\n    head_dim: 32\n    context: 70\n    lengths: random\n  \
         - kernel: expert_gemv\n    split: [experts, tensor]\n    experts: 7\n    top_k: 2\n    batch: 5\n    d_in: 64\n    d_out: 19\n  \
         - kernel: link\n    bytes: 4KiB\n",
    )
    .unwrap();
    let out = dir.join("out");
    let run = |extra: &[&str]| {
        let o = bin().arg("run").arg(&file).args(extra).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    let dump = dir.join("arrays");
    let stdout = run(&[
        "--out",
        out.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ]);
    let lines = read_lines(&out.join("results.jsonl"));
    // 4 split points, and one link point between each of the 3 x 2 ordered pairs.
    assert_eq!(lines.len(), 4 + 6, "{stdout}");
    for l in lines.iter().filter(|l| l.kernel != "link") {
        let m = l
            .multi
            .as_ref()
            .expect("split lines carry the multi-device section");
        assert_eq!(l.device_count, 3);
        assert!(m.virtual_devices && !m.concurrent);
        assert!(l.check.pass, "{l:?}");
        let vs = m.vs_one_device.as_ref().expect("one-device comparison");
        assert!(vs.pass);
        assert_eq!(vs.identical, l.split != "sequence", "{l:?}");
        assert!(m.scaling_efficiency.is_some_and(|e| e > 0.0));
        assert_eq!(m.combine.method, "host-staged");
        assert_eq!(l.key().2, "0x3");
    }
    let links: Vec<&ResultLine> = lines.iter().filter(|l| l.kernel == "link").collect();
    let mut pairs: Vec<String> = links.iter().map(|l| l.key().2).collect();
    pairs.sort();
    assert_eq!(pairs, ["0->1", "0->2", "1->0", "1->2", "2->0", "2->1"]);
    assert!(links.iter().all(|l| l.check.pass && l.link.is_some()));
    assert!(stdout.contains("splits (scaling") && stdout.contains("links:"));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Splits") && summary.contains("## Links"));

    // The combined outputs are dumped like any point's, so numpy recomputes them too.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump.join("1/meta.json")).unwrap()).unwrap();
    // `cpu:0x3 avx512 (...)` where a vector path runs it (which one depends on the CPU).
    let from = meta["outputs_from"].as_str().unwrap();
    assert!(
        from.starts_with("cpu:0x3") && from.ends_with("(split sequence, combined)"),
        "{from}"
    );
    if let Some(python) = python_with_numpy() {
        let text = check_dump(&python, &dump);
        // 2 kv points x (out, lse) + 2 expert points x y; links are not dumped.
        assert!(text.contains("6 outputs recomputed"), "{text}");
    }

    // Resuming a finished run runs nothing again: every key names its device set.
    let again = run(&["--resume", out.to_str().unwrap()]);
    assert!(
        again.contains("10 results already there, 0 to go"),
        "{again}"
    );
    assert_eq!(read_lines(&out.join("results.jsonl")).len(), 10);
}

#[test]
fn the_readme_links_to_pages_that_exist_and_its_test_command_is_ci_s() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut links = 0;
    for part in readme.split("](").skip(1) {
        let target = part.split(')').next().unwrap();
        if target.starts_with("http") {
            continue;
        }
        assert!(
            Path::new(target).exists(),
            "README links to {target}, which does not exist"
        );
        links += 1;
    }
    assert!(links >= 6, "{links} links");
    // .ci/run runs the README's test command.
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        readme.contains(&format!("```sh\n{last}\n```")),
        "CI runs `{last}`"
    );
}

#[test]
fn run_help_names_every_kernel_backend_and_implementation() {
    let out = bin().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for k in decodelab::registry::KERNELS {
        assert!(
            help.contains(&format!("  {:<12} {}", k.name, k.about)),
            "{}",
            k.name
        );
    }
    for b in decodelab::registry::BACKENDS {
        assert!(
            help.contains(&format!("  {:<12} {}", b.name, b.about)),
            "{}",
            b.name
        );
    }
    for i in decodelab::backend::IMPLS {
        let line = format!(
            "  {:<5} {:<12} {:<9} {}",
            i.backend,
            i.kernel.name(),
            i.name,
            i.about
        );
        assert!(help.contains(&line), "{line}");
    }
    assert!(help.contains("unrolled") && help.contains("(tuned)"));
}

#[test]
fn kernels_wgsl_reports_every_wgpu_implementation_without_a_driver() {
    let out = bin()
        .args(["kernels", "--wgsl", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for i in decodelab::backend::IMPLS
        .iter()
        .filter(|i| i.backend == "wgpu")
    {
        if i.kernel != decodelab::registry::Kernel::Link {
            assert!(lines.iter().any(|l| l["impl"] == i.name), "{}", i.name);
        }
    }
    for l in &lines {
        assert_eq!(l["loop_bounds"], 0, "{l}");
        if l["tuned"] == true {
            assert_eq!(l["dynamic_private_arrays"], serde_json::json!([]), "{l}");
        }
    }
    // The simple kv_decode's per-thread arrays are what the tuned one removes.
    assert!(lines.iter().any(|l| {
        l["impl"] == "simple"
            && l["entry"] == "attend"
            && l["dynamic_private_arrays"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
    }));
}

/// `impl: all` names tuned implementations that take only some shapes: where one does not
/// cover a point, that point runs with the others and the run says why, instead of refusing.
#[test]
fn an_implementation_that_does_not_cover_a_point_skips_it_and_says_why() {
    if common::backend_or_skip("wgpu").is_none() {
        return;
    }
    let dir = tempdir("uncovered");
    let file = dir.join("odd.yaml");
    // A head dim of 67 is not whole 16-byte words: wgpu's unrolled does not take it.
    std::fs::write(&file, "name: odd\nwarmup: 1\nreps: 3\nruns:\n  - kernel: kv_decode\n    impl: all\n    batch: 2\n    q_heads: 4\n    kv_heads: 2\n    head_dim: 67\n    context: 40\n    kv_dtype: f16\n").unwrap();
    let out = dir.join("out");
    let o = bin()
        .args(["run", "--no-progress", "--backend", "wgpu", "--out"])
        .arg(&out)
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        said.contains("implementation 'unrolled' of kv_decode does not cover this point"),
        "{said}"
    );
    let lines = read_lines(&out.join("results.jsonl"));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].check.pass && lines[0].implementation == "simple");
}

#[test]
fn decodelab_cpu_isa_caps_the_vector_path_and_the_line_names_it() {
    let dir = tempdir("isa");
    let file = dir.join("isa.yaml");
    std::fs::write(&file, "name: isa\nbackends: [cpu]\nreps: 2\nwarmup: 0\nruns:\n  - kernel: kv_decode\n    batch: 1\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: 100\n").unwrap();
    let run = |cap: &str, out: &str| {
        let out = dir.join(out);
        let o = bin()
            .env("DECODELAB_CPU_ISA", cap)
            .args(["run", "--no-progress", "--energy", "off", "--out"])
            .arg(&out)
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read_lines(&out.join("results.jsonl")).remove(0)
    };
    // Capped at portable, best runs simple (portable ranks after it); the paths above the cap
    // are passed over, and the line says why.
    let l = run("portable", "p");
    assert_eq!(l.implementation, "simple");
    assert!(l.check.pass);
    if decodelab::backend::cpu::vector::Isa::Avx2
        .on_this_cpu()
        .is_ok()
    {
        assert!(
            l.passed_over
                .iter()
                .any(|p| p.starts_with("avx2:") && p.contains("caps it")),
            "{:?}",
            l.passed_over
        );
        assert_eq!(run("avx2", "a").implementation, "avx2");
    }
    // A name that is no path runs simple, and says so.
    let l = run("sse9", "s");
    assert_eq!(l.implementation, "simple");
    assert!(
        l.passed_over.iter().any(|p| p.contains("names no path")),
        "{:?}",
        l.passed_over
    );
}
