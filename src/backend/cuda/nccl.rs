//! NCCL, loaded at run time through cudarc (nothing NCCL is needed to build). A cuda split
//! combines its shards with NCCL; without the library it is refused before anything runs.

/// Where to get NCCL, for the messages.
const HINT: &str = "install it (e.g. `pip install nvidia-nccl-cu12`), put its lib/ on \
                    LD_LIBRARY_PATH and link libnccl.so to libnccl.so.2 there";

/// NCCL's version (e.g. 2.27.3), or why it cannot be used. Loading the library and asking
/// its version needs no GPU, so this runs anywhere.
pub fn version() -> Result<String, String> {
    // SAFETY: only tries to dlopen libnccl.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        // cudarc loads `libnccl.so`; packages (and the PyPI wheels) often ship only the
        // versioned `libnccl.so.2`.
        if let Some(dir) = versioned_only() {
            return Err(format!(
                "{dir}/libnccl.so.2 is there but libnccl.so is not (cudarc loads libnccl.so): \
                 ln -s libnccl.so.2 {dir}/libnccl.so"
            ));
        }
        return Err(format!("libnccl.so not found; {HINT}"));
    }
    let v = cudarc::nccl::result::get_nccl_version()
        .map_err(|e| format!("ncclGetVersion failed: {e:?}"))?;
    Ok(format_version(v))
}

/// A directory on LD_LIBRARY_PATH holding libnccl.so.2 but no libnccl.so.
fn versioned_only() -> Option<String> {
    let path = std::env::var("LD_LIBRARY_PATH").ok()?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(std::path::Path::new)
        .find(|d| d.join("libnccl.so.2").exists() && !d.join("libnccl.so").exists())
        .map(|d| d.display().to_string())
}

/// NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9 (major*1000 + ... before).
pub fn format_version(code: i32) -> String {
    let (major, minor, patch) = if code >= 20900 {
        (code / 10000, code / 100 % 100, code % 100)
    } else {
        (code / 1000, code / 100 % 10, code % 100)
    };
    format!("{major}.{minor}.{patch}")
}

/// The refusal a cuda split gets without NCCL.
pub fn require() -> Result<String, String> {
    version().map_err(|why| format!("split needs NCCL on cuda: {why}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_codes_decode_both_ways() {
        assert_eq!(super::format_version(22703), "2.27.3");
        assert_eq!(super::format_version(2804), "2.8.4");
    }
}
