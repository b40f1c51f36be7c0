// The CUDA a kernel of kernels/ uses, on the host: every thread of a block is a fiber (its own
// stack, switched by swapcontext on one OS thread: OS threads meeting at barriers on a small
// machine spent most of the suite's time switching), a warp's shuffles and a block's
// __syncthreads are barriers at which a fiber yields to the next until the last arrives, and the storage types decode in
// software (exactly, as the device's conversions do). tests/it/cuda_host.rs compiles a kernel's
// NVRTC source against this with g++ and checks what it computes against the oracle: the
// indexing, the tails and the reductions of a CUDA kernel are checked without a GPU (its
// speed and real intrinsics are not).
//
// Strict, unless DECODELAB_SHIM_LENIENT is defined: no kinder than the hardware where it is
// cheap to be as unkind.
// - Shared memory holds NaN bytes (0xFF) at every block's start: a read before a write shows.
// - Between barriers a block's threads run in turn, forward in even blocks and backward in odd
//   ones: a read of another thread's write that no barrier orders sees the poison one way.
// - A cp.async copy lands at the cp.async.wait_group that guarantees it, not when issued.
// - ldmatrix rows and cp.async addresses must be 16-byte aligned (else abort, naming where);
//   uint4 and uint2 are 16- and 8-byte aligned types, so g++'s -fsanitize=alignment (which
//   tests/it/cuda_host.rs builds with) stops a misaligned vector access at its line.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>
#include <sys/mman.h>
#include <ucontext.h>

#define DECODELAB_HOST 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so a block's shared arrays can be function statics: in a section
// of their own, so a launch can poison them all between blocks.
#ifdef DECODELAB_SHIM_LENIENT
#define __shared__ static
inline void poison_shared() {}
#else
#define __shared__ __attribute__((section("decodelab_shared"))) static
extern "C" char __start_decodelab_shared[] __attribute__((weak));
extern "C" char __stop_decodelab_shared[] __attribute__((weak));
inline void poison_shared() {
    if (__start_decodelab_shared && __stop_decodelab_shared)
        std::memset(__start_decodelab_shared, 0xFF, __stop_decodelab_shared - __start_decodelab_shared);
}
#endif

// An address the hardware needs aligned, checked: abort naming the access and its caller.
inline void host_aligned(const void* p, unsigned bytes, const char* what, const char* file, int line) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
        std::fprintf(stderr, "%s:%d: %s at %p is not %u-byte aligned\n", file, line, what, p, bytes);
        std::abort();
    }
}

