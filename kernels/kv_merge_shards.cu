// A sequence split's combine, on the device that gathered the shards: each shard holds a
// slice of some sequences' contexts and left, per (row, head), its normalised out and its
// lse. For sequence b, parts[part_start[b] .. part_start[b + 1]] name (shard, row); the
// merge weighs each part by e^(lse - M): out = sum_p out_p e^(lse_p - M) / L,
// lse = M + ln L. shard_out[s] and shard_lse[s] are shard s's gathered buffers. A block per
// (head, sequence); one part is a copy (weight 1, total 1).

#define NEG_BIG (-3.0e38f)

extern "C" __global__ void merge_shards(const u64* __restrict__ shard_out, const u64* __restrict__ shard_lse,
                                        const int* __restrict__ part_start, const int2* __restrict__ parts,
                                        float* __restrict__ out, float* __restrict__ lse) {
    const int h = blockIdx.x, b = blockIdx.y;
    const int p0 = part_start[b], p1 = part_start[b + 1];
    float m = NEG_BIG;
    for (int p = p0; p < p1; p++) {
        const int2 sr = parts[p];
        m = fmaxf(m, reinterpret_cast<const float*>(shard_lse[sr.x])[(u64)sr.y * HQ + h]);
    }
    float total = 0.f;
    for (int p = p0; p < p1; p++) {
        const int2 sr = parts[p];
        total += expf(reinterpret_cast<const float*>(shard_lse[sr.x])[(u64)sr.y * HQ + h] - m);
    }
    for (int d = threadIdx.x; d < DV; d += blockDim.x) {
        float o = 0.f;
        for (int p = p0; p < p1; p++) {
            const int2 sr = parts[p];
            const float w = expf(reinterpret_cast<const float*>(shard_lse[sr.x])[(u64)sr.y * HQ + h] - m);
            o += w * reinterpret_cast<const float*>(shard_out[sr.x])[((u64)sr.y * HQ + h) * DV + d];
        }
        out[((u64)b * HQ + h) * DV + d] = o / total;
    }
    if (threadIdx.x == 0) lse[(u64)b * HQ + h] = m + logf(total);
}
