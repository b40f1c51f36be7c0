//! Experiment files: every class of bad input is refused with file, line and field; nothing
//! panics, however malformed the input.

use decodelab::backend::CacheMode;
use decodelab::experiment::preflight;
use decodelab::experiment::{BackendChoice, ConfigError, DeviceChoice, Experiment};
use decodelab::workload::Workload;
use decodelab::workload::axes::{AxisDecl, AxisDefault};
use decodelab::workload::declared_axes as declared;
use std::path::Path;

fn parse(text: &str) -> Result<Experiment, ConfigError> {
    Experiment::parse(Path::new("experiments/t.yaml"), text.as_bytes())
}

/// Parse, expect a refusal at `line` naming `field`, and return the message.
fn refused(text: &str, line: u64, field: &str) -> String {
    let err = parse(text).expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!(err.file, "experiments/t.yaml", "{shown}");
    assert_eq!(err.line, line, "wrong line in: {shown}");
    assert!(
        err.field.as_deref().is_some_and(|f| f.ends_with(field)),
        "field {field} not named in: {shown}"
    );
    assert!(
        shown.starts_with(&format!("experiments/t.yaml:{line}")),
        "{shown}"
    );
    shown
}

const KV: &str = "name: t\nruns:\n  - kernel: kv_decode\n    batch: [1, 8]\n    q_heads: 64\n    kv_heads: 8\n    head_dim: 128\n    context: 4096\n";

#[test]
fn a_good_file_expands_to_the_cartesian_product() {
    let e = parse(&format!("{KV}    kv_dtype: [bf16, fp8_e4m3]\n  - kernel: stream\n    op: [read, copy]\n    bytes: [4GiB, 1MB]\n")).unwrap();
    assert_eq!(e.points.len(), 4 + 4);
    assert_eq!(e.backends, BackendChoice::Auto);
    assert_eq!(e.devices, DeviceChoice::Indices(vec![0]));
    assert_eq!((e.warmup, e.reps, e.cache), (5, 50, CacheMode::Cold));
    let Workload::Stream(s) = &e.points[4].workload else {
        panic!()
    };
    assert_eq!(s.bytes, 4 << 30);
    let Workload::Stream(s) = &e.points[5].workload else {
        panic!()
    };
    assert_eq!(s.bytes, 1_000_000);
    assert!(e.points.iter().enumerate().all(|(i, p)| p.index == i));
}

/// A run of `kernel` (`form`: its attention) giving each required axis a small value, and
/// each named axis that `listed` picks every value it lists (the others left to defaults).
fn run_of_declared_axes(
    kernel: &str,
    form: &str,
    axes: &[&AxisDecl],
    listed: impl Fn(&str) -> bool,
) -> String {
    // Two virtual devices, so link (a pair) and every split can be made.
    let mut run = format!("name: t\ndevices: 2\nvirtual: true\nruns:\n  - kernel: {kernel}\n");
    if !form.is_empty() {
        run += &format!("    attention: {form}\n");
    }
    for a in axes.iter().filter(|a| a.name != "attention") {
        // Small, and large enough for every split over two devices and every 4-bit group.
        let value = match a.name {
            "bytes" => 4096,
            "q_heads" | "experts" => 8,
            "kv_heads" | "top_k" => 2,
            "context" | "d_out" => 64,
            "d_in" => 256,
            _ => a.range.map_or(1, |r| r.0.max(1)),
        };
        if a.default == AxisDefault::Required {
            run += &format!("    {}: {value}\n", a.name);
        } else if listed(a.name) && !a.values.is_empty() {
            run += &format!("    {}: [{}]\n", a.name, a.values.join(", "));
        }
    }
    run
}

