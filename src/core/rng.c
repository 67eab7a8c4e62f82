/* rng.c: PCG32 (O'Neill, "PCG: A Family of Simple Fast Space-Efficient Statistically Good
 * Algorithms for Random Number Generation", 2014), XSH-RR output. */
#include "rng.h"

#include <math.h>

uint64_t peft_mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void peft_rng_seed(peft_rng *r, uint64_t seed, uint64_t stream) {
    r->state = 0;
    r->inc = (peft_mix64(stream) << 1) | 1u;
    peft_rng_u32(r);
    r->state += peft_mix64(seed);
    peft_rng_u32(r);
}

uint32_t peft_rng_u32(peft_rng *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ull + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

float peft_rng_uniform(peft_rng *r) { return (float)(peft_rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

float peft_rng_normal(peft_rng *r) {
    float u1 = peft_rng_uniform(r), u2 = peft_rng_uniform(r);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795864f * u2);
}

uint32_t peft_rng_below(peft_rng *r, uint32_t n) {
    /* Lemire's unbiased bounded integers via rejection on the low part. */
    uint64_t m = (uint64_t)peft_rng_u32(r) * n;
    uint32_t lo = (uint32_t)m;
    if (lo < n) {
        uint32_t threshold = (uint32_t)(-n) % n;
        while (lo < threshold) {
            m = (uint64_t)peft_rng_u32(r) * n;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}
