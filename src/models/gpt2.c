/* gpt2.c: GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification) behind models/model.h, as
 * transformers computes it:
 *   x = wte(ids) + wpe(pos)
 *   for each layer: x += attn.c_proj(attn(split(attn.c_attn(ln_1(x)))))     (causal)
 *                   x += mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
 *   causal-lm: logits = ln_f(x) wte^T (tied head)
 *   seq-cls:   logits = score(ln_f(x) at each row's last non-padding token)
 * HF's Conv1D keeps its weight as [in, out]; the sites hold the transpose [out, in] (what every
 * method expects), marked fan_in_fan_out, and save_hf transposes back. c_attn is ONE site
 * [3C, C] (q, k, v stacked), as PEFT targets it. All tensors are widened to f32 copies.
 * Virtual tokens (model.h): prompt tuning's rows replace wte and still get wpe[t]; prefix
 * tuning's keys/values replace rows t < n_virtual of k and v, so real tokens sit at positions
 * n_virtual.. as with HF's prefix cache. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "methods/adapter.h"
#include "models/model.h"
#include "fileio.h"
#include "rng.h"

enum { G_ATTN, G_ATTN_PROJ, G_FC, G_MLP_PROJ, G_SITES };
static const char *const site_paths[G_SITES] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
static const char *const site_kinds[G_SITES] = {"c_attn", "c_proj", "c_fc", "c_proj"};

typedef struct gpt2_layer {
    peft_norm_site ln_1, ln_2;
    peft_site sites[G_SITES]; /* c_attn [3C, C], attn.c_proj [C, C], c_fc [F, C], mlp.c_proj [C, F] */
} gpt2_layer;

typedef struct gpt2 {
    peft_model base;     /* first member (model.h) */
    int C, L, NH, F, V, P;
    float eps;
    float init_std;      /* initializer_range: the std of a score head the checkpoint lacks */
    char prefix[16];     /* "transformer." or "" as the checkpoint names its tensors */
    char *config_text;   /* config.json as read, written back by save_hf */
    float *slab;         /* every tensor as f32 (Conv1D weights transposed) */
    float *wte;          /* [V, C] also the tied LM head */
    float *wpe;          /* [P, C] */
    gpt2_layer *layers;  /* [L] */
    peft_norm_site ln_f;
    char config_path[4200];
    peft_param score;    /* seq-cls: "score.weight" [n_labels, C] with its gradient */
} gpt2;

/* ---- loading ----------------------------------------------------------------- */

/* An int field of config.json in [lo, hi]; absent or null (unless required) keeps *out. */
static int cfg_int(const cJSON *root, const char *key, int required, int lo, int hi, int *out, const char *what, peft_err *err) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, key);
    long long v = *out;
    int rc = peft_json_int(root, key, required, &v, what, err);
    if (rc || !f || cJSON_IsNull(f)) return rc;
    if (v < lo || v > hi) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" = %lld is outside [%d, %d]", what, key, v, lo, hi);
    *out = (int)v;
    return PEFT_OK;
}

/* A boolean field that must have the value `want` (what peft.c implements); absent is fine. */
static int cfg_bool_is(const cJSON *root, const char *key, int want, const char *what, peft_err *err) {
    int v = want;
    int rc = peft_json_bool(root, key, 0, &v, what, err);
    if (rc) return rc;
    if (v != want)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"%s\" = %s is not supported (only %s)", what, key, v ? "true" : "false",
                         want ? "true" : "false");
    return PEFT_OK;
}

/* n_labels from id2label (its size) or num_labels; 0 when neither is given. */
static int cfg_labels(const cJSON *root, int *n, const char *what, peft_err *err) {
    const cJSON *id2 = cJSON_GetObjectItemCaseSensitive(root, "id2label");
    if (id2 && cJSON_IsObject(id2)) *n = cJSON_GetArraySize(id2);
    return cfg_int(root, "num_labels", 0, 1, 1 << 16, n, what, err);
}

