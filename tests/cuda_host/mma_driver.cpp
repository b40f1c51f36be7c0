// kernels/mma_check.cu on the host (shim.h): one warp; reads a.bin and a16.bin (16x16, bf16
// and f16) and b.bin and b16.bin (16x8) from argv[1], writes d.bin (16x8 f32, seven times:
// mma_check.cu).
#include "shim.h"
#include "kernel.cu"
#include <fstream>
#include <iterator>
#include <string>

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    std::vector<unsigned short> a(256), b(128), a16(256), b16(128);
    std::ifstream(d + "/a.bin", std::ios::binary).read((char*)a.data(), 512);
    std::ifstream(d + "/b.bin", std::ios::binary).read((char*)b.data(), 256);
    std::ifstream(d + "/a16.bin", std::ios::binary).read((char*)a16.data(), 512);
    std::ifstream(d + "/b16.bin", std::ios::binary).read((char*)b16.data(), 256);
    std::vector<float> out(896, -1.f);
    launch(dim3{1, 1, 1}, 32, [&] { mma_check(a.data(), b.data(), a16.data(), b16.data(), out.data()); });
    std::ofstream(d + "/d.bin", std::ios::binary).write((const char*)out.data(), 896 * 4);
    return 0;
}
