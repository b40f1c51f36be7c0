//! The names decodelab knows: every kernel and every backend, with what a user reads about
//! them and when they apply. The command line (`--backend`, `run --help`), the YAML errors,
//! the split kinds, the implementation table and the tests' per-backend suites all read these
//! two lists, so a new kernel or backend starts here and the compiler's exhaustive matches on
//! [`Kernel`] name every place that must learn it.

/// A kernel: what one point computes. Its parameters live in `workload`, its code per backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    Stream,
    KvDecode,
    ExpertGemv,
    Link,
}

/// What a user is told about a kernel, and when it applies.
pub struct KernelInfo {
    pub kernel: Kernel,
    /// Its name in YAML, result lines and filters.
    pub name: &'static str,
    /// A short title for tables and charts.
    pub label: &'static str,
    pub about: &'static str,
    /// The fewest devices a point of it needs (a link runs between two).
    pub min_devices: usize,
}

/// Every kernel, in the order help text lists them.
pub const KERNELS: &[KernelInfo] = &[
    KernelInfo {
        kernel: Kernel::Stream,
        name: "stream",
        label: "stream",
        about: "read, write or copy `bytes`: the ceiling every other kernel is held against",
        min_devices: 1,
    },
    KernelInfo {
        kernel: Kernel::KvDecode,
        name: "kv_decode",
        label: "KV decode",
        about: "one decode step of attention over a paged KV cache (GQA or MLA)",
        min_devices: 1,
    },
    KernelInfo {
        kernel: Kernel::ExpertGemv,
        name: "expert_gemv",
        label: "expert GEMV",
        about: "the routed experts' weights times each token's activations (MoE)",
        min_devices: 1,
    },
    KernelInfo {
        kernel: Kernel::Link,
        name: "link",
        label: "link",
        about: "device-to-device copies over the interconnect, per pair of devices",
        min_devices: 2,
    },
];

impl Kernel {
    pub fn info(self) -> &'static KernelInfo {
        KERNELS
            .iter()
            .find(|k| k.kernel == self)
            .expect("every kernel has an entry in KERNELS")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        KERNELS.iter().find(|k| k.name == name).map(|k| k.kernel)
    }

    /// Whether a run over `devices` devices can hold this kernel; the message says why not.
    pub fn check_devices(self, devices: usize) -> Result<(), String> {
        let need = self.info().min_devices;
        if devices >= need {
            return Ok(());
        }
        Err(format!(
            "{} runs between pairs of devices: it needs {need} or more, the run has {devices} \
             (give devices: {need} or more, or virtual: true with a count)",
            self.name()
        ))
    }
}

/// What a user is told about a backend.
pub struct BackendInfo {
    /// Its name in YAML, `--backend` and result lines.
    pub name: &'static str,
    pub about: &'static str,
    /// What it needs at run time; `decodelab devices` says which is missing.
    pub needs: &'static str,
}

/// Every backend, in the order `backends: auto` prefers them.
pub const BACKENDS: &[BackendInfo] = &[
    BackendInfo {
        name: "cuda",
        about: "CUDA C compiled at run time by NVRTC, launched through the driver API",
        needs: "an NVIDIA driver and NVRTC (libnvrtc)",
    },
    BackendInfo {
        name: "wgpu",
        about: "WGSL compute shaders through wgpu (Vulkan, Metal, DX12)",
        needs: "a Vulkan, Metal or DX12 adapter (Mesa lavapipe counts, as an emulated one)",
    },
    BackendInfo {
        name: "cpu",
        about: "the reference: rayon over the host's cores",
        needs: "nothing",
    },
];

pub fn backend_names() -> impl Iterator<Item = &'static str> {
    BACKENDS.iter().map(|b| b.name)
}

pub fn is_backend(name: &str) -> bool {
    backend_names().any(|n| n == name)
}

/// "a, b or c", for messages that list the choices.
pub fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    match v.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// The kernels and backends as `run --help` lists them.
pub fn help_text() -> String {
    let mut s = String::from("Kernels (kernel: in a run):\n");
    for k in KERNELS {
        s.push_str(&format!("  {:<12} {}\n", k.name, k.about));
    }
    s.push_str("\nBackends (--backend, backends:):\n");
    for b in BACKENDS {
        s.push_str(&format!(
            "  {:<12} {}\n  {:<12} needs {}\n",
            b.name, b.about, "", b.needs
        ));
    }
    s.pop(); // clap adds the last newline
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_one_entry_and_names_are_unique() {
        for k in [
            Kernel::Stream,
            Kernel::KvDecode,
            Kernel::ExpertGemv,
            Kernel::Link,
        ] {
            assert_eq!(KERNELS.iter().filter(|e| e.kernel == k).count(), 1);
            assert_eq!(Kernel::from_name(k.name()), Some(k));
        }
        let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        names.extend(backend_names());
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a name is used twice");
    }

    #[test]
    fn link_needs_two_devices() {
        assert!(
            Kernel::Link
                .check_devices(1)
                .unwrap_err()
                .contains("2 or more")
        );
        assert!(Kernel::Link.check_devices(2).is_ok());
        assert!(Kernel::Stream.check_devices(1).is_ok());
    }

    #[test]
    fn lists_read_as_english() {
        assert_eq!(one_of(["a"]), "a");
        assert_eq!(one_of(["a", "b", "c"]), "a, b or c");
    }
}
