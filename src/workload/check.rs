//! The comparison of a backend's outputs with the f64 oracle. Backends never decide this.

use super::tensor::{Bytes, Elem, TensorSet};
use rayon::prelude::*;
use serde::Serialize;

/// Relative L2 error a float output may have at `math: f32`. f32 accumulation of these
/// kernels lands orders of magnitude below it; a wrong index, a lost page or an unwritten
/// element lands far above.
pub const REL_L2_TOLERANCE: f64 = 1e-4;

/// At `math: bf16` an output may be this many times as far from the exact answer as the
/// reference with the same operand rounding is (as the FlashAttention tests judge
/// low-precision kernels), plus `BF16_SLACK`.
pub const BF16_FACTOR: f64 = 2.0;
pub const BF16_SLACK: f64 = 1e-6;

/// What one output should be.
#[derive(Clone, Debug)]
pub enum Expected {
    /// A float output: the exact answer in f64 and, at `math: bf16`, the f64 answer computed
    /// with the kernel's operand rounding (the yardstick for its error).
    Float {
        exact: Vec<f64>,
        rounded: Option<Vec<f64>>,
    },
    /// u32 words that must match bit for bit (shared with an input where the answer is one,
    /// as for a copy, so a 4 GiB reference costs nothing).
    Words(Bytes),
    /// u32 words given by a formula of their index (stream write), computed as compared.
    Pattern {
        words: usize,
        seed: u32,
        word: fn(u32, u32) -> u32,
    },
}

/// One output's reference.
#[derive(Clone, Debug)]
pub struct RefOutput {
    pub name: &'static str,
    pub expected: Expected,
}

impl RefOutput {
    pub fn float(name: &'static str, exact: Vec<f64>, rounded: Option<Vec<f64>>) -> RefOutput {
        RefOutput {
            name,
            expected: Expected::Float { exact, rounded },
        }
    }

    /// The exact answer as f64 values (words as numbers).
    pub fn values(&self) -> Vec<f64> {
        match &self.expected {
            Expected::Float { exact, .. } => exact.clone(),
            Expected::Words(b) => bytemuck::pod_collect_to_vec::<u8, u32>(b)
                .into_iter()
                .map(f64::from)
                .collect(),
            Expected::Pattern { words, seed, word } => {
                (0..*words as u32).map(|i| word(i, *seed) as f64).collect()
            }
        }
    }

