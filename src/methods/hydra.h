/* hydra.h: Hydra (Kim, Lee and Park, 2024, "Hydra: Multi-head Low-rank Adaptation for
 * Parameter Efficient Fine-tuning"): a parallel low-rank branch on the site's input plus a
 * sequential low-rank branch on the frozen layer's output, both trained:
 *   y = x W^T + b + s * (xd A_p^T) B_p^T + s * ((xd W^T) A_s^T) B_s^T,   xd = dropout(x),
 * A_p [r, in], B_p [out, r], A_s [r, out], B_s [out, r], s = alpha / r (or alpha / sqrt(r)).
 * The sequential branch reads W x without the bias, so the function folds into W:
 *   W' = W + s B_p A_p + s B_s (A_s W).
 * Init: A_p, A_s as LoRA's A (separate streams), B_p = B_s = 0 (training starts at the base). */
#ifndef PEFT_METHODS_HYDRA_H
#define PEFT_METHODS_HYDRA_H

#include "methods/adapter.h"

extern const peft_method peft_method_hydra;

#endif
