//! kv_decode: one decode step of attention over a paged KV cache (GQA, or MLA absorbed).

use super::check::{RefOutput, Reference};
use super::dtype::DType;
use super::generate::{self, rng_for};
use super::math::Math;
use super::tensor::{Elem, Tensor, TensorSet};
use super::{ByteTerm, OutputSpec, dot_f64};
use rand::RngExt;
use rayon::prelude::*;
use serde::Serialize;

use super::axes::{self, AxisDecl, AxisDefault, IMPL, MATH, MAX_COUNT, MAX_DIM};

pub const SPLIT: AxisDecl = axes::split(&["none", "heads", "sequence"]);
pub const ATTENTION: AxisDecl = AxisDecl::named(
    "attention",
    "gqa",
    &["gqa", "mla"],
    "grouped-query or latent attention (one per run: not swept)",
);
pub const BATCH: AxisDecl = AxisDecl::count("batch", MAX_COUNT, "sequences decoded in the step");
pub const Q_HEADS: AxisDecl = AxisDecl::count("q_heads", MAX_DIM, "query heads");
pub const KV_HEADS: AxisDecl =
    AxisDecl::count("kv_heads", MAX_DIM, "KV heads (q_heads a multiple)");
pub const HEAD_DIM: AxisDecl = AxisDecl::count("head_dim", MAX_DIM, "K head dimension");
pub const V_HEAD_DIM: AxisDecl =
    AxisDecl::count("v_head_dim", MAX_DIM, "V head dimension").or(AxisDefault::Derived("head_dim"));
pub const KV_LORA_RANK: AxisDecl = AxisDecl::count(
    "kv_lora_rank",
    MAX_DIM,
    "MLA latent rank (V is its first entries)",
)
.or(AxisDefault::Value("512"));
pub const ROPE_DIM: AxisDecl = AxisDecl {
    range: Some((0, MAX_DIM)),
    ..AxisDecl::count(
        "rope_dim",
        MAX_DIM,
        "MLA decoupled RoPE dims per cached token",
    )
    .or(AxisDefault::Value("64"))
};
pub const CONTEXT: AxisDecl = AxisDecl::count("context", MAX_COUNT, "tokens cached per sequence");
pub const LENGTHS: AxisDecl = AxisDecl::named(
    "lengths",
    "equal",
    &["equal", "random"],
    "every sequence `context` long, or seeded lengths in 1..=context",
);
pub const PAGE_SIZE: AxisDecl =
    AxisDecl::count("page_size", 1 << 20, "tokens per cache page").or(AxisDefault::Value("16"));
pub const KV_DTYPE: AxisDecl = AxisDecl::named(
    "kv_dtype",
    "bf16",
    &["f32", "f16", "bf16", "fp8_e4m3"],
    "how the cache is stored",
);
pub const SCALE: AxisDecl = AxisDecl {
    name: "scale",
    default: AxisDefault::Derived("1/sqrt(head_dim)"),
    range: None,
    values: &[],
    about: "the softmax scale (positive)",
};

/// GQA's axes, the first declared varying slowest.
pub const GQA_AXES: &[&AxisDecl] = &[
    &SPLIT,
    &IMPL,
    &ATTENTION,
    &BATCH,
    &Q_HEADS,
    &KV_HEADS,
    &HEAD_DIM,
    &V_HEAD_DIM,
    &CONTEXT,
    &LENGTHS,
    &PAGE_SIZE,
    &KV_DTYPE,
    &SCALE,
    &MATH,
];
/// MLA's axes: one latent head of kv_lora_rank + rope_dim in place of GQA's heads.
pub const MLA_AXES: &[&AxisDecl] = &[
    &SPLIT,
    &IMPL,
    &ATTENTION,
    &BATCH,
    &Q_HEADS,
    &KV_LORA_RANK,
    &ROPE_DIM,
    &CONTEXT,
    &LENGTHS,
    &PAGE_SIZE,
    &KV_DTYPE,
    &SCALE,
    &MATH,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// Grouped-query attention: query head h reads KV head h / (Hq / Hkv).
    Gqa,
    /// DeepSeek/Kimi latent attention, absorbed form: one cache of kv_lora_rank + rope_dim
    /// per token; V is its first kv_lora_rank entries, so each cached token is read once.
    Mla,
}

/// How the context lengths of a batch are chosen.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lengths {
    /// Every sequence has `context` tokens.
    Equal,
    /// Each sequence has a seeded length uniform in [1, context].
    Random,
    /// Given lengths, one per sequence (tests, and explicit experiments).
    Explicit(Vec<usize>),
}

/// The largest magnitude of generated K, V and q values: uniform in [-A, A] has unit variance
/// when A = sqrt(3), so scaled scores have a spread that makes softmax non-trivial.
const AMPLITUDE: f32 = 1.732_050_8;

