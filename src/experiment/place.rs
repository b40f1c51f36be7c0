//! One job, run by one function from wherever this process stands: alone, as rank 0 of a
//! launcher's world (which writes every line), or as another rank (which runs its share and
//! sends rank 0 what it measured).

use super::host::HostData;
use super::schedule::Job;
use super::{Experiment, Point, jobs};
use crate::cluster::World;
use crate::report::ResultLine;
use crate::workload::{TensorSet, Workload};
use anyhow::{anyhow, bail};

/// Where this process stands in a job.
#[derive(Clone, Copy)]
pub(super) enum Place<'w> {
    /// No launcher: the job is this process's alone.
    Local,
    /// Rank 0 of `world`: it runs its share and gathers the line.
    Root(&'w World),
    /// Another rank of `world`: it runs its share and sends rank 0 its line.
    Follower(&'w World),
}

/// A job's line and its outputs (none for a link, or for a line another rank measured), as
/// rank 0 or a lone process returns it; None on a follower, which sent its line to rank 0.
pub(super) fn run_job(
    place: Place,
    (exp, p, data): (&Experiment, &Point, &mut HostData),
    job: &Job,
    env_base: &serde_json::Value,
) -> anyhow::Result<Option<(ResultLine, Option<TensorSet>)>> {
    match (job, place) {
        (Job::Single { s, d, imp }, Place::Local) => {
            let imp = imp.clone().map_err(anyhow::Error::msg)?;
            let (line, out) = jobs::run_single(exp, p, data, s, *d, imp, env_base)?;
            Ok(Some((line, Some(out))))
        }
        (Job::Single { s, d, imp }, Place::Root(w)) => {
            let imp = imp.clone().map_err(anyhow::Error::msg)?;
            if *d == w.rank {
                let local = s.devices[0];
                let (line, out) = jobs::run_single(exp, p, data, s, local, imp, env_base)?;
                return Ok(Some((as_rank(line, w, *d, local), Some(out))));
            }
            // A rank's error comes back as this job's error.
            let got: Result<ResultLine, String> = w.recv(*d)?;
            got.map(|l| Some((l, None)))
                .map_err(|e| anyhow!("rank {d} ({}): {e}", w.ranks[*d].host))
        }
        (Job::Single { s, d, imp }, Place::Follower(w)) if *d == w.rank => {
            let local = s.devices[0];
            let line = imp
                .clone()
                .map_err(anyhow::Error::msg)
                .and_then(|imp| jobs::run_single(exp, p, data, s, local, imp, env_base))
                .map(|(l, _)| as_rank(l, w, *d, local))
                .map_err(|e| format!("{e:#}"));
            w.send(0, &line)?;
            Ok(None)
        }
        (Job::Single { .. }, Place::Follower(_)) => Ok(None),
        (Job::Split { s, imp }, Place::Local | Place::Root(_)) => {
            let imp = imp.clone().map_err(anyhow::Error::msg)?;
            let (line, out) = jobs::run_split_point(exp, p, data, s, imp, env_base)?;
            Ok(Some((line, Some(out))))
        }
        (Job::Split { s, imp }, Place::Follower(w)) => {
            if let Ok(imp) = imp {
                jobs::follow_split_point(exp, p, data, s, imp, w)?;
            }
            Ok(None)
        }
        (Job::Link { s, src, dst }, Place::Local) => {
            jobs::run_link_point(exp, p, &data.inputs, s, *src, *dst, env_base)
                .map(|l| Some((l, None)))
        }
        (Job::Link { s, src, dst }, Place::Root(w) | Place::Follower(w)) => {
            let line = if w.rank == *src {
                Some(jobs::run_link_point(
                    exp,
                    p,
                    &data.inputs,
                    s,
                    *src,
                    *dst,
                    env_base,
                ))
            } else {
                if w.rank == *dst {
                    link_end(exp, p, &data.inputs, (*src, *dst), w)?;
                }
                None
            };
            match (place, line) {
                (Place::Root(_), Some(line)) => line.map(|l| Some((l, None))),
                (Place::Root(_), None) => {
                    let got: Result<ResultLine, String> = w.recv(*src)?;
                    got.map(|l| Some((l, None)))
                        .map_err(|e| anyhow!("rank {src} ({}): {e}", w.ranks[*src].host))
                }
                (_, Some(line)) => {
                    // A lost peer ends this rank's run; any other failure is the line's.
                    if let Err(e) = &line
                        && crate::cluster::is_lost(e)
                    {
                        bail!("{e:#}");
                    }
                    w.send(0, &line.map_err(|e| format!("{e:#}")))?;
                    Ok(None)
                }
                (_, None) => Ok(None),
            }
        }
    }
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

/// The receiving end of a link between ranks.
fn link_end(
    exp: &Experiment,
    p: &Point,
    inputs: &TensorSet,
    ends: (usize, usize),
    w: &World,
) -> anyhow::Result<()> {
    let Workload::Link(link) = &p.workload else {
        bail!("not a link point");
    };
    crate::split::link::run_link_ranked(w, ends, link, inputs, (exp.warmup, exp.reps))?;
    Ok(())
}