#[test]
fn every_declared_axis_is_a_field_that_takes_its_default_and_listed_values() {
    // Defaults only; every named axis at once but split (whose values depend on the others:
    // stream's data split refuses write); split alone.
    let passes: [fn(&str) -> bool; 3] = [|_| false, |n| n != "split", |n| n == "split"];
    for k in decodelab::registry::KERNELS {
        for (form, axes) in declared(k.kernel) {
            for listed in passes {
                let file = run_of_declared_axes(k.name, form, axes, listed);
                let e = parse(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
                assert!(!e.points.is_empty(), "{file}");
            }
        }
    }
}

#[test]
fn each_kernel_declares_the_splits_it_has() {
    for k in decodelab::registry::KERNELS {
        let has = decodelab::split::SplitKind::for_kernel(k.kernel);
        let want: Vec<&str> = std::iter::once("none")
            .chain(has.iter().map(|s| s.name()))
            .collect();
        for (_, axes) in declared(k.kernel) {
            let declared: Vec<&str> = axes
                .iter()
                .find(|a| a.name == "split")
                .map_or(vec!["none"], |a| a.values.to_vec());
            assert_eq!(declared, want, "{}", k.name);
        }
    }
}

#[test]
fn a_sweep_varies_the_first_declared_axis_slowest_whatever_the_file_order() {
    // The file lists context before batch; kv_decode declares batch first.
    let file = "name: t\nruns:\n  - kernel: kv_decode\n    context: [16, 32]\n    batch: [1, 2]\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n";
    let order: Vec<(usize, usize)> = parse(file)
        .unwrap()
        .points
        .iter()
        .map(|p| match &p.workload {
            Workload::KvDecode(w) => (w.batch, w.context),
            _ => panic!(),
        })
        .collect();
    assert_eq!(order, [(1, 16), (1, 32), (2, 16), (2, 32)]);
}

#[test]
fn readme_style_example_is_valid() {
    let text = r#"
name: kv-sweep
backends: [cuda, wgpu]
devices: [0]
hardware: h100-sxm
warmup: 5
reps: 50
runs:
  - kernel: kv_decode
    batch: [1, 8, 64]
    q_heads: 64
    kv_heads: 8
    head_dim: 128
    context: [4096, 32768]
    page_size: 16
    kv_dtype: [bf16, fp8_e4m3]
  - kernel: kv_decode
    attention: mla
    batch: 64
    q_heads: 64
    context: 8192
    page_size: 64
    kv_dtype: fp8_e4m3
  - kernel: expert_gemv
    experts: 384
    top_k: 8
    batch: [1, 16, 128]
    d_in: 7168
    d_out: 2048
    weight_dtype: [bf16, fp8_e4m3]
    routing: [uniform, {zipf: 1.2}]
  - kernel: stream
    op: [read, copy]
    bytes: 4GiB
"#;
    let e = Experiment::parse(Path::new("experiments/design.yaml"), text.as_bytes()).unwrap();
    assert_eq!(e.points.len(), 12 + 1 + 12 + 2);
    assert_eq!(e.hardware.as_ref().unwrap().memory_bandwidth_gbps, 3350.0);
    let Workload::KvDecode(m) = &e.points[12].workload else {
        panic!()
    };
    assert_eq!((m.kv_heads, m.head_dim_k, m.head_dim_v), (1, 576, 512));
}

#[test]
fn unknown_keys() {
    let msg = refused(
        "name: t\nruns:\n  - kernel: kv_decode\n    batch: 1\n    qheads: 64\n",
        5,
        "qheads",
    );
    assert!(msg.contains("unknown field"), "{msg}");
    refused("name: t\nrepz: 3\nruns: []\n", 2, "repz");
}

#[test]
fn unknown_kernel_names_the_known_ones() {
    let msg = refused(
        &KV.replace("kernel: kv_decode", "kernel: kv_decod"),
        3,
        "kernel",
    );
    assert!(msg.contains("did you mean kv_decode?"), "{msg}");
    for k in decodelab::registry::KERNELS {
        assert!(msg.contains(k.name), "{msg}");
    }
    let msg = refused("name: t\nbackends: [cpu, rocm]\nruns: []\n", 2, "backends");
    for b in decodelab::registry::backend_names() {
        assert!(msg.contains(b), "{msg}");
    }
}

#[test]
fn four_bit_dtypes_are_weight_formats_in_whole_groups() {
    for (dt, group) in [
        ("mxfp4", 32),
        ("int4_g32", 32),
        ("int4_g128", 128),
        ("nvfp4", 16),
    ] {
        let msg = refused(&format!("{KV}    kv_dtype: [bf16, {dt}]\n"), 9, "kv_dtype");
        assert!(msg.contains("weight format"), "{msg}");
        let expert = format!(
            "name: t\nruns:\n  - kernel: expert_gemv\n    experts: 8\n    top_k: 2\n    batch: 1\n    d_in: 1000\n    d_out: 16\n    weight_dtype: {dt}\n"
        );
        let msg = refused(&expert, 7, "d_in");
        assert!(msg.contains(&format!("multiple of {group}")), "{msg}");
        let e = parse(&expert.replace("1000", "2944")).unwrap();
        assert_eq!(e.points.len(), 1);
    }
    // A group size that is not supported, and a near miss, with the line and field.
    let expert = "name: t\nruns:\n  - kernel: expert_gemv\n    experts: 8\n    top_k: 2\n    batch: 1\n    d_in: 256\n    d_out: 16\n    weight_dtype: int4_g64\n";
    let msg = refused(expert, 9, "weight_dtype");
    assert!(msg.contains("int4_g32 or int4_g128"), "{msg}");
    let msg = refused(&expert.replace("int4_g64", "nvfp8"), 9, "weight_dtype");
    assert!(msg.contains("did you mean 'nvfp4'"), "{msg}");
    // The model's names read too (fp4 and fp8 are accepted as the model writes them).
    parse(&expert.replace("int4_g64", "fp4")).unwrap();
    parse(&expert.replace("int4_g64", "fp8")).unwrap();
}

#[test]
fn block_scales_sweep_fp8_points_only() {
    let run = "name: t\nruns:\n  - kernel: expert_gemv\n    experts: 8\n    top_k: 2\n    batch: 1\n    d_in: 256\n    d_out: 16\n";
    // bf16 has no scales: its point is not repeated per weight_scale.
    let e = parse(&format!(
        "{run}    weight_dtype: [bf16, fp8_e4m3]\n    weight_scale: [row, block128]\n"
    ))
    .unwrap();
    let got: Vec<String> = e
        .points
        .iter()
        .map(|p| match &p.workload {
            Workload::ExpertGemv(g) => format!("{} {:?}", g.weight_dtype, g.scale_shape()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        got,
        [
            "bf16 None",
            "fp8_e4m3 Some([8, 16])",
            "fp8_e4m3 Some([8, 1, 2])"
        ]
    );
    let msg = refused(
        &format!("{run}    weight_dtype: bf16\n    weight_scale: block128\n"),
        10,
        "weight_scale",
    );
    assert!(msg.contains("fp8"), "{msg}");
    let msg = refused(
        &format!("{run}    weight_scale: block64\n"),
        9,
        "weight_scale",
    );
    assert!(msg.contains("block128"), "{msg}");
}

#[test]
fn wrong_types() {
    refused(
        &KV.replace("batch: [1, 8]", "batch: [1, eight]"),
        4,
        "batch",
    );
    refused(&KV.replace("q_heads: 64", "q_heads: 6.5"), 5, "q_heads");
    refused(&format!("{KV}    kv_dtype: bf17\n"), 9, "kv_dtype");
    refused("name: t\nreps: many\nruns: []\n", 2, "reps");
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: 4GoB\n",
        4,
        "bytes",
    );
}

#[test]
fn zero_and_negative_sizes() {
    let msg = refused(&KV.replace("head_dim: 128", "head_dim: 0"), 7, "head_dim");
    assert!(msg.contains("at least 1"), "{msg}");
    refused(&KV.replace("batch: [1, 8]", "batch: [1, -8]"), 4, "batch");
    refused(&KV.replace("context: 4096", "context: -1"), 8, "context");
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: 0\n",
        4,
        "bytes",
    );
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: -4\n",
        4,
        "bytes",
    );
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: 6\n",
        4,
        "bytes",
    ); // not whole words
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: []\n",
        4,
        "bytes",
    );
}

