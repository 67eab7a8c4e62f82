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
/* The scale s of a LoRA adapter (a->method == &peft_method_lora), its rank/alpha patterns applied. */
float lora_adapter_scale(const peft_adapter *a);

/* The low-rank term y += s * dropout(x) A^T B^T with dense A [r, in], B [out, r], shared by
 * the methods that assemble A and B differently (LoRA, NOLA, MoS). dropout is the rate in
 * effect (0 when not training); the mask comes from (step_seed, site_hash). */
typedef struct lowrank_term {
    const float *A, *B;
    float *dA, *dB;    /* gradients, accumulated */
    int in, r, out;
    float scale, dropout;
    uint64_t step_seed, site_hash;
} lowrank_term;
/* y[N,out] += s * ax B^T with ax[N,r] = dropout(x) A^T (kept for backward); buf [N,in] is scratch. */
void lowrank_forward(const lowrank_term *t, float *y, float *ax, const float *x, int N, float *buf);
/* dB += s dy^T ax, dA += g^T dropout(x) with g = s dy B, and dx += dropout'(g A) when dx is
 * non-NULL. g [N,r] and buf [N,in] are scratch. */
void lowrank_backward(const lowrank_term *t, float *dx, const float *dy, const float *x, const float *ax, int N, float *g,
                      float *buf);

/* PEFT's init of A [r, in]: nn.Linear's default (Kaiming-uniform with a = sqrt(5), i.e.
 * U(+-1/sqrt(in))), or N(0, 1/r) for init_lora_weights="gaussian"; seeded by (o->seed, site).
 * B starts at zero, so training starts at the base model. */
void lora_init_A(float *A, int r, int in, const peft_method_opts *o, uint64_t site_hash);

/* PEFT LoraConfig fields (r, lora_alpha, lora_dropout, use_rslora, init_lora_weights) into o;
 * returns 1 (not mine) when use_dora differs from want_dora (DoRA shares the config type). */
int lora_config_read_common(const struct cJSON *obj, peft_method_opts *o, int want_dora, const char *what, peft_err *err);

#endif
