//! NVRTC: CUDA C from kernels/, compiled at run time for a device's own architecture,
//! through `cudarc::nvrtc::result` so the compile log (ptxas registers, shared memory,
//! spills) is kept. Works without a GPU: `decodelab kernels --arch sm_90`.

use crate::backend::plan::{Const, Constants};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::PathBuf;

pub const COMMON_CUH: &str = include_str!("../../../kernels/common.cuh");
pub const STREAM_CU: &str = include_str!("../../../kernels/stream.cu");
pub const KV_CU: &str = include_str!("../../../kernels/kv_decode.cu");
pub const KV_MMA_CU: &str = include_str!("../../../kernels/kv_decode_mma.cu");
pub const KV_MLA_MMA_CU: &str = include_str!("../../../kernels/kv_decode_mla_mma.cu");
pub const KV_MLA_WIDE_CU: &str = include_str!("../../../kernels/kv_decode_mla_wide.cu");
pub const KV_MERGE_CU: &str = include_str!("../../../kernels/kv_merge.cu");
pub const KV_MERGE_SHARDS_CU: &str = include_str!("../../../kernels/kv_merge_shards.cu");
pub const EXPERT_CU: &str = include_str!("../../../kernels/expert_gemv.cu");
pub const EXPERT_ROWS_CU: &str = include_str!("../../../kernels/expert_gemv_rows.cu");
pub const EXPERT_W4MMA_CU: &str = include_str!("../../../kernels/expert_gemv_w4mma.cu");
pub const EXPERT_COMBINE_CU: &str = include_str!("../../../kernels/expert_combine.cu");
pub const EXPERT_SCALE_CUH: &str = include_str!("../../../kernels/expert_scale.cuh");
pub const MMA_CUH: &str = include_str!("../../../kernels/mma.cuh");
pub const MLA_LATENT_CUH: &str = include_str!("../../../kernels/mla_latent.cuh");
pub const MMA_CHECK_CU: &str = include_str!("../../../kernels/mma_check.cu");
pub const PEAK_CU: &str = include_str!("../../../kernels/peak.cu");

pub const STREAM_WG: usize = 256;
pub const KV_WG: usize = 128;
/// Blocks of kv_decode `mma` that fit one SM (sm_80 and sm_90: registers allow 3).
pub const MMA_BLOCKS_PER_SM: usize = 3;
pub const MERGE_WG: usize = 128;
/// kv_decode `mma_wide` (MLA, up to 64 heads per block): 256 threads, one block per SM, a
/// ring of 3 latent tiles in dynamic shared memory, at most 160 KB of it (sm_80 allows 163).
pub const MLA_WIDE_WG: usize = 256;
pub const MLA_WIDE_STAGES: usize = 3;
pub const MLA_WIDE_MAX_SMEM: usize = 160 << 10;
pub const EXPERT_WG: usize = 128;
pub const COMBINE_WG: usize = 256;
/// Threads a block of mma_w4's `x_frag` (one 8-value vector of x each).
pub const X_FRAG_WG: usize = 128;
/// Rows a block of mma_w4 (4 tensor-core tiles of 16; the kernel checks its ROWS against it).
pub const EXPERT_W4_ROWS: usize = 64;
pub const EXPERT_ROWS: usize = 4;
pub const EXPERT_TB: usize = 8;
/// expert_gemv `warp_rows`: output rows per warp, and tokens per chunk (at most 4).
pub const WARP_ROWS: usize = 4;
pub const WARP_ROWS_TB: usize = 4;

/// The threads per block of the kernels whose block no implementation changes (kv_decode's
/// `attend` is the implementation's: `LaunchPlan::block_size`).
pub fn block_size(kernel: &str) -> Option<usize> {
    match kernel {
        "stream_read" | "stream_copy" | "stream_write" => Some(STREAM_WG),
        "merge" | "merge_shards" => Some(MERGE_WG),
        "gemv" => Some(EXPERT_WG),
        "combine" => Some(COMBINE_WG),
        "x_frag" => Some(X_FRAG_WG),
        _ => None,
    }
}

/// NVRTC can be loaded (libnvrtc on the loader's path), or why not.
pub fn nvrtc_available() -> Result<(), String> {
    // SAFETY: only tries to dlopen the library; touches nothing in it.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(
            "NVRTC not found (libnvrtc.so.12 not on the loader path: install the CUDA toolkit \
             or pip install nvidia-cuda-nvrtc-cu12 and add its lib/ to LD_LIBRARY_PATH)"
                .into(),
        )
    }
}

