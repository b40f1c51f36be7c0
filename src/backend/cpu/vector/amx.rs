//! Intel AMX (Sapphire Rapids and later): eight tile registers of up to 16 rows x 64 bytes
//! and `tdpbf16ps`, C[16 x 16 f32] += A[16 x 32 bf16] . B[32 x 16 bf16], B stored as 16
//! rows of (k, k+1) pairs (VNNI). Rust has no stable AMX intrinsics or feature detection,
//! so the instructions are inline assembly and the CPU is asked by CPUID; Linux hands a
//! process the tile state only on request (`arch_prctl`), once.

use std::sync::OnceLock;

/// Whether this CPU and OS run AMX-BF16, or why not (asked once per process).
pub fn permitted() -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    ONCE.get_or_init(ask).clone()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn ask() -> Result<(), String> {
    // CPUID.(7, 0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return Err("this CPU lacks amx-tile, amx-bf16".into());
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for permission; it changes nothing but the process's state size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    if r != 0 {
        return Err(format!(
            "the kernel refused the AMX tile state ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn ask() -> Result<(), String> {
    Err("AMX runs on x86-64 Linux only".into())
}

/// The tile registers of this thread, configured: every tile `rows` x 64 bytes, except tile
/// 0 and the A tiles, which take `a_rows` rows (fewer heads than 16 cost fewer cycles a
/// `tdpbf16ps`). Released on drop, so a thread leaves no tile state behind.
#[cfg(target_arch = "x86_64")]
pub struct Tiles(());

#[cfg(target_arch = "x86_64")]
impl Tiles {
    /// Tiles `a` (C and A: `m` rows of 64 bytes) and the rest (16 rows of 64 bytes: B).
    /// `a` lists the tile registers that hold C or A operands.
    ///
    /// # Safety
    /// `permitted()` must be Ok.
    pub unsafe fn configure(m: usize, a: &[usize]) -> Tiles {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut c = Config([0; 64]);
        c.0[0] = 1; // palette 1
        for t in 0..8 {
            let rows = if a.contains(&t) { m } else { 16 };
            c.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c.0[48 + t] = rows as u8;
        }
        // SAFETY: a valid palette-1 configuration; the caller's contract (permission).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
        }
        Tiles(())
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`.
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `tileloadd tmmT, [p + stride*1]`: rows at p, p + stride, ...
macro_rules! tile_load {
    ($t:literal, $p:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack, readonly)
        )
    };
}

/// `tilestored [p + stride*1], tmmT`.
macro_rules! tile_store {
    ($t:literal, $p:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $p,
            s = in(reg) $stride,
            options(nostack)
        )
    };
}

/// `tdpbf16ps tmmC, tmmA, tmmB`: C += A . B.
macro_rules! tile_dp {
    ($c:literal, $a:literal, $b:literal) => {
        std::arch::asm!(
            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack, nomem)
        )
    };
}

macro_rules! tile_zero {
    ($t:literal) => {
        std::arch::asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
}

pub(super) use {tile_dp, tile_load, tile_store, tile_zero};

/// Multiply-adds of one `tdpbf16ps` on full tiles: 16 x 16 x 32.
pub const TILE_MACS: usize = 16 * 16 * 32;

/// `steps` rounds of four independent `tdpbf16ps` (C0..C3 from two A and two B tiles of
/// ones): the tile unit's ceiling. Returns every C element's sum, which is known in closed
/// form (32 x steps in each of the 4 x 256 elements).
///
/// # Safety
/// `permitted()` must be Ok.
#[cfg(target_arch = "x86_64")]
pub unsafe fn chains(steps: usize) -> f64 {
    let ones = vec![0x3F80u16; 16 * 32]; // bf16 1.0
    let mut out = vec![0f32; 4 * 256];
    // SAFETY: the caller's contract; every load and store is 16 rows of 64 bytes inside
    // `ones` and `out`.
    unsafe {
        let _tiles = Tiles::configure(16, &[]);
        tile_zero!(0);
        tile_zero!(1);
        tile_zero!(2);
        tile_zero!(3);
        tile_load!(4, ones.as_ptr(), 64usize);
        tile_load!(5, ones.as_ptr(), 64usize);
        tile_load!(6, ones.as_ptr(), 64usize);
        tile_load!(7, ones.as_ptr(), 64usize);
        for _ in 0..steps {
            tile_dp!(0, 4, 5);
            tile_dp!(1, 4, 6);
            tile_dp!(2, 7, 5);
            tile_dp!(3, 7, 6);
        }
        let o = out.as_mut_ptr();
        tile_store!(0, o, 64usize);
        tile_store!(1, o.add(256), 64usize);
        tile_store!(2, o.add(512), 64usize);
        tile_store!(3, o.add(768), 64usize);
    }
    out.iter().map(|&x| x as f64).sum()
}

/// What `chains(steps)` returns.
pub fn expected(steps: usize) -> f64 {
    4.0 * 256.0 * 32.0 * steps as f64
}
