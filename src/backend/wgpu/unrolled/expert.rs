//! expert_gemv "unrolled": a workgroup of 256 owns 4 output rows of one touched expert and
//! takes its tokens 4 at a time; each thread streams 16-byte words of the 4 rows (4 loads in
//! flight) and applies each to the 4 tokens; subgroups then the workgroup sum the partials.

use super::{Code, DECODERS, MIN_SUBGROUP, decode};
use crate::backend::plan::{Const, ExpertPlan, expert_constants};
use crate::workload::{DType, ExpertGemv};

pub const EXPERT_WG: usize = 256;
pub const EXPERT_ROWS: usize = 4;
pub const EXPERT_TB: usize = 4;

/// Why the unrolled expert_gemv cannot run a point, if it cannot.
pub fn expert_covers(w: &ExpertGemv, subgroups: bool) -> Result<(), String> {
    if !subgroups {
        return Err("needs subgroup operations (the plain path runs simple)".into());
    }
    if !w.w_row_bytes().is_multiple_of(16) {
        return Err(format!(
            "d_in {} of {} is not a whole number of 16-byte words (simple covers it)",
            w.d_in, w.weight_dtype
        ));
    }
    if w.scale_block().is_some() {
        return Err("scales per row only (simple takes block scales)".into());
    }
    Ok(())
}

/// The unrolled expert_gemv shader (entry points `gemv` and `combine`), bindings as the
/// simple one's except `x`, read as `vec4<f32>`.
pub fn expert_source(
    w: &ExpertGemv,
    touched: usize,
    rows_per_chunk: usize,
    w_chunks: usize,
) -> String {
    let plan = ExpertPlan {
        wg: EXPERT_WG,
        rows: EXPERT_ROWS,
        tb: EXPERT_TB,
    };
    let words_per_vec = decode(w.weight_dtype, "w").len();
    let c = expert_constants(w, touched, &plan)
        .with("ROWS_PER_CHUNK", Const::U(rows_per_chunk as u64))
        .with("MAX_SG", Const::U((EXPERT_WG / MIN_SUBGROUP) as u64))
        .with("Q", Const::U(words_per_vec as u64))
        .with("NAN_BITS", Const::U(0x7fc0_0000));
    let mut s = c.wgsl();
    s.push_str(&super::super::shaders::chunk_accessor(
        "w",
        10..10 + w_chunks as u32,
    ));
    s.push_str(
        "
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> w_scale: array<f32>;
@group(0) @binding(2) var<storage, read> groups: array<u32>;
@group(0) @binding(3) var<storage, read> entry_weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> slot_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const WORDS: u32 = D_IN * ELEM_BITS / 128u;
var<workgroup> red: array<f32, ROWS * TB * MAX_SG>;
",
    );
    s.push_str(DECODERS);
    // The 4-bit codes' and group scales' decoders (with dtype.wgsl's, which they use).
    s.push_str(super::super::shaders::DTYPE_WGSL);
    s.push_str(super::super::shaders::FOURBIT_WGSL);
    s.push_str(&gemv_body(w.weight_dtype));
    s.push_str(super::super::shaders::EXPERT_COMBINE_WGSL);
    s
}

