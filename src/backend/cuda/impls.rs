//! cuda's implementations, one typed entry each: what it covers, whether it needs the
//! tensor-core self-check, and how it launches. `LaunchPlan::of` computes a point's plan,
//! source, block size and shared memory once; the launch (build.rs) and the occupancy
//! report (compile.rs) both take it. Adding an implementation is a variant here, its
//! `IMPLS` entry (backend/mod.rs) and its `.cu`.

use super::compile::{
    self, EXPERT_COMBINE_CU, EXPERT_CU, EXPERT_ROWS, EXPERT_ROWS_CU, EXPERT_SCALE_CUH, EXPERT_TB,
    EXPERT_W4_ROWS, EXPERT_W4MMA_CU, EXPERT_WG, KV_CU, KV_MERGE_CU, KV_MERGE_SHARDS_CU,
    KV_MLA_MMA_CU, KV_MLA_WIDE_CU, KV_MMA_CU, KV_WG, MLA_LATENT_CUH, MLA_WIDE_MAX_SMEM,
    MLA_WIDE_STAGES, MLA_WIDE_WG, MMA_BLOCKS_PER_SM, MMA_CUH, WARP_ROWS, WARP_ROWS_TB,
};
use crate::backend::plan::{
    Const, ExpertPlan, KvPlan, KvTarget, expert_constants, kv_constants, kv_plan,
};
use crate::workload::{Attention, DType, ExpertGemv, KvDecode, Math, Workload};

/// A cuda implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaImpl {
    /// Every kernel, plain CUDA C: the reference and the fallback.
    Simple,
    /// expert_gemv: a warp per 4 rows, 16-byte loads.
    WarpRows,
    /// kv_decode on the tensor cores (GQA and MLA, up to 8 heads a block).
    Mma,
    /// kv_decode MLA with up to 64 heads a block, one read of the latent.
    MmaWide,
    /// expert_gemv with int4 weights on the tensor cores.
    MmaW4,
}

