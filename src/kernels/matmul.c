/* matmul.c: the dense layer out = inp @ weight^T + bias, and its backward, on OpenBLAS.
 * weight uses nn.Linear's layout [OC, C], so both passes are single sgemm calls with
 * beta = 1 for the accumulating gradients. BLAS does its own threading (or, after
 * peft_threads_init, peft_sgemm splits over the OpenMP team); these functions must not be
 * called from inside an OpenMP parallel region. */
#include <cblas.h>
#include <string.h>

#include "kernels.h"

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int C, int OC) {
    // out (N, OC), inp (N, C), weight (OC, C), bias (OC) or NULL
    if (N <= 0 || OC <= 0) return;
    float beta = 0.0f;
    if (bias) {
        // seed every row with the bias, then let sgemm add the product onto it
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    if (C <= 0) {
        if (!bias) memset(out, 0, (size_t)N * OC * sizeof(float));
        return;
    }
    peft_sgemm(0, 1, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void matmul_fill_bias(float *out, const float *bias, int N, int ncol) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < ncol; o++) out[(size_t)n * ncol + o] = bias ? bias[o] : 0.0f;
}

void matmul_rounded_sgemm(float *out, const float *a, const float *bt, const float *bias, int N, int K, int ncol,
                          int acc_mode) {
    float beta = acc_mode ? 1.0f : 0.0f;
    if (!acc_mode && bias) {
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * ncol, bias, (size_t)ncol * sizeof(float));
        beta = 1.0f;
    }
    peft_sgemm(0, 1, N, ncol, K, 1.0f, a, K, bt, K, beta, out, ncol);
}

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int C, int OC) {
    // dinp (N, C), dweight (OC, C), dbias (OC): all accumulate; dout (N, OC)
    if (N <= 0 || OC <= 0) return;
    if (dinp && C > 0) {
        // dinp (N,C) += dout (N,OC) @ weight (OC,C)
        peft_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    }
    if (dweight && C > 0) {
        // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
        peft_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    }
    if (dbias) {
        // column sums of dout; threads own disjoint column ranges, rows are read in order
#pragma omp parallel for schedule(static) if ((size_t)N * OC > 65536)
        for (int o0 = 0; o0 < OC; o0 += 64) {
            int o1 = o0 + 64 < OC ? o0 + 64 : OC;
            float acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *row = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++) acc[o - o0] += row[o];
            }
            for (int o = o0; o < o1; o++) dbias[o] += acc[o - o0];
        }
    }
}
