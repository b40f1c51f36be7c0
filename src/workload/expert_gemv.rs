//! expert_gemv: one MoE layer's expert matrices applied to a decode batch, tokens grouped by
//! expert so each touched expert's weights cross the memory bus once per step.

use super::check::{RefOutput, Reference};
use super::dtype::{DType, FP8_E4M3_MAX};
use super::fourbit::E2M1_MAX;
use super::generate::{self, rng_for};
use super::math::Math;
use super::tensor::{Elem, Tensor, TensorSet};
use super::{ByteTerm, OutputSpec, dot_f64};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::axes::{self, AxisDecl, IMPL, MATH, MAX_COUNT, MAX_DIM};

pub const SPLIT: AxisDecl = axes::split(&["none", "experts", "tensor"]);
pub const EXPERTS: AxisDecl = AxisDecl::count("experts", MAX_DIM, "routed experts in the layer");
pub const TOP_K: AxisDecl = AxisDecl::count("top_k", MAX_DIM, "experts each token picks");
pub const BATCH: AxisDecl = AxisDecl::count("batch", MAX_COUNT, "tokens in the step");
pub const D_IN: AxisDecl = AxisDecl::count(
    "d_in",
    MAX_COUNT,
    "input dimension (a whole number of groups)",
);
pub const D_OUT: AxisDecl = AxisDecl::count("d_out", MAX_COUNT, "output rows per expert");
pub const WEIGHT_DTYPE: AxisDecl = AxisDecl::named(
    "weight_dtype",
    "bf16",
    &[
        "f32",
        "f16",
        "bf16",
        "fp8_e4m3",
        "int4_g32",
        "int4_g128",
        "mxfp4",
        "nvfp4",
    ],
    "how the expert weights are stored",
);
pub const ROUTING: AxisDecl = AxisDecl::named(
    "routing",
    "uniform",
    &["uniform", "{zipf: 1.2}"],
    "which experts tokens pick (or {ids: [[e, ...], ...]}, one list per token)",
);
pub const WEIGHT_SCALE: AxisDecl = AxisDecl::named(
    "weight_scale",
    "row",
    &["row", "block128"],
    "fp8's scales: per output row or per 128x128 block",
);

/// expert_gemv's axes, the first declared varying slowest.
pub const AXES: &[&AxisDecl] = &[
    &SPLIT,
    &IMPL,
    &EXPERTS,
    &TOP_K,
    &BATCH,
    &D_IN,
    &D_OUT,
    &WEIGHT_DTYPE,
    &ROUTING,
    &WEIGHT_SCALE,
    &MATH,
];

/// How tokens choose their top-k experts (seeded, distinct per token).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// k distinct experts uniformly at random.
    Uniform,
    /// k distinct experts, expert e drawn with weight 1 / (e + 1)^s (without replacement).
    Zipf(f64),
    /// Given ids, one row of k per token.
    Ids(Vec<Vec<u32>>),
}

/// How fp8 weights carry the scale that dequantises them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightScale {
    /// One f32 per output row.
    #[default]
    Row,
    /// One f32 per block of 128 output rows x 128 input columns (the last blocks partial),
    /// as DeepSeek-V3 and its descendants ship fp8 experts.
    Block128,
}

/// The edge of a `block128` scale block.
pub const SCALE_BLOCK: usize = 128;

#[derive(Clone, Debug)]
pub struct ExpertGemv {
    pub experts: usize,
    pub top_k: usize,
    pub batch: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub weight_dtype: DType,
    /// The scales' granularity; only scaled dtypes (fp8) have scales.
    pub weight_scale: WeightScale,
    pub routing: Routing,
    /// Resolved routing: [batch, top_k] expert ids.
    pub topk_ids: Vec<u32>,
    pub seed: u64,
    pub math: Math,
}

const W_AMPLITUDE: f32 = 1.0;

