/* prompt_tuning.h: prompt tuning (Lester et al., 2021, "The Power of Scale for
 * Parameter-Efficient Prompt Tuning"): n_virtual trainable embeddings stand before every
 * sequence; the model is otherwise untouched. HF PEFT's PROMPT_TUNING format: the tensor
 * "prompt_embeddings" [num_virtual_tokens, token_dim]. */
#ifndef PEFT_METHODS_PROMPT_TUNING_H
#define PEFT_METHODS_PROMPT_TUNING_H

#include "methods/adapter.h"

extern const peft_method peft_method_prompt_tuning;

#endif
