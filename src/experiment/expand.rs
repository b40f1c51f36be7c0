//! One entry of `runs:` expanded into workloads: every list a sweep axis, each combination a
//! point, each value checked where it stands in the file.

use super::schema::{Field, LengthsSpec, RoutingSpec, RunSpec};
use super::{MAX_BYTES, MAX_COUNT, MAX_ELEMENTS};
use crate::error::ConfigError;
use crate::workload::{
    Attention, DType, Direction, ExpertGemv, Kernel, KvDecode, Lengths, Link, Math, Routing,
    Stream, StreamOp, WeightScale, Workload,
};
use serde_saphyr::Spanned;

/// An experiment file being built (build.rs): its name and text, so every refusal, here or
/// there, points at its line.
pub(super) struct Builder<'a> {
    pub(super) file: &'a str,
    pub(super) source: &'a str,
}

impl Builder<'_> {
    pub(super) fn err(
        &self,
        line: u64,
        col: u64,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.file, self.source, line, col, field, msg)
    }
}

/// Expansion of one entry of `runs:` into points.
pub(super) struct RunCtx<'a> {
    pub(super) b: &'a Builder<'a>,
    pub(super) index: usize,
    pub(super) spec: &'a RunSpec,
    pub(super) line: u64,
    /// `kernel:`, looked up in the registry before the run is expanded.
    pub(super) kernel: Kernel,
}

/// Every combination of axis positions, first axis slowest.
fn product(dims: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in dims {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                (0..d).map(move |i| {
                    let mut p = prefix.clone();
                    p.push(i);
                    p
                })
            })
            .collect();
    }
    out
}

