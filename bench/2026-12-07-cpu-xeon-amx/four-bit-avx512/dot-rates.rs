// Throughput of the instructions a 4-bit decode can use, one core: 12 independent chains
// of each, 10M iterations. Build and run: rustc -O --edition 2021 dot-rates.rs && ./dot-rates
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn dpbf16(n: usize, w: __m512i) -> f32 {
    let b: __m512bh = std::mem::transmute(w);
    let mut a = [_mm512_setzero_ps(); 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_dpbf16_ps(a[j], b, b); } }
    let mut s = _mm512_setzero_ps(); for j in 0..12 { s = _mm512_add_ps(s, a[j]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fma(n: usize, w: __m512) -> f32 {
    let mut a = [_mm512_setzero_ps(); 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_fmadd_ps(a[j], w, w); } }
    let mut s = _mm512_setzero_ps(); for j in 0..12 { s = _mm512_add_ps(s, a[j]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vpermw(n: usize, w: __m512i, t: __m512i) -> i32 {
    let mut a = [w; 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_permutexvar_epi16(a[j], t); } }
    let mut s = _mm512_setzero_si512(); for j in 0..12 { s = _mm512_add_epi32(s, a[j]); }
    _mm512_reduce_add_epi32(s)
}
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vpermw_maskz(n: usize, w: __m512i, t: __m512i) -> i32 {
    let mut a = [w; 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_maskz_permutexvar_epi16(0xAAAA_AAAA, a[j], t); } }
    let mut s = _mm512_setzero_si512(); for j in 0..12 { s = _mm512_add_epi32(s, a[j]); }
    _mm512_reduce_add_epi32(s)
}
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vpermps(n: usize, w: __m512i, t: __m512) -> f32 {
    let mut a = [t; 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_permutexvar_ps(w, a[j]); } }
    let mut s = _mm512_setzero_ps(); for j in 0..12 { s = _mm512_add_ps(s, a[j]); }
    _mm512_reduce_add_ps(s)
}
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn vpslld(n: usize, w: __m512i) -> i32 {
    let mut a = [w; 12];
    for _ in 0..n { for j in 0..12 { a[j] = _mm512_slli_epi32::<1>(a[j]); } }
    let mut s = _mm512_setzero_si512(); for j in 0..12 { s = _mm512_add_epi32(s, a[j]); }
    _mm512_reduce_add_epi32(s)
}

fn main() {
    let n = 10_000_000;
    let per = |t0: Instant| t0.elapsed().as_secs_f64() * 1e9 / (12.0 * n as f64);
    unsafe {
        if is_x86_feature_detected!("avx512bf16") {
            let t0 = Instant::now();
            let r = dpbf16(n, _mm512_set1_epi16(0x3f80));
            println!("vdpbf16ps     {:.3} ns/instr ({r})", per(t0));
        }
        let t0 = Instant::now();
        let r = fma(n, _mm512_set1_ps(0.5));
        println!("vfmadd231ps   {:.3} ns/instr ({r})", per(t0));
        let t0 = Instant::now();
        let r = vpermw(n, _mm512_set1_epi16(3), _mm512_set1_epi16(3));
        println!("vpermw        {:.3} ns/instr ({r})", per(t0));
        let t0 = Instant::now();
        let r = vpermw_maskz(n, _mm512_set1_epi16(3), _mm512_set1_epi16(3));
        println!("vpermw {{z}}    {:.3} ns/instr ({r})", per(t0));
        let t0 = Instant::now();
        let r = vpermps(n, _mm512_set1_epi32(3), _mm512_set1_ps(1.0));
        println!("vpermps       {:.3} ns/instr ({r})", per(t0));
        let t0 = Instant::now();
        let r = vpslld(n, _mm512_set1_epi16(3));
        println!("vpslld        {:.3} ns/instr ({r})", per(t0));
    }
}
