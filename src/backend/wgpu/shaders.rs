//! WGSL assembled per point: the shape constants (`backend::plan`) and the bindings of each
//! large tensor prepended to the shaders in shaders/, with their `//! when` sections kept
//! for the device's path.

use crate::backend::plan::{
    Const, Constants, ExpertPlan, KvPlan, KvTarget, expert_constants, kv_constants, kv_fits,
    kv_plan,
};
use crate::workload::{ExpertGemv, KvDecode, StreamOp};
use anyhow::bail;

pub(super) const DTYPE_WGSL: &str = include_str!("../../../shaders/dtype.wgsl");
pub(super) const STREAM_WGSL: &str = include_str!("../../../shaders/stream.wgsl");
pub(super) const STREAM_MAIN_WGSL: &str = include_str!("../../../shaders/stream_main.wgsl");
pub(super) const KV_WGSL: &str = include_str!("../../../shaders/kv_decode.wgsl");
pub(super) const KV_MERGE_WGSL: &str = include_str!("../../../shaders/kv_merge.wgsl");
pub(super) const EXPERT_WGSL: &str = include_str!("../../../shaders/expert_gemv.wgsl");
pub(super) const FOURBIT_WGSL: &str = include_str!("../../../shaders/fourbit.wgsl");
pub(super) const EXPERT_COMBINE_WGSL: &str = include_str!("../../../shaders/expert_combine.wgsl");

/// The optional WGSL features a shader is assembled for. (No f16 path: every kernel
/// accumulates in f32, and f16 storage is widened by the core unpack2x16float.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaderPaths {
    pub subgroups: bool,
    /// The smallest subgroup the device may run (WebGPU's floor, 4, when unknown): the
    /// tuned kv_decode fits a token's lanes in one.
    pub subgroup_min: usize,
}

impl ShaderPaths {
    pub const PLAIN: ShaderPaths = ShaderPaths {
        subgroups: false,
        subgroup_min: 4,
    };

    /// Subgroups of at least `min` lanes (NVIDIA: 32; lavapipe: 8).
    pub const fn subgroups(min: usize) -> ShaderPaths {
        ShaderPaths {
            subgroups: true,
            subgroup_min: min,
        }
    }
}

