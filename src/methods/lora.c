/* lora.c: the LoRA method on the adapter interface.
 *
 * Forward (N rows):   xd = dropout(x)            [N, in]   (x itself when not training)
 *                     ax = xd A^T                [N, r]    saved for backward
 *                     y += s * ax B^T            [N, out]
 * Backward:           dB += s * dy^T ax          [out, r]
 *                     g   = s * dy B             [N, r]
 *                     dA += g^T xd               [r, in]
 *                     dx += mask * (g A)         [N, in]
 * The dropout mask is a hash of (step seed, site, element), so backward regenerates it
 * instead of storing an N x in mask per site. */
#include "lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "rng.h"

typedef struct lora_adapter {
    peft_adapter base;
    int r, in, out;
    float scale, dropout;
    float *A, *B;   /* [r, in], [out, r] */
    float *dA, *dB; /* same shapes */
    float *ax;      /* [max_rows, r] saved by a training forward */
    int max_rows;
    uint64_t site_hash;
} lora_adapter;

/* The adapter's term with this step's dropout. */
static lowrank_term lora_term(const lora_adapter *a) {
    return (lowrank_term){.A = a->A, .B = a->B, .dA = a->dA, .dB = a->dB, .in = a->in, .r = a->r, .out = a->out,
                          .scale = a->scale, .dropout = a->base.training ? a->dropout : 0.0f,
                          .step_seed = a->base.step_seed, .site_hash = a->site_hash};
}

int lowrank_check_opts(const peft_method_opts *o, const peft_site *s, const char *method, peft_err *err) {
    int lim = s->in_features < s->out_features ? s->in_features : s->out_features;
    if (o->rank < 1 || o->rank > lim)
        return peft_fail(err, PEFT_EINVAL, "%s: %s rank %d must be in [1, min(in, out) = %d]", s->name, method, o->rank, lim);
    if (o->dropout < 0 || o->dropout >= 1) return peft_fail(err, PEFT_EINVAL, "%s dropout %g must be in [0, 1)", method, o->dropout);
    return PEFT_OK;
}

float lowrank_scale(const peft_method_opts *o) {
    return (float)(o->use_rslora ? o->alpha / sqrt((double)o->rank) : o->alpha / o->rank);
}

/* xd = dropout(x) into buf, or x itself when no dropout is in effect. */
static const float *term_dropout(const lowrank_term *t, const float *x, int N, float *buf) {
    if (t->dropout <= 0.0f) return x;
    peft_dropout_apply(buf, x, (size_t)N * t->in, t->dropout, t->step_seed, t->site_hash, 0);
    return buf;
}

void lowrank_forward(const lowrank_term *t, float *y, float *ax, const float *x, int N, float *buf) {
    const float *xd = term_dropout(t, x, N, buf);
    matmul_forward(ax, xd, t->A, NULL, N, t->in, t->r);           /* ax[N,r] = xd A^T */
    gemm_acc(y, ax, t->B, N, t->out, t->r, 0, 1, t->scale);     /* y += s * ax B^T */
}

void lowrank_backward(const lowrank_term *t, float *dx, const float *dy, const float *x, const float *ax, int N, float *g,
                      float *buf) {
    gemm_acc(t->dB, dy, ax, t->out, t->r, N, 1, 0, t->scale);   /* dB += s * dy^T ax */
    memset(g, 0, (size_t)N * t->r * sizeof(float));
    gemm_acc(g, dy, t->B, N, t->r, t->out, 0, 0, t->scale);     /* g = s * dy B */
    const float *xd = term_dropout(t, x, N, buf);
    gemm_acc(t->dA, g, xd, t->r, t->in, N, 1, 0, 1.0f);         /* dA += g^T xd */
    if (!dx) return;
    if (xd == x) {
        gemm_acc(dx, g, t->A, N, t->in, t->r, 0, 0, 1.0f);      /* dx += g A */
        return;
    }
    /* Through the dropout: dx += mask * (g A), the mask regenerated from its seed (buf is free again). */
    memset(buf, 0, (size_t)N * t->in * sizeof(float));
    gemm_acc(buf, g, t->A, N, t->in, t->r, 0, 0, 1.0f);
    peft_dropout_apply(dx, buf, (size_t)N * t->in, t->dropout, t->step_seed, t->site_hash, 1);
}

