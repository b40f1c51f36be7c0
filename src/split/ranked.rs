//! A split point across ranks (`cluster`): rank r prepares and times shard r on its own
//! device, all ranks starting together on rank 0's word; rank 0 then gathers every shard's
//! rep times and outputs, through the backend's own transport between ranks where every
//! rank has it (cuda: NCCL), else host-staged over MPI, and finishes the point as a
//! one-process split does: the combine, the one-device baseline on its own device, the
//! figures. A rank that fails sends its error instead, so the point ends with an error
//! naming it, and every rank moves on together.

use super::Plan;
use super::run::{DeviceSet, Settings, SplitOutcome, combine_reps, finish};
use crate::backend::{Backend, Gathered, How, Prepared};
use crate::cluster::World;
use crate::workload::{TensorSet, Workload};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a rank sends for its shard: a header, then each output's bytes in the shard's
/// output order.
#[derive(Serialize, Deserialize, Default, Clone)]
struct Header {
    times: Vec<f64>,
    error: Option<String>,
    sizes: Vec<usize>,
}

fn encode(h: &Header, outputs: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
    let head = serde_json::to_vec(h)?;
    let mut buf =
        Vec::with_capacity(8 + head.len() + outputs.iter().map(|o| o.len()).sum::<usize>());
    buf.extend((head.len() as u64).to_le_bytes());
    buf.extend(head);
    outputs.iter().for_each(|o| buf.extend_from_slice(o));
    Ok(buf)
}

/// The header and the shard's outputs, shaped by the shard's own output list.
fn decode(buf: &[u8], shard: &Workload) -> anyhow::Result<(Header, TensorSet)> {
    let n = u64::from_le_bytes(buf.get(..8).context("short")?.try_into()?) as usize;
    let h: Header = serde_json::from_slice(buf.get(8..8 + n).context("short header")?)?;
    if h.error.is_some() {
        return Ok((h, TensorSet(Vec::new())));
    }
    let specs = shard.outputs();
    anyhow::ensure!(
        specs.len() == h.sizes.len(),
        "{} outputs, expected {}",
        h.sizes.len(),
        specs.len()
    );
    let mut at = 8 + n;
    let mut tensors = Vec::new();
    for (spec, &size) in specs.iter().zip(&h.sizes) {
        let bytes = buf.get(at..at + size).context("short outputs")?.to_vec();
        at += size;
        tensors.push(spec.with_bytes(bytes).map_err(anyhow::Error::msg)?);
    }
    Ok((h, TensorSet(tensors)))
}

/// This rank's part of a split point.
enum Mine {
    /// Some rank could not prepare its shard; every rank knows (agreed), none ran.
    NotReady(String),
    /// Its rep times and outputs (None: no shard on this rank).
    Ran(Option<(Vec<f64>, TensorSet)>),
    /// Its shard failed while running; only this rank knows.
    Failed(String),
}

/// This rank's shard prepared, started with every other rank's, and run; the prepared
/// shard is kept for a transport that sends from the device.
fn run_mine<'b>(
    backend: &'b dyn Backend,
    local: usize,
    plan: &Plan,
    s: &Settings,
    w: &World,
) -> anyhow::Result<(Mine, Option<Box<dyn Prepared + 'b>>)> {
    let how = How {
        imp: s.imp,
        cache: s.cache,
    };
    let mine = plan.shards.iter().find(|sh| sh.device == w.rank);
    let prepared = mine
        .map(|sh| backend.prepare(local, &sh.workload, &sh.inputs, &how))
        .transpose()
        .map_err(|e| format!("preparing its shard: {e:#}"));
    // Every rank says whether it is ready; rank 0's answer starts them all at once.
    let ready = w
        .gather(&prepared.as_ref().err().cloned())?
        .map(|all| w.errors(&all));
    if let Some(why) = w.broadcast(ready.as_ref())? {
        return Ok((Mine::NotReady(why), None));
    }
    let Ok(Some(mut p)) = prepared else {
        return Ok((Mine::Ran(None), None));
    };
    let run = p
        .run(s.warmup, s.reps)
        .and_then(|t| Ok((t, p.read_outputs()?)));
    let mine = match run {
        Ok(r) => Mine::Ran(Some(r)),
        Err(e) => Mine::Failed(format!("running its shard: {e:#}")),
    };
    Ok((mine, Some(p)))
}

/// What rank 0 collected: per shard (plan order) its rep times and outputs, and the
/// transport's times and name.
struct Collected {
    times: Vec<Vec<f64>>,
    outputs: Vec<TensorSet>,
    transport: Vec<f64>,
    method: String,
    /// The point's outputs, where the backend merged them on rank 0's device.
    merged: Option<crate::backend::Merged>,
}