struct dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
struct __align__(8) uint2 {
    unsigned int x, y;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) uint4 {
    unsigned int x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

template <class T> inline T __ldg(const T* p) { return *p; }
template <class A, class B> inline auto min(A a, B b) { return a < b ? a : b; }
template <class A, class B> inline auto max(A a, B b) { return a > b ? a : b; }

// Hand the OS thread to the next fiber of the block that has not finished (fibers.h below).
inline void fiber_yield();

// A barrier among a block's fibers: an arriving fiber yields until the last one arrives.
struct FiberBarrier {
    int n, count = 0;
    unsigned int phase = 0;
    explicit FiberBarrier(int n) : n(n) {}
    void arrive_and_wait() {
        const unsigned int mine = phase;
        if (++count == n) {
            count = 0;
            phase++;
            return;
        }
        while (phase == mine) fiber_yield();
    }
};

// A warp: its lanes meet at a barrier to swap values (any type of up to 8 bytes).
struct Warp {
    FiberBarrier meet{32};
    uint64_t vals[32];
    // One mma's fragments, every lane's.
    uint32_t a[32][4], b[32][2];
};
inline thread_local Warp* this_warp;
inline thread_local FiberBarrier* this_block;

template <class T> inline T __shfl_xor_sync(unsigned int, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    const int lane = threadIdx.x & 31;
    std::memcpy(&this_warp->vals[lane], &v, sizeof(T));
    this_warp->meet.arrive_and_wait();
    T r;
    std::memcpy(&r, &this_warp->vals[lane ^ lane_mask], sizeof(T));
    this_warp->meet.arrive_and_wait();
    return r;
}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v);
}
inline void __syncthreads() { this_block->arrive_and_wait(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { this_warp->meet.arrive_and_wait(); }
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Storage types, decoded in software.
inline float f32_from_bits(uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
inline float half_bits_to_float(uint16_t h) {
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp((float)(m | 1024), e - 25);
    return s ? -v : v;
}
struct __half {
    uint16_t bits;
};
struct __half2_raw {
    uint16_t x, y;
};
struct __half2 {
    uint16_t x, y;
    __half2() = default;
    __half2(__half2_raw r) : x(r.x), y(r.y) {}
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) { return half_bits_to_float(h.bits); }
inline float __bfloat162float(__nv_bfloat16 b) { return f32_from_bits((uint32_t)b.bits << 16); }
inline float2 __half22float2(__half2 h) { return {half_bits_to_float(h.x), half_bits_to_float(h.y)}; }

// OCP E4M3FN: bias 7, no infinities, 0x7F/0xFF NaN.
inline float e4m3_to_float(uint8_t b) {
    const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v = (e == 15 && m == 7) ? NAN : e == 0 ? std::ldexp((float)m, -9) : std::ldexp((float)(m | 8), e - 10);
    return s ? -v : v;
}
// An e4m3 value as f16 bits (exact: every e4m3 value is an f16).
inline uint16_t e4m3_to_half_bits(uint8_t b) {
    const float v = e4m3_to_float(b);
    if (std::isnan(v)) return 0x7fff;
    uint32_t f;
    std::memcpy(&f, &v, 4);
    const uint16_t s = (f >> 16) & 0x8000;
    const float a = std::fabs(v);
    if (a == 0.f) return s;
    int ex;
    const float fr = std::frexp(a, &ex); // a = fr * 2^ex, fr in [0.5, 1)
    if (ex - 1 < -14) return s | (uint16_t)std::lround(std::ldexp(a, 24)); // f16 subnormal
    return s | (uint16_t)((ex - 1 + 15) << 10) | (uint16_t)std::lround((fr * 2 - 1) * 1024);
}
struct __nv_fp8_e4m3 {
    uint8_t __x;
    explicit operator float() const { return e4m3_to_float(__x); }
};
typedef uint16_t __nv_fp8x2_storage_t;
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };
inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t v, __nv_fp8_interpretation_t) {
    return {e4m3_to_half_bits(v & 0xff), e4m3_to_half_bits(v >> 8)};
}
inline float __expf(float x) { return std::exp(x); }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }

// fma.rn.bf16x2: each half a * b + c, rounded to nearest even once (as the PTX ISA says).
inline unsigned int host_fma_bf16x2(unsigned int a, unsigned int b, unsigned int c) {
    auto f = [](unsigned int r, int h) { return (double)f32_from_bits(((r >> (16 * h)) & 0xffffu) << 16); };
    unsigned int out = 0;
    for (int h = 0; h < 2; h++) {
        const float v = (float)(f(a, h) * f(b, h) + f(c, h)); // exact for the kernels' operands
        uint32_t u;
        std::memcpy(&u, &v, 4);
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        out |= r << (16 * h);
    }
    return out;
}

