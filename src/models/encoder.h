/* encoder.h: the LayerNorm transformer encoder layer that BERT/RoBERTa (post-LN) and ViT (pre-LN)
 * share: bidirectional multi-head attention with key padding, separate q/k/v sites and an output
 * dense, a GELU MLP, LayerNorms with bias.
 *
 *   post-LN (BERT):  h = LN1(x + o(attn(q(x), k(x), v(x))));  out = LN2(h + down(gelu(up(h))))
 *   pre-LN  (ViT):   r = x + o(attn(q(a), k(a), v(a))), a = LN1(x);  out = r + down(gelu(up(LN2(r))))
 *
 * Contract (stable: ViT builds on it)
 *  - The caller owns the sites and norm sites (its own HF names) and points a layer at them.
 *    Every linear layer runs through site_forward / site_backward, so attached adapters add
 *    their terms; a norm site's weight/bias are those in use, and when its grad / bias_grad are
 *    non-NULL (LayerNorm tuning) backward accumulates into them.
 *  - Rows are N = B*T tokens laid out [B, T, C]; lengths[B] (or NULL: all T) masks the keys of
 *    each row's padding. Padding rows are computed but never seen by valid rows: their attention
 *    output is 0 and they pass no gradient through attention.
 *  - encoder_layer_forward with save keeps what backward needs in `acts` (one per layer when
 *    every layer is kept; with gradient checkpointing the caller keeps each layer's input and
 *    runs forward again with save = 1 into one scratch acts right before that layer's backward).
 *  - encoder_layer_backward overwrites dx with the input gradient (dx must not alias dout) and
 *    accumulates adapter / norm gradients; it uses the scratch `g`.
 *  - Both return PEFT_OK, or PEFT_ENOMEM when attention or a 16-bit/quantized site could not
 *    allocate its scratch (outputs / gradients then incomplete). */
#ifndef PEFT_MODELS_ENCODER_H
#define PEFT_MODELS_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "models/model.h"
#include "models/site.h"

typedef struct peft_encoder_cfg {
    int C;         /* hidden size */
    int NH, HD;    /* heads and head size, NH * HD == C */
    int F;         /* intermediate size */
    float eps;     /* LayerNorm epsilon (layer_norm_eps) */
    int pre_ln;    /* 0: post-LN (BERT/RoBERTa), 1: pre-LN (ViT) */
    int gelu_kind; /* GELU_ERF ("gelu") or GELU_TANH (kernels.h) */
} peft_encoder_cfg;

/* One layer's parameters, all owned by the caller. */
typedef struct peft_encoder_layer {
    peft_site *q, *k, *v;   /* [C, C] with bias */
    peft_site *o;           /* attention output dense [C, C] */
    peft_site *up, *down;   /* intermediate [F, C], output [C, F] */
    peft_norm_site *ln1;    /* post-LN: after attention (attention.output.LayerNorm); pre-LN: before (layernorm_before) */
    peft_norm_site *ln2;    /* post-LN: after the MLP (output.LayerNorm); pre-LN: before it (layernorm_after) */
} peft_encoder_layer;

/* What one layer's forward keeps for backward, for up to B x T rows (N = B*T). */
typedef struct peft_encoder_acts {
    float *a;             /* [N, C] pre-LN: LN1(x), the q/k/v input (post-LN: NULL, x is) */
    float *mean1, *rstd1; /* [N] LN1's statistics */
    float *q, *k, *v;     /* [N, C] */
    float *att;           /* [N, C] attention output, before o */
    float *lse;           /* [B, NH, T] attention log-sum-exp */
    float *r1;            /* [N, C] x + o(att) */
    float *h;             /* [N, C] the MLP input: post-LN LN1(r1), pre-LN LN2(r1) */
    float *mean2, *rstd2; /* [N] LN2's statistics */
    float *u, *g;         /* [N, F] up(h) and gelu(up(h)) */
    float *r2;            /* [N, C] post-LN: h + down(g), LN2's input (pre-LN: NULL) */
} peft_encoder_acts;

/* Backward scratch, for up to B x T rows. */
typedef struct peft_encoder_grads {
    float *d1, *d2, *dq, *dk, *dv; /* [N, C] */
    float *dg, *du;                /* [N, F] */
} peft_encoder_grads;

/* Floats of one acts / one grads for B x T rows (0 on size overflow). */
size_t encoder_acts_floats(const peft_encoder_cfg *c, int B, int T);
size_t encoder_grads_floats(const peft_encoder_cfg *c, int B, int T);
/* Carves the buffers out of slab (encoder_*_floats of them). */
void encoder_acts_point(peft_encoder_acts *a, float *slab, const peft_encoder_cfg *c, int B, int T);
void encoder_grads_point(peft_encoder_grads *g, float *slab, const peft_encoder_cfg *c, int B, int T);

/* out[B*T, C] = the layer applied to x[B*T, C] (out must not alias x). save: a training forward
 * (adapters keep their activations too). */
int encoder_layer_forward(const peft_encoder_cfg *c, const peft_encoder_layer *L, peft_encoder_acts *a, float *out,
                          const float *x, const int32_t *lengths, int B, int T, int save);
/* dx[B*T, C] = d(loss)/dx given dout[B*T, C], after encoder_layer_forward(save = 1) on the same x. */
int encoder_layer_backward(const peft_encoder_cfg *c, const peft_encoder_layer *L, const peft_encoder_acts *a,
                           peft_encoder_grads *g, float *dx, const float *dout, const float *x, const int32_t *lengths,
                           int B, int T);

/* L layers run in sequence, with what their forward keeps for backward. The architecture writes
 * its embeddings into x (layer 0's input), runs the stack, reads encoder_stack_output, and for
 * backward writes d(loss)/d(x_L) into dout and reads d(loss)/d(x_0) back from backward's dx0.
 * Without save_all one scratch acts is kept and each layer's forward runs again, saving, right
 * before its backward (gradient checkpointing: the layer inputs x[l] are always kept). */
typedef struct peft_encoder_stack {
    const peft_encoder_cfg *c;
    const peft_encoder_layer *layers; /* [L], the caller's */
    int L, save_all, training;
    float *slab;
    float *x;                         /* [L+1, B*T, C] of the forward's B x T: x[0] the input, x[l+1] layer l's output */
    peft_encoder_acts *la;            /* [L] with save_all, else [1] */
    peft_encoder_grads g;             /* training: the layers' backward scratch */
    float *dout, *dtmp;               /* training: [B*T, C] each, swapped layer by layer */
} peft_encoder_stack;

/* Allocates a stack for up to B x T rows (training: the backward buffers too); PEFT_ENOMEM when
 * the sizes overflow or memory runs out (s then holds nothing to free). */
int encoder_stack_alloc(peft_encoder_stack *s, const peft_encoder_cfg *c, const peft_encoder_layer *layers, int L, int B,
                        int T, int save_all, int training);
void encoder_stack_free(peft_encoder_stack *s);
/* x_L [B*T, C] after a forward on B x T rows. */
const float *encoder_stack_output(const peft_encoder_stack *s, int B, int T);
/* x[l+1] = layer l (x[l]) for l < L; a training stack with save_all saves every layer. */
int encoder_stack_forward(peft_encoder_stack *s, const int32_t *lengths, int B, int T);
/* From dout = d(loss)/d(x_L) (overwritten) to *dx0 = d(loss)/d(x_0) (one of the stack's buffers),
 * after encoder_stack_forward on the same batch; accumulates the layers' adapter / norm gradients. */
int encoder_stack_backward(peft_encoder_stack *s, const int32_t *lengths, int B, int T, const float **dx0);

#endif
