//! A model preset (experiments/models/*.yaml): the architecture numbers from a model's
//! config.json, and what follows from them: parameters, KV bytes per token, FLOPs per token.

use super::{DType, bytes_per_value};
use crate::error::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionSpec {
    Gqa {
        heads: u64,
        kv_heads: u64,
        head_dim: u64,
        /// Layers with a sliding window cache at most this many tokens.
        #[serde(default)]
        sliding_window: Option<u64>,
        /// Every n-th layer (from layer 0) uses the window.
        #[serde(default)]
        sliding_every: Option<u64>,
    },
    Mla {
        heads: u64,
        #[serde(default)]
        q_lora_rank: Option<u64>,
        kv_lora_rank: u64,
        rope_dim: u64,
        qk_nope_dim: u64,
        v_head_dim: u64,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    pub experts: u64,
    pub top_k: u64,
    pub shared: u64,
    /// Intermediate size of one expert (gate, up and down: 3 x hidden x this).
    pub intermediate: u64,
}

/// A model as its public config.json describes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPreset {
    pub name: String,
    pub layers: u64,
    pub hidden: u64,
    pub vocab: u64,
    pub attention: AttentionSpec,
    /// Layers with a dense MLP (the first ones); the rest are MoE when `moe` is given.
    pub dense_layers: u64,
    #[serde(default)]
    pub dense_intermediate: Option<u64>,
    #[serde(default)]
    pub moe: Option<MoeSpec>,
    /// `weights: bf16` for every tensor, or `weights: {experts: int4_g32, rest: bf16}`.
    pub weights: WeightFormats,
    pub kv: DType,
}

/// The dtype of each class of weight: the routed experts, and the rest (attention, dense and
/// shared-expert MLPs). Embedding and lm_head are counted in bf16 whatever these say.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WeightFormats {
    pub experts: DType,
    pub rest: DType,
}

