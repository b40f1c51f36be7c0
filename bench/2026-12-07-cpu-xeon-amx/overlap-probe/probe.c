// Overlap probe: does a core's DRAM stream keep its speed when arithmetic runs between its
// loads? Two threads each read half of a buffer (2 GiB, huge pages) a line at a time; after
// each line's load, K register-only FMAs (8 independent chains, no memory operands).
//
//   gcc -O2 -mavx512f -o probe probe.c -lpthread
//   ./probe MiB K            environment:
//     COMPUTE=1   the same loop over 16 KiB (L1): the arithmetic's own time
//     PFD=n       prefetcht1 of the line n lines ahead of each load (in the read order)
//     GQA=1       read order of the GQA kernel: per 64 KiB (16 tokens x 4 KiB rows of 8
//                 heads), head by head, a head's 512 bytes of each token in turn
//     NT=1        one thread
// Prints the median of 7 runs (each thread's own time, the slower of the two).
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static size_t N, MASK = ~(size_t)0, PFD, ord[1024];
static int K, NT = 2, GQA;
static char *buf;
static pthread_barrier_t bar;
static double t0s[2], t1s[2];
static float sink[2];
enum { CH = 1 << 18 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Offset of the line at position o of the read order.
static size_t at(size_t o) {
    o &= MASK;
    return GQA ? (o & ~(size_t)65535) + ord[(o & 65535) >> 6] : o;
}

#define FMAS                                                                            \
    for (int i = 0; i < K / 8; i++) {                                                   \
        c0 = _mm512_fmadd_ps(c0, m, a); c1 = _mm512_fmadd_ps(c1, m, a);                 \
        c2 = _mm512_fmadd_ps(c2, m, a); c3 = _mm512_fmadd_ps(c3, m, a);                 \
        c4 = _mm512_fmadd_ps(c4, m, a); c5 = _mm512_fmadd_ps(c5, m, a);                 \
        c6 = _mm512_fmadd_ps(c6, m, a); c7 = _mm512_fmadd_ps(c7, m, a);                 \
    }

__attribute__((target("avx512f"))) static void *work(void *arg) {
    long id = (long)arg;
    __m512 m = _mm512_set1_ps(0.999f), a = _mm512_set1_ps(1e-3f);
    __m512 c0 = _mm512_set1_ps(.1f), c1 = _mm512_set1_ps(.2f), c2 = _mm512_set1_ps(.3f),
           c3 = _mm512_set1_ps(.4f), c4 = _mm512_set1_ps(.5f), c5 = _mm512_set1_ps(.6f),
           c6 = _mm512_set1_ps(.7f), c7 = _mm512_set1_ps(.8f), s = _mm512_setzero_ps();
    double spin = now() + 0.02;
    while (now() < spin) {}
    pthread_barrier_wait(&bar);
    t0s[id] = now();
    for (size_t c = id * (size_t)CH; c < N; c += NT * (size_t)CH)
        for (size_t o = c; o < c + CH; o += 64) {
            if (PFD) _mm_prefetch(buf + at(o + PFD), _MM_HINT_T1);
            s = _mm512_add_ps(s, _mm512_load_ps((const float *)(buf + at(o))));
            FMAS
        }
    t1s[id] = now();
    __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                             _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
    sink[id] = _mm512_reduce_add_ps(_mm512_add_ps(t, s));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: probe MiB K\n"), 2;
    N = (size_t)atol(argv[1]) << 20;
    K = atoi(argv[2]);
    if (getenv("COMPUTE")) MASK = (16 << 10) - 1;
    if (getenv("PFD")) PFD = (size_t)atol(getenv("PFD")) * 64;
    if (getenv("NT")) NT = atoi(getenv("NT")) == 1 ? 1 : 2;
    GQA = getenv("GQA") != NULL;
    int n = 0;
    for (int g = 0; g < 8; g++)
        for (int t = 0; t < 16; t++)
            for (int l = 0; l < 8; l++) ord[n++] = t * 4096 + g * 512 + l * 64;
    buf = aligned_alloc(2 << 20, N);
    madvise(buf, N, MADV_HUGEPAGE);
    memset(buf, 1, N);
    double ts[7];
    for (int rep = 0; rep < 7; rep++) {
        pthread_barrier_init(&bar, 0, NT);
        pthread_t th[2];
        for (long i = 0; i < NT; i++) pthread_create(&th[i], 0, work, (void *)i);
        for (int i = 0; i < NT; i++) pthread_join(th[i], 0);
        double d0 = t1s[0] - t0s[0], d1 = NT > 1 ? t1s[1] - t0s[1] : 0;
        ts[rep] = d0 > d1 ? d0 : d1;
    }
    for (int i = 0; i < 7; i++)
        for (int j = i + 1; j < 7; j++)
            if (ts[j] < ts[i]) { double x = ts[i]; ts[i] = ts[j]; ts[j] = x; }
    double t = ts[3];
    printf("%zu MiB K=%d: %.2f ms, %.2f GB/s, %.2f ns a line a thread (sink %g)\n", N >> 20, K,
           t * 1e3, N / t / 1e9, t * 1e9 / (N / 64 / NT), sink[0] + sink[1]);
}
