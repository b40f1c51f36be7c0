//! What both GPU backends share about a kernel: how a point is cut into blocks (CUDA) or
//! workgroups (WGSL), and one list of shape constants per kernel, rendered as C `#define`s
//! for NVRTC and as WGSL `const`s. One plan, so the heads split's bit-exactness (a shard cuts
//! its context as its whole point would) holds the same way on both.

use crate::workload::{Attention, ExpertGemv, KvDecode, Math, WeightScale, Workload};

/// A constant a kernel is compiled with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    U(u64),
    F(f32),
    B(bool),
}

/// The constants a kernel is compiled with, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constants(pub Vec<(&'static str, Const)>);

impl Constants {
    pub fn with(mut self, name: &'static str, value: Const) -> Constants {
        self.0.push((name, value));
        self
    }

    /// `#define NAME value` lines (booleans as 0 or 1, floats with an `f`).
    pub fn c(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| match v {
                Const::U(x) => format!("#define {n} {x}\n"),
                Const::F(x) => format!("#define {n} {x:e}f\n"),
                Const::B(x) => format!("#define {n} {}\n", u32::from(*x)),
            })
            .collect()
    }

    /// `const NAME: type = value;` lines.
    pub fn wgsl(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| match v {
                Const::U(x) => format!("const {n}: u32 = {x}u;\n"),
                Const::F(x) => format!("const {n}: f32 = {x:e};\n"),
                Const::B(x) => format!("const {n}: bool = {x};\n"),
            })
            .collect()
    }
}

/// What a backend gives a kv_decode block: its threads, its shared (workgroup) memory, how
/// many blocks fill the device, and the fewest tiles of `wg` tokens a context slice holds.
#[derive(Clone, Copy, Debug)]
pub struct KvTarget {
    pub wg: usize,
    pub shared_bytes: usize,
    pub blocks_wanted: usize,
    pub min_tiles: usize,
    /// The most query heads a block may hold (its per-thread registers grow with them).
    pub max_hb: usize,
    /// `blocks_wanted` is the device's block slots (SMs x blocks per SM), and the slices are
    /// counted to fill whole waves of them: the rounding down or up of blocks_wanted / blocks,
    /// whichever leaves fewer slots idle (down on a tie). Otherwise rounded up.
    pub whole_waves: bool,
}

/// How a kv_decode point is cut: `hb` query heads of one KV group per block, the context in
/// `splits` slices of `split_tokens` (merged exactly with their log-sum-exp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvPlan {
    pub hb: usize,
    pub split_tokens: usize,
    pub splits: usize,
}

/// Whether `hb` heads of `w` fit a block of `t`: per head its q row (DK floats) and its
/// scores (one per token), per token its row offset.
pub fn kv_fits(w: &KvDecode, t: &KvTarget, hb: usize) -> bool {
    hb * (w.head_dim_k + t.wg) * 4 + t.wg * 8 <= t.shared_bytes
}

/// The plan of `w` on `t`: the most heads of a group (up to `max_hb`, a divisor of the group) that
/// fit a block (one, if none does: `kv_fits` says so); slices enough for `blocks_wanted`
/// blocks over the whole point (`KvDecode::launch_shape`: a heads-split shard cuts its
/// context as its whole point would, so its bits equal one device's).
pub fn kv_plan(w: &KvDecode, t: &KvTarget) -> KvPlan {
    let wg = t.wg;
    let hb_for = |group: usize| {
        (1..=group.min(t.max_hb))
            .rev()
            .find(|&h| group.is_multiple_of(h) && kv_fits(w, t, h))
            .unwrap_or(1)
    };
    let max_len = w.context_lens.iter().copied().max().unwrap_or(1);
    let shape = w.launch_shape();
    let blocks = shape.batch * (shape.q_heads / hb_for(shape.q_heads / shape.kv_heads));
    let want = if t.whole_waves {
        let slots = t.blocks_wanted.max(1);
        let busy = |splits: usize| {
            let n = splits * blocks;
            n as f64 / (n.div_ceil(slots) * slots) as f64
        };
        let (down, up) = ((slots / blocks).max(1), slots.div_ceil(blocks).max(1));
        if busy(up) > busy(down) { up } else { down }
    } else {
        t.blocks_wanted.div_ceil(blocks).max(1)
    };
    let split_tokens = max_len
        .div_ceil(want)
        .max(t.min_tiles * wg)
        .next_multiple_of(wg);
    KvPlan {
        hb: hb_for(w.group_size()),
        split_tokens,
        splits: max_len.div_ceil(split_tokens).max(1),
    }
}

