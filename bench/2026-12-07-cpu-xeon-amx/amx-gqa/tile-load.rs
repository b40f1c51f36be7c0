use std::arch::asm;
use std::time::Instant;
fn cfg(rows: u8) {
    #[repr(C, align(64))]
    struct C([u8; 64]);
    let mut c = C([0; 64]);
    c.0[0] = 1;
    for t in 0..8 {
        c.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
        c.0[48 + t] = rows;
    }
    unsafe { asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr()) };
}
extern "C" { fn syscall(n: i64, ...) -> i64; }
fn main() {
    unsafe { syscall(158, 0x1023i64, 18i64) };
    let buf = vec![0x3F80u16; 1 << 20]; // 2 MiB
    let steps = 1_000_000u64;
    for rows in [16u8, 8] {
        cfg(rows);
        let t = Instant::now();
        for _ in 0..steps {
            unsafe { asm!("tileloadd tmm0, [{p} + {s}*1]","tileloadd tmm1, [{p} + {s}*1]","tileloadd tmm2, [{p} + {s}*1]","tileloadd tmm3, [{p} + {s}*1]","tileloadd tmm4, [{p} + {s}*1]", "tileloadd tmm5, [{p} + {s}*1]", "tileloadd tmm6, [{p} + {s}*1]","tileloadd tmm7, [{p} + {s}*1]", p = in(reg) buf.as_ptr(), s = in(reg) 64usize) };
        }
        println!("rows {rows}: 8 regs loads, L1: {:.3} ns", t.elapsed().as_nanos() as f64 / (steps * 8) as f64);
    }
    cfg(16);
    // stride 2048 over 1 MiB (L2), 16 rows: 32 KiB per tile... walk through
    for stride in [64usize, 256, 2048] {
        let t = Instant::now();
        let n = (buf.len() * 2) / (16 * stride);
        let mut k = 0;
        for i in 0..steps {
            let off = ((i as usize) % n) * 16 * stride;
            let p = unsafe { (buf.as_ptr() as *const u8).add(off) };
            unsafe { asm!("tileloadd tmm0, [{p} + {s}*1]", p = in(reg) p, s = in(reg) stride) };
            k += 1;
        }
        println!("stride {stride}: {:.3} ns per load ({} distinct tiles)", t.elapsed().as_nanos() as f64 / k as f64, n);
    }
    // vector loads 1 KB for comparison
    let t = Instant::now();
    let mut acc = 0u64;
    for _ in 0..steps {
        unsafe { asm!("vmovdqu64 zmm0, [{p}]","vmovdqu64 zmm1, [{p}+64]","vmovdqu64 zmm2, [{p}+128]","vmovdqu64 zmm3, [{p}+192]","vmovdqu64 zmm4, [{p}+256]","vmovdqu64 zmm5, [{p}+320]","vmovdqu64 zmm6, [{p}+384]","vmovdqu64 zmm7, [{p}+448]","vmovdqu64 zmm0, [{p}+512]","vmovdqu64 zmm1, [{p}+576]","vmovdqu64 zmm2, [{p}+640]","vmovdqu64 zmm3, [{p}+704]","vmovdqu64 zmm4, [{p}+768]","vmovdqu64 zmm5, [{p}+832]","vmovdqu64 zmm6, [{p}+896]","vmovdqu64 zmm7, [{p}+960]", p = in(reg) buf.as_ptr(), out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _) };
        acc += 1;
    }
    println!("16 zmm loads (1 KiB): {:.3} ns ({acc})", t.elapsed().as_nanos() as f64 / steps as f64);
    unsafe { asm!("tilerelease") };
}