static int parse_config(gpt2 *g, const cJSON *root, const peft_model_load_opts *o, const char *what, peft_err *err) {
    peft_model_info *in = &g->base.info;
    int rc = cfg_int(root, "n_embd", 1, 1, 1 << 16, &g->C, what, err);
    if (!rc) rc = cfg_int(root, "n_layer", 1, 1, 4096, &g->L, what, err);
    if (!rc) rc = cfg_int(root, "n_head", 1, 1, 4096, &g->NH, what, err);
    if (!rc) rc = cfg_int(root, "n_positions", 1, 1, 1 << 20, &g->P, what, err);
    if (!rc) rc = cfg_int(root, "vocab_size", 1, 1, 1 << 24, &g->V, what, err);
    g->F = 4 * g->C;
    if (!rc) rc = cfg_int(root, "n_inner", 0, 1, 1 << 20, &g->F, what, err);
    double eps = 1e-5;
    if (!rc) rc = peft_json_double(root, "layer_norm_epsilon", 0, &eps, what, err);
    if (!rc && !(eps > 0 && eps < 1)) rc = peft_fail(err, PEFT_EFORMAT, "%s: \"layer_norm_epsilon\" = %g is outside (0, 1)", what, eps);
    g->eps = (float)eps;
    double init = 0.02;
    if (!rc) rc = peft_json_double(root, "initializer_range", 0, &init, what, err);
    if (!rc && !(init >= 0 && init < 10)) rc = peft_fail(err, PEFT_EFORMAT, "%s: \"initializer_range\" = %g is outside [0, 10)", what, init);
    g->init_std = (float)init;
    if (!rc && g->C % g->NH) rc = peft_fail(err, PEFT_EFORMAT, "%s: \"n_embd\" %d is not a multiple of \"n_head\" %d", what, g->C, g->NH);
    const char *act = "gelu_new";
    if (!rc) rc = peft_json_string(root, "activation_function", 0, &act, what, err);
    if (!rc && strcmp(act, "gelu_new") && strcmp(act, "gelu_pytorch_tanh"))
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"activation_function\" \"%s\" is not supported (gelu_new, gelu_pytorch_tanh)", what, act);
    /* attention scaled by 1/sqrt(HD) only; no cross-attention; the LM head is the embedding */
    if (!rc) rc = cfg_bool_is(root, "scale_attn_weights", 1, what, err);
    if (!rc) rc = cfg_bool_is(root, "scale_attn_by_inverse_layer_idx", 0, what, err);
    if (!rc) rc = cfg_bool_is(root, "add_cross_attention", 0, what, err);
    if (!rc) rc = cfg_bool_is(root, "tie_word_embeddings", 1, what, err);
    in->bos_token_id = in->pad_token_id = -1;
    int eos = -1;
    if (!rc) rc = cfg_int(root, "bos_token_id", 0, 0, g->V - 1, &in->bos_token_id, what, err);
    if (!rc) rc = cfg_int(root, "eos_token_id", 0, 0, g->V - 1, &eos, what, err);
    if (!rc) rc = cfg_int(root, "pad_token_id", 0, 0, g->V - 1, &in->pad_token_id, what, err);
    if (eos >= 0) in->eos_token_ids[in->n_eos++] = eos;
    in->n_labels = 0;
    if (!rc && o->task == PEFT_TASK_SEQ_CLS) {
        in->n_labels = o->n_labels;
        if (!in->n_labels) rc = cfg_labels(root, &in->n_labels, what, err);
        if (!rc && in->n_labels < 1) in->n_labels = 2; /* transformers' default num_labels */
    } else if (!rc && o->task != PEFT_TASK_CAUSAL_LM) {
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: gpt2 runs the tasks causal-lm and seq-cls, not %s", what, peft_task_name(o->task));
    }
    if (rc) return rc;
    in->arch = "gpt2";
    snprintf(in->model_type, sizeof in->model_type, "gpt2");
    snprintf(in->hf_class, sizeof in->hf_class, "%s",
             o->task == PEFT_TASK_SEQ_CLS ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel");
    in->task = o->task;
    in->is_decoder = 1;
    in->vocab_size = g->V;
    in->hidden_size = g->C;
    in->n_layers = g->L;
    in->n_heads = in->n_kv_heads = g->NH;
    in->head_dim = g->C / g->NH;
    in->max_positions = g->P;
    in->tie_word_embeddings = 1;
    return PEFT_OK;
}

/* One tensor of the checkpoint: HF name (without the prefix), HF shape, where it goes. */
typedef struct wanted {
    char name[160];
    int ndim, transpose; /* transpose: a Conv1D weight, stored [in, out], kept [out, in] */
    int64_t shape[2];
    float **dst;
} wanted;