/// The shape constants of kv_decode's kernels (both languages read the same names).
pub fn kv_constants(w: &KvDecode, p: &KvPlan, wg: usize) -> Constants {
    let es = w.kv_dtype.elem_bits() / 8;
    let [k_scale, v_scale] = w.scales();
    Constants::default()
        .with("DTYPE", Const::U(w.kv_dtype.kernel_code() as u64))
        .with("ELEM_BITS", Const::U(w.kv_dtype.elem_bits() as u64))
        .with("ELEM_BYTES", Const::U(es as u64))
        .with("WG", Const::U(wg as u64))
        .with("HB", Const::U(p.hb as u64))
        .with("DK", Const::U(w.head_dim_k as u64))
        .with("DV", Const::U(w.head_dim_v as u64))
        .with("HQ", Const::U(w.q_heads as u64))
        .with("HKV", Const::U(w.kv_heads as u64))
        .with("GROUP", Const::U(w.group_size() as u64))
        .with("PAGE", Const::U(w.page_size as u64))
        .with("MAX_PAGES", Const::U(w.max_pages() as u64))
        .with("SPLIT_TOKENS", Const::U(p.split_tokens as u64))
        .with("SPLITS", Const::U(p.splits as u64))
        .with("BATCH", Const::U(w.batch as u64))
        .with("DV_PER_THREAD", Const::U(w.head_dim_v.div_ceil(wg) as u64))
        .with("SCALE", Const::F(w.scale))
        .with("K_SCALE", Const::F(k_scale))
        .with("V_SCALE", Const::F(v_scale))
        .with("IS_MLA", Const::B(w.attention == Attention::Mla))
        .with("MATH_BF16", Const::B(w.math == Math::Bf16))
        .with(
            "ROW_ALIGNED",
            Const::B((w.head_dim_k * es).is_multiple_of(16)),
        )
}

/// How expert_gemv is cut: `rows` output rows of one touched expert per block, its tokens
/// `tb` at a time, by `wg` threads.
#[derive(Clone, Copy, Debug)]
pub struct ExpertPlan {
    pub wg: usize,
    pub rows: usize,
    pub tb: usize,
}

/// The shape constants of expert_gemv's kernels.
pub fn expert_constants(w: &ExpertGemv, touched: usize, p: &ExpertPlan) -> Constants {
    // A 4-bit dtype gives ELEM_BYTES 0; its codes are decoded by ELEM_BITS, its group
    // scales (SCALE_CODE; 0 none) read from the scale buffer's bytes.
    let es = w.weight_dtype.elem_bits() / 8;
    let group = w.weight_dtype.groups();
    let scale_code = group.map_or(0, |g| g.scale.kernel_code());
    let ts_word = tensor_scale_word(w);
    // 0: a scale per row (or none); else the edge of a square scale block, and their grid.
    let (scale_block, [sb_out, sb_in]) = match (w.scale_block(), w.scale_shape()) {
        (Some(b), Some(s)) => (b, [s[1], s[2]]),
        _ => (0, [1, 1]),
    };
    Constants::default()
        .with("DTYPE", Const::U(w.weight_dtype.kernel_code() as u64))
        .with("ELEM_BITS", Const::U(w.weight_dtype.elem_bits() as u64))
        .with("ELEM_BYTES", Const::U(es as u64))
        .with("WG", Const::U(p.wg as u64))
        .with("ROWS", Const::U(p.rows as u64))
        .with("TB", Const::U(p.tb as u64))
        .with("U", Const::U(touched as u64))
        .with("D_IN", Const::U(w.d_in as u64))
        .with("D_OUT", Const::U(w.d_out as u64))
        .with("TOP_K", Const::U(w.top_k as u64))
        .with("BATCH", Const::U(w.batch as u64))
        .with("SCALED", Const::B(w.weight_dtype.is_scaled()))
        .with("SCALE_BLOCK", Const::U(scale_block as u64))
        .with("SB_OUT", Const::U(sb_out as u64))
        .with("SB_IN", Const::U(sb_in as u64))
        .with("ROW_ALIGNED", Const::B(w.w_row_bytes().is_multiple_of(16)))
        .with("GROUP", Const::U(group.map_or(0, |g| g.elems) as u64))
        .with("SCALE_CODE", Const::U(scale_code))
        .with(
            "TENSOR_SCALE",
            Const::B(group.is_some_and(|g| g.tensor_scale)),
        )
        .with("TS_WORD", Const::U(ts_word as u64))
}

/// Where nvfp4's f32 per expert starts in the scale buffer, in 4-byte words: after the group
/// scales' bytes, padded to a word (the kernels read one buffer of scales).
pub fn tensor_scale_word(w: &ExpertGemv) -> usize {
    (w.experts * w.d_out * w.group_scale_row_bytes() as usize).div_ceil(4)
}

/// The one scale buffer the GPU kernels read: fp8's f32 scales; a 4-bit dtype's group scales'
/// bytes, then (nvfp4) its f32 per expert from word `tensor_scale_word`, then a block of
/// cuda's mma_w4 rows of zeros (it loads its block's scales unguarded, the last expert's past
/// its last row too: they are not stored); else empty.
pub fn expert_scale_bytes(w: &ExpertGemv, inputs: &crate::workload::TensorSet) -> Vec<u8> {
    let mut bytes: Vec<u8> = inputs
        .get("w_scale")
        .map(|t| t.bytes.to_vec())
        .unwrap_or_default();
    if let Some(t) = inputs.get("w_scale_2") {
        bytes.resize(tensor_scale_word(w) * 4, 0);
        bytes.extend_from_slice(&t.bytes);
    }
    if w.weight_dtype.groups().is_some() {
        let pad =
            crate::backend::cuda::compile::EXPERT_W4_ROWS * w.group_scale_row_bytes() as usize;
        bytes.resize(bytes.len() + pad, 0);
    }
    bytes
}

