//! Every CUDA kernel variant compiles with NVRTC for sm_80 and sm_90 (no GPU needed), with
//! no spills on sm_90. Skipped with a printed reason where NVRTC is absent, unless
//! DECODELAB_REQUIRE includes nvrtc. (Running the kernels is the conformance suite's `cuda`
//! instantiation, on a machine with a GPU.)

use crate::common;

use decodelab::backend::cuda::impls::{CudaImpl, LaunchPlan};
use decodelab::backend::cuda::{compile, fragments};
use decodelab::workload::DType;

fn nvrtc_or_skip() -> bool {
    let found = compile::nvrtc_available().and_then(|_| compile::include_dir().map(|_| ()));
    common::tool_or_skip("nvrtc", found)
}

fn nvdisasm_or_skip() -> bool {
    let found = decodelab::backend::cuda::sass::nvdisasm_path().map(|_| ());
    common::tool_or_skip("nvdisasm", found)
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        let report = decodelab::backend::cuda::impls::report(arch, false)
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert!(report.len() >= decodelab::backend::plan::representative().len());
        for v in &report {
            // The mma plan sizes its grid to one wave of this many blocks per SM.
            if v.imp == "mma" {
                let attend = v.kernels.iter().find(|k| k.kernel == "attend").unwrap();
                assert!(
                    attend.ctas_per_sm as usize >= compile::MMA_BLOCKS_PER_SM,
                    "{arch} {}: {} blocks per SM, the mma plan assumes {}",
                    v.variant,
                    attend.ctas_per_sm,
                    compile::MMA_BLOCKS_PER_SM
                );
            }
            let (label, kernels) = (&v.variant, &v.kernels);
            let names: Vec<&str> = kernels.iter().map(|k| k.kernel.as_str()).collect();
            let want: &[&str] = if label.starts_with("stream") {
                &["stream_read", "stream_copy", "stream_write"]
            } else if label.starts_with("kv_decode") {
                &["attend", "merge"]
            } else {
                &["gemv", "combine"]
            };
            for w in want {
                assert!(
                    names.contains(w),
                    "{arch} {label}: no ptxas report for {w} in {names:?}"
                );
            }
            for k in kernels {
                assert!(
                    k.registers > 0,
                    "{arch} {label} {}: no register count parsed",
                    k.kernel
                );
                assert!(
                    k.threads > 0 && k.ctas_per_sm >= 1,
                    "{arch} {label} {}: no block size or occupancy: {k:?}",
                    k.kernel
                );
                if arch == "sm_90" {
                    assert_eq!(
                        k.spill_store_bytes + k.spill_load_bytes,
                        0,
                        "{arch} {label} {} spills: {k:?}",
                        k.kernel
                    );
                }
            }
        }
    }
}

#[test]
fn ptxas_reports_are_parsed() {
    let log = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'attend' for 'sm_90'\n\
               ptxas info    : Function properties for attend\n    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
               ptxas info    : Used 142 registers, 9216 bytes smem, 400 bytes cmem[0]\n";
    let r = compile::parse_ptxas(log);
    assert_eq!(r.len(), 1);
    let k = &r[0];
    assert_eq!(
        (k.kernel.as_str(), k.registers, k.shared_bytes),
        ("attend", 142, 9216)
    );
    assert_eq!(
        (k.stack_bytes, k.spill_store_bytes, k.spill_load_bytes),
        (16, 8, 12)
    );
}

#[test]
fn an_unknown_dtype_code_does_not_compile() {
    if !nvrtc_or_skip() {
        return;
    }
    let (_, w) = &decodelab::backend::plan::representative()[1]; // a kv_decode variant
    let src = LaunchPlan::of(CudaImpl::Simple, w, 132).source;
    let bad = src.replacen("#define DTYPE ", "#define DTYPE 9\n#define DTYPE_WAS ", 1);
    let err = compile::compile(&bad, "kv_decode", "sm_90")
        .err()
        .expect("DTYPE 9 compiled");
    assert!(err.contains("unknown DTYPE"), "{err}");
    // A sub-byte dtype is refused by its bits, whatever its code.
    let bad = src.replacen(
        "#define ELEM_BITS ",
        "#define ELEM_BITS 4
#define ELEM_BITS_WAS ",
        1,
    );
    let err = compile::compile(&bad, "kv_decode", "sm_90")
        .err()
        .expect("ELEM_BITS 4 compiled");
    assert!(err.contains("sub-byte dtype"), "{err}");
}

#[test]
fn a_compile_error_is_an_error_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let err = compile::compile(
        "extern \"C\" __global__ void broken() { this is not C }",
        "broken",
        "sm_90",
    )
    .err()
    .unwrap();
    assert!(err.contains("broken") && err.contains("error"), "{err}");
}

