/* lisa.c: LISA (lisa.h) on the adapter interface.
 *
 * Per site W [out, in] of an active layer, slot j of the period's layers:
 *   forward   nothing: the site computes y = x W^T + b with the trained W itself
 *   backward  dW_j[out, in] += dy^T x,  db_j[out] += sum_n dy   (dx is the site's, from W)
 *   norm      the model's rmsnorm_backward accumulates into the norm site's grad, pointed at
 *             the slot while the layer is active (NULL: frozen, nothing computed)
 * AdamW then updates W, b and the norm weight in place. */
#include "lisa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kernels/kernels.h"
#include "models/model.h"
#include "rng.h"

typedef struct lisa_adapter {
    peft_adapter base;
    int layer, n_layers, gamma, in, out, C;
    long interval;
    uint64_t seed;
    float *w, *b;          /* the site's weight [out, in] and bias [out] (or NULL): trained in place */
    peft_norm_site *norm;  /* the RMSNorm feeding the site, trained with it, or NULL */
    const char *norm_kind; /* "input_layernorm", "post_attention_layernorm" */
    float *gw, *gb, *gn;   /* the set's gradient slots [gamma, out, in], [gamma, out], [gamma, C] */
    long period;           /* of the last begin_step, -1 before the first */
    int slot;              /* this layer's place among the period's layers, -1: frozen */
    int trained;           /* the layer was active in some period <= period */
} lisa_adapter;

int lisa_layer_slot(uint64_t seed, long period, int n_layers, int gamma, int layer) {
    /* Selection sampling (Knuth's algorithm S): layer i is taken with probability
     * need / (n_layers - i), which draws every gamma-subset with the same probability. */
    peft_rng r;
    peft_rng_seed(&r, seed, 0x6c69736100000000ull + (uint64_t)period);
    for (int i = 0, need = gamma; i <= layer && need > 0; i++)
        if ((int)peft_rng_below(&r, (uint32_t)(n_layers - i)) < need) {
            if (i == layer) return gamma - need;
            need--;
        }
    return -1;
}

static float *grad_slots(const peft_method_opts *o, const char *kind, const char *suffix, int ndim, const int64_t *shape) {
    char key[96];
    int created;
    snprintf(key, sizeof key, "lisa.grad.%s%s", kind, suffix);
    return peft_shared_tensor(o->shared, key, ndim, shape, 0, 0, NULL, &created);
}

static void lisa_destroy(peft_adapter *base) {
    lisa_adapter *a = (lisa_adapter *)base;
    if (!a) return;
    if (a->norm) a->norm->grad = NULL;
    free(a);
}

/* The norm trained with site s: the one feeding it when s is the first reader of its layer's
 * j-th norm (j = 0: the attention's input, q_proj / qkv_proj / c_attn; j = 1: the MLP's input,
 * gate_proj / gate_up_proj / c_fc), found among m->norms by layer; NULL for the other sites. */
static peft_norm_site *layer_norm_of(peft_model *m, const peft_site *s) {
    static const char *const first_reader[][3] = {{"q_proj", "qkv_proj", "c_attn"}, {"gate_proj", "gate_up_proj", "c_fc"}};
    int j = -1;
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < 3; r++)
            if (!strcmp(s->kind, first_reader[k][r])) j = k;
    for (int i = 0; j >= 0 && i < m->n_norms; i++)
        if (m->norms[i]->layer == s->layer && j-- == 0) return m->norms[i];
    return NULL;
}

static int lisa_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    (void)max_rows;
    peft_model *m = o->model;
    if (!m || !s->weight || s->layer < 0)
        return peft_fail(err, PEFT_EINVAL, "%s: LISA trains the model's own weights (the model was loaded without them)", s->name);
    int L = m->info.n_layers;
    if (o->lisa_gamma < 1 || o->lisa_gamma > L)
        return peft_fail(err, PEFT_EINVAL, "LISA: %d activated layers, the model has %d (1 .. %d)", o->lisa_gamma, L, L);
    if (o->lisa_interval < 1) return peft_fail(err, PEFT_EINVAL, "LISA: the interval is %ld updates, must be >= 1", o->lisa_interval);
    lisa_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_lisa;
    a->layer = s->layer, a->n_layers = L, a->gamma = o->lisa_gamma, a->interval = o->lisa_interval, a->seed = o->seed;
    a->in = s->in_features, a->out = s->out_features, a->C = m->info.hidden_size;
    a->w = s->weight, a->b = s->bias;
    a->period = -1, a->slot = -1;
    a->norm = layer_norm_of(m, s);
    if (a->norm) a->norm_kind = strrchr(a->norm->name, '.') + 1;
    const int64_t shw[3] = {a->gamma, a->out, a->in}, shb[2] = {a->gamma, a->out}, shn[2] = {a->gamma, a->C};
    a->gw = grad_slots(o, s->kind, "", 3, shw);
    if (a->b) a->gb = grad_slots(o, s->kind, ".bias", 2, shb);
    if (a->norm) a->gn = grad_slots(o, a->norm_kind, "", 2, shn);
    if (!a->gw || (a->b && !a->gb) || (a->norm && (!a->gn || !a->norm->weight))) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate LISA's gradient slots (or the model has no norm weights)", s->name);
    }
    *out = &a->base;
    return PEFT_OK;
}