static void want(wanted *w, int *n, float **dst, int64_t d0, int64_t d1, int transpose, const char *name) {
    wanted *x = &w[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->transpose = transpose;
    x->dst = dst;
}

static void norm_init(peft_norm_site *ns, const char *name, int layer, int C) {
    snprintf(ns->name, sizeof ns->name, "%s", name);
    ns->layer = layer;
    ns->dim = C;
}

/* Names the sites and norms and lists every tensor with its HF shape and the pointer that holds
 * it (the weights in use: save_hf reads them back through the same list). Idempotent: it writes
 * names and shapes only, never the pointers. Returns the count. */
static int list_wanted(gpt2 *g, wanted *w) {
    int n = 0, C = g->C, F = g->F;
    char name[160], mod[128];
    want(w, &n, &g->wte, g->V, C, 0, "wte.weight");
    want(w, &n, &g->wpe, g->P, C, 0, "wpe.weight");
    const int out_dim[G_SITES] = {3 * C, C, F, C}, in_dim[G_SITES] = {C, C, C, F};
    for (int l = 0; l < g->L; l++) {
        gpt2_layer *Ly = &g->layers[l];
        peft_norm_site *norms[2] = {&Ly->ln_1, &Ly->ln_2};
        for (int k = 0; k < 2; k++) {
            snprintf(mod, sizeof mod, "transformer.h.%d.ln_%d", l, k + 1);
            norm_init(norms[k], mod, l, C);
            snprintf(name, sizeof name, "h.%d.ln_%d.weight", l, k + 1);
            want(w, &n, &norms[k]->weight, C, 0, 0, name);
            snprintf(name, sizeof name, "h.%d.ln_%d.bias", l, k + 1);
            want(w, &n, &norms[k]->bias, C, 0, 0, name);
        }
        for (int s = 0; s < G_SITES; s++) {
            peft_site *site = &Ly->sites[s];
            snprintf(site->name, sizeof site->name, "transformer.h.%d.%s", l, site_paths[s]);
            site->kind = site_kinds[s];
            site->layer = l;
            site->in_features = in_dim[s];
            site->out_features = out_dim[s];
            site->fan_in_fan_out = 1;
            snprintf(name, sizeof name, "h.%d.%s.weight", l, site_paths[s]);
            want(w, &n, &site->weight, in_dim[s], out_dim[s], 1, name);
            snprintf(name, sizeof name, "h.%d.%s.bias", l, site_paths[s]);
            want(w, &n, &site->bias, out_dim[s], 0, 0, name);
        }
    }
    norm_init(&g->ln_f, "transformer.ln_f", -1, C);
    want(w, &n, &g->ln_f.weight, C, 0, 0, "ln_f.weight");
    want(w, &n, &g->ln_f.bias, C, 0, 0, "ln_f.bias");
    return n;
}

static int check_finite(const float *x, size_t n, const char *name, const char *file, peft_err *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return peft_fail(err, PEFT_ENUMERIC, "%s: tensor \"%s\" holds a non-finite value (%g) at index %zu", file, name, x[i], i);
    return PEFT_OK;
}

/* out[c, r] = in[r, c] for in [R, Cc]. */
static void transpose(float *out, const float *in, int R, int Cc) {
    for (int r = 0; r < R; r++)
        for (int c = 0; c < Cc; c++) out[(size_t)c * R + r] = in[(size_t)r * Cc + c];
}

/* Reads every wanted tensor (shape-checked, widened to f32, Conv1D weights transposed) into one
 * slab; the score head of seq-cls is appended (from the checkpoint or initialised as HF does). */
static int bind_weights(gpt2 *g, peft_weights *wts, wanted *w, int n, peft_err *err) {
    const char *dir = g->base.dir;
    /* "transformer.wte.weight" (GPT2LMHeadModel saves) or "wte.weight" (GPT2Model saves) */
    snprintf(g->prefix, sizeof g->prefix, "%s", peft_weights_find(wts, "transformer.wte.weight", NULL) ? "transformer." : "");
    int NL = g->base.info.n_labels;
    size_t total = (size_t)NL * g->C, big = 0;
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)w[i].shape[0] * (w[i].ndim > 1 ? (size_t)w[i].shape[1] : 1);
        total += k;
        if (w[i].transpose && k > big) big = k;
    }
    g->slab = malloc(total * sizeof(float));
    float *tmp = malloc((big ? big : 1) * sizeof(float));
    int rc = PEFT_OK;
    if (!g->slab || !tmp) rc = peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu MB for the weights", dir, total * 4 >> 20);
    float *p = g->slab;
    char full[192];
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        snprintf(full, sizeof full, "%s%s", g->prefix, w[i].name);
        size_t k = (size_t)w[i].shape[0] * (w[i].ndim > 1 ? (size_t)w[i].shape[1] : 1);
        const char *file = dir;
        peft_weights_find(wts, full, &file);
        float *read = w[i].transpose ? tmp : p;
        rc = peft_weights_read_f32(wts, full, w[i].ndim, w[i].shape, read, err);
        if (rc == PEFT_OK) rc = check_finite(read, k, full, file, err); /* indices as in the file */
        if (rc == PEFT_OK && w[i].transpose) transpose(p, tmp, (int)w[i].shape[0], (int)w[i].shape[1]);
        *w[i].dst = p;
        p += k;
        g->base.n_params += k;
    }
    free(tmp);
    if (rc || !NL) return rc;
    /* seq-cls head "score.weight" [NL, C] (no bias) */
    peft_param *s = &g->score;
    snprintf(s->name, sizeof s->name, "score.weight");
    s->data = p;
    s->numel = total - (size_t)(p - g->slab);
    s->ndim = 2;
    s->shape[0] = NL;
    s->shape[1] = g->C;
    s->lr_scale = 1.0f;
    const peft_st_tensor *t = peft_weights_find(wts, "score.weight", NULL);
    if (t) {
        rc = peft_weights_read_f32(wts, "score.weight", 2, s->shape, s->data, err);
        if (rc == PEFT_OK) rc = check_finite(s->data, s->numel, "score.weight", dir, err);
    } else { /* not in a causal-LM checkpoint: N(0, initializer_range^2) as HF's _init_weights, fixed seed */
        peft_rng r;
        peft_rng_seed(&r, 0x6770743273636f72ULL, 0);
        for (size_t i = 0; i < s->numel; i++) s->data[i] = g->init_std * peft_rng_normal(&r);
    }
    if (rc == PEFT_OK && !(s->grad = calloc(s->numel, sizeof(float)))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    g->base.head = s;
    g->base.n_head = 1;
    return rc;
}

static void gpt2_free(peft_model *m) {
    gpt2 *g = (gpt2 *)m;
    if (!g) return;
    free(g->slab);
    free(g->layers);
    free(g->config_text);
    free(g->score.grad);
    free(m->sites);
    free(m->norms);
    free(g);
}

/* m->sites and m->norms in model order: per layer ln_1, c_attn, c_proj, ln_2, c_fc, c_proj; then ln_f. */
static int index_sites(gpt2 *g, peft_err *err) {
    peft_model *m = &g->base;
    m->sites = calloc((size_t)g->L * G_SITES, sizeof *m->sites);
    m->norms = calloc((size_t)g->L * 2 + 1, sizeof *m->norms);
    if (!m->sites || !m->norms) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int l = 0; l < g->L; l++) {
        for (int s = 0; s < G_SITES; s++) m->sites[m->n_sites++] = &g->layers[l].sites[s];
        m->norms[m->n_norms++] = &g->layers[l].ln_1;
        m->norms[m->n_norms++] = &g->layers[l].ln_2;
    }
    m->norms[m->n_norms++] = &g->ln_f;
    for (int i = 0; i < m->n_norms; i++) {
        m->norms[i]->base = m->norms[i]->weight;
        m->norms[i]->bias_base = m->norms[i]->bias;
    }
    return PEFT_OK;
}

static const peft_model_ops gpt2_ops;

static int gpt2_load(const char *path, const char *config_json, size_t config_len, const peft_model_load_opts *opts,
              peft_model **out, peft_err *err) {
    *out = NULL;
    peft_model_load_opts defaults = {0};
    const peft_model_load_opts *o = opts ? opts : &defaults;
    gpt2 *g = calloc(1, sizeof *g);
    if (!g) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    g->base.ops = &gpt2_ops;
    snprintf(g->base.dir, sizeof g->base.dir, "%s", path);
    char what[4200];
    snprintf(what, sizeof what, "%s/config.json", path);
    snprintf(g->config_path, sizeof g->config_path, "%s", what);
    g->base.info.file = g->config_path;
    cJSON *root = NULL;
    int rc = peft_json_parse(config_json, config_len, what, &root, err);
    if (rc == PEFT_OK) rc = parse_config(g, root, o, what, err);
    cJSON_Delete(root);
    if (rc == PEFT_OK && !(g->config_text = malloc(config_len + 1))) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) {
        memcpy(g->config_text, config_json, config_len);
        g->config_text[config_len] = '\0';
    }
    wanted *w = NULL;
    if (rc == PEFT_OK) {
        g->layers = calloc((size_t)g->L, sizeof *g->layers);
        w = calloc((size_t)g->L * 12 + 4, sizeof *w);
        if (!g->layers || !w) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    int n = rc ? 0 : list_wanted(g, w);
    if (rc == PEFT_OK && !o->shapes_only) {
        peft_weights *wts = NULL;
        rc = peft_weights_open(path, &wts, err);
        if (rc == PEFT_OK) rc = bind_weights(g, wts, w, n, err);
        peft_weights_close(wts);
    }
    free(w);
    if (rc == PEFT_OK) rc = index_sites(g, err);
    if (rc) {
        gpt2_free(&g->base);
        return rc;
    }
    *out = &g->base;
    return PEFT_OK;
}

