//! Which WGSL each wgpu implementation runs, and which points it covers: the one place that
//! matches on the implementation's name, read by the backend's `covers`, by building a point
//! and by the tests' and reports' `shader_sources`.

use super::shaders::{
    EXPERT_ROWS, EXPERT_WG, ShaderPaths, expert_source, kv_launch, kv_source, stream_source,
};
use super::unrolled;
use crate::backend::plan::KvPlan;
use crate::workload::{Attention, ExpertGemv, KvDecode, StreamOp, Workload};

/// Whether implementation `imp` covers `w` on a device with `paths`, or why not.
pub fn covers(imp: &str, w: &Workload, paths: ShaderPaths) -> Result<(), String> {
    match (imp, w) {
        ("simple", _) => Ok(()),
        ("unrolled", Workload::Stream(_)) => Ok(()),
        ("unrolled", Workload::ExpertGemv(e)) => {
            unrolled::expert::expert_covers(e, paths.subgroups)
        }
        ("unrolled", Workload::KvDecode(k)) if k.attention == Attention::Mla => {
            unrolled::mla::mla_covers(k)
        }
        ("unrolled", Workload::KvDecode(k)) => {
            unrolled::kv::kv_covers(k, paths.subgroups, paths.subgroup_min)
        }
        _ => Err(format!(
            "wgpu has no implementation '{imp}' of {}",
            w.kernel()
        )),
    }
}

/// The stream shader of implementation `imp`.
pub(super) fn stream_for(op: StreamOp, imp: &str, paths: ShaderPaths) -> String {
    match imp {
        "unrolled" => unrolled::stream::stream_source(op, paths),
        _ => stream_source(op, paths),
    }
}

/// expert_gemv's shader for implementation `imp`, and the workgroup size and output rows per
/// workgroup it is launched with.
pub(super) fn expert_for(
    w: &ExpertGemv,
    imp: &str,
    rows_per_chunk: usize,
    w_chunks: usize,
    paths: ShaderPaths,
) -> (String, usize, usize) {
    let touched = w.touched().len();
    match imp {
        "unrolled" => (
            unrolled::expert::expert_source(w, touched, rows_per_chunk, w_chunks),
            unrolled::expert::EXPERT_WG,
            unrolled::expert::EXPERT_ROWS,
        ),
        _ => (
            expert_source(w, touched, rows_per_chunk, w_chunks, paths),
            EXPERT_WG,
            EXPERT_ROWS,
        ),
    }
}

/// kv_decode's launch plan and shader for implementation `imp`: the simple shader on
/// `workgroup_memory` bytes of workgroup memory, or the unrolled GQA or MLA one.
pub(super) fn kv_for(
    w: &KvDecode,
    imp: &str,
    paths: ShaderPaths,
    workgroup_memory: usize,
    pages_per_chunk: usize,
    k_chunks: usize,
    v_chunks: usize,
) -> anyhow::Result<(KvPlan, String)> {
    let sg = paths.subgroup_min;
    Ok(match (imp, w.attention) {
        ("unrolled", Attention::Mla) => {
            let plan = unrolled::mla::mla_launch_plan(w);
            let source = unrolled::mla::mla_source(w, &plan, pages_per_chunk, k_chunks);
            (plan, source)
        }
        ("unrolled", _) => {
            let plan = unrolled::kv::kv_launch_plan(w, sg);
            let source = unrolled::kv::kv_source(w, &plan, pages_per_chunk, k_chunks, v_chunks, sg);
            (plan, source)
        }
        _ => {
            let launch = kv_launch(w, pages_per_chunk, workgroup_memory)?;
            let source = kv_source(w, &launch, k_chunks, v_chunks, paths);
            (launch.plan, source)
        }
    })
}

/// Every shader implementation `imp` of a workload would use, assembled as for a device with
/// `paths`, the default WebGPU workgroup memory (16 KiB) and `chunks` bindings per large
/// tensor. For validating and inspecting the WGSL without a driver (naga).
pub fn shader_sources(
    w: &Workload,
    imp: &str,
    paths: ShaderPaths,
    chunks: usize,
) -> anyhow::Result<String> {
    covers(imp, w, paths).map_err(anyhow::Error::msg)?;
    Ok(match w {
        Workload::Stream(s) => stream_for(s.op, imp, paths),
        // A link within one adapter is the stream copy shader.
        Workload::Link(_) => stream_source(StreamOp::Copy, paths),
        Workload::KvDecode(k) => {
            let per_chunk = k.num_pages().div_ceil(chunks).max(1);
            let v = if k.attention == Attention::Mla {
                0
            } else {
                chunks
            };
            kv_for(k, imp, paths, 16384, per_chunk, chunks, v)?.1
        }
        Workload::ExpertGemv(e) => {
            let rows = (e.experts * e.d_out).div_ceil(chunks).max(1);
            expert_for(e, imp, rows, chunks, paths).0
        }
    })
}
