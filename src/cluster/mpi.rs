//! The few MPI calls a ranked run needs, loaded from the launcher's own libmpi at run time
//! (as cudarc loads CUDA): one binary runs with or without MPI, and under Open MPI or any
//! MPICH-ABI library (MPICH, Intel MPI, MVAPICH, Cray MPICH).
//!
//! The two ABIs differ in their handles: Open MPI's are pointers to library globals
//! (`MPI_COMM_WORLD` is `&ompi_mpi_comm_world`), MPICH's are ints (`0x44000000`). Both pass
//! in an integer register, so a handle is carried here as a `usize` for either; requests are
//! written into a zeroed 8-byte slot (MPICH writes its low 4 bytes). Only point-to-point
//! calls polled with a deadline are used, so no wait on a dead rank can hang.

use anyhow::{Context, bail};
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

type Handle = usize;
/// Room for either ABI's MPI_Status (Open MPI 24 bytes, MPICH 20).
type Status = [u64; 8];

/// Libraries tried in order when `DECODELAB_MPI_LIB` does not name one.
const LIBRARIES: &[&str] = &["libmpi.so.40", "libmpi.so.12", "libmpi.so"];
/// One tag for every message: MPI keeps messages between two ranks in order.
const TAG: c_int = 7;
/// A message is sent in chunks of at most this many bytes (MPI counts are ints).
const CHUNK: usize = 1 << 30;

struct Fns {
    initialized: unsafe extern "C" fn(*mut c_int) -> c_int,
    init_thread: unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *mut c_int) -> c_int,
    comm_rank: unsafe extern "C" fn(Handle, *mut c_int) -> c_int,
    comm_size: unsafe extern "C" fn(Handle, *mut c_int) -> c_int,
    isend:
        unsafe extern "C" fn(*const c_void, c_int, Handle, c_int, c_int, Handle, *mut u64) -> c_int,
    test: unsafe extern "C" fn(*mut u64, *mut c_int, *mut Status) -> c_int,
    iprobe: unsafe extern "C" fn(c_int, c_int, Handle, *mut c_int, *mut Status) -> c_int,
    get_count: unsafe extern "C" fn(*const Status, Handle, *mut c_int) -> c_int,
    recv: unsafe extern "C" fn(
        *mut c_void,
        c_int,
        Handle,
        c_int,
        c_int,
        Handle,
        *mut Status,
    ) -> c_int,
    abort: unsafe extern "C" fn(Handle, c_int) -> c_int,
    finalize: unsafe extern "C" fn() -> c_int,
}

/// MPI_COMM_WORLD over a loaded library.
pub struct Mpi {
    fns: Fns,
    world: Handle,
    byte: Handle,
    /// "Open MPI" or "MPICH ABI", and the library file.
    pub library: String,
    pub rank: usize,
    pub size: usize,
}

fn check(what: &str, rc: c_int) -> anyhow::Result<()> {
    if rc != 0 {
        bail!("{what} failed with MPI error {rc}");
    }
    Ok(())
}

impl Mpi {
    /// Load libmpi, initialize it (thread level FUNNELED: only the main thread calls MPI),
    /// and read this process's rank in MPI_COMM_WORLD.
    pub fn init() -> anyhow::Result<Mpi> {
        let names: Vec<String> = match std::env::var("DECODELAB_MPI_LIB") {
            Ok(n) if !n.is_empty() => vec![n],
            _ => LIBRARIES.iter().map(|s| s.to_string()).collect(),
        };
        let mut errors = Vec::new();
        // RTLD_GLOBAL: Open MPI's plugins resolve libmpi's symbols from the global scope.
        let (lib, file) = names
            .iter()
            .find_map(
                |n| match unsafe { Library::open(Some(n), RTLD_NOW | RTLD_GLOBAL) } {
                    Ok(l) => Some((l, n.clone())),
                    Err(e) => {
                        errors.push(format!("{n}: {e}"));
                        None
                    }
                },
            )
            .with_context(|| {
                format!(
                    "no MPI library could be loaded ({}); install the launcher's MPI, or name \
                     its libmpi in DECODELAB_MPI_LIB",
                    errors.join("; ")
                )
            })?;
        // The process keeps MPI loaded until it exits.
        let lib: &'static Library = Box::leak(Box::new(lib));
        macro_rules! sym {
            ($name:literal) => {
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .with_context(|| format!("{file} has no {}", $name))?
            };
        }
        let fns = Fns {
            initialized: sym!("MPI_Initialized"),
            init_thread: sym!("MPI_Init_thread"),
            comm_rank: sym!("MPI_Comm_rank"),
            comm_size: sym!("MPI_Comm_size"),
            isend: sym!("MPI_Isend"),
            test: sym!("MPI_Test"),
            iprobe: sym!("MPI_Iprobe"),
            get_count: sym!("MPI_Get_count"),
            recv: sym!("MPI_Recv"),
            abort: sym!("MPI_Abort"),
            finalize: sym!("MPI_Finalize"),
        };
        let ompi = |s: &[u8]| unsafe { lib.get::<*mut c_void>(s) }.map(|p| *p as Handle);
        let (world, byte, library) =
            match (ompi(b"ompi_mpi_comm_world\0"), ompi(b"ompi_mpi_byte\0")) {
                (Ok(w), Ok(b)) => (w, b, format!("Open MPI ({file})")),
                // mpi.h of MPICH: MPI_COMM_WORLD and MPI_BYTE.
                _ => (0x4400_0000, 0x4c00_010d, format!("MPICH ABI ({file})")),
            };
        let mut mpi = Mpi {
            fns,
            world,
            byte,
            library,
            rank: 0,
            size: 1,
        };
        unsafe {
            let mut done = 0;
            check("MPI_Initialized", (mpi.fns.initialized)(&mut done))?;
            if done == 0 {
                let (mut provided, funneled) = (0, 1);
                let null = std::ptr::null_mut();
                check(
                    "MPI_Init_thread",
                    (mpi.fns.init_thread)(null, null, funneled, &mut provided),
                )?;
            }
            let (mut rank, mut size) = (0, 0);
            check("MPI_Comm_rank", (mpi.fns.comm_rank)(mpi.world, &mut rank))?;
            check("MPI_Comm_size", (mpi.fns.comm_size)(mpi.world, &mut size))?;
            mpi.rank = rank as usize;
            mpi.size = size as usize;
        }
        Ok(mpi)
    }

