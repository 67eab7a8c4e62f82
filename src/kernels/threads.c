/* threads.c: one thread pool for the whole step (issue 5, item 3).
 *
 * libpeft mixes OpenMP regions (attention, bf16 matmuls, row ops) with OpenBLAS's own pthread
 * pool. On a small machine both pools have one thread per core; when a libgomp worker spins
 * after its region (OMP_WAIT_POLICY active, the default) it steals the core from the OpenBLAS
 * thread that runs next, and vice versa (sched_yield storms). peft_threads_init() makes OpenMP
 * the only pool: OpenBLAS runs single-threaded and peft_sgemm splits each product over the
 * OpenMP team itself (rows of C, or columns when C has few rows), one cblas_sgemm per thread on
 * a disjoint block of C. Without peft_threads_init() peft_sgemm is exactly cblas_sgemm.
 *
 * The split does not change any element's K-order of summation, so results are those of the
 * single-threaded sgemm on the same block (OpenBLAS's kernels do not depend on the M/N split in
 * practice, but this is not a documented guarantee, hence opt-in). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

static int single_pool_ = 0;

const char *peft_blas_core(void) { return openblas_get_corename(); }

/* OpenBLAS's runtime CPU detection falls back to its SSE3 "Prescott" kernels on CPUs newer than
 * its tables (Debian 12's 0.3.21 on Intel family 6 model 207, Emerald Rapids): sgemm then runs at
 * a quarter of the AVX-512 kernels' speed (63 vs 272 GFLOP/s on 2 cores, bench/README.md). */
static int blas_core_is_fallback(void) {
    static const char *fallbacks[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge"};
    const char *core = peft_blas_core();
    for (size_t i = 0; core && i < sizeof fallbacks / sizeof fallbacks[0]; i++)
        if (!strcmp(core, fallbacks[i])) return 1;
    return 0;
}

static int cpu_has_avx512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

void peft_runtime_reexec(char **argv) {
    int changed = 0;
    if (!getenv("OMP_WAIT_POLICY")) changed |= !setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    if (!getenv("OPENBLAS_CORETYPE") && cpu_has_avx512() && blas_core_is_fallback())
        changed |= !setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    if (changed) execv("/proc/self/exe", argv);  // returns only on failure: run on as we are
}

int peft_threads_init(int nthreads) {
#ifdef _OPENMP
    if (nthreads > 0) omp_set_num_threads(nthreads);
    nthreads = omp_get_max_threads();
#else
    nthreads = 1;
#endif
    openblas_set_num_threads(1);
    single_pool_ = 1;
    return nthreads;
}

int peft_threads_single_pool(void) { return single_pool_; }

#define SPLIT_ALIGN 16 /* block edges on multiples of 16 rows/columns (sgemm register tiles) */

void peft_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *a, int lda, const float *b,
                int ldb, float beta, float *c, int ldc) {
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    int nthr = 1;
#ifdef _OPENMP
    if (single_pool_ && !omp_in_parallel()) nthr = omp_get_max_threads();
#endif
    // Split the longer side of C: every thread packs all of the other operand (OpenBLAS packs
    // both per call), so splitting rows of a wide C (the 256 x 49152 loss-head chunk) would pack
    // the whole weight once per thread. Only when each thread gets a reasonable block (>= 32
    // rows or columns and >= 1 MFLOP).
    const int split_m = M >= N && M >= 32 * nthr, split_n = !split_m && N >= 32 * nthr;
    if (nthr <= 1 || (!split_m && !split_n) || (double)M * N * K < 1e6 * nthr) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    const int len = split_m ? M : N;
#pragma omp parallel num_threads(nthr)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
        int chunk = (len + nt - 1) / nt;
        chunk = (chunk + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
        const int i0 = t * chunk, i1 = i0 + chunk < len ? i0 + chunk : len;
        if (i0 < i1) {
            if (split_m) {  // rows i0..i1 of C = rows of op(a)
                const float *ab = trans_a ? a + i0 : a + (size_t)i0 * lda;
                cblas_sgemm(CblasRowMajor, ta, tb, i1 - i0, N, K, alpha, ab, lda, b, ldb, beta, c + (size_t)i0 * ldc,
                            ldc);
            } else {  // columns i0..i1 of C = columns of op(b)
                const float *bb = trans_b ? b + (size_t)i0 * ldb : b + i0;
                cblas_sgemm(CblasRowMajor, ta, tb, M, i1 - i0, K, alpha, a, lda, bb, ldb, beta, c + i0, ldc);
            }
        }
    }
}
