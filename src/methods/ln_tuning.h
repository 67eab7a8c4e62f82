/* ln_tuning.h: LayerNorm tuning (Zhao et al., 2024, "Tuning LayerNorm in Attention: Towards
 * Efficient Multi-Modal LLM Finetuning"; HF PEFT's LN_TUNING): only the normalisation layers'
 * weights are trained — here every RMSNorm of the model (input_layernorm,
 * post_attention_layernorm, the final norm). HF PEFT's format: a trained copy of each norm,
 * key "base_model.model.<module>.ln_tuning_layers.weight". */
#ifndef PEFT_METHODS_LN_TUNING_H
#define PEFT_METHODS_LN_TUNING_H

#include "methods/adapter.h"

extern const peft_method peft_method_ln_tuning;

#endif
