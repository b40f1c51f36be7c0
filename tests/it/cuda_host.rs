//! The CUDA kernels run on the host: the source NVRTC would compile, built with g++ against
//! tests/cuda_host/shim.h (threads for a block's threads, barriers for shuffles and
//! __syncthreads, storage types decoded in software), checked against the f64 oracle. Every
//! cuda implementation of expert_gemv at awkward shapes (rows that do not fill a warp or a
//! block, one token, token chunks of 1 to 4, scaled fp8), and kv_decode (GQA and MLA, mixed
//! lengths, one token, the scalar path, the context in many slices and in few). What it proves without a GPU: the
//! indexing, the tails and the reductions. Not the speed, the memory model or the real
//! intrinsics: the conformance suite on a GPU is still the word. Needs g++ (C++20); skipped
//! with a printed reason without it (a failure when DECODELAB_REQUIRE includes gxx).

use crate::common;

use decodelab::backend::cuda::impls::{CudaImpl, LaunchPlan, Shape};
use decodelab::backend::cuda::{compile, fragments};
use decodelab::workload::{DType, Routing, Tensor, TensorSet, Workload};
use std::path::Path;
use std::process::Command;

fn gxx_or_skip() -> bool {
    let ok = Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let found = ok
        .then_some(())
        .ok_or("no g++ to build CUDA kernels on the host".to_string());
    common::tool_or_skip("gxx", found)
}

/// The flags every driver is built with (-Og: each point is a build of its own, and -Og
/// builds faster than -O1 while the drivers run as fast at these sizes).
const GXX_FLAGS: [&str; 6] = [
    "-std=c++20",
    "-Og",
    "-pthread",
    "-w",
    "-fsanitize=alignment",
    "-fno-sanitize-recover=all",
];

/// A precompiled header of the shim and the drivers' library headers, made once a test run
/// (a third of each build's time), in a folder to put first on the include path; None where
/// g++ cannot make one (each build then parses the headers itself).
fn shim_pch() -> Option<&'static Path> {
    static PCH: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    PCH.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_host");
        // Under target/: one folder, remade by each test run (never piling up in /tmp).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shim-pch");
        std::fs::create_dir_all(&dir).ok()?;
        let header = format!(
            "#include \"{}\"\n#include <fstream>\n#include <iterator>\n#include <string>\n",
            here.join("shim.h").display()
        );
        std::fs::write(dir.join("pch.h"), header).ok()?;
        // Made beside, then renamed: a build never reads a half-written one.
        let tmp = format!("pch.h.gch.{}", std::process::id());
        let made = Command::new("g++")
            .args(GXX_FLAGS)
            .args(["-x", "c++-header", "pch.h", "-o", &tmp])
            .current_dir(&dir)
            .status()
            .ok()?
            .success();
        (made && std::fs::rename(dir.join(&tmp), dir.join("pch.h.gch")).is_ok()).then_some(dir)
    })
    .as_deref()
}

/// Build `driver` (tests/cuda_host/) with `dir`'s kernel.cu against the strict shim (and
/// `defines`), with misaligned vector accesses stopped at their line: the executable.
fn build(driver: &str, dir: &Path, defines: &[&str], what: &str) -> std::path::PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_host");
    let exe = dir.join("run");
    let mut gxx = Command::new("g++");
    gxx.args(GXX_FLAGS);
    // The precompiled shim holds for the flags it was made with: no defines.
    if let Some(pch) = shim_pch().filter(|_| defines.is_empty()) {
        gxx.arg("-I").arg(pch).args(["-include", "pch.h"]);
    }
    let o = gxx
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg("-I")
        .arg(&here)
        .arg("-I")
        .arg(dir)
        .arg(here.join(driver))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "g++ {what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    exe
}

/// Build `driver` with `dir`'s kernel.cu, and run it on `dir` with `args`.
fn build_and_run(driver: &str, dir: &Path, args: &[String], what: &str) {
    build_and_run_with(driver, dir, args, what, &[]);
}

