//! expert_gemv: one MoE layer's expert matrices applied to a decode batch, tokens grouped by
//! expert so each touched expert's weights cross the memory bus once per step.

use super::check::{RefOutput, Reference};
use super::dtype::DType;
use super::tensor::{Elem, Tensor, TensorSet};
use super::{ByteTerm, OutputSpec, encode_par, rng_for, uniform_f32};
use rayon::prelude::*;
use serde::Serialize;

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

#[derive(Clone, Debug)]
pub struct ExpertGemv {
    pub experts: usize,
    pub top_k: usize,
    pub batch: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub weight_dtype: DType,
    pub routing: Routing,
    /// Resolved routing: [batch, top_k] expert ids.
    pub topk_ids: Vec<u32>,
    pub seed: u64,
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
            "routing": match &self.routing {
                Routing::Ids(_) => serde_json::json!("ids"),
                r => serde_json::to_value(r).unwrap_or_default(),
            },
            "experts_touched": self.touched().len(),
        })
    }

    pub fn inputs(&self) -> TensorSet {
        let (e, t, k, di, dout) = (self.experts, self.batch, self.top_k, self.d_in, self.d_out);
        let x = uniform_f32(self.seed, 31, t * di, -1.0, 1.0);
        let mut set = vec![Tensor::from_f32("x", vec![t, di], &x)];
        let mut w = uniform_f32(self.seed, 32, e * dout * di, -W_AMPLITUDE, W_AMPLITUDE);
        if self.weight_dtype.is_scaled() {
            // Per-row scales: each row gets its own magnitude, quantised to use fp8's range.
            let row_amp = uniform_f32(self.seed, 33, e * dout, 0.25, 1.0);
            let scales: Vec<f32> = row_amp
                .iter()
                .map(|a| a / self.weight_dtype.max_finite())
                .collect();
            // Stored values span fp8's full range; the row scale carries the magnitude.
            let max = self.weight_dtype.max_finite();
            w.par_iter_mut().for_each(|x| *x *= max);
            set.push(encode_par("w", self.weight_dtype, vec![e, dout, di], &w));
            set.push(Tensor::from_f32("w_scale", vec![e, dout], &scales));
        } else {
            set.push(encode_par("w", self.weight_dtype, vec![e, dout, di], &w));
        }
        let ids: Vec<i32> = self.topk_ids.iter().map(|&i| i as i32).collect();
        set.push(Tensor::from_i32("topk_ids", vec![t, k], &ids));
        // Routing weights: positive, summing to 1 per token, like a softmax over the top-k.
        let mut rw = uniform_f32(self.seed, 34, t * k, 0.1, 1.0);
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
        let scales = if self.weight_dtype.is_scaled() {
            e * dout * 4
        } else {
            0
        };
        e * dout * di * self.weight_dtype.size() as u64 + scales + t * di * 4 + t * k * 8
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
        let mut table = vec![ByteTerm {
            tensor: "w",
            bytes: u * dout * di * self.weight_dtype.size() as u64,
            rule: format!(
                "U x d_out x d_in x sizeof(w), U = {u} distinct experts touched, each read once"
            ),
        }];
        if self.weight_dtype.is_scaled() {
            table.push(ByteTerm {
                tensor: "w_scale",
                bytes: u * dout * 4,
                rule: "U x d_out x 4".into(),
            });
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

    /// 2 x d_out x d_in per (token, chosen expert).
    pub fn flops(&self) -> u64 {
        (self.batch * self.top_k) as u64 * 2 * (self.d_out * self.d_in) as u64
    }

    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        let x = inputs.expect("x").decode_f64();
        let w = inputs.expect("w");
        let scales = inputs.get("w_scale").map(|s| s.decode_f64());
        let rw = inputs.expect("topk_weights").decode_f64();
        let ids = inputs.expect("topk_ids").as_i32();
        let (k, di, dout) = (self.top_k, self.d_in, self.d_out);
        let dt = self.weight_dtype;
        let y: Vec<f64> = (0..self.batch * dout)
            .into_par_iter()
            .map(|idx| {
                let (t, o) = (idx / dout, idx % dout);
                let mut acc = 0f64;
                for j in 0..k {
                    let e = ids[t * k + j] as usize;
                    let row = (e * dout + o) * di;
                    let s = scales.as_ref().map_or(1.0, |s| s[e * dout + o]);
                    let mut dot = 0f64;
                    for i in 0..di {
                        dot += dt.decode_at(&w.bytes, row + i) as f64 * x[t * di + i];
                    }
                    acc += rw[t * k + j] * dot * s;
                }
                acc
            })
            .collect();
        Reference(vec![RefOutput {
            name: "y",
            values: y,
            exact: false,
        }])
    }
}
