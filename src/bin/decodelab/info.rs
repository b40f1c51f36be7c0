//! What this machine and this build have: `devices`, `profiles`, `kernels` (NVRTC and SASS).

use decodelab::backend::{self, Probe};
use decodelab::report;
use std::process::ExitCode;

pub fn devices() -> ExitCode {
    for p in backend::probe_all() {
        match p {
            Probe::Available(b) => {
                println!("{}: {} device(s)", b.name(), b.devices().len());
                for d in b.devices() {
                    let mem = d.memory_bytes.map_or("memory unknown".into(), |m| {
                        format!("{} available", report::human_bytes(m))
                    });
                    println!("  [{}] {}  ({mem})", d.index, d.name);
                    for (k, v) in &d.details {
                        println!("      {k}: {v}");
                    }
                }
                if b.name() == "cuda" {
                    print_topology(b.devices());
                }
            }
            Probe::Unavailable { name, reason } => println!("{name}: unavailable ({reason})"),
        }
    }
    match decodelab::backend::cuda::nccl::version() {
        Ok(v) => println!("nccl: {v} (cuda splits combine with it)"),
        Err(why) => println!("nccl: unavailable ({why}); cuda splits need it"),
    }
    ExitCode::SUCCESS
}

/// How the cuda devices connect, as `nvidia-smi topo -m` prints it.
fn print_topology(devices: &[backend::DeviceInfo]) {
    if devices.len() < 2 {
        return;
    }
    match decodelab::backend::cuda::topology::matrix(devices) {
        Ok(rows) => {
            println!(
                "  topology (NV# = NVLinks between the pair; PIX/PXB/PHB/NODE/SYS = PCIe path):"
            );
            let head: Vec<String> = (0..devices.len()).map(|i| format!("{i:>6}")).collect();
            println!("      {}", head.join(""));
            for (i, row) in rows.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|c| format!("{c:>6}")).collect();
                println!("  {i:>3} {}", cells.join(""));
            }
        }
        Err(why) => {
            // The driver still knows which pairs can reach each other directly.
            println!("  topology: NVML cannot tell ({why}); peer access from the driver:");
            for a in 0..devices.len() {
                let cells: Vec<String> = (0..devices.len())
                    .map(|b| {
                        let c = if a == b {
                            "X"
                        } else if backend::cuda::can_access_peer(a, b) {
                            "P2P"
                        } else {
                            "-"
                        };
                        format!("{c:>6}")
                    })
                    .collect();
                println!("  {a:>3} {}", cells.join(""));
            }
        }
    }
}