impl ExpertGemv {
    /// Resolve routing to ids. Errors name what is wrong with explicit ids.
    pub fn route(
        routing: &Routing,
        experts: usize,
        top_k: usize,
        batch: usize,
        seed: u64,
    ) -> Result<Vec<u32>, String> {
        let mut rng = rng_for(seed, 30, 0);
        let mut ids = Vec::with_capacity(batch * top_k);
        match routing {
            Routing::Uniform => {
                for _ in 0..batch {
                    let pick = rand::seq::index::sample(&mut rng, experts, top_k);
                    ids.extend(pick.iter().map(|e| e as u32));
                }
            }
            Routing::Zipf(s) => {
                let s = *s;
                for _ in 0..batch {
                    let pick = rand::seq::index::sample_weighted(
                        &mut rng,
                        experts,
                        |e| 1.0 / ((e + 1) as f64).powf(s),
                        top_k,
                    )
                    .map_err(|e| format!("zipf routing with s = {s}: {e}"))?;
                    ids.extend(pick.iter().map(|e| e as u32));
                }
            }
            Routing::Ids(rows) => {
                if rows.len() != batch {
                    return Err(format!("{} rows of ids for a batch of {batch}", rows.len()));
                }
                for (t, row) in rows.iter().enumerate() {
                    if row.len() != top_k {
                        return Err(format!("token {t} has {} ids, top_k is {top_k}", row.len()));
                    }
                    for (j, &e) in row.iter().enumerate() {
                        if e as usize >= experts {
                            return Err(format!("token {t}: expert id {e} >= experts ({experts})"));
                        }
                        if row[..j].contains(&e) {
                            return Err(format!(
                                "token {t}: expert id {e} chosen twice (ids must be distinct per token)"
                            ));
                        }
                    }
                    ids.extend_from_slice(row);
                }
            }
        }
        Ok(ids)
    }

    /// Distinct experts touched in this step, ascending.
    pub fn touched(&self) -> Vec<u32> {
        let mut seen = vec![false; self.experts];
        for &e in &self.topk_ids {
            seen[e as usize] = true;
        }
        (0..self.experts as u32)
            .filter(|&e| seen[e as usize])
            .collect()
    }

