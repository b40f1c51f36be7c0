//! Kernel arguments by name: a launch names each argument as the kernel's parameter list in
//! the compiled source does (`kernels/*.cu`), and `in_order` checks them against it before
//! anything launches, so an argument cannot land in another's slot.

use super::Arg;
use anyhow::bail;

/// The parameter names of `kernel` in `source`: the identifiers that end each parameter of
/// `extern "C" __global__ void [__launch_bounds__(..)] kernel(...)`.
pub fn params_of(source: &str, kernel: &str) -> Option<Vec<String>> {
    let mut rest = source;
    while let Some(i) = rest.find("extern \"C\" __global__") {
        rest = &rest[i + 1..];
        let head = &rest[..rest.find('{')?];
        let Some(open) = head.find(&format!(" {kernel}(")) else {
            continue;
        };
        let list = &head[open + kernel.len() + 2..];
        let list = &list[..list.rfind(')')?];
        let names = list
            .split(',')
            .map(|p| {
                p.trim()
                    .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .filter(|n| !n.is_empty())
            .collect();
        return Some(names);
    }
    None
}

/// The arguments of `kernel`, after checking that their names are its parameters in
/// `source`, in order.
pub(super) fn in_order(
    kernel: &str,
    named: Vec<(&'static str, Arg)>,
    source: &str,
) -> anyhow::Result<Vec<Arg>> {
    let Some(params) = params_of(source, kernel) else {
        bail!("kernel {kernel}: no such __global__ function in its source");
    };
    let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
    if names != params {
        bail!(
            "kernel {kernel} takes ({}), the launch passes ({})",
            params.join(", "),
            names.join(", ")
        );
    }
    Ok(named.into_iter().map(|(_, a)| a).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "#define WG 128\nextern \"C\" __global__ void __launch_bounds__(WG, 1) attend(\n    const float* __restrict__ q,\n    float2* __restrict__ partial_ml) {\n}\nextern \"C\" __global__ void merge(const float* acc, u64 n_vec) { }\n";

    #[test]
    fn parameters_are_read_from_the_source() {
        assert_eq!(params_of(SOURCE, "attend").unwrap(), ["q", "partial_ml"]);
        assert_eq!(params_of(SOURCE, "merge").unwrap(), ["acc", "n_vec"]);
        assert!(params_of(SOURCE, "gemv").is_none());
    }

    #[test]
    fn a_launch_that_names_another_order_is_refused() {
        let ok = in_order(
            "merge",
            vec![("acc", Arg::Buf(0)), ("n_vec", Arg::U64(4))],
            SOURCE,
        );
        assert_eq!(ok.map(|a| a.len()).ok(), Some(2));
        let swapped = in_order(
            "merge",
            vec![("n_vec", Arg::U64(4)), ("acc", Arg::Buf(0))],
            SOURCE,
        );
        let e = swapped.unwrap_err().to_string();
        assert!(
            e.contains("takes (acc, n_vec)") && e.contains("passes (n_vec, acc)"),
            "{e}"
        );
        assert!(in_order("nope", vec![], SOURCE).is_err());
    }
}
