//! The cpu backend's vector paths, chosen at run time: one binary runs on any x86-64 (and
//! aarch64, where the portable path compiles to NEON). A kernel body is written once, generic
//! over `Simd`, and instantiated per path inside a `#[target_feature]` entry, so the
//! intrinsics inline into it.

use crate::workload::DType;

/// A vector path of the cpu backend, named as the implementation that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 with AMX-BF16 tiles and AVX512-BF16 (kv_decode of bf16 caches and 4-bit
    /// experts; the rest as `avx512`).
    Amx,
    /// AVX-512F + BW (16 f32 lanes), F16C conversions.
    Avx512,
    /// AVX2 + FMA + F16C (8 f32 lanes).
    Avx2,
    /// Plain Rust on 8-wide arrays, vectorised by the compiler for the target's baseline
    /// (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

/// The variable that caps the path `impl: best` picks, so a machine with AVX-512 can run
/// (and test) the AVX2 and portable paths too.
pub const ISA_ENV: &str = "DECODELAB_CPU_ISA";

impl Isa {
    /// Fastest first: the order `impl: best` tries them in.
    pub const ALL: [Isa; 4] = [Isa::Amx, Isa::Avx512, Isa::Avx2, Isa::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU runs the path, or why not.
    pub fn on_this_cpu(self) -> Result<(), String> {
        let missing: Vec<&str> = self
            .features()
            .iter()
            .copied()
            .filter(|f| !has_feature(f))
            .collect();
        if !missing.is_empty() {
            return Err(format!("this CPU lacks {}", missing.join(", ")));
        }
        if self == Isa::Amx {
            super::amx::permitted()?;
        }
        Ok(())
    }

    /// Whether `impl: best` may pick this path: on this CPU, and not above `DECODELAB_CPU_ISA`.
    pub fn allowed(self) -> Result<(), String> {
        self.on_this_cpu()?;
        match std::env::var(ISA_ENV).ok().filter(|v| !v.is_empty()) {
            None => Ok(()),
            Some(cap) => match Isa::from_name(&cap) {
                None => Err(format!(
                    "{ISA_ENV}={cap} names no path (amx, avx512, avx2, portable)"
                )),
                Some(c) if (self as u8) < (c as u8) => Err(format!("{ISA_ENV}={cap} caps it")),
                Some(_) => Ok(()),
            },
        }
    }

    fn features(self) -> &'static [&'static str] {
        match self {
            Isa::Amx => &["avx512f", "avx512bw", "avx512bf16", "f16c", "fma"],
            Isa::Avx512 => &["avx512f", "avx512bw", "f16c", "fma"],
            Isa::Avx2 => &["avx2", "fma", "f16c"],
            Isa::Portable => &[],
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn has_feature(f: &str) -> bool {
    match f {
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn has_feature(_: &str) -> bool {
    false
}

/// The dtypes the vector paths decode in registers (the rest run in `simple`).
pub fn decodes(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::F16 | DType::Bf16 | DType::Fp8E4m3)
}

/// One vector instruction set: f32 lanes, the few operations the kernels use, and the
/// stored dtypes decoded to f32 in registers. Every function is `unsafe` because the
/// intrinsics need the path's CPU features: callers run only inside a `#[target_feature]`
/// entry that `Isa::on_this_cpu` allowed, and pass pointers valid for `LANES` values.
pub(crate) trait Simd: Copy {
    type V: Copy;
    const LANES: usize;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// a * b + c, fused.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Round to the nearest integer (ties to even).
    unsafe fn round(a: Self::V) -> Self::V;
    /// 2^n for integer-valued n in [-126, 127].
    unsafe fn pow2(n: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    unsafe fn hmax(v: Self::V) -> f32;
    /// One vector whose lane i is the sum of the lanes of `acc[i]`, for i < LANES: a tree
    /// of shuffles and adds (about 3 instructions a sum on AVX-512, where `hsum` takes 8).
    unsafe fn transpose_sum(acc: &[Self::V; 16]) -> Self::V;
    /// `LANES` stored values of `dt` (f32, f16, bf16 or fp8_e4m3) at `p`, as f32.
    unsafe fn decode(dt: DType, p: *const u8) -> Self::V;

    /// `decode` divided by `lazy_scale(dt)` (a power of two), for a caller that multiplies
    /// its dot by it once: fp8 through f16 then skips a multiply a vector.
    #[inline(always)]
    unsafe fn decode_lazy(dt: DType, p: *const u8) -> Self::V {
        unsafe { Self::decode(dt, p) }
    }

    /// What `decode_lazy`'s values are to be multiplied by.
    #[inline(always)]
    fn lazy_scale(_dt: DType) -> f32 {
        1.0
    }

    /// `nibbles32` for int4 codes (two's complement, -8..7).
    #[inline(always)]
    unsafe fn int4_32(p: *const u8, out: &mut [Self::V; 4]) {
        let table: [f32; 16] =
            std::array::from_fn(|c| crate::workload::fourbit::int4_decode(c as u8));
        unsafe { Self::nibbles32(p, &table, out) }
    }

    /// 32 bf16 values at `p` as f32, written as the values at even positions, then those at
    /// odd (as `nibbles32`; x is laid out to match), `32 / LANES` vectors into `out`.
    #[inline(always)]
    unsafe fn bf16_32(p: *const u8, out: &mut [Self::V; 4]) {
        let mut buf = Line32([0.0; 32]);
        for i in 0..16 {
            // SAFETY: the caller passes 64 readable bytes.
            let (a, b) = unsafe { (p.add(4 * i).cast::<u16>(), p.add(4 * i + 2).cast::<u16>()) };
            // SAFETY: as above (unaligned reads).
            let (a, b) = unsafe { (a.read_unaligned(), b.read_unaligned()) };
            buf.0[i] = f32::from_bits(u32::from(a) << 16);
            buf.0[16 + i] = f32::from_bits(u32::from(b) << 16);
        }
        for (v, o) in out.iter_mut().take(32 / Self::LANES).enumerate() {
            // SAFETY: inside `buf`.
            *o = unsafe { Self::load(buf.0.as_ptr().add(v * Self::LANES)) };
        }
    }

    /// The 32 values that 16 bytes of 4-bit codes at `p` stand for (two a byte, low nibble
    /// first): each code's entry in `table` (the dtype's code values, unscaled). Written as
    /// the values at even positions, then those at odd (x is laid out to match), `32 / LANES`
    /// vectors into `out`.
    #[inline(always)]
    unsafe fn nibbles32(p: *const u8, table: &[f32; 16], out: &mut [Self::V; 4]) {
        let mut buf = Line32([0.0; 32]);
        for i in 0..16 {
            // SAFETY: the caller passes 16 readable bytes.
            let b = unsafe { *p.add(i) } as usize;
            buf.0[i] = table[b & 15];
            buf.0[16 + i] = table[b >> 4];
        }
        for (v, o) in out.iter_mut().take(32 / Self::LANES).enumerate() {
            // SAFETY: inside `buf`.
            *o = unsafe { Self::load(buf.0.as_ptr().add(v * Self::LANES)) };
        }
    }

    /// e^x, within 2 ulp for x in [-87, 88] (below: a tiny positive value or 0; softmax's
    /// arguments are <= 0). Cody-Waite reduction, a degree-6 polynomial, 2^n by its bits.
    #[inline(always)]
    unsafe fn exp(x: Self::V) -> Self::V {
        unsafe {
            let x = Self::max(x, Self::splat(-87.0));
            let n = Self::round(Self::mul(x, Self::splat(std::f32::consts::LOG2_E)));
            let r = Self::fma(n, Self::splat(-0.693_145_75), x);
            let r = Self::fma(n, Self::splat(-1.428_606_8e-6), r);
            let mut p = Self::splat(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = Self::fma(p, r, Self::splat(c));
            }
            Self::mul(p, Self::pow2(n))
        }
    }
}

/// Asks for the cache line holding `p` into L2 (`prefetcht1`; nothing off x86-64). A hint:
/// it reads nothing and cannot fault, so `p` may be past any buffer.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `prefetch_l2` for every line of bytes[at..at + len].
#[inline(always)]
pub(crate) fn prefetch_span(bytes: &[u8], at: usize, len: usize) {
    for line in (0..len).step_by(64) {
        prefetch_l2(bytes.as_ptr().wrapping_add(at + line));
    }
}

/// Decode `out.len()` values of `dt` from `bytes` starting at element `start`: whole vectors
/// in registers, the tail by the dtype's own decoder.
///
/// # Safety
/// The CPU must have `S`'s features; `dt` must be one `decodes` accepts.
#[inline(always)]
pub(crate) unsafe fn decode_row<S: Simd>(dt: DType, bytes: &[u8], start: usize, out: &mut [f32]) {
    let size = dt.size();
    let n = out.len();
    assert!((start + n) * size <= bytes.len(), "row out of its tensor");
    let whole = n - n % S::LANES;
    let base = bytes.as_ptr();
    for i in (0..whole).step_by(S::LANES) {
        // SAFETY: elements start + i .. + LANES are inside `bytes` (asserted above), and `out`
        // has room for them.
        unsafe {
            let v = S::decode(dt, base.add((start + i) * size));
            S::store(out.as_mut_ptr().add(i), v);
        }
    }
    if whole < n {
        dt.decode_slice(bytes, start + whole, &mut out[whole..]);
    }
}

/// A cache line of f32s: buffers of these start on a line, so no vector load splits one.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Line([f32; 16]);

/// 32 f32 on a cache line boundary: one 4-bit chunk decoded.
#[repr(C, align(64))]
struct Line32([f32; 32]);

/// A zeroed buffer of at least `n` f32s that starts on a cache line (a plain Vec<f32> starts
/// where malloc says, and a 64-byte load across two lines costs two).
pub(crate) struct Aligned(Vec<Line>);

impl Aligned {
    pub fn zeroed(n: usize) -> Self {
        Aligned(vec![Line([0.0; 16]); n.div_ceil(16)])
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        bytemuck::cast_slice(&self.0)
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

/// fp8 e4m3 codes as the f16 with the same bits in place (exponent bias 15, not 7): the
/// value over 2^8, exact for normals and subnormals alike (NaN codes read as 480).
const FP8_AS_F16_SCALE: f32 = 256.0;

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512, fp8_e4m3_top_bytes};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{DType, FP8_AS_F16_SCALE, Simd};
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    /// [x0+x1, x2+x3, y0+y1, y2+y3] over 128-bit blocks (a function, not a closure, so it
    /// inlines into the target-feature entry).
    #[inline(always)]
    unsafe fn fold_blocks(x: __m512, y: __m512) -> __m512 {
        const EVEN: i32 = 0b10_00_10_00;
        const ODD: i32 = 0b11_01_11_01;
        unsafe {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<EVEN>(x, y),
                _mm512_shuffle_f32x4::<ODD>(x, y),
            )
        }
    }

    /// 16 fp8_e4m3 codes as f32: byte m to the top byte of dword m (one in-lane shuffle of
    /// the 16 bytes in every 128-bit lane), an arithmetic shift putting the sign on bit 31
    /// and exponent and mantissa on f32's bits 20..26 (the value times 2^-120, subnormals
    /// too), the sign's copies masked off, and one exact multiply: 4 uops, where the f16
    /// route (widen, shift, mask, `vcvtph2ps`) takes 5.
    #[inline(always)]
    unsafe fn fp8_e4m3_16(codes: __m128i) -> __m512 {
        const TOP_BYTES: [u8; 64] = {
            let mut t = [0x80u8; 64];
            let mut m = 0;
            while m < 16 {
                t[4 * m + 3] = m as u8;
                m += 1;
            }
            t
        };
        unsafe {
            let idx = _mm512_loadu_si512(TOP_BYTES.as_ptr() as *const _);
            fp8_e4m3_top_bytes(_mm512_shuffle_epi8(_mm512_broadcast_i32x4(codes), idx))
        }
    }

    /// The f32 of the fp8_e4m3 code in each dword's top byte (the other bytes 0).
    #[inline(always)]
    pub(crate) unsafe fn fp8_e4m3_top_bytes(v: __m512i) -> __m512 {
        unsafe {
            let bits = _mm512_and_si512(
                _mm512_srai_epi32::<4>(v),
                _mm512_set1_epi32(0x87F0_0000u32 as i32),
            );
            _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(2f32.powi(120)))
        }
    }

    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        unsafe fn pow2(n: __m512) -> __m512 {
            unsafe {
                let i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i))
            }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        unsafe fn hmax(v: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(v) }
        }
        #[inline(always)]
        unsafe fn transpose_sum(a: &[__m512; 16]) -> __m512 {
            unsafe {
                // Pairs: per 128-bit block [a0+a2, b0+b2, a1+a3, b1+b3].
                let mut s = [_mm512_setzero_ps(); 8];
                for (i, s) in s.iter_mut().enumerate() {
                    let (x, y) = (a[2 * i], a[2 * i + 1]);
                    *s = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
                }
                // Fours: per 128-bit block the block sums of four vectors, in order.
                let mut t = [_mm512_setzero_ps(); 4];
                for (i, t) in t.iter_mut().enumerate() {
                    let (x, y) = (_mm512_castps_pd(s[2 * i]), _mm512_castps_pd(s[2 * i + 1]));
                    *t = _mm512_add_ps(
                        _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                        _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
                    );
                }
                // The four 128-bit blocks summed: first pairs of blocks, then the halves.
                let w0 = fold_blocks(t[0], t[1]);
                let w1 = fold_blocks(t[2], t[3]);
                fold_blocks(w0, w1)
            }
        }
        #[inline(always)]
        unsafe fn decode(dt: DType, p: *const u8) -> __m512 {
            unsafe {
                match dt {
                    DType::F32 => _mm512_loadu_ps(p as *const f32),
                    DType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
                    DType::Bf16 => {
                        let w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
                    }
                    _ => fp8_e4m3_16(_mm_loadu_si128(p as *const __m128i)),
                }
            }
        }
        /// One load: a dword's low word (an even value) by a shift, its high word by a mask.
        #[inline(always)]
        unsafe fn bf16_32(p: *const u8, out: &mut [__m512; 4]) {
            unsafe {
                let v = _mm512_loadu_si512(p as *const __m512i);
                out[0] = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
                out[1] = _mm512_castsi512_ps(_mm512_and_si512(
                    v,
                    _mm512_set1_epi32(0xFFFF_0000u32 as i32),
                ));
            }
        }
    }

    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        unsafe fn pow2(n: __m256) -> __m256 {
            unsafe {
                let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(i))
            }
        }
        #[inline(always)]
        unsafe fn hsum(v: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn transpose_sum(a: &[__m256; 16]) -> __m256 {
            unsafe {
                let mut s = [_mm256_setzero_ps(); 4];
                for (i, s) in s.iter_mut().enumerate() {
                    let (x, y) = (a[2 * i], a[2 * i + 1]);
                    *s = _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
                }
                let mut t = [_mm256_setzero_ps(); 2];
                for (i, t) in t.iter_mut().enumerate() {
                    let (x, y) = (_mm256_castps_pd(s[2 * i]), _mm256_castps_pd(s[2 * i + 1]));
                    *t = _mm256_add_ps(
                        _mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                        _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)),
                    );
                }
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(t[0], t[1]),
                    _mm256_permute2f128_ps::<0x31>(t[0], t[1]),
                )
            }
        }
        #[inline(always)]
        unsafe fn hmax(v: __m256) -> f32 {
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn decode(dt: DType, p: *const u8) -> __m256 {
            unsafe {
                match dt {
                    DType::F32 => _mm256_loadu_ps(p as *const f32),
                    DType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                    DType::Bf16 => {
                        let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
                    }
                    _ => {
                        let b = _mm_cvtepi8_epi16(_mm_loadl_epi64(p as *const __m128i));
                        let bits =
                            _mm_and_si128(_mm_slli_epi16::<7>(b), _mm_set1_epi16(0xBF80u16 as i16));
                        let h = _mm256_cvtph_ps(bits);
                        _mm256_mul_ps(h, _mm256_set1_ps(FP8_AS_F16_SCALE))
                    }
                }
            }
        }
        /// Two loads of 16 values: each dword's low word (even) by a shift, high word by a mask.
        #[inline(always)]
        unsafe fn bf16_32(p: *const u8, out: &mut [__m256; 4]) {
            unsafe {
                let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
                for half in 0..2 {
                    let v = _mm256_loadu_si256(p.add(32 * half) as *const __m256i);
                    out[half] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                    out[2 + half] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                }
            }
        }
        /// Each 8 bytes widened to dwords; a nibble shifted to a dword's top and back down
        /// arithmetically is its value as an integer, converted: per 32 values 2 loads, 8
        /// shifts and 4 converts.
        #[inline(always)]
        unsafe fn int4_32(p: *const u8, out: &mut [__m256; 4]) {
            unsafe {
                for half in 0..2 {
                    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * half) as *const _));
                    let lo = _mm256_srai_epi32::<28>(_mm256_slli_epi32::<28>(b));
                    let hi = _mm256_srai_epi32::<28>(_mm256_slli_epi32::<24>(b));
                    out[half] = _mm256_cvtepi32_ps(lo);
                    out[2 + half] = _mm256_cvtepi32_ps(hi);
                }
            }
        }
        /// Each 8 bytes widened to dwords; a nibble's value is `vpermps` of the table's low
        /// or high 8 entries (it reads an index's low 3 bits), chosen by the nibble's bit 3
        /// moved to the sign bit: per 32 values 2 loads, 6 shifts, 8 permutes and 4 blends.
        #[inline(always)]
        unsafe fn nibbles32(p: *const u8, table: &[f32; 16], out: &mut [__m256; 4]) {
            unsafe {
                let (low, high) = (
                    _mm256_loadu_ps(table.as_ptr()),
                    _mm256_loadu_ps(table.as_ptr().add(8)),
                );
                // A macro, not a closure: a closure would not inline the intrinsics.
                macro_rules! look {
                    ($codes:expr, $bit3_at_sign:expr) => {{
                        let codes = $codes;
                        _mm256_blendv_ps(
                            _mm256_permutevar8x32_ps(low, codes),
                            _mm256_permutevar8x32_ps(high, codes),
                            _mm256_castsi256_ps($bit3_at_sign),
                        )
                    }};
                }
                for half in 0..2 {
                    let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * half) as *const _));
                    out[half] = look!(b, _mm256_slli_epi32::<28>(b));
                    out[2 + half] = look!(_mm256_srli_epi32::<4>(b), _mm256_slli_epi32::<24>(b));
                }
            }
        }
    }
}