#[test]
fn impossible_shapes() {
    let msg = refused(&KV.replace("kv_heads: 8", "kv_heads: 7"), 6, "kv_heads");
    assert!(msg.contains("not a multiple"), "{msg}");
    let ex = "name: t\nruns:\n  - kernel: expert_gemv\n    experts: 4\n    top_k: 5\n    batch: 1\n    d_in: 8\n    d_out: 8\n";
    let msg = refused(ex, 5, "top_k");
    assert!(msg.contains("larger than experts"), "{msg}");
    refused(
        &ex.replace("experts: 4", "experts: 8")
            .replace("d_in: 8", ""),
        3,
        "d_in",
    ); // missing
    refused(&format!("{KV}    experts: 8\n"), 9, "experts"); // not a kv_decode field
    refused(&format!("{KV}    attention: mla\n"), 6, "kv_heads"); // gqa fields on an mla run
    refused("name: t\nruns:\n  - kernel: attention\n", 3, "kernel");
    refused(&format!("{KV}    attention: [gqa, mla]\n"), 9, "attention");
}

#[test]
fn duplicate_and_bad_routing_ids() {
    let ex = "name: t\nruns:\n  - kernel: expert_gemv\n    experts: 4\n    top_k: 2\n    batch: 2\n    d_in: 8\n    d_out: 8\n";
    let msg = refused(
        &format!("{ex}    routing: {{ids: [[0, 1], [3, 3]]}}\n"),
        9,
        "routing",
    );
    assert!(msg.contains("chosen twice"), "{msg}");
    let msg = refused(
        &format!("{ex}    routing: {{ids: [[0, 1], [3, 4]]}}\n"),
        9,
        "routing",
    );
    assert!(msg.contains(">= experts"), "{msg}");
    refused(
        &format!("{ex}    routing: {{ids: [[0, 1]]}}\n"),
        9,
        "routing",
    );
    refused(&format!("{ex}    routing: {{zipf: -1}}\n"), 9, "routing");
    refused(&format!("{ex}    routing: roundrobin\n"), 9, "routing");
    let ok = parse(&format!("{ex}    routing: {{ids: [[0, 1], [3, 2]]}}\n")).unwrap();
    let Workload::ExpertGemv(g) = &ok.points[0].workload else {
        panic!()
    };
    assert_eq!(g.topk_ids, vec![0, 1, 3, 2]);
}

