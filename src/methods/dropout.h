/* dropout.h: the adapters' input dropout, shared by the low-rank methods.
 * A mask element is a hash of (step seed, site, element index), so backward regenerates
 * the forward's mask instead of storing an N x in mask per site, and a resumed run draws
 * the same masks as an uninterrupted one. */
#ifndef PEFT_METHODS_DROPOUT_H
#define PEFT_METHODS_DROPOUT_H

#include <stddef.h>
#include <stdint.h>

/* A stable 64-bit hash of a site's name (FNV-1a): seeds its initialisation and masks. */
uint64_t peft_site_hash(const char *name);

/* out[i] = in[i] * f(i) (accumulate 0) or out[i] += in[i] * f(i) (accumulate 1), i < count,
 * where f(i) is 0 with probability p and 1/(1-p) otherwise. */
void peft_dropout_apply(float *out, const float *in, size_t count, float p, uint64_t step_seed, uint64_t site_hash,
                        int accumulate);

#endif
