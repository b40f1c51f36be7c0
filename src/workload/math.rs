//! The precision mode of a point: which operands enter the multiplies rounded, and so how the
//! oracle judges the outputs.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Math {
    /// Every operand as stored or given (f32), f32 accumulation: the output is within
    /// relative L2 1e-4 of the f64 oracle. Tensor cores are allowed with split operands
    /// (x = hi + lo), which keep that accuracy.
    #[default]
    F32,
    /// The rounding production decode kernels use: q and P (kv_decode), x (expert_gemv)
    /// enter the multiply as bf16; stored K, V and weights as they are; f32 accumulation.
    /// q is rounded as given, before the softmax scale; P = exp(s - max) in (0, 1] is rounded,
    /// its row sum is not. Judged against an f64 reference with the same rounding.
    Bf16,
}

impl Math {
    pub fn name(self) -> &'static str {
        match self {
            Math::F32 => "f32",
            Math::Bf16 => "bf16",
        }
    }

    /// An activation operand (q, P, x) as it enters a multiply in this mode.
    #[inline(always)]
    pub fn operand(self, x: f32) -> f32 {
        match self {
            Math::F32 => x,
            Math::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// `operand` for the f64 reference (rounding the f64 through f32 first, as a kernel
    /// holding the value in f32 would).
    #[inline(always)]
    pub fn operand_f64(self, x: f64) -> f64 {
        match self {
            Math::F32 => x,
            Math::Bf16 => half::bf16::from_f32(x as f32).to_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_operands_keep_eight_significant_bits() {
        assert_eq!(Math::F32.operand(1.0 + 1e-3), 1.0 + 1e-3);
        // 1 + 2^-7 is a bf16; 1 + 2^-9 is not and rounds to 1.
        assert_eq!(Math::Bf16.operand(1.0 + 1.0 / 128.0), 1.0 + 1.0 / 128.0);
        assert_eq!(Math::Bf16.operand(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(Math::Bf16.operand_f64(0.1), 0.10009765625);
    }
}
