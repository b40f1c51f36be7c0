//! A point put on a device: its inputs uploaded, its poisoned outputs, its scratch and its
//! launches, per kernel (the shapes come from the implementation's `LaunchPlan`).

use super::compile;
use super::impls::Shape;
use super::{Arg, Launch, Point};
use crate::workload::{ExpertGemv, KvDecode, OutputSpec, Stream, StreamOp, Tensor, TensorSet};
use anyhow::{anyhow, bail};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig};
use std::sync::Arc;

pub(super) struct Build<'s> {
    pub(super) module: Arc<CudaModule>,
    /// The source the module was compiled from: launches name their arguments against it.
    pub(super) source: &'s str,
    pub(super) p: Point,
}

impl Build<'_> {
    fn func(&self, name: &str) -> anyhow::Result<CudaFunction> {
        self.module
            .load_function(name)
            .map_err(|e| anyhow!("kernel {name}: {e:?}"))
    }

    fn add(&mut self, b: CudaSlice<u8>) -> usize {
        self.p.buffers.push(b);
        self.p.buffers.len() - 1
    }

    /// Upload `bytes`, padded to 16 bytes with zeros (kernels read whole 16-byte words); the
    /// bytes go straight from the host tensor, never through a padded host copy.
    fn up(&mut self, bytes: &[u8]) -> anyhow::Result<usize> {
        let stream = &self.p.stream;
        let mut buf = stream
            .alloc_zeros::<u8>(bytes.len().next_multiple_of(16).max(16))
            .map_err(|e| anyhow!("allocating {} bytes: {e:?}", bytes.len()))?;
        stream
            .memcpy_htod(bytes, &mut buf.slice_mut(..bytes.len()))
            .map_err(|e| anyhow!("upload of {} bytes: {e:?}", bytes.len()))?;
        Ok(self.add(buf))
    }

    fn input(&mut self, inputs: &TensorSet, name: &str) -> anyhow::Result<usize> {
        self.up(&inputs.expect(name).bytes)
    }

    /// `n` zero bytes of scratch.
    fn zeros(&mut self, n: usize) -> anyhow::Result<usize> {
        let buf = self
            .p
            .stream
            .alloc_zeros::<u8>(n + 16)
            .map_err(|e| anyhow!("{e:?}"))?;
        Ok(self.add(buf))
    }

    /// A poisoned output (read back after the run; only its shape is kept on the host).
    fn output(&mut self, spec: &OutputSpec) -> anyhow::Result<usize> {
        let i = self.up(&spec.poisoned().bytes)?;
        let shape = Tensor::spec(spec.name, spec.elem, spec.shape.clone());
        self.p.outputs.push((shape, i));
        Ok(i)
    }

    fn launch(
        &mut self,
        name: &str,
        grid: (u32, u32, u32),
        block: usize,
        args: Vec<(&'static str, Arg)>,
    ) -> anyhow::Result<()> {
        self.launch_with_shared(name, grid, (block, 0), args)
    }

    /// A launch with `shared` bytes of dynamic shared memory (the function's limit raised to
    /// it past the default 48 KB).
    fn launch_with_shared(
        &mut self,
        name: &str,
        grid: (u32, u32, u32),
        (block, shared): (usize, usize),
        args: Vec<(&'static str, Arg)>,
    ) -> anyhow::Result<()> {
        let args = super::args::in_order(name, args, self.source)?;
        let func = self.func(name)?;
        if shared > 48 << 10 {
            use cudarc::driver::sys::CUfunction_attribute as A;
            func.set_attribute(
                A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )
            .map_err(|e| anyhow!("kernel {name}: {shared} bytes of shared memory: {e:?}"))?;
        }
        self.p.launches.push(Launch {
            func,
            cfg: LaunchConfig {
                grid_dim: grid,
                block_dim: (block as u32, 1, 1),
                shared_mem_bytes: shared as u32,
            },
            args,
        });
        Ok(())
    }

    pub(super) fn stream(
        &mut self,
        w: &Stream,
        inputs: &TensorSet,
        sms: usize,
    ) -> anyhow::Result<()> {
        let n_vec = (w.bytes as usize).div_ceil(16) as u64;
        let blocks = n_vec
            .div_ceil(compile::STREAM_WG as u64)
            .clamp(1, (sms * 8) as u64);
        let grid = (blocks as u32, 1, 1);
        let dst = w.outputs().remove(0);
        match w.op {
            StreamOp::Read => {
                let src = self.input(inputs, "src")?;
                let sum = self.output(&dst)?;
                self.p.clear_each_rep = Some(sum);
                let args = vec![
                    ("src", Arg::Buf(src)),
                    ("n_vec", Arg::U64(n_vec)),
                    ("sum", Arg::Buf(sum)),
                ];
                self.launch("stream_read", grid, compile::STREAM_WG, args)
            }
            StreamOp::Copy => {
                let dst = self.output(&dst)?;
                let src = self.input(inputs, "src")?;
                let args = vec![
                    ("src", Arg::Buf(src)),
                    ("dst", Arg::Buf(dst)),
                    ("n_vec", Arg::U64(n_vec)),
                ];
                self.launch("stream_copy", grid, compile::STREAM_WG, args)
            }
            StreamOp::Write => {
                let dst = self.output(&dst)?;
                let args = vec![
                    ("dst", Arg::Buf(dst)),
                    ("n_vec", Arg::U64(n_vec)),
                    ("seed", Arg::U32(w.pattern_seed())),
                ];
                self.launch("stream_write", grid, compile::STREAM_WG, args)
            }
        }
    }

    pub(super) fn kv_decode(
        &mut self,
        w: &KvDecode,
        inputs: &TensorSet,
        shape: &Shape,
    ) -> anyhow::Result<()> {
        let &Shape::Kv {
            plan: ref l,
            block,
            shared,
        } = shape
        else {
            bail!("kv_decode launched without its plan");
        };
        let q = self.input(inputs, "q")?;
        let k = self.input(inputs, "k_pages")?;
        let v = match inputs.get("v_pages") {
            Some(t) => self.up(&t.bytes)?,
            None => k, // MLA: V is inside the latent
        };
        let table = self.input(inputs, "page_table")?;
        let lens = self.input(inputs, "context_lens")?;
        // Each (sequence, head, context slice) leaves its accumulator and (max, sum).
        let slots = w.batch * w.q_heads * l.splits;
        let acc = self.zeros(slots * w.head_dim_v * 4)?;
        let ml = self.zeros(slots * 8)?;
        let specs = w.outputs();
        let out = self.output(&specs[0])?;
        let lse = self.output(&specs[1])?;
        let grid = (l.splits as u32, (w.q_heads / l.hb) as u32, w.batch as u32);
        let args = named_bufs([
            ("q", q),
            ("k", k),
            ("v", v),
            ("page_table", table),
            ("context_lens", lens),
            ("partial_acc", acc),
            ("partial_ml", ml),
        ]);
        self.launch_with_shared("attend", grid, (block, shared), args)?;
        let grid = ((w.batch * w.q_heads) as u32, 1, 1);
        let args = named_bufs([
            ("partial_acc", acc),
            ("partial_ml", ml),
            ("out", out),
            ("lse", lse),
        ]);
        self.launch("merge", grid, compile::MERGE_WG, args)?;
        self.p.merge_shards = Some(self.func("merge_shards")?);
        Ok(())
    }

    pub(super) fn expert_gemv(
        &mut self,
        w: &ExpertGemv,
        inputs: &TensorSet,
        shape: &Shape,
    ) -> anyhow::Result<()> {
        let Shape::Expert(plan) = shape else {
            bail!("expert_gemv launched without its plan");
        };
        let (groups, weights) = w.grouped(inputs);
        let touched = w.touched().len();
        let x = self.input(inputs, "x")?;
        let wt = self.input(inputs, "w")?;
        let scale = self.up(&crate::backend::plan::expert_scale_bytes(w, inputs))?;
        let g = self.up(bytemuck::cast_slice(&groups))?;
        let ew = self.up(bytemuck::cast_slice(&weights))?;
        // One row per (token, choice) slot; `combine` sums a token's slots.
        let slot_out = self.zeros(w.batch * w.top_k * w.d_out * 4)?;
        let y = self.output(&w.outputs()[0])?;
        // mma_w4 first lays x out as its mma's B operand (bf16 hi and lo, in the codes'
        // order): a buffer of x's size, read by gemv in place of x.
        let x_arg = if super::args::params_of(self.source, "x_frag").is_some() {
            let xf = self.zeros(w.batch * w.d_in * 4)?;
            let vectors = (w.batch * w.d_in / 8).div_ceil(compile::X_FRAG_WG) as u32;
            let args = named_bufs([("x", x), ("xf", xf)]);
            self.launch("x_frag", (vectors, 1, 1), compile::X_FRAG_WG, args)?;
            ("xf", xf)
        } else {
            ("x", x)
        };
        let grid = (w.d_out.div_ceil(plan.rows) as u32, touched as u32, 1);
        let args = named_bufs([
            x_arg,
            ("w", wt),
            ("w_scale", scale),
            ("groups", g),
            ("entry_weight", ew),
            ("slot_out", slot_out),
        ]);
        self.launch("gemv", grid, compile::EXPERT_WG, args)?;
        let grid = (
            (w.batch * w.d_out).div_ceil(compile::COMBINE_WG) as u32,
            1,
            1,
        );
        let args = named_bufs([("slot_out", slot_out), ("y", y)]);
        self.launch("combine", grid, compile::COMBINE_WG, args)
    }
}

/// Buffers as named arguments.
fn named_bufs<const N: usize>(bufs: [(&'static str, usize); N]) -> Vec<(&'static str, Arg)> {
    bufs.into_iter().map(|(n, b)| (n, Arg::Buf(b))).collect()
}
