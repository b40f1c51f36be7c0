//! What a WGSL shader becomes before a Vulkan driver sees it, read without a driver: naga
//! parses and validates it, and writes the SPIR-V as wgpu-hal would for a module built with
//! or without wgpu's runtime checks. Two things in it cost on NVIDIA: a bound counter in
//! every loop (`force_loop_bounding`) and a per-thread array indexed by a runtime value (it
//! lives in local memory). The tuned shaders must have neither.

use naga::{AddressSpace, Expression, Handle, Module, TypeInner};

/// One entry point's report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ShaderReport {
    pub entry: String,
    /// Loops that carry wgpu's bound counter in the SPIR-V.
    pub loop_bounds: usize,
    /// `function: variable` of every Function-storage array indexed by a runtime value, in
    /// the entry point or any function it calls.
    pub dynamic_private_arrays: Vec<String>,
    pub spirv_words: usize,
}

/// Parse and validate WGSL as wgpu does for a device with (or without) subgroups.
pub fn validate(
    source: &str,
    subgroups: bool,
) -> Result<(Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("WGSL parse error:\n{}", e.emit_to_string(source)))?;
    // unpack2x16float is core WGSL; naga counts it as a capability wgpu grants natively.
    let mut caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .map_err(|e| format!("invalid WGSL:\n{}", e.emit_to_string(source)))?;
    Ok((module, info))
}

/// Every compute entry point of `source`: its SPIR-V as wgpu-hal writes it for Vulkan 1.3
/// with (`runtime_checks`) or without wgpu's checks, and its dynamically indexed arrays.
pub fn inspect(
    source: &str,
    subgroups: bool,
    runtime_checks: bool,
) -> Result<Vec<ShaderReport>, String> {
    let (module, info) = validate(source, subgroups)?;
    let policy = if runtime_checks {
        naga::proc::BoundsCheckPolicy::Restrict
    } else {
        naga::proc::BoundsCheckPolicy::Unchecked
    };
    let options = naga::back::spv::Options {
        lang_version: (1, 6),
        // DEBUG names the loop counters "loop_bound", which is how they are found below.
        flags: naga::back::spv::WriterFlags::DEBUG,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: policy,
            buffer: policy,
            image_load: policy,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        },
        zero_initialize_workgroup_memory:
            naga::back::spv::ZeroInitializeWorkgroupMemoryMode::Native,
        force_loop_bounding: runtime_checks,
        emit_int_div_checks: runtime_checks,
        ..Default::default()
    };
    let mut out = Vec::new();
    for ep in &module.entry_points {
        let pipeline = naga::back::spv::PipelineOptions {
            entry_point: ep.name.clone(),
            shader_stage: ep.stage,
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
            .map_err(|e| format!("SPIR-V for {}: {e}", ep.name))?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let loop_bounds = bytes
            .windows(b"loop_bound\0".len())
            .filter(|w| *w == b"loop_bound\0")
            .count();
        let mut arrays = dynamic_arrays(&module, &ep.name, &ep.function);
        for f in called(&module, &ep.function) {
            let func = &module.functions[f];
            arrays.extend(dynamic_arrays(
                &module,
                func.name.as_deref().unwrap_or("?"),
                func,
            ));
        }
        arrays.sort();
        arrays.dedup();
        out.push(ShaderReport {
            entry: ep.name.clone(),
            loop_bounds,
            dynamic_private_arrays: arrays,
            spirv_words: words.len(),
        });
    }
    Ok(out)
}

/// One entry point of one implementation at one representative shape, as built (trusted)
/// and as wgpu's default checks would build it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EntryReport {
    pub variant: String,
    #[serde(rename = "impl")]
    pub imp: &'static str,
    pub tuned: bool,
    #[serde(flatten)]
    pub built: ShaderReport,
    /// Loop counters the same entry point carries under wgpu's default checks.
    pub loop_bounds_checked: usize,
}

/// Every wgpu implementation at every representative shape (`backend::plan::representative`)
/// that it covers, assembled for subgroups of at least `subgroup_min` lanes (NVIDIA: 32).
pub fn report(subgroup_min: usize) -> Result<Vec<EntryReport>, String> {
    let paths = super::ShaderPaths::subgroups(subgroup_min);
    let mut out = Vec::new();
    for (variant, w) in crate::backend::plan::representative() {
        for imp in crate::backend::impls_of("wgpu", w.kind()) {
            let Ok(source) = super::shader_sources(&w, imp.name, paths, 1) else {
                continue; // a shape this implementation leaves to another
            };
            let checked = inspect(&source, true, true)?;
            for built in inspect(&source, true, false)? {
                let loop_bounds_checked = checked
                    .iter()
                    .find(|c| c.entry == built.entry)
                    .map_or(0, |c| c.loop_bounds);
                out.push(EntryReport {
                    variant: variant.clone(),
                    imp: imp.name,
                    tuned: imp.tuned,
                    built,
                    loop_bounds_checked,
                });
            }
        }
    }
    Ok(out)
}

