// kernels/peak.cu on the host (shim.h): peak_fma on 3 blocks of 64 threads, 100 steps, and
// peak_mma on 2 blocks of 64, 10 steps; writes out.bin and mma.bin (one f32 per thread) to
// argv[1].
#include "shim.h"
#include "kernel.cu"
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const float ab[2] = {1.f, 1.f};
    std::vector<float> out(3 * 64, -1.f);
    launch(dim3{3, 1, 1}, 64, [&] { peak_fma(ab, out.data(), 100); });
    std::ofstream(std::string(argv[1]) + "/out.bin", std::ios::binary).write((const char*)out.data(), out.size() * 4);
    // The tensor cores' chains: 2 blocks of 2 warps, 10 steps.
    const unsigned int one = 0x3F803F80u;
    std::vector<float> mma(2 * 64, -1.f);
    launch(dim3{2, 1, 1}, 64, [&] { peak_mma(&one, mma.data(), 10); });
    std::ofstream(std::string(argv[1]) + "/mma.bin", std::ios::binary).write((const char*)mma.data(), mma.size() * 4);
    return 0;
}
