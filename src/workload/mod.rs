//! WHAT is computed: kernel parameters, seeded inputs, the f64 oracle, and byte and FLOP
//! accounting. Nothing here knows which backend runs a point.

pub mod axes;
pub mod check;
pub mod dtype;
pub mod expert_gemv;
pub mod fourbit;
pub mod fp8;
pub mod generate;
pub mod kv_decode;
pub mod link;
pub mod math;
pub mod stream;
pub mod tensor;

pub use check::{Check, Reference};
pub use dtype::DType;
pub use expert_gemv::{ExpertGemv, Routing, WeightScale};
pub use kv_decode::{Attention, KvDecode, KvLaunchHint, Lengths};
pub use link::{Direction, Link};
pub use math::Math;
pub use stream::{Stream, StreamOp};
pub use tensor::{Bytes, Elem, Tensor, TensorSet};

pub use crate::registry::Kernel;
use serde::Serialize;

/// Every kernel's axes, per form (kv_decode has one for GQA and one for MLA).
pub fn declared_axes(kernel: Kernel) -> Vec<(&'static str, &'static [&'static axes::AxisDecl])> {
    match kernel {
        Kernel::Stream => vec![("", stream::AXES)],
        Kernel::Link => vec![("", link::AXES)],
        Kernel::KvDecode => vec![("gqa", kv_decode::GQA_AXES), ("mla", kv_decode::MLA_AXES)],
        Kernel::ExpertGemv => vec![("", expert_gemv::AXES)],
    }
}

/// One line of a kernel's byte-accounting table: the minimum bytes one tensor contributes to
/// a step, and why. The table, not arithmetic in reports, is what `bytes` in a result means.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ByteTerm {
    pub tensor: &'static str,
    pub bytes: u64,
    pub rule: String,
}

/// The shape and element type of one output a backend must write.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    pub name: &'static str,
    pub elem: Elem,
    pub shape: Vec<usize>,
}

impl OutputSpec {
    pub fn poisoned(&self) -> Tensor {
        Tensor::poisoned(self.name, self.elem, self.shape.clone())
    }

    pub fn bytes(&self) -> u64 {
        self.elem.bytes_for(self.shape.iter().product::<usize>()) as u64
    }

    /// This output holding `bytes` (as they came from another process), or why they cannot
    /// be it.
    pub fn with_bytes(&self, bytes: Vec<u8>) -> Result<Tensor, String> {
        if bytes.len() as u64 != self.bytes() {
            return Err(format!(
                "'{}' has {} bytes, expected {}",
                self.name,
                bytes.len(),
                self.bytes()
            ));
        }
        Ok(Tensor {
            name: self.name,
            elem: self.elem,
            shape: self.shape.clone(),
            bytes: bytes.into(),
        })
    }
}

/// A fully resolved point: every length, routing id and seed is fixed, so the byte table,
/// the inputs and the oracle are all functions of this value alone.
#[derive(Clone, Debug)]
pub enum Workload {
    Stream(Stream),
    KvDecode(KvDecode),
    ExpertGemv(ExpertGemv),
    /// A copy between two devices (runs on a pair, never on one device).
    Link(Link),
}

impl Workload {
    pub fn kind(&self) -> Kernel {
        match self {
            Workload::Stream(_) => Kernel::Stream,
            Workload::KvDecode(_) => Kernel::KvDecode,
            Workload::ExpertGemv(_) => Kernel::ExpertGemv,
            Workload::Link(_) => Kernel::Link,
        }
    }

    /// The dtype its big tensor is stored in (the KV cache, the expert weights), if any.
    pub fn storage_dtype(&self) -> Option<DType> {
        match self {
            Workload::KvDecode(k) => Some(k.kv_dtype),
            Workload::ExpertGemv(e) => Some(e.weight_dtype),
            Workload::Stream(_) | Workload::Link(_) => None,
        }
    }

    /// The same point without what does not change its inputs (the precision mode, a launch
    /// hint): two points equal here share their generated inputs.
    pub fn inputs_only(&self) -> Workload {
        let mut plain = self.clone();
        match &mut plain {
            Workload::KvDecode(k) => {
                k.math = Default::default();
                k.launch_hint = None;
            }
            Workload::ExpertGemv(e) => e.math = Default::default(),
            Workload::Stream(_) | Workload::Link(_) => {}
        }
        plain
    }

