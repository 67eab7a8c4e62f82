/* hut.h: HUT, the Hadamard Updated Transformation (Zhang, Zhou and Chen, 2024, "HUT: A More
 * Computation Efficient Fine-Tuning Method With Hadamard Updated Transformation").
 *
 * HUT's "updated transformation" builds the new weight from the old one instead of adding an
 * independent increment; peft.c implements it as the Hadamard product of W with a low-rank
 * matrix built from two factors:
 *   W' = W ⊙ (1 + s B A),   i.e.   y = x W^T + b + s * dropout(x) (W ⊙ (B A))^T,
 * A [r, in], B [out, r], s = alpha / r (alpha / sqrt(r) with rsLoRA). A starts as LoRA's A,
 * B at zero, so training starts at the base model. Mergeable (unmerge divides by 1 + s B A). */
#ifndef PEFT_METHODS_HUT_H
#define PEFT_METHODS_HUT_H

#include "methods/adapter.h"

extern const peft_method peft_method_hut;

#endif