/// The portable path: 8 lanes as an array; the compiler vectorises the loops.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

type P8 = [f32; 8];

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> P8 {
    let mut v = [0f32; 8];
    for (i, x) in v.iter_mut().enumerate() {
        *x = f(i);
    }
    v
}

impl Simd for Portable {
    type V = P8;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> P8 {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> P8 {
        // SAFETY: the caller passes a pointer valid for 8 values.
        unsafe { std::ptr::read_unaligned(p as *const P8) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: P8) {
        // SAFETY: as `load`.
        unsafe { std::ptr::write_unaligned(p as *mut P8, v) }
    }
    #[inline(always)]
    unsafe fn add(a: P8, b: P8) -> P8 {
        lanes(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn sub(a: P8, b: P8) -> P8 {
        lanes(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: P8, b: P8) -> P8 {
        lanes(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn fma(a: P8, b: P8, c: P8) -> P8 {
        // Not mul_add: without hardware FMA it is a libm call per lane.
        lanes(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn max(a: P8, b: P8) -> P8 {
        lanes(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    unsafe fn round(a: P8) -> P8 {
        lanes(|i| a[i].round_ties_even())
    }
    #[inline(always)]
    unsafe fn pow2(n: P8) -> P8 {
        lanes(|i| f32::from_bits(((n[i] as i32 + 127) as u32) << 23))
    }
    #[inline(always)]
    unsafe fn hsum(v: P8) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn hmax(v: P8) -> f32 {
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    unsafe fn transpose_sum(acc: &[P8; 16]) -> P8 {
        // SAFETY: no precondition beyond the trait's.
        lanes(|i| unsafe { Self::hsum(acc[i]) })
    }
    /// A nibble at the top of a byte, shifted back down arithmetically, is its int4 value:
    /// lane-wise integer steps the compiler vectorises (no table lookups).
    #[inline(always)]
    unsafe fn int4_32(p: *const u8, out: &mut [P8; 4]) {
        // SAFETY: the caller passes 16 readable bytes.
        let b: [u8; 16] = unsafe { std::ptr::read_unaligned(p as *const [u8; 16]) };
        for half in 0..2 {
            let at = |i: usize| b[8 * half + i];
            out[half] = lanes(|i| ((at(i) << 4) as i8 >> 4) as f32);
            out[2 + half] = lanes(|i| (at(i) as i8 >> 4) as f32);
        }
    }
    #[inline(always)]
    unsafe fn decode(dt: DType, p: *const u8) -> P8 {
        let mut out = [0f32; 8];
        // SAFETY: the caller passes a pointer valid for 8 values of `dt`.
        let bytes = unsafe { std::slice::from_raw_parts(p, 8 * dt.size()) };
        dt.decode_slice(bytes, 0, &mut out);
        out
    }
}
