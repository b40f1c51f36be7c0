//! kv_decode "unrolled" (GQA): a workgroup of 128 owns HB query heads of one KV head and one
//! slice of the context (the shared plan, so a heads split stays exact). L lanes read one
//! token's K and V rows, one 16-byte word of each per lane (W words when a row is longer
//! than L words), and hold q for their dims in registers. Each of the WG / L token groups
//! keeps its own online softmax over its tokens, with no workgroup memory or barrier in the
//! token loop; the workgroup merges the groups at the end, in group order.

use super::{Code, DECODERS, KV_BINDINGS, decode, each};
use crate::backend::plan::{Const, KvPlan, KvTarget, kv_constants, kv_plan};
use crate::workload::{Attention, KvDecode};

pub const KV_WG: usize = 128;
/// Accumulator floats a lane may hold per head (q as much again): what keeps HB heads in
/// registers.
const LANE_FLOATS: usize = 64;

/// Lanes per token and 16-byte words per lane: the most lanes (a power of two dividing the
/// row's words) that fit in the device's smallest subgroup, so a token's lanes share one.
fn lanes(w: &KvDecode, subgroup_min: usize) -> (usize, usize) {
    let words = w.head_dim_k * (w.kv_dtype.elem_bits() / 8) / 16;
    let mut l = 1;
    while l * 2 <= subgroup_min.min(32) && words.is_multiple_of(l * 2) {
        l *= 2;
    }
    (l, words / l)
}

/// Floats of one head a lane holds (its dims of q, and as many accumulators).
fn lane_floats(w: &KvDecode, subgroup_min: usize) -> usize {
    let (_, words) = lanes(w, subgroup_min);
    words * 16 / (w.kv_dtype.elem_bits() / 8)
}

/// Why the unrolled kv_decode cannot run a point, if it cannot.
pub fn kv_covers(w: &KvDecode, subgroups: bool, subgroup_min: usize) -> Result<(), String> {
    if !subgroups {
        return Err("needs subgroup operations (the plain path runs simple)".into());
    }
    if w.attention != Attention::Gqa {
        return Err("GQA only (MLA runs simple)".into());
    }
    if !w.kv_dtype.elem_bits().is_multiple_of(8) {
        return Err(format!("no WGSL decoder for {}", w.kv_dtype));
    }
    if w.head_dim_k != w.head_dim_v {
        return Err("K and V rows of one length only (simple covers the rest)".into());
    }
    if !(w.head_dim_k * w.kv_dtype.elem_bits() / 8).is_multiple_of(16) {
        return Err(format!(
            "head_dim {} of {} is not a whole number of 16-byte words (simple covers it)",
            w.head_dim_k, w.kv_dtype
        ));
    }
    if lane_floats(w, subgroup_min) > LANE_FLOATS {
        return Err(format!(
            "a row of head_dim {} is too long for one lane's registers on subgroups of {subgroup_min}",
            w.head_dim_k
        ));
    }
    Ok(())
}

/// The launch plan: the shared one, with 128 threads and as many heads as fit a lane's
/// registers.
pub fn kv_launch_plan(w: &KvDecode, subgroup_min: usize) -> KvPlan {
    let target = KvTarget {
        wg: KV_WG,
        shared_bytes: 16384,
        blocks_wanted: 1024,
        min_tiles: 2,
        max_hb: (LANE_FLOATS / lane_floats(w, subgroup_min)).clamp(1, 8),
        whole_waves: false,
    };
    kv_plan(w, &target)
}

/// The unrolled attend pass and the shared merge, bindings as the simple shader's except q,
/// read as `vec4<f32>`.
pub fn kv_source(
    w: &KvDecode,
    plan: &KvPlan,
    pages_per_chunk: usize,
    k_chunks: usize,
    v_chunks: usize,
    subgroup_min: usize,
) -> String {
    let (l, words) = lanes(w, subgroup_min);
    let q4 = decode(w.kv_dtype, "w").len();
    let c = kv_constants(w, plan, KV_WG)
        .with("PAGES_PER_CHUNK", Const::U(pages_per_chunk as u64))
        .with("L", Const::U(l as u64))
        .with("Q4", Const::U(q4 as u64))
        .with("NAN_BITS", Const::U(0x7fc0_0000));
    let mut s = c.wgsl();
    s.push_str(&super::super::shaders::chunk_accessor(
        "k",
        10..10 + k_chunks as u32,
    ));
    s.push_str(&super::super::shaders::chunk_accessor(
        "v",
        40..40 + v_chunks as u32,
    ));
    s.push_str(KV_BINDINGS);
    s.push_str(
        "const TG: u32 = WG / L;
var<workgroup> ml_sh: array<vec2<f32>, HB * TG>;
var<workgroup> acc_sh: array<f32, HB * DV>;
",
    );
    s.push_str(DECODERS);
    s.push_str(&attend(w, plan.hb, l, words, q4));
    s.push_str(super::super::shaders::KV_MERGE_WGSL);
    s
}