impl CudaImpl {
    pub const ALL: [CudaImpl; 5] = [
        CudaImpl::Simple,
        CudaImpl::WarpRows,
        CudaImpl::Mma,
        CudaImpl::MmaWide,
        CudaImpl::MmaW4,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            CudaImpl::Simple => "simple",
            CudaImpl::WarpRows => "warp_rows",
            CudaImpl::Mma => "mma",
            CudaImpl::MmaWide => "mma_wide",
            CudaImpl::MmaW4 => "mma_w4",
        }
    }

    pub fn from_name(name: &str) -> Option<CudaImpl> {
        CudaImpl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether it relies on the tensor-core fragment layout (kernels/mma.cuh), so runs only
    /// where the device passes the self-check (fragments.rs).
    pub fn tensor_cores(self) -> bool {
        match self {
            CudaImpl::Mma | CudaImpl::MmaWide | CudaImpl::MmaW4 => true,
            CudaImpl::Simple | CudaImpl::WarpRows => false,
        }
    }

    /// Whether it covers `w`, or why not.
    pub fn covers(self, w: &Workload) -> Result<(), String> {
        match (self, w) {
            (CudaImpl::Simple, _) => Ok(()),
            (CudaImpl::WarpRows, Workload::ExpertGemv(e)) => warp_rows_covers(e),
            (CudaImpl::Mma, Workload::KvDecode(k)) => mma_covers(k),
            (CudaImpl::MmaWide, Workload::KvDecode(k)) => mma_wide_covers(k),
            (CudaImpl::MmaW4, Workload::ExpertGemv(e)) => mma_w4_covers(e),
            (CudaImpl::WarpRows | CudaImpl::Mma | CudaImpl::MmaWide | CudaImpl::MmaW4, _) => {
                Err(format!(
                    "cuda has no implementation '{}' of {}",
                    self.name(),
                    w.kernel()
                ))
            }
        }
    }

    /// Where kv_decode's blocks go: the shared plan (`backend::plan`) with this
    /// implementation's block and its blocks per SM.
    fn kv_target(self, w: &KvDecode, sms: usize) -> KvTarget {
        match self {
            // One wave of the SMs' block slots (the tensor-core kernels' registers allow
            // MMA_BLOCKS_PER_SM; tests/it/cuda.rs holds ptxas to it), not 1.3 waves of 4 per
            // SM; a block holds the whole group (its shared memory does not grow with heads).
            CudaImpl::Mma => KvTarget {
                wg: KV_WG,
                shared_bytes: usize::MAX / 2,
                blocks_wanted: MMA_BLOCKS_PER_SM * sms,
                whole_waves: true,
                min_tiles: 1,
                // MLA at math: bf16 holds a head per row of the tensor-core tile, not two.
                max_hb: match (w.attention, w.math) {
                    (Attention::Mla, Math::Bf16) => 16,
                    _ => 8,
                },
            },
            // One block per SM (its registers and shared memory), all of a 64-head model's
            // heads.
            CudaImpl::MmaWide => KvTarget {
                wg: MLA_WIDE_WG,
                shared_bytes: usize::MAX / 2,
                blocks_wanted: sms,
                whole_waves: true,
                min_tiles: 1,
                max_hb: if w.math == Math::Bf16 { 64 } else { 32 },
            },
            // 40 KB of static shared memory, about 4 blocks per SM, slices of 2 tiles or more.
            CudaImpl::Simple | CudaImpl::WarpRows | CudaImpl::MmaW4 => KvTarget {
                wg: KV_WG,
                shared_bytes: 40 << 10,
                blocks_wanted: 4 * sms,
                whole_waves: false,
                min_tiles: 2,
                max_hb: 8,
            },
        }
    }

    /// kv_decode's `attend` kernel and what it includes.
    fn kv_attend_source(self, w: &KvDecode) -> String {
        match (self, w.attention) {
            (CudaImpl::Mma, Attention::Gqa) => format!("{MMA_CUH}\n{KV_MMA_CU}"),
            (CudaImpl::Mma, Attention::Mla) => {
                format!("{MMA_CUH}\n{MLA_LATENT_CUH}\n{KV_MLA_MMA_CU}")
            }
            (CudaImpl::MmaWide, _) => format!("{MMA_CUH}\n{MLA_LATENT_CUH}\n{KV_MLA_WIDE_CU}"),
            (CudaImpl::Simple | CudaImpl::WarpRows | CudaImpl::MmaW4, _) => KV_CU.to_string(),
        }
    }

    /// Threads of kv_decode's `attend` block, and its bytes of dynamic shared memory.
    fn kv_block(self, w: &KvDecode) -> (usize, usize) {
        match self {
            CudaImpl::MmaWide => (MLA_WIDE_WG, mla_wide_smem(w)),
            CudaImpl::Simple | CudaImpl::WarpRows | CudaImpl::Mma | CudaImpl::MmaW4 => (KV_WG, 0),
        }
    }

    /// How expert_gemv cuts a point: rows per block and tokens per chunk.
    fn expert_plan(self) -> ExpertPlan {
        match self {
            CudaImpl::WarpRows => ExpertPlan {
                wg: EXPERT_WG,
                rows: EXPERT_WG / 32 * WARP_ROWS,
                tb: WARP_ROWS_TB,
            },
            // 4 warps over 64 rows (4 tensor-core tiles), 8 tokens (the mma's columns).
            CudaImpl::MmaW4 => ExpertPlan {
                wg: EXPERT_WG,
                rows: EXPERT_W4_ROWS,
                tb: 8,
            },
            CudaImpl::Simple | CudaImpl::Mma | CudaImpl::MmaWide => ExpertPlan {
                wg: EXPERT_WG,
                rows: EXPERT_ROWS,
                tb: EXPERT_TB,
            },
        }
    }

    fn expert_gemv_source(self) -> String {
        match self {
            CudaImpl::WarpRows => EXPERT_ROWS_CU.to_string(),
            CudaImpl::MmaW4 => format!("{MMA_CUH}\n{EXPERT_W4MMA_CU}"),
            CudaImpl::Simple | CudaImpl::Mma | CudaImpl::MmaWide => EXPERT_CU.to_string(),
        }
    }
}

/// A point's kernels as one implementation compiles and launches them, computed once.
pub struct LaunchPlan {
    pub source: String,
    pub shape: Shape,
}

/// What the launch needs beyond the source.
pub enum Shape {
    /// stream (and a link within one device): the kernels' fixed blocks.
    Stream,
    /// kv_decode: where the blocks go, and `attend`'s threads and dynamic shared memory.
    Kv {
        plan: KvPlan,
        block: usize,
        shared: usize,
    },
    /// expert_gemv: rows per block and tokens per chunk.
    Expert(ExpertPlan),
}

