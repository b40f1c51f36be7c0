//! One conformance suite, instantiated for every backend. A backend that is absent is skipped
//! with a printed reason (a failure when DECODELAB_REQUIRE names it).

use crate::common;

use common::*;
use decodelab::backend::{Backend, CacheMode, How, Unit};
use decodelab::workload::dtype::fp8_e4m3_encode;
use decodelab::workload::*;

/// Run a point on a backend with every implementation that covers it, and check each against
/// the oracle on the same (possibly edited) inputs. Warm: `cold_reps` runs the flush.
fn run_point(b: &dyn Backend, w: &Workload, edit: impl Fn(&mut TensorSet)) {
    run_point_in(b, w, edit, CacheMode::Warm);
}

fn run_point_in(b: &dyn Backend, w: &Workload, edit: impl Fn(&mut TensorSet), cache: CacheMode) {
    let mut inputs = w.inputs();
    edit(&mut inputs);
    let reference = w.oracle(&inputs);
    for imp in impls_covering(b, w) {
        run_impl(b, w, (&inputs, &reference), imp, cache);
    }
}

fn run_impl(
    b: &dyn Backend,
    w: &Workload,
    (inputs, reference): (&TensorSet, &Reference),
    imp: &'static str,
    cache: CacheMode,
) {
    let how = How { imp, cache };
    // A warm-up and a timed rep: a kernel that adds into its outputs instead of writing them
    // fails the check after the second run.
    let mut p = b.prepare(0, w, inputs, &how).expect("prepare");
    let times = p.run(1, 1).expect("run");
    assert_eq!(times.len(), 1);
    assert!(
        times.iter().all(|t| t.is_finite() && *t > 0.0),
        "timings {times:?}"
    );
    let outputs = p.read_outputs().expect("read back");
    let check = reference.check(&outputs);
    assert!(
        check.pass,
        "{} on {} {imp}: {:?}\nparams {}",
        w.kernel(),
        b.name(),
        check,
        w.params_json()
    );
    if w.math() == Math::F32 {
        assert!(
            check.rel_l2_err < 1e-5,
            "{imp}: f32 accumulation should land far under 1e-4: {check:?}"
        );
    }
}

fn no_edit(_: &mut TensorSet) {}

/// Overwrite the first stored bytes of an fp8 tensor with fp8's extreme codes.
fn fp8_extremes(name: &'static str) -> impl Fn(&mut TensorSet) {
    move |inputs: &mut TensorSet| {
        let t = inputs.get_mut(name).expect("fp8 tensor");
        let codes = [
            0x7E,
            0xFE,
            0x01,
            0x81,
            0x00,
            0x80,
            0x08,
            0x77,
            fp8_e4m3_encode(-448.0),
        ];
        for (i, b) in t.bytes.iter_mut().enumerate().step_by(7) {
            *b = codes[(i / 7) % codes.len()];
        }
    }
}

mod cases {
    use super::*;

    /// The roofline's compute ceiling: measured on every backend, and checked against its
    /// closed form inside (a wrong chain is an error, not a figure).
    pub fn compute_ceiling_measured_or_said_why(b: &dyn Backend) {
        let p = b
            .compute_ceiling(0, Unit::Cores)
            .unwrap_or_else(|why| panic!("{}: {why}", b.name()));
        assert!(p.gflops.is_finite() && p.gflops > 0.0, "{p:?}");
        assert!(p.unit.contains("FMA chains"), "{}", p.unit);
        // A matrix unit's ceiling, where an implementation computes on one.
        let matrix: Vec<&str> = decodelab::backend::IMPLS
            .iter()
            .filter(|i| i.backend == b.name() && b.compute_unit(i.name) == Unit::Matrix)
            .map(|i| i.name)
            .collect();
        match b.compute_ceiling(0, Unit::Matrix) {
            Ok(m) => {
                assert!(
                    !matrix.is_empty(),
                    "{}: a matrix ceiling nothing uses",
                    b.name()
                );
                assert!(
                    m.gflops.is_finite() && m.gflops > p.gflops,
                    "{m:?} vs {p:?}"
                );
            }
            Err(why) => eprintln!(
                "SKIPPED: {} matrix ceiling ({why}; used by {matrix:?})",
                b.name()
            ),
        }
    }

