//! Kernel arguments by name: the host names each buffer as the shader names its binding,
//! and the binding numbers and access come from the WGSL itself (parsed by naga), so a buffer
//! cannot land in another's slot and no number is written twice.

use anyhow::{Context, bail};

/// How a shader reads a binding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind {
    Read,
    Write,
    Uniform,
}

/// A shader's group-0 bindings: (name, `@binding`, access), in binding order.
pub(super) struct Bindings(pub(super) Vec<(String, u32, Kind)>);

impl Bindings {
    /// The bindings `source` declares.
    pub(super) fn of(source: &str) -> anyhow::Result<Bindings> {
        let module = naga::front::wgsl::parse_str(source)
            .map_err(|e| anyhow::anyhow!("{}", e.emit_to_string(source)))
            .context("parsing a generated WGSL shader for its bindings")?;
        let mut out = Vec::new();
        for (_, g) in module.global_variables.iter() {
            let Some(b) = &g.binding else { continue };
            let kind = match g.space {
                naga::AddressSpace::Uniform => Kind::Uniform,
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        Kind::Write
                    } else {
                        Kind::Read
                    }
                }
                other => bail!("binding {}: address space {other:?}", b.binding),
            };
            if b.group != 0 {
                bail!(
                    "binding {} is in group {}: decodelab uses group 0",
                    b.binding,
                    b.group
                );
            }
            let name = g.name.clone().unwrap_or_default();
            out.push((name, b.binding, kind));
        }
        out.sort_by_key(|b| b.1);
        Ok(Bindings(out))
    }

    /// Storage bindings the shader declares (the adapter bounds them per stage).
    pub(super) fn storage(&self) -> usize {
        self.0.iter().filter(|b| b.2 != Kind::Uniform).count()
    }

    /// The `@binding` of each named buffer. Every name must be a binding of the shader and
    /// every binding must be named; a chunked tensor `k` names `k_c0`, `k_c1`, ... as
    /// `shaders::chunk_accessor` declares them.
    pub(super) fn place<'b, B>(
        &self,
        buffers: &[(&str, &'b B)],
        chunked: &[(&str, &'b [B])],
    ) -> anyhow::Result<Vec<(u32, &'b B)>> {
        let chunks = chunked.iter().flat_map(|(name, bufs)| {
            bufs.iter()
                .enumerate()
                .map(move |(c, b)| (super::shaders::chunk_name(name, c), b))
        });
        let named = buffers
            .iter()
            .map(|&(n, b)| (n.to_string(), b))
            .chain(chunks);
        let mut placed = Vec::new();
        for (name, buf) in named {
            let Some(&(_, binding, _)) = self.0.iter().find(|b| b.0 == name) else {
                bail!(
                    "the shader has no binding named {name} (its bindings: {})",
                    self.names()
                );
            };
            if placed.iter().any(|&(b, _)| b == binding) {
                bail!("binding {name} is given two buffers");
            }
            placed.push((binding, buf));
        }
        if let Some(missing) = self.0.iter().find(|b| !placed.iter().any(|p| p.0 == b.1)) {
            bail!(
                "the shader's binding {} (@binding({})) is given no buffer",
                missing.0,
                missing.1
            );
        }
        Ok(placed)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|b| b.0.as_str()).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHADER: &str = "struct Chunk { first: u32 }
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<uniform> chunk: Chunk;
@group(0) @binding(10) var<storage, read> w_c0: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read> w_c1: array<vec4<u32>>;
@compute @workgroup_size(1) fn main() { dst[0] = src[0] + chunk.first + w_c0[0].x + w_c1[0].x; }
";

    #[test]
    fn numbers_and_access_come_from_the_shader() {
        let b = Bindings::of(SHADER).unwrap();
        let got: Vec<(&str, u32, Kind)> = b.0.iter().map(|x| (x.0.as_str(), x.1, x.2)).collect();
        assert_eq!(
            got,
            [
                ("src", 0, Kind::Read),
                ("dst", 1, Kind::Write),
                ("chunk", 3, Kind::Uniform),
                ("w_c0", 10, Kind::Read),
                ("w_c1", 11, Kind::Read)
            ]
        );
        assert_eq!(b.storage(), 4);
    }

    #[test]
    fn names_place_buffers_and_mistakes_are_refused() {
        // Buffers stand in as strings: placing needs only their identity.
        let (src, dst, chunk) = ("SRC", "DST", "CHUNK");
        let w = ["W0", "W1"];
        let b = Bindings::of(SHADER).unwrap();
        let placed = b
            .place(
                &[("dst", &dst), ("src", &src), ("chunk", &chunk)],
                &[("w", &w)],
            )
            .unwrap();
        let got: Vec<(u32, &str)> = placed.iter().map(|p| (p.0, *p.1)).collect();
        assert_eq!(
            got,
            [(1, "DST"), (0, "SRC"), (3, "CHUNK"), (10, "W0"), (11, "W1")]
        );

        let err = |r: anyhow::Result<Vec<(u32, &&str)>>| r.err().unwrap().to_string();
        let typo = b.place(
            &[("dts", &dst), ("src", &src), ("chunk", &chunk)],
            &[("w", &w)],
        );
        assert!(err(typo).contains("no binding named dts"));
        let missing = b.place(&[("dst", &dst), ("src", &src)], &[("w", &w)]);
        assert!(err(missing).contains("chunk (@binding(3)) is given no buffer"));
        let twice = b.place(
            &[
                ("dst", &dst),
                ("src", &src),
                ("src", &dst),
                ("chunk", &chunk),
            ],
            &[("w", &w)],
        );
        assert!(err(twice).contains("src is given two buffers"));
        let short = b.place(
            &[("dst", &dst), ("src", &src), ("chunk", &chunk)],
            &[("w", &w[..1])],
        );
        assert!(err(short).contains("w_c1"));
    }
}
