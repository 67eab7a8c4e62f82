/* lisa.h: LISA (Pan et al., 2024, "LISA: Layerwise Importance Sampling for Memory-Efficient
 * Large Language Model Fine-Tuning"; LMFlow's DynamicLayerActivationCallback): full-parameter
 * AdamW on gamma decoder layers at a time. Every K updates (a period) gamma of the L layers
 * are drawn uniformly without replacement from the seeded stream (seed, period); their
 * linear weights, biases and two RMSNorm weights are trained in place in the model's own f32
 * weights, every other layer stays frozen (bit for bit). Gradients and AdamW moments exist
 * for gamma layers only; the optimizer starts afresh every period (LMFlow keeps stale moments
 * of every layer it ever trained, which would cost full fine-tuning's optimizer memory).
 *
 * On the adapter interface: one adapter per linear site of the layers (target all-linear).
 * Its params() are the site's own weight and bias, plus the norm feeding the site for q_proj
 * (input_layernorm) and gate_proj (post_attention_layernorm), while its layer is active, and
 * nothing otherwise; begin_step switches the period. Gradients go to the set's slots, shared
 * tensors "lisa.grad.<module kind>" [gamma, ...] (slot j: the period's j-th layer, ascending).
 * There is no adapter file: the output is the fine-tuned model (trains_base). */
#ifndef PEFT_METHODS_LISA_H
#define PEFT_METHODS_LISA_H

#include <stdint.h>

#include "methods/adapter.h"

extern const peft_method peft_method_lisa;

/* The place (0 .. gamma-1) of `layer` among the gamma of n_layers layers sampled for `period`
 * (ascending), or -1 when it is not sampled. A pure function of its arguments. */
int lisa_layer_slot(uint64_t seed, long period, int n_layers, int gamma, int layer);

#endif
