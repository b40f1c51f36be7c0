//! The tensor-core self-check. The `mma` kernels rely on the fragment layout kernels/mma.cuh
//! writes down from the PTX ISA (the layout the host shim models). Before `mma` runs on a
//! device, kernels/mma_check.cu multiplies known tiles there through that layout (bf16 by
//! hand, bf16 through ldmatrix .trans, f16 by hand) and the products are compared with f64
//! ones. A device where they disagree does not run `mma`: `impl: best` takes the next
//! implementation and says why.

use super::compile;
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// D's length: seven 16 x 8 products (mma_check.cu).
pub const D_LEN: usize = 7 * 128;

/// A (16 x 16) and B (16 x 8), row-major, as bf16 and as f16 bits of the same values, and
/// their product in f64 (16 x 8).
pub struct Operands {
    pub a: Vec<u16>,
    pub b: Vec<u16>,
    pub a16: Vec<u16>,
    pub b16: Vec<u16>,
    pub product: Vec<f64>,
}

/// Small multiples of 1/8 (exact in bf16 and f16), so every product is exact in f32 and a
/// wrong fragment moves D by far more than rounding.
pub fn operands() -> Operands {
    let value = |i: usize, salt: usize| ((i * 37 + salt * 11) % 29) as f32 / 8.0 - 1.5;
    let a: Vec<f32> = (0..256).map(|i| value(i, 1)).collect();
    let b: Vec<f32> = (0..128).map(|i| value(i, 2)).collect();
    let bf16 = |v: &[f32]| {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let f16 = |v: &[f32]| {
        v.iter()
            .map(|&x| half::f16::from_f32(x).to_bits())
            .collect()
    };
    let product = (0..16)
        .flat_map(|r| (0..8).map(move |c| (r, c)))
        .map(|(r, c)| {
            (0..16)
                .map(|k| a[r * 16 + k] as f64 * b[k * 8 + c] as f64)
                .sum()
        })
        .collect();
    Operands {
        a: bf16(&a),
        b: bf16(&b),
        a16: f16(&a),
        b16: f16(&b),
        product,
    }
}

/// Whether `d` (mma_check's output) holds the product six times and, last, the product with
/// its columns reversed (B's reversed columns through ldmatrix .x4 .trans matrices 2-3),
/// within f32 rounding of 16 exact products; the first wrong entry otherwise.
pub fn check(d: &[f32], product: &[f64]) -> Result<(), String> {
    if d.len() != D_LEN {
        return Err(format!("{} values, expected {D_LEN}", d.len()));
    }
    const WHAT: [&str; 7] = [
        "bf16",
        "bf16 via ldmatrix.trans",
        "f16",
        "bf16 with A via ldmatrix",
        "bf16 with B via ldmatrix",
        "bf16 via ldmatrix.trans of a 16x16 B, matrices 0-1",
        "bf16 via ldmatrix.trans of a 16x16 B, matrices 2-3",
    ];
    let reversed: Vec<f64> = (0..128).map(|i| product[i / 8 * 8 + 7 - i % 8]).collect();
    let want = product.iter().cycle().take(6 * 128).chain(&reversed);
    for (i, (&got, &want)) in d.iter().zip(want).enumerate() {
        if (got as f64 - want).abs() > 1e-5 * want.abs().max(1.0) {
            return Err(format!(
                "{} mma: D[{}][{}] = {got}, expected {want}",
                WHAT[i / 128],
                i % 128 / 8,
                i % 8
            ));
        }
    }
    Ok(())
}

/// A driver error as the message of a step: `what: error`.
pub(super) fn err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e:?}")
}

/// Compile mma_check for `arch`, run it on `ctx`'s device and check what it wrote.
pub fn run_on(ctx: &Arc<CudaContext>, arch: &str) -> Result<(), String> {
    let c = compile::compile(&compile::mma_check_source(), "mma_check", arch)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(c.cubin))
        .map_err(err("loading mma_check"))?;
    let f = module
        .load_function("mma_check")
        .map_err(err("mma_check"))?;
    let stream = ctx.default_stream();
    let o = operands();
    let up = |v: &[u16]| stream.clone_htod(v).map_err(err("upload"));
    let (a, b, a16, b16) = (up(&o.a)?, up(&o.b)?, up(&o.a16)?, up(&o.b16)?);
    let mut d = stream
        .alloc_zeros::<f32>(D_LEN)
        .map_err(err("allocating D"))?;
    let mut launch = stream.launch_builder(&f);
    launch.arg(&a).arg(&b).arg(&a16).arg(&b16).arg(&mut d);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match mma_check's signature; D holds D_LEN floats.
    unsafe { launch.launch(cfg) }.map_err(err("launching mma_check"))?;
    let got = stream.clone_dtoh(&d).map_err(err("reading D"))?;
    check(&got, &o.product)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_takes_the_product_and_names_a_wrong_fragment() {
        let o = operands();
        let reversed = (0..128).map(|i| o.product[i / 8 * 8 + 7 - i % 8]);
        let good: Vec<f32> = o
            .product
            .iter()
            .copied()
            .cycle()
            .take(6 * 128)
            .chain(reversed)
            .map(|x| x as f32)
            .collect();
        assert_eq!(check(&good, &o.product), Ok(()));
        // Matrices 2 and 3 of the .x4 .trans handing back matrices 0 and 1 (the blind spot
        // this check closes): the last block holds the product, not its reverse.
        let mut blind = good.clone();
        blind[768..].copy_from_slice(&good[640..768]);
        let e = check(&blind, &o.product).unwrap_err();
        assert!(
            e.starts_with("bf16 via ldmatrix.trans of a 16x16 B, matrices 2-3"),
            "{e}"
        );
        // Two columns of the f16 product swapped, as a wrong B fragment would.
        let mut bad = good.clone();
        bad.swap(256 + 3 * 8, 256 + 3 * 8 + 1);
        let e = check(&bad, &o.product).unwrap_err();
        assert!(e.starts_with("f16 mma: D[3][0]"), "{e}");
        assert!(check(&good[..128], &o.product).is_err());
        // The operands are exact in both 16-bit types.
        for (x, y) in o.a.iter().zip(&o.a16) {
            let (x, y) = (half::bf16::from_bits(*x), half::f16::from_bits(*y));
            assert_eq!(x.to_f32(), y.to_f32());
        }
    }
}
