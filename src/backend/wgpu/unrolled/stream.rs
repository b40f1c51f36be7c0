//! stream "unrolled": four 16-byte words per thread per step (CUDA's stream kernel unrolls
//! its grid-stride loop by 4 the same way), every load issued before any is used or stored,
//! and the op written out alone (no branch on OP in the loop).

use super::Code;
use crate::backend::plan::{Const, Constants};
use crate::backend::wgpu::ShaderPaths;
use crate::workload::StreamOp;

/// Words in flight per thread.
const UNROLL: usize = 4;

/// The unrolled stream shader: the shared bindings, sum and pattern (shaders/stream.wgsl)
/// and its own `main`.
pub fn stream_source(op: StreamOp, paths: ShaderPaths) -> String {
    let code = match op {
        StreamOp::Read => 0,
        StreamOp::Copy => 1,
        StreamOp::Write => 2,
    };
    let c = Constants::default()
        .with("OP", Const::U(code))
        .with("WG", Const::U(super::super::shaders::STREAM_WG as u64));
    let mut s =
        super::super::shaders::assemble(paths, &c.wgsl(), &[super::super::shaders::STREAM_WGSL]);
    s.push_str(&main(op));
    s
}

fn main(op: StreamOp) -> String {
    let s = String::from(
        "
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    let n = chunk.vecs;
    var acc = 0u;
",
    );
    let mut c = Code(s);
    c.line(format!(
        "    for (var i = gid.x; i < n; i += {UNROLL}u * stride) {{"
    ));
    for u in 1..UNROLL {
        c.line(format!("        let i{u} = i + {u}u * stride;"));
    }
    let idx = |u: usize| {
        if u == 0 {
            "i".to_string()
        } else {
            format!("i{u}")
        }
    };
    match op {
        // Out-of-range words read word i (in range) and count zero.
        StreamOp::Read | StreamOp::Copy => {
            c.line("        let v0 = src[i];");
            for u in 1..UNROLL {
                c.line(format!(
                    "        let v{u} = src[select(i, i{u}, i{u} < n)];"
                ));
            }
            if op == StreamOp::Read {
                c.line("        acc += v0.x + v0.y + v0.z + v0.w;");
                for u in 1..UNROLL {
                    c.line(format!(
                        "        acc += select(0u, v{u}.x + v{u}.y + v{u}.z + v{u}.w, i{u} < n);"
                    ));
                }
            } else {
                c.line("        dst[i] = v0;");
                for u in 1..UNROLL {
                    c.line(format!(
                        "        if (i{u} < n) {{\n            dst[i{u}] = v{u};\n        }}"
                    ));
                }
            }
        }
        StreamOp::Write => {
            for u in 0..UNROLL {
                let i = idx(u);
                let store = format!(
                    "let w{u} = chunk.base_word + 4u * {i};\n            \
                     dst[{i}] = vec4<u32>(pattern(w{u}), pattern(w{u} + 1u), pattern(w{u} + 2u), pattern(w{u} + 3u));"
                );
                if u == 0 {
                    c.line(format!("        {{\n            {store}\n        }}"));
                } else {
                    c.line(format!(
                        "        if ({i} < n) {{\n            {store}\n        }}"
                    ));
                }
            }
        }
    }
    c.line("    }");
    if op == StreamOp::Read {
        c.line("    add_to_sum(acc, lid);");
    }
    c.line("}");
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_validates_on_both_paths() {
        for op in [StreamOp::Read, StreamOp::Copy, StreamOp::Write] {
            for paths in [ShaderPaths::PLAIN, ShaderPaths::subgroups(32)] {
                let src = stream_source(op, paths);
                if let Err(e) = crate::backend::wgpu::inspect::validate(&src, paths.subgroups) {
                    panic!("{op:?} {paths:?}: {e}");
                }
                assert_eq!(src.matches("fn main(").count(), 1);
            }
        }
    }
}
