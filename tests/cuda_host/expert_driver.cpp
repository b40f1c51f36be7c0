// expert_gemv's kernels on the host (shim.h): reads the point's buffers from the folder in
// argv[1], launches gemv on a grid of argv[2] x argv[3] blocks (mma_w4: after x_frag lays x
// out for it), then combine, and writes y.bin. The kernel source (kernel.cu, with the plan's #defines) is in the same folder.
#include "shim.h"
#include "kernel.cu"
#include "driver.h"
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    const std::string d = argv[1];
    const dim3 grid{(unsigned)std::stoi(argv[2]), (unsigned)std::stoi(argv[3]), 1};
    auto x = read<float>(d + "/x.bin");
    auto w = read<unsigned char>(d + "/w.bin");
    auto scale = read<float>(d + "/w_scale.bin");
    auto groups = read<unsigned int>(d + "/groups.bin");
    auto ew = read<float>(d + "/entry_weight.bin");
    std::vector<float> slot_out((size_t)BATCH * TOP_K * D_OUT + 4, 0.f), y((size_t)BATCH * D_OUT, 0.f);
#ifdef W4_X_FRAG // mma_w4: gemv reads x as laid out by x_frag
    std::vector<uint4> xf((size_t)BATCH * D_IN / 4);
    const unsigned fw = 128, vectors = BATCH * D_IN / 8;
    launch(dim3{(vectors + fw - 1) / fw, 1, 1}, fw, [&] { x_frag(x.data(), xf.data()); });
    launch(grid, WG, [&] { gemv(xf.data(), w.data(), scale.data(), groups.data(), ew.data(), slot_out.data()); });
#else
    launch(grid, WG, [&] { gemv(x.data(), w.data(), scale.data(), groups.data(), ew.data(), slot_out.data()); });
#endif
    const unsigned cw = 256;
    launch(dim3{(unsigned)((BATCH * D_OUT + cw - 1) / cw), 1, 1}, cw, [&] { combine(slot_out.data(), y.data()); });
    std::ofstream(d + "/y.bin", std::ios::binary).write((const char*)y.data(), y.size() * 4);
    return 0;
}