/// NCCL loads through cudarc's dynamic loading and answers its version (no GPU needed), so
/// the library a cuda split combines with is checked here. Skipped with a printed reason
/// where NCCL is absent, unless DECODELAB_REQUIRE includes nccl.
#[test]
fn nccl_loads_and_reports_its_version() {
    let version = decodelab::backend::cuda::nccl::version();
    if !common::tool_or_skip("nccl", version.clone().map(|_| ())) {
        return;
    }
    let v = version.expect("checked above");
    let parts: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{v}");
    assert!(
        parts[0] == 2 && parts[1] >= 18,
        "NCCL {v} is older than the 2.18 API used"
    );
    // A unique id is what ranks share to form a communicator: made without any GPU.
    let id = cudarc::nccl::result::get_uniqueid().expect("ncclGetUniqueId");
    assert!(id.internal.iter().any(|&c| c != 0), "an all-zero unique id");
}

/// The SASS budget, checked without a GPU: a tuned implementation never touches local memory
/// and loads its streamed tensors (K, V, latent, weights) 128 bits at a time. The simple
/// kernels are the proof that the check can fail: their V and scalar loads are flagged.
#[test]
fn tuned_kernels_keep_the_sass_budget() {
    if !nvrtc_or_skip() || !nvdisasm_or_skip() {
        return;
    }
    let report =
        decodelab::backend::cuda::impls::report("sm_90", true).unwrap_or_else(|e| panic!("{e}"));
    let mut flagged_simple = false;
    for v in &report {
        for k in &v.kernels {
            let s = k
                .sass
                .as_ref()
                .unwrap_or_else(|| panic!("{} {}: no SASS", v.variant, k.kernel));
            assert!(s.instructions > 0, "{} {}: empty", v.variant, k.kernel);
            // Every kernel that streams a tensor has its tagged loads found in the SASS.
            if ["attend", "gemv", "stream_read", "stream_copy"].contains(&k.kernel.as_str()) {
                assert!(
                    s.streamed.total() > 0 && s.hot_loop.is_some(),
                    "{} {} {}: no streamed load found (a `// stream:` tag lost?)",
                    v.variant,
                    v.imp,
                    k.kernel
                );
            }
            let narrow = s.streamed.narrower_than(128);
            if v.tuned {
                assert_eq!(
                    s.local, 0,
                    "{} {} {}: local memory",
                    v.variant, v.imp, k.kernel
                );
                assert_eq!(
                    narrow, 0,
                    "{} {} {}: streamed loads under 128 bits: {:?}",
                    v.variant, v.imp, k.kernel, s.streamed
                );
                // And its hottest streaming loop issues no more than the card can.
                if let Some(hot) = &s.hot_loop {
                    assert!(
                        hot.instr_per_byte <= decodelab::backend::cuda::sass::BUDGET_INSTR_PER_BYTE,
                        "{} {} {}: {:.3} warp-instructions per streamed byte",
                        v.variant,
                        v.imp,
                        k.kernel,
                        hot.instr_per_byte
                    );
                }
            }
            if v.imp == "simple"
                && v.variant == "kv_decode gqa 64/8 d128 bf16"
                && k.kernel == "attend"
            {
                let hot = s.hot_loop.as_ref().expect("a streaming loop");
                assert!(narrow > 0, "V is read with 16-bit loads: {:?}", s.streamed);
                assert!(hot.instr_per_byte > decodelab::backend::cuda::sass::BUDGET_INSTR_PER_BYTE);
                flagged_simple = true;
            }
        }
    }
    assert!(
        flagged_simple,
        "the simple GQA bf16 kernel was not in the report"
    );
    // The ceiling's own loop sits well inside the budget.
    let read = report
        .iter()
        .flat_map(|v| &v.kernels)
        .find(|k| k.kernel == "stream_read")
        .and_then(|k| k.sass.as_ref())
        .and_then(|s| s.hot_loop.as_ref())
        .expect("stream_read's loop");
    assert!(
        read.instr_per_byte < decodelab::backend::cuda::sass::AIM_INSTR_PER_BYTE,
        "{read:?}"
    );
}

