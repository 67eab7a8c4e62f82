/* sampler.h: choosing the next token from logits: greedy, temperature, nucleus (top-p). */
#ifndef PEFT_MODELS_SAMPLER_H
#define PEFT_MODELS_SAMPLER_H

#include "rng.h"

/* temperature <= 0: argmax (ties -> lowest id). Otherwise softmax(logits / temperature),
 * restricted to the smallest set of most likely tokens whose mass reaches top_p (top_p >= 1
 * keeps all). scratch[V] is work space. logits[V] is overwritten. Returns the id, or -1 when a
 * logit is NaN or infinite (nothing can be sampled from them). */
typedef struct sample_candidate {
    float prob;
    int id;
} sample_candidate;
int sample_next(float *logits, int V, float temperature, float top_p, peft_rng *rng, sample_candidate *scratch);

#endif
