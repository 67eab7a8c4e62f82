/* sampler.c: greedy / temperature / top-p sampling. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int cmp_desc(const void *a, const void *b) {
    const sample_candidate *x = a, *y = b;
    return x->prob < y->prob ? 1 : x->prob > y->prob ? -1 : x->id - y->id;
}

int sample_next(float *logits, int V, float temperature, float top_p, peft_rng *rng, sample_candidate *scratch) {
    for (int i = 0; i < V; i++)
        if (!isfinite(logits[i])) return -1; /* NaN/Inf would make every comparison below meaningless */
    if (temperature <= 0.0f) return argmax(logits, V);
    float mx = logits[argmax(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        logits[i] = expf((logits[i] - mx) / temperature);
        sum += logits[i];
    }
    /* sum >= 1 (the argmax contributes exp(0)); the argmax's probability is pmax */
    for (int i = 0; i < V; i++) logits[i] = (float)(logits[i] / sum);
    const float pmax = (float)(1.0 / sum);
    int n = V;
    sample_candidate *order = scratch;
    if (top_p < 1.0f) {
        /* Keep candidates with p >= (1 - top_p) / (V - 1) first: anything smaller cannot be
         * in the nucleus (llama2.c's trick), which keeps the sort short. The nucleus always
         * holds the most likely token, even when top_p < 1/V puts the cutoff above every
         * probability: so the cutoff is at most pmax and at least one candidate survives. */
        float cutoff = fminf((1.0f - top_p) / (float)(V > 1 ? V - 1 : 1), pmax);
        n = 0;
        for (int i = 0; i < V; i++)
            if (logits[i] >= cutoff) order[n++] = (sample_candidate){logits[i], i};
        qsort(order, (size_t)n, sizeof *order, cmp_desc);
        double mass = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            mass += order[i].prob;
            if (mass >= top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        double r = peft_rng_uniform(rng) * mass, acc = 0;
        for (int i = 0; i < n; i++) {
            acc += order[i].prob;
            if (r < acc) return order[i].id;
        }
        return order[n - 1].id;
    }
    double r = peft_rng_uniform(rng), acc = 0;
    for (int i = 0; i < V; i++) {
        acc += logits[i];
        if (r < acc) return i;
    }
    return V - 1;
}