/// One point of every kernel variant: each dtype, GQA and MLA, aligned and unaligned rows.
/// What `decodelab kernels` compiles (CUDA) and inspects (WGSL), and CI checks.
pub fn representative() -> Vec<(String, Workload)> {
    use crate::workload::{DType, Lengths, Routing, Stream, StreamOp};
    let kv = |attention, hq, hkv, dk, dv, dtype: DType| {
        Workload::KvDecode(KvDecode {
            attention,
            batch: 8,
            q_heads: hq,
            kv_heads: hkv,
            head_dim_k: dk,
            head_dim_v: dv,
            page_size: 16,
            kv_dtype: dtype,
            scale: 1.0 / (dk as f32).sqrt(),
            context: 4096,
            lengths: Lengths::Equal,
            context_lens: vec![4096; 8],
            seed: 0,
            math: Math::F32,
            launch_hint: None,
        })
    };
    let ex = |d_in, dtype: DType, weight_scale| {
        let topk_ids = ExpertGemv::route(&Routing::Uniform, 384, 8, 16, 0).unwrap_or_default();
        Workload::ExpertGemv(ExpertGemv {
            experts: 384,
            top_k: 8,
            batch: 16,
            d_in,
            d_out: 2048,
            weight_dtype: dtype,
            weight_scale,
            routing: Routing::Uniform,
            topk_ids,
            seed: 0,
            math: Math::F32,
        })
    };
    let mut v = vec![(
        "stream".to_string(),
        Workload::Stream(Stream {
            op: StreamOp::Read,
            bytes: 1 << 20,
            seed: 0,
        }),
    )];
    for dt in DType::WHOLE_BYTE {
        v.push((
            format!("kv_decode gqa 64/8 d128 {dt}"),
            kv(Attention::Gqa, 64, 8, 128, 128, dt),
        ));
        v.push((
            format!("kv_decode mla 128 heads 512+64 {dt}"),
            kv(Attention::Mla, 128, 1, 576, 512, dt),
        ));
        v.push((
            format!("expert_gemv 7168 -> 2048 {dt}"),
            ex(7168, dt, WeightScale::Row),
        ));
    }
    for dt in DType::FOUR_BIT {
        v.push((
            format!("expert_gemv 7168 -> 2048 {dt}"),
            ex(7168, dt, WeightScale::Row),
        ));
    }
    // MLA at math: bf16 (mma holds 16 heads per block, one per row).
    let mut mla_bf16 = kv(Attention::Mla, 128, 1, 576, 512, DType::Bf16);
    if let Workload::KvDecode(k) = &mut mla_bf16 {
        k.math = Math::Bf16;
    }
    v.push((
        "kv_decode mla 128 heads 512+64 bf16 math bf16".into(),
        mla_bf16,
    ));
    v.push((
        "kv_decode gqa d67 (unaligned) f16".into(),
        kv(Attention::Gqa, 6, 3, 67, 45, DType::F16),
    ));
    v.push((
        "expert_gemv 1001 (unaligned) bf16".into(),
        ex(1001, DType::Bf16, WeightScale::Row),
    ));
    v.push((
        "expert_gemv 7168 -> 2048 fp8_e4m3 block128".into(),
        ex(7168, DType::Fp8E4m3, WeightScale::Block128),
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_waves_fill_the_slots_once() {
        // GQA 64/8, batch 8, context 4096: 64 blocks before slicing, 396 slots (132 x 3).
        let Workload::KvDecode(w) = &representative()[1].1 else {
            panic!("a kv_decode variant")
        };
        let mut t = KvTarget {
            wg: 128,
            shared_bytes: usize::MAX / 2,
            blocks_wanted: 396,
            min_tiles: 1,
            max_hb: 8,
            whole_waves: true,
        };
        // 6 slices: 384 blocks in one wave; 7 would be 448, a second wave of 52.
        assert_eq!(kv_plan(w, &t).splits, 6);
        t.whole_waves = false;
        assert_eq!(kv_plan(w, &t).splits, 7);
    }

    #[test]
    fn one_list_two_languages() {
        let c = Constants::default()
            .with("DK", Const::U(128))
            .with("SCALE", Const::F(0.125))
            .with("IS_MLA", Const::B(true));
        assert_eq!(
            c.c(),
            "#define DK 128\n#define SCALE 1.25e-1f\n#define IS_MLA 1\n"
        );
        assert_eq!(
            c.wgsl(),
            "const DK: u32 = 128u;\nconst SCALE: f32 = 1.25e-1;\nconst IS_MLA: bool = true;\n"
        );
    }
}
