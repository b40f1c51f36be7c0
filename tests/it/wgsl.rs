//! Every WGSL shader, assembled for every kernel variant and both shader paths (plain, and
//! subgroups), passes naga's validation: no driver needed.

use crate::common;

use common::*;
use decodelab::backend::impls_of;
use decodelab::backend::wgpu::{ShaderPaths, inspect, shader_sources};
use decodelab::workload::*;

fn validate(label: &str, src: &str, paths: ShaderPaths) {
    if let Err(e) = inspect::validate(src, paths.subgroups) {
        panic!("{label}: {e}");
    }
}

fn variants() -> Vec<Workload> {
    let mut v = Vec::new();
    for op in [StreamOp::Read, StreamOp::Copy, StreamOp::Write] {
        v.push(stream(op, 4096));
    }
    for dt in DType::WHOLE_BYTE {
        v.push(gqa(2, 8, 2, 128, 128, vec![33, 7], 16, dt)); // aligned rows
        v.push(gqa(2, 6, 3, 67, 45, vec![33, 7], 8, dt)); // unaligned rows
        v.push(mla(2, 16, 512, 64, vec![100, 3], 64, dt));
        v.push(experts(8, 2, 4, 256, 16, dt, Routing::Uniform));
        v.push(experts(8, 2, 4, 1001, 17, dt, Routing::Uniform));
    }
    v
}

#[test]
fn every_shader_validates_on_both_paths() {
    let mut n = 0;
    for paths in [ShaderPaths::PLAIN, ShaderPaths::subgroups(8)] {
        for w in variants() {
            for imp in impls_of("wgpu", w.kind()) {
                for chunks in [1, 3] {
                    // A shape the implementation does not cover runs simple instead.
                    let Ok(src) = shader_sources(&w, imp.name, paths, chunks) else {
                        assert_ne!(imp.name, "simple");
                        continue;
                    };
                    validate(
                        &format!(
                            "{} {} {} {paths:?} chunks={chunks}",
                            w.kernel(),
                            imp.name,
                            w.params_json()
                        ),
                        &src,
                        paths,
                    );
                    n += 1;
                }
            }
        }
    }
    // simple: 23 variants, 2 paths, 2 chunkings; unrolled: the 4 aligned expert and the 4
    // aligned GQA variants (one per dtype), subgroups only, and the 4 MLA and 3 stream
    // variants on both paths, 2 chunkings each.
    assert_eq!(n, 2 * 23 * 2 + 8 * 2 + 4 * 2 * 2 + 3 * 2 * 2);
}

#[test]
fn the_paths_differ_where_they_should() {
    let plain = ShaderPaths::PLAIN;
    let fast = ShaderPaths::subgroups(8);
    for w in [
        stream(StreamOp::Read, 4096),
        experts(4, 2, 3, 64, 8, DType::Bf16, Routing::Uniform),
    ] {
        assert!(
            !shader_sources(&w, "simple", plain, 1)
                .unwrap()
                .contains("subgroupAdd")
        );
        assert!(
            shader_sources(&w, "simple", fast, 1)
                .unwrap()
                .contains("subgroupAdd")
        );
    }
    // Three chunks: three bindings and a switch over them.
    let k = gqa(1, 2, 1, 8, 8, vec![3], 4, DType::F16);
    let src = shader_sources(&k, "simple", plain, 3).unwrap();
    assert!(src.contains("k_c2") && src.contains("v_c2") && !src.contains("k_c3"));
}

/// A dtype code the shaders do not decode is a compile error, never read as fp8.
#[test]
fn an_unknown_dtype_code_does_not_compile() {
    let paths = ShaderPaths::PLAIN;
    let src = shader_sources(
        &gqa(1, 2, 1, 32, 32, vec![5], 4, DType::Bf16),
        "simple",
        paths,
        1,
    )
    .unwrap();
    assert!(src.contains("const DTYPE: u32 = 2u;"));
    assert!(accepted(&src), "the shader as built does not compile");
    let bad = src.replace("const DTYPE: u32 = 2u;", "const DTYPE: u32 = 9u;");
    assert!(!accepted(&bad), "DTYPE 9 was accepted");
    // 4-bit elements with a whole-byte dtype's code are refused too (only the 4-bit weight
    // codes 4..7 are decoded by nibble).
    assert!(src.contains("const ELEM_BITS: u32 = 16u;"));
    let bad = src.replace("const ELEM_BITS: u32 = 16u;", "const ELEM_BITS: u32 = 4u;");
    assert!(!accepted(&bad), "ELEM_BITS 4 was accepted");
}

/// Whether naga parses and validates a WGSL source.
fn accepted(src: &str) -> bool {
    naga::front::wgsl::parse_str(src).is_ok_and(|m| {
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
        )
        .validate(&m)
        .is_ok()
    })
}

/// What wgpu hands the driver (SPIR-V as wgpu-hal writes it): a tuned shader has no loop
/// counter (it is built as a trusted module) and no per-thread array indexed at run time
/// (NVIDIA keeps such arrays in local memory). The simple expert shader has one (`part`),
/// which is what the tuned one is for.
#[test]
fn tuned_shaders_have_no_loop_counters_or_runtime_indexed_private_arrays() {
    let paths = ShaderPaths::subgroups(8);
    let mut tuned = 0;
    for w in variants() {
        for imp in impls_of("wgpu", w.kind()) {
            let Ok(src) = shader_sources(&w, imp.name, paths, 3) else {
                continue;
            };
            let label = format!("{} {} {}", w.kernel(), imp.name, w.params_json());
            let built =
                inspect::inspect(&src, true, false).unwrap_or_else(|e| panic!("{label}: {e}"));
            for r in &built {
                assert_eq!(
                    r.loop_bounds, 0,
                    "{label} {}: a trusted module has no loop counters",
                    r.entry
                );
            }
            // Under wgpu's default checks the same loops carry counters: the zero above is real.
            let checked = inspect::inspect(&src, true, true).unwrap();
            assert!(checked.iter().any(|r| r.loop_bounds > 0), "{label}");
            if imp.tuned {
                for r in &built {
                    assert!(
                        r.dynamic_private_arrays.is_empty(),
                        "{label} {}: {:?}",
                        r.entry,
                        r.dynamic_private_arrays
                    );
                }
                tuned += 1;
            } else if w.kind() == Kernel::ExpertGemv {
                let gemv = built.iter().find(|r| r.entry == "gemv").expect("gemv");
                assert!(
                    gemv.dynamic_private_arrays
                        .iter()
                        .any(|a| a.ends_with(": part")),
                    "{label}: {gemv:?}"
                );
            }
        }
    }
    assert_eq!(
        tuned, 15,
        "the 3 stream ops, and the aligned expert, GQA and MLA variants, one per dtype"
    );
}
