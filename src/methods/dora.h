/* dora.h: DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"), as HF PEFT's
 * LoraConfig(use_dora=True) computes it:
 *   V = W + s B A                     [out, in]   (s = alpha / r, or alpha / sqrt(r) with rsLoRA)
 *   n = ||V||_row                     [out]       DETACHED: no gradient flows through the norm
 *   y = x W^T + b + (m/n - 1) (xd W^T) + (m/n) s (xd A^T B^T)
 * which equals b + (m/n) * (x V^T) when dropout is off (xd = dropout(x)).
 * m = lora_magnitude_vector [out], initialised to ||W + s B A||_row = ||W||_row (B = 0). */
#ifndef PEFT_METHODS_DORA_H
#define PEFT_METHODS_DORA_H

#include "methods/adapter.h"

extern const peft_method peft_method_dora;

#endif
