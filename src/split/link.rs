//! The link kernel's runs: a copy from one device of the run to another (and back, both
//! ways), timed by the backend, with what landed read back for the check. The runner makes
//! one result line per ordered pair.

use crate::backend::{Backend, Timer};
use crate::workload::{Link, TensorSet};

/// What one pair's copies did.
pub struct LinkRun {
    pub times: Vec<f64>,
    pub outputs: TensorSet,
    /// The path the bytes took (`peer (NVLink x18)`, `host memory`, ...).
    pub path: String,
    pub timer: Timer,
}

/// Copy `link` from physical device `src` to `dst` on `b`, `warmup` untimed and `reps` timed
/// times. `virtual_devices`: the two logical devices are one physical device, and the path
/// says so.
pub fn run_link(
    b: &dyn Backend,
    (src, dst): (usize, usize),
    link: &Link,
    inputs: &TensorSet,
    (warmup, reps): (usize, usize),
    virtual_devices: bool,
) -> anyhow::Result<LinkRun> {
    let (mut prepared, path) = b.prepare_link(src, dst, link, inputs)?;
    let times = prepared.run(warmup, reps)?;
    let outputs = prepared.read_outputs()?;
    let path = if virtual_devices && src == dst {
        format!("{path}; virtual devices: a copy within one device, not a link")
    } else {
        path
    };
    Ok(LinkRun {
        times,
        outputs,
        path,
        timer: prepared.timer(),
    })
}
