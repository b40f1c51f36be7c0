//! Multi-device splits, on every backend with virtual devices: the combined outputs of a
//! split point equal the one-device outputs (bit for bit for heads, tensor, experts and data;
//! within 1e-6 relative L2 for sequence, whose merge reorders sums) and pass the oracle, at
//! awkward shapes: counts not divisible by the device count, one-token sequences, sequences
//! shorter than the device count, devices with no work.

use crate::common;

use common::*;
use decodelab::backend::{Backend, CacheMode, How};
use decodelab::split::run::{DeviceSet, Settings, run_split};
use decodelab::split::{self, SplitKind};
use decodelab::workload::*;

/// Split `w` over `n` virtual devices on `b`, with every implementation that covers it, and
/// check everything a split promises.
fn split_point(b: &dyn Backend, w: &Workload, kind: SplitKind, n: usize) -> split::Plan {
    let inputs = w.inputs();
    let plan = split::plan(w, &inputs, kind, n).expect("plan");
    for imp in impls_covering(b, w) {
        split_with(b, w, &inputs, &plan, (kind, n), imp);
    }
    plan
}

fn split_with(
    b: &dyn Backend,
    w: &Workload,
    inputs: &TensorSet,
    plan: &split::Plan,
    (kind, n): (SplitKind, usize),
    imp: &'static str,
) {
    let devices = DeviceSet {
        physical: vec![0; n],
        virtual_devices: true,
        ranks: false,
    };
    let settings = Settings {
        warmup: 1,
        reps: 2,
        cache: CacheMode::Warm,
        imp,
    };
    let out = run_split(b, &devices, w, inputs, plan, &settings).expect("split run");
    let what = format!(
        "{} split {} over {n} on {} {imp}: {}",
        w.kernel(),
        kind.name(),
        b.name(),
        w.params_json()
    );
    let check = w.oracle(inputs).check(&out.outputs);
    assert!(check.pass, "{what}: oracle {check:?}");
    let vs = out.multi.vs_one_device.as_ref().expect("one-device run");
    assert!(vs.pass, "{what}: against one device {vs:?}");
    if kind != SplitKind::Sequence {
        assert!(
            vs.identical,
            "{what}: not bit-identical to one device {vs:?}"
        );
    }
    // Every shard was also checked on its own, and the figures are filled in (bf16 operands
    // leave about 1e-3, judged in full by the point's check above).
    let bound = if w.math() == Math::F32 { 1e-5 } else { 1e-2 };
    for s in &out.multi.shards {
        assert!(
            s.rel_l2_err.is_some_and(|e| e < bound),
            "{what}: shard {s:?}"
        );
        assert!(s.time_s.median > 0.0 && s.bytes > 0, "{what}: shard {s:?}");
    }
    assert_eq!(out.multi.shards.len(), plan.shards.len());
    assert_eq!(out.multi.combine.bytes, plan.combine_bytes());
    // cuda merges a sequence split on the device that gathered it; the rest on the host.
    let on = &out.multi.combine.merge_on;
    match (b.name(), kind) {
        ("cuda", SplitKind::Sequence) => assert!(on.starts_with("merge_shards on cuda:"), "{on}"),
        _ => assert_eq!(on, "host", "{what}"),
    }
    assert!(out.end_to_end.median > 0.0);
}

mod cases {
    use super::*;

    pub fn heads_gqa_uneven(b: &dyn Backend) {
        // 5 KV heads over 2, 3 and 5 devices; one-token, page-boundary and long sequences.
        let lens = vec![1, 16, 17, 333];
        for dt in [DType::Bf16, DType::Fp8E4m3, DType::F32] {
            for n in [2, 3, 5] {
                let plan = split_point(
                    b,
                    &gqa(4, 15, 5, 64, 64, lens.clone(), 16, dt),
                    SplitKind::Heads,
                    n,
                );
                assert_eq!(plan.shards.len(), n);
            }
        }
    }