#[test]
fn top_level_fields() {
    refused("name: ../evil\nruns: []\n", 1, "name");
    refused("name: t\nruns: []\n", 2, "runs");
    refused("name: t\nbackends: [cpu, tpu]\nruns: []\n", 2, "backends");
    refused("name: t\ndevices: 0\nruns: []\n", 2, "devices");
    refused("name: t\ndevices: [0, 0]\nruns: []\n", 2, "devices");
    refused("name: t\nhardware: h900\nruns: []\n", 2, "hardware");
    refused("name: t\nreps: 0\nruns: []\n", 2, "reps");
    refused("name: t\ncache: lukewarm\nruns: []\n", 2, "cache");
}

#[test]
fn a_point_that_cannot_fit_the_device_is_refused_before_running() {
    let e = parse("name: t\nbackends: [cpu]\nruns:\n  - kernel: stream\n    bytes: 1MiB\n  - kernel: stream\n    bytes: 8TiB\n").unwrap();
    let sel = preflight::select(&e, &e.backends).unwrap();
    let err = preflight::check_fit(&e, &sel).expect_err("8 TiB cannot fit");
    let shown = err.to_string();
    assert_eq!(err.line, 6, "{shown}");
    assert!(
        shown.contains("runs[1]") && shown.contains("needs"),
        "{shown}"
    );
}