    pub fn stream_ops_at_odd_sizes(b: &dyn Backend) {
        for op in [StreamOp::Read, StreamOp::Copy, StreamOp::Write] {
            for bytes in [4, 4 * 1001, (1 << 16) + 4, 3 << 20] {
                run_point(b, &stream(op, bytes), no_edit);
            }
        }
    }

    /// Cold reps (the caches flushed before each: lines or a scratch write on cpu, a cleared
    /// buffer on a GPU) leave every output as warm reps do; the other cases run warm.
    pub fn cold_reps(b: &dyn Backend) {
        for w in [
            stream(StreamOp::Copy, 4 * 1001),
            gqa(3, 8, 2, 64, 64, vec![1, 40, 300], 16, DType::Bf16),
            mla(2, 4, 64, 16, vec![70, 1], 16, DType::Bf16),
            experts(8, 3, 5, 256, 40, DType::Fp8E4m3, Routing::Uniform),
        ] {
            run_point_in(b, &w, no_edit, CacheMode::Cold);
        }
    }

    pub fn kv_one_token_and_page_boundaries(b: &dyn Backend) {
        // page 16: 1 token, one short of a page, exactly one page, one over, two pages, two + 1
        let lens = vec![1, 15, 16, 17, 32, 33];
        for dt in DType::WHOLE_BYTE {
            run_point(b, &gqa(6, 8, 2, 64, 64, lens.clone(), 16, dt), no_edit);
        }
    }

    pub fn kv_mixed_lengths_long_context(b: &dyn Backend) {
        // Long enough that backends split the context and merge partials.
        run_point(
            b,
            &gqa(3, 4, 1, 32, 32, vec![2000, 1, 777], 16, DType::Bf16),
            no_edit,
        );
    }

    pub fn kv_odd_head_dims_and_group_sizes(b: &dyn Backend) {
        for (hq, hkv) in [(3, 3), (6, 1), (12, 4)] {
            run_point(
                b,
                &gqa(2, hq, hkv, 67, 45, vec![37, 5], 8, DType::F16),
                no_edit,
            );
        }
        run_point(b, &gqa(1, 2, 1, 1, 1, vec![3], 1, DType::F32), no_edit);
        // Groups wider than a 16-row tile, not a multiple of it, pages of 7 tokens: a tiled
        // kernel's head blocks, padded rows and rows gathered across pages (cpu's amx).
        run_point(
            b,
            &gqa(2, 40, 2, 64, 64, vec![100, 3], 7, DType::Bf16),
            no_edit,
        );
        for dt in [DType::Bf16, DType::Fp8E4m3] {
            run_point(b, &mla(2, 20, 64, 32, vec![70, 1], 16, dt), no_edit);
        }
    }

    /// Groups of 8 heads and of 1 (a tile kernel's full and padded head slots), and of 16
    /// over two KV heads (one block of 16: cpu's amx computes S^T with bf16 K's rows as A
    /// tiles where pages are whole 16-token blocks, else builds K^T), K dims of two to four
    /// 32-dim steps, pages of whole 16-token blocks (cpu's amx loads bf16 K where it lies)
    /// and of 7 (staged; fp8 always staged), partial tiles.
    pub fn kv_tile_groups(b: &dyn Backend) {
        for (hq, hkv, dk, page, dt) in [
            (16, 2, 96, 32, DType::Bf16),
            (32, 2, 64, 16, DType::Bf16),
            (32, 2, 64, 7, DType::Bf16),
            (32, 2, 96, 16, DType::Fp8E4m3),
            (16, 2, 128, 7, DType::Bf16),
            (3, 3, 64, 16, DType::Fp8E4m3),
            (8, 1, 128, 48, DType::Bf16),
        ] {
            let w = gqa(3, hq, hkv, dk, 128, vec![1, 77, 200], page, dt);
            run_point(b, &w, no_edit);
        }
    }

