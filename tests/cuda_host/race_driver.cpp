// A kernel that reads its neighbour's shared-memory write, with (BARRIER 1) or without
// (BARRIER 0) a __syncthreads between, on 2 blocks of 64 threads; writes out.bin (one f32 per
// thread) to argv[1]. The strict shim runs one block's threads forward and the other's
// backward between barriers, so without the barrier each block reads some poison.
#include "shim.h"
#include <fstream>
#include <string>

#ifndef BARRIER
#error "BARRIER 0 or 1"
#endif

void neighbour(float* out) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = (float)t;
#if BARRIER
    __syncthreads();
#endif
    out[blockIdx.x * 64 + t] = s[(t + 1) % 64];
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    std::vector<float> out(2 * 64, -1.f);
    launch(dim3{2, 1, 1}, 64, [&] { neighbour(out.data()); });
    std::ofstream(std::string(argv[1]) + "/out.bin", std::ios::binary).write((const char*)out.data(), out.size() * 4);
    return 0;
}
