/* rng.h: a small, explicit, seedable random generator (PCG32 with a SplitMix64 seeder).
 * State lives in the caller's struct (no globals), so a training run's RNG can be saved in
 * a checkpoint and restored for an exact resume. */
#ifndef PEFT_CORE_RNG_H
#define PEFT_CORE_RNG_H

#include <stdint.h>

typedef struct peft_rng {
    uint64_t state;
    uint64_t inc;
} peft_rng;

/* Seeds a stream; different `stream` values give independent sequences for one seed. */
void peft_rng_seed(peft_rng *r, uint64_t seed, uint64_t stream);
uint32_t peft_rng_u32(peft_rng *r);
/* Uniform in [0, 1) with 24 random bits (exactly representable as float). */
float peft_rng_uniform(peft_rng *r);
/* Standard normal (Box-Muller). */
float peft_rng_normal(peft_rng *r);
/* Uniform integer in [0, n). */
uint32_t peft_rng_below(peft_rng *r, uint32_t n);
/* SplitMix64 finaliser: a well-mixed 64-bit hash of x (derives seeds from seeds). */
uint64_t peft_mix64(uint64_t x);

#endif