    pub fn kv_mla(b: &dyn Backend) {
        run_point(
            b,
            &mla(3, 16, 512, 64, vec![1, 64, 129], 64, DType::Bf16),
            no_edit,
        );
        // 64 heads (a tile kernel's head blocks two at a time, twice) and 40 (three blocks,
        // the last padded: one at a time).
        for hq in [64, 40] {
            run_point(
                b,
                &mla(2, hq, 128, 64, vec![100, 1], 32, DType::Bf16),
                no_edit,
            );
        }
        run_point(
            b,
            &mla(2, 5, 48, 16, vec![70, 3], 16, DType::Fp8E4m3),
            no_edit,
        );
        // 16 heads of fp8: one tile block (cpu's amx builds K^T from the decoded rows).
        run_point(
            b,
            &mla(2, 16, 64, 32, vec![70, 3], 16, DType::Fp8E4m3),
            no_edit,
        );
    }

    pub fn kv_fp8_extremes(b: &dyn Backend) {
        // Head dims of 32 and of 64 (the tile kernels' shapes: cpu's amx converts fp8 to
        // bf16 by its bits).
        for d in [32, 64] {
            let w = gqa(2, 4, 2, d, d, vec![40, 9], 16, DType::Fp8E4m3);
            run_point(b, &w, fp8_extremes("k_pages"));
            run_point(b, &w, fp8_extremes("v_pages"));
        }
    }

    pub fn expert_every_token_one_expert(b: &dyn Backend) {
        let ids = Routing::Ids(vec![vec![2]; 5]);
        let w = experts(4, 1, 5, 96, 33, DType::Bf16, ids);
        run_point(b, &w, no_edit);
        if let Workload::ExpertGemv(e) = &w {
            assert_eq!(e.touched(), vec![2]);
        }
    }

    pub fn expert_dtypes_and_odd_shapes(b: &dyn Backend) {
        for dt in DType::WHOLE_BYTE {
            run_point(
                b,
                &experts(8, 3, 7, 1001, 37, dt, Routing::Uniform),
                no_edit,
            );
        }
        run_point(
            b,
            &experts(1, 1, 1, 129, 17, DType::F32, Routing::Uniform),
            no_edit,
        ); // dense GEMV
        run_point(
            b,
            &experts(6, 6, 4, 64, 16, DType::F16, Routing::Zipf(1.5)),
            no_edit,
        ); // top_k = experts
        run_point(
            b,
            &experts(32, 4, 9, 256, 8, DType::Bf16, Routing::Zipf(2.0)),
            no_edit,
        );
        // bf16 read 32 values a step: 120 is three whole steps and 24 values, padded to a
        // vector that ends on a 32-value boundary (x is laid out by steps only below 96).
        run_point(
            b,
            &experts(5, 2, 3, 120, 9, DType::Bf16, Routing::Uniform),
            no_edit,
        );
        // 301 output rows: on 2 threads the cpu vector paths take 32 rows a unit (sized by
        // bytes), the last unit 13 rows; f32 and int4 too.
        for dt in [DType::Bf16, DType::F32, DType::Int4G32] {
            let w = experts(6, 2, 5, 160, 301, dt, Routing::Uniform);
            let covered = decodelab::backend::impls_of(b.name(), w.kind())
                .into_iter()
                .any(|i| b.covers(i.name, &w).is_ok());
            if covered {
                run_point(b, &w, no_edit);
            } else {
                eprintln!("skip: {dt} at d_out 301 on {}: not covered", b.name());
            }
        }
    }

