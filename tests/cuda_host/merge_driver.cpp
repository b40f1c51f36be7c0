// kv_decode's sequence-split merge on the host (shim.h): reads shard s's gathered outputs
// (out<s>.bin, lse<s>.bin, s < argv[2]) and the plan's table (part_start.bin, parts.bin)
// from the folder in argv[1], launches merge_shards on its (heads, sequences) grid, and
// writes out.bin and lse.bin. kernel.cu is the point's kv_decode module.
#include "shim.h"
#include "kernel.cu"
#include "driver.h"
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 3) return 2;
    const std::string d = argv[1];
    const int shards = std::stoi(argv[2]);
    std::vector<std::vector<float>> outs, lses;
    std::vector<u64> out_ptrs, lse_ptrs;
    for (int s = 0; s < shards; s++) {
        outs.push_back(read<float>(d + "/out" + std::to_string(s) + ".bin"));
        lses.push_back(read<float>(d + "/lse" + std::to_string(s) + ".bin"));
    }
    for (int s = 0; s < shards; s++) {
        out_ptrs.push_back((u64)outs[s].data());
        lse_ptrs.push_back((u64)lses[s].data());
    }
    auto starts = read<int>(d + "/part_start.bin");
    auto parts = read<int2>(d + "/parts.bin");
    std::vector<float> out((size_t)BATCH * HQ * DV, -1.f), lse((size_t)BATCH * HQ, -1.f);
    launch(dim3{HQ, BATCH, 1}, 128, [&] {
        merge_shards(out_ptrs.data(), lse_ptrs.data(), starts.data(), parts.data(), out.data(), lse.data());
    });
    std::ofstream(d + "/out.bin", std::ios::binary).write((const char*)out.data(), out.size() * 4);
    std::ofstream(d + "/lse.bin", std::ios::binary).write((const char*)lse.data(), lse.size() * 4);
    return 0;
}
