//! stream: the ceiling. read / copy / write over N bytes of u32 words.

use super::check::{RefOutput, Reference};
use super::tensor::{Elem, Tensor, TensorSet};
use super::{ByteTerm, OutputSpec, rng_for};
use rand::RngExt;
use rayon::prelude::*;
use serde::Serialize;

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
        let n = self.words();
        let mut src = vec![0u32; n];
        src.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let mut rng = rng_for(self.seed, 1, c as u64);
                for w in chunk {
                    *w = rng.random::<u32>() | 1; // never zero
                }
            });
        TensorSet(vec![Tensor::from_u32("src", vec![n], &src)])
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
        let out = match self.op {
            StreamOp::Read => {
                let src = inputs.expect("src").as_u32();
                let sum = src
                    .par_iter()
                    .fold(|| 0u32, |a, &w| a.wrapping_add(w))
                    .reduce(|| 0u32, u32::wrapping_add);
                RefOutput {
                    name: "sum",
                    values: vec![sum as f64],
                    exact: true,
                }
            }
            StreamOp::Copy => RefOutput {
                name: "dst",
                values: inputs.expect("src").decode_f64(),
                exact: true,
            },
            StreamOp::Write => {
                let s = self.pattern_seed();
                RefOutput {
                    name: "dst",
                    values: (0..self.words() as u32)
                        .map(|i| write_pattern(i, s) as f64)
                        .collect(),
                    exact: true,
                }
            }
        };
        Reference(vec![out])
    }
}