    /// Send `bytes` to rank `to`: a length, then chunks; fails after `timeout` without
    /// the receiver taking them.
    pub fn send(&self, to: usize, bytes: &[u8], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let len = (bytes.len() as u64).to_le_bytes();
        let sent = self
            .post(to, &len, bytes)
            .and_then(|reqs| self.wait_sent(reqs, deadline, timeout));
        sent.with_context(|| format!("sending to rank {to}"))
    }

    /// Send `bytes` to `peer` and receive its message at the same time (both ways at once,
    /// however large: the sends are posted before the receive, so neither side waits on
    /// the other's receive).
    pub fn exchange(
        &self,
        peer: usize,
        bytes: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let len = (bytes.len() as u64).to_le_bytes();
        let reqs = self.post(peer, &len, bytes)?;
        let got = self.recv(peer, timeout)?;
        self.wait_sent(reqs, deadline, timeout)
            .with_context(|| format!("sending to rank {peer}"))?;
        Ok(got)
    }

    /// Post a message (its length, then its chunks) without waiting; `len` and `bytes`
    /// must stay put until `wait_sent` returns.
    fn post(&self, to: usize, len: &[u8; 8], bytes: &[u8]) -> anyhow::Result<Vec<u64>> {
        std::iter::once(&len[..])
            .chain(bytes.chunks(CHUNK))
            .map(|c| {
                let mut req = 0u64;
                let rc = unsafe {
                    (self.fns.isend)(
                        c.as_ptr().cast(),
                        c.len() as c_int,
                        self.byte,
                        to as c_int,
                        TAG,
                        self.world,
                        &mut req,
                    )
                };
                check("MPI_Isend", rc).map(|()| req)
            })
            .collect()
    }

    fn wait_sent(
        &self,
        mut reqs: Vec<u64>,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        for req in &mut reqs {
            poll(deadline, timeout, || {
                let (mut flag, mut status) = (0, Status::default());
                check("MPI_Test", unsafe {
                    (self.fns.test)(req, &mut flag, &mut status)
                })?;
                Ok((flag != 0).then_some(()))
            })?;
        }
        Ok(())
    }

    /// The next message from rank `from`; fails after `timeout` without one.
    pub fn recv(&self, from: usize, timeout: Duration) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let got = (|| -> anyhow::Result<Vec<u8>> {
            let head = self.recv_one(from, deadline, timeout)?;
            let len = u64::from_le_bytes(head.as_slice().try_into().context("a bad length")?);
            let mut out = Vec::with_capacity(len as usize);
            while (out.len() as u64) < len {
                out.extend(self.recv_one(from, deadline, timeout)?);
            }
            Ok(out)
        })();
        got.with_context(|| format!("waiting for rank {from}"))
    }

    fn recv_one(
        &self,
        from: usize,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let mut status = poll(deadline, timeout, || {
            let (mut flag, mut status) = (0, Status::default());
            check("MPI_Iprobe", unsafe {
                (self.fns.iprobe)(from as c_int, TAG, self.world, &mut flag, &mut status)
            })?;
            Ok((flag != 0).then_some(status))
        })?;
        let mut count = 0;
        unsafe {
            check(
                "MPI_Get_count",
                (self.fns.get_count)(&status, self.byte, &mut count),
            )?;
        }
        let mut buf = vec![0u8; count.max(0) as usize];
        unsafe {
            check(
                "MPI_Recv",
                (self.fns.recv)(
                    buf.as_mut_ptr().cast(),
                    count,
                    self.byte,
                    from as c_int,
                    TAG,
                    self.world,
                    &mut status,
                ),
            )?;
        }
        Ok(buf)
    }

    /// End every rank of the job (the launcher reports the code).
    pub fn abort(&self, code: i32) -> ! {
        unsafe { (self.fns.abort)(self.world, code) };
        std::process::exit(code)
    }

    pub fn finalize(&self) {
        unsafe { (self.fns.finalize)() };
    }
}

/// Call `f` until it yields a value or `deadline` passes: spin briefly (a transfer's time
/// is measured through these waits), then sleep a millisecond between tries.
fn poll<T>(
    deadline: Instant,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("no answer within {} s", timeout.as_secs_f64());
        }
        if super::interrupted() {
            bail!("interrupted by a signal (a launcher stops every rank when one dies)");
        }
        if now - start < Duration::from_millis(20) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