/// The tensor-core fragment model (kernels/mma.cuh) compiles to HMMA for sm_80 and sm_90.
#[test]
fn the_tensor_core_fragment_model_compiles_to_hmma() {
    if !nvrtc_or_skip() {
        return;
    }
    let source = compile::mma_check_source();
    for arch in ["sm_80", "sm_90"] {
        let c = compile::compile(&source, "mma_check", arch).unwrap_or_else(|e| panic!("{e}"));
        if !nvdisasm_or_skip() {
            continue;
        }
        let sass = decodelab::backend::cuda::sass::disassemble(&c.cubin).unwrap();
        let k = decodelab::backend::cuda::sass::analyse(&sass, "mma_check", &source);
        assert!(
            k.iter().any(|k| k.tensor_core > 0),
            "{arch}: no HMMA in {k:?}"
        );
    }
}

/// The compute ceilings (kernels/peak.cu) compile, their chains in registers: FFMA and
/// HMMA, no local memory.
#[test]
fn the_compute_ceiling_kernel_compiles_to_register_fma_chains() {
    if !nvrtc_or_skip() {
        return;
    }
    let source = compile::peak_source();
    let c = compile::compile(&source, "peak", "sm_90").unwrap_or_else(|e| panic!("{e}"));
    if !nvdisasm_or_skip() {
        return;
    }
    let sass = decodelab::backend::cuda::sass::disassemble(&c.cubin).unwrap();
    assert!(sass.contains("FFMA"), "no FFMA in peak_fma");
    assert!(sass.contains("HMMA"), "no HMMA in peak_mma");
    assert!(
        !sass.contains("LDL") && !sass.contains("STL"),
        "local memory in peak.cu"
    );
}

/// On a GPU, the fragment model multiplies: what the host shim assumes of mma.sync
/// (tests/it/cuda_host.rs) is what the hardware does, on every device (the check the backend
/// runs before `mma` may run there, and `impl: best` then picks it).
#[test]
fn the_tensor_core_fragment_model_multiplies_on_a_gpu() {
    let Some(b) = common::backend_or_skip("cuda") else {
        return;
    };
    for d in b.devices() {
        let cc = d
            .details
            .iter()
            .find(|(k, _)| k == "compute_capability")
            .map(|(_, v)| v.replace('.', ""))
            .expect("a compute capability");
        let ctx = cudarc::driver::CudaContext::new(d.index).unwrap();
        fragments::run_on(&ctx, &format!("sm_{cc}"))
            .unwrap_or_else(|e| panic!("cuda:{}: {e}", d.index));
    }
    let w = common::gqa(2, 16, 2, 128, 128, vec![37, 300], 16, DType::Bf16);
    assert_eq!(decodelab::backend::best_impl(b.as_ref(), &w), Ok("mma"));
}

/// Every kernel of every cuda implementation's representative variants takes the parameters
/// its launch (backend/cuda/build.rs) names, in that order: what `args::in_order` checks
/// before any launch on a GPU, held here without one.
#[test]
fn every_launch_names_its_kernels_parameters() {
    use decodelab::backend::cuda::args::params_of;
    let launches: &[(&str, &[&str])] = &[
        ("stream_read", &["src", "n_vec", "sum"]),
        ("stream_copy", &["src", "dst", "n_vec"]),
        ("stream_write", &["dst", "n_vec", "seed"]),
        (
            "attend",
            &[
                "q",
                "k",
                "v",
                "page_table",
                "context_lens",
                "partial_acc",
                "partial_ml",
            ],
        ),
        ("merge", &["partial_acc", "partial_ml", "out", "lse"]),
        (
            "gemv",
            &["x", "w", "w_scale", "groups", "entry_weight", "slot_out"],
        ),
        ("combine", &["slot_out", "y"]),
        ("x_frag", &["x", "xf"]),
    ];
    // Where x_frag lays x out first (mma_w4), gemv reads that in x's place.
    let gemv_after_x_frag: &[&str] = &["xf", "w", "w_scale", "groups", "entry_weight", "slot_out"];
    let mut checked = 0;
    let mut laid_out = 0;
    for (label, w) in decodelab::backend::plan::representative() {
        for imp in CudaImpl::ALL.into_iter().filter(|i| i.covers(&w).is_ok()) {
            let source = LaunchPlan::of(imp, &w, 132).source;
            let x_frag = params_of(&source, "x_frag").is_some();
            laid_out += x_frag as usize;
            for (kernel, names) in launches {
                if let Some(params) = params_of(&source, kernel) {
                    let names = if *kernel == "gemv" && x_frag {
                        gemv_after_x_frag
                    } else {
                        names
                    };
                    assert_eq!(params, names, "{label} {}: {kernel}", imp.name());
                    checked += 1;
                }
            }
        }
    }
    // mma_w4, at each of the four 4-bit dtypes.
    assert_eq!(laid_out, 4);
    // stream: 3 kernels; kv_decode: attend and merge; expert_gemv: gemv and combine.
    assert!(checked >= 20, "only {checked} kernels found");
}
