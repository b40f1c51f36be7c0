//! The CPU reference backend: every kernel, multi-threaded (rayon), f32 accumulation.
//! It always exists, so every experiment can run and every other backend has a neighbour
//! to be cross-checked against.

mod kernels;
pub mod vector;

use super::{Backend, CacheMode, DeviceInfo, How, Prepared, Timer};
use crate::workload::{Link, TensorSet, Workload};
use kernels::{expert_gemv, kv_decode, link, stream};
use rayon::prelude::*;
use std::time::Instant;
use vector::Isa;

pub struct CpuBackend {
    devices: Vec<DeviceInfo>,
    llc_bytes: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        let llc_bytes = last_level_cache_bytes().unwrap_or(32 << 20);
        let threads = rayon::current_num_threads();
        let name = cpu_model_name().unwrap_or_else(|| "cpu".into());
        let devices = vec![DeviceInfo {
            index: 0,
            name: name.clone(),
            memory_bytes: mem_available_bytes(),
            details: vec![
                ("threads".into(), threads.to_string()),
                (
                    "last-level cache".into(),
                    format!("{} MiB", llc_bytes >> 20),
                ),
            ],
            pci_bus_id: None,
            emulated: false,
        }];
        CpuBackend { devices, llc_bytes }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Host and device are one memory: the point works in the runner's own input buffers
    /// (shared, not copied), so the point's host memory is what it needs.
    fn shares_host_memory(&self) -> bool {
        true
    }

    /// simple covers everything; a vector path covers kv_decode and expert_gemv in the
    /// dtypes it decodes in registers, on a CPU that has it.
    fn covers(&self, imp: &str, workload: &Workload) -> Result<(), String> {
        let Some(isa) = Isa::from_name(imp) else {
            return Ok(());
        };
        vector::covers(isa, workload)
    }

    fn prepare<'a>(
        &'a self,
        device: usize,
        workload: &Workload,
        inputs: &TensorSet,
        how: &How,
    ) -> anyhow::Result<Box<dyn Prepared + 'a>> {
        anyhow::ensure!(device == 0, "cpu has one device (0), not {device}");
        let path = match how.imp {
            "simple" => None,
            name => match Isa::from_name(name) {
                Some(isa) => {
                    self.covers(name, workload).map_err(anyhow::Error::msg)?;
                    Some(isa)
                }
                None => anyhow::bail!("cpu has no implementation '{name}'"),
            },
        };
        anyhow::ensure!(
            !matches!(workload, Workload::Link(_)),
            "link runs between two devices (prepare_link)"
        );
        let outputs = TensorSet(workload.outputs().iter().map(|o| o.poisoned()).collect());
        let flush = Flush::for_point(how.cache, workload, self.llc_bytes);
        Ok(Box::new(CpuPoint {
            path,
            workload: workload.clone(),
            inputs: inputs.clone(), // shares the runner's buffers: no copy
            outputs,
            cache: how.cache,
            scratch: match flush {
                Flush::Scratch(n) => vec![0u8; n],
                _ => Vec::new(),
            },
            flush,
        }))
    }

    fn compute_unit(&self, imp: &str) -> crate::backend::Unit {
        match Isa::from_name(imp) {
            Some(Isa::Amx) => crate::backend::Unit::Matrix,
            _ => crate::backend::Unit::Cores,
        }
    }

    /// Cores: f32 FMA chains on every thread, on the fastest vector path this CPU has (the
    /// unit the vector kernels compute with). Matrix: AMX `tdpbf16ps` chains.
    fn compute_ceiling(
        &self,
        _device: usize,
        unit: crate::backend::Unit,
    ) -> Result<crate::backend::Peak, String> {
        let threads = rayon::current_num_threads();
        if unit == crate::backend::Unit::Matrix {
            Isa::Amx.allowed()?;
            return Ok(crate::backend::Peak {
                gflops: vector::amx_peak_gflops()?,
                unit: format!("bf16 tile dot chains (AMX tdpbf16ps), {threads} threads"),
            });
        }
        let isa = Isa::ALL
            .into_iter()
            .filter(|&i| i != Isa::Amx)
            .find(|i| i.allowed().is_ok())
            .unwrap_or(Isa::Portable);
        let gflops = vector::peak_gflops(isa)?;
        Ok(crate::backend::Peak {
            gflops,
            unit: format!("f32 FMA chains, {}, {threads} threads", isa.name()),
        })
    }

    fn prepare_link<'a>(
        &'a self,
        src: usize,
        dst: usize,
        link: &Link,
        inputs: &TensorSet,
    ) -> anyhow::Result<(Box<dyn Prepared + 'a>, String)> {
        anyhow::ensure!(
            src == 0 && dst == 0,
            "cpu has one device (0), not {src} -> {dst}"
        );
        let workload = Workload::Link(link.clone());
        let outputs = TensorSet(workload.outputs().iter().map(|o| o.poisoned()).collect());
        let point = CpuPoint {
            path: None,
            workload,
            inputs: inputs.clone(),
            outputs,
            cache: CacheMode::Cold,
            flush: Flush::None,
            scratch: Vec::new(),
        };
        Ok((
            Box::new(point),
            "host memory copy (the cpu backend has one device)".into(),
        ))
    }
}