/// The functions `f` calls, directly or not.
fn called(module: &Module, f: &naga::Function) -> Vec<Handle<naga::Function>> {
    let mut seen: Vec<Handle<naga::Function>> = Vec::new();
    let mut todo = vec![f];
    while let Some(f) = todo.pop() {
        for (s, _) in f.body.span_iter() {
            collect_calls(s, &mut |h| {
                if !seen.contains(&h) {
                    seen.push(h);
                    todo.push(&module.functions[h]);
                }
            });
        }
    }
    seen
}

fn collect_calls(s: &naga::Statement, found: &mut dyn FnMut(Handle<naga::Function>)) {
    use naga::Statement as S;
    let block = |b: &naga::Block, found: &mut dyn FnMut(Handle<naga::Function>)| {
        for (s, _) in b.span_iter() {
            collect_calls(s, found);
        }
    };
    match s {
        S::Call { function, .. } => found(*function),
        S::Block(b) => block(b, found),
        S::If { accept, reject, .. } => {
            block(accept, found);
            block(reject, found);
        }
        S::Switch { cases, .. } => cases.iter().for_each(|c| block(&c.body, found)),
        S::Loop {
            body, continuing, ..
        } => {
            block(body, found);
            block(continuing, found);
        }
        _ => {}
    }
}

/// `function: variable` for each Function-storage array (a local, or one behind a pointer
/// argument) that an expression indexes with a value not known when the shader compiles.
fn dynamic_arrays(module: &Module, name: &str, f: &naga::Function) -> Vec<String> {
    let is_array =
        |ty: Handle<naga::Type>| matches!(module.types[ty].inner, TypeInner::Array { .. });
    // The array variable an access chain starts from, if it is a private one.
    let root = |mut e: Handle<Expression>| loop {
        match f.expressions[e] {
            Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => e = base,
            Expression::LocalVariable(v) if is_array(f.local_variables[v].ty) => {
                return f.local_variables[v].name.clone().or(Some("?".into()));
            }
            Expression::FunctionArgument(i) => {
                let a = &f.arguments[i as usize];
                return match module.types[a.ty].inner {
                    TypeInner::Pointer {
                        base,
                        space: AddressSpace::Function,
                    } if is_array(base) => a.name.clone().or(Some("?".into())),
                    _ => None,
                };
            }
            _ => return None,
        }
    };
    let mut out = Vec::new();
    for (_, e) in f.expressions.iter() {
        if let Expression::Access { base, index } = *e
            && !matches!(
                f.expressions[index],
                Expression::Literal(_) | Expression::Constant(_) | Expression::ZeroValue(_)
            )
            && let Some(var) = root(base)
        {
            out.push(format!("{name}: {var}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPY: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    var acc: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = f32(i); }
    out[lid] = acc[lid % 4u] + acc[2];
}
";

    #[test]
    fn the_report_covers_every_wgpu_implementation() {
        let r = report(32).unwrap();
        for imp in crate::backend::IMPLS.iter().filter(|i| i.backend == "wgpu") {
            if imp.kernel != crate::registry::Kernel::Link {
                assert!(r.iter().any(|e| e.imp == imp.name), "{}", imp.name);
            }
        }
        // Built as trusted modules: no counters; under wgpu's checks, some.
        assert!(r.iter().all(|e| e.built.loop_bounds == 0));
        assert!(r.iter().any(|e| e.loop_bounds_checked > 0));
        assert!(
            r.iter()
                .filter(|e| e.tuned)
                .all(|e| e.built.dynamic_private_arrays.is_empty())
        );
    }

    #[test]
    fn finds_loop_counters_only_when_checked() {
        let checked = inspect(LOOPY, false, true).unwrap();
        assert_eq!(checked[0].loop_bounds, 1);
        let unchecked = inspect(LOOPY, false, false).unwrap();
        assert_eq!(unchecked[0].loop_bounds, 0);
    }

    #[test]
    fn finds_a_runtime_indexed_private_array_and_not_a_constant_index() {
        let r = inspect(LOOPY, false, false).unwrap();
        assert_eq!(r[0].dynamic_private_arrays, vec!["main: acc".to_string()]);
        let constant = LOOPY
            .replace(
                "for (var i = 0u; i < 4u; i++) { acc[i] = f32(i); }",
                "acc[1] = 2.0;",
            )
            .replace("acc[lid % 4u]", "acc[3]");
        let r = inspect(&constant, false, false).unwrap();
        assert!(r[0].dynamic_private_arrays.is_empty(), "{r:?}");
    }
}
