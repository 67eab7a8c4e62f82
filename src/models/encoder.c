/* encoder.c: the LayerNorm transformer encoder layer (post-LN BERT, pre-LN ViT), forward and
 * backward side by side. Shapes: N = B*T rows, C hidden, F intermediate. */
#include "encoder.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

/* Sizes in order of encoder_acts_point; a NULL-able buffer counts 0 when absent. */
static int acts_sizes(const peft_encoder_cfg *c, int B, int T, size_t sz[16]) {
    const size_t N = (size_t)B * (size_t)T, NC = N * (size_t)c->C, NF = N * (size_t)c->F;
    const size_t lse = (size_t)B * (size_t)c->NH * (size_t)T;
    const size_t s[] = {c->pre_ln ? NC : 0, N, N, NC, NC, NC, NC, lse, NC, NC, N, N, NF, NF, c->pre_ln ? 0 : NC};
    memcpy(sz, s, sizeof s);
    return (int)(sizeof s / sizeof s[0]);
}

static size_t sum_sizes(const size_t *sz, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (!peft_add_ok(total, sz[i], &total)) return 0;
    return total;
}

size_t encoder_acts_floats(const peft_encoder_cfg *c, int B, int T) {
    size_t sz[16], n; /* every buffer is at most N * max(C, F) floats (lse: NH <= C) */
    if (!peft_mul_ok((size_t)B * (size_t)T, (size_t)(c->F > c->C ? c->F : c->C) * 16, &n)) return 0;
    return sum_sizes(sz, acts_sizes(c, B, T, sz));
}

size_t encoder_grads_floats(const peft_encoder_cfg *c, int B, int T) {
    size_t n;
    if (!peft_mul_ok((size_t)B * (size_t)T, 5 * (size_t)c->C + 2 * (size_t)c->F, &n)) return 0;
    return n;
}

void encoder_acts_point(peft_encoder_acts *a, float *slab, const peft_encoder_cfg *c, int B, int T) {
    size_t sz[16];
    int n = acts_sizes(c, B, T, sz);
    float **dst[] = {&a->a, &a->mean1, &a->rstd1, &a->q, &a->k, &a->v, &a->att, &a->lse,
                     &a->r1, &a->h, &a->mean2, &a->rstd2, &a->u, &a->g, &a->r2};
    for (int i = 0; i < n; i++) {
        *dst[i] = sz[i] ? slab : NULL;
        slab += sz[i];
    }
}

void encoder_grads_point(peft_encoder_grads *g, float *slab, const peft_encoder_cfg *c, int B, int T) {
    const size_t N = (size_t)B * (size_t)T, NC = N * (size_t)c->C, NF = N * (size_t)c->F;
    float **nc[] = {&g->d1, &g->d2, &g->dq, &g->dk, &g->dv};
    for (int i = 0; i < 5; i++, slab += NC) *nc[i] = slab;
    g->dg = slab;
    g->du = slab + NF;
}

static void ln_forward(const peft_norm_site *n, float *out, float *mean, float *rstd, const float *x, float eps, int N) {
    layernorm_forward(out, mean, rstd, x, n->weight, n->bias, eps, N, n->dim);
}

/* dinp[N,C] += LN backward of dout; the norm's own gradients when it has them. */
static void ln_backward(const peft_norm_site *n, float *dinp, const float *dout, const float *x, const float *mean,
                        const float *rstd, int N) {
    layernorm_backward(dinp, n->grad, n->bias_grad, dout, x, n->weight, mean, rstd, N, n->dim);
}

/* The attention block on its input ain[N,C]: q, k, v, att, then r1 = x + o(att). */
static int attn_forward(const peft_encoder_cfg *c, const peft_encoder_layer *L, peft_encoder_acts *a, const float *ain,
                        const float *x, const attention_opts *ao, int B, int T, int save) {
    const int N = B * T;
    int rc = site_forward(L->q, a->q, ain, N, save);
    if (rc == PEFT_OK) rc = site_forward(L->k, a->k, ain, N, save);
    if (rc == PEFT_OK) rc = site_forward(L->v, a->v, ain, N, save);
    if (rc == PEFT_OK) rc = attention_forward_opts(a->att, a->lse, a->q, a->k, a->v, ao, B, T, T, c->NH, c->NH, c->HD);
    if (rc == PEFT_OK) rc = site_forward(L->o, a->r1, a->att, N, save);
    if (rc == PEFT_OK) add_inplace(a->r1, x, (size_t)N * c->C);
    return rc;
}

/* The MLP on h[N,C]: out[N,C] = down(gelu(up(h))) (u, g saved). */
static int mlp_forward(const peft_encoder_cfg *c, const peft_encoder_layer *L, peft_encoder_acts *a, float *out, int N,
                       int save) {
    int rc = site_forward(L->up, a->u, a->h, N, save);
    if (rc == PEFT_OK) gelu_forward(a->g, a->u, N, c->F, c->gelu_kind);
    if (rc == PEFT_OK) rc = site_forward(L->down, out, a->g, N, save);
    return rc;
}

