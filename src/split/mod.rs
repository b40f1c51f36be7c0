//! Multi-device splits, run: timing a point's shards on the devices that hold them and
//! combining their outputs (`run`), across ranks (`ranked`), and the links between devices
//! (`link`). The plans they run are `shard`'s, below the backends.

pub mod link;
pub mod ranked;
pub mod run;

use crate::report::VsOneDevice;
pub use crate::shard::*;
use crate::workload::TensorSet;

/// `tolerance`: the relative L2 difference allowed when not identical
/// (`SplitKind::one_device_tolerance`).
pub fn compare_outputs(tolerance: f64, combined: &TensorSet, one: &TensorSet) -> VsOneDevice {
    let (mut identical, mut max_abs, mut num, mut den) = (true, 0f64, 0f64, 0f64);
    let mut shapes_agree = true;
    for t in &one.0 {
        let Some(c) = combined.get(t.name) else {
            shapes_agree = false;
            continue;
        };
        if c.shape != t.shape {
            shapes_agree = false;
            continue;
        }
        identical &= c.bytes == t.bytes;
        for (a, b) in c.decode_f64().iter().zip(t.decode_f64()) {
            let d = (a - b).abs();
            max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d) };
            num += d * d;
            den += b * b;
        }
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    };
    let identical = identical && shapes_agree;
    VsOneDevice {
        identical,
        max_abs_diff: max_abs,
        rel_l2_diff: rel,
        pass: shapes_agree && (identical || (rel.is_finite() && rel <= tolerance)),
    }
}