impl LaunchPlan {
    /// The launch of `imp` for `w` on a device with `sms` multiprocessors.
    pub fn of(imp: CudaImpl, w: &Workload, sms: usize) -> LaunchPlan {
        match w {
            // A link on one device is the stream copy kernel; between devices, a peer copy.
            Workload::Stream(_) | Workload::Link(_) => LaunchPlan {
                source: compile::stream_source(),
                shape: Shape::Stream,
            },
            Workload::KvDecode(k) => {
                let plan = kv_plan(k, &imp.kv_target(k, sms));
                let (block, shared) = imp.kv_block(k);
                let c = kv_constants(k, &plan, block);
                let c = match imp {
                    CudaImpl::MmaWide => c
                        .with("STAGES", Const::U(MLA_WIDE_STAGES as u64))
                        .with("SMEM_BYTES", Const::U(shared as u64)),
                    CudaImpl::Simple | CudaImpl::WarpRows | CudaImpl::Mma | CudaImpl::MmaW4 => c,
                };
                let attend = imp.kv_attend_source(k);
                LaunchPlan {
                    source: compile::assemble(
                        &c,
                        &format!("{attend}\n{KV_MERGE_CU}\n{KV_MERGE_SHARDS_CU}"),
                    ),
                    shape: Shape::Kv {
                        plan,
                        block,
                        shared,
                    },
                }
            }
            Workload::ExpertGemv(e) => {
                let plan = imp.expert_plan();
                let c = expert_constants(e, e.touched().len(), &plan);
                let c = match imp {
                    CudaImpl::WarpRows => c.with("WR", Const::U(WARP_ROWS as u64)),
                    CudaImpl::MmaW4 => c.with("MATH_BF16", Const::B(e.math == Math::Bf16)),
                    CudaImpl::Simple | CudaImpl::Mma | CudaImpl::MmaWide => c,
                };
                let gemv = imp.expert_gemv_source();
                LaunchPlan {
                    source: compile::assemble(
                        &c,
                        &format!("{EXPERT_SCALE_CUH}\n{gemv}\n{EXPERT_COMBINE_CU}"),
                    ),
                    shape: Shape::Expert(plan),
                }
            }
        }
    }

    /// Threads per block of each kernel: what the launches use and the occupancy report
    /// assumes.
    pub fn block_size(&self, kernel: &str) -> Option<usize> {
        match (kernel, &self.shape) {
            ("attend", Shape::Kv { block, .. }) => Some(*block),
            _ => compile::block_size(kernel),
        }
    }

    /// Bytes of dynamic shared memory `kernel` launches with (beyond ptxas' static count).
    pub fn dynamic_shared(&self, kernel: &str) -> usize {
        match (kernel, &self.shape) {
            ("attend", Shape::Kv { shared, .. }) => *shared,
            _ => 0,
        }
    }
}

fn warp_rows_covers(e: &ExpertGemv) -> Result<(), String> {
    if e.weight_dtype.groups().is_some() {
        // Its 4-bit forms tried so far spill or pass the SASS budget (docs/kernels.md).
        return Err(format!(
            "warp_rows decodes whole bytes; {} runs in mma_w4 (d_in a multiple of 128) or simple",
            e.weight_dtype
        ));
    }
    let row = e.w_row_bytes();
    if row.is_multiple_of(16) {
        Ok(())
    } else {
        Err(format!(
            "warp_rows reads rows in whole 16-byte vectors; a row of d_in {} is {row} bytes",
            e.d_in
        ))
    }
}

fn mma_w4_covers(e: &ExpertGemv) -> Result<(), String> {
    if e.weight_dtype.groups().is_none() {
        return Err(format!(
            "mma_w4 decodes 4-bit weights (int4_g32, int4_g128, mxfp4, nvfp4); {} runs in \
             cuda's simple",
            e.weight_dtype
        ));
    }
    if !e.d_in.is_multiple_of(128) {
        return Err(format!(
            "mma_w4 reads rows in blocks of 128 values; d_in {} is not a multiple of 128",
            e.d_in
        ));
    }
    Ok(())
}

fn mma_covers(k: &KvDecode) -> Result<(), String> {
    // Heads come up to 8 per block (MLA at math: bf16, 16), whatever their count.
    let dims = match k.attention {
        Attention::Gqa => {
            k.head_dim_k == k.head_dim_v
                && k.head_dim_k
                    .is_multiple_of(64 / (k.kv_dtype.elem_bits() / 8).max(1))
                && k.head_dim_k <= 128
        }
        Attention::Mla => k.head_dim_k.is_multiple_of(64) && k.head_dim_v.is_multiple_of(64),
    };
    if dims && matches!(k.kv_dtype, DType::Bf16 | DType::Fp8E4m3) {
        Ok(())
    } else {
        Err(
            "mma takes bf16 or fp8 caches: GQA with K and V of one head dim (a multiple of 32, \
             of 64 in fp8, up to 128); MLA with a latent and values of a multiple of 64 dims"
                .into(),
        )
    }
}

