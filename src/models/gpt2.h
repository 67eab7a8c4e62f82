/* gpt2.h: GPT-2 as registered (src/models/registry.c); everything else is behind models/model.h. */
#ifndef PEFT_MODELS_GPT2_H
#define PEFT_MODELS_GPT2_H

#include "models/model.h"

extern const peft_arch peft_arch_gpt2;

#endif
