/* ia3.h: (IA)^3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and
 * Cheaper than In-Context Learning"), as HF PEFT's IA3Config:
 *   attention-type site:   y = (x W^T + b) * l     l = ia3_l [out, 1]
 *   feedforward site:      y = (x * l) W^T + b     l = ia3_l [1, in]
 * l starts at ones. A site is "feedforward" when its name matches an entry of
 * opts.feedforward_modules (the name itself or its last dotted components, like targets). */
#ifndef PEFT_METHODS_IA3_H
#define PEFT_METHODS_IA3_H

#include "methods/adapter.h"

extern const peft_method peft_method_ia3;

#endif