    /// The routing grouped by expert, as the GPU kernels read it: `groups` is
    /// [U + 1 offsets, U expert ids, then (token, slot = t * k + j) per entry] and `weights`
    /// the routing weight of each entry. A GPU backend uploads these in place of
    /// topk_ids / topk_weights (the same bytes: 8 per (token, choice)).
    pub fn grouped(&self, inputs: &TensorSet) -> (Vec<u32>, Vec<f32>) {
        let ids = inputs.expect("topk_ids").as_i32();
        let rw = inputs.expect("topk_weights").as_f32();
        let touched = self.touched();
        let mut offsets = vec![0u32];
        let (mut pairs, mut weights) = (Vec::new(), Vec::new());
        for &e in &touched {
            for (slot, &id) in ids.iter().enumerate() {
                if id as u32 == e {
                    pairs.extend([(slot / self.top_k) as u32, slot as u32]);
                    weights.push(rw[slot]);
                }
            }
            offsets.push(weights.len() as u32);
        }
        let mut groups = offsets;
        groups.extend(&touched);
        groups.extend(pairs);
        (groups, weights)
    }

    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({
            "experts": self.experts,
            "top_k": self.top_k,
            "batch": self.batch,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "weight_dtype": self.weight_dtype,
            "weight_scale": self.scale_shape().map(|_| self.weight_scale),
            "routing": match &self.routing {
                Routing::Ids(_) => serde_json::json!("ids"),
                r => serde_json::to_value(r).unwrap_or_default(),
            },
            "experts_touched": self.touched().len(),
            "math": self.math,
        })
    }

    pub fn inputs(&self) -> TensorSet {
        let (e, t, k, di, dout) = (self.experts, self.batch, self.top_k, self.d_in, self.d_out);
        let f32s = |name, shape: Vec<usize>, stream, lo, hi| {
            generate::uniform(name, DType::F32, shape, (self.seed, stream), lo, hi)
        };
        let mut set = vec![f32s("x", vec![t, di], 31, -1.0, 1.0)];
        let dt = self.weight_dtype;
        let w_shape = vec![e, dout, di];
        if let Some(g) = dt.groups() {
            // Group scales from each group's own values; nvfp4's per-expert f32 is drawn so
            // that the block scales stay inside e4m3's range.
            let tensor = if g.tensor_scale {
                let unit = W_AMPLITUDE / (E2M1_MAX * FP8_E4M3_MAX);
                let t = f32s("w_scale_2", vec![e], 35, unit, 2.0 * unit);
                set.push(t.clone());
                t.as_f32()
            } else {
                vec![]
            };
            let (w, scales) = generate::quantized(
                ("w", "w_scale"),
                dt,
                w_shape,
                (self.seed, 32),
                (-W_AMPLITUDE, W_AMPLITUDE),
                &tensor,
            );
            set.extend([w, scales]);
        } else if dt.is_scaled() {
            // Stored values span fp8's full range; a per-row scale carries each row's own
            // magnitude.
            let max = dt.max_finite();
            set.push(generate::uniform(
                "w",
                dt,
                w_shape,
                (self.seed, 32),
                -max,
                max,
            ));
            let shape = self.scale_shape().expect("a scaled dtype");
            let mut scales = f32s("w_scale", shape.clone(), 33, 0.25, 1.0).as_f32();
            scales.iter_mut().for_each(|a| *a /= max);
            set.push(Tensor::from_f32("w_scale", shape, &scales));
        } else {
            set.push(generate::uniform(
                "w",
                dt,
                w_shape,
                (self.seed, 32),
                -W_AMPLITUDE,
                W_AMPLITUDE,
            ));
        }
        let ids: Vec<i32> = self.topk_ids.iter().map(|&i| i as i32).collect();
        set.push(Tensor::from_i32("topk_ids", vec![t, k], &ids));
        // Routing weights: positive, summing to 1 per token, like a softmax over the top-k.
        let mut rw = f32s("topk_weights", vec![t, k], 34, 0.1, 1.0).as_f32();
        for row in rw.chunks_mut(k) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= s);
        }
        set.push(Tensor::from_f32("topk_weights", vec![t, k], &rw));
        TensorSet(set)
    }

    pub fn input_bytes(&self) -> u64 {
        let (e, t, k, di, dout) = (
            self.experts as u64,
            self.batch as u64,
            self.top_k as u64,
            self.d_in as u64,
            self.d_out as u64,
        );
        let scales = self
            .scale_shape()
            .map_or(0, |s| s.iter().product::<usize>() as u64 * 4);
        let groups = self.weight_dtype.groups().map_or(0, |g| {
            e * dout * self.group_scale_row_bytes() + if g.tensor_scale { e * 4 } else { 0 }
        });
        e * dout * self.w_row_bytes() + scales + groups + t * di * 4 + t * k * 8
    }

    pub fn outputs(&self) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "y",
            elem: Elem::Float(DType::F32),
            shape: vec![self.batch, self.d_out],
        }]
    }

    pub fn byte_table(&self) -> Vec<ByteTerm> {
        let u = self.touched().len() as u64;
        let (t, k, di, dout) = (
            self.batch as u64,
            self.top_k as u64,
            self.d_in as u64,
            self.d_out as u64,
        );
        let row = match self.weight_dtype.groups() {
            None => "d_in x sizeof(w)",
            Some(_) => "d_in / 2 (4-bit codes, two per byte)",
        };
        let mut table = vec![ByteTerm {
            tensor: "w",
            bytes: u * dout * self.w_row_bytes(),
            rule: format!("U x d_out x {row}, U = {u} distinct experts touched, each read once"),
        }];
        if let Some(g) = self.weight_dtype.groups() {
            table.push(ByteTerm {
                tensor: "w_scale",
                bytes: u * dout * self.group_scale_row_bytes(),
                rule: format!(
                    "U x d_out x d_in / {} x {} ({} scale per group of {})",
                    g.elems,
                    g.scale.bytes(),
                    g.scale.name(),
                    g.elems
                ),
            });
            if g.tensor_scale {
                table.push(ByteTerm {
                    tensor: "w_scale_2",
                    bytes: u * 4,
                    rule: "U x 4 (one f32 per expert)".into(),
                });
            }
        }
        match (self.scale_shape(), self.weight_scale) {
            (None, _) => {}
            (Some(_), WeightScale::Row) => table.push(ByteTerm {
                tensor: "w_scale",
                bytes: u * dout * 4,
                rule: "U x d_out x 4".into(),
            }),
            (Some(s), WeightScale::Block128) => table.push(ByteTerm {
                tensor: "w_scale",
                bytes: u * (s[1] * s[2]) as u64 * 4,
                rule: format!(
                    "U x ceil(d_out / {SCALE_BLOCK}) x ceil(d_in / {SCALE_BLOCK}) x 4 \
                     (one per {SCALE_BLOCK} x {SCALE_BLOCK} block)"
                ),
            }),
        }
        table.push(ByteTerm {
            tensor: "x",
            bytes: t * di * 4,
            rule: "T x d_in x 4".into(),
        });
        table.push(ByteTerm {
            tensor: "y",
            bytes: t * dout * 4,
            rule: "T x d_out x 4 (written)".into(),
        });
        table.push(ByteTerm {
            tensor: "topk_ids",
            bytes: t * k * 4,
            rule: "T x k x 4".into(),
        });
        table.push(ByteTerm {
            tensor: "topk_weights",
            bytes: t * k * 4,
            rule: "T x k x 4".into(),
        });
        table
    }

    /// The edge of a square scale block, where the weights have scales per block (fp8 with
    /// `weight_scale: block128`); None for scales per row and for unscaled dtypes.
    pub fn scale_block(&self) -> Option<usize> {
        (self.weight_dtype.is_scaled() && self.weight_scale == WeightScale::Block128)
            .then_some(SCALE_BLOCK)
    }

    /// The shape of `w_scale`, for a scaled dtype: [experts, d_out] per row, or
    /// [experts, row blocks, column blocks] per block.
    pub fn scale_shape(&self) -> Option<Vec<usize>> {
        let (e, dout, di) = (self.experts, self.d_out, self.d_in);
        match self.scale_block() {
            Some(b) => Some(vec![e, dout.div_ceil(b), di.div_ceil(b)]),
            None => self.weight_dtype.is_scaled().then(|| vec![e, dout]),
        }
    }

    /// Where the f32 scale of weight (expert `e`, row `o`, column `i`) sits in `dot_scales`.
    pub fn scale_index(&self, e: usize, o: usize, i: usize) -> usize {
        match self.scale_block() {
            None if self.weight_dtype.groups().is_some() => e,
            None => e * self.d_out + o,
            Some(b) => {
                let (bo, bi) = (self.d_out.div_ceil(b), self.d_in.div_ceil(b));
                (e * bo + o / b) * bi + i / b
            }
        }
    }

    /// Bytes of one row's group scales (4-bit dtypes).
    pub fn group_scale_row_bytes(&self) -> u64 {
        self.weight_dtype
            .groups()
            .map_or(0, |g| (self.d_in / g.elems * g.scale.bytes()) as u64)
    }

    /// The f32 scales a row's dot is multiplied by: fp8's `w_scale` (per row or per block),
    /// nvfp4's `w_scale_2` (per expert); None for the rest.
    pub fn dot_scales<'a>(&self, inputs: &'a TensorSet) -> Option<std::borrow::Cow<'a, [f32]>> {
        let name = match self.weight_dtype.groups() {
            Some(g) if g.tensor_scale => "w_scale_2",
            Some(_) => return None,
            None if self.weight_dtype.is_scaled() => "w_scale",
            None => return None,
        };
        Some(inputs.expect(name).view::<f32>())
    }

    /// Decode row `o` of expert `e` into `out` (d_in values; 4-bit: code x group scale).
    pub fn decode_row(&self, inputs: &TensorSet, (e, o): (usize, usize), out: &mut [f32]) {
        let start = (e * self.d_out + o) * self.d_in;
        let w = &inputs.expect("w").bytes;
        match self.weight_dtype.groups() {
            None => self.weight_dtype.decode_slice(w, start, out),
            Some(g) => g.decode(w, &inputs.expect("w_scale").bytes, start, out),
        }
    }

    /// The dot of decoded row `o` of expert `e` with `x`, times its f32 scales (`dot_scales`),
    /// by `dot` (f64 in the oracle, f32 on the cpu backend): per row or expert, the dot times
    /// that scale; per block, each 128-column block's dot times that block's scale, summed.
    pub fn scaled_dot<X, R>(
        &self,
        (row, x): (&[f32], &[X]),
        scales: Option<&[f32]>,
        (e, o): (usize, usize),
        dot: impl Fn(&[f32], &[X]) -> R,
    ) -> R
    where
        R: Copy + From<f32> + std::ops::Mul<Output = R> + std::iter::Sum,
    {
        let Some(s) = scales else {
            return dot(row, x);
        };
        let scale = |i| R::from(s[self.scale_index(e, o, i)]);
        match self.weight_scale {
            WeightScale::Row => dot(row, x) * scale(0),
            WeightScale::Block128 => row
                .chunks(SCALE_BLOCK)
                .zip(x.chunks(SCALE_BLOCK))
                .enumerate()
                .map(|(b, (r, x))| dot(r, x) * scale(b * SCALE_BLOCK))
                .sum(),
        }
    }

    /// Bytes of one stored weight row's codes (d_in values; 4-bit: without the group scales).
    pub fn w_row_bytes(&self) -> u64 {
        self.weight_dtype.bytes_for(self.d_in) as u64
    }

    /// 2 x d_out x d_in per (token, chosen expert).
    pub fn flops(&self) -> u64 {
        (self.batch * self.top_k) as u64 * 2 * (self.d_out * self.d_in) as u64
    }

    /// y in f64 on the decoded stored weights; at `math: bf16` also the same with x rounded.
    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        let y = self.apply_f64(inputs, Math::F32);
        let rounded = (self.math != Math::F32).then(|| self.apply_f64(inputs, self.math));
        Reference(vec![RefOutput::float("y", y, rounded)])
    }

    /// Every expert slot in f64: one task per output row decodes that row of each touched
    /// expert once and applies it to every token that chose the expert.
    fn apply_f64(&self, inputs: &TensorSet, math: Math) -> Vec<f64> {
        let x: Vec<f64> = inputs
            .expect("x")
            .view::<f32>()
            .iter()
            .map(|&v| math.operand(v) as f64)
            .collect();
        let scales = self.dot_scales(inputs);
        let rw = inputs.expect("topk_weights").view::<f32>();
        let (t_count, k, di, dout) = (self.batch, self.top_k, self.d_in, self.d_out);
        let mut slots_of = vec![Vec::new(); self.experts];
        for (slot, &e) in self.topk_ids.iter().enumerate() {
            slots_of[e as usize].push(slot);
        }
        let touched = self.touched();
        // rows[o][slot]: the dot of row o of the slot's expert with its token, scaled.
        let rows: Vec<Vec<f64>> = (0..dout)
            .into_par_iter()
            .map(|o| {
                let mut row = vec![0f32; di];
                let mut slots = vec![0f64; t_count * k];
                for &e in &touched {
                    let e = e as usize;
                    self.decode_row(inputs, (e, o), &mut row);
                    for &slot in &slots_of[e] {
                        let t = slot / k;
                        let x = &x[t * di..(t + 1) * di];
                        slots[slot] =
                            self.scaled_dot((&row, x), scales.as_deref(), (e, o), dot_f64);
                    }
                }
                slots
            })
            .collect();
        let mut y = vec![0f64; t_count * dout];
        for (o, slots) in rows.iter().enumerate() {
            for t in 0..t_count {
                y[t * dout + o] = (0..k)
                    .map(|j| rw[t * k + j] as f64 * slots[t * k + j])
                    .sum();
            }
        }
        y
    }
}
