//! Runs across processes and hosts: one rank per device, started by a launcher (`mpirun`,
//! `srun`), as nccl-tests and the serving engines run. The launcher's environment says that
//! this process is a rank; MPI (loaded at run time, `mpi`) carries the messages. Rank 0
//! drives the run and writes the results; every other rank runs what rank 0 asks and sends
//! back what it measured. Every wait has a deadline (`timeout`), so a dead or stuck rank ends
//! the run with an error naming it, never a hang.

pub mod mpi;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

/// What a launcher's environment says about this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// "Open MPI", "MPICH (Hydra)", "Slurm".
    pub launcher: &'static str,
    pub rank: usize,
    pub size: usize,
    /// This rank's index among the ranks on its host: which local device it uses.
    pub local_rank: usize,
}

/// The launcher this process was started by, from its environment; None when it was
/// started by hand (then a run is the single-process run it always was).
pub fn launch_env() -> Option<LaunchEnv> {
    launch_env_from(|k| std::env::var(k).ok())
}

/// `launch_env` over any environment (tests pass their own).
pub fn launch_env_from(get: impl Fn(&str) -> Option<String>) -> Option<LaunchEnv> {
    let num = |k: &str| get(k).and_then(|v| v.trim().parse::<usize>().ok());
    let from = |launcher, rank: &str, size: &str, local: &str| {
        Some(LaunchEnv {
            launcher,
            rank: num(rank)?,
            size: num(size)?,
            local_rank: num(local).unwrap_or(0),
        })
    };
    from(
        "Open MPI",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    )
    .or_else(|| from("MPICH (Hydra)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"))
    // srun sets SLURM_STEP_ID for each task it starts; sbatch's script alone is not a rank.
    .or_else(|| {
        get("SLURM_STEP_ID")?;
        from("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    })
}

/// How long a rank waits for another before it gives up on it: `--rank-timeout`, else
/// `DECODELAB_RANK_TIMEOUT` (seconds), else 600 s. Longer than the slowest point.
pub fn timeout() -> Duration {
    *TIMEOUT.get_or_init(|| {
        let secs = std::env::var("DECODELAB_RANK_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .unwrap_or(600.0);
        Duration::from_secs_f64(secs)
    })
}

static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Set the rank timeout (from `--rank-timeout`); only before the first use.
pub fn set_timeout(secs: f64) {
    let _ = TIMEOUT.set(Duration::from_secs_f64(secs));
}

/// A rank could not be reached within the timeout: the world is broken and the run ends.
#[derive(Debug)]
pub struct Lost(pub String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Lost {}

/// Whether `e` says a rank was lost (then nothing more can be exchanged).
pub fn is_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Lost>())
}

/// One rank as the others see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RankInfo {
    pub host: String,
    pub local_rank: usize,
    pub pid: u32,
}

/// Every rank of the run, joined through MPI.
pub struct World {
    mpi: mpi::Mpi,
    pub launcher: &'static str,
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// ranks[r]: where rank r runs.
    pub ranks: Vec<RankInfo>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl World {
    /// Join the ranks the launcher started: initialize MPI, check it sees the world the
    /// launcher announced, and learn where every rank runs.
    pub fn join(env: &LaunchEnv) -> anyhow::Result<World> {
        let mpi = mpi::Mpi::init().with_context(|| {
            format!(
                "{} started this process as rank {} of {}, and it needs MPI to reach the others",
                env.launcher, env.rank, env.size
            )
        })?;
        anyhow::ensure!(
            mpi.rank == env.rank && mpi.size == env.size,
            "{} announced rank {} of {}, but {} sees rank {} of {}: the launcher and the MPI \
             library do not match (under srun, pass --mpi=pmix or --mpi=pmi2; under mpirun, \
             use the mpirun of the library decodelab loads, or name it in DECODELAB_MPI_LIB)",
            env.launcher,
            env.rank,
            env.size,
            mpi.library,
            mpi.rank,
            mpi.size
        );
        let mut w = World {
            launcher: env.launcher,
            rank: mpi.rank,
            size: mpi.size,
            local_rank: env.local_rank,
            mpi,
            ranks: Vec::new(),
        };
        let me = RankInfo {
            host: hostname(),
            local_rank: env.local_rank,
            pid: std::process::id(),
        };
        let all = w.gather(&me)?;
        let all: Vec<RankInfo> = match all {
            Some(v) => w.broadcast(Some(&v))?,
            None => w.broadcast(None)?,
        };
        w.ranks = all;
        Ok(w)
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The MPI library in use, for the run header.
    pub fn library(&self) -> &str {
        &self.mpi.library
    }

    /// Send a raw message to `to`.
    pub fn send_bytes(&self, to: usize, bytes: &[u8]) -> anyhow::Result<()> {
        self.mpi
            .send(to, bytes, self.wait_for(to))
            .map_err(|e| self.lost(to, e))
    }

    /// How long this rank waits on `peer`: the other ranks wait for rank 0 twice as long as
    /// it waits for them, since rank 0 may itself be waiting on a stuck rank, and it is the
    /// one that can name it.
    fn wait_for(&self, peer: usize) -> Duration {
        if peer == 0 && !self.is_root() {
            2 * timeout()
        } else {
            timeout()
        }
    }

    /// The next raw message from `from`.
    pub fn recv_bytes(&self, from: usize) -> anyhow::Result<Vec<u8>> {
        self.mpi
            .recv(from, self.wait_for(from))
            .map_err(|e| self.lost(from, e))
    }

    fn lost(&self, peer: usize, e: anyhow::Error) -> anyhow::Error {
        let at = self
            .ranks
            .get(peer)
            .map(|r| format!(" (host {}, pid {})", r.host, r.pid))
            .unwrap_or_default();
        Lost(format!(
            "{e:#}{at}; a rank that died or hangs ends the run (DECODELAB_RANK_TIMEOUT or \
             --rank-timeout sets the wait)"
        ))
        .into()
    }

    /// Send `bytes` to `peer` while receiving its message (both ways at once).
    pub fn exchange_bytes(&self, peer: usize, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.mpi
            .exchange(peer, bytes, timeout())
            .map_err(|e| self.lost(peer, e))
    }

    pub fn send<T: Serialize>(&self, to: usize, v: &T) -> anyhow::Result<()> {
        self.send_bytes(to, &serde_json::to_vec(v)?)
    }

    pub fn recv<T: for<'de> Deserialize<'de>>(&self, from: usize) -> anyhow::Result<T> {
        let bytes = self.recv_bytes(from)?;
        serde_json::from_slice(&bytes).with_context(|| format!("a bad message from rank {from}"))
    }

    /// Every rank's `v` on rank 0 (in rank order); None on the others.
    pub fn gather<T: Serialize + for<'de> Deserialize<'de> + Clone>(
        &self,
        v: &T,
    ) -> anyhow::Result<Option<Vec<T>>> {
        if !self.is_root() {
            self.send(0, v)?;
            return Ok(None);
        }
        let mut all = vec![v.clone()];
        for r in 1..self.size {
            all.push(self.recv(r)?);
        }
        Ok(Some(all))
    }

    /// Rank 0's `v` on every rank (the others pass None).
    pub fn broadcast<T: Serialize + for<'de> Deserialize<'de> + Clone>(
        &self,
        v: Option<&T>,
    ) -> anyhow::Result<T> {
        match v.filter(|_| self.is_root()) {
            Some(v) => {
                for r in 1..self.size {
                    self.send(r, v)?;
                }
                Ok(v.clone())
            }
            None => self.recv(0),
        }
    }

    /// Every rank's error (`all[r]`, None where it had none), each distinct one once with
    /// the ranks and hosts that had it (one every rank had, alone); None when there is none.
    pub fn errors(&self, all: &[Option<String>]) -> Option<String> {
        let mut distinct: Vec<(&String, Vec<usize>)> = Vec::new();
        for (r, e) in all.iter().enumerate() {
            let Some(e) = e else { continue };
            match distinct.iter_mut().find(|(d, _)| *d == e) {
                Some((_, ranks)) => ranks.push(r),
                None => distinct.push((e, vec![r])),
            }
        }
        let lines: Vec<String> = distinct
            .into_iter()
            .map(|(e, ranks)| {
                if ranks.len() == self.size {
                    return e.clone();
                }
                let at: Vec<String> = ranks
                    .iter()
                    .map(|&r| match self.ranks.get(r) {
                        Some(i) => format!("rank {r} ({})", i.host),
                        None => format!("rank {r}"),
                    })
                    .collect();
                format!("{}: {e}", at.join(", "))
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// Hosts in the order their first rank appears, with how many ranks each runs.
    pub fn hosts(&self) -> Vec<(String, usize)> {
        let mut hosts: Vec<(String, usize)> = Vec::new();
        for r in &self.ranks {
            match hosts.iter_mut().find(|(h, _)| *h == r.host) {
                Some(h) => h.1 += 1,
                None => hosts.push((r.host.clone(), 1)),
            }
        }
        hosts
    }

    /// What a result line records about the world it ran in.
    pub fn describe(&self) -> serde_json::Value {
        let hosts = self.hosts();
        let per_host: Vec<usize> = hosts.iter().map(|h| h.1).collect();
        serde_json::json!({
            "launcher": self.launcher,
            "mpi": self.mpi.library,
            "ranks": self.size,
            "hosts": hosts.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
            "ranks_per_host": per_host,
            "between_ranks": if hosts.len() == 1 {
                "one host: MPI over shared memory"
            } else {
                "several hosts: MPI over the network between hosts, shared memory within one"
            },
            "rank_timeout_s": timeout().as_secs_f64(),
        })
    }

    /// End every rank with `code`, through the launcher.
    pub fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }

    pub fn finalize(&self) {
        self.mpi.finalize();
    }
}

static WORLD: OnceLock<World> = OnceLock::new();

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A signal came (Ctrl-C, or the launcher's SIGTERM when another rank died): every wait
/// on another rank ends now instead of at its timeout.
pub fn interrupt() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The world this process is a rank of, once `join_world` joined it; None in a
/// single-process run. MPI's world is one per process, and so is this.
pub fn world() -> Option<&'static World> {
    WORLD.get()
}

/// Join the launcher's world, when a launcher started this process: afterwards `world()`
/// answers. Ok(None) when there is no launcher.
pub fn join_world() -> anyhow::Result<Option<&'static World>> {
    let Some(env) = launch_env() else {
        return Ok(None);
    };
    let w = World::join(&env)?;
    Ok(Some(WORLD.get_or_init(|| w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<LaunchEnv> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        launch_env_from(|k| map.get(k).cloned())
    }

    #[test]
    fn each_launcher_is_read_from_its_own_variables() {
        let ompi = env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap();
        assert_eq!(
            (ompi.launcher, ompi.rank, ompi.size, ompi.local_rank),
            ("Open MPI", 3, 4, 1)
        );
        let hydra = env(&[
            ("PMI_RANK", "2"),
            ("PMI_SIZE", "8"),
            ("MPI_LOCALRANKID", "2"),
        ])
        .unwrap();
        assert_eq!(
            (hydra.launcher, hydra.rank, hydra.size, hydra.local_rank),
            ("MPICH (Hydra)", 2, 8, 2)
        );
        let slurm = [
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
        ];
        let s = env(&slurm).unwrap();
        assert_eq!(
            (s.launcher, s.rank, s.size, s.local_rank),
            ("Slurm", 5, 16, 1)
        );
    }

    #[test]
    fn no_launcher_and_a_batch_script_are_not_ranks() {
        assert_eq!(env(&[]), None);
        // sbatch's own shell has SLURM_PROCID but no step: it is not a rank.
        assert_eq!(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]), None);
        assert_eq!(
            env(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")]),
            None
        );
    }
}
