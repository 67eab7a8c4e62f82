/* embedding.c: embedding lookups (tokens; learned absolute positions and token types, added onto
 * the token embeddings) and their scatter-add backward. */
#include <string.h>

#include "kernels.h"

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    // out (N, C), ids (N), table (V, C)
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, table + (size_t)ids[n] * C, (size_t)C * sizeof(float));
}

void embedding_add_forward(float *out, const int32_t *ids, const float *table, int N, int C) {
    // out (N, C) +=, ids (N), table (V, C): GPT-2's wpe, BERT's position / token-type embeddings
#pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) {
        float *y = out + (size_t)n * C;
        const float *row = table + (size_t)ids[n] * C;
#pragma omp simd
        for (int c = 0; c < C; c++) y[c] += row[c];
    }
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
