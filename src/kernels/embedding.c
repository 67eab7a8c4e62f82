/* embedding.c: token embedding lookup and its scatter-add backward. */
#include <string.h>

#include "kernels.h"

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    // out (N, C), ids (N), table (V, C)
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof(float));
}

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int C) {
    // dtable (V, C) +=, dout (N, C), ids (N)
    // Repeated ids would race if threads split rows, so threads split columns instead.
    if (!dtable) return;
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int c0 = 0; c0 < C; c0 += 64) {
        int c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int n = 0; n < N; n++) {
            float *dst = dtable + (size_t)ids[n] * C;
            const float *src = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}
