//! kv_decode "unrolled" for MLA (absorbed): up to 16 query heads share every latent row, so
//! the work is two small matrix products per tile of 16 tokens, on FP32 FMA (WGSL has no
//! tensor cores). Per tile, q and the latent are staged through workgroup memory 64 dims at
//! a time and each of HB x 16 threads owns one (head, token) score; one thread per head runs
//! the tile's softmax; then each of the 256 threads owns 2 of the 512 value dims for every
//! head (2 x HB accumulators in registers) and reads its 2 dims of each token's row.

use super::{Code, DECODERS, KV_BINDINGS, decode};
use crate::backend::plan::{Const, KvPlan, KvTarget, kv_constants, kv_plan};
use crate::workload::{Attention, KvDecode};

pub const MLA_WG: usize = 256;
/// Tokens per tile, and dims of q and the latent staged at a time.
const T: usize = 16;
const KC: usize = 64;

/// Why the unrolled MLA kernel cannot run a point, if it cannot.
pub fn mla_covers(w: &KvDecode) -> Result<(), String> {
    if w.attention != Attention::Mla {
        return Err("MLA only".into());
    }
    let es = w.kv_dtype.elem_bits() / 8;
    if !w.kv_dtype.elem_bits().is_multiple_of(8) {
        return Err(format!("no WGSL decoder for {}", w.kv_dtype));
    }
    if !w.head_dim_k.is_multiple_of(KC) || !(KC * es).is_multiple_of(16) {
        return Err(format!(
            "the latent ({} dims) is not a whole number of {KC}-dim chunks (simple covers it)",
            w.head_dim_k
        ));
    }
    if !w.head_dim_v.is_multiple_of(MLA_WG) {
        return Err(format!(
            "{} value dims are not a whole number per thread of {MLA_WG} (simple covers it)",
            w.head_dim_v
        ));
    }
    Ok(())
}

/// The shared plan with up to 16 heads per block (workgroup memory is not what limits it).
pub fn mla_launch_plan(w: &KvDecode) -> KvPlan {
    let target = KvTarget {
        wg: MLA_WG,
        shared_bytes: usize::MAX / 2,
        blocks_wanted: 1024,
        min_tiles: 2,
        max_hb: 16,
        whole_waves: false,
    };
    kv_plan(w, &target)
}

/// The MLA attend pass and the shared merge; bindings as the simple shader's (V is the head
/// of each latent row, read through K's bindings).
pub fn mla_source(w: &KvDecode, plan: &KvPlan, pages_per_chunk: usize, k_chunks: usize) -> String {
    let q4 = decode(w.kv_dtype, "w").len();
    let es = w.kv_dtype.elem_bits() / 8;
    let c = kv_constants(w, plan, MLA_WG)
        .with("PAGES_PER_CHUNK", Const::U(pages_per_chunk as u64))
        .with("T", Const::U(T as u64))
        .with("KC", Const::U(KC as u64))
        .with("Q4", Const::U(q4 as u64))
        // 16-byte words of one token's KC-dim chunk.
        .with("WPT", Const::U((KC * es / 16) as u64))
        .with("DPT", Const::U((w.head_dim_v / MLA_WG) as u64))
        .with("NAN_BITS", Const::U(0x7fc0_0000));
    let mut s = c.wgsl();
    s.push_str(&super::super::shaders::chunk_accessor(
        "k",
        10..10 + k_chunks as u32,
    ));
    s.push_str(super::super::shaders::DTYPE_WGSL);
    s.push_str(KV_BINDINGS);
    s.push_str(
        "var<workgroup> q_sh: array<vec4<f32>, HB * KC / 4u>;
var<workgroup> k_sh: array<vec4<f32>, T * KC / 4u>;
var<workgroup> p_sh: array<f32, HB * T>;
var<workgroup> ml_sh: array<vec2<f32>, HB>;
var<workgroup> c_sh: array<f32, HB>;
var<workgroup> row_sh: array<u32, T>;   // element offset of each tile token's row in its chunk
var<workgroup> chunk_sh: array<u32, T>;

// Element e of cache chunk c (V: the head of a latent row).
fn lat_elem(c: u32, e: u32) -> f32 {
    let byte = e * ELEM_BYTES;
    return decode_elem(k_vec(c, byte >> 4u)[(byte >> 2u) & 3u], byte & 3u);
}
",
    );
    s.push_str(DECODERS);
    s.push_str(&attend(w, plan.hb));
    s.push_str(super::super::shaders::KV_MERGE_WGSL);
    s
}