#[test]
fn unavailable_backends_and_devices_are_explained() {
    // Whichever backend this machine lacks (none, on a GPU machine with Vulkan) is refused
    // with its reason.
    let missing = decodelab::backend::probe_all()
        .into_iter()
        .find_map(|p| match p {
            decodelab::backend::Probe::Unavailable { name, reason } => Some((name, reason)),
            decodelab::backend::Probe::Available(_) => None,
        });
    match missing {
        Some((name, reason)) => {
            let text = format!(
                "name: t\nbackends: [{name}]\nruns:\n  - kernel: stream\n    bytes: 4096\n"
            );
            let e = parse(&text).unwrap();
            let err = preflight::select(&e, &e.backends)
                .err()
                .expect("unavailable");
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("{name}: unavailable ({reason})")),
                "{shown}"
            );
        }
        None => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: every backend is available here; no refusal to explain"
            );
        }
    }
    let e = parse("name: t\ndevices: [3]\nruns:\n  - kernel: stream\n    bytes: 4096\n").unwrap();
    let err = preflight::select(&e, &BackendChoice::Named(vec!["cpu".into()]))
        .err()
        .expect("no device 3");
    assert_eq!(err.line, 2, "{err}");
}

#[test]
fn malformed_files_are_refused_not_panicked_on() {
    // Binary garbage, not UTF-8.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let err = Experiment::parse(Path::new("g.yaml"), &garbage).unwrap_err();
    assert!(err.to_string().contains("g.yaml"));
    // A 10 MB file.
    let big = "# padding\n".repeat(1_000_000);
    let err = Experiment::parse(Path::new("big.yaml"), big.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    // Deep nesting, flow and block.
    let deep = format!(
        "name: t\nruns: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse(&deep).is_err());
    let mut block = String::from("name: t\nruns:\n");
    for i in 0..5000 {
        block.push_str(&" ".repeat(i + 2));
        block.push_str("- \n");
    }
    assert!(parse(&block).is_err());
    // Empty, a scalar, a list, several documents, an alias bomb.
    for text in [
        "",
        "42",
        "- a\n- b\n",
        "name: t\n---\nname: u\n",
        "a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
    ] {
        assert!(parse(text).is_err(), "{text:?} accepted");
    }
}

/// A refusal names its file and either a line or a field.
fn assert_located(r: Result<Experiment, ConfigError>, what: &str) {
    if let Err(e) = r {
        let shown = e.to_string();
        assert!(
            shown.starts_with("q.yaml") && (e.line > 0 || e.field.is_some()),
            "{what}: refusal without a location: {shown}"
        );
    }
}

#[test]
fn mutated_files_never_panic() {
    // Every prefix and thousands of seeded byte edits of a valid file: Ok or a located Err.
    let good = std::fs::read("experiments/quickstart.yaml").unwrap();
    let mut refused = 0;
    for cut in 0..good.len() {
        let r = Experiment::parse(Path::new("q.yaml"), &good[..cut]);
        refused += r.is_err() as usize;
        assert_located(r, &format!("prefix of {cut} bytes"));
    }
    assert!(
        refused > good.len() / 2,
        "most prefixes cut a run short: {refused} refused"
    );
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"-:[]{}, \n0123456789abcxyz#&*!|>'\"";
    for _ in 0..3000 {
        let mut m = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % m.len() as u64) as usize;
            m[at] = alphabet[(next() % alphabet.len() as u64) as usize];
        }
        assert_located(
            Experiment::parse(Path::new("q.yaml"), &m),
            &String::from_utf8_lossy(&m),
        );
    }
}

