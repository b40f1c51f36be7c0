//! A run under a launcher (`cluster`): every rank loads the same file and walks the same
//! points; rank 0 says which jobs of each point are still to do (so `--resume` and Ctrl-C
//! hold), runs its own share, collects every other rank's result lines and writes them.
//! The other ranks (`follow`) run what they are told and send back what they measured.

use super::host::HostData;
use super::preflight::Selected;
use super::schedule::{Job, host_env, jobs_for};
use super::{Experiment, Point};
use crate::cluster::World;
use crate::report::ResultLine;
use crate::workload::{TensorSet, Workload};
use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What rank 0 tells the others before each point, and at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Order {
    /// Run these jobs (backend, device label) of point `index`.
    Point {
        index: usize,
        jobs: Vec<(String, String)>,
    },
    /// The run is over (finished, interrupted, or ended by an error on rank 0).
    End,
}

/// What a rank reports before anything runs: whether it could load and select, and which
/// device each selected backend gave it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ready {
    error: Option<String>,
    /// Per selected backend: its name, this rank's device index and `host: name (index)`.
    devices: Vec<(String, usize, String)>,
}

/// Every rank's setup, agreed: Ok on every rank when all could load the file and select the
/// same backends, else the same message everywhere (rank 0 prints it). On success each
/// `Selected` learns the device of every rank.
pub fn agree_setup(
    w: &World,
    setup: Result<&mut [Selected], String>,
) -> anyhow::Result<Result<(), String>> {
    let host = &w.ranks[w.rank].host;
    let me = match &setup {
        Ok(sel) => Ready {
            error: None,
            devices: sel
                .iter()
                .map(|s| {
                    let d = s.devices[0];
                    let name = &s.backend.devices()[d].name;
                    (
                        s.backend.name().to_string(),
                        d,
                        format!("{host}: {name} ({d})"),
                    )
                })
                .collect(),
        },
        Err(e) => Ready {
            error: Some(e.clone()),
            devices: Vec::new(),
        },
    };
    let verdict = w.gather(&me)?.map(|all| {
        let errors: Vec<Option<String>> = all.iter().map(|a| a.error.clone()).collect();
        let backends = |a: &Ready| a.devices.iter().map(|d| d.0.clone()).collect::<Vec<_>>();
        let differs = all
            .iter()
            .enumerate()
            .find(|(_, a)| backends(a) != backends(&all[0]));
        let why = w.errors(&errors).or_else(|| {
            differs.map(|(r, a)| {
                format!(
                    "rank {r} selected backends {:?}, rank 0 {:?}: every rank must run the same \
                     (name them with --backend)",
                    backends(a),
                    backends(&all[0])
                )
            })
        });
        match why {
            None => Ok(all),
            Some(e) => Err(e),
        }
    });
    let agreed: Result<Vec<Ready>, String> = w.broadcast(verdict.as_ref())?;
    Ok(agreed.map(|all| {
        if let Ok(sel) = setup {
            for (i, s) in sel.iter_mut().enumerate() {
                s.rank_devices = all
                    .iter()
                    .map(|a| (a.devices[i].1, a.devices[i].2.clone()))
                    .collect();
            }
        }
    }))
}

/// Marks a line as rank `rank`'s: its device in the run is the rank.
fn as_rank(mut line: ResultLine, w: &World, rank: usize, local_device: usize) -> ResultLine {
    line.env["device_index"] = rank.into();
    line.env["rank"] = rank.into();
    line.env["host"] = w.ranks[rank].host.clone().into();
    line.env["local_device"] = local_device.into();
    line.env["world"] = w.describe();
    line
}

