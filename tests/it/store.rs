//! The results store under faults: SIGKILL at random moments (some inside a write), a full
//! disk (injected, and a real small tmpfs where mounting is allowed), a second writer, and a
//! corrupt line in the middle. Each test fails if the lock, the rollback or the resume scan
//! is removed.

use crate::common;

use common::{read_lines, tempdir};
use decodelab::report::ResultLine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_decodelab"));
    c.env_remove("DECODELAB_FAULT");
    c
}

/// 3 ops x 70 sizes: 210 fast stream points, warm, one rep each.
fn sweep(dir: &Path) -> PathBuf {
    let sizes: Vec<String> = (1..=70).map(|i| format!("{}", 4 * 1024 * i)).collect();
    let file = dir.join("sweep.yaml");
    std::fs::write(
        &file,
        format!(
            "name: sweep\nbackends: [cpu]\nwarmup: 0\nreps: 1\ncache: warm\nenergy: off\nruns:\n  - kernel: stream\n    op: [read, copy, write]\n    bytes: [{}]\n",
            sizes.join(", ")
        ),
    )
    .unwrap();
    file
}

fn run(file: &Path, out: &Path, resume: bool) -> Command {
    let mut c = bin();
    c.args(["run", "--no-progress"]);
    c.arg(if resume { "--resume" } else { "--out" }).arg(out);
    c.arg(file).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// What a line says that does not depend on timing.
fn fixed(l: &ResultLine) -> String {
    format!(
        "{} {} {} {} {} {} {}",
        l.kernel, l.backend, l.implementation, l.params, l.bytes, l.check.pass, l.device_count
    )
}

fn by_point(lines: &[ResultLine]) -> BTreeMap<usize, Vec<String>> {
    let mut m: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for l in lines {
        m.entry(l.point).or_default().push(fixed(l));
    }
    m
}

/// SplitMix64: the test's own seeded randomness (kill moments, where a write is cut).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Let `child` run until `results` has grown past `from` bytes, then `after` longer, and
/// SIGKILL it there; or until it ends by itself. Whether it was killed, and its output.
fn kill_mid_sweep(mut child: Child, results: &Path, from: u64, after: Duration) -> (bool, Output) {
    let t0 = Instant::now();
    let mut grew: Option<Instant> = None;
    loop {
        if child.try_wait().unwrap().is_some() {
            return (false, child.wait_with_output().unwrap());
        }
        let len = std::fs::metadata(results).map(|m| m.len()).unwrap_or(0);
        if grew.is_none() && len > from {
            grew = Some(Instant::now());
        }
        if grew.is_some_and(|g| g.elapsed() >= after) || t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill(); // SIGKILL
            return (true, child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn killed_thirty_times_then_resumed_every_point_is_there_once() {
    let dir = tempdir("store-kill");
    let file = sweep(&dir);
    // The run never killed, to compare with.
    let clean = dir.join("clean");
    let o = run(&file, &clean, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = by_point(&read_lines(&clean.join("results.jsonl")));
    assert_eq!(want.len(), 210);

    let out = dir.join("killed");
    let mut rng = 0x5EED_u64;
    let (mut kills, mut in_write, mut resumes) = (0, 0, 0);
    for round in 0.. {
        assert!(round < 400, "the sweep never finished");
        let mut cmd = run(&file, &out, round > 0);
        // Every third round is killed inside a write (half a line on disk, then SIGKILL),
        // the others at a random moment.
        let inside = kills < 30 && round % 3 == 2;
        if inside {
            cmd.env(
                "DECODELAB_FAULT",
                format!("kill-in-write:{}", 1 + next(&mut rng) % 6),
            );
        }
        let results = out.join("results.jsonl");
        let from = std::fs::metadata(&results).map(|m| m.len()).unwrap_or(0);
        let child = cmd.spawn().unwrap();
        let (killed, o) = if kills < 30 && !inside {
            // A random moment after the run has added a line: mid-point, mid-write, between.
            let after = Duration::from_micros(next(&mut rng) % 3000);
            kill_mid_sweep(child, &results, from, after)
        } else {
            (false, child.wait_with_output().unwrap())
        };
        resumes += usize::from(round > 0);
        let by_signal = std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(9);
        if killed || by_signal {
            kills += 1;
            in_write += usize::from(inside && by_signal);
            continue;
        }
        assert!(
            o.status.success(),
            "round {round}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // The sweep finished by itself.
        break;
    }
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<ResultLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line parses"))
        .collect();
    let got = by_point(&lines);
    let duplicates = got.values().filter(|v| v.len() > 1).count();
    let lost = want.keys().filter(|k| !got.contains_key(k)).count();
    eprintln!(
        "kill test: {kills} kills ({in_write} inside a write), {resumes} resumes, {} points, {duplicates} duplicates, {lost} lost",
        got.len()
    );
    assert!(
        kills >= 30 && in_write >= 5,
        "{kills} kills, {in_write} in a write"
    );
    assert_eq!((duplicates, lost), (0, 0));
    assert_eq!(got, want, "the outputs match the run never killed");
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_full_disk_stops_the_run_with_whole_lines_and_the_resume_command() {
    let dir = tempdir("store-enospc");
    let file = sweep(&dir);
    let out = dir.join("out");
    let o = run(&file, &out, false)
        .env("DECODELAB_FAULT", "enospc-at:5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let results = out.join("results.jsonl");
    assert!(
        err.contains(&results.display().to_string())
            && err.contains("No space left on device")
            && err.contains("stopped after 4 results")
            && err.contains(&format!(
                "decodelab run {} --resume {}",
                file.display(),
                out.display()
            )),
        "{err}"
    );
    // Half of the fifth line was written and cut back: four whole lines, no temp files.
    let text = std::fs::read_to_string(&results).unwrap();
    assert!(text.ends_with('\n') && text.lines().count() == 4, "{text}");
    assert!(!out.join("results.tmp").exists() && !out.join("summary.tmp").exists());
    let o = run(&file, &out, true).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("4 results already there, 206 to go"));
    assert_eq!(read_lines(&results).len(), 210);
}

#[test]
fn a_real_small_tmpfs_fills_and_the_file_keeps_whole_lines() {
    let dir = tempdir("store-tmpfs");
    let file = sweep(&dir);
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12k", "tmpfs"])
        .arg(&mnt)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (the injected full disk covers it)");
        return;
    }
    let out = mnt.join("out");
    let o = run(&file, &out, false).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
    let tmp = std::fs::read_dir(&out)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        })
        .unwrap_or(false);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("--resume"),
        "{err}"
    );
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a torn line: {text:?}"
    );
    for l in text.lines() {
        serde_json::from_str::<ResultLine>(l).expect("whole lines only");
    }
    assert!(!tmp, "a .tmp file was left behind");
}

#[test]
fn a_second_writer_is_refused_naming_the_first() {
    let dir = tempdir("store-second");
    let file = sweep(&dir);
    let out = dir.join("out");
    let mut first = run(&file, &out, false).spawn().unwrap();
    // Wait until the first holds the folder (its lock names it).
    let t0 = Instant::now();
    while !std::fs::read_to_string(out.join(".lock"))
        .unwrap_or_default()
        .contains("pid")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first run never took the folder"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = run(&file, &out, true).output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    let _ = first.kill();
    let _ = first.wait();
    if !still_running {
        eprintln!("SKIPPED: the first run ended before the second started");
        return;
    }
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is in use by another run") && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
}

#[test]
fn resume_keeps_the_good_lines_after_a_corrupt_one_and_says_so() {
    let dir = tempdir("store-corrupt");
    let file = sweep(&dir);
    let out = dir.join("out");
    let o = run(&file, &out, false)
        .env("DECODELAB_FAULT", "enospc-at:11")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let results = out.join("results.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 10);
    let damaged_point = serde_json::from_str::<ResultLine>(&lines[3]).unwrap().point;
    lines[3] = lines[3][..lines[3].len() / 2].to_string();
    std::fs::write(&results, lines.join("\n") + "\n").unwrap();
    let o = run(&file, &out, true).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("line 4 is not a result (corrupt")
            && stdout.contains("kept 3 points before it and 6 after it")
            && stdout.contains("9 results already there, 201 to go"),
        "{stdout}"
    );
    let all = read_lines(&results);
    assert_eq!(all.len(), 210);
    assert_eq!(all.iter().filter(|l| l.point == damaged_point).count(), 1);
    assert!(
        std::fs::read_to_string(out.join("results.dropped"))
            .unwrap()
            .lines()
            .count()
            == 1
    );
}

#[test]
fn a_line_of_another_experiment_is_refused_with_its_number() {
    let dir = tempdir("store-foreign");
    let file = sweep(&dir);
    let out = dir.join("out");
    let o = run(&file, &out, false)
        .env("DECODELAB_FAULT", "enospc-at:3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let results = out.join("results.jsonl");
    let text = std::fs::read_to_string(&results).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let foreign = lines[1].replace("\"experiment\":\"sweep\"", "\"experiment\":\"other\"");
    lines[1] = &foreign;
    std::fs::write(&results, lines.join("\n") + "\n").unwrap();
    let o = run(&file, &out, true).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:2:", results.display())) && err.contains("'other'"),
        "{err}"
    );
}
