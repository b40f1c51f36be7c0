//! link: a copy between two devices, as nvbandwidth measures peer bandwidth. One way moves
//! `bytes` from device A to device B; both ways also moves as many from B to A at the same
//! time. Checked word for word, like stream copy.

use super::check::{Expected, RefOutput, Reference};
use super::generate;
use super::tensor::{Elem, TensorSet};
use super::{ByteTerm, OutputSpec};
use serde::Serialize;

use super::axes::{AxisDecl, IMPL};

pub const DIRECTION: AxisDecl = AxisDecl::named(
    "direction",
    "one_way",
    &["one_way", "both_ways"],
    "A to B, or both at once",
);
pub const BYTES: AxisDecl = AxisDecl {
    about: "bytes moved each way: a multiple of 4, or 64MiB, 4GiB, ...",
    ..super::stream::BYTES
};

/// link's axes (a link is between two devices: no split), the first declared varying slowest.
pub const AXES: &[&AxisDecl] = &[&IMPL, &DIRECTION, &BYTES];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A -> B only.
    OneWay,
    /// A -> B and B -> A at once (the link's both directions).
    BothWays,
}

#[derive(Clone, Debug)]
pub struct Link {
    /// Bytes moved each way; a multiple of 4.
    pub bytes: u64,
    pub direction: Direction,
    pub seed: u64,
}

impl Link {
    pub fn words(&self) -> usize {
        (self.bytes / 4) as usize
    }

    pub fn both_ways(&self) -> bool {
        self.direction == Direction::BothWays
    }

    pub fn params_json(&self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes, "direction": self.direction })
    }

    /// `src` lives on device A; `src_back` (both ways) on device B.
    pub fn inputs(&self) -> TensorSet {
        let n = self.words();
        let mut set = vec![generate::words("src", n, self.seed, 40)];
        if self.both_ways() {
            set.push(generate::words("src_back", n, self.seed, 41));
        }
        TensorSet(set)
    }

    pub fn input_bytes(&self) -> u64 {
        if self.both_ways() {
            2 * self.bytes
        } else {
            self.bytes
        }
    }

    /// `dst` lands on device B; `dst_back` (both ways) on device A.
    pub fn outputs(&self) -> Vec<OutputSpec> {
        let mut v = vec![OutputSpec {
            name: "dst",
            elem: Elem::U32,
            shape: vec![self.words()],
        }];
        if self.both_ways() {
            v.push(OutputSpec {
                name: "dst_back",
                elem: Elem::U32,
                shape: vec![self.words()],
            });
        }
        v
    }

    /// Bytes that cross the link, as nvbandwidth counts them (each direction once).
    pub fn byte_table(&self) -> Vec<ByteTerm> {
        let mut v = vec![ByteTerm {
            tensor: "src",
            bytes: self.bytes,
            rule: "every word crosses A -> B once".into(),
        }];
        if self.both_ways() {
            v.push(ByteTerm {
                tensor: "src_back",
                bytes: self.bytes,
                rule: "every word crosses B -> A once, at the same time".into(),
            });
        }
        v
    }

    pub fn oracle(&self, inputs: &TensorSet) -> Reference {
        // What lands is what was sent: the inputs themselves, shared.
        let landed = |name, src| RefOutput {
            name,
            expected: Expected::Words(inputs.expect(src).bytes.clone()),
        };
        let mut v = vec![landed("dst", "src")];
        if self.both_ways() {
            v.push(landed("dst_back", "src_back"));
        }
        Reference(v)
    }
}
