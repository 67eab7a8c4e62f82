/* sara.h: sparse tuning of the smallest weights (after Hu et al., 2024, "SaRA: High-Efficient
 * Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation", which trains the
 * parameters of smallest absolute value; the progressive re-selection and the nuclear-norm
 * low-rank constraint of the paper are not implemented).
 * At create, the k = max(1, floor(p * out * in + 0.5)) entries of W with the smallest |w|
 * are chosen (ties by flat row-major index, so the choice is deterministic), p =
 * opts.init_scale (the "trainable_fraction"); their deltas are trained:
 *   y = x W^T + b + dropout(x) D^T,   D [out, in] zero except D[idx[j]] = delta[j].
 * peft_type "SARA", key "<site>.sara_delta" [k] (indices ascending row-major). */
#ifndef PEFT_METHODS_SARA_H
#define PEFT_METHODS_SARA_H

#include <stddef.h>
#include <stdint.h>

#include "methods/adapter.h"

extern const peft_method peft_method_sara;

/* The chosen flat indices (row-major into W [out, in], ascending) of a SaRA adapter and
 * their count; NULL when `a` is not one. */
const int32_t *sara_indices(const peft_adapter *a, size_t *k);

/* The selection rule on its own: the k entries of w [n] with smallest |w| (ties: lower
 * index first), written ascending into idx [k]. Returns 0, or -1 when out of memory. */
int sara_select(const float *w, size_t n, size_t k, int32_t *idx);

#endif
