// The stream kernels on the host (shim.h): argv = folder, op (read, copy, write), blocks,
// vectors, the write pattern's seed. Reads src.bin, writes sum.bin or dst.bin. The kernel
// source (kernel.cu) is in the same folder.
#include "shim.h"
#include "kernel.cu"
#include <fstream>
#include <iterator>
#include <string>

int main(int argc, char** argv) {
    if (argc != 6) return 2;
    const std::string d = argv[1], op = argv[2];
    const unsigned blocks = std::stoul(argv[3]);
    const u64 n_vec = std::stoull(argv[4]);
    const unsigned seed = std::stoul(argv[5]);
    std::ifstream f(d + "/src.bin", std::ios::binary);
    std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<uint4> src(n_vec + 1, uint4{0, 0, 0, 0}), dst(n_vec + 1, uint4{0, 0, 0, 0});
    std::memcpy(src.data(), b.data(), std::min(b.size(), (size_t)n_vec * 16));
    unsigned int sum = 0;
    const dim3 grid{blocks, 1, 1};
    if (op == "read") launch(grid, 256, [&] { stream_read(src.data(), n_vec, &sum); });
    if (op == "copy") launch(grid, 256, [&] { stream_copy(src.data(), dst.data(), n_vec); });
    if (op == "write") launch(grid, 256, [&] { stream_write(dst.data(), n_vec, seed); });
    if (op == "read") {
        std::ofstream(d + "/sum.bin", std::ios::binary).write((const char*)&sum, 4);
    } else {
        std::ofstream(d + "/dst.bin", std::ios::binary).write((const char*)dst.data(), n_vec * 16);
    }
    return 0;
}
