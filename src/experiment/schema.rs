//! The YAML schema of an experiment, as written. Every field keeps its source location so a
//! refusal can name file, line and field. Any list is a sweep axis.

use crate::backend::CacheMode;
use crate::workload::{Attention, DType, Math, StreamOp};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;
use std::marker::PhantomData;

/// A value or a list of values. A list is a sweep axis; `was_list` remembers which, because
/// for `devices` a scalar is a count and a list is a set of indices.
#[derive(Clone, Debug)]
pub struct Axis<T> {
    pub values: Vec<T>,
    pub was_list: bool,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Axis<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AxisVisitor(PhantomData))
    }
}

struct AxisVisitor<T>(PhantomData<T>);

macro_rules! scalar_via {
    ($method:ident, $ty:ty, $de:ident) => {
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            let value = T::deserialize(de::value::$de::<E>::new(v))?;
            Ok(Axis {
                values: vec![value],
                was_list: false,
            })
        }
    };
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for AxisVisitor<T> {
    type Value = Axis<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or a list of values (a sweep axis)")
    }

    scalar_via!(visit_bool, bool, BoolDeserializer);
    scalar_via!(visit_i64, i64, I64Deserializer);
    scalar_via!(visit_u64, u64, U64Deserializer);
    scalar_via!(visit_f64, f64, F64Deserializer);
    scalar_via!(visit_str, &str, StrDeserializer);
    scalar_via!(visit_string, String, StringDeserializer);

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        let value = T::deserialize(de::value::BorrowedStrDeserializer::<E>::new(v))?;
        Ok(Axis {
            values: vec![value],
            was_list: false,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::new();
        while let Some(v) = seq.next_element()? {
            values.push(v);
        }
        if values.is_empty() {
            return Err(de::Error::custom("an empty list sweeps over nothing"));
        }
        Ok(Axis {
            values,
            was_list: true,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let value = T::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Axis {
            values: vec![value],
            was_list: false,
        })
    }
}

/// A byte size: an integer, or a string like `64MiB`, `4GiB`, `1.5GB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let mult: u64 = match unit {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000u64.pow(2),
            "GB" => 1000u64.pow(3),
            "TB" => 1000u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => {
                return Err(format!(
                    "'{s}': unknown unit '{unit}' (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"
                ));
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (e.g. 4096, 64MiB, 4GiB)"))?;
        let bytes = n * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("'{s}' is too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("'{s}' is not a whole number of bytes"));
        }
        Ok(Size(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, e.g. 4096, 64MiB or 4GiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Size::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `routing:` as written: `uniform`, `{zipf: 1.2}` or `{ids: [[0, 5], [3, 7]]}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RoutingSpec {
    Uniform,
    Zipf(f64),
    Ids(Vec<Vec<u32>>),
}

/// `lengths:` as written.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LengthsSpec {
    Equal,
    Random,
}

/// One entry of `backends:` or `devices:`: a name/`all`/`auto`, or a number.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum NameOrNumber {
    Number(u64),
    Name(String),
}

pub type Field<T> = Option<Spanned<Axis<T>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub backends: Option<Spanned<Axis<String>>>,
    #[serde(default)]
    pub devices: Option<Spanned<Axis<NameOrNumber>>>,
    /// Place the `devices: N` logical devices on one physical device (device 0), so every
    /// split runs on one GPU or the CPU.
    #[serde(default, rename = "virtual")]
    pub virtual_devices: Option<Spanned<bool>>,
    #[serde(default)]
    pub hardware: Option<Spanned<String>>,
    #[serde(default)]
    pub warmup: Option<Spanned<u64>>,
    #[serde(default)]
    pub reps: Option<Spanned<u64>>,
    #[serde(default)]
    pub seed: Option<Spanned<u64>>,
    #[serde(default)]
    pub cache: Option<Spanned<CacheMode>>,
    #[serde(default)]
    pub energy: Option<Spanned<crate::energy::EnergyMode>>,
    /// The most points the file may expand to (default 100000).
    #[serde(default)]
    pub max_points: Option<Spanned<u64>>,
    pub runs: Spanned<Vec<Spanned<RunSpec>>>,
}

/// One entry of `runs:`. Flat on purpose: an internally tagged enum would lose the source
/// locations, and a field that does not apply to the kernel is refused by name instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub kernel: Spanned<String>,
    /// How the point is spread over the run's devices (a sweep axis like any other).
    #[serde(default)]
    pub split: Field<crate::split::SplitKind>,
    /// Which implementation of the kernel: a name, `best` (the default: the first that covers
    /// the point on each backend) or `all` (every one any backend has).
    #[serde(default, rename = "impl")]
    pub imp: Field<String>,
    /// The precision mode (kv_decode, expert_gemv): f32 (default) or bf16.
    #[serde(default)]
    pub math: Field<Math>,
    // link
    #[serde(default)]
    pub direction: Field<crate::workload::Direction>,
    // stream
    #[serde(default)]
    pub op: Field<StreamOp>,
    #[serde(default)]
    pub bytes: Field<Size>,
    // kv_decode
    #[serde(default)]
    pub attention: Field<Attention>,
    #[serde(default)]
    pub q_heads: Field<u64>,
    #[serde(default)]
    pub kv_heads: Field<u64>,
    #[serde(default)]
    pub head_dim: Field<u64>,
    #[serde(default)]
    pub v_head_dim: Field<u64>,
    #[serde(default)]
    pub kv_lora_rank: Field<u64>,
    #[serde(default)]
    pub rope_dim: Field<u64>,
    #[serde(default)]
    pub context: Field<u64>,
    #[serde(default)]
    pub lengths: Field<LengthsSpec>,
    #[serde(default)]
    pub page_size: Field<u64>,
    #[serde(default)]
    pub kv_dtype: Field<DType>,
    #[serde(default)]
    pub scale: Field<f64>,
    // expert_gemv
    #[serde(default)]
    pub experts: Field<u64>,
    #[serde(default)]
    pub top_k: Field<u64>,
    #[serde(default)]
    pub d_in: Field<u64>,
    #[serde(default)]
    pub d_out: Field<u64>,
    #[serde(default)]
    pub weight_dtype: Field<DType>,
    #[serde(default)]
    pub weight_scale: Field<crate::workload::WeightScale>,
    #[serde(default)]
    pub routing: Field<RoutingSpec>,
    // shared
    #[serde(default)]
    pub batch: Field<u64>,
}

/// A type some fields of `runs:` hold: the expansion reads a declared axis by its name
/// (`workload::axes`) and gets its values typed, whichever kernel declares it.
pub trait AxisValue: Clone + de::DeserializeOwned {
    /// The field of this type named `name`; None when no field of this type has that name.
    fn field<'a>(spec: &'a RunSpec, name: &str) -> Option<&'a Field<Self>>;

    /// The value as a count, for an axis with a declared range.
    fn count(&self) -> Option<u64> {
        None
    }
}

macro_rules! axis_fields {
    ($t:ty: $($f:ident),+) => {
        axis_fields!($t, |_v| None => $($f),+);
    };
    // `count`: the value as a number an axis's declared range holds.
    ($t:ty, |$v:ident| $count:expr => $($f:ident),+) => {
        impl AxisValue for $t {
            fn field<'a>(spec: &'a RunSpec, name: &str) -> Option<&'a Field<Self>> {
                match name {
                    $(stringify!($f) => Some(&spec.$f),)+
                    _ => None,
                }
            }

            fn count(&self) -> Option<u64> {
                let $v = self;
                $count
            }
        }
    };
}

axis_fields!(u64, |v| Some(*v) => batch, q_heads, kv_heads, head_dim, v_head_dim, kv_lora_rank,
    rope_dim, context, page_size, experts, top_k, d_in, d_out);
axis_fields!(Size, |v| Some(v.0) => bytes);

impl AxisValue for String {
    // The one field whose YAML name is a Rust keyword.
    fn field<'a>(spec: &'a RunSpec, name: &str) -> Option<&'a Field<Self>> {
        (name == "impl").then_some(&spec.imp)
    }
}

axis_fields!(f64: scale);
axis_fields!(DType: kv_dtype, weight_dtype);
axis_fields!(Math: math);
axis_fields!(StreamOp: op);
axis_fields!(Attention: attention);
axis_fields!(LengthsSpec: lengths);
axis_fields!(RoutingSpec: routing);
axis_fields!(crate::workload::Direction: direction);
axis_fields!(crate::workload::WeightScale: weight_scale);
axis_fields!(crate::split::SplitKind: split);

impl RunSpec {
    /// The fields present, with their lines and how many values each sweeps over.
    pub fn present_fields(&self) -> Vec<(&'static str, u64)> {
        self.axes()
            .into_iter()
            .map(|(n, line, _)| (n, line))
            .collect()
    }

    /// Every field present: its name, line and number of values (a sweep axis's length).
    pub fn axes(&self) -> Vec<(&'static str, u64, usize)> {
        macro_rules! present {
            ($($f:ident),*) => {{
                let mut v = Vec::new();
                $( if let Some(s) = &self.$f {
                    v.push((stringify!($f), s.referenced.line(), s.value.values.len()));
                } )*
                v
            }};
        }
        let mut v = present!(
            split,
            imp,
            math,
            direction,
            op,
            bytes,
            attention,
            q_heads,
            kv_heads,
            head_dim,
            v_head_dim,
            kv_lora_rank,
            rope_dim,
            context,
            lengths,
            page_size,
            kv_dtype,
            scale,
            experts,
            top_k,
            d_in,
            d_out,
            weight_dtype,
            weight_scale,
            routing,
            batch
        );
        // The one field whose YAML name is a Rust keyword.
        for f in &mut v {
            if f.0 == "imp" {
                f.0 = "impl";
            }
        }
        v
    }
}