/* ---- activations --------------------------------------------------------------- */

typedef struct gpt2_layer_acts {
    float *xn1, *mean1, *rstd1; /* ln_1(x_in) [N, C], [N], [N] */
    float *qkv;                 /* [N, 3C] c_attn output */
    float *q, *k, *v;           /* [N, C] each, split out of qkv for the attention kernel */
    float *att, *lse;           /* [N, C], [B, NH, T] */
    float *x_mid;               /* [N, C] residual after attention */
    float *xn2, *mean2, *rstd2; /* ln_2(x_mid) */
    float *h, *act;             /* [N, F] c_fc output, gelu of it */
} gpt2_layer_acts;

struct peft_acts {
    int cap_B, cap_T;          /* allocated for batches up to cap_B x cap_T */
    int B, T, save_all, training; /* B, T: the last forward's batch */
    float *slab;
    int32_t *pos;              /* [N] position of each token (wpe index) */
    int32_t *lengths;          /* [B] valid tokens of each row */
    int packed;                /* the last batch had explicit positions: attention stays in the example */
    float *residual;           /* [L+1, N, C] */
    gpt2_layer_acts *layer;    /* [L] (all alias layer 0 without save_all) */
    float *xnf, *meanf, *rstdf;/* ln_f [N, C], [N], [N] */
    float *logits;             /* [N, V] causal-lm or [B, NL] seq-cls */
    float *pooled;             /* seq-cls [B, C] */
    float *losses;             /* [N] or [B] */
    /* backward scratch */
    float *dres, *dxn, *dqkv, *dq, *dk, *dv, *datt, *dh, *dact, *dlogits, *dxnf;
};

static int n_out(const gpt2 *g) { return g->base.info.task == PEFT_TASK_SEQ_CLS ? g->base.info.n_labels : g->V; }

static int gpt2_acts_alloc(peft_model *m, int B, int T, int save_all, int training, peft_acts **out, peft_err *err) {
    gpt2 *g = (gpt2 *)m;
    *out = NULL;
    if (B < 1 || T < 1) return peft_fail(err, PEFT_EINVAL, "activations for %d x %d tokens", B, T);
    const size_t N = (size_t)B * T, C = g->C, F = g->F, L = g->L, O = n_out(g);
    const size_t rows = g->base.info.task == PEFT_TASK_SEQ_CLS ? (size_t)B : N;
    const size_t sets = save_all ? L : 1;
    size_t per_layer = N * (3 * C + 2 + 3 * C + 3 * C + C + C + 2 + 2 * F) + N * g->NH;
    size_t total = (L + 1) * N * C + sets * per_layer + 3 * N * C + 2 * N + rows * O + (size_t)B * C + N;
    if (training) total += 2 * N * C + 3 * N * C + 3 * N * C + N * C + 2 * N * F + rows * O + N * C;
    peft_acts *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->cap_B = a->B = B, a->cap_T = a->T = T, a->save_all = save_all, a->training = training;
    a->slab = malloc(total * sizeof(float));
    a->pos = malloc(N * sizeof *a->pos);
    a->lengths = malloc((size_t)B * sizeof *a->lengths);
    a->layer = calloc(L, sizeof *a->layer);
    if (!a->slab || !a->pos || !a->lengths || !a->layer) {
        free(a->slab), free(a->pos), free(a->lengths), free(a->layer), free(a);
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB of activations for %d x %d tokens", total * 4 >> 20, B, T);
    }
    float *p = a->slab;
#define TAKE(ptr, n) ((ptr) = p, p += (n))
    TAKE(a->residual, (L + 1) * N * C);
    for (size_t l = 0; l < sets; l++) {
        gpt2_layer_acts *la = &a->layer[l];
        TAKE(la->xn1, N * C), TAKE(la->mean1, N), TAKE(la->rstd1, N);
        TAKE(la->qkv, 3 * N * C), TAKE(la->q, N * C), TAKE(la->k, N * C), TAKE(la->v, N * C);
        TAKE(la->att, N * C), TAKE(la->lse, N * g->NH);
        TAKE(la->x_mid, N * C), TAKE(la->xn2, N * C), TAKE(la->mean2, N), TAKE(la->rstd2, N);
        TAKE(la->h, N * F), TAKE(la->act, N * F);
    }
    for (size_t l = sets; l < L; l++) a->layer[l] = a->layer[0];
    TAKE(a->xnf, N * C), TAKE(a->meanf, N), TAKE(a->rstdf, N);
    TAKE(a->logits, rows * O), TAKE(a->pooled, (size_t)B * C), TAKE(a->losses, N);
    if (training) {
        TAKE(a->dres, N * C), TAKE(a->dxn, N * C), TAKE(a->dqkv, 3 * N * C);
        TAKE(a->dq, N * C), TAKE(a->dk, N * C), TAKE(a->dv, N * C), TAKE(a->datt, N * C);
        TAKE(a->dh, N * F), TAKE(a->dact, N * F), TAKE(a->dlogits, rows * O), TAKE(a->dxnf, N * C);
    }
#undef TAKE
    *out = a;
    return PEFT_OK;
}

static void gpt2_acts_free(peft_acts *a) {
    if (!a) return;
    free(a->slab);
    free(a->pos);
    free(a->lengths);
    free(a->layer);
    free(a);
}

/* ---- forward ------------------------------------------------------------------- */