struct CpuPoint {
    /// The vector path of a tuned implementation; None runs simple.
    path: Option<Isa>,
    workload: Workload,
    inputs: TensorSet,
    outputs: TensorSet,
    cache: CacheMode,
    flush: Flush,
    scratch: Vec<u8>,
}

/// How a cold rep starts with the working set out of the caches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flush {
    /// Warm, or a step moves over 4x the last-level cache: its own reads evict it.
    None,
    /// clflush every line of the point's buffers (x86-64, buffers up to `CLFLUSH_MAX`).
    Lines,
    /// Write a scratch buffer of this many bytes (twice the last-level cache).
    Scratch(usize),
}

/// Whether the CPU has CLFLUSHOPT (CPUID leaf 7, EBX bit 23).
#[cfg(target_arch = "x86_64")]
fn has_clflushopt() -> bool {
    std::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 23) != 0
}

/// CLFLUSHOPT of the line holding `p` (std::arch has no stable intrinsic for it).
///
/// # Safety
/// The CPU must support clflushopt (`has_clflushopt`); `p` must point into a live allocation.
#[cfg(target_arch = "x86_64")]
unsafe fn clflushopt(p: *const u8) {
    // SAFETY: the caller's contract; the instruction only evicts a cache line.
    unsafe { std::arch::asm!("clflushopt [{}]", in(reg) p, options(nostack, preserves_flags)) };
}

/// Above this the point's buffers are not flushed line by line: clflush of gigabytes of
/// allocated but untouched weights would cost seconds per rep.
const CLFLUSH_MAX: u64 = 256 << 20;

impl Flush {
    fn for_point(cache: CacheMode, w: &Workload, llc: usize) -> Flush {
        if cache == CacheMode::Warm || w.bytes() >= 4 * llc as u64 {
            Flush::None
        } else if cfg!(target_arch = "x86_64") && w.device_bytes() <= CLFLUSH_MAX {
            Flush::Lines
        } else {
            Flush::Scratch(2 * llc)
        }
    }
}

impl CpuPoint {
    /// The bytes a step touches, to be flushed line by line: every tensor, but of the expert
    /// weights only the experts the tokens chose (clflush of untouched gigabytes costs
    /// seconds per rep and buys nothing).
    fn step_reads(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = Vec::new();
        for t in self.inputs.0.iter().chain(&self.outputs.0) {
            match (&self.workload, t.name) {
                (Workload::ExpertGemv(w), "w") => {
                    let per_expert = t.bytes.len() / w.experts.max(1);
                    for e in w.touched() {
                        let at = e as usize * per_expert;
                        v.push(&t.bytes[at..at + per_expert]);
                    }
                }
                _ => v.push(&t.bytes),
            }
        }
        v
    }

