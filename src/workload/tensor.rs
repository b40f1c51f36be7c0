//! Host-side tensors: the one container that inputs, outputs, uploads and dumps share.

use super::dtype::DType;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A tensor's bytes. Clones share one allocation, so a point's inputs are held by the runner,
/// the cpu backend and an exact reference at once without a copy (a 5 GiB weight tensor is
/// never duplicated); writing through a shared one copies it first (`Arc::make_mut`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(Arc<Vec<u8>>);

impl Bytes {
    /// Whether two handles share one allocation.
    pub fn shares(&self, other: &Bytes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(Arc::new(v))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        let v: &mut Vec<u8> = Arc::make_mut(&mut self.0);
        v
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

/// The element type of a tensor as stored in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// A storage dtype (f32, f16, bf16, fp8; 4-bit codes, two per byte).
    Float(DType),
    I32,
    U32,
    /// Raw bytes with a meaning of their own (mxfp4's E8M0 scales).
    U8,
}

impl Elem {
    /// Bytes that `n` elements occupy (4-bit codes: two per byte).
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            Elem::Float(d) => d.bytes_for(n),
            Elem::I32 | Elem::U32 => 4 * n,
            Elem::U8 => n,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::Float(d) => d.name(),
            Elem::I32 => "i32",
            Elem::U32 => "u32",
            Elem::U8 => "u8",
        }
    }

    /// The numpy dtype descriptor the raw bytes are dumped as: bf16 and f16 as raw uint16,
    /// fp8 as raw uint8 (README, `--dump`), so numpy or PyTorch can reinterpret them; 4-bit
    /// codes as uint8 with the last axis in bytes (two codes each, low nibble first).
    pub fn npy_descr(self) -> &'static str {
        match self {
            Elem::Float(DType::F32) => "<f4",
            Elem::Float(DType::F16) | Elem::Float(DType::Bf16) => "<u2",
            // fp8, the 4-bit codes and E8M0 scales: raw bytes.
            Elem::Float(_) | Elem::U8 => "|u1",
            Elem::I32 => "<i4",
            Elem::U32 => "<u4",
        }
    }
}

/// A named, shaped, row-major array of little-endian bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: &'static str,
    pub elem: Elem,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_f32(name: &'static str, shape: Vec<usize>, values: &[f32]) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Tensor {
            name,
            elem: Elem::Float(DType::F32),
            shape,
            bytes: bytemuck::cast_slice(values).to_vec().into(),
        }
    }

    pub fn from_i32(name: &'static str, shape: Vec<usize>, values: &[i32]) -> Tensor {
        Tensor {
            name,
            elem: Elem::I32,
            shape,
            bytes: bytemuck::cast_slice(values).to_vec().into(),
        }
    }

    pub fn from_u32(name: &'static str, shape: Vec<usize>, values: &[u32]) -> Tensor {
        Tensor {
            name,
            elem: Elem::U32,
            shape,
            bytes: bytemuck::cast_slice(values).to_vec().into(),
        }
    }

    /// A name, type and shape with no data: what a backend keeps to read an output back.
    pub fn spec(name: &'static str, elem: Elem, shape: Vec<usize>) -> Tensor {
        Tensor {
            name,
            elem,
            shape,
            bytes: Bytes::default(),
        }
    }

    /// An output buffer filled with a poison value (NaN for floats, 0xDEADBEEF for words),
    /// so an element a kernel never wrote fails the check.
    pub fn poisoned(name: &'static str, elem: Elem, shape: Vec<usize>) -> Tensor {
        use rayon::prelude::*;
        let n: usize = shape.iter().product();
        let word = match elem {
            Elem::Float(DType::F32) => f32::NAN.to_bits(),
            Elem::U32 | Elem::I32 => 0xDEAD_BEEFu32,
            Elem::Float(other) => panic!("outputs are f32 or u32, not {other}"),
            Elem::U8 => panic!("outputs are f32 or u32, not u8"),
        };
        let mut bytes = zeroed(n * 4);
        bytes.par_chunks_mut(1 << 16).for_each(|c| {
            c.chunks_exact_mut(4)
                .for_each(|w| w.copy_from_slice(&word.to_le_bytes()))
        });
        Tensor {
            name,
            elem,
            shape,
            bytes: bytes.into(),
        }
    }

    /// The bytes as a slice of `T`: borrowed when the allocation is aligned for `T` (always,
    /// with the system allocators in use), copied when it is not, so it can never panic.
    pub fn view<T: bytemuck::Pod>(&self) -> std::borrow::Cow<'_, [T]> {
        match bytemuck::try_cast_slice(&self.bytes) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(&self.bytes)),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.elem {
            Elem::Float(d) => d,
            other => panic!(
                "tensor {} is {}, not a float dtype",
                self.name,
                other.name()
            ),
        }
    }

    /// Zero-copy view of an f32 tensor. Bytes come from `Vec<u8>`, so alignment is checked.
    pub fn as_f32(&self) -> Vec<f32> {
        assert_eq!(
            self.elem,
            Elem::Float(DType::F32),
            "{} is not f32",
            self.name
        );
        bytemuck::pod_collect_to_vec(&self.bytes)
    }

    pub fn as_i32(&self) -> Vec<i32> {
        assert_eq!(self.elem, Elem::I32, "{} is not i32", self.name);
        bytemuck::pod_collect_to_vec(&self.bytes)
    }

    pub fn as_u32(&self) -> Vec<u32> {
        assert_eq!(self.elem, Elem::U32, "{} is not u32", self.name);
        bytemuck::pod_collect_to_vec(&self.bytes)
    }

    /// Every element decoded to f64 (floats through their codec, ints exactly).
    pub fn decode_f64(&self) -> Vec<f64> {
        match self.elem {
            Elem::Float(d) => (0..self.len())
                .map(|i| d.decode_at(&self.bytes, i) as f64)
                .collect(),
            Elem::I32 => self.as_i32().into_iter().map(f64::from).collect(),
            Elem::U32 => self.as_u32().into_iter().map(f64::from).collect(),
            Elem::U8 => self.bytes.iter().map(|&b| b as f64).collect(),
        }
    }
}