/* qkv [N, 3C] (q | k | v per row, as HF's split(C, dim=2)) <-> q, k, v [N, C]; dir 0 splits, 1 joins. */
static void qkv_move(float *qkv, float *q, float *k, float *v, int N, int C, int join) {
    float *parts[3] = {q, k, v};
    for (int n = 0; n < N; n++)
        for (int s = 0; s < 3; s++) {
            float *fused = qkv + ((size_t)n * 3 + s) * C, *part = parts[s] + (size_t)n * C;
            if (join) memcpy(fused, part, (size_t)C * sizeof(float));
            else memcpy(part, fused, (size_t)C * sizeof(float));
        }
}

/* Prefix tuning: where layer l's key (column block 2l) or value (2l + 1) of virtual token t
 * starts in prefix_kv / prefix_grad [n_virtual, L * 2 * C]. */
static size_t prefix_at(const gpt2 *g, int l, int t, int value) {
    return (size_t)t * g->L * 2 * g->C + (size_t)(2 * l + value) * g->C;
}

/* One layer: x_out[N, C] from x_in. Without a cache, attention runs over the batch (B x T, causal,
 * opts' positions and lengths); with one (kc, vc: this layer's [capacity, C] rows, kv_len
 * stored), the T new rows of one sequence are appended and attend the cache. */
static int layer_forward(gpt2 *g, int l, gpt2_layer_acts *la, const float *x_in, float *x_out, const attention_opts *ao,
                         int B, int T, float *kc, float *vc, int kv_len, int save) {
    gpt2_layer *Ly = &g->layers[l];
    const int N = B * T, C = g->C, HD = C / g->NH;
    layernorm_forward(la->xn1, la->mean1, la->rstd1, x_in, Ly->ln_1.weight, Ly->ln_1.bias, g->eps, N, C);
    int rc = site_forward(&Ly->sites[G_ATTN], la->qkv, la->xn1, N, save);
    if (rc) return rc;
    if (kc) {
        qkv_move(la->qkv, la->q, kc + (size_t)kv_len * C, vc + (size_t)kv_len * C, N, C, 0);
        attention_opts dec = {.causal = 1};
        rc = attention_forward_opts(la->att, NULL, la->q, kc, vc, &dec, 1, T, kv_len + T, g->NH, g->NH, HD);
    } else {
        qkv_move(la->qkv, la->q, la->k, la->v, N, C, 0);
        const peft_virtual *vt = &g->base.virt;
        for (int b = 0; b < B && vt->prefix_kv; b++) /* rows t < n_virtual: the trained prefix as k and v */
            for (int t = 0; t < vt->n_virtual; t++) {
                memcpy(la->k + ((size_t)b * T + t) * C, vt->prefix_kv + prefix_at(g, l, t, 0), (size_t)C * sizeof(float));
                memcpy(la->v + ((size_t)b * T + t) * C, vt->prefix_kv + prefix_at(g, l, t, 1), (size_t)C * sizeof(float));
            }
        rc = attention_forward_opts(la->att, la->lse, la->q, la->k, la->v, ao, B, T, T, g->NH, g->NH, HD);
    }
    if (rc == PEFT_OK) rc = site_forward(&Ly->sites[G_ATTN_PROJ], la->x_mid, la->att, N, save);
    if (rc) return rc;
    add_inplace(la->x_mid, x_in, (size_t)N * C);
    layernorm_forward(la->xn2, la->mean2, la->rstd2, la->x_mid, Ly->ln_2.weight, Ly->ln_2.bias, g->eps, N, C);
    rc = site_forward(&Ly->sites[G_FC], la->h, la->xn2, N, save);
    if (rc) return rc;
    gelu_forward(la->act, la->h, N, g->F, GELU_TANH);
    rc = site_forward(&Ly->sites[G_MLP_PROJ], x_out, la->act, N, save);
    add_inplace(x_out, la->x_mid, (size_t)N * C);
    return rc;
}

/* x[N, C] = wte(ids) + wpe(pos); the virtual rows (row index first + t < n_virtual) take the
 * prompt-tuning embeddings instead of wte, and still get wpe as HF PEFT's inputs_embeds do.
 * ids may be NULL when every row is virtual. */
static void embed(const gpt2 *g, float *x, const int32_t *ids, const int32_t *pos, int B, int T, int first) {
    const int C = g->C;
    if (ids) embedding_forward(x, ids, g->wte, B * T, C);
    const peft_virtual *vt = &g->base.virt;
    for (int b = 0; b < B && vt->emb; b++)
        for (int t = 0; t < T; t++)
            if (first + t < vt->n_virtual)
                memcpy(x + ((size_t)b * T + t) * C, vt->emb + (size_t)(first + t) * C, (size_t)C * sizeof(float));
    embedding_add_forward(x, pos, g->wpe, B * T, C);
}

static int check_batch(const gpt2 *g, peft_acts *a, const peft_batch *b, peft_err *err) {
    const int B = b->B, T = b->T, NL = g->base.info.n_labels;
    if (B < 1 || T < 1 || B > a->cap_B || T > a->cap_T)
        return peft_fail(err, PEFT_EINVAL, "a batch of %d x %d tokens in activations for %d x %d", B, T, a->cap_B, a->cap_T);
    if (!b->ids) return peft_fail(err, PEFT_EINVAL, "gpt2 needs token ids");
    if (T > g->P) return peft_fail(err, PEFT_EINVAL, "%d tokens exceed the model's context of %d (n_positions)", T, g->P);
    if (g->base.virt.n_virtual >= T)
        return peft_fail(err, PEFT_EINVAL, "rows of %d tokens leave no room after %d virtual tokens", T, g->base.virt.n_virtual);
    for (int i = 0; i < B * T; i++)
        if (b->ids[i] < 0 || b->ids[i] >= g->V)
            return peft_fail(err, PEFT_EINVAL, "token id %d at index %d is outside the vocabulary [0, %d)", b->ids[i], i, g->V);
    for (int r = 0; r < B; r++) {
        int len = b->lengths ? b->lengths[r] : T;
        if (len < 1 || len > T) return peft_fail(err, PEFT_EINVAL, "row %d: length %d is outside [1, %d]", r, len, T);
        a->lengths[r] = len;
        for (int t = 0; t < T; t++) {
            int p = b->pos ? b->pos[r * T + t] : t;
            if (p < 0 || p > t) return peft_fail(err, PEFT_EINVAL, "position %d of token %d in row %d must be in [0, %d]", p, t, r, t);
            a->pos[r * T + t] = p;
        }
    }
    if (b->targets)
        for (int i = 0; i < (NL ? B : B * T); i++)
            if (b->targets[i] >= (NL ? NL : g->V))
                return peft_fail(err, PEFT_EINVAL, "target %d at index %d is outside [0, %d)", b->targets[i], i, NL ? NL : g->V);
    return PEFT_OK;
}

