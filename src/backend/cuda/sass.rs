//! SASS, read without a GPU: nvdisasm on the CUBIN that NVRTC made, and the figures a
//! roofline budget asks of each kernel: CTAs per SM, global loads by width (the streamed
//! tensors' apart), local-memory and tensor-core instructions, and the instructions of the
//! hottest loop per byte it streams.
//!
//! Streamed loads are found through the source: a kernel line that loads a streamed tensor
//! ends in `// stream: <tensor>`, and nvdisasm's line table (with inlining, `-gi`) says which
//! source lines each instruction came from.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the card can issue per byte at full bandwidth (4.8 TB/s over 132 SMs at 1.98 GHz,
/// one warp-instruction per scheduler per clock): a roofline kernel sits well under it.
pub const BUDGET_INSTR_PER_BYTE: f64 = 0.22;
/// Where a kernel that aims at the roofline should sit.
pub const AIM_INSTR_PER_BYTE: f64 = 0.1;

/// nvdisasm: DECODELAB_NVDISASM, then PATH, then the toolkit (CUDA_HOME, CUDA_PATH,
/// /usr/local/cuda), then the PyPI wheel beside NVRTC (nvidia-cuda-nvdisasm puts it in
/// site-packages/nvidia/cu13/bin).
pub fn nvdisasm_path() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("DECODELAB_NVDISASM") {
        candidates.push(p.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nvdisasm")));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            candidates.push(PathBuf::from(d).join("bin/nvdisasm"));
        }
    }
    candidates.push("/usr/local/cuda/bin/nvdisasm".into());
    // The wheels' nvidia/ folder, found from the CUDA headers' or NVRTC's location.
    for var in ["DECODELAB_CUDA_INCLUDE", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            for d in std::env::split_paths(&v) {
                for up in d.ancestors().take(4) {
                    candidates.push(up.join("cu13/bin/nvdisasm"));
                    candidates.push(up.join("cuda_nvdisasm/bin/nvdisasm"));
                }
            }
        }
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "nvdisasm not found: set DECODELAB_NVDISASM, put the CUDA toolkit's bin/ on PATH, or \
         pip install nvidia-cuda-nvdisasm"
            .into()
    })
}

/// SASS of a CUBIN with the line table and its inlining (`nvdisasm -c -gi`).
pub fn disassemble(cubin: &[u8]) -> Result<String, String> {
    let tool = nvdisasm_path()?;
    let dir = std::env::temp_dir().join(format!("decodelab-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(format!("{:x}.cubin", fingerprint(cubin)));
    std::fs::write(&file, cubin).map_err(|e| format!("{}: {e}", file.display()))?;
    let out = std::process::Command::new(&tool)
        .args(["-c", "-gi"])
        .arg(&file)
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()));
    let _ = std::fs::remove_file(&file);
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            tool.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| "nvdisasm printed non-UTF-8".into())
}

fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Global loads of one kernel by width in bits (128, 64, 32, 16, 8).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Widths(pub BTreeMap<u32, usize>);

impl Widths {
    fn add(&mut self, bits: u32) {
        *self.0.entry(bits).or_insert(0) += 1;
    }

    pub fn narrower_than(&self, bits: u32) -> usize {
        self.0
            .iter()
            .filter(|(w, _)| **w < bits)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// The loop whose instructions per streamed byte are highest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HotLoop {
    /// SASS addresses of its first and last (the backward branch) instruction.
    pub start: u32,
    pub end: u32,
    pub instructions: usize,
    /// Bytes one warp streams per iteration (each streamed load x 32 lanes).
    pub bytes_per_warp: u64,
    pub instr_per_byte: f64,
}

/// What the budget asks of one kernel's SASS.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelSass {
    pub kernel: String,
    pub instructions: usize,
    /// Every global load (LDG) by width.
    pub loads: Widths,
    /// The loads of streamed tensors (lines tagged `// stream:`), by width; cp.async
    /// (LDGSTS) counted here by its width, TMA (UTMALDG) as 128.
    pub streamed: Widths,
    /// Tensors named by the tags the streamed loads came from.
    pub streamed_tensors: Vec<String>,
    /// LDL / STL: local memory, which a tuned kernel never touches.
    pub local: usize,
    /// HMMA, HGMMA, IMMA, QGMMA...: tensor-core instructions.
    pub tensor_core: usize,
    pub hot_loop: Option<HotLoop>,
    /// The streaming loop with the fewest instructions per byte, where the kernel has
    /// several (e.g. one per token-chunk size): the best case beside the hot loop's worst.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light_loop: Option<HotLoop>,
}