/// The attend entry point; the value accumulators written out per head and dim.
fn attend(w: &KvDecode, hb: usize) -> String {
    let dpt = w.head_dim_v / MLA_WG;
    let mut c = Code::default();
    c.line("@compute @workgroup_size(WG)");
    c.line("fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {");
    c.line("    let split = wg.x;\n    let h0 = wg.y * HB;\n    let b = wg.z;");
    c.line("    let len = u32(context_lens[b]);\n    let start = split * SPLIT_TOKENS;\n    let end = min(start + SPLIT_TOKENS, len);");
    // The (head, token) score this thread owns, when lid < HB * T.
    c.line("    let sh = min(lid / T, HB - 1u);\n    let st = lid % T;");
    c.line("    if (lid < HB) {\n        ml_sh[lid] = vec2<f32>(NEG_BIG, 0.0);\n    }");
    for h in 0..hb {
        for e in 0..dpt {
            c.line(format!("    var a{h}_{e} = 0.0;"));
        }
    }
    c.line("    workgroupBarrier();");
    c.line("    for (var tile = start; tile < end; tile += T) {");
    // Rows of the tile's tokens; a token past the end reads the tile's first and counts 0.
    c.line("        if (lid < T) {");
    c.line("            let t = select(tile, tile + lid, tile + lid < end);");
    c.line("            let page = u32(page_table[b * MAX_PAGES + t / PAGE]);");
    c.line("            chunk_sh[lid] = page / PAGES_PER_CHUNK;");
    c.line("            row_sh[lid] = ((page % PAGES_PER_CHUNK) * PAGE + t % PAGE) * HKV * DK;");
    c.line("        }\n        workgroupBarrier();");
    c.line("        var s = 0.0;");
    c.line("        for (var kc = 0u; kc < DK; kc += KC) {");
    c.line("            if (lid < HB * KC / 4u) {");
    c.line("                let h = lid / (KC / 4u);");
    c.line("                q_sh[lid] = q[((b * HQ + h0 + h) * DK + kc) / 4u + lid % (KC / 4u)] * (SCALE * K_SCALE);");
    c.line("            }");
    c.line("            for (var i = lid; i < T * WPT; i += WG) {");
    c.line("                let tt = i / WPT;");
    c.line("                let wd = k_vec(chunk_sh[tt], (row_sh[tt] + kc) * ELEM_BYTES / 16u + i % WPT);");
    c.line("                let base = tt * (KC / 4u) + (i % WPT) * Q4;");
    for (k, d) in decode(w.kv_dtype, "wd").iter().enumerate() {
        c.line(format!("                k_sh[base + {k}u] = {d};"));
    }
    c.line("            }\n            workgroupBarrier();");
    c.line("            for (var j = 0u; j < KC / 4u; j++) {");
    c.line("                s += dot(q_sh[sh * (KC / 4u) + j], k_sh[st * (KC / 4u) + j]);");
    c.line("            }\n            workgroupBarrier();\n        }");
    // The tile's softmax: one thread per head.
    c.line("        if (lid < HB * T) {\n            p_sh[lid] = select(NEG_BIG, s, tile + st < end);\n        }");
    c.line("        workgroupBarrier();");
    c.line("        if (lid < HB) {");
    c.line("            let ml = ml_sh[lid];\n            var mx = ml.x;");
    c.line("            for (var i = 0u; i < T; i++) {\n                mx = max(mx, p_sh[lid * T + i]);\n            }");
    c.line("            var sum = 0.0;");
    c.line("            for (var i = 0u; i < T; i++) {");
    c.line("                let p = select(0.0, exp(p_sh[lid * T + i] - mx), tile + i < end);");
    c.line("                p_sh[lid * T + i] = p;\n                sum += p;\n            }");
    c.line("            let c = exp(ml.x - mx);");
    c.line("            c_sh[lid] = c;\n            ml_sh[lid] = vec2<f32>(mx, ml.y * c + sum);\n        }");
    c.line("        workgroupBarrier();");
    // P V: this thread's DPT dims of every head.
    for h in 0..hb {
        c.line(format!("        let c{h} = c_sh[{h}u];"));
        for e in 0..dpt {
            c.line(format!("        a{h}_{e} *= c{h};"));
        }
    }
    c.line("        for (var i = 0u; i < min(T, end - tile); i++) {");
    for e in 0..dpt {
        c.line(format!(
            "            let v{e} = lat_elem(chunk_sh[i], row_sh[i] + lid * DPT + {e}u);"
        ));
    }
    for h in 0..hb {
        c.line(format!("            let p{h} = p_sh[{h}u * T + i];"));
        for e in 0..dpt {
            c.line(format!("            a{h}_{e} += p{h} * v{e};"));
        }
    }
    c.line("        }\n        workgroupBarrier();\n    }");
    // Unnormalised partial result of this slice (an empty slice leaves l = 0), as simple's.
    for h in 0..hb {
        c.line(format!(
            "    let slot{h} = (b * HQ + h0 + {h}u) * SPLITS + split;"
        ));
        for e in 0..dpt {
            c.line(format!(
                "    partial_acc[slot{h} * DV + lid * DPT + {e}u] = a{h}_{e};"
            ));
        }
    }
    c.line("    if (lid < HB) {");
    c.line("        partial_ml[(b * HQ + h0 + lid) * SPLITS + split] = ml_sh[lid];");
    c.line("    }\n}");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{DType, Lengths};

    fn mla(heads: usize, dt: DType) -> KvDecode {
        KvDecode {
            attention: Attention::Mla,
            batch: 1,
            q_heads: heads,
            kv_heads: 1,
            head_dim_k: 576,
            head_dim_v: 512,
            page_size: 64,
            kv_dtype: dt,
            scale: 0.05,
            context: 40,
            lengths: Lengths::Equal,
            context_lens: vec![40],
            seed: 1,
            math: Default::default(),
            launch_hint: None,
        }
    }

    #[test]
    fn covers_mla_of_whole_chunks_and_validates() {
        for dt in DType::WHOLE_BYTE {
            for heads in [16, 128, 6] {
                let w = mla(heads, dt);
                assert!(mla_covers(&w).is_ok());
                let plan = mla_launch_plan(&w);
                assert!(plan.hb <= 16 && heads.is_multiple_of(plan.hb));
                let src = mla_source(&w, &plan, 4, 2);
                if let Err(e) = crate::backend::wgpu::inspect::validate(&src, false) {
                    panic!("{dt} {heads} heads: {e}");
                }
            }
        }
        let mut odd = mla(16, DType::Bf16);
        odd.head_dim_k = 100;
        assert!(mla_covers(&odd).is_err());
    }
}