static attention_opts batch_attention(const peft_acts *a) {
    return (attention_opts){.causal = 1, .pos = a->packed ? a->pos : NULL, .kv_len = a->lengths};
}

static int gpt2_forward(peft_model *m, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err) {
    gpt2 *g = (gpt2 *)m;
    int rc = check_batch(g, a, b, err);
    if (rc) return rc;
    a->B = b->B, a->T = b->T; /* a smaller batch reuses the buffers */
    const int B = b->B, T = b->T, N = B * T, C = g->C, NL = m->info.n_labels;
    a->packed = b->pos != NULL;
    embed(g, a->residual, b->ids, a->pos, B, T, 0);
    attention_opts ao = batch_attention(a);
    for (int l = 0; l < g->L && rc == PEFT_OK; l++)
        rc = layer_forward(g, l, &a->layer[l], a->residual + (size_t)l * N * C, a->residual + (size_t)(l + 1) * N * C, &ao,
                           B, T, NULL, NULL, 0, a->training);
    if (rc) return peft_fail(err, rc, "out of memory for a kernel's scratch (forward pass)");
    layernorm_forward(a->xnf, a->meanf, a->rstdf, a->residual + (size_t)g->L * N * C, g->ln_f.weight, g->ln_f.bias, g->eps, N, C);
    int rows = N, O = g->V;
    if (NL) { /* the last non-padding token of each row */
        for (int r = 0; r < B; r++)
            memcpy(a->pooled + (size_t)r * C, a->xnf + ((size_t)r * T + a->lengths[r] - 1) * C, (size_t)C * sizeof(float));
        matmul_forward(a->logits, a->pooled, g->score.data, NULL, B, C, NL);
        rows = B, O = NL;
    } else {
        matmul_forward(a->logits, a->xnf, g->wte, NULL, N, C, g->V);
    }
    if (b->targets) {
        int counted = crossentropy_forward(a->losses, a->logits, b->targets, rows, O);
        double sum = 0;
        for (int i = 0; i < rows; i++) sum += a->losses[i];
        if (loss) *loss = counted ? sum / counted : 0.0;
        if (n_counted) *n_counted = counted;
    }
    return PEFT_OK;
}

static const float *gpt2_outputs(const peft_acts *a) { return a->logits; }

/* ---- backward ------------------------------------------------------------------ */

/* dres[N, C]: on entry dL/dx_out, on return dL/dx_in. */
static int layer_backward(gpt2 *g, int l, gpt2_layer_acts *la, peft_acts *a, const float *x_in, const attention_opts *ao) {
    gpt2_layer *Ly = &g->layers[l];
    const int B = a->B, T = a->T, N = B * T, C = g->C, F = g->F, HD = C / g->NH;
    memset(a->dact, 0, (size_t)N * F * sizeof(float));
    int rc = site_backward(&Ly->sites[G_MLP_PROJ], a->dact, a->dres, la->act, N);
    if (rc) return rc;
    memset(a->dh, 0, (size_t)N * F * sizeof(float));
    gelu_backward(a->dh, a->dact, la->h, N, F, GELU_TANH);
    memset(a->dxn, 0, (size_t)N * C * sizeof(float));
    if ((rc = site_backward(&Ly->sites[G_FC], a->dxn, a->dh, la->xn2, N))) return rc;
    layernorm_backward(a->dres, Ly->ln_2.grad, Ly->ln_2.bias_grad, a->dxn, la->x_mid, Ly->ln_2.weight, la->mean2, la->rstd2, N, C);
    memset(a->datt, 0, (size_t)N * C * sizeof(float));
    if ((rc = site_backward(&Ly->sites[G_ATTN_PROJ], a->datt, a->dres, la->att, N))) return rc;
    memset(a->dq, 0, (size_t)3 * N * C * sizeof(float)); /* dq, dk, dv are adjacent */
    rc = attention_backward_opts(a->dq, a->dk, a->dv, a->datt, la->q, la->k, la->v, la->att, la->lse, ao, B, T, g->NH, g->NH, HD);
    if (rc) return rc;
    const peft_virtual *vt = &g->base.virt;
    for (int b = 0; b < B && vt->prefix_grad; b++) /* the prefix rows' dk, dv are its gradient; nothing flows on */
        for (int t = 0; t < vt->n_virtual; t++) {
            float *dk = a->dk + ((size_t)b * T + t) * C, *dv = a->dv + ((size_t)b * T + t) * C;
            add_inplace(vt->prefix_grad + prefix_at(g, l, t, 0), dk, (size_t)C);
            add_inplace(vt->prefix_grad + prefix_at(g, l, t, 1), dv, (size_t)C);
            memset(dk, 0, (size_t)C * sizeof(float));
            memset(dv, 0, (size_t)C * sizeof(float));
        }
    qkv_move(a->dqkv, a->dq, a->dk, a->dv, N, C, 1);
    memset(a->dxn, 0, (size_t)N * C * sizeof(float));
    if ((rc = site_backward(&Ly->sites[G_ATTN], a->dxn, a->dqkv, la->xn1, N))) return rc;
    layernorm_backward(a->dres, Ly->ln_1.grad, Ly->ln_1.bias_grad, a->dxn, x_in, Ly->ln_1.weight, la->mean1, la->rstd1, N, C);
    return PEFT_OK;
}