    /// math: bf16 splits heads and experts as exactly as f32 (a shard rounds the same
    /// operands as the whole); the sequence split within its bf16 tolerance.
    pub fn bf16_math_heads_and_experts(b: &dyn Backend) {
        let w = gqa(3, 12, 4, 64, 64, vec![1, 40, 300], 16, DType::Bf16);
        split_point(b, &with_math(w.clone(), Math::Bf16), SplitKind::Heads, 3);
        split_point(b, &with_math(w, Math::Bf16), SplitKind::Sequence, 3);
        let w = experts(10, 3, 7, 200, 45, DType::Fp8E4m3, Routing::Uniform);
        split_point(b, &with_math(w, Math::Bf16), SplitKind::Experts, 3);
    }

    pub fn heads_mla_query_heads(b: &dyn Backend) {
        // 7 query heads over 3 devices; each holds the whole latent cache.
        split_point(
            b,
            &mla(2, 7, 64, 16, vec![5, 130], 64, DType::Bf16),
            SplitKind::Heads,
            3,
        );
    }

    pub fn sequence_short_and_long(b: &dyn Backend) {
        // Sequences of 1 token and of fewer pages than devices are held by fewer shards.
        let lens = vec![1, 15, 16, 17, 70, 1000];
        for n in [2, 4, 8] {
            split_point(
                b,
                &gqa(6, 8, 2, 64, 64, lens.clone(), 16, DType::Bf16),
                SplitKind::Sequence,
                n,
            );
        }
        split_point(
            b,
            &mla(3, 4, 64, 16, vec![1, 100, 200], 32, DType::Fp8E4m3),
            SplitKind::Sequence,
            3,
        );
    }

    pub fn experts_uneven_and_idle(b: &dyn Backend) {
        for dt in [DType::Bf16, DType::Fp8E4m3] {
            for n in [3, 4] {
                split_point(
                    b,
                    &experts(10, 3, 7, 200, 45, dt, Routing::Uniform),
                    SplitKind::Experts,
                    n,
                );
            }
        }
        // Every token routed to experts 0..3: with 4 owners of 2 or 3 experts, devices 2 and
        // 3 have no work and no shard.
        let ids = Routing::Ids(vec![vec![0, 3], vec![1, 2], vec![3, 0]]);
        let plan = split_point(
            b,
            &experts(10, 2, 3, 64, 33, DType::Bf16, ids),
            SplitKind::Experts,
            4,
        );
        assert_eq!(plan.shards.len(), 2, "only the owners of experts 0..3 work");
    }

    pub fn tensor_uneven_rows(b: &dyn Backend) {
        for dt in [DType::F16, DType::Fp8E4m3] {
            split_point(
                b,
                &experts(6, 2, 5, 96, 45, dt, Routing::Zipf(1.2)),
                SplitKind::Tensor,
                4,
            );
        }
    }

    /// The 4-bit formats: experts keep their codes, group scales and (nvfp4) their f32; a
    /// tensor cut between rows keeps every group whole.
    pub fn four_bit(b: &dyn Backend) {
        for dt in DType::FOUR_BIT {
            let w = experts(10, 3, 7, 256, 45, dt, Routing::Uniform);
            split_point(b, &w, SplitKind::Experts, 3);
            split_point(b, &w, SplitKind::Tensor, 4);
        }
    }

    /// Block scales: the tensor cut falls on 128-row block edges (300 rows: 256 + 44 over 2,
    /// 128 + 128 + 44 over 3), and experts keep their blocks whole.
    pub fn block_scales(b: &dyn Backend) {
        let w = with_block_scales(experts(6, 2, 5, 200, 300, DType::Fp8E4m3, Routing::Uniform));
        for n in [2, 3] {
            let plan = split_point(b, &w, SplitKind::Tensor, n);
            let rows: Vec<usize> = plan
                .shards
                .iter()
                .map(|s| match &s.workload {
                    Workload::ExpertGemv(e) => e.d_out,
                    _ => unreachable!(),
                })
                .collect();
            assert_eq!(
                rows,
                if n == 2 {
                    vec![256, 44]
                } else {
                    vec![128, 128, 44]
                }
            );
        }
        split_point(b, &w, SplitKind::Experts, 4);
        let why = decodelab::split::validate(&w, SplitKind::Tensor, 4).unwrap_err();
        assert!(why.contains("128-row scale blocks"), "{why}");
    }

    pub fn data_stream(b: &dyn Backend) {
        for op in [StreamOp::Read, StreamOp::Copy] {
            split_point(b, &stream(op, 4 * 1001), SplitKind::Data, 3);
        }
    }
}