    fn flush_cache(&mut self) {
        match self.flush {
            Flush::None => {}
            Flush::Lines => {
                #[cfg(target_arch = "x86_64")]
                {
                    // clflushopt where the CPU has it: unordered, so lines leave in parallel
                    // (clflush evicts one at a time); the fence below orders them all.
                    let opt = has_clflushopt();
                    for bytes in self.step_reads() {
                        bytes.par_chunks(1 << 16).for_each(|chunk| {
                            for line in chunk.chunks(64) {
                                // SAFETY: the pointer is inside a live, borrowed allocation,
                                // and clflushopt runs only where the CPU reports it.
                                unsafe {
                                    if opt {
                                        clflushopt(line.as_ptr());
                                    } else {
                                        std::arch::x86_64::_mm_clflush(line.as_ptr());
                                    }
                                }
                            }
                        });
                    }
                    // SAFETY: a fence has no memory-safety preconditions.
                    unsafe { std::arch::x86_64::_mm_mfence() };
                }
            }
            Flush::Scratch(_) => {
                let tick = self.scratch[0].wrapping_add(1);
                self.scratch
                    .par_chunks_mut(1 << 16)
                    .for_each(|c| c.fill(tick));
                std::hint::black_box(&self.scratch);
            }
        }
    }

    fn step(&mut self) {
        let CpuPoint {
            path,
            workload,
            inputs,
            outputs,
            ..
        } = self;
        match (workload, *path) {
            (Workload::Stream(w), Some(isa)) => vector::stream(isa, w, inputs, outputs),
            (Workload::Stream(w), None) => stream(w, inputs, outputs),
            (Workload::KvDecode(w), Some(isa)) => vector::kv_decode(isa, w, inputs, outputs),
            (Workload::KvDecode(w), None) => kv_decode(w, inputs, outputs),
            (Workload::ExpertGemv(w), Some(isa)) => vector::expert_gemv(isa, w, inputs, outputs),
            (Workload::ExpertGemv(w), None) => expert_gemv(w, inputs, outputs),
            (Workload::Link(w), _) => link(w, inputs, outputs),
        }
    }
}

impl Prepared for CpuPoint {
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn timer(&self) -> Timer {
        Timer::Host
    }

    fn cache_method(&self) -> String {
        match (self.cache, self.flush) {
            (CacheMode::Warm, _) => "warm: no flush".into(),
            (CacheMode::Cold, Flush::None) => {
                "cold: a step moves over 4x the last-level cache".into()
            }
            (CacheMode::Cold, Flush::Lines) => {
                "cold: clflush of every input and output line between reps".into()
            }
            (CacheMode::Cold, Flush::Scratch(n)) => {
                format!("cold: {} MiB written between reps", n >> 20)
            }
        }
    }

    /// The reps run on a pool thread, and every pool thread is woken (an empty broadcast)
    /// just before each timed step: a step's time is its own, not the OS's wake-up of threads
    /// that slept through the flush (tens of microseconds a step on the CI machine's VM), as a
    /// decode engine's spinning pool runs a step (bench/2026-12-07-cpu-xeon-amx/pool-awake/).
    fn run(&mut self, warmup: usize, reps: usize) -> anyhow::Result<Vec<f64>> {
        let point = self;
        let times = rayon::scope(|_| {
            for _ in 0..warmup {
                point.flush_cache();
                point.step();
            }
            (0..reps)
                .map(|_| {
                    point.flush_cache();
                    rayon::broadcast(|_| ());
                    let t0 = Instant::now();
                    point.step();
                    t0.elapsed().as_secs_f64()
                })
                .collect()
        });
        Ok(times)
    }

    fn read_outputs(&mut self) -> anyhow::Result<TensorSet> {
        Ok(self.outputs.clone())
    }

    fn run_steps(&mut self, steps: u64) -> anyhow::Result<()> {
        for _ in 0..steps {
            self.step();
        }
        Ok(())
    }
}

fn last_level_cache_bytes() -> Option<usize> {
    (0..8)
        .rev()
        .filter_map(|i| {
            let s = std::fs::read_to_string(format!(
                "/sys/devices/system/cpu/cpu0/cache/index{i}/size"
            ))
            .ok()?;
            let s = s.trim();
            let (num, mult) = match s.strip_suffix('K') {
                Some(n) => (n, 1024),
                None => match s.strip_suffix('M') {
                    Some(n) => (n, 1 << 20),
                    None => (s, 1),
                },
            };
            num.parse::<usize>().ok().map(|n| n * mult)
        })
        .next()
}

fn cpu_model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Memory the OS says is available now (MemAvailable), in bytes.
pub fn mem_available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