#[test]
fn shipped_experiments_are_valid() {
    for entry in std::fs::read_dir("experiments").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            Experiment::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn auto_never_picks_an_emulated_gpu() {
    // With lavapipe installed (CI), wgpu is available but emulated: auto must take the CPU.
    let e = parse("name: t\nruns:\n  - kernel: stream\n    bytes: 4096\n").unwrap();
    let sel = preflight::select(&e, &BackendChoice::Auto).unwrap();
    assert_eq!(sel.len(), 1);
    assert!(
        sel[0].backend.devices().iter().any(|d| !d.emulated),
        "auto chose {}",
        sel[0].backend.name()
    );
    let all = preflight::select(&e, &BackendChoice::All).unwrap();
    assert!(all.iter().any(|s| s.backend.name() == "cpu"));
}

const SPLIT_KV: &str = "name: t\ndevices: 4\nvirtual: true\nruns:\n  - kernel: kv_decode\n    split: [none, heads, sequence]\n    batch: 2\n    q_heads: 16\n    kv_heads: 4\n    head_dim: 64\n    context: 100\n";

#[test]
fn split_is_a_sweep_axis_and_virtual_places_every_device_on_device_0() {
    use decodelab::split::SplitKind;
    let e = parse(SPLIT_KV).unwrap();
    assert_eq!(e.points.len(), 3);
    let splits: Vec<SplitKind> = e.points.iter().map(|p| p.split).collect();
    assert_eq!(
        splits,
        [SplitKind::None, SplitKind::Heads, SplitKind::Sequence]
    );
    assert!(e.virtual_devices);
    let sel = preflight::select(&e, &BackendChoice::Named(vec!["cpu".into()])).unwrap();
    assert_eq!(sel[0].devices, vec![0, 0, 0, 0]);
    assert_eq!(sel[0].physical_devices(), vec![0]);
}

#[test]
fn splits_that_cannot_be_made_are_refused_with_line_and_field() {
    // 4 KV heads over 8 devices.
    let text = SPLIT_KV.replace("devices: 4", "devices: 8");
    let msg = refused(&text, 6, "split");
    assert!(msg.contains("at least 8 KV heads"), "{msg}");
    // A split that does not apply to the kernel.
    let msg = refused(
        "name: t\ndevices: 2\nruns:\n  - kernel: stream\n    bytes: 64\n    split: experts\n",
        6,
        "split",
    );
    assert!(msg.contains("does not apply to stream"), "{msg}");
    // Unknown split names are refused by serde with the accepted ones.
    let msg = refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: 64\n    split: rows\n",
        5,
        "split",
    );
    assert!(msg.contains("heads"), "{msg}");
    // virtual: true needs a count.
    let msg = refused(
        "name: t\ndevices: [0, 1]\nvirtual: true\nruns:\n  - kernel: stream\n    bytes: 64\n",
        3,
        "virtual",
    );
    assert!(msg.contains("count"), "{msg}");
    // A link needs two devices; split does not apply to it.
    let msg = refused(
        "name: t\nruns:\n  - kernel: link\n    bytes: 64\n",
        3,
        "kernel",
    );
    assert!(msg.contains("pairs of devices"), "{msg}");
    let msg = refused(
        "name: t\ndevices: 2\nruns:\n  - kernel: link\n    bytes: 64\n    split: data\n",
        6,
        "split",
    );
    assert!(msg.contains("does not apply to kernel link"), "{msg}");
}

#[test]
fn devices_all_splits_are_checked_once_the_count_is_known() {
    // The file cannot know how many devices `all` is; the runner's check can (cpu: 1).
    let e = parse("name: t\ndevices: all\nruns:\n  - kernel: expert_gemv\n    split: experts\n    experts: 4\n    top_k: 1\n    batch: 2\n    d_in: 8\n    d_out: 8\n").unwrap();
    let sel = preflight::select(&e, &BackendChoice::Named(vec!["cpu".into()])).unwrap();
    assert!(
        preflight::check_fit(&e, &sel).is_ok(),
        "4 experts over 1 device"
    );
    let e = parse("name: t\ndevices: all\nruns:\n  - kernel: link\n    bytes: 64\n").unwrap();
    assert_eq!(e.points.len(), 1);
    // The cpu backend has one device: no pair to link, refused rather than run as nothing.
    let sel = preflight::select(&e, &BackendChoice::Named(vec!["cpu".into()])).unwrap();
    let err = preflight::check_fit(&e, &sel).expect_err("one device has no pairs");
    assert_eq!(err.line, 4, "the link run's line");
    assert!(err.to_string().contains("pairs of devices"), "{err}");
}

#[test]
fn the_nvlink_experiment_is_valid() {
    let e = Experiment::load(Path::new("experiments/nvlink-8gpu.yaml")).unwrap();
    assert_eq!(e.devices, DeviceChoice::Count(8));
    for kind in ["heads", "sequence", "experts", "tensor", "data"] {
        assert!(
            e.points.iter().any(|p| p.split.name() == kind),
            "no {kind} split in the 8-GPU sweep"
        );
    }
    assert!(e.points.iter().any(|p| p.workload.kernel() == "link"));
}