    /// math: bf16, judged against the same-rounding reference, at awkward shapes.
    pub fn bf16_math(b: &dyn Backend) {
        for dt in [DType::Bf16, DType::Fp8E4m3] {
            let w = gqa(5, 8, 2, 64, 64, vec![1, 15, 16, 17, 300], 16, dt);
            run_point(b, &with_math(w, Math::Bf16), no_edit);
            let w = experts(8, 3, 7, 1001, 37, dt, Routing::Uniform);
            run_point(b, &with_math(w, Math::Bf16), no_edit);
        }
        let w = mla(2, 16, 512, 64, vec![64, 129], 64, DType::Bf16);
        run_point(b, &with_math(w, Math::Bf16), no_edit);
    }

    /// The 4-bit formats (codes two per byte, a scale per group along d_in; nvfp4's f32 per
    /// expert): several groups a row and one, one token per expert and several; run where an
    /// implementation covers them (the cpu backend must), elsewhere refused by name, never
    /// run unchecked.
    pub fn expert_four_bit(b: &dyn Backend) {
        for dt in DType::FOUR_BIT {
            let g = dt.row_multiple().unwrap();
            for (e, k, t, di, dout) in [
                (8, 3, 7, 2944, 37),
                (4, 4, 1, 128, 5),
                (16, 2, 9, 384, 17),
                (3, 1, 2, 3 * g, 7),
                (5, 2, 1, g, 3),
            ] {
                let w = experts(e, k, t, di, dout, dt, Routing::Uniform);
                let covering = decodelab::backend::impls_of(b.name(), w.kind())
                    .into_iter()
                    .filter(|i| b.covers(i.name, &w).is_ok())
                    .count();
                if covering == 0 {
                    assert_ne!(b.name(), "cpu", "the cpu backend must run {dt}");
                    let why = decodelab::backend::best_impl(b, &w).unwrap_err();
                    assert!(why.contains(dt.name()), "{why}");
                    eprintln!("skip: {dt} on {}: {why}", b.name());
                    break;
                }
                run_point(b, &w, no_edit);
                run_point(b, &with_math(w, Math::Bf16), no_edit);
            }
        }
    }

    /// fp8 with a scale per 128 x 128 block: partial blocks at both edges, rows not whole
    /// 16-byte words (the scalar path), one token per expert and several.
    pub fn expert_fp8_block_scales(b: &dyn Backend) {
        for (e, k, t, di, dout) in [
            (8, 3, 7, 300, 200),
            (4, 2, 5, 384, 129),
            (12, 4, 9, 1024, 130),
            (3, 1, 1, 16, 1),
        ] {
            let w = with_block_scales(experts(e, k, t, di, dout, DType::Fp8E4m3, Routing::Uniform));
            run_point(b, &w, no_edit);
        }
        let w = with_block_scales(experts(8, 3, 7, 1001, 37, DType::Fp8E4m3, Routing::Uniform));
        run_point(b, &with_math(w, Math::Bf16), no_edit);
    }

    pub fn expert_fp8_extremes(b: &dyn Backend) {
        let w = experts(4, 2, 3, 128, 24, DType::Fp8E4m3, Routing::Uniform);
        run_point(b, &w, fp8_extremes("w"));
    }

    /// Tensors over 128 MiB: more than one binding on lavapipe (128 MiB) and on GPUs with a
    /// small binding cap, so the cache and the weights span several bindings.
    pub fn tensors_over_128_mib(b: &dyn Backend) {
        // K and V: 2 x 33000 tokens x 8 heads x 128 x 2 bytes = 135 MB each.
        let w = gqa(2, 8, 8, 128, 128, vec![33000, 32999], 16, DType::F16);
        assert!(w.byte_table()[0].bytes > 128 << 20);
        run_point(b, &w, no_edit);
        // 8 experts x 2048 x 4096 bf16 = 134 MB of weights.
        run_point(
            b,
            &experts(8, 4, 3, 4096, 2048, DType::Bf16, Routing::Uniform),
            no_edit,
        );
    }