/// On rank 0: the line of a one-device job on rank `d` (run here for rank 0, received from
/// rank `d` otherwise; a rank's error comes back as this job's error).
pub(super) fn single_on_root(
    exp: &Experiment,
    p: &Point,
    data: &mut HostData,
    s: &Selected,
    d: usize,
    imp: &'static str,
    env_base: &serde_json::Value,
) -> anyhow::Result<(ResultLine, Option<TensorSet>)> {
    let w = crate::cluster::world().context("not a ranked run")?;
    if d == w.rank {
        let local = s.devices[0];
        let (line, out) = super::jobs::run_single(exp, p, data, s, local, imp, env_base)?;
        return Ok((as_rank(line, w, d, local), Some(out)));
    }
    let got: Result<ResultLine, String> = w.recv(d)?;
    got.map(|l| (l, None))
        .map_err(|e| anyhow::anyhow!("rank {d} ({}): {e}", w.ranks[d].host))
}

/// On rank 0: the line of the link from rank `src` to rank `dst` (run here when rank 0 is
/// one end, the line received from `src` otherwise).
pub(super) fn link_on_root(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    s: &Selected,
    src: usize,
    dst: usize,
    env_base: &serde_json::Value,
) -> anyhow::Result<ResultLine> {
    let w = crate::cluster::world().context("not a ranked run")?;
    if w.rank == src {
        return super::jobs::run_link_point(exp, p, inputs, s, src, dst, env_base);
    }
    if w.rank == dst {
        link_end(exp, p, inputs, (src, dst), w)?;
    }
    let got: Result<ResultLine, String> = w.recv(src)?;
    got.map_err(|e| anyhow::anyhow!("rank {src} ({}): {e}", w.ranks[src].host))
}

/// The receiving end of a link between ranks.
fn link_end(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    ends: (usize, usize),
    w: &World,
) -> anyhow::Result<()> {
    let Workload::Link(link) = &p.workload else {
        anyhow::bail!("not a link point");
    };
    crate::split::link::run_link_ranked(w, ends, link, inputs, (exp.warmup, exp.reps))?;
    Ok(())
}

/// A link on a rank other than 0: run its end; the source sends rank 0 the line.
fn follow_link(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    s: &Selected,
    (src, dst): (usize, usize),
    w: &World,
) -> anyhow::Result<()> {
    if w.rank == src {
        let env_base = host_env();
        let line = super::jobs::run_link_point(exp, p, inputs, s, src, dst, &env_base);
        if let Err(e) = &line
            && crate::cluster::is_lost(e)
        {
            anyhow::bail!("{e:#}");
        }
        w.send(0, &line.map_err(|e| format!("{e:#}")))?;
    } else if w.rank == dst {
        link_end(exp, p, inputs, (src, dst), w)?;
    }
    Ok(())
}

/// On every rank but 0: follow rank 0's orders until it says the run is over.
pub fn follow(exp: &Experiment, selected: &[Selected], w: &World) -> anyhow::Result<()> {
    let env_base = host_env();
    let mut host: Option<HostData> = None;
    loop {
        let (index, todo) = match w.broadcast::<Order>(None)? {
            Order::End => return Ok(()),
            Order::Point { index, jobs } => (index, jobs),
        };
        let p = exp
            .points
            .iter()
            .find(|p| p.index == index)
            .with_context(|| format!("rank 0 ordered point {index}, which this file lacks"))?;
        let data = HostData::for_point(&mut host, &p.workload);
        let jobs = jobs_for(p, selected);
        let wanted = jobs
            .iter()
            .filter(|j| todo.contains(&(j.backend().to_string(), j.label())));
        for job in wanted {
            match job {
                Job::Single { s, d, imp } if *d == w.rank => {
                    let local = s.devices[0];
                    let line = imp
                        .clone()
                        .map_err(anyhow::Error::msg)
                        .and_then(|imp| {
                            super::jobs::run_single(exp, p, data, s, local, imp, &env_base)
                        })
                        .map(|(l, _)| as_rank(l, w, *d, local))
                        .map_err(|e| format!("{e:#}"));
                    w.send(0, &line)?;
                }
                Job::Split { s, imp: Ok(imp) } => {
                    super::jobs::follow_split_point(exp, p, data, s, imp, w)?;
                }
                Job::Link { s, src, dst } => {
                    follow_link(exp, p, &data.inputs, s, (*src, *dst), w)?;
                }
                _ => {}
            }
        }
    }
}