/// `weights:` as a file gives it: one dtype (a wrong name gets its did-you-mean), or one per
/// class with both classes named.
impl<'de> Deserialize<'de> for WeightFormats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PerClass {
            experts: DType,
            rest: DType,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WeightFormats;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a dtype, or {experts: DTYPE, rest: DTYPE}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<WeightFormats, E> {
                s.parse().map(WeightFormats::all).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<WeightFormats, A::Error> {
                let p = PerClass::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(WeightFormats {
                    experts: p.experts,
                    rest: p.rest,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl WeightFormats {
    pub fn all(d: DType) -> WeightFormats {
        WeightFormats {
            experts: d,
            rest: d,
        }
    }

    /// `bf16`, or `experts int4_g32, rest bf16`.
    pub fn name(&self) -> String {
        if self.experts == self.rest {
            self.rest.name().to_string()
        } else {
            format!("experts {}, rest {}", self.experts, self.rest)
        }
    }

    /// `--weights`: a dtype for every class, or `experts=D,rest=D` (either may be left out,
    /// keeping the preset's), applied over `preset`.
    pub fn parse_over(text: &str, preset: WeightFormats) -> Result<WeightFormats, String> {
        if !text.contains('=') {
            return text.parse().map(WeightFormats::all);
        }
        let mut out = preset;
        for part in text.split(',') {
            let (class, dtype) = part.split_once('=').ok_or_else(|| {
                format!("'{part}' in --weights: expected CLASS=DTYPE (experts=..., rest=...)")
            })?;
            let d: DType = dtype.trim().parse()?;
            match class.trim() {
                "experts" => out.experts = d,
                "rest" => out.rest = d,
                other => {
                    return Err(format!(
                        "unknown weight class '{other}' in --weights (experts or rest)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

impl ModelPreset {
    /// One line of what it is: attention, experts, total and active parameters, dtypes.
    pub fn summary(&self) -> String {
        let attention = match &self.attention {
            AttentionSpec::Gqa {
                heads,
                kv_heads,
                head_dim,
                ..
            } => {
                format!("GQA {heads}/{kv_heads} d{head_dim}")
            }
            AttentionSpec::Mla {
                heads,
                kv_lora_rank,
                rope_dim,
                ..
            } => {
                format!("MLA {heads} heads {kv_lora_rank}+{rope_dim}")
            }
        };
        let moe = self.moe.as_ref().map_or("dense".to_string(), |m| {
            format!("MoE {} experts top-{}", m.experts, m.top_k)
        });
        format!(
            "{} layers, {attention}, {moe}, {:.0}B params ({:.0}B active), weights {}, KV {}",
            self.layers,
            self.total_params() / 1e9,
            self.active_params() / 1e9,
            self.weights.name(),
            self.kv.name()
        )
    }

    /// Parameters of one layer's attention projections.
    pub fn attention_params(&self) -> f64 {
        let h = self.hidden as f64;
        match &self.attention {
            AttentionSpec::Gqa {
                heads,
                kv_heads,
                head_dim,
                ..
            } => {
                let (hq, hkv, d) = (*heads as f64, *kv_heads as f64, *head_dim as f64);
                h * hq * d + 2.0 * h * hkv * d + hq * d * h
            }
            AttentionSpec::Mla {
                heads,
                q_lora_rank,
                kv_lora_rank,
                rope_dim,
                qk_nope_dim,
                v_head_dim,
            } => {
                let (hq, r, rope, nope, v) = (
                    *heads as f64,
                    *kv_lora_rank as f64,
                    *rope_dim as f64,
                    *qk_nope_dim as f64,
                    *v_head_dim as f64,
                );
                let q = match q_lora_rank {
                    Some(ql) => h * *ql as f64 + *ql as f64 * hq * (nope + rope),
                    None => h * hq * (nope + rope),
                };
                q + h * (r + rope) + r * hq * (nope + v) + hq * v * h
            }
        }
    }

    pub(super) fn moe_layers(&self) -> f64 {
        if self.moe.is_some() {
            (self.layers - self.dense_layers.min(self.layers)) as f64
        } else {
            0.0
        }
    }

    /// Parameters of one routed expert: gate, up and down, hidden x intermediate each.
    pub fn expert_params(&self) -> f64 {
        self.moe
            .as_ref()
            .map_or(0.0, |m| 3.0 * self.hidden as f64 * m.intermediate as f64)
    }

    pub(super) fn dense_mlp_params(&self) -> f64 {
        3.0 * self.hidden as f64 * self.dense_intermediate.unwrap_or(0) as f64
    }

    /// Every parameter (embedding and lm_head counted separately).
    pub fn total_params(&self) -> f64 {
        let l = self.layers as f64;
        let moe = self.moe.as_ref().map_or(0.0, |m| {
            self.moe_layers()
                * ((m.experts + m.shared) as f64 * self.expert_params()
                    + (self.hidden * m.experts) as f64)
        });
        l * self.attention_params()
            + self.dense_layers as f64 * self.dense_mlp_params()
            + moe
            + 2.0 * (self.vocab * self.hidden) as f64
    }

    /// Parameters one token multiplies by (embedding lookup excluded, lm_head included).
    pub fn active_params(&self) -> f64 {
        let l = self.layers as f64;
        let moe = self.moe.as_ref().map_or(0.0, |m| {
            self.moe_layers()
                * ((m.top_k + m.shared) as f64 * self.expert_params()
                    + (self.hidden * m.experts) as f64)
        });
        l * self.attention_params()
            + self.dense_layers as f64 * self.dense_mlp_params()
            + moe
            + (self.vocab * self.hidden) as f64
    }

    /// Tokens each layer's cache holds at `context` (sliding-window layers hold fewer).
    pub(super) fn cached_tokens(&self, layer: u64, context: u64) -> u64 {
        match &self.attention {
            AttentionSpec::Gqa {
                sliding_window: Some(w),
                sliding_every: Some(n),
                ..
            } if *n > 0 && layer.is_multiple_of(*n) => context.min(*w),
            _ => context,
        }
    }

    /// Bytes one cached token occupies in one layer.
    pub fn kv_bytes_per_token_layer(&self, kv: DType) -> f64 {
        match &self.attention {
            AttentionSpec::Gqa {
                kv_heads, head_dim, ..
            } => 2.0 * (*kv_heads * *head_dim) as f64 * bytes_per_value(kv),
            AttentionSpec::Mla {
                kv_lora_rank,
                rope_dim,
                ..
            } => (*kv_lora_rank + *rope_dim) as f64 * bytes_per_value(kv),
        }
    }

    /// FLOPs of attention per cached token per layer per sequence (QK and PV over all heads;
    /// MLA in absorbed form: the latent is both K and V).
    pub(super) fn attention_flops_per_token(&self) -> f64 {
        match &self.attention {
            AttentionSpec::Gqa {
                heads, head_dim, ..
            } => (*heads * 2 * 2 * *head_dim) as f64,
            AttentionSpec::Mla {
                heads,
                kv_lora_rank,
                rope_dim,
                ..
            } => (*heads * 2 * (2 * *kv_lora_rank + *rope_dim)) as f64,
        }
    }
}

/// The model preset `name` (see `profiles::find`: a file in `start` or above, a path, or the
/// built-in one).
pub fn find_model(start: &Path, name: &str) -> anyhow::Result<ModelPreset> {
    let f = crate::profiles::find(crate::profiles::Kind::Model, start, name)
        .map_err(anyhow::Error::msg)?;
    Ok(serde_saphyr::from_str(&f.text)
        .map_err(|e| ConfigError::from_yaml(&f.label, &f.text, &e))?)
}
