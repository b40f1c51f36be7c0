// What the host drivers share: reading a point's buffer as the device would hold it.
#pragma once
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

// The file's bytes as T, with 16 zero bytes past the end, as the device buffers are padded.
template <class T> std::vector<T> read(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    b.resize(b.size() + 16, 0);
    std::vector<T> v(b.size() / sizeof(T) + 1);
    std::memcpy(v.data(), b.data(), b.size());
    return v;
}
