// stream: the ceiling. What every stream implementation shares: the bindings, the sum of a
// read, the pattern of a write. Buffers are padded to 16 bytes (zeros), which leaves the
// wrapping sum unchanged. Prelude: OP (0 read, 1 copy, 2 write), WG.

struct Chunk {
    base_word: u32,   // global index of this chunk's first u32 word
    vecs: u32,        // vec4<u32> in this chunk
    pattern_seed: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sum: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> chunk: Chunk;

//! when plain
var<workgroup> partial: array<u32, WG>;

// One atomic per workgroup, after a tree reduction in workgroup memory.
fn add_to_sum(acc: u32, lid: u32) {
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        atomicAdd(&sum[0], partial[0]);
    }
}
//! end
//! when subgroups
// One atomic per subgroup: the subgroup sums in registers, no workgroup memory or barriers.
fn add_to_sum(acc: u32, lid: u32) {
    let s = subgroupAdd(acc);
    if (subgroupExclusiveAdd(1u) == 0u) { // the first active lane (naga has no subgroupElect)
        atomicAdd(&sum[0], s);
    }
}
//! end

fn pattern(i: u32) -> u32 {
    return (i * 0x9e3779b1u) ^ chunk.pattern_seed;
}
