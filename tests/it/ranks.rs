//! Runs across processes: `mpirun -n 4 decodelab run` with one rank per device. Every split
//! kind must combine to exactly what one process makes of the same point; a rank that dies or
//! hangs must end the run with an error naming it, keeping every line already written.
//! Needs Open MPI's mpirun (skipped with a printed reason, a failure when DECODELAB_REQUIRE
//! includes mpi).

use crate::common;

use common::{read_lines, tempdir, wait_for_lines};
use decodelab::report::ResultLine;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One mpirun job at a time: four ranks each already oversubscribe a 2-core machine, and the
/// timing tests (a stuck rank, a killed one) must not wait on another test's ranks.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_job() -> std::sync::MutexGuard<'static, ()> {
    ONE_JOB.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun -n N` with the flags a CI container needs (root, more ranks than cores), or None
/// after printing why the test is skipped.
fn mpirun(n: usize) -> Option<Command> {
    let version = Command::new("mpirun").arg("--version").output();
    let why = match &version {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("Open MPI") => None,
        Ok(_) => Some("this mpirun is not Open MPI's".to_string()),
        Err(e) => Some(format!("no mpirun ({e})")),
    };
    if !common::tool_or_skip("mpi", why.map_or(Ok(()), Err)) {
        return None;
    }
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        &n.to_string(),
    ])
    .arg(env!("CARGO_BIN_EXE_decodelab"));
    Some(c)
}

fn said(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every split point of experiments/ranks.yaml, over 4 ranks and over 4 virtual devices of
/// one process: the same outputs, byte for byte (the sequence merge included: same shards,
/// same merge order), and equal to one device wherever the split is exact.
fn splits_match_one_process(backend: &str) {
    let _one = one_job();
    let Some(mut ranked) = mpirun(4) else {
        return;
    };
    let dir = tempdir(backend);
    let o = ranked
        .args([
            "run",
            "experiments/ranks.yaml",
            "--backend",
            backend,
            "--out",
        ])
        .arg(dir.join("ranked"))
        .arg("--dump")
        .arg(dir.join("ranked-dump"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let lines = read_lines(&dir.join("ranked/results.jsonl"));
    let mut kinds: Vec<&str> = lines.iter().map(|l| l.split.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "data", "experts", "heads", "link", "none", "sequence", "tensor"
        ]
    );
    for l in &lines {
        assert!(l.check.pass, "{l:?}");
        assert_eq!(l.env["world"]["ranks"], 4, "{l:?}");
        if l.split == "none" {
            continue;
        }
        if let Some(link) = &l.link {
            assert!(
                link.path.starts_with("MPI between two ranks"),
                "{}",
                link.path
            );
            continue;
        }
        let m = l
            .multi
            .as_ref()
            .expect("a split line has its multi section");
        let vs = m
            .vs_one_device
            .as_ref()
            .expect("the one-device baseline ran");
        assert!(vs.pass, "{l:?}");
        assert_eq!(
            vs.identical,
            l.split != "sequence",
            "point {}: {vs:?}",
            l.point
        );
        assert!(m.combine.method.starts_with("mpi"), "{}", m.combine.method);
        assert_eq!(m.combine.merge_on, "host", "{l:?}");
        assert_eq!(l.device_count, 4);
    }
    // One-device points ran on every rank, and each line says which.
    let mut ranks: Vec<u64> = lines
        .iter()
        .filter(|l| l.split == "none")
        .map(|l| l.env["rank"].as_u64().unwrap())
        .collect();
    ranks.sort();
    assert_eq!(ranks, [0, 1, 2, 3]);
    // Links: every ordered pair of ranks, each direction setting.
    let mut pairs: Vec<String> = lines
        .iter()
        .filter(|l| l.link.is_some())
        .map(|l| l.env["devices"].as_str().unwrap().to_string())
        .collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 12, "{pairs:?}");
    assert_eq!(lines.iter().filter(|l| l.link.is_some()).count(), 24);

    // The same file on 4 virtual devices of one process.
    let text = std::fs::read_to_string("experiments/ranks.yaml").unwrap();
    let one = text.replace("devices: all", "devices: 4\nvirtual: true");
    assert_ne!(one, text);
    std::fs::write(dir.join("one.yaml"), one).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_decodelab"))
        .arg("run")
        .arg(dir.join("one.yaml"))
        .args(["--backend", backend, "--out"])
        .arg(dir.join("one"))
        .arg("--dump")
        .arg(dir.join("one-dump"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let mut compared = 0;
    for l in lines
        .iter()
        .filter(|l| l.split != "none" && l.link.is_none())
    {
        let p = l.point.to_string();
        for f in std::fs::read_dir(dir.join("one-dump").join(&p)).unwrap() {
            let name = f.unwrap().file_name();
            if name == "meta.json" {
                continue;
            }
            let a = std::fs::read(dir.join("ranked-dump").join(&p).join(&name)).unwrap();
            let b = std::fs::read(dir.join("one-dump").join(&p).join(&name)).unwrap();
            assert!(
                a == b,
                "point {p}: {name:?} differs between 4 ranks and one process"
            );
            compared += 1;
        }
    }
    assert!(compared > 40, "only {compared} dumped files compared");
}

#[test]
fn four_ranks_on_cpu_combine_every_split_like_one_process() {
    splits_match_one_process("cpu");
}

#[test]
fn four_ranks_on_wgpu_combine_every_split_like_one_process() {
    if common::backend_or_skip("wgpu").is_some() {
        splits_match_one_process("wgpu");
    }
}

/// A sweep long enough to be caught mid-way: stream points, then data splits.
const SLOW: &str = "name: slow
backends: [cpu]
devices: all
warmup: 1
reps: 5
runs:
  - kernel: stream
    op: read
    bytes: [8MiB, 9MiB, 10MiB, 11MiB, 12MiB, 13MiB, 14MiB, 15MiB]
  - kernel: stream
    split: data
    op: read
    bytes: [64MiB, 65MiB, 66MiB, 67MiB, 68MiB, 69MiB, 70MiB, 71MiB, 72MiB, 73MiB]
";

/// The pid of rank `rank` of a running mpirun job (from its environment).
fn rank_pid(rank: usize) -> Option<i32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let ours =
            exe.ends_with("decodelab") && env.windows(want.len()).any(|w| w == want.as_bytes());
        ours.then_some(pid)
    })
}

/// Start the slow sweep on 4 ranks, wait for its first results, send rank 2 `signal`, and
/// return what the run said, its exit status, how long it took to end, and its folder.
fn hurt_rank_2(name: &str, signal: i32, timeout_s: &str) -> Option<(Output, Duration, PathBuf)> {
    let mut cmd = mpirun(4)?;
    let dir = tempdir(name);
    std::fs::write(dir.join("slow.yaml"), SLOW).unwrap();
    let child: Child = cmd
        .arg("run")
        .arg(dir.join("slow.yaml"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--rank-timeout", timeout_s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lines(
        &dir.join("out/results.jsonl"),
        1,
        None,
        Duration::from_secs(60),
    );
    let pid = rank_pid(2).expect("rank 2 is running");
    let hurt = Instant::now();
    unsafe { libc::kill(pid, signal) };
    let o = child.wait_with_output().unwrap();
    Some((o, hurt.elapsed(), dir.join("out")))
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_and_keeps_what_finished() {
    let _one = one_job();
    let Some((o, took, out)) = hurt_rank_2("killed", libc::SIGKILL, "60") else {
        return;
    };
    assert!(!o.status.success(), "{}", said(&o));
    assert!(
        took < Duration::from_secs(30),
        "took {took:?} to end\n{}",
        said(&o)
    );
    assert!(said(&o).contains("rank 2"), "{}", said(&o));
    let lines = read_lines(&out.join("results.jsonl"));
    assert!(!lines.is_empty() && lines.len() < 4 * 8 + 10);
    assert!(lines.iter().all(|l| l.check.pass));
    // --resume under the launcher finishes the rest, each job once.
    let o = mpirun(4)
        .unwrap()
        .arg("run")
        .arg(out.parent().unwrap().join("slow.yaml"))
        .arg("--resume")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let lines = read_lines(&out.join("results.jsonl"));
    let mut keys: Vec<_> = lines.iter().map(ResultLine::key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!((keys.len(), lines.len()), (4 * 8 + 10, 4 * 8 + 10));
}

#[test]
fn a_stuck_rank_ends_the_run_at_the_rank_timeout() {
    let _one = one_job();
    let Some((o, took, out)) = hurt_rank_2("stuck", libc::SIGSTOP, "8") else {
        return;
    };
    let text = said(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        took < Duration::from_secs(40),
        "took {took:?} to end\n{text}"
    );
    // Rank 0 names the rank, the timeout, and where the results are.
    assert!(
        text.contains("waiting for rank 2: no answer within 8 s"),
        "{text}"
    );
    assert!(text.contains("--resume"), "{text}");
    assert!(out.join("summary.md").exists() && out.join("results.csv").exists());
    let lines = read_lines(&out.join("results.jsonl"));
    assert!(!lines.is_empty());
}

#[test]
fn a_device_count_other_than_the_ranks_is_refused_once_by_name() {
    let _one = one_job();
    let Some(mut cmd) = mpirun(2) else {
        return;
    };
    let dir = tempdir("refused");
    let text = std::fs::read_to_string("experiments/ranks.yaml").unwrap();
    std::fs::write(
        dir.join("three.yaml"),
        text.replace("devices: all", "devices: 3"),
    )
    .unwrap();
    let o = cmd
        .arg("run")
        .arg(dir.join("three.yaml"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    let text = said(&o);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("three.yaml:") && text.contains("devices: 3, but"),
        "{text}"
    );
    // Every rank refuses; rank 0 says so once, for all.
    assert_eq!(text.matches("devices: 3, but").count(), 1, "{text}");
    assert!(!dir.join("out/results.jsonl").exists());
}

#[test]
fn the_readme_cluster_command_works_as_written() {
    let _one = one_job();
    let readme = std::fs::read_to_string("README.md").unwrap();
    let section = &readme[readme.find("## Running on a cluster").expect("the section")..];
    let line = section
        .lines()
        .find(|l| l.starts_with("mpirun "))
        .expect("an mpirun command");
    let Some(_) = mpirun(1) else {
        return;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let bin = words.iter().position(|w| w.ends_with("decodelab")).unwrap();
    assert_eq!(words[bin], "target/release/decodelab");
    let out = tempdir("readme");
    let o = Command::new(words[0])
        .args(&words[1..bin])
        .arg(env!("CARGO_BIN_EXE_decodelab"))
        .args(&words[bin + 1..])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{line}\n{}", said(&o));
    let lines = read_lines(&out.join("results.jsonl"));
    assert!(!lines.is_empty() && lines.iter().all(|l| l.check.pass));
}
