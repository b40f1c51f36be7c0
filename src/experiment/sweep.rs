//! A run's sweep: the product of the axes its kernel declares (`workload::axes`), in their
//! declared order (the first varies slowest). Each axis is read back by the handle taking it
//! returned, never by a position.

use crate::workload::axes::{AxisDecl, IMPL};

/// The axes of one kernel form and the values a run gave each.
pub(super) struct Sweep {
    decls: &'static [&'static AxisDecl],
    /// How refusals name the kernel: `kv_decode (gqa)`.
    pub(super) label: &'static str,
    /// Values per declared axis; None until the expansion takes it.
    lens: Vec<Option<usize>>,
}

/// An axis taken into a sweep: its values, read at a point with [`Swept::at`].
pub(super) struct Swept<T> {
    slot: usize,
    pub(super) values: Vec<T>,
}

/// One combination of the sweep's values.
pub(super) struct At(Vec<usize>);

impl<T> Swept<T> {
    pub(super) fn at(&self, p: &At) -> &T {
        &self.values[p.0[self.slot]]
    }

    /// The same axis, each value converted.
    pub(super) fn map<U>(&self, f: impl Fn(&T) -> U) -> Swept<U> {
        Swept {
            slot: self.slot,
            values: self.values.iter().map(f).collect(),
        }
    }
}

impl Sweep {
    pub(super) fn new(decls: &'static [&'static AxisDecl], label: &'static str) -> Sweep {
        Sweep {
            decls,
            label,
            lens: vec![None; decls.len()],
        }
    }

    /// Take `values` as the sweep's `decl` axis. The axis must be one this form declares.
    pub(super) fn add<T>(&mut self, decl: &AxisDecl, values: Vec<T>) -> Swept<T> {
        let slot = self
            .decls
            .iter()
            .position(|d| d.name == decl.name)
            .unwrap_or_else(|| panic!("{} does not declare the axis {}", self.label, decl.name));
        self.lens[slot] = Some(values.len());
        Swept { slot, values }
    }

    /// Every combination, first declared axis slowest. Split and impl are the run's axes,
    /// multiplied in outside the kernel's (build.rs); every other declared axis must have been
    /// taken, so a declared axis cannot be accepted and then ignored.
    pub(super) fn points(&self) -> Vec<At> {
        let mut out = vec![At(Vec::new())];
        for (decl, len) in self.decls.iter().zip(&self.lens) {
            let n = match len {
                Some(n) => *n,
                None if ["split", IMPL.name].contains(&decl.name) => 1,
                None => panic!(
                    "{}: the axis {} was declared, never taken",
                    self.label, decl.name
                ),
            };
            out = out
                .into_iter()
                .flat_map(|At(prefix)| {
                    (0..n).map(move |i| {
                        let mut p = prefix.clone();
                        p.push(i);
                        At(p)
                    })
                })
                .collect();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::stream;

    #[test]
    fn points_walk_the_declared_order_and_read_back_by_handle() {
        let mut sweep = Sweep::new(stream::AXES, "stream");
        // Taken in the other order: the declaration, not the taking, orders the sweep.
        let bytes = sweep.add(&stream::BYTES, vec![4u64, 8, 12]);
        let op = sweep.add(&stream::OP, vec!['r', 'w']);
        let seen: Vec<(char, u64)> = sweep
            .points()
            .iter()
            .map(|p| (*op.at(p), *bytes.at(p)))
            .collect();
        let want = [('r', 4), ('r', 8), ('r', 12), ('w', 4), ('w', 8), ('w', 12)];
        assert_eq!(seen, want);
    }

    #[test]
    #[should_panic(expected = "declared, never taken")]
    fn an_axis_declared_and_not_taken_is_a_bug_found_at_once() {
        let mut sweep = Sweep::new(stream::AXES, "stream");
        sweep.add(&stream::OP, vec![1]);
        sweep.points();
    }

    #[test]
    #[should_panic(expected = "does not declare")]
    fn an_axis_another_kernel_declares_is_refused() {
        Sweep::new(stream::AXES, "stream").add(&crate::workload::kv_decode::BATCH, vec![1]);
    }
}