    /// Host bytes the reference holds beyond the point's inputs.
    pub fn held_bytes(&self) -> u64 {
        match &self.expected {
            Expected::Float { exact, rounded } => {
                8 * (exact.len() + rounded.as_ref().map_or(0, Vec::len)) as u64
            }
            Expected::Words(_) | Expected::Pattern { .. } => 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Reference(pub Vec<RefOutput>);

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    /// The worst relative L2 error of an output against the exact answer.
    pub rel_l2_err: f64,
    pub max_abs_err: f64,
    /// `math: bf16`: the worst error of the same-rounding reference against the exact answer.
    pub ref_rel_l2_err: Option<f64>,
    pub pass: bool,
    /// Why it failed, when it did (which output, NaN, mismatches, the tolerance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reference {
    /// Bytes the reference holds on the host beyond the inputs it may share.
    pub fn held_bytes(&self) -> u64 {
        self.0.iter().map(RefOutput::held_bytes).sum()
    }

    /// Compare every output with its reference; the worst error over outputs is reported.
    pub fn check(&self, outputs: &TensorSet) -> Check {
        let mut worst = Check {
            rel_l2_err: 0.0,
            max_abs_err: 0.0,
            ref_rel_l2_err: None,
            pass: true,
            reason: None,
        };
        for r in &self.0 {
            let Some(t) = outputs.get(r.name) else {
                worst.pass = false;
                worst.reason = Some(format!("output '{}' was not read back", r.name));
                continue;
            };
            let c = match &r.expected {
                Expected::Float { exact, rounded } => {
                    if t.elem == Elem::U32 || t.elem == Elem::I32 || t.len() != exact.len() {
                        mismatch(r.name, t.len(), exact.len())
                    } else {
                        let got = t.decode_f64();
                        let c = compare(&got, exact);
                        match rounded {
                            None => judge(c, REL_L2_TOLERANCE, None),
                            Some(rounded) => {
                                let ref_err = compare(rounded, exact).rel_l2_err;
                                let tol = BF16_FACTOR * ref_err + BF16_SLACK;
                                judge(c, tol, Some(ref_err))
                            }
                        }
                    }
                }
                Expected::Words(want) => {
                    if t.bytes.len() != want.len() {
                        mismatch(r.name, t.bytes.len() / 4, want.len() / 4)
                    } else {
                        compare_words(&t.bytes, |i| {
                            u32::from_le_bytes(want[4 * i..4 * i + 4].try_into().expect("4 bytes"))
                        })
                    }
                }
                Expected::Pattern { words, seed, word } => {
                    if t.bytes.len() != 4 * words {
                        mismatch(r.name, t.bytes.len() / 4, *words)
                    } else {
                        compare_words(&t.bytes, |i| word(i as u32, *seed))
                    }
                }
            };
            if c.rel_l2_err > worst.rel_l2_err || c.rel_l2_err.is_nan() {
                worst.rel_l2_err = c.rel_l2_err;
            }
            if c.max_abs_err > worst.max_abs_err || c.max_abs_err.is_nan() {
                worst.max_abs_err = c.max_abs_err;
            }
            if let Some(e) = c.ref_rel_l2_err {
                worst.ref_rel_l2_err = Some(worst.ref_rel_l2_err.map_or(e, |w| w.max(e)));
            }
            if !c.pass && worst.pass {
                worst.pass = false;
                worst.reason = c.reason.map(|why| format!("{}: {why}", r.name));
            }
        }
        worst
    }
}

fn mismatch(name: &str, got: usize, want: usize) -> Check {
    Check {
        rel_l2_err: f64::NAN,
        max_abs_err: f64::NAN,
        ref_rel_l2_err: None,
        pass: false,
        reason: Some(format!(
            "output '{name}' has {got} elements, expected {want}"
        )),
    }
}

/// Sums over a comparison, reduced in parallel.
#[derive(Clone, Copy, Default)]
struct Tally {
    diff2: f64,
    ref2: f64,
    max_abs: f64,
    nan: usize,
    first_nan: Option<usize>,
    mismatches: usize,
}

impl Tally {
    fn add(mut self, i: usize, g: f64, w: f64) -> Tally {
        if g.is_nan() {
            self.nan += 1;
            self.first_nan = Some(self.first_nan.map_or(i, |f| f.min(i)));
            return self;
        }
        let d = g - w;
        if d != 0.0 {
            self.mismatches += 1;
        }
        self.diff2 += d * d;
        self.ref2 += w * w;
        self.max_abs = self.max_abs.max(d.abs());
        self
    }

    fn merge(a: Tally, b: Tally) -> Tally {
        Tally {
            diff2: a.diff2 + b.diff2,
            ref2: a.ref2 + b.ref2,
            max_abs: a.max_abs.max(b.max_abs),
            nan: a.nan + b.nan,
            first_nan: match (a.first_nan, b.first_nan) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            mismatches: a.mismatches + b.mismatches,
        }
    }

    fn rel(&self) -> f64 {
        if self.nan > 0 {
            f64::NAN
        } else if self.ref2 > 0.0 {
            (self.diff2 / self.ref2).sqrt()
        } else {
            self.diff2.sqrt()
        }
    }

    fn check(&self) -> Check {
        Check {
            rel_l2_err: self.rel(),
            max_abs_err: if self.nan > 0 { f64::NAN } else { self.max_abs },
            ref_rel_l2_err: None,
            pass: self.nan == 0,
            reason: self
                .first_nan
                .map(|i| format!("{} NaN elements (first at {i}); unwritten?", self.nan)),
        }
    }
}

/// Errors of `got` against `want`; `pass` here only says no element is NaN.
pub fn compare(got: &[f64], want: &[f64]) -> Check {
    got.par_iter()
        .zip(want)
        .enumerate()
        .with_min_len(1 << 14)
        .fold(Tally::default, |t, (i, (&g, &w))| t.add(i, g, w))
        .reduce(Tally::default, Tally::merge)
        .check()
}

/// A float comparison held to a tolerance on its relative L2 error.
fn judge(mut c: Check, tolerance: f64, ref_err: Option<f64>) -> Check {
    c.ref_rel_l2_err = ref_err;
    // NaN passes no tolerance.
    if c.pass && (c.rel_l2_err.is_nan() || c.rel_l2_err > tolerance) {
        c.pass = false;
        c.reason = Some(match ref_err {
            None => format!("relative L2 error {:.3e} > {tolerance:e}", c.rel_l2_err),
            Some(r) => format!(
                "relative L2 error {:.3e} > {BF16_FACTOR} x the same-rounding reference's {r:.3e} + {BF16_SLACK:e}",
                c.rel_l2_err
            ),
        });
    }
    c
}

/// u32 words, bit for bit; the errors are those of the words as numbers.
fn compare_words(got: &[u8], want: impl Fn(usize) -> u32 + Sync) -> Check {
    let t = got
        .par_chunks(4)
        .enumerate()
        .with_min_len(1 << 14)
        .fold(Tally::default, |t, (i, g)| {
            let g = u32::from_le_bytes(g.try_into().expect("4 bytes"));
            t.add(i, g as f64, want(i) as f64)
        })
        .reduce(Tally::default, Tally::merge);
    let mut c = t.check();
    if t.mismatches > 0 {
        c.pass = false;
        c.reason = Some(format!("{} elements differ", t.mismatches));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Tensor;

    fn f32_out(name: &'static str, v: &[f32]) -> TensorSet {
        TensorSet(vec![Tensor::from_f32(name, vec![v.len()], v)])
    }

    #[test]
    fn nan_never_passes_and_exact_means_exact() {
        let float = |exact: &[f64]| Reference(vec![RefOutput::float("y", exact.to_vec(), None)]);
        assert!(
            !float(&[1.0, 2.0])
                .check(&f32_out("y", &[1.0, f32::NAN]))
                .pass
        );
        let c = float(&[3.0, 4.0]).check(&f32_out("y", &[3.0, 4.00001]));
        assert!(c.pass && (c.rel_l2_err - 2e-6).abs() < 1e-8, "{c:?}");
        assert!(!float(&[3.0, 4.0]).check(&f32_out("y", &[3.0, 4.01])).pass);

        let words = |w: &[u32]| {
            Reference(vec![RefOutput {
                name: "dst",
                expected: Expected::Words(bytemuck::cast_slice(w).to_vec().into()),
            }])
        };
        let out = |w: &[u32]| TensorSet(vec![Tensor::from_u32("dst", vec![w.len()], w)]);
        assert!(words(&[1, 2]).check(&out(&[1, 2])).pass);
        let c = words(&[1, 2]).check(&out(&[1, 3]));
        assert!(!c.pass && c.reason.unwrap().contains("1 elements differ"));
        assert!(!words(&[1, 2]).check(&out(&[1])).pass, "a short output");
    }

    #[test]
    fn bf16_mode_is_held_to_twice_the_same_rounding_reference() {
        // The reference with the kernel's rounding is 1e-3 off the exact answer.
        let exact = vec![1.0, 1.0];
        let rounded = vec![1.001, 1.0];
        let r = Reference(vec![RefOutput::float("y", exact, Some(rounded))]);
        let c = r.check(&f32_out("y", &[1.0015, 1.0]));
        assert!(c.pass, "1.5x the reference's error passes: {c:?}");
        assert!((c.ref_rel_l2_err.unwrap() - 1e-3 / 2f64.sqrt()).abs() < 1e-9);
        let c = r.check(&f32_out("y", &[1.003, 1.0]));
        assert!(
            !c.pass && c.reason.unwrap().contains("same-rounding"),
            "3x fails"
        );
    }
}