/// One instruction: its address, opcode (with modifiers), branch target label, and the
/// kernel-source lines it came from (its own and those it was inlined at).
struct Instr {
    addr: u32,
    op: String,
    target: Option<String>,
    lines: Vec<u32>,
}

/// Analyse every kernel in `sass`. `program` is the name NVRTC compiled the source under,
/// `source` the source itself (for the `// stream:` tags).
pub fn analyse(sass: &str, program: &str, source: &str) -> Vec<KernelSass> {
    let tags: BTreeMap<u32, String> = source
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            // A tag ends a line of code; a comment line that mentions one is not a load.
            let (code, tag) = l.split_once("// stream:")?;
            if code.trim().is_empty() {
                return None;
            }
            Some((i as u32 + 1, tag.trim().to_string()))
        })
        .collect();
    let mut out = Vec::new();
    for (name, body) in functions(sass) {
        let (instrs, labels) = parse(&body, program);
        out.push(summarise(name, &instrs, &labels, &tags));
    }
    out
}

/// (kernel name, its lines) for every `.text.<name>` section.
fn functions(sass: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in sass.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|n| n.strip_suffix(':')) {
            out.push((name.to_string(), Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line);
        }
    }
    out
}

fn parse(body: &[&str], program: &str) -> (Vec<Instr>, BTreeMap<String, u32>) {
    let mut instrs = Vec::new();
    let mut labels = BTreeMap::new();
    let mut pending_labels: Vec<String> = Vec::new();
    let mut lines: Vec<u32> = Vec::new();
    // Consecutive notes are one instruction's inlining chain (deepest first): all count.
    let mut chain_done = true;
    for raw in body {
        let t = raw.trim();
        if let Some(info) = t.strip_prefix("//##") {
            if chain_done {
                lines.clear();
                chain_done = false;
            }
            lines.extend(source_lines(info, program));
        } else if let Some(label) = t.strip_suffix(':').filter(|l| l.starts_with(".L")) {
            pending_labels.push(label.to_string());
        } else if let Some(rest) = t.strip_prefix("/*") {
            let Some((addr, text)) = rest.split_once("*/") else {
                continue;
            };
            let Ok(addr) = u32::from_str_radix(addr.trim(), 16) else {
                continue;
            };
            let text = text.trim().trim_end_matches(';').trim();
            // Skip a predicate (@P0, @!PT, @UP1 ...).
            let mut words = text.split_whitespace().peekable();
            if words.peek().is_some_and(|w| w.starts_with('@')) {
                words.next();
            }
            let Some(op) = words.next() else { continue };
            let target = text
                .split("`(")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .map(str::to_string);
            for l in pending_labels.drain(..) {
                labels.insert(l, addr);
            }
            instrs.push(Instr {
                addr,
                op: op.to_string(),
                target,
                lines: lines.clone(),
            });
            chain_done = true;
        }
    }
    (instrs, labels)
}