    /// The kernel's name, as YAML and result lines spell it.
    pub fn kernel(&self) -> &'static str {
        self.kind().name()
    }

    /// The parameters as they appear in a result line.
    pub fn params_json(&self) -> serde_json::Value {
        match self {
            Workload::Stream(w) => w.params_json(),
            Workload::KvDecode(w) => w.params_json(),
            Workload::ExpertGemv(w) => w.params_json(),
            Workload::Link(w) => w.params_json(),
        }
    }

    /// Seeded inputs, never zeros; generated in parallel but independent of thread count.
    pub fn inputs(&self) -> TensorSet {
        match self {
            Workload::Stream(w) => w.inputs(),
            Workload::KvDecode(w) => w.inputs(),
            Workload::ExpertGemv(w) => w.inputs(),
            Workload::Link(w) => w.inputs(),
        }
    }

    pub fn outputs(&self) -> Vec<OutputSpec> {
        match self {
            Workload::Stream(w) => w.outputs(),
            Workload::KvDecode(w) => w.outputs(),
            Workload::ExpertGemv(w) => w.outputs(),
            Workload::Link(w) => w.outputs(),
        }
    }

    pub fn byte_table(&self) -> Vec<ByteTerm> {
        match self {
            Workload::Stream(w) => w.byte_table(),
            Workload::KvDecode(w) => w.byte_table(),
            Workload::ExpertGemv(w) => w.byte_table(),
            Workload::Link(w) => w.byte_table(),
        }
    }

    /// Minimum bytes a step must move: the sum of the byte table.
    pub fn bytes(&self) -> u64 {
        self.byte_table().iter().map(|t| t.bytes).sum()
    }

    pub fn flops(&self) -> u64 {
        match self {
            Workload::Stream(_) | Workload::Link(_) => 0,
            Workload::KvDecode(w) => w.flops(),
            Workload::ExpertGemv(w) => w.flops(),
        }
    }

    /// The f64 reference, computed on the decoded stored inputs.
    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        match self {
            Workload::Stream(w) => w.oracle(inputs),
            Workload::KvDecode(w) => w.oracle(inputs),
            Workload::ExpertGemv(w) => w.oracle(inputs),
            Workload::Link(w) => w.oracle(inputs),
        }
    }

    /// The precision mode (stream and link move words: always exact).
    pub fn math(&self) -> Math {
        match self {
            Workload::KvDecode(w) => w.math,
            Workload::ExpertGemv(w) => w.math,
            Workload::Stream(_) | Workload::Link(_) => Math::F32,
        }
    }

    pub fn input_bytes(&self) -> u64 {
        match self {
            Workload::Stream(w) => w.input_bytes(),
            Workload::KvDecode(w) => w.input_bytes(),
            Workload::ExpertGemv(w) => w.input_bytes(),
            Workload::Link(w) => w.input_bytes(),
        }
    }

    pub fn output_bytes(&self) -> u64 {
        self.outputs().iter().map(OutputSpec::bytes).sum()
    }

    /// Bytes of every tensor a device holds for this point (inputs and outputs).
    pub fn device_bytes(&self) -> u64 {
        self.input_bytes() + self.output_bytes()
    }

    /// Host memory a point needs at its peak: the inputs, the outputs read back, and the
    /// oracle's f64 values (two sets at `math: bf16`) and the outputs decoded for the
    /// comparison; exact word outputs share the inputs.
    /// The cpu backend works in these same buffers.
    pub fn host_bytes(&self) -> u64 {
        let float_outputs: u64 = self
            .outputs()
            .iter()
            .filter(|o| matches!(o.elem, Elem::Float(_)))
            .map(|o| o.shape.iter().product::<usize>() as u64)
            .sum();
        let sets = if self.math() == Math::Bf16 { 2 } else { 1 };
        self.input_bytes() + self.output_bytes() + 8 * (sets + 1) * float_outputs
    }
}

/// An f64 dot product of `a` (f32 or f64 values) with `b`, with four running sums: the order
/// barely matters in f64, and independent sums let it vectorise. The oracles' inner loop.
pub(crate) fn dot_f64<T: Copy + Into<f64>>(a: &[T], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, y)| x.into() * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i].into() * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Bytes in binary units: `64MiB`, `1.5GiB` (tables, refusals, and the backends' limits).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}
