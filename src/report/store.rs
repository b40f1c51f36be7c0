//! The results store: one writer per results folder, whole lines only, each durable before
//! the next point starts.
//!
//! What survives what:
//! - SIGKILL, a crash, power loss: every line appended before it (each is fsync'd); at most
//!   a torn last line, set aside on resume and its point run again.
//! - A failed write (disk full, I/O error, file too large, the folder removed): the file is
//!   cut back to its last whole line and the run stops (`StoreFailed`, exit 3), naming the
//!   file, the OS error and the `--resume` command.
//! - A second run or `--resume` on the same folder: refused at once (`Locked`), naming the
//!   holder's pid and command. The lock is `flock`, so a killed holder frees it.
//! - A corrupt line in the middle: set aside (into `results.dropped`) with its number; the
//!   good lines after it are kept.

use super::{ResultLine, SCHEMA};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Test hooks (`DECODELAB_FAULT`): `kill-in-write:N` writes half of the N-th line of this
/// process, syncs it and SIGKILLs itself; `enospc-at:N` writes half of it and fails as a full
/// disk would. The fault-injection tests use them; nothing else should.
const FAULT_ENV: &str = "DECODELAB_FAULT";

/// The folder is another run's.
#[derive(Debug)]
pub struct Locked {
    pub dir: PathBuf,
    /// What the holder wrote into the lock: its pid and command line.
    pub holder: String,
}

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is in use by another run ({}); wait for it to end, or write to another --out",
            self.dir.display(),
            self.holder
        )
    }
}

impl std::error::Error for Locked {}

/// A result line could not be written: the file holds the lines before it, whole.
#[derive(Debug)]
pub struct StoreFailed {
    pub path: PathBuf,
    pub error: std::io::Error,
    /// Why the cut back to the last whole line failed too, if it did.
    pub rollback: Option<std::io::Error>,
}

impl std::fmt::Display for StoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write {}: {}", self.path.display(), self.error)?;
        match &self.rollback {
            None => write!(f, " (the file holds every line before it, whole)"),
            Some(e) => write!(
                f,
                " (and cutting it back to its last whole line failed: {e}; resume sets the torn line aside)"
            ),
        }
    }
}

impl std::error::Error for StoreFailed {}

/// An exclusive `flock` on a results folder's `.lock`, held while the value lives.
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Take the folder, or say who holds it. The lock file keeps the holder's pid and command.
    pub fn acquire(dir: &Path) -> anyhow::Result<FolderLock> {
        let path = dir.join(".lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this File owns; no memory is involved.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                anyhow::bail!("cannot lock {}: {err}", path.display());
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().replace('\n', ": ");
            return Err(Locked {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "pid unknown".into()
                } else {
                    holder
                },
            }
            .into());
        }
        let args: Vec<String> = std::env::args().collect();
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "pid {}\n{}", std::process::id(), args.join(" "))?;
        Ok(FolderLock { _file: file })
    }
}

/// The results file of a run, opened for appending under the folder's lock.
pub struct ResultsFile {
    file: File,
    pub path: PathBuf,
    /// Bytes of whole lines: where a failed write is cut back to.
    len: u64,
    appended: u64,
    _lock: FolderLock,
}

/// What opening a results file found: its good lines, and what resume should be told.
pub struct Opened {
    pub file: ResultsFile,
    pub lines: Vec<ResultLine>,
    /// One sentence per line set aside.
    pub notes: Vec<String>,
}

impl ResultsFile {
    /// Open `dir`'s results.jsonl for appending (created if absent). Every line is read: a
    /// torn or corrupt one is set aside into results.dropped and said (the good lines around
    /// it are kept, and the file is rewritten without it, whole or not at all); a line of
    /// another experiment or schema is refused with its number.
    pub fn open(dir: &Path, lock: FolderLock, experiment: &str) -> anyhow::Result<Opened> {
        let path = dir.join("results.jsonl");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let (lines, dropped) = scan(&path, &text, experiment)?;
        let mut notes = Vec::new();
        if !dropped.is_empty() {
            for &(number, _, ref why) in &dropped {
                let before = lines.iter().filter(|(n, _, _)| *n < number).count();
                let after = lines.len() - before;
                notes.push(format!(
                    "{}: line {number} is not a result ({why}): kept {before} points before it and {after} after it; it is set aside in results.dropped and its point runs again",
                    path.display()
                ));
            }
            let mut aside = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("results.dropped"))?;
            for (_, raw, _) in &dropped {
                aside.write_all(raw)?;
                aside.write_all(b"\n")?;
            }
            aside.sync_all()?;
            // The good lines as they were written, byte for byte.
            let mut kept = Vec::new();
            for (_, _, raw) in &lines {
                kept.extend_from_slice(raw);
                kept.push(b'\n');
            }
            write_atomic_bytes(&path, &kept)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Opened {
            file: ResultsFile {
                file,
                path,
                len,
                appended: 0,
                _lock: lock,
            },
            lines: lines.into_iter().map(|(_, l, _)| l).collect(),
            notes,
        })
    }

    /// Append one line in one write and make it durable; on failure cut the file back to its
    /// last whole line.
    pub fn append(&mut self, line: &ResultLine) -> Result<(), StoreFailed> {
        let mut text = serde_json::to_string(line).expect("a result line serialises");
        text.push('\n');
        self.appended += 1;
        let written = match fault(self.appended) {
            Some(Fault::KillInWrite) => {
                let _ = self.file.write_all(&text.as_bytes()[..text.len() / 2]);
                let _ = self.file.sync_data();
                // SAFETY: kill(2) on this process; the test hook's whole point.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                unreachable!("SIGKILL ends the process");
            }
            Some(Fault::Enospc) => self
                .file
                .write_all(&text.as_bytes()[..text.len() / 2])
                .and(Err(std::io::Error::from_raw_os_error(libc::ENOSPC))),
            None => self
                .file
                .write_all(text.as_bytes())
                .and_then(|()| self.file.sync_data()),
        };
        match written {
            Ok(()) => {
                self.len += text.len() as u64;
                Ok(())
            }
            Err(error) => Err(StoreFailed {
                path: self.path.clone(),
                error,
                rollback: self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .err(),
            }),
        }
    }
}

