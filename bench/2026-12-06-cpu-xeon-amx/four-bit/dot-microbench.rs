use std::arch::x86_64::*;
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dp(n: usize) -> f32 {
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
    let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
    let mut acc = [_mm512_setzero_ps(); 8];
    for _ in 0..n {
        for k in 0..8 { acc[k] = _mm512_dpbf16_ps(acc[k], a, b); }
    }
    let mut s = _mm512_setzero_ps();
    for k in 0..8 { s = _mm512_add_ps(s, acc[k]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,fma")]
unsafe fn fm(n: usize) -> f32 {
    let a = _mm512_set1_ps(1.0);
    let mut acc = [_mm512_setzero_ps(); 8];
    for _ in 0..n {
        for k in 0..8 { acc[k] = _mm512_fmadd_ps(acc[k], a, a); }
    }
    let mut s = _mm512_setzero_ps();
    for k in 0..8 { s = _mm512_add_ps(s, acc[k]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pw(n: usize) -> i32 {
    let t = _mm512_set1_epi16(3);
    let mut acc = [_mm512_set1_epi16(1); 8];
    for _ in 0..n {
        for k in 0..8 { acc[k] = _mm512_permutexvar_epi16(acc[k], t); }
    }
    let mut s = _mm512_setzero_si512();
    for k in 0..8 { s = _mm512_add_epi16(s, acc[k]); }
    _mm512_reduce_add_epi32(s)
}
fn main() {
    let n = 50_000_000;
    unsafe {
        let t = std::time::Instant::now(); let r = dp(n); let e = t.elapsed().as_secs_f64();
        println!("dpbf16ps: {:.3} ns per instr ({r})", e * 1e9 / (8 * n) as f64);
        let t = std::time::Instant::now(); let r = fm(n); let e = t.elapsed().as_secs_f64();
        println!("fma:      {:.3} ns per instr ({r})", e * 1e9 / (8 * n) as f64);
        let t = std::time::Instant::now(); let r = pw(n); let e = t.elapsed().as_secs_f64();
        println!("vpermw (8 chains, latency-ish): {:.3} ns per instr ({r})", e * 1e9 / (8 * n) as f64);
    }
}