static int lisa_begin_step(peft_adapter *base, const peft_site *s, long step, peft_err *err) {
    lisa_adapter *a = (lisa_adapter *)base;
    if (s->w_half || s->w_q)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: LISA trains the f32 weights in place, which the 16-bit or quantized "
                                                 "copies would not follow: train without --bf16/--f16/--quantize", s->name);
    long period = step / a->interval;
    if (period == a->period) return 0;
    a->slot = lisa_layer_slot(a->seed, period, a->n_layers, a->gamma, a->layer);
    if (period == a->period + 1) {
        a->trained |= a->slot >= 0;
    } else { /* a jump (a resumed run): replay the earlier periods' draws */
        a->trained = 0;
        for (long p = 0; p <= period && !a->trained; p++) a->trained = lisa_layer_slot(a->seed, p, a->n_layers, a->gamma, a->layer) >= 0;
    }
    a->period = period;
    if (a->norm) a->norm->grad = a->slot >= 0 ? a->gn + (size_t)a->slot * a->C : NULL;
    return 1;
}

static void lisa_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    (void)base, (void)s, (void)y, (void)x, (void)N, (void)save; /* the site's own x W^T + b is the whole function */
}

static void lisa_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    (void)dx; /* the site adds dy W itself */
    lisa_adapter *a = (lisa_adapter *)base;
    if (a->slot < 0) return;
    size_t j = (size_t)a->slot;
    matmul_backward(NULL, a->gw + j * a->out * a->in, a->b ? a->gb + j * a->out : NULL, dy, x, s->weight, N, a->in, a->out);
}

/* The layer's tensors this adapter trains (weight, bias, norm), with their gradient slots
 * (with_grad) or as bare values. */
static int lisa_tensors(const lisa_adapter *a, int with_grad, peft_param *out, int max) {
    size_t j = with_grad ? (size_t)a->slot : 0;
    peft_param t[3];
    int n = 0;
    t[n++] = (peft_param){.name = "weight", .data = a->w, .grad = with_grad ? a->gw + j * a->out * a->in : NULL,
                          .numel = (size_t)a->out * a->in, .ndim = 2, .shape = {a->out, a->in}, .lr_scale = 1.0f};
    if (a->b)
        t[n++] = (peft_param){.name = "bias", .data = a->b, .grad = with_grad ? a->gb + j * a->out : NULL, .numel = (size_t)a->out,
                              .ndim = 1, .shape = {a->out}, .lr_scale = 1.0f};
    if (a->norm) {
        t[n] = (peft_param){.data = a->norm->weight, .grad = with_grad ? a->gn + j * a->C : NULL, .numel = (size_t)a->C, .ndim = 1,
                            .shape = {a->C}, .lr_scale = 1.0f};
        snprintf(t[n++].name, sizeof t[0].name, "%s.weight", a->norm_kind);
    }
    for (int i = 0; i < n && i < max; i++) out[i] = t[i];
    return n;
}

static int lisa_params(peft_adapter *base, peft_param *out, int max) {
    const lisa_adapter *a = (const lisa_adapter *)base;
    return a->slot >= 0 ? lisa_tensors(a, 1, out, max) : 0;
}

static int lisa_state(peft_adapter *base, peft_param *out, int max) {
    const lisa_adapter *a = (const lisa_adapter *)base;
    return a->slot < 0 && a->trained ? lisa_tensors(a, 0, out, max) : 0;
}

static size_t lisa_work_floats(const peft_adapter *a, const peft_site *s, int N) {
    (void)a, (void)s, (void)N;
    return 0;
}

static int lisa_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    (void)obj, (void)o;
    return peft_fail(err, PEFT_EUNSUPPORTED, "%s: LISA writes the fine-tuned model (config.json + model.safetensors), not an "
                                             "adapter: use that directory as --model", what);
}

const peft_method peft_method_lisa = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "lisa",
    .forward_replaces_base = 0,
    .reads_base = 1,
    .create = lisa_create,
    .destroy = lisa_destroy,
    .forward = lisa_forward,
    .backward = lisa_backward,
    .params = lisa_params,
    .work_floats = lisa_work_floats,
    .peft_type = "LISA",
    .config_read = lisa_config_read,
    .begin_step = lisa_begin_step,
    .state = lisa_state,
    .trains_base = 1,
};
