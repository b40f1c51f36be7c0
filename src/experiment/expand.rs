//! One entry of `runs:` expanded into workloads: every list a sweep axis, each combination a
//! point, each value checked where it stands in the file.

use super::MAX_ELEMENTS;
use super::schema::{AxisValue, Field, LengthsSpec, RoutingSpec, RunSpec, Size};
use super::sweep::{At, Sweep, Swept};
use crate::error::ConfigError;
use crate::workload::axes::{AxisDecl, AxisDefault, MATH, MAX_BYTES};
use crate::workload::{
    Attention, DType, ExpertGemv, Kernel, KvDecode, Lengths, Link, Math, Routing, Stream,
    WeightScale, Workload, expert_gemv, kv_decode, link, stream,
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

    /// A declared axis's values as the run gives them, or its declared default; integers are
    /// held to the declared range.
    pub(super) fn values<T: AxisValue>(
        &self,
        decl: &AxisDecl,
        label: &str,
    ) -> Result<Vec<T>, ConfigError> {
        let f = Self::spec_field::<T>(self.spec, decl);
        let values = match (f, decl.default) {
            (Some(s), _) => s.value.values.clone(),
            (None, AxisDefault::Value(yaml)) => vec![Self::default_of(decl, yaml)],
            (None, AxisDefault::Required) => {
                let msg = format!("missing: {label} needs `{}`", decl.name);
                return Err(self.err_run(decl.name, msg));
            }
            (None, AxisDefault::Derived(how)) => {
                panic!(
                    "{}: defaults to {how}; read it with optional_values",
                    decl.name
                )
            }
        };
        if let Some((lo, hi)) = decl.range {
            for x in values.iter().filter_map(T::count) {
                let msg = if x < lo {
                    format!("must be at least {lo} (got {x})")
                } else if x > hi {
                    format!("{x} is larger than the limit {hi}")
                } else {
                    continue;
                };
                return Err(match f {
                    Some(s) => self.err_at(s, decl.name, msg),
                    None => self.err_run(decl.name, msg),
                });
            }
        }
        Ok(values)
    }

    /// An axis whose default is derived from the point's others: None where the run omits it.
    fn optional_values<T: AxisValue>(
        &self,
        decl: &AxisDecl,
        label: &str,
    ) -> Result<Vec<Option<T>>, ConfigError> {
        assert!(
            matches!(decl.default, AxisDefault::Derived(_)),
            "{}",
            decl.name
        );
        match Self::spec_field::<T>(self.spec, decl) {
            None => Ok(vec![None]),
            Some(_) => {
                let derived = AxisDecl {
                    default: AxisDefault::Required,
                    ..*decl
                };
                Ok(self
                    .values(&derived, label)?
                    .into_iter()
                    .map(Some)
                    .collect())
            }
        }
    }

    /// Take a declared axis into the sweep.
    fn take<T: AxisValue>(
        &self,
        sweep: &mut Sweep,
        decl: &AxisDecl,
    ) -> Result<Swept<T>, ConfigError> {
        Ok(sweep.add(decl, self.values(decl, sweep.label)?))
    }

    fn take_optional<T: AxisValue>(
        &self,
        sweep: &mut Sweep,
        decl: &AxisDecl,
    ) -> Result<Swept<Option<T>>, ConfigError> {
        Ok(sweep.add(decl, self.optional_values(decl, sweep.label)?))
    }

    fn spec_field<'s, T: AxisValue>(spec: &'s RunSpec, decl: &AxisDecl) -> &'s Field<T> {
        T::field(spec, decl.name).unwrap_or_else(|| {
            let t = std::any::type_name::<T>();
            panic!("the axis {} is no field of type {t} in RunSpec", decl.name)
        })
    }

    /// A declared default, parsed as the file's values are (a unit test parses them all).
    fn default_of<T: AxisValue>(decl: &AxisDecl, yaml: &str) -> T {
        serde_saphyr::from_str(yaml)
            .unwrap_or_else(|e| panic!("the default of {} ({yaml}) does not parse: {e}", decl.name))
    }

    /// A sweep over a kernel form's declared axes; a field it does not declare is refused.
    fn sweep(
        &self,
        decls: &'static [&'static AxisDecl],
        label: &'static str,
    ) -> Result<Sweep, ConfigError> {
        for (name, line) in self.spec.present_fields() {
            if !decls.iter().any(|d| d.name == name) {
                let names: Vec<&str> = decls.iter().map(|d| d.name).collect();
                let msg = format!(
                    "does not apply to kernel {label} (its fields: {})",
                    names.join(", ")
                );
                return Err(self.b.err(line, 0, self.field(name), msg));
            }
        }
        Ok(Sweep::new(decls, label))
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

    /// `bytes:` of stream and link: whole u32 words.
    fn words(&self, sweep: &mut Sweep, decl: &AxisDecl) -> Result<Swept<u64>, ConfigError> {
        let sizes: Swept<Size> = self.take(sweep, decl)?;
        if let Some(f) = &self.spec.bytes
            && let Some(sz) = sizes.values.iter().find(|sz| sz.0 % 4 != 0)
        {
            let kernel = self.kernel.name();
            return Err(self.err_at(f, "bytes", format!(
                "{} bytes: {kernel} moves whole u32 words, so bytes must be a positive multiple of 4 (at most {MAX_BYTES})", sz.0)));
        }
        Ok(sizes.map(|s| s.0))
    }

    fn expand_stream(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let mut sweep = self.sweep(stream::AXES, Kernel::Stream.name())?;
        let op = self.take(&mut sweep, &stream::OP)?;
        let bytes = self.words(&mut sweep, &stream::BYTES)?;
        let points = sweep.points().into_iter().enumerate();
        Ok(points
            .map(|(i, p)| {
                Workload::Stream(Stream {
                    op: *op.at(&p),
                    bytes: *bytes.at(&p),
                    seed: seed(i),
                })
            })
            .collect())
    }

    fn expand_link(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        let mut sweep = self.sweep(link::AXES, Kernel::Link.name())?;
        let direction = self.take(&mut sweep, &link::DIRECTION)?;
        let bytes = self.words(&mut sweep, &link::BYTES)?;
        let points = sweep.points().into_iter().enumerate();
        Ok(points
            .map(|(i, p)| {
                Workload::Link(Link {
                    bytes: *bytes.at(&p),
                    direction: *direction.at(&p),
                    seed: seed(i),
                })
            })
            .collect())
    }

    fn expand_kv(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        use kv_decode as kv;
        let s = self.spec;
        let attention = self.values::<Attention>(&kv::ATTENTION, Kernel::KvDecode.name())?;
        if attention.len() > 1 {
            return Err(self.err_at(
                s.attention.as_ref().expect("a list"),
                "attention",
                "attention cannot be swept: write one run for gqa and one for mla",
            ));
        }
        let mut sweep = match attention[0] {
            Attention::Gqa => self.sweep(kv::GQA_AXES, "kv_decode (gqa)")?,
            Attention::Mla => self.sweep(kv::MLA_AXES, "kv_decode (mla)")?,
        };
        let attention = sweep.add(&kv::ATTENTION, attention);
        let batch = self.take::<u64>(&mut sweep, &kv::BATCH)?;
        let q_heads = self.take::<u64>(&mut sweep, &kv::Q_HEADS)?;
        let shape = self.kv_head_shape(&mut sweep, attention.values[0])?;
        let context = self.take::<u64>(&mut sweep, &kv::CONTEXT)?;
        let lengths = self.take::<LengthsSpec>(&mut sweep, &kv::LENGTHS)?;
        let page_size = self.take::<u64>(&mut sweep, &kv::PAGE_SIZE)?;
        let dtype = self.kv_dtypes(&mut sweep)?;
        let scale = self.kv_scales(&mut sweep)?;
        let math = self.take::<Math>(&mut sweep, &MATH)?;

        let mut out = Vec::new();
        for p in sweep.points() {
            let (b, hq, ctx) = (
                *batch.at(&p) as usize,
                *q_heads.at(&p) as usize,
                *context.at(&p) as usize,
            );
            let (hkv, dk, dv) = shape(&p);
            let page = *page_size.at(&p) as usize;
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
            let lengths = match lengths.at(&p) {
                LengthsSpec::Equal => Lengths::Equal,
                LengthsSpec::Random => Lengths::Random,
            };
            // The math axis is innermost and shares its neighbours' seed: f32 and bf16 of a
            // shape judge the same inputs.
            let point_seed = seed(out.len() / math.values.len());
            let context_lens = KvDecode::resolve_lengths(&lengths, ctx, b, point_seed);
            out.push(Workload::KvDecode(KvDecode {
                attention: *attention.at(&p),
                batch: b,
                q_heads: hq,
                kv_heads: hkv,
                head_dim_k: dk,
                head_dim_v: dv,
                page_size: page,
                kv_dtype: *dtype.at(&p),
                scale: scale.at(&p).map_or(1.0 / (dk as f32).sqrt(), |x| x as f32),
                context: ctx,
                lengths,
                context_lens,
                seed: point_seed,
                math: *math.at(&p),
                launch_hint: None,
            }));
        }
        Ok(out)
    }

    /// `kv_dtype:`: whole-byte dtypes only (the 4-bit dtypes are weight formats here).
    fn kv_dtypes(&self, sweep: &mut Sweep) -> Result<Swept<DType>, ConfigError> {
        let dtypes = self.take::<DType>(sweep, &kv_decode::KV_DTYPE)?;
        if let Some(dt) = dtypes.values.iter().find(|d| d.groups().is_some()) {
            return Err(self.err_at(
                self.spec.kv_dtype.as_ref().expect("a block dtype was given"),
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
    fn kv_scales(&self, sweep: &mut Sweep) -> Result<Swept<Option<f64>>, ConfigError> {
        let scales = self.take_optional::<f64>(sweep, &kv_decode::SCALE)?;
        if let Some(f) = &self.spec.scale
            && let Some(x) = scales
                .values
                .iter()
                .flatten()
                .find(|x| !(x.is_finite() && **x > 0.0))
        {
            return Err(self.err_at(f, "scale", format!("{x} is not a positive finite number")));
        }
        Ok(scales)
    }

    /// The axes of a point's heads: GQA's (kv_heads, head_dim, v_head_dim), or MLA's latent
    /// rank + rope (one latent "head", V inside it); read at a point as (kv_heads, Dk, Dv).
    fn kv_head_shape(
        &self,
        sweep: &mut Sweep,
        attention: Attention,
    ) -> Result<HeadShape, ConfigError> {
        use kv_decode as kv;
        Ok(match attention {
            Attention::Gqa => {
                let kvh = self.take::<u64>(sweep, &kv::KV_HEADS)?;
                let hd = self.take::<u64>(sweep, &kv::HEAD_DIM)?;
                let vhd = self.take_optional::<u64>(sweep, &kv::V_HEAD_DIM)?;
                Box::new(move |p: &At| {
                    let dk = *hd.at(p) as usize;
                    let dv = vhd.at(p).map_or(dk, |v| v as usize);
                    (*kvh.at(p) as usize, dk, dv)
                }) as HeadShape
            }
            Attention::Mla => {
                let rank = self.take::<u64>(sweep, &kv::KV_LORA_RANK)?;
                let rope = self.take::<u64>(sweep, &kv::ROPE_DIM)?;
                Box::new(move |p: &At| {
                    let r = *rank.at(p) as usize;
                    (1, r + *rope.at(p) as usize, r)
                })
            }
        })
    }

    /// Every expert_gemv point of the entry: the product of its axes, each checked.
    fn expand_expert(&self, seed: impl Fn(usize) -> u64) -> Result<Vec<Workload>, ConfigError> {
        use expert_gemv as ex;
        let s = self.spec;
        let mut sweep = self.sweep(ex::AXES, Kernel::ExpertGemv.name())?;
        let experts = self.take::<u64>(&mut sweep, &ex::EXPERTS)?;
        let top_k = self.take::<u64>(&mut sweep, &ex::TOP_K)?;
        let batch = self.take::<u64>(&mut sweep, &ex::BATCH)?;
        let d_in = self.take::<u64>(&mut sweep, &ex::D_IN)?;
        let d_out = self.take::<u64>(&mut sweep, &ex::D_OUT)?;
        let dtype = self.take::<DType>(&mut sweep, &ex::WEIGHT_DTYPE)?;
        let routing = self.take::<RoutingSpec>(&mut sweep, &ex::ROUTING)?;
        let scale = self.take::<WeightScale>(&mut sweep, &ex::WEIGHT_SCALE)?;
        let math = self.take::<Math>(&mut sweep, &MATH)?;
        if let Some(f) = &s.weight_scale
            && scale.values.contains(&WeightScale::Block128)
            && !dtype.values.iter().any(|d| d.is_scaled())
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
        for p in sweep.points() {
            let [e, k, t, di, dout] =
                [&experts, &top_k, &batch, &d_in, &d_out].map(|a| *a.at(&p) as usize);
            if k > e {
                let f = s.top_k.as_ref().expect("required above");
                let why = format!(
                    "top_k ({k}) is larger than experts ({e}): a token picks distinct experts"
                );
                return Err(self.err_at(f, "top_k", why));
            }
            self.too_large(e as u128 * dout as u128 * di as u128 + (t * di) as u128)?;
            let (dt, weight_scale) = (*dtype.at(&p), *scale.at(&p));
            // An unscaled dtype has no scales to lay out: its points are not repeated per
            // weight_scale.
            if !dt.is_scaled() && weight_scale != scale.values[0] {
                continue;
            }
            if let Some(m) = dt.row_multiple().filter(|m| di % m != 0) {
                let f = s.d_in.as_ref().expect("required above");
                let why = format!(
                    "{dt} has a scale per group of {m} along d_in: d_in ({di}) must be a multiple of {m}"
                );
                return Err(self.err_at(f, "d_in", why));
            }
            let routing = routing_of(routing.at(&p)).map_err(routing_err)?;
            let point_seed = seed(out.len() / math.values.len());
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
                math: *math.at(&p),
            }));
        }
        Ok(out)
    }
}

/// A point's (kv_heads, Dk, Dv), read from the axes that make it.
type HeadShape = Box<dyn Fn(&At) -> (usize, usize, usize)>;

/// A `routing:` value as the workload takes it, or why not.
fn routing_of(spec: &RoutingSpec) -> Result<Routing, String> {
    match spec {
        RoutingSpec::Uniform => Ok(Routing::Uniform),
        RoutingSpec::Zipf(z) if z.is_finite() && *z >= 0.0 && *z <= 100.0 => Ok(Routing::Zipf(*z)),
        RoutingSpec::Zipf(z) => Err(format!("zipf exponent {z} must be in 0..=100")),
        RoutingSpec::Ids(ids) => Ok(Routing::Ids(ids.clone())),
    }
}