/// A set of named tensors: a point's inputs, or what a backend read back.
#[derive(Clone, Debug, Default)]
pub struct TensorSet(pub Vec<Tensor>);

impl TensorSet {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|t| t.name == name)
    }

    /// The tensor a workload itself put there: absence is a bug, not user error.
    pub fn expect(&self, name: &str) -> &Tensor {
        self.get(name)
            .unwrap_or_else(|| panic!("tensor '{name}' missing from set"))
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Tensor> {
        self.0.iter_mut().find(|t| t.name == name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.0.iter().map(|t| t.bytes.len() as u64).sum()
    }
}

/// Row-major reshaping for the splits: a tensor seen as [outer, axis, inner] elements.
impl Tensor {
    fn axis_geometry(&self, axis: usize) -> (usize, usize, usize) {
        let outer: usize = self.shape[..axis].iter().product();
        // Block dtypes: the inner elements are whole rows, so whole blocks.
        let inner = self
            .elem
            .bytes_for(self.shape[axis + 1..].iter().product::<usize>());
        (outer, self.shape[axis], inner)
    }

    /// The elements whose index along `axis` lies in `range` (bytes `inner` at a time).
    pub fn slice_axis(&self, axis: usize, range: std::ops::Range<usize>) -> Tensor {
        self.take_axis(axis, &range.collect::<Vec<_>>())
    }

    /// The elements at the given indices along `axis`, in that order (repeats allowed).
    pub fn take_axis(&self, axis: usize, indices: &[usize]) -> Tensor {
        let (outer, len, inner) = self.axis_geometry(axis);
        let mut bytes = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in indices {
                let at = (o * len + i) * inner;
                bytes.extend_from_slice(&self.bytes[at..at + inner]);
            }
        }
        let mut shape = self.shape.clone();
        shape[axis] = indices.len();
        Tensor {
            name: self.name,
            elem: self.elem,
            shape,
            bytes: bytes.into(),
        }
    }

    /// Parts joined along `axis`; every other dimension must agree.
    pub fn concat_axis(name: &'static str, parts: &[&Tensor], axis: usize) -> Tensor {
        let first = parts[0];
        let outer: usize = first.shape[..axis].iter().product();
        let mut shape = first.shape.clone();
        shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.bytes.len()).sum());
        for o in 0..outer {
            for p in parts {
                let (_, len, inner) = p.axis_geometry(axis);
                bytes.extend_from_slice(&p.bytes[o * len * inner..(o + 1) * len * inner]);
            }
        }
        Tensor {
            name,
            elem: first.elem,
            shape,
            bytes: bytes.into(),
        }
    }
}

/// Buffers at least this large are advised onto huge pages.
const HUGE_PAGE_MIN: usize = 32 << 20;

/// `n` zero bytes, untouched until written. On Linux a large buffer is advised onto
/// transparent huge pages before its first touch: first-touch page faults were most of the
/// system time of a big point (DEVELOPERS.md, "Host work per point").
pub fn zeroed(n: usize) -> Vec<u8> {
    let v = vec![0u8; n];
    #[cfg(target_os = "linux")]
    if n >= HUGE_PAGE_MIN {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + n) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside `v`'s live allocation; MADV_HUGEPAGE changes how
            // its pages are backed, never their contents. A refusal (THP off) is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}