macro_rules! split_suite {
    ($backend:ident => $make:expr) => {
        mod $backend {
            use super::*;
            split_suite!(@cases $make; heads_gqa_uneven, bf16_math_heads_and_experts, heads_mla_query_heads, four_bit,
                sequence_short_and_long, experts_uneven_and_idle, tensor_uneven_rows, block_scales, data_stream);
        }
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                if let Some(b) = $make {
                    super::cases::$case(&*b);
                }
            }
        )*
    };
}

split_suite!(cpu => backend_or_skip("cpu"));
split_suite!(wgpu => backend_or_skip("wgpu"));
// The plain path (no subgroup operations) reduces in another order: still exact per backend.
// It also keeps wgpu's runtime checks on, as in tests/it/conformance.rs.
split_suite!(wgpu_plain => wgpu_with(decodelab::backend::wgpu::WgpuOptions { subgroups: false, max_binding: None, runtime_checks: true }));
split_suite!(cuda => backend_or_skip("cuda"));

/// The merge and the gathers on their own, without a backend: the shards' f64 oracles,
/// rounded to f32 and combined, land on the point's oracle.
#[test]
fn combines_reassemble_the_point_from_shard_oracles() {
    let points = [
        (
            gqa(5, 6, 3, 32, 48, vec![1, 16, 31, 64, 200], 16, DType::Bf16),
            SplitKind::Heads,
        ),
        (
            gqa(5, 6, 3, 32, 48, vec![1, 16, 31, 64, 200], 16, DType::Bf16),
            SplitKind::Sequence,
        ),
        (
            experts(9, 3, 6, 40, 21, DType::F32, Routing::Uniform),
            SplitKind::Experts,
        ),
        (
            experts(9, 3, 6, 40, 21, DType::F32, Routing::Uniform),
            SplitKind::Tensor,
        ),
        (stream(StreamOp::Read, 4000), SplitKind::Data),
    ];
    for (w, kind) in points {
        let inputs = w.inputs();
        let plan = split::plan(&w, &inputs, kind, 3).expect("plan");
        let outs: Vec<TensorSet> = plan
            .shards
            .iter()
            .map(|s| as_outputs(&s.workload, &s.workload.oracle(&s.inputs)))
            .collect();
        let combined = plan.combine(&w, &outs).expect("combine");
        let check = w.oracle(&inputs).check(&combined);
        assert!(
            check.pass && check.rel_l2_err < 1e-6,
            "{} {}: {check:?}",
            w.kernel(),
            kind.name()
        );
    }
}

/// A reference as the outputs a backend would return (f32 / u32).
fn as_outputs(w: &Workload, r: &Reference) -> TensorSet {
    TensorSet(
        w.outputs()
            .iter()
            .map(|spec| {
                let v = r.0.iter().find(|o| o.name == spec.name).unwrap().values();
                match spec.elem {
                    Elem::U32 => {
                        let u: Vec<u32> = v.iter().map(|&x| x as u32).collect();
                        Tensor::from_u32(spec.name, spec.shape.clone(), &u)
                    }
                    _ => {
                        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                        Tensor::from_f32(spec.name, spec.shape.clone(), &f)
                    }
                }
            })
            .collect(),
    )
}

#[test]
fn a_changed_element_is_not_identical() {
    let w = gqa(2, 4, 2, 16, 16, vec![20, 3], 16, DType::F32);
    let inputs = w.inputs();
    let one = as_outputs(&w, &w.oracle(&inputs));
    let mut other = one.clone();
    let t = other.get_mut("out").unwrap();
    t.bytes[4] ^= 1; // the last bit of one element (one ulp)
    let vs = split::compare_outputs(
        SplitKind::Heads.one_device_tolerance(Math::F32),
        &other,
        &one,
    );
    assert!(!vs.identical && !vs.pass, "{vs:?}");
    assert!(vs.max_abs_diff > 0.0);
    // The same difference is within the sequence split's 1e-6.
    let vs = split::compare_outputs(
        SplitKind::Sequence.one_device_tolerance(Math::F32),
        &other,
        &one,
    );
    assert!(!vs.identical && vs.pass, "{vs:?}");
    assert!(
        split::compare_outputs(SplitKind::Heads.one_device_tolerance(Math::F32), &one, &one)
            .identical
    );
}

