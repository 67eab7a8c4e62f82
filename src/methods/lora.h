/* lora.h: LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and
 * rsLoRA (Kalajdzievski, 2023): y = x W^T + b + s * dropout(x) A^T B^T,
 * A [r, in], B [out, r], s = alpha / r (LoRA) or alpha / sqrt(r) (rsLoRA). */
#ifndef PEFT_METHODS_LORA_H
#define PEFT_METHODS_LORA_H

#include "methods/adapter.h"

extern const peft_method peft_method_lora;

/* The checks every low-rank method makes in create: rank in [1, min(in, out)], dropout in
 * [0, 1). `method` names it in the message. */
int lowrank_check_opts(const peft_method_opts *o, const peft_site *s, const char *method, peft_err *err);
/* alpha / r, or alpha / sqrt(r) with rsLoRA. */
float lowrank_scale(const peft_method_opts *o);

/* PEFT's init of A [r, in]: nn.Linear's default (Kaiming-uniform with a = sqrt(5), i.e.
 * U(+-1/sqrt(in))), or N(0, 1/r) for init_lora_weights="gaussian"; seeded by (o->seed, site).
 * B starts at zero, so training starts at the base model. */
void lora_init_A(float *A, int r, int in, const peft_method_opts *o, uint64_t site_hash);

/* PEFT LoraConfig fields (r, lora_alpha, lora_dropout, use_rslora, init_lora_weights) into o;
 * returns 1 (not mine) when use_dora differs from want_dora (DoRA shares the config type). */
int lora_config_read_common(const struct cJSON *obj, peft_method_opts *o, int want_dora, const char *what, peft_err *err);

#endif
