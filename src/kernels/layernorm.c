/* layernorm.c: LayerNorm with optional affine weight and bias (GPT-2, BERT/RoBERTa, ViT: HF
 * nn.LayerNorm, computed in f32) and its backward.
 *   y = xhat * weight + bias,  xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var(x) + eps)
 * var is the biased (population) variance, as torch's layer_norm. The mean and variance are
 * taken in two passes (mean first, then the centred squares) so a large common offset in a row
 * does not cancel. Forward saves mean and rstd per row for the backward. */
#include <math.h>

#include "kernels.h"

#define ROW_PAR_MIN 16384 /* elements; smaller problems run on one thread */

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                       float eps, int N, int C) {
    // out (N, C), mean (N) or NULL, rstd (N) or NULL, inp (N, C), weight (C) or NULL, bias (C) or NULL
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < C; i++) s += x[i];
        const float m = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        const float r = 1.0f / sqrtf(v / (float)C + eps);
        for (int i = 0; i < C; i++) {
            const float xh = (x[i] - m) * r;
            y[i] = (weight ? xh * weight[i] : xh) + (bias ? bias[i] : 0.0f);
        }
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = r;
    }
}

void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, const float *mean, const float *rstd, int N, int C) {
    // dinp (N, C) +=, dweight (C) +=, dbias (C) +=; dout, inp (N, C), weight (C) or NULL, mean, rstd (N)
    // With g = weight * dout and xhat = (x - mean) * r:
    //   dx = r * (g - mean(g) - xhat * mean(g * xhat))
    //   dweight += dout * xhat,  dbias += dout
    if (dinp) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            const float m = mean[n], r = rstd[n];
            float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int i = 0; i < C; i++) {
                const float g = weight ? weight[i] * dy[i] : dy[i];
                sg += g;
                sgx += g * (x[i] - m) * r;
            }
            const float mg = sg / (float)C, mgx = sgx / (float)C;
            for (int i = 0; i < C; i++) {
                const float g = weight ? weight[i] * dy[i] : dy[i];
                dx[i] += r * (g - mg - (x[i] - m) * r * mgx);
            }
        }
    }
    if (dweight || dbias) {
        // sums over rows: threads own disjoint column blocks, so no reduction races
#pragma omp parallel for schedule(static) if ((size_t)N * C > ROW_PAR_MIN)
        for (int c0 = 0; c0 < C; c0 += 64) {
            const int c1 = c0 + 64 < C ? c0 + 64 : C;
            float aw[64] = {0}, ab[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
                const float m = mean[n], r = rstd[n];
                for (int i = c0; i < c1; i++) {
                    aw[i - c0] += dy[i] * ((x[i] - m) * r);
                    ab[i - c0] += dy[i];
                }
            }
            for (int i = c0; i < c1; i++) {
                if (dweight) dweight[i] += aw[i - c0];
                if (dbias) dbias[i] += ab[i - c0];
            }
        }
    }
}
