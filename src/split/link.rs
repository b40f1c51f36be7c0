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

/// A link between two ranks (`cluster`): rank `a` sends `link.bytes` to rank `b` over MPI
/// (both ways: `b` sends to `a` at the same time), timed on `a` from its start word to `b`'s
/// word that everything landed (two small-message latencies over the copy itself). Then what
/// landed on `b` comes back to `a`, untimed, for the check. Some on `a`, None on `b`.
pub fn run_link_ranked(
    w: &crate::cluster::World,
    (a, b): (usize, usize),
    link: &Link,
    inputs: &TensorSet,
    (warmup, reps): (usize, usize),
) -> anyhow::Result<Option<LinkRun>> {
    let src = &inputs.expect("src").bytes;
    let back = link.both_ways().then(|| &inputs.expect("src_back").bytes);
    if w.rank == b {
        let mut landed = Vec::new();
        for _ in 0..warmup + reps {
            let () = w.recv(a)?;
            landed = match back {
                Some(bytes) => w.exchange_bytes(a, bytes)?,
                None => w.recv_bytes(a)?,
            };
            w.send(a, &())?;
        }
        w.send_bytes(a, &landed)?;
        return Ok(None);
    }
    let mut times = Vec::new();
    let mut landed_back = Vec::new();
    for i in 0..warmup + reps {
        let t0 = std::time::Instant::now();
        w.send(b, &())?;
        match back {
            Some(_) => landed_back = w.exchange_bytes(b, src)?,
            None => w.send_bytes(b, src)?,
        }
        let () = w.recv(b)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let landed = w.recv_bytes(b)?;
    let mut outputs = Vec::new();
    for (spec, bytes) in crate::workload::Workload::Link(link.clone())
        .outputs()
        .into_iter()
        .zip([landed, landed_back])
    {
        let t = spec.with_bytes(bytes);
        outputs.push(t.map_err(|e| anyhow::anyhow!("rank {b}: {e} landed"))?);
    }
    let (ha, hb) = (&w.ranks[a].host, &w.ranks[b].host);
    let path = if ha == hb {
        format!("MPI between two ranks on {ha} (shared memory), host-staged")
    } else {
        format!("MPI between hosts {ha} -> {hb} (the network), host-staged")
    };
    Ok(Some(LinkRun {
        times,
        outputs: TensorSet(outputs),
        path,
        timer: Timer::Host,
    }))
}