fn build_and_run_with(driver: &str, dir: &Path, args: &[String], what: &str, defines: &[&str]) {
    let exe = build(driver, dir, defines, what);
    let o = Command::new(&exe).arg(dir).args(args).output().unwrap();
    assert!(o.status.success(), "{what} on the host: {o:?}");
}

/// Executables one test has built, by driver, defines and kernel source: points whose plans
/// come out the same (two SM counts that give one split) share one build.
#[derive(Default)]
struct Built(std::collections::HashMap<(String, Vec<String>, String), std::path::PathBuf>);

impl Built {
    /// `driver` built with `dir`'s kernel.cu (`source`) and `defines`, or the executable an
    /// earlier point built from the same three.
    fn get(
        &mut self,
        driver: &str,
        dir: &Path,
        defines: &[&str],
        source: &str,
        what: &str,
    ) -> std::path::PathBuf {
        let key = (
            driver.to_string(),
            defines.iter().map(|d| d.to_string()).collect(),
            source.to_string(),
        );
        self.0
            .entry(key)
            .or_insert_with(|| build(driver, dir, defines, what))
            .clone()
    }
}

/// Implementation `imp` of kv_decode `k` on the host in `dir`, planned for `sms` SMs and built
/// with `defines` (or taken from `built`): its outputs.
fn run_kv_on_host(
    k: &decodelab::workload::KvDecode,
    inputs: &TensorSet,
    (imp, sms): (&str, usize),
    (dir, built): (&Path, &mut Built),
    defines: &[&str],
) -> TensorSet {
    std::fs::create_dir_all(dir).unwrap();
    for t in &inputs.0 {
        std::fs::write(dir.join(format!("{}.bin", t.name)), &t.bytes[..]).unwrap();
    }
    let imp_ = CudaImpl::from_name(imp).expect("a cuda implementation");
    let plan = LaunchPlan::of(imp_, &Workload::KvDecode(k.clone()), sms);
    std::fs::write(dir.join("kernel.cu"), &plan.source).unwrap();
    let exe = built.get("kv_driver.cpp", dir, defines, &plan.source, imp);
    let o = Command::new(&exe).arg(dir).output().unwrap();
    assert!(o.status.success(), "{imp} on the host: {o:?}");
    TensorSet(k.outputs().iter().map(|s| read_output(dir, s)).collect())
}

/// `name`.bin of `dir` as an f32 output of `spec`'s shape.
fn read_output(dir: &Path, spec: &decodelab::workload::OutputSpec) -> Tensor {
    let bytes = std::fs::read(dir.join(format!("{}.bin", spec.name))).unwrap();
    let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
    Tensor::from_f32(spec.name, spec.shape.clone(), &v)
}

