//! WHAT is computed: kernel parameters, seeded inputs, the f64 oracle, and byte and FLOP
//! accounting. Nothing here knows which backend runs a point.

pub mod check;
pub mod dtype;
pub mod expert_gemv;
pub mod kv_decode;
pub mod link;
pub mod stream;
pub mod tensor;

pub use check::{Check, Reference};
pub use dtype::DType;
pub use expert_gemv::{ExpertGemv, Routing};
pub use kv_decode::{Attention, KvDecode, KvLaunchHint, Lengths};
pub use link::{Direction, Link};
pub use stream::{Stream, StreamOp};
pub use tensor::{Elem, Tensor, TensorSet};

use rand::SeedableRng;
use rayon::prelude::*;
use serde::Serialize;

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
        (self.shape.iter().product::<usize>() * self.elem.size()) as u64
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
    pub fn kernel(&self) -> &'static str {
        match self {
            Workload::Stream(_) => "stream",
            Workload::KvDecode(_) => "kv_decode",
            Workload::ExpertGemv(_) => "expert_gemv",
            Workload::Link(_) => "link",
        }
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

    /// Bytes of every tensor a device holds for this point (inputs and outputs).
    pub fn device_bytes(&self) -> u64 {
        let inputs: u64 = match self {
            Workload::Stream(w) => w.input_bytes(),
            Workload::KvDecode(w) => w.input_bytes(),
            Workload::ExpertGemv(w) => w.input_bytes(),
            Workload::Link(w) => w.input_bytes(),
        };
        inputs + self.outputs().iter().map(OutputSpec::bytes).sum::<u64>()
    }
}

/// A deterministic RNG for one (seed, stream, chunk): inputs do not depend on thread count.
pub(crate) fn rng_for(seed: u64, stream: u64, chunk: u64) -> rand_pcg::Pcg64Mcg {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(chunk.wrapping_mul(0x94D0_49BB_1331_11EB));
    rand_pcg::Pcg64Mcg::seed_from_u64(mixed)
}

const GEN_CHUNK: usize = 1 << 16;

/// `n` values uniform in [lo, hi), drawn in parallel chunks with their own streams.
pub(crate) fn uniform_f32(seed: u64, stream: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    use rand::RngExt;
    let mut v = vec![0f32; n];
    v.par_chunks_mut(GEN_CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = rng_for(seed, stream, c as u64);
            for x in chunk {
                *x = rng.random_range(lo..hi);
            }
        });
    v
}

/// Encode values into a storage dtype in parallel.
pub(crate) fn encode_par(name: &'static str, dtype: DType, shape: Vec<usize>, v: &[f32]) -> Tensor {
    let s = dtype.size();
    let mut bytes = vec![0u8; v.len() * s];
    bytes
        .par_chunks_mut(GEN_CHUNK * s)
        .zip(v.par_chunks(GEN_CHUNK))
        .for_each(|(out, vals)| {
            for (o, &x) in out.chunks_exact_mut(s).zip(vals) {
                dtype.encode_into(x, o);
            }
        });
    Tensor {
        name,
        elem: Elem::Float(dtype),
        shape,
        bytes,
    }
}