fn mma_wide_covers(k: &KvDecode) -> Result<(), String> {
    let smem = mla_wide_smem(k);
    if k.attention == Attention::Mla
        && matches!(k.kv_dtype, DType::Bf16 | DType::Fp8E4m3)
        && k.head_dim_k.is_multiple_of(64)
        && k.head_dim_v.is_multiple_of(128)
        && k.head_dim_v <= k.head_dim_k
        && smem <= MLA_WIDE_MAX_SMEM
    {
        Ok(())
    } else {
        Err(format!(
            "mma_wide takes MLA only, a bf16 or fp8 latent of a multiple of 64 dims with values \
             of a multiple of 128, in at most {} KB of shared memory (this point: {} KB)",
            MLA_WIDE_MAX_SMEM >> 10,
            smem.div_ceil(1024)
        ))
    }
}

/// Bytes of dynamic shared memory a block of `mma_wide` takes for `w`, as
/// kernels/kv_decode_mla_wide.cu lays them out (it refuses to compile when they outgrow
/// this): q in 64 padded rows, the ring of latent tiles (fp8: bytes, and one f16 tile), the
/// scores, P and the rescale factors.
pub fn mla_wide_smem(w: &KvDecode) -> usize {
    let (rows, tile) = (64, 16);
    let lrow = (w.head_dim_k + 8) * 2;
    let (ring_row, f16_tile) = match w.kv_dtype {
        DType::Fp8E4m3 => (w.head_dim_k, tile * lrow),
        _ => (lrow, 0),
    };
    let heads = if w.math == Math::Bf16 { 64 } else { 32 };
    rows * lrow
        + MLA_WIDE_STAGES * tile * ring_row
        + f16_tile
        + heads * tile * 4
        + rows * (tile + 8) * 2
        + heads * 4
}

/// One compiled variant of one implementation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VariantReport {
    pub variant: String,
    #[serde(rename = "impl")]
    pub imp: &'static str,
    /// Held to the SASS budget (a tuned implementation).
    pub tuned: bool,
    /// Blocks that read each streamed byte: kv_decode's head blocks of one KV head's slice
    /// (the first from HBM, the rest from L2), else 1. A kernel's instructions per byte it
    /// loads times this are its instructions per byte of HBM traffic.
    pub readers: usize,
    pub kernels: Vec<compile::KernelReport>,
}

/// Compile every representative variant of every cuda implementation for `arch`: ptxas'
/// report of each kernel, its occupancy, and with `sass` its disassembly's figures.
pub fn report(arch: &str, sass: bool) -> Result<Vec<VariantReport>, String> {
    let mut out = Vec::new();
    for (label, w) in crate::backend::plan::representative() {
        for entry in crate::backend::impls_of("cuda", w.kind()) {
            let Some(imp) = CudaImpl::from_name(entry.name) else {
                continue;
            };
            if imp.covers(&w).is_err() {
                continue;
            }
            // 132 SMs (H100 SXM): only the context split depends on it.
            let plan = LaunchPlan::of(imp, &w, 132);
            let c = compile::compile_shared(&plan.source, w.kernel(), arch)?;
            let listing = if sass {
                Some(super::sass::disassemble(&c.cubin)?)
            } else {
                None
            };
            let mut kernels = compile::parse_ptxas(&c.log);
            for k in &mut kernels {
                k.threads = plan.block_size(&k.kernel).unwrap_or(0) as u32;
                // Dynamic: not in ptxas' count.
                k.shared_bytes += plan.dynamic_shared(&k.kernel) as u32;
                let (n, why) =
                    super::sass::ctas_per_sm(arch, k.threads, k.registers, k.shared_bytes);
                (k.ctas_per_sm, k.ctas_limited_by) = (n, why.to_string());
                if let Some(listing) = &listing {
                    k.sass = super::sass::analyse(listing, w.kernel(), &plan.source)
                        .into_iter()
                        .find(|s| s.kernel == k.kernel);
                }
            }
            let readers = match (&w, &plan.shape) {
                (Workload::KvDecode(k), Shape::Kv { plan, .. }) => k.group_size() / plan.hb,
                _ => 1,
            };
            out.push(VariantReport {
                variant: label.clone(),
                imp: entry.name,
                tuned: entry.tuned,
                readers,
                kernels,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed table and the registry agree: every cuda entry of `IMPLS` is a variant here
    /// and every variant has an entry.
    #[test]
    fn every_registered_cuda_implementation_is_a_variant_and_back() {
        let registered: Vec<&str> = crate::backend::IMPLS
            .iter()
            .filter(|i| i.backend == "cuda")
            .map(|i| i.name)
            .collect();
        for name in &registered {
            assert!(CudaImpl::from_name(name).is_some(), "{name} has no variant");
        }
        for imp in CudaImpl::ALL {
            assert!(
                registered.contains(&imp.name()),
                "{imp:?} is not registered"
            );
        }
    }
}
