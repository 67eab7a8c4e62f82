/* dropout.c: hashed, regenerable dropout masks. */
#include "dropout.h"

#include "rng.h"

uint64_t peft_site_hash(const char *name) {
    uint64_t h = 1469598103934665603ull;
    while (*name) h = (h ^ (unsigned char)*name++) * 1099511628211ull;
    return h;
}

void peft_dropout_apply(float *out, const float *in, size_t count, float p, uint64_t step_seed, uint64_t site_hash,
                        int accumulate) {
    uint64_t seed = peft_mix64(step_seed ^ site_hash);
    float keep = 1.0f / (1.0f - p);
#pragma omp parallel for
    for (size_t i = 0; i < count; i++) {
        float u = (float)(peft_mix64(seed + i) >> 40) * (1.0f / 16777216.0f); /* 24 random bits */
        float v = u >= p ? in[i] * keep : 0.0f;
        out[i] = accumulate ? out[i] + v : v;
    }
}
