//! The sweep axes a kernel takes, declared in its workload file beside its parameters (as
//! nvbench benchmarks declare theirs): the YAML name, the default and the values allowed.
//! `experiment/expand.rs` reads a run's values through these declarations, in their order
//! (the first declared varies slowest), and `run --help` prints them; neither lists a field
//! of its own.

/// Limits that keep every size computation far from overflow; larger is refused by name.
pub const MAX_COUNT: u64 = 1 << 24;
pub const MAX_BYTES: u64 = 1 << 44;
/// Heads, head dimensions, experts: far above any model, far below overflow.
pub const MAX_DIM: u64 = 1 << 16;

/// What a run that omits an axis gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AxisDefault {
    /// Nothing: the run must give it.
    Required,
    /// This value, written as YAML.
    Value(&'static str),
    /// A value worked out from the point's other axes, as this says.
    Derived(&'static str),
}

/// One axis of a kernel: a YAML field of `runs:`, a sweep when it holds a list.
#[derive(Debug)]
pub struct AxisDecl {
    pub name: &'static str,
    pub default: AxisDefault,
    /// Integer axes: the least and greatest value allowed.
    pub range: Option<(u64, u64)>,
    /// The values a named axis takes (empty for numbers); each must parse, a test holds it.
    pub values: &'static [&'static str],
    /// One line for `run --help`.
    pub about: &'static str,
}

impl AxisDecl {
    /// A count the run must give, in 1..=max.
    pub const fn count(name: &'static str, max: u64, about: &'static str) -> AxisDecl {
        AxisDecl {
            name,
            default: AxisDefault::Required,
            range: Some((1, max)),
            values: &[],
            about,
        }
    }

    /// An axis whose values are named, with the one a run that omits it takes.
    pub const fn named(
        name: &'static str,
        default: &'static str,
        values: &'static [&'static str],
        about: &'static str,
    ) -> AxisDecl {
        AxisDecl {
            name,
            default: AxisDefault::Value(default),
            range: None,
            values,
            about,
        }
    }

    /// This axis with another default.
    pub const fn or(self, default: AxisDefault) -> AxisDecl {
        AxisDecl { default, ..self }
    }

    /// `run --help`'s line: name, what it is, then its default and allowed values.
    pub fn help(&self) -> String {
        let default = match self.default {
            AxisDefault::Required => "required".to_string(),
            AxisDefault::Value(v) => format!("default {v}"),
            AxisDefault::Derived(how) => format!("default {how}"),
        };
        let allowed = match (self.range, self.values) {
            (Some((lo, hi)), _) => format!("; {lo}..={hi}"),
            (None, []) => String::new(),
            (None, v) => format!("; {}", v.join(" | ")),
        };
        format!("{:<13} {} ({default}{allowed})", self.name, self.about)
    }
}

/// How a point is spread over the run's devices, by the splits a kernel has (shard/ holds
/// them; a test holds each kernel's list to it).
pub const fn split(values: &'static [&'static str]) -> AxisDecl {
    AxisDecl::named(
        "split",
        "none",
        values,
        "how a point is spread over the run's devices",
    )
}
/// Which implementation: a name, `best` or `all` (the names are the backends' IMPLS).
pub const IMPL: AxisDecl = AxisDecl::named(
    "impl",
    "best",
    &["best", "all"],
    "an implementation's name, best (the first that covers the point) or all",
);
/// The precision mode of kernels that multiply.
pub const MATH: AxisDecl = AxisDecl::named(
    "math",
    "f32",
    &["f32", "bf16"],
    "the precision the products are computed in",
);