#[test]
fn impl_is_a_sweep_axis_checked_by_name() {
    let e = parse(&format!("{KV}    impl: [simple, best]\n")).unwrap();
    assert_eq!(e.points.len(), 4);
    let imps: Vec<Option<&str>> = e.points.iter().map(|p| p.imp).collect();
    assert_eq!(
        imps,
        [Some("simple"), None, Some("simple"), None],
        "impl innermost"
    );
    // `all` is every implementation any backend has of the kernel.
    let e = parse(&format!("{KV}    impl: all\n")).unwrap();
    let names = decodelab::backend::impl_names(decodelab::registry::Kernel::KvDecode);
    assert_eq!(e.points.len(), 2 * names.len());
    assert!(e.points.iter().all(|p| p.imp.is_some()));
    // An unknown name is refused at its line, naming the ones that exist.
    let msg = refused(&format!("{KV}    impl: tunde\n"), 9, "impl");
    assert!(msg.contains("simple") && msg.contains("tunde"), "{msg}");
    // Points of one shape share their seed whatever the implementation.
    let e = parse(&format!("{KV}    impl: [simple, simple]\n")).unwrap();
    assert_eq!(e.points.len(), 2, "a repeated name is one point per shape");
}

#[test]
fn math_is_a_sweep_axis_over_the_same_inputs() {
    use decodelab::workload::Math;
    let e = parse(&format!("{KV}    math: [f32, bf16]\n")).unwrap();
    assert_eq!(e.points.len(), 4);
    let (Workload::KvDecode(a), Workload::KvDecode(b)) =
        (&e.points[0].workload, &e.points[1].workload)
    else {
        panic!()
    };
    assert_eq!((a.math, b.math), (Math::F32, Math::Bf16));
    assert_eq!(
        a.seed, b.seed,
        "f32 and bf16 of a shape judge the same inputs"
    );
    assert_eq!(e.points[1].workload.params_json()["math"], "bf16");
    refused(
        "name: t\nruns:\n  - kernel: stream\n    bytes: 64\n    math: bf16\n",
        5,
        "math",
    );
    refused(&format!("{KV}    math: f64\n"), 9, "math");
}