static int gpt2_backward(peft_model *m, peft_acts *a, const peft_batch *b, int n_counted) {
    gpt2 *g = (gpt2 *)m;
    const int B = a->B, T = a->T, N = B * T, C = g->C, NL = m->info.n_labels;
    if (n_counted <= 0 || !b->targets || !a->training) return PEFT_OK;
    const int rows = NL ? B : N, O = NL ? NL : g->V;
    /* d(mean loss)/dlogits, then through the head into dxnf */
    memset(a->dlogits, 0, (size_t)rows * O * sizeof(float));
    crossentropy_backward(a->dlogits, a->logits, b->targets, 1.0f / (float)n_counted, rows, O);
    memset(a->dxnf, 0, (size_t)N * C * sizeof(float));
    if (NL) {
        memset(a->dxn, 0, (size_t)B * C * sizeof(float));
        matmul_backward(a->dxn, g->score.grad, NULL, a->dlogits, a->pooled, g->score.data, B, C, NL);
        for (int r = 0; r < B; r++)
            memcpy(a->dxnf + ((size_t)r * T + a->lengths[r] - 1) * C, a->dxn + (size_t)r * C, (size_t)C * sizeof(float));
    } else {
        matmul_backward(a->dxnf, NULL, NULL, a->dlogits, a->xnf, g->wte, N, C, g->V);
    }
    memset(a->dres, 0, (size_t)N * C * sizeof(float));
    layernorm_backward(a->dres, g->ln_f.grad, g->ln_f.bias_grad, a->dxnf, a->residual + (size_t)g->L * N * C, g->ln_f.weight,
                       a->meanf, a->rstdf, N, C);
    attention_opts ao = batch_attention(a);
    int rc = PEFT_OK;
    for (int l = g->L - 1; l >= 0 && rc == PEFT_OK; l--) {
        const float *x_in = a->residual + (size_t)l * N * C;
        if (!a->save_all) /* gradient checkpointing: rebuild this layer's intermediates */
            rc = layer_forward(g, l, &a->layer[l], x_in, a->residual + (size_t)(l + 1) * N * C, &ao, B, T, NULL, NULL, 0, 1);
        if (rc == PEFT_OK) rc = layer_backward(g, l, &a->layer[l], a, x_in, &ao);
    }
    if (rc) return rc;
    /* dres is dL/d(embeddings): the virtual rows' part is prompt tuning's gradient */
    for (int r = 0; r < B && m->virt.emb_grad; r++)
        add_inplace(m->virt.emb_grad, a->dres + (size_t)r * T * C, (size_t)m->virt.n_virtual * C);
    return PEFT_OK;
}

/* ---- cached decoding ----------------------------------------------------------- */

struct peft_kv {
    int capacity, len, chunk;
    float *k, *v;   /* [L, capacity, C] */
    peft_acts *acts; /* inference activations for `chunk` rows */
};

static void gpt2_kv_free(peft_kv *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    gpt2_acts_free(kv->acts);
    free(kv);
}

static int gpt2_kv_alloc(peft_model *m, int capacity, int chunk, peft_kv **out, peft_err *err) {
    gpt2 *g = (gpt2 *)m;
    *out = NULL;
    capacity += m->virt.n_virtual; /* virtual tokens take cache rows too */
    if (capacity > g->P) return peft_fail(err, PEFT_EINVAL, "%d tokens exceed the model's context of %d (n_positions)", capacity, g->P);
    if (chunk < 1) return peft_fail(err, PEFT_EINVAL, "decode chunk of %d tokens", chunk);
    peft_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    size_t n = (size_t)g->L * capacity * g->C;
    kv->capacity = capacity;
    kv->chunk = chunk;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    int rc = kv->k && kv->v ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "cannot allocate a KV cache of %d tokens", capacity);
    if (rc == PEFT_OK) {
        /* the causal-lm head over `chunk` rows: decoding is for the LM whatever the task */
        rc = gpt2_acts_alloc(m, 1, chunk, 0, 0, &kv->acts, err);
    }
    if (rc) {
        gpt2_kv_free(kv);
        return rc;
    }
    *out = kv;
    return PEFT_OK;
}

static int gpt2_kv_len(const peft_kv *kv) { return kv->len; }

/* Appends n rows (positions len..len+n-1) to the cache; logits[V] of the last one. */
static int decode_rows(gpt2 *g, peft_kv *kv, const int32_t *ids, int n, float *logits) {
    const int C = g->C;
    peft_acts *a = kv->acts;
    for (int i = 0; i < n; i++) a->pos[i] = kv->len + i;
    embed(g, a->residual, ids, a->pos, 1, n, kv->len);
    int rc = PEFT_OK;
    for (int l = 0; l < g->L && rc == PEFT_OK; l++) { /* layer l reads residual slot l%2, writes the other */
        size_t off = (size_t)l * kv->capacity * C;
        rc = layer_forward(g, l, &a->layer[0], a->residual + (size_t)(l % 2) * n * C, a->residual + (size_t)((l + 1) % 2) * n * C,
                           NULL, 1, n, kv->k + off, kv->v + off, kv->len, 0);
    }
    const float *last = a->residual + (size_t)(g->L % 2) * n * C + (size_t)(n - 1) * C;
    layernorm_forward(a->xnf, NULL, NULL, last, g->ln_f.weight, g->ln_f.bias, g->eps, 1, C);
    matmul_forward(logits, a->xnf, g->wte, NULL, 1, C, g->V);
    kv->len += n;
    return rc;
}