int encoder_layer_forward(const peft_encoder_cfg *c, const peft_encoder_layer *L, peft_encoder_acts *a, float *out,
                          const float *x, const int32_t *lengths, int B, int T, int save) {
    const int N = B * T;
    const size_t NC = (size_t)N * c->C;
    const attention_opts ao = {.causal = 0, .kv_len = lengths};
    int rc;
    if (c->pre_ln) {
        ln_forward(L->ln1, a->a, a->mean1, a->rstd1, x, c->eps, N);
        rc = attn_forward(c, L, a, a->a, x, &ao, B, T, save);
        if (rc == PEFT_OK) ln_forward(L->ln2, a->h, a->mean2, a->rstd2, a->r1, c->eps, N);
        if (rc == PEFT_OK) rc = mlp_forward(c, L, a, out, N, save);
        if (rc == PEFT_OK) add_inplace(out, a->r1, NC); /* out = r1 + mlp */
        return rc;
    }
    rc = attn_forward(c, L, a, x, x, &ao, B, T, save);
    if (rc == PEFT_OK) ln_forward(L->ln1, a->h, a->mean1, a->rstd1, a->r1, c->eps, N);
    if (rc == PEFT_OK) rc = mlp_forward(c, L, a, a->r2, N, save);
    if (rc == PEFT_OK) {
        add_inplace(a->r2, a->h, NC); /* r2 = h + mlp */
        ln_forward(L->ln2, out, a->mean2, a->rstd2, a->r2, c->eps, N);
    }
    return rc;
}

/* dh[N,C] += the MLP's input gradient for dmlp[N,C] (its output's gradient). */
static int mlp_backward(const peft_encoder_cfg *c, const peft_encoder_layer *L, const peft_encoder_acts *a,
                        peft_encoder_grads *g, float *dh, const float *dmlp, int N) {
    const size_t NF = (size_t)N * c->F;
    memset(g->dg, 0, NF * sizeof(float));
    memset(g->du, 0, NF * sizeof(float));
    int rc = site_backward(L->down, g->dg, dmlp, a->g, N);
    if (rc == PEFT_OK) gelu_backward(g->du, g->dg, a->u, N, c->F, c->gelu_kind);
    if (rc == PEFT_OK) rc = site_backward(L->up, dh, g->du, a->h, N);
    return rc;
}

/* dain[N,C] += the attention block's input gradient for dr1[N,C] (the residual is the caller's). */
static int attn_backward(const peft_encoder_cfg *c, const peft_encoder_layer *L, const peft_encoder_acts *a,
                         peft_encoder_grads *g, float *dain, const float *dr1, const float *ain,
                         const attention_opts *ao, int B, int T) {
    const int N = B * T;
    const size_t NC = (size_t)N * c->C;
    float *datt = g->d2;
    memset(datt, 0, NC * sizeof(float));
    memset(g->dq, 0, NC * sizeof(float));
    memset(g->dk, 0, NC * sizeof(float));
    memset(g->dv, 0, NC * sizeof(float));
    int rc = site_backward(L->o, datt, dr1, a->att, N);
    if (rc == PEFT_OK)
        rc = attention_backward_opts(g->dq, g->dk, g->dv, datt, a->q, a->k, a->v, a->att, a->lse, ao, B, T, c->NH, c->NH,
                                     c->HD);
    if (rc == PEFT_OK) rc = site_backward(L->q, dain, g->dq, ain, N);
    if (rc == PEFT_OK) rc = site_backward(L->k, dain, g->dk, ain, N);
    if (rc == PEFT_OK) rc = site_backward(L->v, dain, g->dv, ain, N);
    return rc;
}