/// Run implementation `imp` of expert_gemv `w` on the host in `dir`: its outputs.
fn run_on_host(w: &Workload, inputs: &TensorSet, imp: &str, dir: &Path) -> TensorSet {
    let Workload::ExpertGemv(e) = w else {
        panic!("an expert_gemv point")
    };
    std::fs::create_dir_all(dir).unwrap();
    let (groups, weights) = e.grouped(inputs);
    let touched = e.touched().len();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    write("x.bin", &inputs.expect("x").bytes);
    write("w.bin", &inputs.expect("w").bytes);
    write(
        "w_scale.bin",
        &decodelab::backend::plan::expert_scale_bytes(e, inputs),
    );
    write("groups.bin", bytemuck::cast_slice(&groups));
    write("entry_weight.bin", bytemuck::cast_slice(&weights));
    let plan = LaunchPlan::of(CudaImpl::from_name(imp).unwrap(), w, 132);
    write("kernel.cu", plan.source.as_bytes());
    let Shape::Expert(rows) = plan.shape else {
        unreachable!("an expert_gemv plan")
    };
    let exe = build("expert_driver.cpp", dir, &[], imp);
    let blocks = e.d_out.div_ceil(rows.rows);
    let o = Command::new(&exe)
        .arg(dir)
        .args([blocks.to_string(), touched.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{imp} on the host: {o:?}");
    let y = std::fs::read(dir.join("y.bin")).unwrap();
    let y: Vec<f32> = bytemuck::pod_collect_to_vec(&y);
    TensorSet(vec![Tensor::from_f32("y", vec![e.batch, e.d_out], &y)])
}

#[test]
fn every_cuda_expert_gemv_matches_the_oracle_on_the_host() {
    if !gxx_or_skip() {
        return;
    }
    let shapes = [
        // One token: rows 68 = 4 warps x 4 rows x 4 blocks + 4.
        common::experts(10, 3, 1, 96, 68, DType::Bf16, Routing::Uniform),
        // 7 tokens over 10 experts: chunks of 1 to 4 tokens; scaled fp8.
        common::experts(10, 3, 7, 128, 37, DType::Fp8E4m3, Routing::Uniform),
        // Every token on one expert: one chunk of 4, then 1.
        common::experts(4, 1, 5, 100, 33, DType::F32, Routing::Ids(vec![vec![2]; 5])),
        common::experts(6, 2, 3, 64, 20, DType::F16, Routing::Uniform),
        // fp8 with 128 x 128 block scales: 3 column blocks (the last partial), 2 row blocks.
        common::with_block_scales(common::experts(
            8,
            3,
            7,
            272,
            130,
            DType::Fp8E4m3,
            Routing::Uniform,
        )),
        // A row of 1001 bf16 is not whole 16-byte vectors: simple only.
        common::experts(5, 2, 2, 1001, 9, DType::Bf16, Routing::Uniform),
        // Nor one of 300 fp8 with block scales (the scalar path's block lookup).
        common::with_block_scales(common::experts(
            4,
            2,
            3,
            300,
            20,
            DType::Fp8E4m3,
            Routing::Uniform,
        )),
        // The 4-bit formats (simple only: warp_rows decodes whole bytes): a scale per 32
        // (one a vector), per 128 (one per 4 vectors), mxfp4's E8M0, and nvfp4's two scales
        // a vector with its f32 per expert, and rows that are not whole vectors.
        common::experts(10, 3, 7, 128, 37, DType::Int4G32, Routing::Uniform),
        common::experts(6, 2, 3, 256, 20, DType::Int4G128, Routing::Uniform),
        common::experts(10, 3, 1, 96, 68, DType::Mxfp4, Routing::Uniform),
        common::experts(8, 3, 7, 160, 37, DType::Nvfp4, Routing::Uniform),
        common::experts(5, 2, 2, 48, 9, DType::Nvfp4, Routing::Uniform),
        // mma_w4's edges: 11 tokens on one expert (a chunk of 8, then 3), rows not a whole
        // block of 64 (the last recomputed, not stored), one of its 4 warps idle (d_in 384 is
        // 3 blocks of 128); and math: bf16 (x in one half, no lo).
        common::experts(
            3,
            1,
            11,
            384,
            70,
            DType::Int4G128,
            Routing::Ids(vec![vec![1]; 11]),
        ),
        common::with_math(
            common::experts(9, 4, 5, 640, 100, DType::Int4G32, Routing::Uniform),
            decodelab::workload::Math::Bf16,
        ),
        // mma_w4's E2M1: mxfp4 (a run's sums times its E8M0) with an idle warp and ragged rows;
        // nvfp4 (its E4M3 scales folded into the weights, 16 values a group) over 11 tokens;
        // both at math: bf16.
        common::experts(7, 2, 9, 384, 70, DType::Mxfp4, Routing::Uniform),
        common::experts(
            6,
            2,
            11,
            256,
            37,
            DType::Nvfp4,
            Routing::Ids(vec![vec![4, 1]; 11]),
        ),
        common::with_math(
            common::experts(5, 3, 4, 640, 65, DType::Mxfp4, Routing::Uniform),
            decodelab::workload::Math::Bf16,
        ),
        common::with_math(
            common::experts(4, 2, 6, 128, 80, DType::Nvfp4, Routing::Uniform),
            decodelab::workload::Math::Bf16,
        ),
    ];
    let base = common::tempdir("cuda-host-expert");
    let mut ran = Vec::new();
    for (i, w) in shapes.iter().enumerate() {
        let inputs = w.inputs();
        let reference = w.oracle(&inputs);
        for imp in decodelab::backend::impls_of("cuda", w.kind()) {
            if decodelab::backend::cuda::covers(imp.name, w).is_err() {
                continue;
            }
            let out = run_on_host(
                w,
                &inputs,
                imp.name,
                &base.join(format!("{i}-{}", imp.name)),
            );
            let check = reference.check(&out);
            assert!(
                check.pass,
                "{} on {}: {check:?}",
                imp.name,
                decodelab::report::params_label(w.kernel(), &w.params_json())
            );
            if imp.name == "mma_w4" && w.math() == decodelab::workload::Math::F32 {
                // x in two bf16 halves keeps f32-grade sums.
                assert!(check.rel_l2_err < 1e-5, "mma_w4 at math: f32: {check:?}");
            }
            ran.push((i, imp.name));
        }
    }
    // Both implementations ran, and warp_rows declined only the unaligned rows and the
    // 4-bit points (the last eleven).
    assert_eq!(ran.iter().filter(|r| r.1 == "simple").count(), shapes.len());
    assert_eq!(
        ran.iter().filter(|r| r.1 == "warp_rows").count(),
        shapes.len() - 13
    );
    // mma_w4 took the 4-bit points whose d_in is whole 128-value blocks, and only them.
    let w4: Vec<usize> = ran
        .iter()
        .filter(|r| r.1 == "mma_w4")
        .map(|r| r.0)
        .collect();
    assert_eq!(w4, [7, 8, 12, 13, 14, 15, 16, 17]);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn cuda_kv_decode_matches_the_oracle_on_the_host() {
    if !gxx_or_skip() {
        return;
    }
    let shapes = [
        // Mixed lengths over page boundaries, one token, an empty-looking slice.
        common::gqa(3, 8, 2, 64, 64, vec![1, 37, 300], 16, DType::Bf16),
        // A group of 8, d128, pages of 7 tokens, a length that ends mid-tile.
        common::gqa(2, 16, 2, 128, 128, vec![203, 9], 7, DType::Bf16),
        // A group of 3 (rows of the tensor-core tile left empty), d96.
        common::gqa(2, 6, 2, 96, 96, vec![50, 130], 16, DType::Bf16),
        // fp8 K and V, converted to f16 as they load: f16 tensor cores, d64 and d128.
        common::gqa(3, 8, 2, 64, 64, vec![1, 37, 300], 16, DType::Fp8E4m3),
        common::gqa(2, 16, 2, 128, 128, vec![203, 9], 7, DType::Fp8E4m3),
        // math: bf16 on the GQA kernel (its sums stay f32-grade, inside the bf16 bound).
        common::with_math(
            common::gqa(2, 16, 2, 128, 128, vec![203, 9], 7, DType::Bf16),
            decodelab::workload::Math::Bf16,
        ),
        // Groups over 8: 16 in two blocks of 8 side by side; 12 (fp8) in blocks of 6; MHA.
        common::gqa(2, 32, 2, 128, 128, vec![77, 300], 16, DType::Bf16),
        common::gqa(2, 24, 2, 64, 64, vec![129, 1], 8, DType::Fp8E4m3),
        common::gqa(2, 3, 3, 64, 64, vec![33, 40], 16, DType::Bf16),
        // A head dim that is not whole 16-byte vectors (the scalar path), fp8 with its scales.
        common::gqa(2, 6, 3, 67, 67, vec![129, 5], 8, DType::Fp8E4m3),
        common::mla(2, 4, 64, 16, vec![70, 1], 32, DType::F16),
        // MLA on tensor cores: 5 heads (rows of the tile left empty), one token, tile tails.
        common::mla(2, 5, 192, 64, vec![1, 150], 16, DType::Bf16),
        // DeepSeek's latent (512 + 64), two blocks of 8 heads, lengths around a page of 64.
        common::mla(3, 16, 512, 64, vec![33, 64, 17], 64, DType::Bf16),
        // Pages of 7 tokens, so tiles and pages do not line up.
        common::mla(1, 8, 128, 64, vec![300], 7, DType::Bf16),
        // An fp8 latent, converted to f16 per tile: f16 tensor cores, hi/lo in f16.
        common::mla(2, 8, 128, 64, vec![45, 130], 16, DType::Fp8E4m3),
        // math: bf16, a head per row of the tile: 16 heads per block; 12 (rows left empty).
        common::with_math(
            common::mla(3, 16, 512, 64, vec![33, 64, 17], 64, DType::Bf16),
            decodelab::workload::Math::Bf16,
        ),
        common::with_math(
            common::mla(2, 12, 192, 64, vec![1, 150], 16, DType::Bf16),
            decodelab::workload::Math::Bf16,
        ),
        common::with_math(
            common::mla(1, 16, 512, 64, vec![77], 64, DType::Fp8E4m3),
            decodelab::workload::Math::Bf16,
        ),
    ];
    let base = common::tempdir("cuda-host-kv");
    let (mut ran, mut built) = (Vec::new(), Built::default());
    for (i, w) in shapes.iter().enumerate() {
        let Workload::KvDecode(k) = w else {
            unreachable!()
        };
        let inputs = w.inputs();
        let reference = w.oracle(&inputs);
        for imp in decodelab::backend::impls_of("cuda", w.kind()) {
            if decodelab::backend::cuda::covers(imp.name, w).is_err() {
                continue;
            }
            // Many SMs: the context cut into slices merged by `merge`; two SMs: few slices.
            for sms in [132, 2] {
                let dir = base.join(format!("{i}-{}-{sms}", imp.name));
                let out = run_kv_on_host(k, &inputs, (imp.name, sms), (&dir, &mut built), &[]);
                let check = reference.check(&out);
                assert!(
                    check.pass,
                    "{} sms {sms}, {}: {check:?}",
                    imp.name,
                    decodelab::report::params_label(w.kernel(), &w.params_json())
                );
            }
            ran.push(imp.name);
        }
    }
    // The tensor-core kernels took the nine bf16 and fp8 GQA shapes of a head dim they cover
    // and the seven MLA ones.
    assert_eq!(ran.iter().filter(|n| **n == "mma").count(), 16, "{ran:?}");
    // mma_wide took the MLA shapes whose values are a multiple of 128 dims.
    assert_eq!(
        ran.iter().filter(|n| **n == "mma_wide").count(),
        5,
        "{ran:?}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn cuda_stream_matches_the_oracle_on_the_host() {
    if !gxx_or_skip() {
        return;
    }
    use decodelab::workload::StreamOp;
    let base = common::tempdir("cuda-host-st");
    // 1000 bytes: a last vector of 8 bytes; 100 KiB over 3 blocks: the grid-stride tail.
    for (i, (op, bytes)) in [StreamOp::Read, StreamOp::Copy, StreamOp::Write]
        .into_iter()
        .flat_map(|op| [(op, 1000u64), (op, 100 << 10)])
        .enumerate()
    {
        let w = common::stream(op, bytes);
        let Workload::Stream(s) = &w else {
            unreachable!()
        };
        let inputs = w.inputs();
        let dir = base.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let src = inputs.get("src").map_or(&[][..], |t| &t.bytes[..]);
        std::fs::write(dir.join("src.bin"), src).unwrap();
        std::fs::write(dir.join("kernel.cu"), compile::stream_source()).unwrap();
        let n_vec = bytes.div_ceil(16);
        let name = format!("{op:?}").to_lowercase();
        let args = [
            name.clone(),
            "3".into(),
            n_vec.to_string(),
            s.pattern_seed().to_string(),
        ];
        build_and_run("stream_driver.cpp", &dir, &args, &name);
        let spec = &w.outputs()[0];
        let mut got = std::fs::read(dir.join(format!("{}.bin", spec.name))).unwrap();
        got.truncate(spec.shape[0] * 4);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&got);
        let out = TensorSet(vec![Tensor::from_u32(
            spec.name,
            spec.shape.clone(),
            &words,
        )]);
        let check = w.oracle(&inputs).check(&out);
        assert!(check.pass, "stream {name} {bytes} B: {check:?}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn the_tensor_core_fragment_model_multiplies_on_the_host() {
    if !gxx_or_skip() {
        return;
    }
    let dir = common::tempdir("cuda-host-mma");
    let o = fragments::operands();
    for (name, v) in [("a", &o.a), ("b", &o.b), ("a16", &o.a16), ("b16", &o.b16)] {
        std::fs::write(dir.join(format!("{name}.bin")), bytemuck::cast_slice(v)).unwrap();
    }
    std::fs::write(dir.join("kernel.cu"), compile::mma_check_source()).unwrap();
    build_and_run("mma_driver.cpp", &dir, &[], "mma_check");
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("d.bin")).unwrap());
    // The same check the cuda backend runs on each device before `mma` runs there.
    fragments::check(&got, &o.product).unwrap_or_else(|e| panic!("{e}"));
    // A model of ldmatrix .x4 .trans that hands back matrices 0 and 1 where 2 and 3 belong
    // fails it: the check sees all four matrices (it once compared only the first two).
    build_and_run_with(
        "mma_driver.cpp",
        &dir,
        &[],
        "mma_check",
        &["DECODELAB_SHIM_WRONG_X4_TRANS"],
    );
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("d.bin")).unwrap());
    let e = fragments::check(&got, &o.product).unwrap_err();
    assert!(
        e.contains("ldmatrix.trans of a 16x16 B, matrices 2-3"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The compute ceilings' kernels on the host, CUDA cores and tensor cores: every thread's
/// chains end where the closed form says (the check the backend runs on a GPU).
#[test]
fn the_compute_ceiling_kernel_sums_to_its_closed_form_on_the_host() {
    if !gxx_or_skip() {
        return;
    }
    let dir = common::tempdir("cuda-host-peak");
    std::fs::write(dir.join("kernel.cu"), compile::peak_source()).unwrap();
    build_and_run("peak_driver.cpp", &dir, &[], "peak_fma");
    let out: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("out.bin")).unwrap());
    assert_eq!(out.len(), 3 * 64);
    let want = decodelab::backend::cuda::peak::expected(100);
    assert!(out.iter().all(|&x| x == want), "{:?} vs {want}", &out[..4]);
    // The tensor cores' chains, through the shim's mma model.
    let mma: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("mma.bin")).unwrap());
    assert_eq!(mma.len(), 2 * 64);
    let want = decodelab::backend::cuda::peak::expected_mma(10);
    assert!(mma.iter().all(|&x| x == want), "{:?} vs {want}", &mma[..4]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Between barriers the strict shim runs one block's threads forward and the next block's
/// backward, so a read of another thread's shared-memory write that no barrier orders sees
/// the poison in each block; with the barrier every value arrives.
#[test]
fn a_missing_barrier_is_caught_on_the_strict_shim() {
    if !gxx_or_skip() {
        return;
    }
    let dir = common::tempdir("cuda-host-race");
    for barrier in ["1", "0"] {
        let define = format!("BARRIER={barrier}");
        build_and_run_with("race_driver.cpp", &dir, &[], "race", &[&define]);
        let got: Vec<f32> =
            bytemuck::pod_collect_to_vec(&std::fs::read(dir.join("out.bin")).unwrap());
        // The threads of each block that read something other than their neighbour's value.
        let missed: Vec<Vec<usize>> = got
            .chunks_exact(64)
            .map(|block| {
                (0..64)
                    .filter(|&t| block[t] != ((t + 1) % 64) as f32)
                    .collect()
            })
            .collect();
        if barrier == "1" {
            assert!(
                missed.iter().all(|m| m.is_empty()),
                "with the barrier: {missed:?}"
            );
        } else {
            // Each block misses some, and not the same ones: both orders ran.
            assert!(missed.iter().all(|m| !m.is_empty()), "without: {missed:?}");
            assert_ne!(missed[0], missed[1], "one order only: {missed:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The strict shim catches what the lenient one let through: an MLA kernel that waits for
/// one cp.async group too few reads a tile that has not landed (NaN bytes), and fails the
/// oracle; the same kernel as written passes.
#[test]
fn a_cp_async_wait_one_group_short_fails_on_the_strict_shim() {
    if !gxx_or_skip() {
        return;
    }
    let w = common::mla(2, 8, 128, 64, vec![45, 130], 16, DType::Bf16);
    let Workload::KvDecode(k) = &w else {
        unreachable!()
    };
    let inputs = w.inputs();
    let reference = w.oracle(&inputs);
    let dir = common::tempdir("cuda-host-wait");
    for imp in ["mma", "mma_wide"] {
        for (skew, pass) in [("0", true), ("1", false)] {
            let define = format!("DECODELAB_SHIM_WAIT_SKEW={skew}");
            let out = run_kv_on_host(
                k,
                &inputs,
                (imp, 2),
                (&dir, &mut Built::default()),
                &[&define],
            );
            let check = reference.check(&out);
            assert_eq!(
                check.pass, pass,
                "{imp}, waits {skew} group(s) short: {check:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A sequence split's merge on the device (kernels/kv_merge_shards.cu), on the host: shards
/// computed by the cpu backend, merged by the kernel as the first device would after NCCL,
/// against the parent's oracle and the host merge. Sequences held by one shard (a copy),
/// by two and by three; GQA and MLA.
#[test]
fn the_sequence_split_merges_on_the_device() {
    use decodelab::backend::{Backend, CacheMode, How};
    use decodelab::split::{SplitKind, compare_outputs, plan};
    if !gxx_or_skip() {
        return;
    }
    let cpu = decodelab::backend::cpu::CpuBackend::new();
    let base = common::tempdir("cuda-host-mg");
    for (i, w) in [
        common::gqa(4, 8, 2, 64, 64, vec![1, 17, 300, 40], 16, DType::Bf16),
        common::mla(2, 5, 128, 64, vec![130, 3], 8, DType::Bf16),
    ]
    .iter()
    .enumerate()
    {
        let Workload::KvDecode(k) = w else {
            unreachable!()
        };
        let inputs = w.inputs();
        let p = plan(w, &inputs, SplitKind::Sequence, 3).unwrap();
        let outs: Vec<TensorSet> = p
            .shards
            .iter()
            .map(|s| {
                let mut run = cpu
                    .prepare(0, &s.workload, &s.inputs, &How::simple(CacheMode::Warm))
                    .unwrap();
                run.run(0, 1).unwrap();
                run.read_outputs().unwrap()
            })
            .collect();
        let table = p.sequence_table().expect("a sequence split's table");
        assert_eq!(table.part_start.len(), k.batch + 1);
        let dir = base.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        for (s, o) in outs.iter().enumerate() {
            for name in ["out", "lse"] {
                std::fs::write(
                    dir.join(format!("{name}{s}.bin")),
                    &o.expect(name).bytes[..],
                )
                .unwrap();
            }
        }
        std::fs::write(
            dir.join("part_start.bin"),
            bytemuck::cast_slice(&table.part_start),
        )
        .unwrap();
        let flat: Vec<i32> = table.parts.iter().flatten().copied().collect();
        std::fs::write(dir.join("parts.bin"), bytemuck::cast_slice(&flat)).unwrap();
        let source = LaunchPlan::of(CudaImpl::Simple, w, 132).source;
        std::fs::write(dir.join("kernel.cu"), source).unwrap();
        let shards = outs.len().to_string();
        build_and_run("merge_driver.cpp", &dir, &[shards], "merge_shards");
        let merged = TensorSet(w.outputs().iter().map(|s| read_output(&dir, s)).collect());
        let check = w.oracle(&inputs).check(&merged);
        assert!(check.pass, "{i}: {check:?}");
        let on_host = p.combine(w, &outs).unwrap();
        let vs = compare_outputs(1e-6, &merged, &on_host);
        assert!(vs.pass, "{i}: device merge vs host merge: {vs:?}");
    }
    let _ = std::fs::remove_dir_all(&base);
}
