// decodelab's stream-read loop (src/backend/cpu/vector/stream.rs, x86::read) in C, two OpenMP threads:
//   ./read2 MiB chunk_KiB mode   mode 0: a half of the buffer a thread; 1: chunks dealt in turn.
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <omp.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx2"),noinline)) unsigned rd(const char*p,size_t n){
  __m256i a0=_mm256_setzero_si256(),a1=a0,a2=a0,a3=a0;
  for(size_t i=0;i<n;i+=128){a0=_mm256_add_epi32(a0,_mm256_loadu_si256((const __m256i*)(p+i)));a1=_mm256_add_epi32(a1,_mm256_loadu_si256((const __m256i*)(p+i+32)));a2=_mm256_add_epi32(a2,_mm256_loadu_si256((const __m256i*)(p+i+64)));a3=_mm256_add_epi32(a3,_mm256_loadu_si256((const __m256i*)(p+i+96)));}
  __m256i v=_mm256_add_epi32(_mm256_add_epi32(a0,a1),_mm256_add_epi32(a2,a3)); unsigned l[8]; _mm256_storeu_si256((__m256i*)l,v); return l[0]+l[7];
}
int main(int c,char**v){size_t N=(size_t)atol(v[1])<<20; char*b=aligned_alloc(2<<20,N); madvise(b,N,MADV_HUGEPAGE); memset(b,1,N);
 size_t CH=atol(v[2])<<10; int mode=atoi(v[3]); unsigned s=0;
 for(int r=0;r<5;r++){double t=now();
  #pragma omp parallel num_threads(2) reduction(+:s)
  { int id=omp_get_thread_num();
    if(mode==0){ size_t h=N/2; for(size_t o=id*h;o<(id+1)*h;o+=CH) s+=rd(b+o,CH);} 
    else { for(size_t o=id*CH;o<N;o+=2*CH) s+=rd(b+o,CH);} }
  t=now()-t; printf("%.2f GB/s\n",N/t/1e9);} return s==7;}