/// Where cuda_fp16.h, cuda_bf16.h and cuda_fp8.h are: DECODELAB_CUDA_INCLUDE, CUDA_HOME or
/// CUDA_PATH's include/, or /usr/local/cuda/include.
pub fn include_dir() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("DECODELAB_CUDA_INCLUDE") {
        candidates.push(d.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            candidates.push(PathBuf::from(d).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates
        .into_iter()
        .find(|d| d.join("cuda_fp8.h").exists())
        .ok_or_else(|| {
            "CUDA headers not found (cuda_fp8.h): set DECODELAB_CUDA_INCLUDE to a folder with them, \
             e.g. site-packages/nvidia/cuda_runtime/include of pip's nvidia-cuda-runtime-cu12"
                .into()
        })
}

/// A compiled module: its CUBIN and NVRTC's log.
#[derive(Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// `compile`, once per process for each (source, name, arch): the reports (`impls::report`)
/// compile the same representative variants for every caller, and a second caller waits for
/// the first's result instead of compiling it again. Bounded by the report's variants; a run's
/// points compile through `compile` itself.
pub fn compile_shared(source: &str, name: &str, arch: &str) -> Result<Compiled, String> {
    type Cell = std::sync::Arc<std::sync::OnceLock<Result<Compiled, String>>>;
    type Key = (String, String, String);
    static SEEN: std::sync::Mutex<Vec<(Key, Cell)>> = std::sync::Mutex::new(Vec::new());
    let key = (source.to_string(), name.to_string(), arch.to_string());
    let cell: Cell = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        match seen.iter().find(|(k, _)| *k == key) {
            Some((_, c)) => c.clone(),
            None => {
                let c = Cell::default();
                seen.push((key, c.clone()));
                c
            }
        }
    };
    cell.get_or_init(|| compile(source, name, arch)).clone()
}

/// Compile `source` for `arch` (e.g. "sm_90") to CUBIN, with ptxas' report in the log.
pub fn compile(source: &str, name: &str, arch: &str) -> Result<Compiled, String> {
    nvrtc_available()?;
    let include = include_dir()?;
    let src = CString::new(source).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let cname = CString::new(name).map_err(|_| "bad kernel name".to_string())?;
    let prog = result::create_program(&src, Some(&cname))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", include.display()),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
        "-lineinfo".to_string(),
    ];
    // SAFETY: prog was created above and is destroyed once, below.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| {
            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(format!(
            "NVRTC could not compile {name} for {arch}: {e:?}\n{log}"
        )),
        Ok(()) => unsafe { cubin(prog) }.map(|cubin| Compiled { cubin, log }),
    };
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a successfully compiled program for a real (sm_XX) architecture.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut buf = vec![0u8; size];
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

/// What ptxas reported for one kernel, its occupancy and (with `--sass`) its SASS figures.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct KernelReport {
    pub kernel: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_bytes: u32,
    /// Threads per block it is launched with.
    pub threads: u32,
    /// CTAs that fit one SM, and the resource that limits them.
    pub ctas_per_sm: u32,
    pub ctas_limited_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sass: Option<super::sass::KernelSass>,
}

/// Parse ptxas' "-v" report out of an NVRTC log.
pub fn parse_ptxas(log: &str) -> Vec<KernelReport> {
    let num_before = |line: &str, unit: &str| -> Option<u32> {
        let i = line.find(unit)?;
        line[..i]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())?
            .parse()
            .ok()
    };
    let mut out: Vec<KernelReport> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelReport {
                kernel: name,
                ..Default::default()
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = num_before(line, "registers").unwrap_or(0);
                k.shared_bytes = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

pub(super) fn assemble(constants: &Constants, kernel: &str) -> String {
    format!("{}\n{COMMON_CUH}\n{kernel}", constants.c())
}

pub fn stream_source() -> String {
    // common.cuh needs a dtype; stream moves raw words.
    let c = Constants::default()
        .with("DTYPE", Const::U(0))
        .with("ELEM_BITS", Const::U(32))
        .with("ELEM_BYTES", Const::U(4));
    assemble(&c, STREAM_CU)
}

/// What common.cuh wants of a kernel with no storage dtype of its own (the self-check, the
/// compute ceiling): bf16's constants, unused.
fn shapeless() -> Constants {
    Constants::default()
        .with("DTYPE", Const::U(2))
        .with("ELEM_BITS", Const::U(16))
        .with("ELEM_BYTES", Const::U(2))
}

/// kernels/mma_check.cu with mma.cuh: the tensor-core fragment model, checked on a GPU
/// (tests/it/cuda.rs) and on the host (tests/it/cuda_host.rs).
pub fn mma_check_source() -> String {
    assemble(&shapeless(), &format!("{MMA_CUH}\n{MMA_CHECK_CU}"))
}

/// kernels/peak.cu, the compute ceilings (CUDA cores and tensor cores).
pub fn peak_source() -> String {
    assemble(&shapeless(), &format!("{MMA_CUH}\n{PEAK_CU}"))
}