static int gpt2_decode(peft_model *m, peft_kv *kv, const int32_t *ids, int n, float *logits, peft_err *err) {
    gpt2 *g = (gpt2 *)m;
    if (n < 1 || n > kv->chunk) return peft_fail(err, PEFT_EINVAL, "decode of %d tokens (chunk is %d)", n, kv->chunk);
    const int virt = kv->len == 0 ? m->virt.n_virtual : 0;
    if (kv->len + virt + n > kv->capacity)
        return peft_fail(err, PEFT_EINVAL, "context full: %d + %d tokens exceed %d", kv->len + virt, n, kv->capacity);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->V) return peft_fail(err, PEFT_EINVAL, "token id %d is outside the vocabulary [0, %d)", ids[i], g->V);
    int rc = PEFT_OK;
    if (virt && m->virt.prefix_kv) { /* prefix tuning: the prefix is the first cache rows of every layer */
        for (int l = 0; l < g->L; l++)
            for (int t = 0; t < virt; t++) {
                size_t row = ((size_t)l * kv->capacity + t) * g->C;
                memcpy(kv->k + row, m->virt.prefix_kv + prefix_at(g, l, t, 0), (size_t)g->C * sizeof(float));
                memcpy(kv->v + row, m->virt.prefix_kv + prefix_at(g, l, t, 1), (size_t)g->C * sizeof(float));
            }
        kv->len = virt;
    }
    for (int i = 0; i < virt && m->virt.emb && rc == PEFT_OK; i += kv->chunk) /* prompt tuning: the virtual rows come first */
        rc = decode_rows(g, kv, NULL, virt - i < kv->chunk ? virt - i : kv->chunk, logits);
    if (rc == PEFT_OK) rc = decode_rows(g, kv, ids, n, logits);
    return rc ? peft_fail(err, rc, "out of memory for a kernel's scratch (decoding)") : PEFT_OK;
}

/* One sequence at a time (each through its own cache). */
static int gpt2_decode_batch(peft_model *m, peft_kv *const *kv, const int32_t *ids, int n_seq, float *logits, peft_err *err) {
    if (n_seq < 1) return peft_fail(err, PEFT_EINVAL, "batched decode of %d sequences", n_seq);
    for (int i = 0; i < n_seq; i++) {
        if (m->virt.n_virtual && kv[i]->len == 0)
            return peft_fail(err, PEFT_EINVAL, "sequence %d: prefill it with decode first (virtual tokens)", i);
        for (int j = 0; j < i; j++)
            if (kv[j] == kv[i]) return peft_fail(err, PEFT_EINVAL, "sequences %d and %d share a KV cache", j, i);
    }
    for (int i = 0; i < n_seq; i++) {
        int rc = gpt2_decode(m, kv[i], ids + i, 1, logits + (size_t)i * m->info.vocab_size, err);
        if (rc) return peft_err_prefix(err, "sequence %d: ", i);
    }
    return PEFT_OK;
}

/* ---- saving ---------------------------------------------------------------------- */

/* DIR/config.json as loaded and DIR/model.safetensors with the current weights under the
 * checkpoint's names (Conv1D weights transposed back to [in, out]). */
static int gpt2_save_hf(peft_model *m, const char *dir, peft_err *err) {
    gpt2 *g = (gpt2 *)m;
    if (!g->slab) return peft_fail(err, PEFT_EINVAL, "%s: loaded as shapes only, no weights to save", m->dir);
    const int n_max = g->L * 12 + 5;
    wanted *w = calloc((size_t)n_max, sizeof *w);
    peft_st_entry *e = calloc((size_t)n_max, sizeof *e);
    char(*names)[192] = calloc((size_t)n_max, sizeof *names);
    size_t conv = (size_t)g->L * (4 * (size_t)g->C * g->C + 2 * (size_t)g->C * g->F); /* the Conv1D weights */
    float *tr = malloc((conv ? conv : 1) * sizeof(float));
    int rc = w && e && names && tr ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    int n = rc ? 0 : list_wanted(g, w);
    float *t = tr;
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", g->prefix, w[i].name);
        e[i] = (peft_st_entry){.name = names[i], .dtype = PEFT_F32, .ndim = w[i].ndim, .shape = {w[i].shape[0], w[i].shape[1]},
                               .data = *w[i].dst};
        if (w[i].transpose) { /* site [out, in] -> Conv1D [in, out] */
            transpose(t, *w[i].dst, (int)w[i].shape[1], (int)w[i].shape[0]);
            e[i].data = t;
            t += (size_t)w[i].shape[0] * w[i].shape[1];
        }
    }
    if (rc == PEFT_OK && m->info.n_labels)
        e[n++] = (peft_st_entry){.name = "score.weight", .dtype = PEFT_F32, .ndim = 2,
                                 .shape = {g->score.shape[0], g->score.shape[1]}, .data = g->score.data};
    char path[4200];
    if (rc == PEFT_OK) rc = peft_mkdir(dir, err);
    if (rc == PEFT_OK) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        rc = peft_write_file_atomic(path, g->config_text, strlen(g->config_text), err);
    }
    if (rc == PEFT_OK) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        const char *meta[] = {"format", "pt"};
        rc = peft_st_write(path, e, n, meta, 1, err);
    }
    free(w), free(e), free(names), free(tr);
    return rc;
}

static const peft_model_ops gpt2_ops = {
    .abi_version = PEFT_MODEL_ABI,
    .arch = "gpt2",
    .free = gpt2_free,
    .acts_alloc = gpt2_acts_alloc,
    .acts_free = gpt2_acts_free,
    .forward = gpt2_forward,
    .outputs = gpt2_outputs,
    .backward = gpt2_backward,
    .kv_alloc = gpt2_kv_alloc,
    .kv_free = gpt2_kv_free,
    .kv_len = gpt2_kv_len,
    .decode = gpt2_decode,
    .decode_batch = gpt2_decode_batch,
    .save_hf = gpt2_save_hf,
};

/* registered in src/models/registry.c */
static const char *const gpt2_model_types[] = {"gpt2", NULL};
const peft_arch peft_arch_gpt2 = {.name = "gpt2", .model_types = gpt2_model_types, .load = gpt2_load};
