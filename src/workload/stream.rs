//! stream: the ceiling. read / copy / write over N bytes of u32 words.

use super::check::{Expected, RefOutput, Reference};
use super::generate;
use super::tensor::{Elem, TensorSet};
use super::{ByteTerm, OutputSpec};
use rayon::prelude::*;
use serde::Serialize;

use super::axes::{self, AxisDecl, IMPL, MAX_BYTES};

pub const SPLIT: AxisDecl = axes::split(&["none", "data"]);
pub const OP: AxisDecl = AxisDecl::named(
    "op",
    "read",
    &["read", "copy", "write"],
    "what is done to each word",
);
pub const BYTES: AxisDecl = AxisDecl {
    range: Some((4, MAX_BYTES)),
    ..AxisDecl::count(
        "bytes",
        MAX_BYTES,
        "bytes streamed: a multiple of 4, or 64MiB, 4GiB, ...",
    )
};

/// stream's axes, the first declared varying slowest.
pub const AXES: &[&AxisDecl] = &[&SPLIT, &IMPL, &OP, &BYTES];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamOp {
    /// Wrapping u32 sum of every word (exact, so the check is equality).
    Read,
    /// dst = src.
    Copy,
    /// dst = a seeded pattern.
    Write,
}

#[derive(Clone, Debug)]
pub struct Stream {
    pub op: StreamOp,
    /// Bytes of the source (read, copy) or destination (write); a multiple of 4.
    pub bytes: u64,
    pub seed: u64,
}

/// The word every backend writes at index `i` for `op: write`.
#[inline(always)]
pub fn write_pattern(i: u32, seed: u32) -> u32 {
    i.wrapping_mul(0x9E37_79B1) ^ seed
}

/// Word i of `dst` (word `first + i` of the tensor, little-endian) = write_pattern(first + i).
pub fn fill_pattern(dst: &mut [u8], first: u32, seed: u32) {
    for (i, x) in dst.chunks_exact_mut(4).enumerate() {
        x.copy_from_slice(&write_pattern(first.wrapping_add(i as u32), seed).to_le_bytes());
    }
}

impl Stream {
    pub fn words(&self) -> usize {
        (self.bytes / 4) as usize
    }

    /// The 32-bit seed the write pattern uses.
    pub fn pattern_seed(&self) -> u32 {
        (self.seed as u32) ^ 0x5EED_0001
    }

    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({ "op": self.op, "bytes": self.bytes })
    }

    pub fn inputs(&self) -> TensorSet {
        if self.op == StreamOp::Write {
            return TensorSet::default();
        }
        TensorSet(vec![generate::words("src", self.words(), self.seed, 1)])
    }

    pub fn input_bytes(&self) -> u64 {
        if self.op == StreamOp::Write {
            0
        } else {
            self.bytes
        }
    }

    pub fn outputs(&self) -> Vec<OutputSpec> {
        let shape = match self.op {
            StreamOp::Read => vec![1],
            StreamOp::Copy | StreamOp::Write => vec![self.words()],
        };
        let name = if self.op == StreamOp::Read {
            "sum"
        } else {
            "dst"
        };
        vec![OutputSpec {
            name,
            elem: Elem::U32,
            shape,
        }]
    }

    pub fn byte_table(&self) -> Vec<ByteTerm> {
        let n = self.bytes;
        match self.op {
            StreamOp::Read => vec![
                ByteTerm {
                    tensor: "src",
                    bytes: n,
                    rule: "read every word once".into(),
                },
                // The 4-byte sum is not counted: BabelStream's dot counts only the arrays.
            ],
            StreamOp::Copy => vec![
                ByteTerm {
                    tensor: "src",
                    bytes: n,
                    rule: "read every word once".into(),
                },
                ByteTerm {
                    tensor: "dst",
                    bytes: n,
                    rule: "write every word once".into(),
                },
            ],
            StreamOp::Write => vec![ByteTerm {
                tensor: "dst",
                bytes: n,
                rule: "write every word once".into(),
            }],
        }
    }

    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        let expected = match self.op {
            StreamOp::Read => {
                let src = inputs.expect("src").view::<u32>();
                let sum = src
                    .par_chunks(1 << 16)
                    .map(|c| c.iter().fold(0u32, |a, &w| a.wrapping_add(w)))
                    .reduce(|| 0u32, u32::wrapping_add);
                Expected::Words(sum.to_le_bytes().to_vec().into())
            }
            // The copy's answer is its input: shared, not copied.
            StreamOp::Copy => Expected::Words(inputs.expect("src").bytes.clone()),
            StreamOp::Write => Expected::Pattern {
                words: self.words(),
                seed: self.pattern_seed(),
                word: write_pattern,
            },
        };
        let name = if self.op == StreamOp::Read {
            "sum"
        } else {
            "dst"
        };
        Reference(vec![RefOutput { name, expected }])
    }
}
