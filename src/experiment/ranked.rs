//! A run under a launcher (`cluster`): every rank loads the same file and walks the same
//! points; rank 0 says which jobs of each point are still to do (so `--resume` and Ctrl-C
//! hold), runs its own share, collects every other rank's result lines and writes them.
//! The other ranks (`follow`) run what they are told and send back what they measured.

use super::Experiment;
use super::host::HostData;
use super::place::{Place, run_job};
use super::preflight::Selected;
use super::schedule::{host_env, jobs_for};
use crate::cluster::World;
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
            run_job(Place::Follower(w), (exp, p, data), job, &env_base)?;
        }
    }
}
