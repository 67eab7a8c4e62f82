/* rmsnorm.c: Llama's RMSNorm (HF LlamaRMSNorm, computed in f32) and its backward.
 *   y = (weight + offset) * (x * rstd),  rstd = 1 / sqrt(mean(x^2) + eps)
 * offset is 0 (Llama) or 1 (GemmaRMSNorm's x * (1 + w)); the weight's gradient is the same.
 * Forward saves rstd per row; backward uses it, so nothing is recomputed but one dot. */
#include <math.h>

#include "kernels.h"

#define ROW_PAR_MIN 16384 /* elements; smaller problems run on one thread */

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, float eps, int N, int C) {
    rmsnorm_offset_forward(out, rstd, inp, weight, 0.0f, eps, N, C);
}

void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                      const float *rstd, int N, int C) {
    rmsnorm_offset_backward(dinp, dweight, dout, inp, weight, 0.0f, rstd, N, C);
}

void rmsnorm_offset_forward(float *out, float *rstd, const float *inp, const float *weight, float offset, float eps, int N,
                            int C) {
    // out (N, C), rstd (N), inp (N, C), weight (C)
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        for (int i = 0; i < C; i++) y[i] = (weight[i] + offset) * (x[i] * r);
        if (rstd) rstd[n] = r;
    }
}

void rmsnorm_offset_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             float offset, const float *rstd, int N, int C) {
    // dinp (N, C) +=, dweight (C) +=, dout (N, C), inp (N, C), weight (C), rstd (N)
    // With g = (weight + offset) * dout and xhat = x * r:
    //   dx = r * g - r^3 / C * x * sum(g * x) = r * (g - xhat * mean(g * xhat))
    //   dweight += dout * xhat
    if (dinp) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float r = rstd[n];
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int i = 0; i < C; i++) dot += (weight[i] + offset) * dy[i] * x[i];
            float c = dot * r * r / (float)C;  // mean(g * xhat) / r
            for (int i = 0; i < C; i++) dx[i] += r * ((weight[i] + offset) * dy[i] - x[i] * c);
        }
    }
    if (dweight) {
        // sum over rows: threads own disjoint column blocks, so no reduction races
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
        for (int c0 = 0; c0 < C; c0 += 64) {
            int c1 = c0 + 64 < C ? c0 + 64 : C;
            float acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C;
                const float *dy = dout + (size_t)n * C;
                float r = rstd[n];
                for (int i = c0; i < c1; i++) acc[i - c0] += dy[i] * (x[i] * r);
            }
            for (int i = c0; i < c1; i++) dweight[i] += acc[i - c0];
        }
    }
}