/// The attend entry point, written out per head, word and vec4.
fn attend(w: &KvDecode, hb: usize, l: usize, words: usize, q4: usize) -> String {
    let mut c = Code::default();
    c.line("@compute @workgroup_size(WG)");
    c.line("fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {");
    c.line("    let split = wg.x;\n    let h0 = wg.y * HB;\n    let b = wg.z;\n    let g = h0 / GROUP;");
    c.line("    let len = u32(context_lens[b]);\n    let start = split * SPLIT_TOKENS;\n    let end = min(start + SPLIT_TOKENS, len);");
    c.line("    let tg = lid / L;\n    let li = lid % L;");
    // q for this lane's dims of each head, scaled once.
    for j in 0..hb {
        c.line(format!("    let qb{j} = (b * HQ + h0 + {j}u) * (DK / 4u);"));
        each(words, q4, &mut |wd, k| {
            c.line(format!(
                "    let q{j}_{wd}_{k} = q[qb{j} + (li + {wd}u * L) * Q4 + {k}u] * (SCALE * K_SCALE);"
            ))
        });
        c.line(format!("    var m{j} = NEG_BIG;\n    var l{j} = 0.0;"));
        each(words, q4, &mut |wd, k| {
            c.line(format!("    var a{j}_{wd}_{k} = vec4<f32>(0.0);"))
        });
    }
    // The loop runs alike for the whole workgroup (subgroup shuffles need every lane); a
    // group past the slice's end reads its first token and adds nothing.
    c.line("    for (var t0 = start; t0 < end; t0 += TG) {");
    c.line("        let valid = t0 + tg < end;\n        let t = select(t0, t0 + tg, valid);");
    c.line("        let page = u32(page_table[b * MAX_PAGES + t / PAGE]);");
    c.line("        let c = page / PAGES_PER_CHUNK;");
    c.line("        let row = ((page % PAGES_PER_CHUNK) * PAGE + t % PAGE) * HKV + g;");
    c.line("        let rk = row * (DK * ELEM_BYTES / 16u) + li;");
    c.line("        let rv = row * (DV * ELEM_BYTES / 16u) + li;");
    // Both rows' loads before any arithmetic.
    for wd in 0..words {
        c.line(format!("        let kw{wd} = k_vec(c, rk + {wd}u * L);"));
    }
    for wd in 0..words {
        c.line(format!("        let vw{wd} = v_vec(c, rv + {wd}u * L);"));
    }
    for wd in 0..words {
        for (k, d) in decode(w.kv_dtype, &format!("kw{wd}")).iter().enumerate() {
            c.line(format!("        let kd{wd}_{k} = {d};"));
        }
    }
    for j in 0..hb {
        let mut terms = Vec::new();
        each(words, q4, &mut |wd, k| {
            terms.push(format!("dot(q{j}_{wd}_{k}, kd{wd}_{k})"))
        });
        c.line(format!("        var s{j} = {};", terms.join(" + ")));
    }
    // Butterfly over the token's lanes: every lane ends with the same full score.
    let mut mask = l / 2;
    while mask > 0 {
        for j in 0..hb {
            c.line(format!(
                "        s{j} += subgroupShuffleXor(s{j}, {mask}u);"
            ));
        }
        mask /= 2;
    }
    // Online softmax. The running max rarely grows after a slice's first tokens, so the
    // rescale (a multiply per accumulator) runs only when it does; skipping it is exact, as
    // its factor would be exp(0) = 1.
    for j in 0..hb {
        c.line(format!(
            "        let mn{j} = select(m{j}, max(m{j}, s{j}), valid);"
        ));
    }
    let grows: Vec<String> = (0..hb).map(|j| format!("mn{j} > m{j}")).collect();
    c.line(format!("        if ({}) {{", grows.join(" || ")));
    for j in 0..hb {
        c.line(format!(
            "            let c{j} = exp(m{j} - mn{j});
            \
             l{j} *= c{j};
            \
             m{j} = mn{j};"
        ));
        each(words, q4, &mut |wd, k| {
            c.line(format!("            a{j}_{wd}_{k} *= c{j};"))
        });
    }
    c.line("        }");
    for j in 0..hb {
        c.line(format!(
            "        let p{j} = select(0.0, exp(s{j} - m{j}), valid);\n        l{j} += p{j};"
        ));
    }
    for wd in 0..words {
        for (k, d) in decode(w.kv_dtype, &format!("vw{wd}")).iter().enumerate() {
            c.line(format!("        let vd{wd}_{k} = {d};"));
        }
    }
    for j in 0..hb {
        each(words, q4, &mut |wd, k| {
            c.line(format!("        a{j}_{wd}_{k} += p{j} * vd{wd}_{k};"))
        });
    }
    c.line("    }");
    c.0.push_str(&merge_groups(hb, words, q4));
    c.0
}