/// The gemv entry point, its per-(row, token) code written out.
fn gemv_body(dtype: DType) -> String {
    let (rows, tb) = (EXPERT_ROWS, EXPERT_TB);
    let mut c = Code::default();
    c.line("@compute @workgroup_size(WG)");
    c.line(
        "fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32,",
    );
    c.line("        @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,");
    c.line("        @builtin(subgroup_invocation_id) lane: u32) {");
    c.line("    let u = wg.y;");
    c.line("    let o0 = wg.x * ROWS;");
    c.line("    let e = groups[U + 1u + u];");
    c.line("    let first = groups[u];");
    c.line("    let last = groups[u + 1u];");
    c.line("    let entries = 2u * U + 1u;");
    // Rows past D_OUT read the last row (in range) and are never written.
    for r in 0..rows {
        c.line(format!(
            "    let g{r} = e * D_OUT + min(o0 + {r}u, D_OUT - 1u);\n    \
             let c{r} = g{r} / ROWS_PER_CHUNK;\n    \
             let b{r} = (g{r} % ROWS_PER_CHUNK) * WORDS;"
        ));
    }
    c.line("    for (var t0 = first; t0 < last; t0 += TB) {");
    c.line("        let nt = min(TB, last - t0);");
    // Tokens past the tile's end repeat its last (in range) and are never written.
    for t in 0..tb {
        c.line(format!(
            "        let x{t} = groups[entries + 2u * (t0 + min({t}u, nt - 1u))] * (D_IN / 4u);"
        ));
    }
    for r in 0..rows {
        for t in 0..tb {
            c.line(format!("        var a{r}_{t} = vec4<f32>(0.0);"));
        }
    }
    c.line("        for (var v = lid; v < WORDS; v += WG) {");
    // Every row's load first: four 16-byte loads in flight before any arithmetic.
    for r in 0..rows {
        c.line(format!("            let w{r} = w_vec(c{r}, b{r} + v);"));
    }
    let q = decode(dtype, "w").len();
    for t in 0..tb {
        for k in 0..q {
            c.line(format!(
                "            let x{t}_{k} = x[x{t} + v * Q + {k}u];"
            ));
        }
    }
    // 4-bit: the word's 32 values take one group scale (two for groups of 16) per row.
    let halves = dtype.groups().map(|g| if g.elems < 32 { 2 } else { 1 });
    for r in 0..rows {
        for h in 0..halves.unwrap_or(0) {
            c.line(format!(
                "            let gs{r}_{h} = group_scale(g{r}, v * 32u + {}u);",
                16 * h
            ));
        }
        for (k, d) in decode(dtype, &format!("w{r}")).iter().enumerate() {
            match halves {
                Some(n) => c.line(format!(
                    "            let d{r}_{k} = {d} * gs{r}_{};",
                    k * n / 8
                )),
                None => c.line(format!("            let d{r}_{k} = {d};")),
            }
            for t in 0..tb {
                c.line(format!("            a{r}_{t} += d{r}_{k} * x{t}_{k};"));
            }
        }
    }
    c.line("        }");
    // Subgroup sums, then one value per subgroup in workgroup memory, summed in order.
    for r in 0..rows {
        for t in 0..tb {
            let i = r * tb + t;
            c.line(format!(
                "        let s{i} = subgroupAdd((a{r}_{t}.x + a{r}_{t}.y) + (a{r}_{t}.z + a{r}_{t}.w));"
            ));
        }
    }
    c.line("        if (lane == 0u) {");
    for i in 0..rows * tb {
        c.line(format!("            red[{i}u * MAX_SG + sg] = s{i};"));
    }
    c.line("        }");
    c.line("        workgroupBarrier();");
    c.line("        if (lid < ROWS * TB) {");
    c.line("            let r = lid / TB;");
    c.line("            let tt = lid % TB;");
    c.line("            let o = o0 + r;");
    c.line("            if (tt < nt && o < D_OUT) {");
    c.line("                var dot = 0.0;");
    c.line("                for (var i = 0u; i < n_sg; i++) {");
    c.line("                    dot += red[lid * MAX_SG + i];");
    c.line("                }");
    c.line("                var sc = 1.0;");
    c.line("                if (SCALED) {");
    c.line("                    sc = w_scale[e * D_OUT + o];");
    c.line("                }");
    c.line("                if (TENSOR_SCALE) {");
    c.line("                    sc = w_scale[TS_WORD + e];");
    c.line("                }");
    c.line("                let slot = groups[entries + 2u * (t0 + tt) + 1u];");
    c.line("                slot_out[slot * D_OUT + o] = dot * sc * entry_weight[t0 + tt];");
    c.line("            }");
    c.line("        }");
    c.line("        workgroupBarrier();");
    c.line("    }");
    c.line("}");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::WeightScale;

    #[test]
    fn covers_whole_words_with_subgroups_only() {
        let mut w = ExpertGemv {
            experts: 4,
            top_k: 2,
            batch: 3,
            d_in: 64,
            d_out: 8,
            weight_dtype: DType::Bf16,
            weight_scale: WeightScale::Row,
            routing: crate::workload::Routing::Uniform,
            topk_ids: vec![0, 1, 2, 3, 0, 2],
            seed: 1,
            math: Default::default(),
        };
        assert!(expert_covers(&w, true).is_ok());
        assert!(expert_covers(&w, false).unwrap_err().contains("subgroup"));
        w.d_in = 1001;
        assert!(expert_covers(&w, true).unwrap_err().contains("16-byte"));
    }
}