pub fn profiles() -> ExitCode {
    use decodelab::profiles::{Kind, find};
    let here = std::path::Path::new(".");
    let mut status = ExitCode::SUCCESS;
    // Where a name resolves from here: a file of the same name overrides the built-in one.
    let source = |f: &decodelab::profiles::Found| match &f.path {
        Some(p) => format!("  (file {})", p.display()),
        None => String::new(),
    };
    println!("hardware profiles (hardware: NAME, model --hardware NAME):");
    for (name, _) in Kind::Hardware.builtin() {
        let found = find(Kind::Hardware, here, name);
        match (decodelab::model::find_hardware(here, name), found) {
            (Ok(h), Ok(f)) => println!(
                "  {name:<16} {:<42} {:>6.1} GB  {:>7} GB/s{}{}",
                h.name,
                h.memory_bytes as f64 / 1e9,
                h.memory_bandwidth_gbps,
                if h.energy.is_some() {
                    "  energy constants"
                } else {
                    ""
                },
                source(&f)
            ),
            (Err(e), _) => {
                println!("  {name:<16} error: {e:#}");
                status = ExitCode::from(1);
            }
            (_, Err(e)) => {
                println!("  {name:<16} error: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    println!("model presets (model --model NAME):");
    for (name, _) in Kind::Model.builtin() {
        match (
            decodelab::model::find_model(here, name),
            find(Kind::Model, here, name),
        ) {
            (Ok(m), Ok(f)) => println!("  {name:<16} {:<14} {}{}", m.name, m.summary(), source(&f)),
            (Err(e), _) => {
                println!("  {name:<16} error: {e:#}");
                status = ExitCode::from(1);
            }
            (_, Err(e)) => {
                println!("  {name:<16} error: {e}");
                status = ExitCode::from(1);
            }
        }
    }
    println!(
        "A file hardware/NAME.yaml or models/NAME.yaml beside an experiment (or in a folder\nabove it), or a path ending in .yaml, overrides or adds to these."
    );
    status
}

/// `kernels --wgsl`: what wgpu would hand the driver for every WGSL implementation.
pub fn wgsl_kernels(json: bool) -> ExitCode {
    // NVIDIA's subgroups: 32 lanes (the tuned kv_decode's lanes per token depend on it).
    let report = match decodelab::backend::wgpu::inspect::report(32) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        for e in &report {
            println!("{}", serde_json::to_value(e).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    println!(
        "WGSL as SPIR-V for Vulkan (naga, as wgpu-hal writes it; subgroups of 32): loop counters\n\
         under wgpu's default checks and as decodelab builds it (trusted), and per-thread arrays\n\
         indexed at run time (local memory on NVIDIA; a tuned shader has none)"
    );
    println!(
        "{:<36} {:<9} {:<8} {:>6} {:>14} {:>8}  runtime-indexed arrays",
        "variant", "impl", "entry", "words", "loops checked", "trusted"
    );
    for e in &report {
        let arrays = if e.built.dynamic_private_arrays.is_empty() {
            "none".to_string()
        } else {
            e.built.dynamic_private_arrays.join(", ")
        };
        println!(
            "{:<36} {:<9} {:<8} {:>6} {:>14} {:>8}  {arrays}",
            e.variant,
            e.imp,
            e.built.entry,
            e.built.spirv_words,
            e.loop_bounds_checked,
            e.built.loop_bounds
        );
    }
    ExitCode::SUCCESS
}

pub fn kernels(arch: &str, json: bool, sass: bool) -> ExitCode {
    let report = match decodelab::backend::cuda::impls::report(arch, sass) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        for v in &report {
            let mut line = serde_json::to_value(v).unwrap_or_default();
            line["arch"] = arch.into();
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    println!("NVRTC, {arch}: registers, shared memory, spills and occupancy per kernel");
    println!(
        "{:<36} {:<9} {:<12} {:>5} {:>7} {:>6} {:>11}",
        "variant", "impl", "kernel", "regs", "smem B", "spill", "CTAs/SM"
    );
    let mut spills = 0;
    for v in &report {
        for k in &v.kernels {
            let spill = k.spill_store_bytes + k.spill_load_bytes;
            spills += spill;
            println!(
                "{:<36} {:<9} {:<12} {:>5} {:>7} {:>6} {:>3} ({})",
                v.variant,
                v.imp,
                k.kernel,
                k.registers,
                k.shared_bytes,
                spill,
                k.ctas_per_sm,
                k.ctas_limited_by
            );
        }
    }
    println!(
        "{} variants compiled, {spills} spill bytes in all",
        report.len()
    );
    if sass {
        print_sass(arch, &report);
    }
    ExitCode::SUCCESS
}

/// `kernels --sass`'s table: each kernel's loads by width, local memory, tensor-core
/// instructions and its hottest loop's warp-instructions per streamed byte.
fn print_sass(arch: &str, report: &[decodelab::backend::cuda::impls::VariantReport]) {
    use decodelab::backend::cuda::sass as budget;
    println!(
        "\nSASS ({arch}): global loads by width (streamed tensors' in brackets), local memory,\n\
         tensor cores, and the hottest loop's warp-instructions per streamed byte (budget {} at\n\
         4.8 TB/s on 132 SMs; a roofline kernel aims under {})",
        budget::BUDGET_INSTR_PER_BYTE,
        budget::AIM_INSTR_PER_BYTE
    );
    println!(
        "{:<36} {:<9} {:<12} {:>6} {:<26} {:>6} {:>5} {:>9}  streams",
        "variant",
        "impl",
        "kernel",
        "instrs",
        "LDG 128/64/32/16/8 [streamed]",
        "LDL/STL",
        "MMA",
        "instr/B",
    );
    for v in report {
        for k in &v.kernels {
            let Some(s) = &k.sass else { continue };
            let w = |x: &budget::Widths| {
                [128, 64, 32, 16, 8]
                    .iter()
                    .map(|b| x.0.get(b).copied().unwrap_or(0).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let hot = s.hot_loop.as_ref().map_or("-".to_string(), |h| {
                let mark = if h.instr_per_byte > budget::BUDGET_INSTR_PER_BYTE {
                    " over"
                } else {
                    ""
                };
                format!("{:.3}{mark}", h.instr_per_byte)
            });
            // Several streaming loops (one per token-chunk size): the best case too.
            let light = s.light_loop.as_ref().map_or(String::new(), |l| {
                format!(" (lightest loop {:.3})", l.instr_per_byte)
            });
            // Head blocks that each read the same bytes (from L2 after the first).
            let shared = match (&s.hot_loop, v.readers) {
                (Some(h), n) if n > 1 => format!(
                    "; read by {n} blocks: {:.3} per HBM byte",
                    h.instr_per_byte * n as f64
                ),
                _ => String::new(),
            };
            println!(
                "{:<36} {:<9} {:<12} {:>6} {:<26} {:>6} {:>5} {:>9}  {}",
                v.variant,
                v.imp,
                k.kernel,
                s.instructions,
                format!("{} [{}]", w(&s.loads), w(&s.streamed)),
                s.local,
                s.tensor_core,
                hot,
                s.streamed_tensors.join(", ") + &light + &shared
            );
        }
    }
}
