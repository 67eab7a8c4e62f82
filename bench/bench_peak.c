/* bench_peak: the CPU's arithmetic peak for matmul-style work, from the instructions themselves:
 * 12 independent accumulator chains of vfmadd231ps (f32 FMA, 32 flops per zmm instruction, 16 per
 * ymm one where the build has AVX2 + FMA but no AVX-512), of
 * vdpbf16ps (bf16 pairs -> f32, 64 flops per zmm instruction) and of vfmadd231ph (f16 FMA, 64
 * flops per zmm instruction), on every OpenMP thread. No memory traffic, so this is the ceiling
 * a GEMM can approach, not what one reaches.
 *
 *   bench_peak [--seconds 1]      one JSON line: f32_fma_gflops, bf16_dp_gflops, f16_fma_gflops,
 *                                 threads (0 for an instruction the build or CPU lacks)
 *
 * Why it exists (bench/README.md): on Intel Xeon model 207 (Emerald Rapids, AMX not exposed)
 * vdpbf16ps retires at half the rate of vfmadd231ps, so bf16 matmuls are slower than f32 ones
 * there, while vfmadd231ph retires at the f32 rate with twice the lanes (matmul_f16.c); AMD
 * Zen 5 runs vdpbf16ps at twice the f32 rate and has no AVX512-FP16. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

/* f32 FMA in the widest vectors the build has: zmm (AVX-512, 16 lanes) or ymm (AVX2 + FMA, 8 lanes:
 * AMD Zen 2/3, Intel client parts). */
#if defined(__AVX512F__)
#define FMA_LANES 16
typedef __m512 vf32;
#define VF_SET1 _mm512_set1_ps
#define VF_FMA _mm512_fmadd_ps
static float vf_sum(__m512 v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#define FMA_LANES 8
typedef __m256 vf32;
#define VF_SET1 _mm256_set1_ps
#define VF_FMA _mm256_fmadd_ps
static float vf_sum(__m256 v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

#ifdef FMA_LANES
/* iters x 12 FMA instructions; returns the sum so the work is not optimised away. */
static float fma_chains(long iters) {
#define Z(k) vf32 c##k = VF_SET1((float)(k)); /* distinct chains: no common subexpressions */
    CHAINS(Z)
    vf32 a = VF_SET1(1.0f + 1e-7f), b = VF_SET1(1e-7f);
    for (long i = 0; i < iters; i++) {
#define F(k) c##k = VF_FMA(a, b, c##k);
        CHAINS(F)
        __asm__ volatile("" : "+x"(a));
    }
#define S(k) +vf_sum(c##k)
    return 0.0f CHAINS(S);
}
#endif

#ifdef __AVX512BF16__
static float bf16_chains(long iters) {
    CHAINS(Z)
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    for (long i = 0; i < iters; i++) {
#define D(k) c##k = _mm512_dpbf16_ps(c##k, a, b);
        CHAINS(D)
        __asm__ volatile("" : "+v"(a));
    }
    return 0.0f CHAINS(S);
}
#endif

#ifdef __AVX512FP16__
static float f16_chains(long iters) {
#define H(k) __m512h h##k = _mm512_set1_ph((_Float16)(k));
    CHAINS(H)
    __m512h a = _mm512_set1_ph((_Float16)1.0f), b = _mm512_set1_ph((_Float16)1e-3f);
    for (long i = 0; i < iters; i++) {
#define HF(k) h##k = _mm512_fmadd_ph(a, b, h##k);
        CHAINS(HF)
        __asm__ volatile("" : "+v"(a));
    }
#define HS(k) +(float)_mm512_reduce_add_ph(h##k)
    return 0.0f CHAINS(HS);
}
#endif

/* GFLOP/s of fn over all threads, each running iters for about `seconds`. */
static double measure(float (*fn)(long), double flops_per_iter, double seconds) {
    long iters = 1000000;
    double t = now_s();
    volatile float sink = fn(iters);
    double dt = now_s() - t;
    iters = (long)(iters * seconds / (dt > 1e-6 ? dt : 1e-6));
    int nthr = 1;
    t = now_s();
#pragma omp parallel
    {
#ifdef _OPENMP
#pragma omp single
        nthr = omp_get_num_threads();
#endif
        sink += fn(iters);
    }
    dt = now_s() - t;
    (void)sink;
    return flops_per_iter * iters * nthr / dt / 1e9;
}

int main(int argc, char **argv) {
    double seconds = 1.0;
    for (int i = 1; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    double f32 = 0, bf16 = 0, f16 = 0;
#ifdef FMA_LANES
    f32 = measure(fma_chains, 12 * 2.0 * FMA_LANES, seconds);
#endif
#ifdef __AVX512BF16__
    bf16 = measure(bf16_chains, 12 * 64.0, seconds);
#endif
#ifdef __AVX512FP16__
    f16 = measure(f16_chains, 12 * 64.0, seconds);
#endif
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("{\"f32_fma_gflops\":%.1f,\"bf16_dp_gflops\":%.1f,\"f16_fma_gflops\":%.1f,\"threads\":%d}\n", f32, bf16, f16,
           threads);
    return 0;
}
