//! A point's inputs and f64 reference on the host: generated once, reused by the next point
//! when it has the same inputs (another implementation, another math mode or split).

use crate::workload::{Reference, TensorSet, Workload};
use std::time::Instant;

/// A point's inputs and reference on the host, and what they cost.
pub(super) struct HostData {
    /// The workload the inputs were generated for (math and launch hints aside: they do not
    /// change the inputs).
    inputs_key: String,
    /// The workload the reference was computed for.
    reference_key: String,
    pub(super) inputs: TensorSet,
    pub(super) reference: Option<Reference>,
    pub(super) generate_s: f64,
    pub(super) oracle_s: f64,
    /// The inputs came from the previous point.
    pub(super) reused: bool,
}

impl HostData {
    /// The inputs of `w`: the previous point's when they are the same, else generated (the
    /// previous ones dropped first, so two points' inputs never live at once).
    pub(super) fn for_point<'h>(slot: &'h mut Option<HostData>, w: &Workload) -> &'h mut HostData {
        let inputs_key = format!("{:?}", w.inputs_only());
        let reference_key = format!("{w:?}");
        match slot {
            Some(h) if h.inputs_key == inputs_key => {
                h.reused = true;
                h.generate_s = 0.0;
                if h.reference_key != reference_key {
                    h.reference = None;
                    h.reference_key = reference_key;
                }
                h.oracle_s = 0.0;
            }
            _ => {
                *slot = None;
                let t0 = Instant::now();
                let inputs = w.inputs();
                *slot = Some(HostData {
                    inputs_key,
                    reference_key,
                    inputs,
                    reference: None,
                    generate_s: t0.elapsed().as_secs_f64(),
                    oracle_s: 0.0,
                    reused: false,
                });
            }
        }
        slot.as_mut().expect("set above")
    }

    /// The reference, computed now if it is not yet.
    pub(super) fn reference(&mut self, w: &Workload) -> &Reference {
        if self.reference.is_none() {
            let t0 = Instant::now();
            self.reference = Some(w.oracle(&self.inputs));
            self.oracle_s += t0.elapsed().as_secs_f64();
        }
        self.reference.as_ref().expect("set above")
    }
}
