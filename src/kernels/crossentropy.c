/* crossentropy.c: softmax cross-entropy over the vocabulary, max-subtracted for stability.
 * Rows with a negative target (HF's -100) are ignored. Backward may run in place on the
 * logits buffer, which saves the N x V gradient buffer at the lm_head; crossentropy_fused
 * does both in one sweep for a chunk of rows (the model's chunked LM head, models/llama.c), and
 * crossentropy_softcap_fused also applies Gemma2's final-logit soft-capping in that sweep.
 * exp is vexp.h's AVX-512 polynomial where available. */
#include <math.h>

#include "kernels.h"
#include "vexp.h"

#define XENT_PAR_MIN 65536

/* max and log(sum(exp(x - max))) of one row; partial sums of 1024 terms are added in double
 * (V is ~32k-152k). */
static void row_logsumexp_(const float *x, int V, float *maxv, float *logsum) {
    float m = -INFINITY;
    int v = 0;
#ifdef __AVX512F__
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; v + 16 <= V; v += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + v));
    m = _mm512_reduce_max_ps(vm);
#endif
    for (; v < V; v++) m = x[v] > m ? x[v] : m;
    double s = 0.0;
    v = 0;
#ifdef __AVX512F__
    const __m512 mm = _mm512_set1_ps(m);
    while (v + 16 <= V) {
        __m512 acc = _mm512_setzero_ps();
        for (int end = v + 1024 < V ? v + 1024 : V; v + 16 <= end; v += 16)
            acc = _mm512_add_ps(acc, exp512(_mm512_sub_ps(_mm512_loadu_ps(x + v), mm)));
        s += _mm512_reduce_add_ps(acc);
    }
#endif
    for (; v < V; v++) s += (double)expf(x[v] - m);
    *maxv = m;
    *logsum = (float)log(s);
}

/* d[v] (= or +=) scale * exp(x[v] - shift); d may alias x when not accumulating. */
static void row_scaled_softmax_(float *d, const float *x, int V, float shift, float scale, int accumulate) {
    int v = 0;
#ifdef __AVX512F__
    const __m512 vs = _mm512_set1_ps(shift), vc = _mm512_set1_ps(scale);
    for (; v + 16 <= V; v += 16) {
        __m512 p = _mm512_mul_ps(vc, exp512(_mm512_sub_ps(_mm512_loadu_ps(x + v), vs)));
        _mm512_storeu_ps(d + v, accumulate ? _mm512_add_ps(p, _mm512_loadu_ps(d + v)) : p);
    }
#endif
    for (; v < V; v++) d[v] = (accumulate ? d[v] : 0.0f) + scale * expf(x[v] - shift);
}

int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    // losses (N), logits (N, V), targets (N)
    int count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if ((size_t)N * V > XENT_PAR_MIN)
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
#pragma omp parallel for schedule(static) if ((size_t)N * V > XENT_PAR_MIN)
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
        row_scaled_softmax_(d, x, V, m + ls, scale, !inplace);
        d[t] -= scale;
    }
}

/* Soft-capped row, in place: on entry x[V] holds the capped logits c (x[t] = c_t), on exit
 * x[v] = scale * (softmax(c)[v] - onehot(t)[v]) * (1 - (c[v] / cap)^2), the gradient with respect
 * to the raw logits. shift = max + log(sum exp(c - max)). */
static void row_softcap_grad_(float *x, int V, int t, float shift, float scale, float cap) {
    const float ct = x[t], ic = 1.0f / cap;
    int v = 0;
#ifdef __AVX512F__
    const __m512 vs = _mm512_set1_ps(shift), vc = _mm512_set1_ps(scale), vi = _mm512_set1_ps(ic);
    for (; v + 16 <= V; v += 16) {
        const __m512 c = _mm512_loadu_ps(x + v), u = _mm512_mul_ps(c, vi);
        const __m512 p = _mm512_mul_ps(vc, exp512(_mm512_sub_ps(c, vs)));
        _mm512_storeu_ps(x + v, _mm512_mul_ps(p, _mm512_fnmadd_ps(u, u, _mm512_set1_ps(1.0f))));
    }
#endif
    for (; v < V; v++) {
        const float u = x[v] * ic;
        x[v] = scale * expf(x[v] - shift) * (1.0f - u * u);
    }
    x[t] -= scale * (1.0f - ct * ic * ct * ic);
}

int crossentropy_fused(float *losses, float *logits, const int32_t *targets, float scale, int N, int V) {
    return crossentropy_softcap_fused(losses, logits, targets, 0.0f, scale, N, V);
}

int crossentropy_softcap_fused(float *losses, float *logits, const int32_t *targets, float cap, float scale, int N,
                               int V) {
    // losses (N), logits (N, V) in: raw logits, out: d(scale * sum losses) / d logits
    int count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if ((size_t)N * V > XENT_PAR_MIN)
    for (int n = 0; n < N; n++) {
        int t = targets[n];
        float *x = logits + (size_t)n * V;
        if (t < 0) {
            losses[n] = 0.0f;
            for (int v = 0; v < V; v++) x[v] = 0.0f;
            continue;
        }
        if (cap > 0.0f) softcap_span_(x, NULL, x, 1.0f, cap, (size_t)V);  // x = cap * tanh(x / cap)
        float m, ls;
        row_logsumexp_(x, V, &m, &ls);
        losses[n] = (ls + m) - x[t];
        count++;
        if (cap > 0.0f) {
            row_softcap_grad_(x, V, t, m + ls, scale, cap);
        } else {
            row_scaled_softmax_(x, x, V, m + ls, scale, 0);
            x[t] -= scale;
        }
    }
    return count;
}
