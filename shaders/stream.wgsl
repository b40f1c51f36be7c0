// stream: the ceiling. One 16-byte load or store per thread per step, grid-stride, so a
// few thousand workgroups keep every memory channel busy. Buffers are padded to 16 bytes
// (zeros), which leaves the wrapping sum unchanged.
// Prelude: OP (0 read, 1 copy, 2 write), WG.

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

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    var acc = 0u;
    for (var i = gid.x; i < chunk.vecs; i += stride) {
        if (OP == 0u) {
            let v = src[i];
            acc += v.x + v.y + v.z + v.w; // u32 arithmetic wraps, as the oracle's sum does
        } else if (OP == 1u) {
            dst[i] = src[i];
        } else {
            let w = chunk.base_word + 4u * i;
            dst[i] = vec4<u32>(pattern(w), pattern(w + 1u), pattern(w + 2u), pattern(w + 3u));
        }
    }
    if (OP == 0u) {
        add_to_sum(acc, lid);
    }
}