int encoder_layer_backward(const peft_encoder_cfg *c, const peft_encoder_layer *L, const peft_encoder_acts *a,
                           peft_encoder_grads *g, float *dx, const float *dout, const float *x, const int32_t *lengths,
                           int B, int T) {
    const int N = B * T;
    const size_t NC = (size_t)N * c->C;
    const attention_opts ao = {.causal = 0, .kv_len = lengths};
    float *d1 = g->d1; /* [N,C] dr1 */
    int rc;
    if (c->pre_ln) {
        /* out = r1 + mlp(LN2(r1)): dr1 = dout + LN2'(mlp'(dout)) */
        memcpy(d1, dout, NC * sizeof(float));
        float *dh = dx; /* dx is free until the end: it holds dh = d LN2(r1) */
        memset(dh, 0, NC * sizeof(float));
        rc = mlp_backward(c, L, a, g, dh, dout, N);
        if (rc == PEFT_OK) ln_backward(L->ln2, d1, dh, a->r1, a->mean2, a->rstd2, N);
        /* r1 = x + attn(LN1(x)): dx = dr1 + LN1'(attn'(dr1)); attn' collects in dx (free again) */
        if (rc == PEFT_OK) {
            memset(dh, 0, NC * sizeof(float));
            rc = attn_backward(c, L, a, g, dh, d1, a->a, &ao, B, T);
        }
        if (rc == PEFT_OK) {
            float *da = g->dq; /* dq is consumed: reuse it for d LN1(x) */
            memcpy(da, dh, NC * sizeof(float));
            memcpy(dx, d1, NC * sizeof(float));
            ln_backward(L->ln1, dx, da, x, a->mean1, a->rstd1, N);
        }
        return rc;
    }
    /* out = LN2(r2), r2 = h + mlp(h): dh = dr2 + mlp'(dr2) */
    float *dr2 = dx; /* dx holds dr2, then dh */
    memset(dr2, 0, NC * sizeof(float));
    ln_backward(L->ln2, dr2, dout, a->r2, a->mean2, a->rstd2, N);
    rc = mlp_backward(c, L, a, g, dr2, dr2, N);
    /* h = LN1(r1), r1 = x + attn(x): dx = dr1 + attn'(dr1) */
    if (rc == PEFT_OK) {
        memset(d1, 0, NC * sizeof(float));
        ln_backward(L->ln1, d1, dr2, a->r1, a->mean1, a->rstd1, N);
        memcpy(dx, d1, NC * sizeof(float));
        rc = attn_backward(c, L, a, g, dx, d1, x, &ao, B, T);
    }
    return rc;
}

/* ---- the layer stack ---------------------------------------------------------------------- */

int encoder_stack_alloc(peft_encoder_stack *s, const peft_encoder_cfg *c, const peft_encoder_layer *layers, int L, int B,
                        int T, int save_all, int training) {
    *s = (peft_encoder_stack){.c = c, .layers = layers, .L = L, .save_all = save_all, .training = training};
    const int n_la = save_all ? L : 1;
    const size_t per_la = encoder_acts_floats(c, B, T), grads = training ? encoder_grads_floats(c, B, T) : 0;
    /* x [L+1, N, C], the acts, then training's grads, dout, dtmp */
    size_t NC, x_floats, la_floats, total;
    int ok = per_la && (!training || grads) && peft_mul_ok((size_t)B * (size_t)T, (size_t)c->C, &NC) &&
             peft_mul_ok((size_t)L + 1, NC, &x_floats) && peft_mul_ok((size_t)n_la, per_la, &la_floats) &&
             peft_add_ok(x_floats, la_floats, &total) && peft_add_ok(total, grads, &total) &&
             peft_add_ok(total, training ? 2 * NC : 0, &total);
    s->la = ok ? calloc((size_t)n_la, sizeof *s->la) : NULL;
    s->slab = s->la ? malloc(total * sizeof(float)) : NULL;
    if (!s->slab) {
        encoder_stack_free(s);
        return PEFT_ENOMEM;
    }
    float *p = s->slab;
    s->x = p;
    p += x_floats;
    for (int l = 0; l < n_la; l++, p += per_la) encoder_acts_point(&s->la[l], p, c, B, T);
    if (training) {
        encoder_grads_point(&s->g, p, c, B, T);
        s->dout = p + grads;
        s->dtmp = s->dout + NC;
    }
    return PEFT_OK;
}

void encoder_stack_free(peft_encoder_stack *s) {
    free(s->slab);
    free(s->la);
    s->slab = NULL;
    s->la = NULL;
}

const float *encoder_stack_output(const peft_encoder_stack *s, int B, int T) {
    return s->x + (size_t)s->L * B * T * s->c->C;
}

int encoder_stack_forward(peft_encoder_stack *s, const int32_t *lengths, int B, int T) {
    const size_t NC = (size_t)B * T * s->c->C;
    int rc = PEFT_OK;
    for (int l = 0; l < s->L && rc == PEFT_OK; l++)
        rc = encoder_layer_forward(s->c, &s->layers[l], &s->la[s->save_all ? l : 0], s->x + (size_t)(l + 1) * NC,
                                   s->x + (size_t)l * NC, lengths, B, T, s->training && s->save_all);
    return rc;
}

int encoder_stack_backward(peft_encoder_stack *s, const int32_t *lengths, int B, int T, const float **dx0) {
    const size_t NC = (size_t)B * T * s->c->C;
    float *dy = s->dout, *dx = s->dtmp;
    int rc = PEFT_OK;
    for (int l = s->L - 1; l >= 0 && rc == PEFT_OK; l--) {
        peft_encoder_acts *la = &s->la[s->save_all ? l : 0];
        const float *xin = s->x + (size_t)l * NC;
        if (!s->save_all) /* gradient checkpointing: this layer's forward again, saving */
            rc = encoder_layer_forward(s->c, &s->layers[l], la, s->x + (size_t)(l + 1) * NC, xin, lengths, B, T, 1);
        if (rc == PEFT_OK) rc = encoder_layer_backward(s->c, &s->layers[l], la, &s->g, dx, dy, xin, lengths, B, T);
        float *t = dy;
        dy = dx, dx = t;
    }
    *dx0 = dy;
    return rc;
}