/// Keep the `//! when <flag>` ... `//! end` sections of a shader whose flag holds
/// (flags: subgroups, plain). No `enable subgroups;`: naga (wgpu 30) gates the subgroup
/// builtins on the device feature and rejects the directive as not yet supported.
pub fn assemble(paths: ShaderPaths, prelude: &str, parts: &[&str]) -> String {
    let mut out = String::new();
    out.push_str(prelude);
    for part in parts {
        let mut keep = true;
        for line in part.lines() {
            let t = line.trim();
            if let Some(flag) = t.strip_prefix("//! when ") {
                keep = match flag.trim() {
                    "subgroups" => paths.subgroups,
                    "plain" => !paths.subgroups,
                    _ => true,
                };
            } else if t == "//! end" {
                keep = true;
            } else if keep {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

pub(super) const STREAM_WG: u32 = 256;
pub(super) const KV_WG: usize = 64;
pub(super) const EXPERT_WG: usize = 64;
pub(super) const EXPERT_ROWS: usize = 4;
pub(super) const EXPERT_TB: usize = 8;

pub fn stream_source(op: StreamOp, paths: ShaderPaths) -> String {
    let op = match op {
        StreamOp::Read => 0,
        StreamOp::Copy => 1,
        StreamOp::Write => 2,
    };
    let c = Constants::default()
        .with("OP", Const::U(op))
        .with("WG", Const::U(STREAM_WG as u64));
    assemble(paths, &c.wgsl(), &[STREAM_WGSL, STREAM_MAIN_WGSL])
}

/// How a kv_decode point is cut into workgroups: the shared plan (`backend::plan`) with a
/// WGSL workgroup (64 invocations, the adapter's workgroup memory, about 1024 workgroups to
/// fill a large GPU, slices of at least 4 tiles), and its cache's pages per binding.
#[derive(Clone, Debug)]
pub struct KvLaunch {
    pub plan: KvPlan,
    pub pages_per_chunk: usize,
}

pub fn kv_launch(
    w: &KvDecode,
    pages_per_chunk: usize,
    workgroup_memory: usize,
) -> anyhow::Result<KvLaunch> {
    let target = KvTarget {
        wg: KV_WG,
        shared_bytes: workgroup_memory,
        blocks_wanted: 1024,
        min_tiles: 4,
        max_hb: 8,
        whole_waves: false,
    };
    let plan = kv_plan(w, &target);
    if !kv_fits(w, &target, plan.hb) {
        bail!(
            "head_dim {} is too large for this adapter's workgroup memory ({workgroup_memory} bytes)",
            w.head_dim_k
        );
    }
    Ok(KvLaunch {
        plan,
        pages_per_chunk,
    })
}

pub fn kv_source(
    w: &KvDecode,
    l: &KvLaunch,
    k_chunks: usize,
    v_chunks: usize,
    paths: ShaderPaths,
) -> String {
    let c =
        kv_constants(w, &l.plan, KV_WG).with("PAGES_PER_CHUNK", Const::U(l.pages_per_chunk as u64));
    let mut prelude = c.wgsl();
    prelude.push_str(&chunk_accessor("k", 10..10 + k_chunks as u32));
    if w.attention == crate::workload::Attention::Mla {
        // MLA: V is the head of the cached latent, read through K's bindings.
        prelude.push_str("fn v_vec(c: u32, i: u32) -> vec4<u32> { return k_vec(c, i); }\n");
    } else {
        prelude.push_str(&chunk_accessor("v", 40..40 + v_chunks as u32));
    }
    assemble(paths, &prelude, &[DTYPE_WGSL, KV_WGSL, KV_MERGE_WGSL])
}

pub fn expert_source(
    w: &ExpertGemv,
    touched: usize,
    rows_per_chunk: usize,
    w_chunks: usize,
    paths: ShaderPaths,
) -> String {
    let plan = ExpertPlan {
        wg: EXPERT_WG,
        rows: EXPERT_ROWS,
        tb: EXPERT_TB,
    };
    let c =
        expert_constants(w, touched, &plan).with("ROWS_PER_CHUNK", Const::U(rows_per_chunk as u64));
    let mut prelude = c.wgsl();
    prelude.push_str(&chunk_accessor("w", 10..10 + w_chunks as u32));
    assemble(
        paths,
        &prelude,
        &[DTYPE_WGSL, FOURBIT_WGSL, EXPERT_WGSL, EXPERT_COMBINE_WGSL],
    )
}

/// The binding of chunk `c` of a tensor split over bindings (the host names it so).
pub(super) fn chunk_name(name: &str, c: usize) -> String {
    format!("{name}_c{c}")
}

/// WGSL for a tensor split over bindings `bindings`: the bindings and `<name>_vec(c, i)`, the
/// i-th 16-byte word of chunk c. WGSL cannot index bindings, hence the switch.
pub(super) fn chunk_accessor(name: &str, bindings: std::ops::Range<u32>) -> String {
    let mut s = String::new();
    for (c, b) in bindings.clone().enumerate() {
        s.push_str(&format!(
            "@group(0) @binding({b}) var<storage, read> {}: array<vec4<u32>>;\n",
            chunk_name(name, c)
        ));
    }
    s.push_str(&format!(
        "fn {name}_vec(c: u32, i: u32) -> vec4<u32> {{\n    switch c {{\n"
    ));
    for c in 1..bindings.len() {
        s.push_str(&format!(
            "        case {c}u: {{ return {name}_c{c}[i]; }}\n"
        ));
    }
    s.push_str(&format!(
        "        default: {{ return {name}_c0[i]; }}\n    }}\n}}\n"
    ));
    s
}