/// The kernel-source lines of a `//## File "...", line N inlined at "...", line M` note.
fn source_lines(info: &str, program: &str) -> Vec<u32> {
    // Quoted paths sit at the odd positions; each is followed by `, line N`.
    let parts: Vec<&str> = info.split('"').collect();
    let mut out = Vec::new();
    for pair in parts.windows(2).skip(1).step_by(2) {
        let (file, rest) = (pair[0], pair[1]);
        let ours = file == program || file.ends_with(&format!("/{program}"));
        let line = rest
            .split("line ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok());
        if let (true, Some(n)) = (ours, line) {
            out.push(n);
        }
    }
    out
}

/// Width in bits of a global load's opcode: LDG.E.128, LDG.E.64, LDG.E (32), LDG.E.U16,
/// LDG.E.S8, LDGSTS.E.BYPASS.128, ...
fn load_bits(op: &str) -> u32 {
    for (m, bits) in [
        (".128", 128),
        (".64", 64),
        (".U16", 16),
        (".S16", 16),
        (".U8", 8),
        (".S8", 8),
    ] {
        if op.contains(m) {
            return bits;
        }
    }
    32
}

fn summarise(
    kernel: String,
    instrs: &[Instr],
    labels: &BTreeMap<String, u32>,
    tags: &BTreeMap<u32, String>,
) -> KernelSass {
    let mut s = KernelSass {
        kernel,
        instructions: instrs.iter().filter(|i| i.op != "NOP").count(),
        loads: Widths::default(),
        streamed: Widths::default(),
        streamed_tensors: Vec::new(),
        local: 0,
        tensor_core: 0,
        hot_loop: None,
        light_loop: None,
    };
    // Bytes one warp streams per instruction (0: not a streamed load).
    let mut stream_bytes = vec![0u64; instrs.len()];
    for (i, ins) in instrs.iter().enumerate() {
        let op = ins.op.as_str();
        let tag = ins.lines.iter().find_map(|l| tags.get(l));
        let bits = if op.starts_with("LDGSTS") || op.starts_with("LDG") {
            let bits = load_bits(op);
            if op.starts_with("LDG.") || op == "LDG" {
                s.loads.add(bits);
            }
            Some(bits)
        } else if op.starts_with("UTMALDG") {
            Some(128)
        } else {
            None
        };
        if let (Some(bits), Some(tag)) = (bits, tag) {
            s.streamed.add(bits);
            if !s.streamed_tensors.contains(tag) {
                s.streamed_tensors.push(tag.clone());
            }
            stream_bytes[i] = bits as u64 / 8 * 32;
        }
        if op.starts_with("LDL") || op.starts_with("STL") {
            s.local += 1;
        }
        if [
            "HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "UTCHMMA", "UTCQMMA", "DMMA",
        ]
        .iter()
        .any(|m| op.starts_with(m))
        {
            s.tensor_core += 1;
        }
    }
    // Loops: a branch back to a label at or before it. Each loop's body counts its nested
    // loops once; the hottest is the one with the most instructions per streamed byte.
    for (j, ins) in instrs.iter().enumerate() {
        let Some(&to) = ins.target.as_ref().and_then(|t| labels.get(t)) else {
            continue;
        };
        if to > ins.addr {
            continue;
        }
        let body: Vec<usize> = (0..=j).filter(|&i| instrs[i].addr >= to).collect();
        let bytes: u64 = body.iter().map(|&i| stream_bytes[i]).sum();
        if bytes == 0 {
            continue;
        }
        let count = body.iter().filter(|&&i| instrs[i].op != "NOP").count();
        let ratio = count as f64 / bytes as f64;
        let this = HotLoop {
            start: to,
            end: ins.addr,
            instructions: count,
            bytes_per_warp: bytes,
            instr_per_byte: ratio,
        };
        if s.light_loop
            .as_ref()
            .is_none_or(|h| ratio < h.instr_per_byte)
        {
            s.light_loop = Some(this.clone());
        }
        if s.hot_loop.as_ref().is_none_or(|h| ratio > h.instr_per_byte) {
            s.hot_loop = Some(this);
        }
    }
    // One streaming loop: it is both, and said once.
    if s.light_loop == s.hot_loop {
        s.light_loop = None;
    }
    s
}

/// The most CTAs of `threads` threads, `registers` registers each and `smem` bytes of static
/// shared memory that fit one SM of `arch` (sm_80, sm_86, sm_89, sm_90, sm_100, sm_120), and
/// what limits it.
pub fn ctas_per_sm(arch: &str, threads: u32, registers: u32, smem: u32) -> (u32, &'static str) {
    // (threads, CTAs, registers, shared memory bytes) per SM.
    let (max_threads, max_ctas, regs, smem_sm) = match arch {
        "sm_86" | "sm_87" => (1536, 16, 65536, 100 << 10),
        "sm_89" => (1536, 24, 65536, 100 << 10),
        "sm_120" | "sm_121" => (1536, 32, 65536, 100 << 10),
        "sm_80" => (2048, 32, 65536, 164 << 10),
        _ => (2048, 32, 65536, 228 << 10),
    };
    let threads = threads.max(1);
    let warps = threads.div_ceil(32);
    // Registers are given out per warp in units of 256.
    let per_warp = (registers.max(1) * 32).next_multiple_of(256);
    let by_regs = (regs / per_warp) / warps;
    // Each CTA also reserves 1 KiB of shared memory.
    let by_smem = smem_sm / (smem + 1024);
    let by_threads = max_threads / threads;
    [
        (max_ctas, "CTA slots"),
        (by_threads, "threads"),
        (by_regs, "registers"),
        (by_smem, "shared memory"),
    ]
    .into_iter()
    .min_by_key(|(n, _)| *n)
    .expect("four limits")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SASS: &str = r#"
//--------------------- .text.attend --------------------------
.text.attend:
	//## File "/x/kv_decode", line 10
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
	//## File "/x/kv_decode", line 36 inlined at "/x/kv_decode", line 20
        /*0010*/                   LDG.E.U16.CONSTANT R4, desc[UR4][R2.64] ;
	//## File "/x/kv_decode", line 21
        /*0020*/                   LDG.E.128.CONSTANT R8, desc[UR4][R6.64] ;
        /*0030*/                   LDG.E R9, desc[UR4][R6.64] ;
        /*0040*/                   STL [R1], R4 ;
        /*0050*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*0060*/               @P0 BRA `(.L_x_1) ;
        /*0070*/                   EXIT ;
        /*0080*/                   NOP ;
//--------------------- .text.merge --------------------------
.text.merge:
        /*0000*/                   EXIT ;
"#;

    #[test]
    fn loads_tags_and_the_hot_loop_are_read_from_sass() {
        let source = (1..=30)
            .map(|i| match i {
                20 => "v = decode(v, i); // stream: V".to_string(),
                21 => "k = load(k4); // stream: K".to_string(),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let r = analyse(SASS, "kv_decode", &source);
        assert_eq!(r.len(), 2);
        let a = &r[0];
        assert_eq!(a.kernel, "attend");
        assert_eq!(a.instructions, 8, "NOP not counted");
        assert_eq!(a.loads.0, BTreeMap::from([(16, 1), (32, 1), (128, 1)]));
        // Line 21 tags both loads on it; the U16 load came through line 20 (inlined).
        assert_eq!(a.streamed.0, BTreeMap::from([(16, 1), (32, 1), (128, 1)]));
        assert_eq!(a.streamed.narrower_than(128), 2);
        assert_eq!(a.streamed_tensors, ["V", "K"]);
        assert_eq!((a.local, a.tensor_core), (1, 1));
        let h = a.hot_loop.as_ref().unwrap();
        // Six instructions from .L_x_1 to the branch; (2 + 16 + 4) bytes x 32 lanes.
        assert_eq!((h.start, h.end, h.instructions), (0x10, 0x60, 6));
        assert_eq!(h.bytes_per_warp, 22 * 32);
        assert_eq!(r[1].hot_loop, None);
    }

    #[test]
    fn occupancy_by_its_tightest_limit() {
        // 128 threads at 124 registers: 4 warps x 3968 registers -> 4 CTAs (16 warps).
        assert_eq!(ctas_per_sm("sm_90", 128, 124, 0), (4, "registers"));
        // 256 threads at 32 registers: 8 CTAs by threads.
        assert_eq!(ctas_per_sm("sm_90", 256, 32, 0), (8, "threads"));
        // 100 KB of shared memory per CTA: two fit in 228 KB.
        assert_eq!(
            ctas_per_sm("sm_90", 128, 32, 100 << 10),
            (2, "shared memory")
        );
        assert_eq!(ctas_per_sm("sm_90", 32, 16, 0), (32, "CTA slots"));
    }
}
