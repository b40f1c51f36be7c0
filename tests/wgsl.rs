//! Every WGSL shader, assembled for every kernel variant and both shader paths (plain, and
//! subgroups), passes naga's validation: no driver needed.

mod common;

use common::*;
use decodelab::backend::wgpu::{ShaderPaths, shader_sources};
use decodelab::workload::*;

fn validate(label: &str, src: &str, paths: ShaderPaths) {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{label}: WGSL parse error:\n{}", e.emit_to_string(src)));
    // unpack2x16float is core WGSL; naga counts it as a capability wgpu grants natively.
    let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if paths.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: invalid WGSL:\n{}", e.emit_to_string(src)));
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
    for paths in [
        ShaderPaths { subgroups: false },
        ShaderPaths { subgroups: true },
    ] {
        for w in variants() {
            for chunks in [1, 3] {
                let src = shader_sources(&w, paths, chunks).unwrap();
                validate(
                    &format!(
                        "{} {} {paths:?} chunks={chunks}",
                        w.kernel(),
                        w.params_json()
                    ),
                    &src,
                    paths,
                );
                n += 1;
            }
        }
    }
    assert_eq!(n, 2 * 23 * 2);
}

#[test]
fn the_paths_differ_where_they_should() {
    let plain = ShaderPaths { subgroups: false };
    let fast = ShaderPaths { subgroups: true };
    for w in [
        stream(StreamOp::Read, 4096),
        experts(4, 2, 3, 64, 8, DType::Bf16, Routing::Uniform),
    ] {
        assert!(
            !shader_sources(&w, plain, 1)
                .unwrap()
                .contains("subgroupAdd")
        );
        assert!(shader_sources(&w, fast, 1).unwrap().contains("subgroupAdd"));
    }
    // Three chunks: three bindings and a switch over them.
    let k = gqa(1, 2, 1, 8, 8, vec![3], 4, DType::F16);
    let src = shader_sources(&k, plain, 3).unwrap();
    assert!(src.contains("k_c2") && src.contains("v_c2") && !src.contains("k_c3"));
}

/// A dtype code the shaders do not decode is a compile error, never read as fp8.
#[test]
fn an_unknown_dtype_code_does_not_compile() {
    let paths = ShaderPaths { subgroups: false };
    let src = shader_sources(&gqa(1, 2, 1, 32, 32, vec![5], 4, DType::Bf16), paths, 1).unwrap();
    assert!(src.contains("const DTYPE: u32 = 2u;"));
    assert!(accepted(&src), "the shader as built does not compile");
    let bad = src.replace("const DTYPE: u32 = 2u;", "const DTYPE: u32 = 9u;");
    assert!(!accepted(&bad), "DTYPE 9 was accepted");
    // A sub-byte dtype (mxfp4's 4 bits) is refused too: these shaders index whole bytes.
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
