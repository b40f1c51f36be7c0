use std::arch::asm;
use std::time::Instant;
fn cfg(m: u8, nb: u16) {
    #[repr(C, align(64))]
    struct C([u8; 64]);
    let mut c = C([0; 64]);
    c.0[0] = 1;
    for t in 0..8 {
        // A tiles 4,7 : m rows x 64 bytes; C tiles 0-3: m rows x nb bytes; B tiles 5,6: 16 rows x nb
        let (rows, colsb) = match t { 0..=3 => (m, nb), 4 | 7 => (m, 64), _ => (16, nb) };
        c.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
        c.0[48 + t] = rows;
    }
    unsafe { asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr()) };
}
fn main() {
    const XCOMP: i64 = 0x1023;
    unsafe { libc_syscall(158, XCOMP, 18) };
    let ones = vec![0x3F80u16; 16 * 32 * 4];
    for (m, nb) in [(16u8, 64u16), (8, 64), (16, 32), (8, 32), (4, 64)] {
        cfg(m, nb);
        let steps = 2_000_000u64;
        unsafe {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3");
            asm!("tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1]", "tileloadd tmm7, [{p} + {s}*1]", p = in(reg) ones.as_ptr(), s = in(reg) 64usize);
        }
        let t = Instant::now();
        for _ in 0..steps {
            unsafe { asm!("tdpbf16ps tmm0, tmm4, tmm5", "tdpbf16ps tmm1, tmm4, tmm6", "tdpbf16ps tmm2, tmm7, tmm5", "tdpbf16ps tmm3, tmm7, tmm6") };
        }
        let ns = t.elapsed().as_nanos() as f64 / (steps * 4) as f64;
        println!("M={m} colsb={nb}: {ns:.3} ns per tdpbf16ps");
    }
    // tile loads from L1: 16 rows x 64 B
    cfg(16, 64);
    let steps = 2_000_000u64;
    let t = Instant::now();
    for _ in 0..steps {
        unsafe { asm!("tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1]","tileloadd tmm7, [{p} + {s}*1]", p = in(reg) ones.as_ptr(), s = in(reg) 64usize) };
    }
    println!("tileloadd 16x64 (L1): {:.3} ns", t.elapsed().as_nanos() as f64 / (steps * 4) as f64);
    let t = Instant::now();
    for _ in 0..steps {
        unsafe { asm!("tileloadd tmm4, [{p} + {s}*1]", "tdpbf16ps tmm0, tmm4, tmm5", "tileloadd tmm7, [{p} + {s}*1]", "tdpbf16ps tmm1, tmm7, tmm6", p = in(reg) ones.as_ptr(), s = in(reg) 64usize) };
    }
    println!("load+dp pairs: {:.3} ns per pair", t.elapsed().as_nanos() as f64 / (steps * 2) as f64);
    // chained dp on one C
    let t = Instant::now();
    for _ in 0..steps {
        unsafe { asm!("tdpbf16ps tmm0, tmm4, tmm5", "tdpbf16ps tmm0, tmm7, tmm6") };
    }
    println!("dependent dp chain: {:.3} ns per dp", t.elapsed().as_nanos() as f64 / (steps * 2) as f64);
    let t = Instant::now();
    for _ in 0..steps {
        unsafe { asm!("tdpbf16ps tmm0, tmm4, tmm5", "tdpbf16ps tmm1, tmm7, tmm6") };
    }
    println!("two chains: {:.3} ns per dp", t.elapsed().as_nanos() as f64 / (steps * 2) as f64);
    let mut out = vec![0f32; 256];
    let t = Instant::now();
    for _ in 0..steps {
        unsafe { asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) out.as_mut_ptr(), s = in(reg) 64usize) };
    }
    println!("tilestored: {:.3} ns", t.elapsed().as_nanos() as f64 / (steps) as f64);
    unsafe { asm!("tilerelease") };
}
extern "C" { fn syscall(n: i64, ...) -> i64; }
unsafe fn libc_syscall(n: i64, a: i64, b: i64) -> i64 { syscall(n, a, b) }
