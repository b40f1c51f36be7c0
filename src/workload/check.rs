//! The comparison of a backend's outputs with the f64 oracle. Backends never decide this.

use super::tensor::{Elem, TensorSet};
use serde::Serialize;

/// Relative L2 error a float output may have. f32 accumulation of these kernels lands orders
/// of magnitude below it; a wrong index, a lost page or an unwritten element lands far above.
pub const REL_L2_TOLERANCE: f64 = 1e-4;

/// One output's reference values.
#[derive(Clone, Debug)]
pub struct RefOutput {
    pub name: &'static str,
    pub values: Vec<f64>,
    /// Integer outputs (stream) must match exactly.
    pub exact: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Reference(pub Vec<RefOutput>);

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    pub rel_l2_err: f64,
    pub max_abs_err: f64,
    pub pass: bool,
    /// Why it failed, when it did (which output, NaN, mismatches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reference {
    /// Compare every output with its reference; the worst error over outputs is reported.
    pub fn check(&self, outputs: &TensorSet) -> Check {
        let mut worst = Check {
            rel_l2_err: 0.0,
            max_abs_err: 0.0,
            pass: true,
            reason: None,
        };
        for r in &self.0 {
            let Some(t) = outputs.get(r.name) else {
                worst.pass = false;
                worst.reason = Some(format!("output '{}' was not read back", r.name));
                continue;
            };
            let got = t.decode_f64();
            if got.len() != r.values.len() {
                worst.pass = false;
                worst.reason = Some(format!(
                    "output '{}' has {} elements, expected {}",
                    r.name,
                    got.len(),
                    r.values.len()
                ));
                continue;
            }
            let c = compare(&got, &r.values, r.exact || t.elem == Elem::U32);
            if c.rel_l2_err > worst.rel_l2_err || c.rel_l2_err.is_nan() {
                worst.rel_l2_err = c.rel_l2_err;
            }
            if c.max_abs_err > worst.max_abs_err || c.max_abs_err.is_nan() {
                worst.max_abs_err = c.max_abs_err;
            }
            if !c.pass && worst.pass {
                worst.pass = false;
                worst.reason = c.reason.map(|why| format!("{}: {why}", r.name));
            }
        }
        worst
    }
}

/// Compare two arrays. NaN never passes; exact arrays must match element for element.
pub fn compare(got: &[f64], want: &[f64], exact: bool) -> Check {
    let mut diff2 = 0.0f64;
    let mut ref2 = 0.0f64;
    let mut max_abs = 0.0f64;
    let mut nan = 0usize;
    let mut first_nan = None;
    let mut mismatches = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() {
            nan += 1;
            first_nan.get_or_insert(i);
            continue;
        }
        let d = g - w;
        if d != 0.0 {
            mismatches += 1;
        }
        diff2 += d * d;
        ref2 += w * w;
        max_abs = max_abs.max(d.abs());
    }
    let rel = if nan > 0 {
        f64::NAN
    } else if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    let (pass, reason) = if let Some(i) = first_nan {
        (
            false,
            Some(format!("{nan} NaN elements (first at {i}); unwritten?")),
        )
    } else if exact && mismatches > 0 {
        (false, Some(format!("{mismatches} elements differ")))
    } else if rel > REL_L2_TOLERANCE {
        (
            false,
            Some(format!(
                "relative L2 error {rel:.3e} > {REL_L2_TOLERANCE:e}"
            )),
        )
    } else {
        (true, None)
    };
    Check {
        rel_l2_err: rel,
        max_abs_err: if nan > 0 { f64::NAN } else { max_abs },
        pass,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_never_passes_and_exact_means_exact() {
        assert!(!compare(&[1.0, f64::NAN], &[1.0, 2.0], false).pass);
        assert!(!compare(&[1.0, 2.0], &[1.0, 3.0], true).pass);
        assert!(compare(&[1.0, 2.0], &[1.0, 2.0], true).pass);
        let c = compare(&[3.0, 4.00001], &[3.0, 4.0], false);
        assert!(c.pass && (c.rel_l2_err - 2e-6).abs() < 1e-9);
        assert!(!compare(&[3.0, 4.01], &[3.0, 4.0], false).pass);
    }
}