/// Run `plan` across the ranks. Rank 0 gets the outcome; the others get None.
#[allow(clippy::too_many_arguments)]
pub fn run_split_ranked(
    w: &World,
    backend: &dyn Backend,
    local: usize,
    devices: &DeviceSet,
    parent: &Workload,
    parent_inputs: &TensorSet,
    plan: &Plan,
    s: &Settings,
) -> anyhow::Result<Option<SplitOutcome>> {
    let (mine, mut prepared) = run_mine(backend, local, plan, s, w)?;
    let mine = match mine {
        Mine::NotReady(why) if w.is_root() => bail!("{why}"),
        Mine::NotReady(_) => return Ok(None),
        Mine::Ran(m) => Ok(m),
        Mine::Failed(why) => Err(why),
    };
    let reps = combine_reps(s.reps);
    // The backend's own transport only when every rank has it (one answer for all).
    let why_not = w
        .gather(&backend.rank_transport().err())?
        .map(|all| w.errors(&all));
    let own = w.broadcast(why_not.as_ref())?.is_none();
    let collected = if own {
        let mine_p = prepared.as_deref_mut();
        device_gather(w, backend, local, &mine, mine_p, (plan, parent), reps)?
    } else {
        mpi_gather(w, &mine, plan, reps)?
    };
    drop(prepared);
    let Some(c) = collected else {
        return Ok(None);
    };
    let gathered = Gathered {
        outputs: c.outputs,
        method: c.method,
        times: c.transport,
        merged: c.merged,
    };
    let (inputs, times) = (parent_inputs, c.times);
    finish(backend, devices, parent, inputs, plan, s, times, gathered).map(Some)
}

/// This rank's header: its rep times, or its error.
fn header(mine: &Result<Option<(Vec<f64>, TensorSet)>, String>) -> Header {
    match mine {
        Err(why) => Header {
            error: Some(why.clone()),
            ..Default::default()
        },
        Ok(Some((times, outs))) => Header {
            times: times.clone(),
            error: None,
            sizes: outs.0.iter().map(|t| t.bytes.len()).collect(),
        },
        Ok(None) => Header::default(),
    }
}

/// Host-staged over MPI: rank 0 asks every rank for its header and outputs, `reps` times;
/// a rep is timed from the ask to the last answer.
fn mpi_gather(
    w: &World,
    mine: &Result<Option<(Vec<f64>, TensorSet)>, String>,
    plan: &Plan,
    reps: usize,
) -> anyhow::Result<Option<Collected>> {
    if !w.is_root() {
        let outs: Vec<&[u8]> = match mine {
            Ok(Some((_, outs))) => outs.0.iter().map(|t| &t.bytes[..]).collect(),
            _ => Vec::new(),
        };
        let payload = encode(&header(mine), &outs)?;
        for _ in 0..reps {
            let () = w.recv(0)?;
            w.send_bytes(0, &payload)?;
        }
        return Ok(None);
    }
    let mut transport = Vec::new();
    let mut last: Vec<Vec<u8>> = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        (1..w.size).try_for_each(|r| w.send(r, &()))?;
        last = (1..w.size)
            .map(|r| w.recv_bytes(r))
            .collect::<anyhow::Result<_>>()?;
        transport.push(t0.elapsed().as_secs_f64());
    }
    let mut c = Collected {
        times: Vec::new(),
        outputs: Vec::new(),
        transport,
        method: format!("mpi to rank 0, host-staged ({} ranks)", w.size),
        merged: None,
    };
    let mut errors = vec![None; w.size];
    errors[w.rank] = mine.as_ref().err().cloned();
    for shard in &plan.shards {
        let (h, o) = if shard.device == w.rank {
            own_shard(mine)?
        } else {
            let (h, o) = decode(&last[shard.device - 1], &shard.workload)
                .with_context(|| format!("the message of rank {}", shard.device))?;
            errors[shard.device] = h.error;
            (h.times, o)
        };
        c.times.push(h);
        c.outputs.push(o);
    }
    if let Some(e) = w.errors(&errors) {
        bail!("{e}");
    }
    Ok(Some(c))
}

/// Rank 0's own shard: its times and outputs (none where it failed: its error is in the
/// ranks' errors).
fn own_shard(
    mine: &Result<Option<(Vec<f64>, TensorSet)>, String>,
) -> anyhow::Result<(Vec<f64>, TensorSet)> {
    match mine {
        Ok(Some(m)) => Ok(m.clone()),
        Ok(None) => bail!("rank 0 ran no shard of its own"),
        Err(_) => Ok(Default::default()),
    }
}

/// The backend's own transport (cuda: NCCL): the headers (times, errors) go to rank 0 over
/// MPI; when every shard ran, every rank enters the backend's gather at once.
fn device_gather(
    w: &World,
    backend: &dyn Backend,
    local: usize,
    mine: &Result<Option<(Vec<f64>, TensorSet)>, String>,
    prepared: Option<&mut (dyn Prepared + '_)>,
    (plan, parent): (&Plan, &Workload),
    reps: usize,
) -> anyhow::Result<Option<Collected>> {
    let headers = w.gather(&header(mine))?;
    let verdict = headers.as_ref().map(|all| {
        let errors: Vec<Option<String>> = all.iter().map(|h| h.error.clone()).collect();
        w.errors(&errors)
    });
    if let Some(why) = w.broadcast(verdict.as_ref())? {
        return if w.is_root() {
            bail!("{why}")
        } else {
            Ok(None)
        };
    }
    let gathered = backend.gather_ranks(w, local, prepared, plan, parent, reps)?;
    let (Some(headers), Some(g)) = (headers, gathered) else {
        return Ok(None);
    };
    // The backend returns the other ranks' shards; rank 0's own outputs are already here.
    let mut theirs = g.outputs.into_iter();
    let mut c = Collected {
        times: Vec::new(),
        outputs: Vec::new(),
        transport: g.times,
        method: g.method,
        merged: g.merged,
    };
    for shard in &plan.shards {
        if shard.device == w.rank {
            let (t, o) = own_shard(mine)?;
            c.times.push(t);
            c.outputs.push(o);
        } else {
            c.times.push(headers[shard.device].times.clone());
            c.outputs
                .push(theirs.next().context("a shard's outputs are missing")?);
        }
    }
    Ok(Some(c))
}
