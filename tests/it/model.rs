//! The analytic decode model against bytes and FLOPs worked by hand from the models' config
//! numbers, the expected-distinct-experts formula against a seeded simulation, and the talk's
//! figures.

use decodelab::model::figures::{self, FigureSpec};
use decodelab::model::{self, MeasuredTerms, Scenario, evaluate, expected_experts};
use decodelab::workload::{DType, ExpertGemv, Math, Routing, WeightScale, Workload};
use std::path::Path;

fn here() -> &'static Path {
    Path::new(".")
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

#[test]
fn llama_70b_by_hand() {
    // config.json: hidden 8192, 80 layers, 64 heads, 8 KV heads, head_dim 128,
    // intermediate 28672, vocab 128256; bf16 weights and KV.
    let m = model::find_model(here(), "llama-3.1-70b").unwrap();
    let h = model::find_hardware(here(), "h100-sxm").unwrap();
    let (b, ctx) = (8.0, 4096.0);
    let attn = 8192.0 * 64.0 * 128.0 + 2.0 * 8192.0 * 8.0 * 128.0 + 64.0 * 128.0 * 8192.0;
    let mlp = 3.0 * 8192.0 * 28672.0;
    let lm_head = 128256.0 * 8192.0;
    let layers = 80.0 * (attn + mlp);
    let weight_bytes = 2.0 * (layers + lm_head) + b * 8192.0 * 2.0; // + embedding rows
    let kv_bytes = b * ctx * 80.0 * (2.0 * 8.0 * 128.0 * 2.0);
    let flops = 2.0 * (layers + lm_head) * b + b * ctx * 80.0 * 64.0 * 4.0 * 128.0;
    let r = evaluate(
        &m,
        &h,
        &Scenario::new(8, 4096, 1),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(
        close(r.weight_bytes, weight_bytes, 1e-12),
        "{} vs {weight_bytes}",
        r.weight_bytes
    );
    assert!(close(r.kv_bytes, kv_bytes, 1e-12));
    assert!(close(r.flops, flops, 1e-12));
    assert!(close(m.total_params(), layers + 2.0 * lm_head, 1e-12));
    assert!(
        (69e9..72e9).contains(&m.total_params()),
        "Llama 70B has ~70.6B parameters"
    );
    // Time: bytes over the spec bandwidth of one H100.
    assert!(close(r.time_ms.weights, weight_bytes / 3350e9 * 1e3, 1e-12));
    assert_eq!(r.communication_bytes, 0.0);
}

#[test]
fn deepseek_v3_by_hand() {
    // config.json: hidden 7168, 61 layers (3 dense), 128 heads, q_lora 1536, kv_lora 512,
    // rope 64, nope 128, v_head 128, 256 routed experts (top 8) + 1 shared of 2048,
    // dense intermediate 18432, vocab 129280; fp8 weights, bf16 latent cache.
    let m = model::find_model(here(), "deepseek-v3").unwrap();
    let h = model::find_hardware(here(), "h200-sxm").unwrap();
    let (b, ctx) = (16.0, 8192.0);
    let attn = 7168.0 * 1536.0
        + 1536.0 * 128.0 * 192.0
        + 7168.0 * 576.0
        + 512.0 * 128.0 * 256.0
        + 128.0 * 128.0 * 7168.0;
    let expert = 3.0 * 7168.0 * 2048.0;
    let dense = 3.0 * 7168.0 * 18432.0;
    let touched = 256.0 * (1.0 - (1.0 - 8.0 / 256.0f64).powi(16));
    let router = 7168.0 * 256.0;
    let lm_head = 129280.0 * 7168.0;
    let weight_bytes = 61.0 * attn + 3.0 * dense + 58.0 * (expert + touched * expert) // fp8: 1 byte
        + 58.0 * router * 2.0 + lm_head * 2.0 + b * 7168.0 * 2.0; // bf16 router, lm_head, rows
    let kv_bytes = b * ctx * 61.0 * 576.0 * 2.0;
    let active = 61.0 * attn + 3.0 * dense + 58.0 * (9.0 * expert + router) + lm_head;
    let flops = 2.0 * active * b + b * ctx * 61.0 * 128.0 * 2.0 * (2.0 * 512.0 + 64.0);
    let r = evaluate(
        &m,
        &h,
        &Scenario::new(16, 8192, 8),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(
        close(r.weight_bytes, weight_bytes, 1e-12),
        "{} vs {weight_bytes}",
        r.weight_bytes
    );
    assert!(close(r.kv_bytes, kv_bytes, 1e-12));
    assert!(close(r.flops, flops, 1e-12));
    assert!(close(r.experts_touched_per_layer.unwrap(), touched, 1e-12));
    assert!(
        (660e9..690e9).contains(&m.total_params()),
        "DeepSeek-V3 has 671B (+ embeddings)"
    );
    assert!((36e9..39e9).contains(&m.active_params()), "37B active");
    // Eight devices: communication is counted; its bytes are bf16 activations per block.
    let comm = 61.0 * 2.0 * b * 7168.0 * 2.0 + 58.0 * 2.0 * b * 8.0 * 7168.0 * 2.0;
    assert!(close(r.communication_bytes, comm, 1e-12));
}

#[test]
fn kimi_matches_the_talks_description() {
    let m = model::find_model(here(), "kimi-k2.5").unwrap();
    assert!(
        (1.0e12..1.1e12).contains(&m.total_params()),
        "{}",
        m.total_params()
    );
    assert!(
        (31e9..34e9).contains(&m.active_params()),
        "{}",
        m.active_params()
    );
}

#[test]
fn expected_distinct_experts_match_a_seeded_simulation() {
    for (e, k, b) in [
        (384usize, 8usize, 1usize),
        (384, 8, 16),
        (384, 8, 64),
        (256, 8, 128),
        (64, 6, 10),
    ] {
        let trials = 400;
        let mut total = 0.0;
        for seed in 0..trials {
            let ids = ExpertGemv::route(&Routing::Uniform, e, k, b, seed).unwrap();
            let mut seen = vec![false; e];
            ids.iter().for_each(|&i| seen[i as usize] = true);
            total += seen.iter().filter(|&&s| s).count() as f64;
        }
        let sim = total / trials as f64;
        let formula = expected_experts(e as f64, k as f64, b as f64);
        assert!(
            close(sim, formula, 0.01),
            "E={e} k={k} B={b}: simulated {sim}, formula {formula}"
        );
    }
}

/// Kimi-K2.5 as released (int4 experts, the rest bf16) is about 0.6 TB (the issue's and
/// Moonshot's figure); in fp8 it would be about 1.03 TB.
#[test]
fn kimi_counts_its_release_bytes() {
    let m = model::find_model(here(), "kimi-k2.5").unwrap();
    assert_eq!(m.weights.experts, DType::Int4G32);
    assert_eq!(m.weights.rest, DType::Bf16);
    let held = |weights: Option<&str>| {
        let s = Scenario::with_dtypes(1, 4096, 8, weights, None).unwrap();
        let b = evaluate(
            &m,
            &model::find_hardware(here(), "b200").unwrap(),
            &s,
            &MeasuredTerms::default(),
        )
        .unwrap();
        b.capacity.weights_per_device * 8.0
    };
    let release = held(None);
    assert!((0.58e12..0.61e12).contains(&release), "{release}");
    let fp8 = held(Some("fp8"));
    assert!((1.0e12..1.06e12).contains(&fp8), "{fp8}");
    // Routed experts alone, by hand from the config: 60 MoE layers x 384 experts x 3 x
    // 7168 x 2048 parameters at 4.5 bits.
    let routed = 60.0 * 384.0 * 3.0 * 7168.0 * 2048.0 * 4.5 / 8.0;
    let experts_nvfp4 = held(Some("experts=nvfp4"));
    assert!(
        (experts_nvfp4 - release).abs() < 1.0,
        "nvfp4 and int4_g32 are both 4.5 bits"
    );
    let experts_mx = held(Some("experts=mxfp4"));
    assert!(close(release - experts_mx, routed * (0.25 / 4.5), 1e-9));
}

/// Figure 1 as argued in its YAML: batch 512, the context a 4 ms step allows; the talk's
/// 59 / 40 / 1 is reached near the context its caption names (10240).
#[test]
fn the_joule_breakdown_is_where_its_caption_says() {
    let path = Path::new("experiments/talk/1-joule-breakdown.yaml");
    let (spec, _) = figures::load_figure(path).unwrap();
    let FigureSpec::JouleBreakdown {
        point,
        sensitivity_contexts,
        ..
    } = spec
    else {
        panic!("figure 1 is a joule breakdown")
    };
    let at = |context: u64| {
        let p = figures::PointSpec {
            context,
            ..point.clone()
        };
        figures::point(Path::new("experiments/talk"), &p).unwrap()
    };
    let b = at(point.context);
    assert!(b.time_ms.total <= 4.0, "{} ms", b.time_ms.total);
    assert!(
        at(point.context + 1024).time_ms.total > 4.0,
        "the longest context under 4 ms"
    );
    let p = b.energy_j_per_token.percent();
    assert!(
        p.kv > p.weights,
        "the caption: KV is the larger share ({p:?})"
    );
    assert!(sensitivity_contexts.contains(&10240));
    let p = at(10240).energy_j_per_token.percent();
    assert!(
        (p.weights - 59.0).abs() <= 2.0,
        "weights {:.1} %",
        p.weights
    );
    assert!((p.kv - 40.0).abs() <= 4.0, "KV {:.1} %", p.kv);
    assert!((p.compute - 1.0).abs() <= 4.0, "compute {:.1} %", p.compute);
}

#[test]
fn sram_die_cuts_energy_about_tenfold() {
    let m = model::find_model(here(), "kimi-k2.5").unwrap();
    let hbm = model::find_hardware(here(), "b200").unwrap();
    let sram = model::find_hardware(here(), "sram-die").unwrap();
    let before = evaluate(
        &m,
        &hbm,
        &Scenario::new(512, 26624, 72),
        &MeasuredTerms::default(),
    )
    .unwrap();
    let after = evaluate(
        &m,
        &sram,
        &Scenario::new(512, 26624, 1189),
        &MeasuredTerms::default(),
    )
    .unwrap();
    let ratio = before.energy_j_per_token.total / after.energy_j_per_token.total;
    assert!((5.0..20.0).contains(&ratio), "{ratio}");
    // Weights: 10 pJ/bit -> 0.02 pJ/bit is exactly 500x.
    assert!(close(
        before.energy_j_per_token.weights / after.energy_j_per_token.weights,
        500.0,
        1e-9
    ));
}

#[test]
fn measured_bandwidths_replace_the_profile() {
    let dir = std::env::temp_dir().join(format!("decodelab-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let line = |kernel: &str, params: &str, gbps: f64| {
        format!(
            r#"{{"schema":"decodelab.result/1","experiment":"m","point":0,"kernel":"{kernel}","backend":"cuda","device":"H100","device_count":1,"split":"none","params":{params},"bytes":1,"flops":0,"reps":1,"time_s":{{"median":1,"min":1,"max":1}},"gbps":{gbps},"pct_of_spec":null,"pct_of_stream":null,"cache":"cold","energy":{{"source":"none","joules":null,"pj_per_byte":null}},"check":{{"rel_l2_err":0,"max_abs_err":0,"pass":true}},"env":{{}}}}"#
        )
    };
    let text = [
        line("expert_gemv", r#"{"batch":1}"#, 1000.0),
        line("expert_gemv", r#"{"batch":64}"#, 2500.0),
        line(
            "kv_decode",
            r#"{"attention":"mla","batch":64,"context":8192}"#,
            2800.0,
        ),
        line(
            "kv_decode",
            r#"{"attention":"gqa","batch":64,"context":8192}"#,
            1.0,
        ),
    ]
    .join("\n");
    let path = dir.join("results.jsonl");
    std::fs::write(&path, text).unwrap();
    let m = model::find_model(here(), "deepseek-v3").unwrap();
    let h = model::find_hardware(here(), "h100-sxm").unwrap();
    let s = Scenario::new(48, 8192, 1);
    let t = model::measured_terms(&path, &m, &h, &s).unwrap();
    assert_eq!((t.weights_gbps, t.kv_gbps), (Some(2500.0), Some(2800.0)));
    assert_eq!(
        t.warning, None,
        "measured on an H100, held against the H100 profile"
    );
    // Measured on another device than the profile: said.
    let cpu = dir.join("cpu.jsonl");
    std::fs::write(
        &cpu,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"H100\"", "\"Intel(R) Xeon(R)\""),
    )
    .unwrap();
    let w = model::measured_terms(&cpu, &m, &h, &s)
        .unwrap()
        .warning
        .unwrap();
    assert!(
        w.contains("Intel(R) Xeon(R)") && w.contains("H100 SXM5"),
        "{w}"
    );
    let spec = evaluate(&m, &h, &s, &MeasuredTerms::default()).unwrap();
    let meas = evaluate(&m, &h, &s, &t).unwrap();
    assert!(close(
        meas.time_ms.weights,
        spec.time_ms.weights * 3350.0 / 2500.0,
        1e-12
    ));
    assert!(close(
        meas.time_ms.kv,
        spec.time_ms.kv * 3350.0 / 2800.0,
        1e-12
    ));
    assert_eq!(meas.time_ms.compute, spec.time_ms.compute);
}

#[test]
fn a_model_that_does_not_fit_its_devices_is_said_so() {
    // Llama-3.1-70B in bf16: 141 GB of weights, over one 80 GB H100, under two.
    let m = model::find_model(here(), "llama-3.1-70b").unwrap();
    let h = model::find_hardware(here(), "h100-sxm").unwrap();
    let one = evaluate(
        &m,
        &h,
        &Scenario::new(1, 4096, 1),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(!one.capacity.fits);
    assert!(close(
        one.capacity.weights_per_device,
        2.0 * m.total_params(),
        1e-2
    ));
    let why = one.capacity.shortfall.unwrap();
    assert!(
        why.contains("141.") && why.contains("80.0 GB") && why.contains("2 devices"),
        "{why}"
    );
    let two = evaluate(
        &m,
        &h,
        &Scenario::new(1, 4096, 2),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(two.capacity.fits && two.capacity.shortfall.is_none());
    // The SRAM die holds the KV cache in its own tier and no model's weights.
    let g = model::find_model(here(), "gpt-oss-120b").unwrap();
    let sram = model::find_hardware(here(), "sram-die").unwrap();
    let b = evaluate(
        &g,
        &sram,
        &Scenario::new(1, 4096, 1),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(!b.capacity.fits && b.capacity.kv_memory_per_device.is_some());
}

#[test]
fn every_preset_and_profile_loads() {
    for name in [
        "kimi-k2.5",
        "deepseek-v3",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "qwen3-235b-a22b",
        "gpt-oss-120b",
    ] {
        let m = model::find_model(here(), name).unwrap();
        for hw in ["h100-sxm", "h200-sxm", "b200", "sram-die"] {
            let h = model::find_hardware(here(), hw).unwrap();
            let r = evaluate(
                &m,
                &h,
                &Scenario::new(4, 2048, 8),
                &MeasuredTerms::default(),
            )
            .unwrap();
            assert!(
                r.time_ms.total > 0.0
                    && r.energy_j_per_token.total > 0.0
                    && r.tokens_per_s_per_watt > 0.0
            );
        }
    }
    // gpt-oss: half the layers cache at most 128 tokens.
    let g = model::find_model(here(), "gpt-oss-120b").unwrap();
    let h = model::find_hardware(here(), "h100-sxm").unwrap();
    let r = evaluate(
        &g,
        &h,
        &Scenario::new(1, 8192, 1),
        &MeasuredTerms::default(),
    )
    .unwrap();
    assert!(close(
        r.kv_bytes,
        (18.0 * 8192.0 + 18.0 * 128.0) * 2.0 * 8.0 * 64.0 * 2.0,
        1e-12
    ));
}

#[test]
fn measured_links_replace_the_profile_link_and_splits_are_not_one_device_figures() {
    let dir = std::env::temp_dir().join(format!("decodelab-model-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let line = |kernel: &str, split: &str, params: &str, gbps: f64, extra: &str| {
        format!(
            r#"{{"schema":"decodelab.result/1","experiment":"m","point":0,"kernel":"{kernel}","backend":"cuda","device":"H100","device_count":8,"split":"{split}","params":{params},"bytes":1,"flops":0,"reps":1,"time_s":{{"median":1,"min":1,"max":1}},"gbps":{gbps},"pct_of_spec":null,"pct_of_stream":null,"cache":"cold","energy":{{"source":"none","joules":null,"pj_per_byte":null}},"check":{{"rel_l2_err":0,"max_abs_err":0,"pass":true}},"env":{{}}{extra}}}"#
        )
    };
    let link = |src: u32, dst: u32, dir: &str, gbps: f64| {
        line(
            "link",
            "link",
            &format!(r#"{{"bytes":1,"direction":"{dir}"}}"#),
            gbps,
            &format!(r#","link":{{"src":{src},"dst":{dst},"path":"p"}}"#),
        )
    };
    let text = [
        line("expert_gemv", "none", r#"{"batch":64}"#, 2500.0, ""),
        // An 8-device split's aggregate GB/s is not one device's bandwidth.
        line("expert_gemv", "experts", r#"{"batch":64}"#, 20000.0, ""),
        link(0, 1, "one_way", 400.0),
        link(1, 0, "one_way", 380.0),
        link(0, 1, "both_ways", 700.0), // both ways is not the per-direction figure
        link(0, 0, "one_way", 3000.0),  // a copy within one device is not a link
    ]
    .join("\n");
    let path = dir.join("results.jsonl");
    std::fs::write(&path, text).unwrap();
    let m = model::find_model(here(), "deepseek-v3").unwrap();
    let h = model::find_hardware(here(), "h100-sxm").unwrap();
    let s = Scenario::new(64, 8192, 8);
    let t = model::measured_terms(&path, &m, &h, &s).unwrap();
    assert_eq!(t.weights_gbps, Some(2500.0));
    assert_eq!(t.link_gbps, Some(390.0));
    // Communication time = bytes / (devices x link) + hop latency: the bandwidth part scales
    // with profile link (450 GB/s) / measured (390 GB/s).
    let spec = evaluate(&m, &h, &s, &MeasuredTerms::default()).unwrap();
    let meas = evaluate(&m, &h, &s, &t).unwrap();
    let d = 8.0;
    let bw_part = |gbps: f64| spec.communication_bytes / (d * gbps * 1e9) * 1e3;
    let latency = spec.time_ms.communication - bw_part(450.0);
    assert!(close(
        meas.time_ms.communication,
        latency + bw_part(390.0),
        1e-9
    ));
}

/// gpt-oss ships its experts in MXFP4: the model's bytes per expert (4.25 bits per weight)
/// and the byte table of an mxfp4 expert_gemv of its shapes (gate and up as one [2I, H]
/// GEMV, down as [H, I]; codes and scales) are the same bytes, worked by hand too.
#[test]
fn gpt_oss_experts_count_the_same_bytes_as_an_mxfp4_expert_gemv() {
    let m = model::find_model(here(), "gpt-oss-120b").unwrap();
    assert_eq!(m.weights.experts, DType::Mxfp4);
    assert_eq!(m.weights.rest, DType::Bf16);
    let (h, i) = (2880, 2880);
    let w_bytes = |d_in: usize, d_out: usize| {
        let ids = vec![vec![5]];
        let w = Workload::ExpertGemv(ExpertGemv {
            experts: 128,
            top_k: 1,
            batch: 1,
            d_in,
            d_out,
            weight_dtype: DType::Mxfp4,
            weight_scale: WeightScale::Row,
            topk_ids: ExpertGemv::route(&Routing::Ids(ids.clone()), 128, 1, 1, 0).unwrap(),
            routing: Routing::Ids(ids),
            seed: 0,
            math: Math::F32,
        });
        let table = w.byte_table();
        let of = |name| table.iter().find(|t| t.tensor == name).unwrap().bytes;
        of("w") + of("w_scale")
    };
    let measured = w_bytes(h, 2 * i) + w_bytes(i, h);
    // Per row of 2880: 90 groups of 32, each 16 bytes of codes and one E8M0 scale.
    let by_hand = (2 * i + h) as u64 * (2880 / 32) * 17;
    assert_eq!(measured, by_hand);
    let modelled = m.expert_params() * DType::Mxfp4.bits_per_value() / 8.0;
    assert_eq!(modelled, by_hand as f64);
}
