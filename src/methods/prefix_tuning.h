/* prefix_tuning.h: prefix tuning (Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous
 * Prompts for Generation"): n_virtual trained keys and values are prepended to every
 * attention layer; the model is otherwise untouched. HF PEFT's PREFIX_TUNING format without
 * prefix_projection: "prompt_embeddings" [num_virtual_tokens, num_layers * 2 * token_dim],
 * token_dim = num_key_value_heads * head_dim (PEFT sizes the prefix by the kv heads). */
#ifndef PEFT_METHODS_PREFIX_TUNING_H
#define PEFT_METHODS_PREFIX_TUNING_H

#include "methods/adapter.h"

extern const peft_method peft_method_prefix_tuning;

#endif