#[derive(Clone, Debug)]
pub struct KvDecode {
    pub attention: Attention,
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub page_size: usize,
    pub kv_dtype: DType,
    pub scale: f32,
    pub context: usize,
    pub lengths: Lengths,
    /// Resolved length of every sequence in the batch.
    pub context_lens: Vec<usize>,
    pub seed: u64,
    pub math: Math,
    /// Set on a shard of a heads split: the GPU backends cut the context into as many slices
    /// as they would for the whole point, so the shard's bits equal the one-device run's.
    pub launch_hint: Option<KvLaunchHint>,
}

/// The shape a GPU backend sizes its context slices from (see `KvDecode::launch_hint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLaunchHint {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
}

impl KvDecode {
    /// Resolve the per-sequence lengths for `lengths` (deterministic in `seed`).
    pub fn resolve_lengths(
        lengths: &Lengths,
        context: usize,
        batch: usize,
        seed: u64,
    ) -> Vec<usize> {
        match lengths {
            Lengths::Equal => vec![context; batch],
            Lengths::Explicit(v) => v.clone(),
            Lengths::Random => {
                let mut rng = rng_for(seed, 20, 0);
                (0..batch).map(|_| rng.random_range(1..=context)).collect()
            }
        }
    }

    /// (batch, q_heads, kv_heads) that size the GPU backends' context slices.
    pub fn launch_shape(&self) -> KvLaunchHint {
        self.launch_hint.unwrap_or(KvLaunchHint {
            batch: self.batch,
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
        })
    }

