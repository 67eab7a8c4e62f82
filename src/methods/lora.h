/* lora.h: LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and
 * rsLoRA (Kalajdzievski, 2023): y = x W^T + b + s * dropout(x) A^T B^T,
 * A [r, in], B [out, r], s = alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA). */
#ifndef PEFT_METHODS_LORA_H
#define PEFT_METHODS_LORA_H

#include "methods/adapter.h"

extern const peft_method peft_method_lora;

#endif
