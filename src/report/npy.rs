//! NumPy `.npy` (format 1.0) writing: a tensor's raw bytes with a header numpy can read.
//! bf16 and f16 are written as uint16 and fp8 as uint8, bit for bit, so numpy or PyTorch can
//! reinterpret them (README, `--dump`); 4-bit codes as uint8 with the last axis in bytes
//! (two codes each, low nibble first).

use crate::workload::Tensor;
use std::io::Write;
use std::path::Path;

pub fn write_npy(path: &Path, t: &Tensor) -> std::io::Result<()> {
    let mut dims = t.shape.clone();
    if let (Some(last), crate::workload::Elem::Float(d)) = (dims.last_mut(), t.elem)
        && d.groups().is_some()
    {
        *last = d.bytes_for(*last);
    }
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        t.elem.npy_descr()
    );
    // magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple
    // of 64 and ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&(header.len() as u16).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(&t.bytes)?;
    f.flush()
}