    /// A backend's outputs are poisoned before a run: reading them back without running must
    /// fail the check (so "never wrote the output" can never pass).
    pub fn unwritten_outputs_fail(b: &dyn Backend) {
        for w in [
            stream(StreamOp::Copy, 4096),
            gqa(1, 2, 1, 8, 8, vec![5], 4, DType::F32),
            experts(2, 1, 2, 8, 4, DType::F32, Routing::Uniform),
        ] {
            let inputs = w.inputs();
            for imp in impls_covering(b, &w) {
                let how = How {
                    imp,
                    cache: CacheMode::Warm,
                };
                let mut p = b.prepare(0, &w, &inputs, &how).expect("prepare");
                let out = p.read_outputs().expect("read back");
                assert!(
                    !w.oracle(&inputs).check(&out).pass,
                    "{} {imp} passed without running",
                    w.kernel()
                );
            }
        }
    }
}

macro_rules! conformance_suite {
    ($backend:ident => $make:expr; $($case:ident),* $(,)?) => {
        mod $backend {
            use super::*;
            $(
                #[test]
                fn $case() {
                    if let Some(b) = $make {
                        super::cases::$case(&*b);
                    }
                }
            )*
        }
    };
}

/// Every case, on one backend.
macro_rules! every_case {
    ($backend:ident => $make:expr) => {
        conformance_suite!($backend => $make;
            stream_ops_at_odd_sizes,
            cold_reps,
            kv_one_token_and_page_boundaries,
            kv_mixed_lengths_long_context,
            kv_odd_head_dims_and_group_sizes,
            kv_tile_groups,
            kv_mla,
            kv_fp8_extremes,
            expert_every_token_one_expert,
            expert_dtypes_and_odd_shapes,
            expert_fp8_extremes,
            expert_fp8_block_scales,
            expert_four_bit,
            bf16_math,
            unwritten_outputs_fail,
            tensors_over_128_mib,
            compute_ceiling_measured_or_said_why,
        );
    };
}

use decodelab::backend::wgpu::WgpuOptions;

every_case!(cpu => backend_or_skip("cpu"));
// wgpu as it runs by default: subgroup operations where the adapter has them.
every_case!(wgpu => backend_or_skip("wgpu"));
// The plain path: no subgroup operations, workgroup-memory reductions only; and wgpu's own
// runtime checks on (bounded loops, clamped indices), as an untrusted shader would run.
every_case!(wgpu_plain => wgpu_with(WgpuOptions { subgroups: false, max_binding: None, runtime_checks: true }));
every_case!(cuda => backend_or_skip("cuda"));
// Bindings capped at 96 KiB, so every cache and weight tensor of these cases spans several
// bindings (tensors over 128 MiB would need more bindings than an adapter allows: refused).
conformance_suite!(wgpu_small_bindings => wgpu_with(WgpuOptions { subgroups: true, max_binding: Some(96 << 10), runtime_checks: false });
    kv_one_token_and_page_boundaries,
    kv_mixed_lengths_long_context,
    kv_odd_head_dims_and_group_sizes,
    kv_mla,
    kv_fp8_extremes,
    expert_every_token_one_expert,
    expert_dtypes_and_odd_shapes,
    expert_fp8_extremes,
    expert_fp8_block_scales,
    stream_ops_at_odd_sizes,
);

/// The suite runs on every backend the registry knows: a backend added there without an
/// `every_case!` line here fails this test instead of going untested.
#[test]
fn every_registered_backend_has_a_suite() {
    let this = include_str!("conformance.rs");
    for name in decodelab::registry::backend_names() {
        assert!(
            this.contains(&format!("every_case!({name} =>")),
            "tests/it/conformance.rs runs no conformance suite on backend {name}"
        );
    }
}