#[test]
fn overrides_and_only_pick_settings_and_points() {
    use decodelab::experiment::Overrides;
    let text = format!(
        "{KV}    kv_dtype: [bf16, fp8_e4m3]\n  - kernel: stream\n    op: [read, copy]\n    bytes: 1MiB\n"
    );
    let mut e = parse(&text).unwrap();
    e.apply(&Overrides {
        reps: Some(3),
        warmup: Some(0),
        energy: Some(decodelab::energy::EnergyMode::Off),
        only: vec!["kernel=kv_decode,batch=8".into()],
    })
    .unwrap();
    assert_eq!((e.reps, e.warmup), (3, 0));
    assert_eq!(e.energy, decodelab::energy::EnergyMode::Off);
    let kept: Vec<usize> = e.points.iter().map(|p| p.index).collect();
    assert_eq!(
        kept,
        [2, 3],
        "batch 8 in both dtypes, indices kept for --resume"
    );

    let only = |f: &str| {
        let mut e = parse(&text).unwrap();
        e.apply(&Overrides {
            only: f.split(" --only ").map(str::to_string).collect(),
            ..Default::default()
        })
        .map(|_| e.points.iter().map(|p| p.index).collect::<Vec<_>>())
    };
    assert_eq!(only("0,4-5").unwrap(), [0, 4, 5]);
    assert_eq!(only("batch=1,batch=8,kv_dtype=fp8_e4m3").unwrap(), [1, 3]);
    assert_eq!(only("op=copy").unwrap(), [5]);
    assert_eq!(only("impl=best,kernel=stream").unwrap(), [4, 5]);
    // Several --only: the union (a point without a key never matches a term on it).
    assert_eq!(
        only("kernel=stream --only batch=8,kv_dtype=bf16").unwrap(),
        [2, 4, 5]
    );
    assert_eq!(only("batch=8").unwrap(), [2, 3], "streams have no batch");
    let err = only("bath=8").unwrap_err().to_string();
    assert!(
        err.contains("no point has 'bath'") && err.contains("batch"),
        "{err}"
    );
    assert!(
        only("batch=3")
            .unwrap_err()
            .to_string()
            .contains("no point matches")
    );
    assert!(only("7-x").unwrap_err().to_string().contains("7-x"));
    let mut e = parse(&text).unwrap();
    let err = e
        .apply(&Overrides {
            reps: Some(0),
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("--reps 0"), "{err}");
}

#[test]
fn a_point_that_cannot_fit_the_host_is_refused_before_running() {
    let e = parse("name: t\nruns:\n  - kernel: stream\n    bytes: 1MiB\n  - kernel: expert_gemv\n    experts: 64\n    top_k: 2\n    batch: 1\n    d_in: 4096\n    d_out: 4096\n").unwrap();
    // 64 x 4096 x 4096 bf16 = 2 GiB of weights.
    assert!(preflight::host_bytes_needed(&e.points[1]) > 2 << 30);
    assert!(preflight::check_fit_host(&e, Some(4 << 30)).is_ok());
    let err = preflight::check_fit_host(&e, Some(1 << 30)).expect_err("2 GiB in 1 GiB");
    let shown = err.to_string();
    assert_eq!(err.line, 5, "{shown}");
    assert!(
        shown.contains("runs[1]") && shown.contains("host memory"),
        "{shown}"
    );
}

#[test]
fn energy_auto_measures_only_steps_that_move_enough() {
    let dev = decodelab::backend::DeviceInfo {
        index: 0,
        name: "gpu".into(),
        memory_bytes: None,
        details: vec![],
        pci_bus_id: Some("0000:01:00.0".into()),
        emulated: false,
    };
    let small = "name: t\nenergy: auto\nruns:\n  - kernel: stream\n    bytes: 1MiB\n  - kernel: stream\n    bytes: 1GiB\n";
    let e = parse(small).unwrap();
    let why = |i: usize, e: &Experiment| match preflight::meters_for(
        e,
        &dev,
        Some(&e.points[i].workload),
    )
    .measured
    {
        Some(Err(why)) => why,
        Some(Ok(_)) => "measured".into(),
        None => "not asked".into(),
    };
    let w = why(0, &e);
    assert!(
        w.contains("not measured") && w.contains("1MiB") && w.contains("energy: nvml"),
        "{w}"
    );
    // A 1 GiB step is measured (here NVML is absent, so the reason is NVML's, not the size).
    assert!(!why(1, &e).contains("not measured"), "{}", why(1, &e));
    // energy: nvml measures every point.
    let e = parse(&small.replace("energy: auto", "energy: nvml")).unwrap();
    assert!(!why(0, &e).contains("not measured"), "{}", why(0, &e));
}

#[test]
fn a_sweep_of_millions_is_refused_before_it_is_expanded() {
    let axis = |n: usize| {
        format!(
            "[{}]",
            (1..=n)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let huge = format!(
        "name: t\nruns:\n  - kernel: kv_decode\n    batch: {}\n    q_heads: 8\n    kv_heads: 2\n    head_dim: 64\n    context: {}\n    kv_dtype: [f32, f16, bf16, fp8_e4m3]\n    math: [f32, bf16]\n",
        axis(100),
        axis(1000)
    );
    let t0 = std::time::Instant::now();
    let msg = refused(&huge, 3, "kernel");
    assert!(
        t0.elapsed().as_secs_f64() < 1.0,
        "refused in {:?}",
        t0.elapsed()
    );
    assert!(
        msg.contains("800000 points")
            && msg.contains("batch 100 x")
            && msg.contains("context 1000"),
        "{msg}"
    );
    assert!(msg.contains("max_points"), "{msg}");
    // Raised explicitly, the same file is accepted (checked here on a smaller one).
    let small = huge
        .replace(&axis(1000), &axis(600))
        .replace(&axis(100), &axis(50));
    assert!(parse(&small).is_err(), "240000 points are over the default");
    let e = parse(&small.replacen("name: t\n", "name: t\nmax_points: 300000\n", 1)).unwrap();
    assert_eq!(e.points.len(), 240_000);
}
