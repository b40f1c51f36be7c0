// kv_decode's two kernels on the host (shim.h): reads the point's buffers from the folder in
// argv[1], launches attend on its (splits, head blocks, sequences) grid and then merge, and
// writes out.bin and lse.bin. The kernel source (kernel.cu, with the plan's #defines) is in
// the same folder.
#include "shim.h"
#include "kernel.cu"
#include "driver.h"
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    auto q = read<float>(d + "/q.bin");
    auto k = read<unsigned char>(d + "/k_pages.bin");
    auto v = read<unsigned char>(d + "/v_pages.bin");
    auto table = read<int>(d + "/page_table.bin");
    auto lens = read<int>(d + "/context_lens.bin");
    const size_t slots = (size_t)BATCH * HQ * SPLITS;
    std::vector<float> acc(slots * DV, 0.f), out((size_t)BATCH * HQ * DV), lse((size_t)BATCH * HQ);
    std::vector<float2> ml(slots, float2{0.f, 0.f});
    launch(dim3{SPLITS, HQ / HB, BATCH}, WG, [&] {
        attend(q.data(), k.data(), IS_MLA ? k.data() : v.data(), table.data(), lens.data(), acc.data(), ml.data());
    });
    launch(dim3{(unsigned)(BATCH * HQ), 1, 1}, 128, [&] { merge(acc.data(), ml.data(), out.data(), lse.data()); });
    std::ofstream(d + "/out.bin", std::ios::binary).write((const char*)out.data(), out.size() * 4);
    std::ofstream(d + "/lse.bin", std::ios::binary).write((const char*)lse.data(), lse.size() * 4);
    return 0;
}