/// A line as read: its number (from 1), the line and its bytes; or its bytes and why it is
/// not one.
type Scanned<'t> = (
    Vec<(usize, ResultLine, &'t [u8])>,
    Vec<(usize, Vec<u8>, String)>,
);

fn scan<'t>(path: &Path, text: &'t [u8], experiment: &str) -> anyhow::Result<Scanned<'t>> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut pieces: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    // What follows the last newline: empty, or a line cut short.
    let tail = pieces.pop().unwrap_or_default();
    for (i, raw) in pieces.iter().enumerate() {
        let number = i + 1;
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let parsed = std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str::<ResultLine>(s).map_err(|e| e.to_string()));
        match parsed {
            Ok(l) if l.schema != SCHEMA => anyhow::bail!(
                "{}:{number}: a line of schema '{}', not '{SCHEMA}': this version cannot resume it",
                path.display(),
                l.schema
            ),
            Ok(l) if l.experiment != experiment => anyhow::bail!(
                "{}:{number}: a line of experiment '{}', not '{experiment}': not this run's results",
                path.display(),
                l.experiment
            ),
            Ok(l) => good.push((number, l, *raw)),
            Err(e) => bad.push((number, raw.to_vec(), format!("corrupt: {e}"))),
        }
    }
    if !tail.is_empty() {
        bad.push((
            pieces.len() + 1,
            tail.to_vec(),
            "truncated: the last line has no end".into(),
        ));
    }
    Ok((good, bad))
}

enum Fault {
    KillInWrite,
    Enospc,
}

/// The test hook's fault for the n-th append of this process, if any.
fn fault(n: u64) -> Option<Fault> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let (kind, at) = spec.split_once(':')?;
    (at.parse::<u64>().ok()? == n).then_some(())?;
    match kind {
        "kill-in-write" => Some(Fault::KillInWrite),
        "enospc-at" => Some(Fault::Enospc),
        _ => None,
    }
}

/// Write a file whole or not at all: a temp file beside it, synced, renamed over it; the temp
/// file is removed when anything fails.
pub fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_atomic_bytes(path, contents.as_bytes())
}

fn write_atomic_bytes(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(point: usize, experiment: &str) -> String {
        format!(
            r#"{{"schema":"{SCHEMA}","experiment":"{experiment}","point":{point},"kernel":"stream","backend":"cpu","device":"x","device_count":1,"split":"none","params":{{"op":"read"}},"bytes":4,"flops":0,"reps":1,"time_s":{{"median":1,"min":1,"max":1}},"gbps":1,"pct_of_spec":null,"pct_of_stream":null,"cache":"cold","energy":{{"source":"none","joules":null,"pj_per_byte":null}},"check":{{"rel_l2_err":0,"max_abs_err":0,"pass":true}},"env":{{}}}}"#
        )
    }

    #[test]
    fn a_corrupt_line_costs_only_itself_and_a_torn_tail_is_cut() {
        let p = Path::new("r.jsonl");
        let text = format!(
            "{}\n{}\n{{\"schema\": broken\n{}\n{}",
            line(0, "e"),
            line(1, "e"),
            line(3, "e"),
            &line(4, "e")[..40]
        );
        let (good, bad) = scan(p, text.as_bytes(), "e").unwrap();
        let points: Vec<usize> = good.iter().map(|(_, l, _)| l.point).collect();
        assert_eq!(
            points,
            [0, 1, 3],
            "the good line after the corrupt one is kept"
        );
        let numbers: Vec<usize> = bad.iter().map(|b| b.0).collect();
        assert_eq!(numbers, [3, 5]);
        assert!(bad[0].2.starts_with("corrupt") && bad[1].2.starts_with("truncated"));
    }

    #[test]
    fn a_line_of_another_experiment_or_schema_is_refused_with_its_number() {
        let p = Path::new("r.jsonl");
        let text = format!("{}\n{}\n", line(0, "e"), line(1, "other"));
        let err = scan(p, text.as_bytes(), "e").unwrap_err().to_string();
        assert!(
            err.starts_with("r.jsonl:2:") && err.contains("'other'"),
            "{err}"
        );
        let text = format!("{}\n", line(0, "e").replace(SCHEMA, "decodelab.result/0"));
        let err = scan(p, text.as_bytes(), "e").unwrap_err().to_string();
        assert!(
            err.starts_with("r.jsonl:1:") && err.contains("schema"),
            "{err}"
        );
    }
}
