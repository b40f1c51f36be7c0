//! Building a kv_decode point on a wgpu device: the cache in page-aligned bindings, the
//! implementation's plan and shader, the attend and merge dispatches.

use super::bindings::Bindings;
use super::build::{Built, Ctx, Dispatch};
use super::impls;
use crate::workload::{KvDecode, TensorSet};
use anyhow::bail;

impl Ctx {
    /// The point: cache chunks, shader, buffers named as it names their bindings, the two
    /// dispatches. (About 100 lines: the sizes of the chunks, the partials and both
    /// dispatches are one set, read best in one place.)
    pub(super) fn kv_decode(
        self,
        w: &KvDecode,
        inputs: &TensorSet,
        imp: &str,
    ) -> anyhow::Result<Built> {
        let mla = w.attention == crate::workload::Attention::Mla;
        let es = w.kv_dtype.size();
        let page_k = w.page_size * w.kv_heads * w.head_dim_k * es;
        let page_v = w.page_size * w.kv_heads * w.head_dim_v * es;
        // Pages per chunk must agree for K and V (one page index picks both).
        let unit = if mla { page_k } else { page_k.max(page_v) };
        if unit as u64 + 16 > self.max_binding {
            bail!(
                "one KV page ({unit} bytes) exceeds a binding ({} bytes)",
                self.max_binding
            );
        }
        let pages_per_chunk = ((self.max_binding as usize).saturating_sub(16) / unit).max(1);
        let (k_chunks, _) = self.chunked(inputs.expect("k_pages"), pages_per_chunk * page_k)?;
        let v_chunks = if mla {
            vec![]
        } else {
            self.chunked(inputs.expect("v_pages"), pages_per_chunk * page_v)?
                .0
        };

        let (plan, source) = impls::kv_for(
            w,
            imp,
            self.paths,
            self.limits.max_compute_workgroup_storage_size as usize,
            pages_per_chunk,
            k_chunks.len(),
            v_chunks.len(),
        )?;
        let (splits, hb) = (plan.splits, plan.hb);
        let bindings = Bindings::of(&source)?;
        let layout = self.layout(&bindings)?;
        let attend = self.pipeline(&source, "attend", &layout)?;
        let merge = self.pipeline(&source, "merge", &layout)?;

        let q = self.buffer("q", &inputs.expect("q").bytes, wgpu::BufferUsages::empty());
        let table = self.buffer(
            "page_table",
            &inputs.expect("page_table").bytes,
            wgpu::BufferUsages::empty(),
        );
        let lens = self.buffer(
            "context_lens",
            &inputs.expect("context_lens").bytes,
            wgpu::BufferUsages::empty(),
        );
        let slots = w.batch * w.q_heads * splits;
        let partial_acc = self.buffer(
            "partial_acc",
            &vec![0u8; slots * w.head_dim_v * 4],
            wgpu::BufferUsages::empty(),
        );
        let partial_ml = self.buffer(
            "partial_ml",
            &vec![0u8; slots * 8],
            wgpu::BufferUsages::empty(),
        );
        let specs = KvDecode::outputs(w);
        let (out_t, out_b) = self.poisoned_output(specs[0].poisoned());
        let (lse_t, lse_b) = self.poisoned_output(specs[1].poisoned());
        let named = [
            ("q", &q),
            ("page_table", &table),
            ("context_lens", &lens),
            ("partial_acc", &partial_acc),
            ("partial_ml", &partial_ml),
            ("out", &out_b[0]),
            ("lse", &lse_b[0]),
        ];
        let chunked = [("k", &k_chunks[..]), ("v", &v_chunks[..])];
        let bind_group = self.bind(&layout, &bindings, &named, &chunked)?;
        let bh = (w.batch * w.q_heads) as u32;
        let dispatches = vec![
            Dispatch {
                pipeline: attend,
                bind_group: bind_group.clone(),
                groups: [splits as u32, (w.q_heads / hb) as u32, w.batch as u32],
            },
            Dispatch {
                pipeline: merge,
                bind_group,
                groups: [bh.min(65535), bh.div_ceil(65535), 1],
            },
        ];
        let outputs = vec![(out_t, out_b), (lse_t, lse_b)];
        Ok(Built {
            ctx: self,
            dispatches,
            clear_each_rep: vec![],
            outputs,
        })
    }
}