// mma.sync m16n8k16 row.col, bf16 or f16 -> f32, from the fragments as kernels/mma.cuh lays
// them out: every lane's fragments are pooled, and each lane computes its own four results.
inline float bf16_bits_to_float(uint32_t bits) { return f32_from_bits(bits << 16); }
template <float (*DECODE)(uint16_t)>
inline void host_mma_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    Warp& w = *this_warp;
    std::memcpy(w.a[lane], a, sizeof(a));
    std::memcpy(w.b[lane], b, sizeof(b));
    w.meet.arrive_and_wait();
    auto elem = [](uint32_t reg, int k) { return DECODE(k % 2 ? reg >> 16 : reg & 0xffff); };
    auto A = [&](int row, int k) { return elem(w.a[(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k); };
    auto B = [&](int k, int n) { return elem(w.b[n * 4 + (k % 8) / 2][k >= 8], k); };
    for (int i = 0; i < 4; i++) {
        const int row = g + 8 * (i >= 2), col = 2 * t + (i % 2);
        float s = 0.f;
        for (int k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        d[i] += s;
    }
    w.meet.arrive_and_wait();
}
inline float bf16_bits_f(uint16_t b) { return bf16_bits_to_float(b); }
inline void host_mma_bf16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    host_mma_16816<bf16_bits_f>(d, a, b);
}
inline void host_mma_f16_16816(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
    host_mma_16816<half_bits_to_float>(d, a, b);
}
// f32 -> f16 bits, rounded to nearest even (g++'s _Float16 conversion).
inline uint16_t host_f16_rn_bits(float x) {
    const _Float16 h = (_Float16)x;
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16, as the PTX ISA defines it: lane i gives
// the address of row i % 8 of matrix i / 8 (8 b16 each); lane l gets in d[j] matrix j's
// elements (row 2 (l % 4), column l / 4) and (row 2 (l % 4) + 1, column l / 4), the first in
// the low half.
inline void host_ldmatrix_x4_trans(unsigned int (&d)[4], const unsigned short* row,
                                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    host_aligned(row, 16, "an ldmatrix .trans row", file, line);
    const int lane = threadIdx.x & 31;
    Warp& w = *this_warp;
    std::memcpy(&w.vals[lane], &row, sizeof(row));
    w.meet.arrive_and_wait();
    auto at = [&](int src_lane, int col) {
        const unsigned short* p;
        std::memcpy(&p, &w.vals[src_lane], sizeof(p));
        return (unsigned int)p[col];
    };
    for (int j = 0; j < 4; j++) {
#ifdef DECODELAB_SHIM_WRONG_X4_TRANS
        // A deliberately wrong model (tests/it/cuda_host.rs): matrices 2 and 3 as 0 and 1.
        const int r0 = 8 * (j % 2) + 2 * (lane % 4), col = lane / 4;
#else
        const int r0 = 8 * j + 2 * (lane % 4), col = lane / 4;
#endif
        d[j] = at(r0, col) | (at(r0 + 1, col) << 16);
    }
    w.meet.arrive_and_wait();
}

// ldmatrix .x4 (mma.cuh): lane l gets matrix j's row l / 4 (the address lane 8j + l / 4
// gave), columns 2 (l % 4) and 2 (l % 4) + 1.
inline void host_ldmatrix_x4(unsigned int (&d)[4], const unsigned short* row,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    host_aligned(row, 16, "an ldmatrix row", file, line);
    const int lane = threadIdx.x & 31;
    Warp& w = *this_warp;
    std::memcpy(&w.vals[lane], &row, sizeof(row));
    w.meet.arrive_and_wait();
    for (int j = 0; j < 4; j++) {
        const unsigned short* p;
        std::memcpy(&p, &w.vals[8 * j + lane / 4], sizeof(p));
        d[j] = (unsigned int)p[2 * (lane % 4)] | ((unsigned int)p[2 * (lane % 4) + 1] << 16);
    }
    w.meet.arrive_and_wait();
}

// __all_sync: whether `pred` holds on every lane of the warp.
inline int __all_sync(unsigned int, int pred) {
    const int lane = threadIdx.x & 31;
    this_warp->vals[lane] = pred != 0;
    this_warp->meet.arrive_and_wait();
    int all = 1;
    for (int i = 0; i < 32; i++) all &= (int)this_warp->vals[i];
    this_warp->meet.arrive_and_wait();
    return all;
}

// cp.async, 16 bytes: queued per thread, landing at the wait that guarantees the group
// (DECODELAB_SHIM_WAIT_SKEW shortens every wait, as a kernel waiting too little would: a
// test shows the strict shim catches it).
struct HostCopy {
    void* to;
    const void* from;
};
inline thread_local std::vector<HostCopy> host_cp_open;
inline thread_local std::vector<std::vector<HostCopy>> host_cp_groups;
inline void host_cp_async16(void* to, const void* from, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    host_aligned(to, 16, "a cp.async destination", file, line);
    host_aligned(from, 16, "a cp.async source", file, line);
#ifdef DECODELAB_SHIM_LENIENT
    std::memcpy(to, from, 16);
#else
    host_cp_open.push_back({to, from});
#endif
}
inline void host_cp_async_commit() {
    host_cp_groups.push_back(std::move(host_cp_open));
    host_cp_open.clear();
}
#ifndef DECODELAB_SHIM_WAIT_SKEW
#define DECODELAB_SHIM_WAIT_SKEW 0
#endif
inline void host_cp_async_wait(int pending) {
    pending += DECODELAB_SHIM_WAIT_SKEW;
    while ((int)host_cp_groups.size() > pending) {
        for (const HostCopy& c : host_cp_groups.front()) std::memcpy(c.to, c.from, 16);
        host_cp_groups.erase(host_cp_groups.begin());
    }
}

// The fibers of the block being run: each thread's context, stack and the per-thread state
// the kernels read (threadIdx, its warp, its cp.async queue), swapped in as it runs.
struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    Warp* warp;
    std::vector<HostCopy> cp_open;
    std::vector<std::vector<HostCopy>> cp_groups;
    bool done;
};
struct FiberBlock {
    std::vector<Fiber> f;
    int cur = 0, live = 0;
    // Between barriers the fibers run one after another: forward in even blocks, backward in
    // odd ones, so a read of another thread's write that no barrier orders sees the poison
    // (or a stale value) one way or the other.
    int dir = 1;
    ucontext_t main;
    const std::function<void()>* kernel;
};
inline FiberBlock* fibers;

// Leave fiber `from` (its state saved unless it finished) for fiber `to`.
inline void fiber_switch(int from, int to) {
    Fiber &a = fibers->f[from], &b = fibers->f[to];
    if (!a.done) {
        a.tid = threadIdx;
        a.warp = this_warp;
        a.cp_open.swap(host_cp_open);
        a.cp_groups.swap(host_cp_groups);
    }
    threadIdx = b.tid;
    this_warp = b.warp;
    host_cp_open.swap(b.cp_open);
    host_cp_groups.swap(b.cp_groups);
    fibers->cur = to;
    if (a.done) setcontext(&b.ctx);
    else swapcontext(&a.ctx, &b.ctx);
}

// The next fiber that has not finished, after the current one.
inline int fiber_next() {
    const int n = (int)fibers->f.size();
    for (int k = 1; k <= n; k++) {
        const int i = ((fibers->cur + fibers->dir * k) % n + n) % n;
        if (!fibers->f[i].done) return i;
    }
    return -1;
}

inline void fiber_yield() {
    const int next = fiber_next();
    if (next == fibers->cur) {
        std::fprintf(stderr, "shim: thread %u waits at a barrier no other thread of its block will reach\n",
                     threadIdx.x);
        std::abort();
    }
    fiber_switch(fibers->cur, next);
}

inline void fiber_main() {
    (*fibers->kernel)();
    Fiber& me = fibers->f[fibers->cur];
    if (!host_cp_open.empty() || !host_cp_groups.empty()) {
        host_cp_open.clear(); // copies never waited for: the next block starts with none
        host_cp_groups.clear();
    }
    me.done = true;
    if (--fibers->live == 0) setcontext(&fibers->main);
    fiber_switch(fibers->cur, fiber_next());
}

// A launch: every block of the grid in turn, its `threads` threads as fibers on this OS
// thread (1 MiB of stack each, reserved, not touched); shared memory poisoned before each.
inline void launch(dim3 grid, unsigned int threads, const std::function<void()>& kernel) {
    constexpr size_t STACK = 1 << 20;
    char* stacks = (char*)mmap(nullptr, STACK * threads, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stacks == MAP_FAILED) {
        std::fprintf(stderr, "shim: no memory for %u fiber stacks\n", threads);
        std::abort();
    }
    FiberBlock block_fibers;
    block_fibers.kernel = &kernel;
    fibers = &block_fibers;
    blockDim = {threads, 1, 1};
    gridDim = grid;
    for (unsigned int bz = 0; bz < std::max(grid.z, 1u); bz++)
    for (unsigned int by = 0; by < grid.y; by++) {
        for (unsigned int bx = 0; bx < grid.x; bx++) {
            poison_shared();
            FiberBarrier block(threads);
            std::unique_ptr<Warp[]> warps(new Warp[(threads + 31) / 32]);
            blockIdx = {bx, by, bz};
            this_block = &block;
            block_fibers.f.assign(threads, Fiber{});
            for (unsigned int t = 0; t < threads; t++) {
                Fiber& f = block_fibers.f[t];
                f.tid = {t, 0, 0};
                f.warp = &warps[t / 32];
                f.done = false;
                getcontext(&f.ctx);
                f.ctx.uc_stack.ss_sp = stacks + STACK * t;
                f.ctx.uc_stack.ss_size = STACK;
                f.ctx.uc_link = nullptr;
                makecontext(&f.ctx, fiber_main, 0);
            }
            block_fibers.live = (int)threads;
            block_fibers.dir = (bx + by + bz) % 2 ? -1 : 1;
            const int first = block_fibers.dir > 0 ? 0 : (int)threads - 1;
            block_fibers.cur = first;
            threadIdx = block_fibers.f[first].tid;
            this_warp = block_fibers.f[first].warp;
            host_cp_open.clear();
            host_cp_groups.clear();
            swapcontext(&block_fibers.main, &block_fibers.f[first].ctx);
        }
    }
    fibers = nullptr;
    munmap(stacks, STACK * threads);
}
