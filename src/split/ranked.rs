//! A split point across ranks (`cluster`): rank r prepares and times shard r on its own
//! device, all ranks starting together on rank 0's word; rank 0 then gathers every shard's
//! rep times and outputs over MPI (host-staged) and finishes the point as a one-process
//! split does: the combine, the one-device baseline on its own device, the figures. A rank
//! that fails sends its error instead, so the point ends with an error naming it, and every
//! rank moves on together.

use super::Plan;
use super::run::{DeviceSet, Settings, SplitOutcome, combine_reps, finish};
use crate::backend::{Backend, Gathered, How};
use crate::cluster::World;
use crate::workload::{Tensor, TensorSet, Workload};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a rank sends for its shard: a header, then each output's bytes in the shard's
/// output order.
#[derive(Serialize, Deserialize, Default)]
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
        let want = spec.elem.bytes_for(spec.shape.iter().product());
        anyhow::ensure!(
            size == want,
            "'{}' has {size} bytes, expected {want}",
            spec.name
        );
        let bytes = buf.get(at..at + size).context("short outputs")?.to_vec();
        at += size;
        tensors.push(Tensor {
            name: spec.name,
            elem: spec.elem,
            shape: spec.shape.clone(),
            bytes: bytes.into(),
        });
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

/// This rank's shard prepared, started with every other rank's, and run.
fn run_mine(
    backend: &dyn Backend,
    local: usize,
    plan: &Plan,
    s: &Settings,
    w: &World,
) -> anyhow::Result<Mine> {
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
    let ready = w.gather(&prepared.as_ref().err().cloned())?.map(|all| {
        let errors: Vec<String> = all
            .iter()
            .enumerate()
            .filter_map(|(r, e)| {
                e.as_ref()
                    .map(|e| format!("rank {r} ({}): {e}", w.ranks[r].host))
            })
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    });
    if let Some(why) = w.broadcast(ready.as_ref())? {
        return Ok(Mine::NotReady(why));
    }
    let Ok(Some(mut p)) = prepared else {
        return Ok(Mine::Ran(None));
    };
    let run = p
        .run(s.warmup, s.reps)
        .and_then(|t| Ok((t, p.read_outputs()?)));
    Ok(match run {
        Ok(r) => Mine::Ran(Some(r)),
        Err(e) => Mine::Failed(format!("running its shard: {e:#}")),
    })
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
    let mine = match run_mine(backend, local, plan, s, w)? {
        Mine::NotReady(why) if w.is_root() => bail!("{why}"),
        Mine::NotReady(_) => return Ok(None),
        Mine::Ran(m) => Ok(m),
        Mine::Failed(why) => Err(why),
    };
    let reps_c = combine_reps(s.reps);
    if !w.is_root() {
        let payload = match &mine {
            Err(why) => encode(
                &Header {
                    error: Some(why.clone()),
                    ..Default::default()
                },
                &[],
            )?,
            Ok(Some((times, outs))) => {
                let h = Header {
                    times: times.clone(),
                    error: None,
                    sizes: outs.0.iter().map(|t| t.bytes.len()).collect(),
                };
                let bytes: Vec<&[u8]> = outs.0.iter().map(|t| &t.bytes[..]).collect();
                encode(&h, &bytes)?
            }
            Ok(None) => encode(&Header::default(), &[])?,
        };
        for _ in 0..reps_c {
            let () = w.recv(0)?;
            w.send_bytes(0, &payload)?;
        }
        return Ok(None);
    }
    // Rank 0: ask every rank for its outputs, `reps_c` times; a rep is timed from the ask to
    // the last answer.
    let mut rep_times = Vec::new();
    let mut last: Vec<Vec<u8>> = Vec::new();
    for _ in 0..reps_c {
        let t0 = Instant::now();
        (1..w.size).try_for_each(|r| w.send(r, &()))?;
        last = (1..w.size)
            .map(|r| w.recv_bytes(r))
            .collect::<anyhow::Result<_>>()?;
        rep_times.push(t0.elapsed().as_secs_f64());
    }
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    let mut errors = Vec::new();
    for shard in &plan.shards {
        let (t, o) = if shard.device == w.rank {
            match &mine {
                Ok(Some(m)) => m.clone(),
                Ok(None) => bail!("rank 0 ran no shard of its own"),
                Err(why) => {
                    errors.push(format!("rank 0: {why}"));
                    Default::default()
                }
            }
        } else {
            let (h, o) = decode(&last[shard.device - 1], &shard.workload)
                .with_context(|| format!("the message of rank {}", shard.device))?;
            if let Some(e) = h.error {
                errors.push(format!("rank {}: {e}", shard.device));
            }
            (h.times, o)
        };
        times.push(t);
        outputs.push(o);
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    let gathered = Gathered {
        outputs,
        method: format!("mpi to rank 0, host-staged ({} ranks)", w.size),
        times: rep_times,
    };
    finish(
        backend,
        devices,
        parent,
        parent_inputs,
        plan,
        s,
        times,
        gathered,
    )
    .map(Some)
}
