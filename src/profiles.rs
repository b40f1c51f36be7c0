//! The hardware profiles and model presets shipped in `experiments/`, built into the binary so
//! that `hardware: h100-sxm` and `model --model kimi-k2.5` work from any folder. A file of the
//! same name beside the experiment (or in a folder above it), or a path ending in `.yaml`,
//! overrides the built-in one.

use crate::error::nearest;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Which kind of profile: the folder it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Hardware,
    Model,
}

impl Kind {
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Hardware => "hardware",
            Kind::Model => "models",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Hardware => "hardware profile",
            Kind::Model => "model preset",
        }
    }

    /// The built-in ones, by name.
    pub fn builtin(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Hardware => HARDWARE,
            Kind::Model => MODELS,
        }
    }
}

/// experiments/hardware/*.yaml, as built (a test checks the list against the folder).
pub const HARDWARE: &[(&str, &str)] = &[
    ("b200", include_str!("../experiments/hardware/b200.yaml")),
    (
        "h100-sxm",
        include_str!("../experiments/hardware/h100-sxm.yaml"),
    ),
    (
        "h200-sxm",
        include_str!("../experiments/hardware/h200-sxm.yaml"),
    ),
    (
        "sram-die",
        include_str!("../experiments/hardware/sram-die.yaml"),
    ),
];

/// experiments/models/*.yaml, as built.
pub const MODELS: &[(&str, &str)] = &[
    (
        "deepseek-v3",
        include_str!("../experiments/models/deepseek-v3.yaml"),
    ),
    (
        "gpt-oss-120b",
        include_str!("../experiments/models/gpt-oss-120b.yaml"),
    ),
    (
        "kimi-k2.5",
        include_str!("../experiments/models/kimi-k2.5.yaml"),
    ),
    (
        "llama-3.1-405b",
        include_str!("../experiments/models/llama-3.1-405b.yaml"),
    ),
    (
        "llama-3.1-70b",
        include_str!("../experiments/models/llama-3.1-70b.yaml"),
    ),
    (
        "qwen3-235b-a22b",
        include_str!("../experiments/models/qwen3-235b-a22b.yaml"),
    ),
];

/// A profile's text and where it came from (a path, or `built-in hardware/h100-sxm.yaml`).
pub struct Found {
    pub label: String,
    pub text: Cow<'static, str>,
    /// The file it came from, when it is a file.
    pub path: Option<PathBuf>,
}

/// Find `name` of `kind`: a path when it ends in `.yaml` (relative to `start`), else
/// `<kind>/<name>.yaml` or `experiments/<kind>/<name>.yaml` in `start` or a folder above it,
/// else the built-in one. An unknown name is refused with the nearest one that exists.
pub fn find(kind: Kind, start: &Path, name: &str) -> Result<Found, String> {
    let start = if start.as_os_str().is_empty() {
        Path::new(".")
    } else {
        start
    };
    let read = |p: PathBuf| -> Result<Found, String> {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
        Ok(Found {
            label: p.display().to_string(),
            text: Cow::Owned(text),
            path: Some(p),
        })
    };
    if name.ends_with(".yaml") {
        let p = start.join(name);
        return if p.exists() {
            read(p)
        } else {
            Err(format!("no {} file {}", kind.what(), p.display()))
        };
    }
    let file = format!("{name}.yaml");
    let beside = start.ancestors().find_map(|d| {
        [
            d.join(kind.folder()).join(&file),
            d.join("experiments").join(kind.folder()).join(&file),
        ]
        .into_iter()
        .find(|p| p.exists())
    });
    if let Some(p) = beside {
        return read(p);
    }
    if let Some((_, text)) = kind.builtin().iter().find(|(n, _)| *n == name) {
        return Ok(Found {
            label: format!("built-in {}/{name}.yaml", kind.folder()),
            text: Cow::Borrowed(text),
            path: None,
        });
    }
    let names: Vec<&str> = kind.builtin().iter().map(|(n, _)| *n).collect();
    let hint = nearest(name, &names).map_or(String::new(), |n| format!("did you mean {n}? "));
    Err(format!(
        "no {} '{name}' ({hint}built in: {}; or a file {}/{file} beside the experiment, or a path ending in .yaml)",
        kind.what(),
        names.join(", "),
        kind.folder()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_lists_are_the_shipped_files() {
        for kind in [Kind::Hardware, Kind::Model] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("experiments")
                .join(kind.folder());
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| {
                    e.ok()?
                        .path()
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .collect();
            files.sort();
            let built: Vec<&str> = kind.builtin().iter().map(|(n, _)| *n).collect();
            assert_eq!(
                files,
                built,
                "{}: add the new file to profiles.rs",
                kind.folder()
            );
        }
    }

    #[test]
    fn built_in_profiles_are_found_from_anywhere_and_files_override_them() {
        let nowhere = std::env::temp_dir().join(format!("decodelab-prof-{}", std::process::id()));
        std::fs::create_dir_all(nowhere.join("hardware")).unwrap();
        let f = find(Kind::Hardware, &nowhere, "h100-sxm").unwrap();
        assert!(
            f.path.is_none() && f.label.contains("built-in"),
            "{}",
            f.label
        );
        // A file beside the experiment wins over the built-in one.
        std::fs::write(nowhere.join("hardware/h100-sxm.yaml"), "name: mine\n").unwrap();
        let f = find(Kind::Hardware, &nowhere, "h100-sxm").unwrap();
        assert_eq!(f.text, "name: mine\n");
        let err = find(Kind::Hardware, &nowhere, "h100").err().unwrap();
        assert!(err.contains("did you mean h100-sxm?"), "{err}");
        let err = find(Kind::Model, &nowhere, "kimi").err().unwrap();
        assert!(err.contains("did you mean kimi-k2.5?"), "{err}");
        let _ = std::fs::remove_dir_all(&nowhere);
    }
}