void lora_init_A(float *A, int r, int in, const peft_method_opts *o, uint64_t site_hash) {
    peft_rng rng;
    peft_rng_seed(&rng, o->seed, site_hash);
    float bound = 1.0f / sqrtf((float)in), sd = 1.0f / (float)r;
    for (size_t i = 0; i < (size_t)r * in; i++)
        A[i] = o->init_gaussian ? sd * peft_rng_normal(&rng) : bound * (2.0f * peft_rng_uniform(&rng) - 1.0f);
}

static int lora_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    int invalid = lowrank_check_opts(o, s, "LoRA", err);
    if (invalid) return invalid;
    lora_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_lora;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    a->A = calloc(2 * (nA + nB) + (size_t)max_rows * a->r, sizeof(float));
    if (!a->A) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate LoRA weights", s->name);
    }
    a->B = a->A + nA;
    a->dA = a->B + nB;
    a->dB = a->dA + nA;
    a->ax = a->dB + nB;
    lora_init_A(a->A, a->r, a->in, o, a->site_hash);
    *out = &a->base;
    return PEFT_OK;
}

static void lora_destroy(peft_adapter *base) {
    lora_adapter *a = (lora_adapter *)base;
    if (!a) return;
    free(a->A);
    free(a);
}

static size_t lora_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const lora_adapter *a = (const lora_adapter *)base;
    return (size_t)N * ((size_t)a->in + a->r); /* dropout buffer, then ax (inference) or g */
}

static void lora_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    lora_adapter *a = (lora_adapter *)base;
    lowrank_term t = lora_term(a);
    float *buf = a->base.work, *ax = save ? a->ax : buf + (size_t)N * a->in;
    lowrank_forward(&t, y, ax, x, N, buf);
}

static void lora_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    lora_adapter *a = (lora_adapter *)base;
    lowrank_term t = lora_term(a);
    float *buf = a->base.work;
    lowrank_backward(&t, dx, dy, x, a->ax, N, buf + (size_t)N * a->in, buf);
}

static int lora_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    lora_adapter *a = (lora_adapter *)base;
    gemm_acc(s->weight, a->B, a->A, a->out, a->in, a->r, 0, 0, (float)sign * a->scale); /* W += +-s B A */
    return PEFT_OK;
}

float lora_adapter_scale(const peft_adapter *a) { return ((const lora_adapter *)a)->scale; }

static int lora_params(peft_adapter *base, peft_param *out, int max) {
    lora_adapter *a = (lora_adapter *)base;
    if (max >= 2) {
        out[0] = (peft_param){.name = "lora_A.weight", .data = a->A, .grad = a->dA, .numel = (size_t)a->r * a->in,
                              .ndim = 2, .shape = {a->r, a->in}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "lora_B.weight", .data = a->B, .grad = a->dB, .numel = (size_t)a->out * a->r,
                              .ndim = 2, .shape = {a->out, a->r}, .lr_scale = 1.0f};
    }
    return 2;
}

static void lora_config_write(const peft_method_opts *o, cJSON *obj) {
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_dora", 0);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

/* Reads PEFT's LoraConfig fields shared by LoRA and DoRA; use_dora picks between them. */
int lora_config_read_common(const cJSON *obj, peft_method_opts *o, int want_dora, const char *what, peft_err *err) {
    long long r = 8;
    int dora = 0;
    int rc;
    if ((rc = peft_json_int(obj, "r", 1, &r, what, err)) || (rc = peft_json_double(obj, "lora_alpha", 0, &o->alpha, what, err)) ||
        (rc = peft_json_double(obj, "lora_dropout", 0, &o->dropout, what, err)) ||
        (rc = peft_json_bool(obj, "use_rslora", 0, &o->use_rslora, what, err)) ||
        (rc = peft_json_bool(obj, "use_dora", 0, &dora, what, err)))
        return rc;
    if (dora != want_dora) return 1; /* the other method of the pair reads it */
    if (r < 1 || r > 65536) return peft_fail(err, PEFT_EFORMAT, "%s: r = %lld is out of range", what, r);
    o->rank = (int)r;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(obj, "init_lora_weights");
    o->init_gaussian = cJSON_IsString(init) && !strcmp(init->valuestring, "gaussian");
    return PEFT_OK;
}

static int lora_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return lora_config_read_common(obj, o, 0, what, err);
}

const peft_method peft_method_lora = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "lora",
    .forward_replaces_base = 0,
    .create = lora_create,
    .destroy = lora_destroy,
    .forward = lora_forward,
    .backward = lora_backward,
    .merge = lora_merge,
    .params = lora_params,
    .work_floats = lora_work_floats,
    .peft_type = "LORA",
    .config_write = lora_config_write,
    .config_read = lora_config_read,
};