/// The end of attend: the token groups merged (their maxima and sums through workgroup
/// memory, then their accumulators added into acc_sh one group after another, a fixed
/// order) and the slice's partial result written.
fn merge_groups(hb: usize, words: usize, q4: usize) -> String {
    let mut c = Code::default();
    c.line("    if (li == 0u) {");
    for j in 0..hb {
        c.line(format!(
            "        ml_sh[{j}u * TG + tg] = vec2<f32>(m{j}, l{j});"
        ));
    }
    c.line("    }\n    workgroupBarrier();");
    for j in 0..hb {
        c.line(format!(
            "    var mt{j} = NEG_BIG;\n    \
             for (var i = 0u; i < TG; i++) {{\n        mt{j} = max(mt{j}, ml_sh[{j}u * TG + i].x);\n    }}\n    \
             var lt{j} = 0.0;\n    \
             for (var i = 0u; i < TG; i++) {{\n        \
                 let ml = ml_sh[{j}u * TG + i];\n        \
                 lt{j} += ml.y * exp(ml.x - mt{j});\n    }}\n    \
             let f{j} = exp(m{j} - mt{j});"
        ));
    }
    c.line("    for (var gi = 0u; gi < TG; gi++) {");
    c.line("        if (tg == gi) {");
    for j in 0..hb {
        each(words, q4, &mut |wd, k| {
            c.line(format!(
                "            let o{j}_{wd}_{k} = {j}u * DV + ((li + {wd}u * L) * Q4 + {k}u) * 4u;\n            \
                 let x{j}_{wd}_{k} = a{j}_{wd}_{k} * f{j};"
            ));
            for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
                c.line(format!(
                    "            acc_sh[o{j}_{wd}_{k} + {e}u] = select(acc_sh[o{j}_{wd}_{k} + {e}u], 0.0, gi == 0u) + x{j}_{wd}_{k}.{comp};"
                ));
            }
        });
    }
    c.line("        }\n        workgroupBarrier();\n    }");
    // Unnormalised partial result of this slice (an empty slice leaves l = 0), as simple's.
    c.line("    for (var i = lid; i < HB * DV; i += WG) {");
    c.line("        let slot = (b * HQ + h0 + i / DV) * SPLITS + split;");
    c.line("        partial_acc[slot * DV + i % DV] = acc_sh[i];\n    }");
    c.line("    if (lid == 0u) {");
    for j in 0..hb {
        c.line(format!(
            "        partial_ml[(b * HQ + h0 + {j}u) * SPLITS + split] = vec2<f32>(mt{j}, lt{j});"
        ));
    }
    c.line("    }\n}");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{DType, Lengths};

    fn gqa(dk: usize, dt: DType) -> KvDecode {
        KvDecode {
            attention: Attention::Gqa,
            batch: 1,
            q_heads: 8,
            kv_heads: 1,
            head_dim_k: dk,
            head_dim_v: dk,
            context: 40,
            context_lens: vec![40],
            lengths: Lengths::Equal,
            page_size: 16,
            kv_dtype: dt,
            scale: 0.1,
            seed: 1,
            math: Default::default(),
            launch_hint: None,
        }
    }

    #[test]
    fn a_token_spans_the_lanes_of_one_subgroup() {
        // d128 bf16: 16 words; NVIDIA (32) gives 16 lanes of one word, lavapipe (8) 8 of two.
        assert_eq!(lanes(&gqa(128, DType::Bf16), 32), (16, 1));
        assert_eq!(lanes(&gqa(128, DType::Bf16), 8), (8, 2));
        assert_eq!(lanes(&gqa(128, DType::Fp8E4m3), 32), (8, 1));
        assert_eq!(lanes(&gqa(96, DType::Bf16), 32), (4, 3));
        // Heads per block shrink as a lane's share of a row grows.
        assert_eq!(kv_launch_plan(&gqa(128, DType::Bf16), 32).hb, 8);
        assert_eq!(kv_launch_plan(&gqa(128, DType::Fp8E4m3), 32).hb, 4);
    }

    #[test]
    fn covers_gqa_rows_of_whole_words() {
        assert!(kv_covers(&gqa(128, DType::Bf16), true, 32).is_ok());
        assert!(kv_covers(&gqa(128, DType::Bf16), false, 32).is_err());
        assert!(
            kv_covers(&gqa(67, DType::Bf16), true, 32)
                .unwrap_err()
                .contains("16-byte")
        );
        let mut mla = gqa(128, DType::Bf16);
        mla.attention = Attention::Mla;
        assert!(kv_covers(&mla, true, 32).unwrap_err().contains("GQA"));
    }

    #[test]
    fn validates_for_every_subgroup_size_and_dtype() {
        for sg in [4, 8, 32] {
            for dt in DType::WHOLE_BYTE {
                for dk in [64, 128] {
                    let w = gqa(dk, dt);
                    if kv_covers(&w, true, sg).is_err() {
                        continue;
                    }
                    let plan = kv_launch_plan(&w, sg);
                    let src = kv_source(&w, &plan, 4, 2, 2, sg);
                    if let Err(e) = crate::backend::wgpu::inspect::validate(&src, true) {
                        panic!("sg {sg} {dt} d{dk}: {e}");
                    }
                }
            }
        }
    }
}