impl RunCtx<'_> {
    fn field(&self, name: &str) -> String {
        format!("runs[{}].{name}", self.index)
    }

    pub(super) fn err_at<T>(
        &self,
        f: &Spanned<T>,
        name: &str,
        msg: impl Into<String>,
    ) -> ConfigError {
        self.b.err(
            f.referenced.line(),
            f.referenced.column(),
            self.field(name),
            msg,
        )
    }

    pub(super) fn err_run(&self, name: &str, msg: impl Into<String>) -> ConfigError {
        self.b.err(self.line, 0, self.field(name), msg)
    }

    fn required<T: Clone>(
        &self,
        f: &Field<T>,
        name: &str,
        kernel: &str,
    ) -> Result<Vec<T>, ConfigError> {
        f.as_ref()
            .map(|s| s.value.values.clone())
            .ok_or_else(|| self.err_run(name, format!("missing: {kernel} needs `{name}`")))
    }

    pub(super) fn optional<T: Clone>(&self, f: &Field<T>, default: T) -> Vec<T> {
        f.as_ref().map_or(vec![default], |s| s.value.values.clone())
    }

    /// A required count: every value in 1..=max.
    fn count(
        &self,
        f: &Field<u64>,
        name: &str,
        kernel: &str,
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        let v = self.required(f, name, kernel)?;
        self.check_counts(f, name, &v, max)
    }

    fn count_or(
        &self,
        f: &Field<u64>,
        name: &str,
        default: u64,
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        let v = self.optional(f, default);
        self.check_counts(f, name, &v, max)
    }

    fn check_counts(
        &self,
        f: &Field<u64>,
        name: &str,
        v: &[u64],
        max: u64,
    ) -> Result<Vec<usize>, ConfigError> {
        for &x in v {
            if x == 0 || x > max {
                let msg = if x == 0 {
                    "must be at least 1 (got 0)".to_string()
                } else {
                    format!("{x} is larger than the limit {max}")
                };
                return Err(match f {
                    Some(s) => self.err_at(s, name, msg),
                    None => self.err_run(name, msg),
                });
            }
        }
        Ok(v.iter().map(|&x| x as usize).collect())
    }

    fn refuse_fields(&self, allowed: &[&str], kernel: &str) -> Result<(), ConfigError> {
        for (name, line) in self.spec.present_fields() {
            if !allowed.contains(&name) {
                return Err(self.b.err(
                    line,
                    0,
                    self.field(name),
                    format!(
                        "does not apply to kernel {kernel} (its fields: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How many points this run expands to, and the axes that multiply (`batch 10 x ...`).
    pub(super) fn sweep_size(&self) -> (u64, String) {
        let mut count: u64 = 1;
        let mut parts = Vec::new();
        let mut axes = self.spec.axes();
        axes.sort_by_key(|&(_, line, _)| line); // as the file lists them
        for (name, _, n) in axes {
            let n = if name == "impl"
                && self
                    .spec
                    .imp
                    .as_ref()
                    .is_some_and(|f| f.value.values.iter().any(|v| v == "all"))
            {
                crate::backend::impl_names(self.kernel).len().max(n)
            } else {
                n
            };
            if n > 1 {
                parts.push(format!("{name} {n}"));
            }
            count = count.saturating_mul(n as u64);
        }
        let axes = if parts.is_empty() {
            "no sweep axis".into()
        } else {
            parts.join(" x ")
        };
        (count, axes)
    }

    /// `impl:` as a list of implementations (None: best), each a name some backend has.
    pub(super) fn impls(&self) -> Result<Vec<Option<&'static str>>, ConfigError> {
        let kernel = self.kernel.name();
        let known = crate::backend::impl_names(self.kernel);
        let Some(f) = &self.spec.imp else {
            return Ok(vec![None]);
        };
        let mut out = Vec::new();
        for name in &f.value.values {
            match name.as_str() {
                "best" => out.push(None),
                "all" => out.extend(known.iter().map(|&n| Some(n))),
                n => match known.iter().find(|&&k| k == n) {
                    Some(&k) => out.push(Some(k)),
                    None => {
                        return Err(self.err_at(
                            f,
                            "impl",
                            format!(
                                "no implementation '{n}' of {kernel} (known: {}; or best, all)",
                                known.join(", ")
                            ),
                        ));
                    }
                },
            }
        }
        out.dedup();
        Ok(out)
    }

    fn too_large(&self, elements: u128) -> Result<(), ConfigError> {
        if elements > MAX_ELEMENTS {
            return Err(self.err_run("kernel", format!("a point of this run holds {elements} elements, more than any device (limit {MAX_ELEMENTS})")));
        }
        Ok(())
    }

    pub(super) fn expand(
        &self,
        seed: u64,
        first_index: usize,
    ) -> Result<Vec<Workload>, ConfigError> {
        let point_seed = |i: usize| {
            seed.wrapping_mul(1_000_003)
                .wrapping_add((first_index + i) as u64)
        };
        match self.kernel {
            Kernel::Stream => self.expand_stream(point_seed),
            Kernel::KvDecode => self.expand_kv(point_seed),
            Kernel::ExpertGemv => self.expand_expert(point_seed),
            Kernel::Link => self.expand_link(point_seed),
        }
    }

    fn expand_stream(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        self.refuse_fields(&["split", "impl", "op", "bytes"], Kernel::Stream.name())?;
        let s = self.spec;
        let ops = self.optional(&s.op, StreamOp::Read);
        let sizes = self.required(&s.bytes, "bytes", Kernel::Stream.name())?;
        let bytes_field = s.bytes.as_ref().expect("required above");
        for sz in &sizes {
            if sz.0 < 4 || sz.0 % 4 != 0 || sz.0 > MAX_BYTES {
                return Err(self.err_at(bytes_field, "bytes", format!(
                    "{} bytes: stream moves whole u32 words, so bytes must be a positive multiple of 4 (at most {MAX_BYTES})", sz.0)));
            }
        }
        let mut out = Vec::new();
        for (i, ix) in product(&[ops.len(), sizes.len()]).into_iter().enumerate() {
            out.push(Workload::Stream(Stream {
                op: ops[ix[0]],
                bytes: sizes[ix[1]].0,
                seed: seed(i),
            }));
        }
        Ok(out)
    }

    fn expand_link(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        self.refuse_fields(&["impl", "bytes", "direction"], Kernel::Link.name())?;
        let s = self.spec;
        let directions = self.optional(&s.direction, Direction::OneWay);
        let sizes = self.required(&s.bytes, "bytes", Kernel::Link.name())?;
        let bytes_field = s.bytes.as_ref().expect("required above");
        for sz in &sizes {
            if sz.0 < 4 || sz.0 % 4 != 0 || sz.0 > MAX_BYTES {
                return Err(self.err_at(bytes_field, "bytes", format!(
                    "{} bytes: link moves whole u32 words, so bytes must be a positive multiple of 4 (at most {MAX_BYTES})", sz.0)));
            }
        }
        Ok(product(&[directions.len(), sizes.len()])
            .into_iter()
            .enumerate()
            .map(|(i, ix)| {
                Workload::Link(Link {
                    bytes: sizes[ix[1]].0,
                    direction: directions[ix[0]],
                    seed: seed(i),
                })
            })
            .collect())
    }

    fn expand_kv(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let s = self.spec;
        let attention = self.optional(&s.attention, Attention::Gqa);
        if attention.len() > 1 {
            return Err(self.err_at(
                s.attention.as_ref().expect("a list"),
                "attention",
                "attention cannot be swept: write one run for gqa and one for mla",
            ));
        }
        let attention = attention[0];
        let common = [
            "split",
            "impl",
            "math",
            "attention",
            "batch",
            "q_heads",
            "context",
            "lengths",
            "page_size",
            "kv_dtype",
            "scale",
        ];
        let (own, kernel): (&[&str], _) = match attention {
            Attention::Gqa => (&["kv_heads", "head_dim", "v_head_dim"], "kv_decode (gqa)"),
            Attention::Mla => (&["kv_lora_rank", "rope_dim"], "kv_decode (mla)"),
        };
        let allowed: Vec<&str> = common.iter().chain(own).copied().collect();
        self.refuse_fields(&allowed, kernel)?;

        let batch = self.count(&s.batch, "batch", kernel, MAX_COUNT)?;
        let q_heads = self.count(&s.q_heads, "q_heads", kernel, 1 << 16)?;
        let context = self.count(&s.context, "context", kernel, MAX_COUNT)?;
        let page_size = self.count_or(&s.page_size, "page_size", 16, 1 << 20)?;
        let lengths = self.optional(&s.lengths, LengthsSpec::Equal);
        let dtypes = self.kv_dtypes()?;
        let maths = self.optional(&s.math, Math::F32);
        let scales = self.kv_scales()?;
        let shapes = self.kv_head_shapes(attention, kernel)?;

        let mut out = Vec::new();
        let dims = [
            batch.len(),
            q_heads.len(),
            shapes.len(),
            context.len(),
            lengths.len(),
            page_size.len(),
            dtypes.len(),
            scales.len(),
            maths.len(),
        ];
        for ix in product(&dims) {
            let (b, hq, (hkv, dk, dv), ctx) =
                (batch[ix[0]], q_heads[ix[1]], shapes[ix[2]], context[ix[3]]);
            let page = page_size[ix[5]];
            if hq % hkv != 0 {
                let f = s
                    .kv_heads
                    .as_ref()
                    .or(s.q_heads.as_ref())
                    .expect("gqa has kv_heads");
                return Err(self.err_at(f, "kv_heads", format!(
                    "q_heads ({hq}) is not a multiple of kv_heads ({hkv}): each KV head serves a whole group of query heads")));
            }
            let pages = (b as u128) * (ctx as u128).div_ceil(page as u128);
            self.too_large(
                pages * page as u128 * hkv as u128 * (dk + dv) as u128 + (b * hq * dk) as u128,
            )?;
            let lengths = match lengths[ix[4]] {
                LengthsSpec::Equal => Lengths::Equal,
                LengthsSpec::Random => Lengths::Random,
            };
            // The math axis is innermost and shares its neighbours' seed: f32 and bf16 of a
            // shape judge the same inputs.
            let point_seed = seed(out.len() / maths.len());
            let context_lens = KvDecode::resolve_lengths(&lengths, ctx, b, point_seed);
            out.push(Workload::KvDecode(KvDecode {
                attention,
                batch: b,
                q_heads: hq,
                kv_heads: hkv,
                head_dim_k: dk,
                head_dim_v: dv,
                page_size: page,
                kv_dtype: dtypes[ix[6]],
                scale: scales[ix[7]].map_or(1.0 / (dk as f32).sqrt(), |x| x as f32),
                context: ctx,
                lengths,
                context_lens,
                seed: point_seed,
                math: maths[ix[8]],
                launch_hint: None,
            }));
        }
        Ok(out)
    }

    /// `kv_dtype:`: whole-byte dtypes only (the 4-bit dtypes are weight formats here).
    fn kv_dtypes(&self) -> Result<Vec<DType>, ConfigError> {
        let s = self.spec;
        let dtypes = self.optional(&s.kv_dtype, DType::Bf16);
        if let Some(dt) = dtypes.iter().find(|d| d.groups().is_some()) {
            return Err(self.err_at(
                s.kv_dtype.as_ref().expect("a block dtype was given"),
                "kv_dtype",
                format!(
                    "{dt} is a weight format here (4-bit codes, a scale per group along d_in): the KV cache takes {}",
                    crate::registry::one_of(DType::WHOLE_BYTE.map(DType::name))
                ),
            ));
        }
        Ok(dtypes)
    }

    /// `scale:` (None: 1/sqrt(Dk)), each positive and finite.
    fn kv_scales(&self) -> Result<Vec<Option<f64>>, ConfigError> {
        let Some(f) = &self.spec.scale else {
            return Ok(vec![None]);
        };
        for &x in &f.value.values {
            if !(x.is_finite() && x > 0.0) {
                return Err(self.err_at(
                    f,
                    "scale",
                    format!("{x} is not a positive finite number"),
                ));
            }
        }
        Ok(f.value.values.iter().map(|&x| Some(x)).collect())
    }

    /// (kv_heads, Dk, Dv) per head-shape combination: GQA's heads and dims, or MLA's latent
    /// rank + rope (one latent "head", V inside it).
    fn kv_head_shapes(
        &self,
        attention: Attention,
        kernel: &str,
    ) -> Result<Vec<(usize, usize, usize)>, ConfigError> {
        let s = self.spec;
        Ok(match attention {
            Attention::Gqa => {
                let kvh = self.count(&s.kv_heads, "kv_heads", kernel, 1 << 16)?;
                let hd = self.count(&s.head_dim, "head_dim", kernel, 1 << 16)?;
                let vhd = match &s.v_head_dim {
                    None => vec![None],
                    Some(_) => self
                        .count(&s.v_head_dim, "v_head_dim", kernel, 1 << 16)?
                        .into_iter()
                        .map(Some)
                        .collect(),
                };
                product(&[kvh.len(), hd.len(), vhd.len()])
                    .into_iter()
                    .map(|ix| (kvh[ix[0]], hd[ix[1]], vhd[ix[2]].unwrap_or(hd[ix[1]])))
                    .collect()
            }
            Attention::Mla => {
                let rank = self.count_or(&s.kv_lora_rank, "kv_lora_rank", 512, 1 << 16)?;
                let rope = self.optional(&s.rope_dim, 64);
                product(&[rank.len(), rope.len()])
                    .into_iter()
                    .map(|ix| (1, rank[ix[0]] + rope[ix[1]] as usize, rank[ix[0]]))
                    .collect()
            }
        })
    }

    /// Every expert_gemv point of the entry: the product of its axes, each checked. (About
    /// 100 lines: nine axes read, then one pass over their product, each point checked where
    /// its fields are known; per-kernel axes (issue 26) will shorten it.)
    fn expand_expert(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let kernel = Kernel::ExpertGemv.name();
        self.refuse_fields(
            &[
                "split",
                "impl",
                "math",
                "experts",
                "top_k",
                "batch",
                "d_in",
                "d_out",
                "weight_dtype",
                "weight_scale",
                "routing",
            ],
            kernel,
        )?;
        let s = self.spec;
        let experts = self.count(&s.experts, "experts", kernel, 1 << 16)?;
        let top_k = self.count(&s.top_k, "top_k", kernel, 1 << 16)?;
        let batch = self.count(&s.batch, "batch", kernel, MAX_COUNT)?;
        let d_in = self.count(&s.d_in, "d_in", kernel, MAX_COUNT)?;
        let d_out = self.count(&s.d_out, "d_out", kernel, MAX_COUNT)?;
        let dtypes = self.optional(&s.weight_dtype, DType::Bf16);
        let routings = self.optional(&s.routing, RoutingSpec::Uniform);
        let maths = self.optional(&s.math, Math::F32);
        let scales = self.optional(&s.weight_scale, WeightScale::Row);
        if let Some(f) = &s.weight_scale
            && scales.contains(&WeightScale::Block128)
            && !dtypes.iter().any(|d| d.is_scaled())
        {
            return Err(self.err_at(
                f,
                "weight_scale",
                "block128 scales fp8 weights; weight_dtype names no fp8 (scaled) dtype",
            ));
        }
        let routing_err = |msg: String| match &s.routing {
            Some(f) => self.err_at(f, "routing", msg),
            None => self.err_run("routing", msg),
        };
        let mut out = Vec::new();
        let dims = [
            experts.len(),
            top_k.len(),
            batch.len(),
            d_in.len(),
            d_out.len(),
            dtypes.len(),
            routings.len(),
            scales.len(),
            maths.len(),
        ];
        for ix in product(&dims) {
            let (e, k, t, di, dout) = (
                experts[ix[0]],
                top_k[ix[1]],
                batch[ix[2]],
                d_in[ix[3]],
                d_out[ix[4]],
            );
            if k > e {
                let f = s.top_k.as_ref().expect("required above");
                let why = format!(
                    "top_k ({k}) is larger than experts ({e}): a token picks distinct experts"
                );
                return Err(self.err_at(f, "top_k", why));
            }
            self.too_large(e as u128 * dout as u128 * di as u128 + (t * di) as u128)?;
            let (dt, weight_scale) = (dtypes[ix[5]], scales[ix[7]]);
            // An unscaled dtype has no scales to lay out: its points are not repeated per
            // weight_scale.
            if !dt.is_scaled() && weight_scale != scales[0] {
                continue;
            }
            if let Some(m) = dt.row_multiple().filter(|m| di % m != 0) {
                let f = s.d_in.as_ref().expect("required above");
                let why = format!(
                    "{dt} has a scale per group of {m} along d_in: d_in ({di}) must be a multiple of {m}"
                );
                return Err(self.err_at(f, "d_in", why));
            }
            let routing = routing_of(&routings[ix[6]]).map_err(routing_err)?;
            let point_seed = seed(out.len() / maths.len());
            let topk_ids = ExpertGemv::route(&routing, e, k, t, point_seed).map_err(routing_err)?;
            out.push(Workload::ExpertGemv(ExpertGemv {
                experts: e,
                top_k: k,
                batch: t,
                d_in: di,
                d_out: dout,
                weight_dtype: dt,
                weight_scale: if dt.is_scaled() {
                    weight_scale
                } else {
                    WeightScale::Row
                },
                routing,
                topk_ids,
                seed: point_seed,
                math: maths[ix[8]],
            }));
        }
        Ok(out)
    }
}

/// A `routing:` value as the workload takes it, or why not.
fn routing_of(spec: &RoutingSpec) -> Result<Routing, String> {
    match spec {
        RoutingSpec::Uniform => Ok(Routing::Uniform),
        RoutingSpec::Zipf(z) if z.is_finite() && *z >= 0.0 && *z <= 100.0 => Ok(Routing::Zipf(*z)),
        RoutingSpec::Zipf(z) => Err(format!("zipf exponent {z} must be in 0..=100")),
        RoutingSpec::Ids(ids) => Ok(Routing::Ids(ids.clone())),
    }
}
