//! The cpu compute ceiling: independent FMA chains held in registers on every thread, the
//! unit the vector kernels compute with. Each chain's end value is known in closed form
//! (a start plus n steps of +b, exact in f32 below 2^24), so the result is checked and the
//! chains cannot be optimised away (a and b arrive through `black_box`).

use super::simd::Simd;

/// Chains per thread: enough to cover FMA latency x ports (4 x 2 on current x86).
pub(super) const CHAINS: usize = 12;

/// Run `n` steps of x = x * a + b on `CHAINS` vector chains starting at 0..CHAINS, and
/// return the sum of every lane of every chain.
///
/// # Safety
/// The CPU must have `S`'s features.
#[inline(always)]
pub(super) unsafe fn chains<S: Simd>(n: usize, a: f32, b: f32) -> f64 {
    // SAFETY: the caller's contract.
    unsafe {
        let mut x = [S::splat(0.0); CHAINS];
        for (i, x) in x.iter_mut().enumerate() {
            *x = S::splat(i as f32);
        }
        let (va, vb) = (S::splat(a), S::splat(b));
        for _ in 0..n {
            for x in x.iter_mut() {
                *x = S::fma(*x, va, vb);
            }
        }
        x.iter().map(|&v| S::hsum(v) as f64).sum()
    }
}

/// What `chains` returns with a = 1, b = 1: each lane of chain i ends at i + n.
pub(super) fn expected(n: usize, lanes: usize) -> f64 {
    (0..CHAINS).map(|i| (lanes * (i + n)) as f64).sum()
}

/// FLOPs of one `chains` call: a multiply and an add per lane per step.
pub(super) fn flops(n: usize, lanes: usize) -> f64 {
    2.0 * (CHAINS * lanes * n) as f64
}
