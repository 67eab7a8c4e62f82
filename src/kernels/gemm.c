/* gemm.c: a general accumulating matrix product on top of BLAS (peft_sgemm, threads.c). */
#include <cblas.h>

#include "kernels.h"

void gemm_acc(float *c, const float *a, const float *b, int M, int N, int K, int trans_a, int trans_b, float alpha) {
    /* Row-major: lda is the stored row length of a, ldb that of b. */
    int lda = trans_a ? M : K, ldb = trans_b ? K : N;
    peft_sgemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, 1.0f, c, N);
}