#[test]
fn splits_that_cannot_be_made_are_refused_by_name() {
    let cases = [
        (
            gqa(1, 4, 2, 16, 16, vec![8], 16, DType::F32),
            SplitKind::Heads,
            4,
            "at least 4 KV heads",
        ),
        (
            mla(1, 2, 16, 16, vec![8], 16, DType::F32),
            SplitKind::Heads,
            3,
            "at least 3 query heads",
        ),
        (
            experts(3, 1, 2, 8, 8, DType::F32, Routing::Uniform),
            SplitKind::Experts,
            4,
            "at least 4 experts",
        ),
        (
            experts(3, 1, 2, 8, 2, DType::F32, Routing::Uniform),
            SplitKind::Tensor,
            4,
            "output rows",
        ),
        (
            stream(StreamOp::Write, 64),
            SplitKind::Data,
            2,
            "read and copy",
        ),
        (
            stream(StreamOp::Read, 64),
            SplitKind::Heads,
            2,
            "does not apply to stream",
        ),
    ];
    for (w, kind, n, expect) in cases {
        let err = split::validate(&w, kind, n).expect_err("must be refused");
        assert!(err.contains(expect), "{err}");
    }
    // Uneven is handled, not refused.
    assert!(
        split::validate(
            &gqa(1, 15, 5, 16, 16, vec![8], 16, DType::F32),
            SplitKind::Heads,
            3
        )
        .is_ok()
    );
}

/// Two "devices" that are both the CPU backend's one device: enough to drive the concurrent
/// path (one thread per distinct device) that real multi-GPU runs take.
struct TwoCpus {
    cpu: Box<dyn Backend>,
    devices: Vec<decodelab::backend::DeviceInfo>,
}

impl Backend for TwoCpus {
    fn name(&self) -> &'static str {
        "two-cpus"
    }
    fn devices(&self) -> &[decodelab::backend::DeviceInfo] {
        &self.devices
    }
    fn prepare<'a>(
        &'a self,
        _device: usize,
        workload: &Workload,
        inputs: &TensorSet,
        how: &How,
    ) -> anyhow::Result<Box<dyn decodelab::backend::Prepared + 'a>> {
        self.cpu.prepare(0, workload, inputs, how)
    }
}

#[test]
fn distinct_devices_run_their_shards_at_once() {
    let Some(cpu) = backend_or_skip("cpu") else {
        return;
    };
    let mut devices = cpu.devices().to_vec();
    devices.push(decodelab::backend::DeviceInfo {
        index: 1,
        ..devices[0].clone()
    });
    let b = TwoCpus { cpu, devices };
    let set = DeviceSet {
        physical: vec![0, 1],
        virtual_devices: false,
        ranks: false,
    };
    assert!(set.concurrent());
    assert_eq!(set.label(), "0+1");
    let w = gqa(3, 8, 4, 64, 64, vec![40, 300, 7], 16, DType::Bf16);
    let inputs = w.inputs();
    let plan = split::plan(&w, &inputs, SplitKind::Heads, 2).unwrap();
    let s = Settings {
        warmup: 1,
        reps: 5,
        cache: CacheMode::Warm,
        imp: "simple",
    };
    let out = run_split(&b, &set, &w, &inputs, &plan, &s).unwrap();
    assert!(out.multi.concurrent && !out.multi.virtual_devices);
    assert!(out.multi.vs_one_device.as_ref().unwrap().identical);
    // End to end is the slowest shard of each rep plus the combine, so its median is at
    // least every shard's median plus the combine's.
    let slowest = out
        .multi
        .shards
        .iter()
        .map(|s| s.time_s.median)
        .fold(0.0, f64::max);
    assert!(out.end_to_end.median >= slowest + out.multi.combine.time_s.median * 0.999);
    assert_eq!(
        out.multi
            .shards
            .iter()
            .map(|s| s.physical)
            .collect::<Vec<_>>(),
        [0, 1]
    );
}

/// Every backend the registry knows runs the split suite (see tests/it/conformance.rs).
#[test]
fn every_registered_backend_has_a_split_suite() {
    let this = include_str!("split.rs");
    for name in decodelab::registry::backend_names() {
        assert!(
            this.contains(&format!("split_suite!({name} =>")),
            "tests/it/split.rs runs no split suite on backend {name}"
        );
    }
}
