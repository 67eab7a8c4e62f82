/* crossentropy.c: softmax cross-entropy over the vocabulary, max-subtracted for stability.
 * Rows with a negative target (HF's -100) are ignored. Backward may run in place on the
 * logits buffer, which saves the N x V gradient buffer at the lm_head. */
#include <math.h>

#include "kernels.h"

/* max and log(sum(exp(x - max))) of one row; the sum is kept in double (V is ~32k-128k). */
static void row_logsumexp_(const float *x, int V, float *maxv, float *logsum) {
    float m = -INFINITY;
    for (int v = 0; v < V; v++) m = x[v] > m ? x[v] : m;
    double s = 0.0;
    for (int v = 0; v < V; v++) s += (double)expf(x[v] - m);
    *maxv = m;
    *logsum = (float)log(s);
}

int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    // losses (N), logits (N, V), targets (N)
    int count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        if (t < 0) {
            losses[n] = 0.0f;
            continue;
        }
        const float *x = logits + (size_t)n * V;
        float m, ls;
        row_logsumexp_(x, V, &m, &ls);
        losses[n] = (ls + m) - x[t];
        count++;
    }
    return count;
}

void crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, float scale, int N, int V) {
    // dlogits (N, V) += scale * (softmax(logits) - onehot(target)); may alias logits.
    // In place, every row is overwritten: counted rows with the gradient, ignored rows
    // with zeros (they still hold logits, which must not leak into the lm_head backward).
    if (!dlogits) return;
    int inplace = (const float *)dlogits == logits;
#pragma omp parallel for schedule(static) if ((size_t)N * V > 65536)
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        float *d = dlogits + (size_t)n * V;
        const float *x = logits + (size_t)n * V;
        if (t < 0) {
            if (inplace)
                for (int v = 0; v < V; v++) d[v] = 0.0f;
            continue;
        }
        float m, ls;
        row_logsumexp_(x, V, &m, &ls);
        float shift = m + ls;  // p = exp(x - shift)
        if (inplace) {
            for (int v = 0; v < V; v++) d[v] = scale * expf(x[v] - shift);
        } else {
            for (int v = 0; v < V; v++) d[v] += scale * expf(x[v] - shift);
        }
        d[t] -= scale;
    }
}