    pub fn group_size(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    pub fn pages_of(&self, len: usize) -> usize {
        len.div_ceil(self.page_size)
    }

    pub fn num_pages(&self) -> usize {
        self.context_lens.iter().map(|&l| self.pages_of(l)).sum()
    }

    pub fn max_pages(&self) -> usize {
        self.context_lens
            .iter()
            .map(|&l| self.pages_of(l))
            .max()
            .unwrap_or(0)
            .max(1)
    }

    fn tokens(&self) -> u64 {
        self.context_lens.iter().map(|&l| l as u64).sum()
    }

    fn has_v(&self) -> bool {
        self.attention == Attention::Gqa
    }

    pub fn params_json(&self) -> serde_json::Value {
        let mut p = serde_json::json!({
            "attention": self.attention,
            "batch": self.batch,
            "q_heads": self.q_heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim_k,
            "v_head_dim": self.head_dim_v,
            "context": self.context,
            "page_size": self.page_size,
            "kv_dtype": self.kv_dtype,
            "scale": self.scale,
            "math": self.math,
        });
        if self.attention == Attention::Mla {
            p["kv_lora_rank"] = self.head_dim_v.into();
            p["rope_dim"] = (self.head_dim_k - self.head_dim_v).into();
        }
        if self.lengths != Lengths::Equal {
            p["lengths"] = serde_json::to_value(&self.lengths).unwrap_or_default();
            p["context_lens"] = self.context_lens.clone().into();
        }
        p
    }

    fn k_shape(&self) -> Vec<usize> {
        vec![
            self.num_pages(),
            self.page_size,
            self.kv_heads,
            self.head_dim_k,
        ]
    }

    fn v_shape(&self) -> Vec<usize> {
        vec![
            self.num_pages(),
            self.page_size,
            self.kv_heads,
            self.head_dim_v,
        ]
    }

    /// The f32 scale per tensor (K, V) that dequantises fp8; 1 for other dtypes.
    pub fn scales(&self) -> [f32; 2] {
        if self.kv_dtype.is_scaled() {
            let s = AMPLITUDE / self.kv_dtype.max_finite();
            [s, s]
        } else {
            [1.0, 1.0]
        }
    }

    pub fn inputs(&self) -> TensorSet {
        let (b, hq, dk) = (self.batch, self.q_heads, self.head_dim_k);
        let q = generate::uniform(
            "q",
            DType::F32,
            vec![b, hq, dk],
            (self.seed, 21),
            -AMPLITUDE,
            AMPLITUDE,
        );
        let mut set = vec![q];

        // Stored values are the cache's values divided by its scale (fp8 spans its range).
        let [k_scale, v_scale] = self.scales();
        let cache = |stream, shape: Vec<usize>, scale: f32, name| {
            let a = AMPLITUDE / scale;
            generate::uniform(name, self.kv_dtype, shape, (self.seed, stream), -a, a)
        };
        set.push(cache(22, self.k_shape(), k_scale, "k_pages"));
        if self.has_v() {
            set.push(cache(23, self.v_shape(), v_scale, "v_pages"));
        }

        // Physical pages are a seeded permutation, so paging is exercised, not contiguous.
        let mut physical: Vec<i32> = (0..self.num_pages() as i32).collect();
        let mut rng = rng_for(self.seed, 24, 0);
        for i in (1..physical.len()).rev() {
            physical.swap(i, rng.random_range(0..=i));
        }
        let max_pages = self.max_pages();
        let mut table = vec![-1i32; b * max_pages];
        let mut next = 0;
        for (s, &len) in self.context_lens.iter().enumerate() {
            for p in 0..self.pages_of(len) {
                table[s * max_pages + p] = physical[next];
                next += 1;
            }
        }
        set.push(Tensor::from_i32("page_table", vec![b, max_pages], &table));
        let lens: Vec<i32> = self.context_lens.iter().map(|&l| l as i32).collect();
        set.push(Tensor::from_i32("context_lens", vec![b], &lens));
        if self.kv_dtype.is_scaled() {
            set.push(Tensor::from_f32("kv_scale", vec![2], &[k_scale, v_scale]));
        }
        TensorSet(set)
    }

    pub fn input_bytes(&self) -> u64 {
        let kv = self.num_pages() as u64
            * self.page_size as u64
            * self.kv_heads as u64
            * (self.head_dim_k + if self.has_v() { self.head_dim_v } else { 0 }) as u64
            * self.kv_dtype.size() as u64;
        kv + (self.batch * self.q_heads * self.head_dim_k * 4) as u64
            + (self.batch * self.max_pages() * 4 + self.batch * 4 + 8) as u64
    }

    pub fn outputs(&self) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                name: "out",
                elem: Elem::Float(DType::F32),
                shape: vec![self.batch, self.q_heads, self.head_dim_v],
            },
            OutputSpec {
                name: "lse",
                elem: Elem::Float(DType::F32),
                shape: vec![self.batch, self.q_heads],
            },
        ]
    }

    pub fn byte_table(&self) -> Vec<ByteTerm> {
        let tokens = self.tokens();
        let (b, hq) = (self.batch as u64, self.q_heads as u64);
        let kvs = self.kv_dtype.size() as u64;
        let mut t = Vec::new();
        match self.attention {
            Attention::Gqa => {
                t.push(ByteTerm {
                    tensor: "k_pages",
                    bytes: tokens * self.kv_heads as u64 * self.head_dim_k as u64 * kvs,
                    rule: "sum(ctx) x Hkv x Dk x sizeof(kv): each K once, shared by its query group".into(),
                });
                t.push(ByteTerm {
                    tensor: "v_pages",
                    bytes: tokens * self.kv_heads as u64 * self.head_dim_v as u64 * kvs,
                    rule: "sum(ctx) x Hkv x Dv x sizeof(kv)".into(),
                });
            }
            Attention::Mla => t.push(ByteTerm {
                tensor: "k_pages",
                bytes: tokens * self.head_dim_k as u64 * kvs,
                rule: "sum(ctx) x (kv_lora_rank + rope_dim) x sizeof(kv): latent read once, V inside it".into(),
            }),
        }
        t.push(ByteTerm {
            tensor: "q",
            bytes: b * hq * self.head_dim_k as u64 * 4,
            rule: "B x Hq x Dk x 4".into(),
        });
        t.push(ByteTerm {
            tensor: "out",
            bytes: b * hq * self.head_dim_v as u64 * 4,
            rule: "B x Hq x Dv x 4 (written)".into(),
        });
        t.push(ByteTerm {
            tensor: "lse",
            bytes: b * hq * 4,
            rule: "B x Hq x 4 (written)".into(),
        });
        t.push(ByteTerm {
            tensor: "page_table",
            bytes: self.num_pages() as u64 * 4,
            rule: "entries used: sum(ceil(ctx / page)) x 4".into(),
        });
        t.push(ByteTerm {
            tensor: "context_lens",
            bytes: b * 4,
            rule: "B x 4".into(),
        });
        if self.kv_dtype.is_scaled() {
            t.push(ByteTerm {
                tensor: "kv_scale",
                bytes: 8,
                rule: "one f32 scale each for K and V".into(),
            });
        }
        t
    }

    /// 2 x (Dk + Dv) FLOPs per query head per cached token (QK^T and PV); softmax not counted.
    pub fn flops(&self) -> u64 {
        self.tokens() * self.q_heads as u64 * 2 * (self.head_dim_k + self.head_dim_v) as u64
    }

    /// Offset (in elements) of token `t` of sequence `b`, KV head `g`, in a cache of row
    /// width `dim`, read through the page table.
    #[inline(always)]
    pub fn cache_offset(&self, table: &[i32], b: usize, t: usize, g: usize, dim: usize) -> usize {
        // The table is [batch, max_pages]: its row length from its size (one division),
        // not `max_pages()` (one per sequence, at every call).
        let stride = table.len() / self.batch;
        debug_assert_eq!(
            stride,
            self.max_pages(),
            "a page table of [batch, max_pages]"
        );
        let page = table[b * stride + t / self.page_size] as usize;
        ((page * self.page_size + t % self.page_size) * self.kv_heads + g) * dim
    }

    /// f64 softmax(q K^T * scale) V and the natural log-sum-exp, on the decoded stored values;
    /// at `math: bf16` also the same with the kernel's operand rounding.
    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        let (out, lse) = self.attend_f64(inputs, Math::F32);
        let (out_r, lse_r) = match self.math {
            Math::F32 => (None, None),
            m => {
                let (o, l) = self.attend_f64(inputs, m);
                (Some(o), Some(l))
            }
        };
        Reference(vec![
            RefOutput::float("out", out, out_r),
            RefOutput::float("lse", lse, lse_r),
        ])
    }

    /// The attention of every (sequence, query head) in f64, q and P rounded as `math` says.
    fn attend_f64(&self, inputs: &TensorSet, math: Math) -> (Vec<f64>, Vec<f64>) {
        let q = inputs.expect("q").view::<f32>();
        let k = inputs.expect("k_pages");
        let v = if self.has_v() {
            inputs.expect("v_pages")
        } else {
            k
        };
        let table = inputs.expect("page_table").view::<i32>();
        let [ks, vs] = self.scales().map(f64::from);
        let (hq, dk, dv, g_size) = (
            self.q_heads,
            self.head_dim_k,
            self.head_dim_v,
            self.group_size(),
        );
        let scale = self.scale as f64;
        let dt = self.kv_dtype;
        // A cached row decoded to f64, dequantised.
        let row = |bytes: &[u8], at: usize, s: f64, out: &mut [f64], tmp: &mut [f32]| {
            dt.decode_slice(bytes, at, tmp);
            for (o, &x) in out.iter_mut().zip(tmp.iter()) {
                *o = x as f64 * s;
            }
        };

        // One task per (sequence, KV head): each cached row is decoded once for its group.
        let groups: Vec<(usize, usize)> = (0..self.batch)
            .flat_map(|b| (0..self.kv_heads).map(move |g| (b, g)))
            .collect();
        let results: Vec<(Vec<f64>, Vec<f64>)> = groups
            .par_iter()
            .map(|&(b, g)| {
                let len = self.context_lens[b];
                let qg: Vec<f64> = (0..g_size * dk)
                    .map(|i| {
                        let x = q[(b * hq + g * g_size) * dk + i];
                        math.operand(x) as f64
                    })
                    .collect();
                let mut scores = vec![0f64; g_size * len];
                let (mut krow, mut tmp) = (vec![0f64; dk], vec![0f32; dk.max(dv)]);
                for t in 0..len {
                    row(
                        &k.bytes,
                        self.cache_offset(&table, b, t, g, dk),
                        ks,
                        &mut krow,
                        &mut tmp[..dk],
                    );
                    for j in 0..g_size {
                        scores[j * len + t] = dot_f64(&qg[j * dk..(j + 1) * dk], &krow) * scale;
                    }
                }
                let mut out = vec![0f64; g_size * dv];
                let mut lse = vec![0f64; g_size];
                let mut sums = vec![0f64; g_size];
                for j in 0..g_size {
                    let p = &mut scores[j * len..(j + 1) * len];
                    let m = p.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0f64;
                    for s in p.iter_mut() {
                        let e = (*s - m).exp();
                        sum += e; // the row sum of the unrounded P
                        *s = math.operand_f64(e);
                    }
                    lse[j] = m + sum.ln();
                    sums[j] = sum;
                }
                let mut vrow = vec![0f64; dv];
                let width = if self.has_v() { dv } else { dk };
                for t in 0..len {
                    let vo = self.cache_offset(&table, b, t, g, width);
                    row(&v.bytes, vo, vs, &mut vrow, &mut tmp[..dv]);
                    for j in 0..g_size {
                        let p = scores[j * len + t];
                        for (o, &x) in out[j * dv..(j + 1) * dv].iter_mut().zip(&vrow) {
                            *o += p * x;
                        }
                    }
                }
                for j in 0..g_size {
                    out[j * dv..(j + 1) * dv]
                        .iter_mut()
                        .for_each(|o| *o /= sums[j]);
                }
                (out, lse)
            })
            .collect();

        let mut out = vec![0f64; self.batch * hq * dv];
        let mut lse = vec![0f64; self.batch * hq];
        for (&(b, g), (o, l)) in groups.iter().zip(results) {
            let h0 = b * hq + g * g_size;
            out[h0 * dv..(h0 + g_size) * dv].copy_from_slice(&o);
            lse[h0..h0 + g_size].copy_from_slice(&l);
        }
        (out, lse)
    }
}
