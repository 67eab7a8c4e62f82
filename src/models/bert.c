/* bert.c: BERT (model_type "bert") and RoBERTa ("roberta") for sequence classification, in
 * the order HF's modeling_bert.py / modeling_roberta.py compute them:
 *
 *   x0 = LN(word[ids] + pos[p] + type[type_ids])      BERT p = t; RoBERTa p = pad + 1 + (count of
 *                                                      non-pad tokens up to t), pad for pad tokens
 *   x_{l+1} = encoder layer l (post-LN, models/encoder.h), attention masked by b->lengths
 *   z = tanh(W1 x_L[:, 0] + b1)                        BERT: bert.pooler.dense (a frozen site)
 *                                                      RoBERTa: classifier.dense (head, trained)
 *   logits = W2 z + b2                                 classifier(.out_proj) [n_labels, C] (head)
 *   loss = mean CE over counted labels
 *
 * Dropout is off (eval-mode parity with HF; PEFT's LoRA dropout lives in the method). Weights
 * are copied to f32 at load; tensor names are HF's with or without the "bert."/"roberta."
 * prefix (a BertModel save has none), and always carry it in the model (sites, save_hf). */
#include "bert.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "methods/adapter.h"
#include "models/encoder.h"
#include "models/hf_checkpoint.h"

#define BERT_SITES_PER_LAYER 6
#define BERT_MAX_DIM (1 << 20)
#define BERT_MAX_LAYERS 1024
#define BERT_MAX_LABELS (1 << 16)
#define BERT_HEAD_SEED 0x5eed5eedull /* a missing head is initialised from this fixed seed */

/* One f32 tensor of the model under its HF name (with prefix). */
typedef struct bert_tensor {
    char name[160];
    float *data;
    float **dst;  /* the model's pointer to it, set by bind_tensors */
    int ndim;
    int64_t shape[2];
    int optional; /* a head tensor: initialised when the checkpoint lacks it */
} bert_tensor;

typedef struct bert_model {
    peft_model base;
    int roberta;
    const char *prefix;      /* "bert." or "roberta." */
    int V, C, L, NH, F, P, TV, NL, pad_id;
    float init_range;
    peft_encoder_cfg enc;
    float *word, *pos, *type; /* [V, C], [P, C], [TV, C] */
    peft_norm_site *norm_arr; /* [1 + 2L]: embeddings.LayerNorm, then per layer attention.output / output */
    peft_site *site_arr;      /* [6L (+1 BERT's pooler)] */
    peft_encoder_layer *layers; /* [L] */
    /* the head: BERT: W2, b2 = classifier; RoBERTa: W1, b1 = classifier.dense, W2, b2 = out_proj */
    float *w1, *b1, *w2, *b2;
    peft_param head[4];       /* RoBERTa: dense W, b, out_proj W, b; BERT: classifier W, b */
    int n_tensors;
    bert_tensor *tensors;
    float *slab;              /* every tensor's f32 values */
    char *config_text;        /* config.json as read (save_hf rewrites it) */
} bert_model;

struct peft_acts {
    bert_model *m;
    int B, T, save_all, training;
    float *slab;
    peft_encoder_stack st;   /* the layers; st.x[0] the embeddings after LN */
    float *emb;              /* [N, C] the embedding sum (LN input) */
    float *emb_mean, *emb_rstd; /* [N] */
    float *h0;               /* [B, C] the pooled token's hidden state */
    float *z;                /* [B, C] tanh(W1 h0 + b1) */
    float *logits;           /* [B, NL] */
    float *losses;           /* [B] */
    int32_t *pos_ids, *type_ids; /* [N] */
    /* training */
    float *dz, *dh0;         /* [B, C] */
    float *dlogits;          /* [B, NL] */
    const int32_t *targets;  /* the last forward's */
    int fwd_B, fwd_T;
};

/* ---- loading ------------------------------------------------------------------------------ */

static int parse_config(bert_model *m, const cJSON *j, const peft_model_load_opts *opts, const char *file, peft_err *err) {
    int rc = PEFT_OK, TV_default = m->roberta ? 1 : 2, pad_default = m->roberta ? 1 : 0;
    if (!rc) rc = peft_cfg_int(j, "vocab_size", 1, 0, 1, 1 << 24, &m->V, file, err);
    if (!rc) rc = peft_cfg_int(j, "hidden_size", 1, 0, 1, BERT_MAX_DIM, &m->C, file, err);
    if (!rc) rc = peft_cfg_int(j, "num_hidden_layers", 1, 0, 1, BERT_MAX_LAYERS, &m->L, file, err);
    if (!rc) rc = peft_cfg_int(j, "num_attention_heads", 1, 0, 1, BERT_MAX_DIM, &m->NH, file, err);
    if (!rc) rc = peft_cfg_int(j, "intermediate_size", 1, 0, 1, BERT_MAX_DIM, &m->F, file, err);
    if (!rc) rc = peft_cfg_int(j, "max_position_embeddings", 1, 0, 1, BERT_MAX_DIM, &m->P, file, err);
    if (!rc) rc = peft_cfg_int(j, "type_vocab_size", 0, TV_default, 1, BERT_MAX_DIM, &m->TV, file, err);
    if (!rc) rc = peft_cfg_int(j, "pad_token_id", 0, pad_default, 0, m->V - 1, &m->pad_id, file, err);
    if (rc) return rc;
    if (m->C % m->NH)
        return peft_fail(err, PEFT_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", file, m->C, m->NH);
    double eps = 1e-12, range;
    int gelu, NL;
    if ((rc = peft_cfg_encoder(j, file, &eps, &range, &gelu, err))) return rc;
    m->init_range = (float)range;
    const char *pet = "absolute";
    if ((rc = peft_json_string(j, "position_embedding_type", 0, &pet, file, err))) return rc;
    if (strcmp(pet, "absolute"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"position_embedding_type\" = \"%s\" (supported: absolute)", file, pet);
    if ((rc = peft_cfg_n_labels(j, opts, BERT_MAX_LABELS, m->roberta ? "roberta" : "bert", file, &NL, err))) return rc;
    m->NL = NL;
    if (m->roberta && m->P < m->pad_id + 2)
        return peft_fail(err, PEFT_EFORMAT, "%s: max_position_embeddings %d leaves no position after padding_idx %d", file, m->P, m->pad_id);
    m->enc = (peft_encoder_cfg){.C = m->C, .NH = m->NH, .HD = m->C / m->NH, .F = m->F, .eps = (float)eps,
                                .pre_ln = 0, .gelu_kind = gelu};
    return PEFT_OK;
}

static bert_tensor *add_tensor(bert_model *m, float **dst, int64_t d0, int64_t d1, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
static bert_tensor *add_tensor(bert_model *m, float **dst, int64_t d0, int64_t d1, const char *fmt, ...) {
    bert_tensor *t = &m->tensors[m->n_tensors++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = NULL;
    t->dst = dst;
    t->optional = 0;
    return t;
}

/* A site and its weight / bias tensors. */
static void add_site(bert_model *m, peft_site *s, int layer, int in, int out, const char *name) {
    snprintf(s->name, sizeof s->name, "%s", name);
    const char *dot = strrchr(s->name, '.');
    s->kind = dot ? dot + 1 : s->name;
    s->layer = layer;
    s->in_features = in;
    s->out_features = out;
    add_tensor(m, &s->weight, out, in, "%s.weight", name);
    add_tensor(m, &s->bias, out, 0, "%s.bias", name);
}

static void add_norm(bert_model *m, peft_norm_site *n, int layer, const char *name) {
    snprintf(n->name, sizeof n->name, "%s", name);
    n->layer = layer;
    n->dim = m->C;
    add_tensor(m, &n->base, m->C, 0, "%s.weight", name);
    add_tensor(m, &n->bias_base, m->C, 0, "%s.bias", name);
}

/* Lists every tensor with its shape (destinations recorded, bound by bind_tensors). */
static void list_tensors(bert_model *m) {
    const char *p = m->prefix;
    const int C = m->C, F = m->F;
    char name[160];
    add_tensor(m, &m->word, m->V, C, "%sembeddings.word_embeddings.weight", p);
    add_tensor(m, &m->pos, m->P, C, "%sembeddings.position_embeddings.weight", p);
    add_tensor(m, &m->type, m->TV, C, "%sembeddings.token_type_embeddings.weight", p);
    snprintf(name, sizeof name, "%sembeddings.LayerNorm", p);
    add_norm(m, &m->norm_arr[0], -1, name);
    static const char *const site_names[BERT_SITES_PER_LAYER] = {"attention.self.query", "attention.self.key",
                                                                 "attention.self.value", "attention.output.dense",
                                                                 "intermediate.dense", "output.dense"};
    const int in[BERT_SITES_PER_LAYER] = {C, C, C, C, C, F}, out[BERT_SITES_PER_LAYER] = {C, C, C, C, F, C};
    for (int l = 0; l < m->L; l++) {
        peft_site *s = &m->site_arr[l * BERT_SITES_PER_LAYER];
        for (int k = 0; k < BERT_SITES_PER_LAYER; k++) {
            snprintf(name, sizeof name, "%sencoder.layer.%d.%s", p, l, site_names[k]);
            add_site(m, &s[k], l, in[k], out[k], name);
        }
        snprintf(name, sizeof name, "%sencoder.layer.%d.attention.output.LayerNorm", p, l);
        add_norm(m, &m->norm_arr[1 + 2 * l], l, name);
        snprintf(name, sizeof name, "%sencoder.layer.%d.output.LayerNorm", p, l);
        add_norm(m, &m->norm_arr[2 + 2 * l], l, name);
        m->layers[l] = (peft_encoder_layer){.q = &s[0], .k = &s[1], .v = &s[2], .o = &s[3], .up = &s[4], .down = &s[5],
                                            .ln1 = &m->norm_arr[1 + 2 * l], .ln2 = &m->norm_arr[2 + 2 * l]};
    }
    const int n0 = m->n_tensors;
    if (m->roberta) {
        add_tensor(m, &m->w1, C, C, "classifier.dense.weight");
        add_tensor(m, &m->b1, C, 0, "classifier.dense.bias");
        add_tensor(m, &m->w2, m->NL, C, "classifier.out_proj.weight");
        add_tensor(m, &m->b2, m->NL, 0, "classifier.out_proj.bias");
    } else {
        snprintf(name, sizeof name, "%spooler.dense", p);
        add_site(m, &m->site_arr[m->L * BERT_SITES_PER_LAYER], -1, C, C, name);
        add_tensor(m, &m->w2, m->NL, C, "classifier.weight");
        add_tensor(m, &m->b2, m->NL, 0, "classifier.bias");
    }
    for (int i = m->roberta ? n0 : n0 + 2; i < m->n_tensors; i++) m->tensors[i].optional = 1;
}

/* The checkpoint's tensor for canonical name `name`: as is, or without the model prefix. */
static const peft_st_tensor *find_tensor(const bert_model *m, const peft_weights *w, const char *name, const char **file) {
    const peft_st_tensor *t = peft_weights_find(w, name, file);
    size_t np = strlen(m->prefix);
    if (!t && !strncmp(name, m->prefix, np)) t = peft_weights_find(w, name + np, file);
    return t;
}

/* Allocates the slab, points every destination into it, reads or initialises the values; w NULL
 * (shapes_only): names, shapes and the head's parameter list only, no memory. */
static int bind_tensors(bert_model *m, const peft_weights *w, peft_err *err) {
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const bert_tensor *t = &m->tensors[i];
        size_t n = (size_t)t->shape[0] * (size_t)(t->ndim > 1 ? t->shape[1] : 1);
        if (!peft_add_ok(total, n, &total)) return peft_fail(err, PEFT_EFORMAT, "%s: config.json's sizes overflow", m->base.dir);
    }
    if (w && !(m->slab = calloc(total ? total : 1, sizeof(float))))
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu MB for the weights", m->base.dir, total * 4 >> 20);
    float *p = m->slab;
    peft_rng rng;
    peft_rng_seed(&rng, BERT_HEAD_SEED, 0);
    int nh = 0, rc = PEFT_OK;
    for (int i = 0; i < m->n_tensors && rc == PEFT_OK; i++) {
        bert_tensor *t = &m->tensors[i];
        const size_t n = (size_t)t->shape[0] * (size_t)(t->ndim > 1 ? t->shape[1] : 1);
        *t->dst = t->data = p;
        const char *file = NULL;
        const peft_st_tensor *st = w ? find_tensor(m, w, t->name, &file) : NULL;
        if (st) rc = peft_weights_read_f32(w, st->name, t->ndim, t->shape, p, err);
        else if (!t->optional && w) rc = peft_fail(err, PEFT_ESHAPE, "%s: missing tensor \"%s\" for %s", m->base.dir, t->name, m->base.info.arch);
        else if (t->ndim == 2 && p) /* HF's _init_weights: Linear weights normal(0, initializer_range), biases 0 */
            for (size_t k = 0; k < n; k++) p[k] = m->init_range * peft_rng_normal(&rng);
        if (rc == PEFT_OK)
            rc = peft_hf_bind_tensor(&m->base, t->optional ? &m->head[nh++] : NULL, t->name, p, n, t->ndim, t->shape, err);
        if (p) p += n;
    }
    peft_hf_bind_done(&m->base, m->head, nh);
    return rc;
}

static const peft_model_ops bert_ops;

/* Loads model_type "bert" or "roberta" (registered as one architecture). */
static int bert_load(const char *path, const char *config_json, size_t config_len, const peft_model_load_opts *opts,
                     peft_model **out, peft_err *err) {
    *out = NULL;
    char file[4200];
    snprintf(file, sizeof file, "%s/config.json", path);
    cJSON *j = NULL;
    const char *model_type = NULL;
    int rc = peft_json_parse(config_json, config_len, file, &j, err);
    if (rc == PEFT_OK) rc = peft_json_string(j, "model_type", 1, &model_type, file, err);
    if (rc == PEFT_OK && strcmp(model_type, "bert") && strcmp(model_type, "roberta"))
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: model_type \"%s\" is neither bert nor roberta", file, model_type);
    const int roberta = rc == PEFT_OK && !strcmp(model_type, "roberta");
    const char *arch = roberta ? "roberta" : "bert";
    const peft_task task = opts ? opts->task : PEFT_TASK_CAUSAL_LM;
    if (rc == PEFT_OK && task != PEFT_TASK_SEQ_CLS)
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: %s is an encoder: task %s is not available (use seq-cls)", file, arch,
                       peft_task_name(task));
    bert_model *m = rc == PEFT_OK ? calloc(1, sizeof *m) : NULL;
    if (rc == PEFT_OK && !m) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc) {
        cJSON_Delete(j);
        return rc;
    }
    m->base.ops = &bert_ops;
    m->roberta = roberta;
    m->prefix = roberta ? "roberta." : "bert.";
    snprintf(m->base.dir, sizeof m->base.dir, "%s", path);
    rc = parse_config(m, j, opts, file, err);
    cJSON_Delete(j);
    if (rc == PEFT_OK && !(m->config_text = peft_hf_config_copy(config_json, config_len)))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    peft_model_info *in = &m->base.info;
    in->arch = arch;
    snprintf(in->hf_class, sizeof in->hf_class, "%s", roberta ? "RobertaForSequenceClassification" : "BertForSequenceClassification");
    snprintf(in->model_type, sizeof in->model_type, "%s", arch);
    in->task = task;
    in->file = m->base.dir;
    if (rc) {
        m->base.ops->free(&m->base);
        return rc;
    }
    in->vocab_size = m->V;
    in->hidden_size = m->C;
    in->intermediate_size = m->F;
    in->n_layers = m->L;
    in->n_heads = in->n_kv_heads = m->NH;
    in->head_dim = m->C / m->NH;
    in->max_positions = roberta ? m->P - m->pad_id - 1 : m->P;
    in->n_labels = m->NL;
    in->n_type_ids = m->TV;
    in->bos_token_id = -1;
    in->pad_token_id = m->pad_id;
    const int n_sites = m->L * BERT_SITES_PER_LAYER + !roberta, n_norms = 1 + 2 * m->L;
    const int sites_ok = peft_hf_sites_alloc(&m->base, &m->site_arr, n_sites, &m->norm_arr, n_norms) == PEFT_OK;
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    m->tensors = calloc((size_t)(4 + 2 * n_norms + 2 * n_sites + 4), sizeof *m->tensors);
    if (!sites_ok || !m->layers || !m->tensors) {
        m->base.ops->free(&m->base);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    list_tensors(m);
    peft_weights *w = NULL;
    if (!(opts && opts->shapes_only)) rc = peft_weights_open(path, &w, err);
    if (rc == PEFT_OK) rc = bind_tensors(m, w, err);
    peft_weights_close(w);
    if (rc) {
        m->base.ops->free(&m->base);
        return rc;
    }
    m->base.tok_embed = m->word;
    m->base.compute = "f32";
    *out = &m->base;
    return PEFT_OK;
}

static void bert_free(peft_model *pm) {
    bert_model *m = (bert_model *)pm;
    if (!m) return;
    peft_hf_sites_free(&m->base, m->site_arr, m->norm_arr);
    free(m->layers);
    free(m->tensors);
    free(m->slab);
    free(m->config_text);
    free(m);
}

/* ---- activations -------------------------------------------------------------------------- */

static void acts_free(peft_acts *a) {
    if (!a) return;
    free(a->slab);
    encoder_stack_free(&a->st);
    free(a->pos_ids);
    free(a->type_ids);
    free(a);
}

static int acts_alloc(peft_model *pm, int B, int T, int save_all, int training, peft_acts **out, peft_err *err) {
    bert_model *m = (bert_model *)pm;
    *out = NULL;
    if (B < 1 || T < 1 || T > m->base.info.max_positions)
        return peft_fail(err, PEFT_EINVAL, "%s: batch %d x %d: T must be in [1, %d]", m->base.dir, B, T, m->base.info.max_positions);
    if (!m->slab) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded for its shapes only (no weights)", m->base.dir);
    peft_acts *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    *a = (peft_acts){.m = m, .B = B, .T = T, .save_all = save_all, .training = training};
    const size_t N = (size_t)B * T, C = (size_t)m->C, NL = (size_t)m->NL;
    /* the buffers around the layer stack (sizes[i] floats for *bufs[i]); training buffers are 0
     * without training */
    const size_t tr = training ? 1 : 0;
    float **bufs[] = {&a->emb, &a->emb_mean, &a->emb_rstd, &a->h0, &a->z, &a->logits, &a->losses,
                      &a->dz, &a->dh0, &a->dlogits};
    const size_t sizes[] = {N * C, N, N, B * C, B * C, B * NL, (size_t)B, tr * B * C, tr * B * C, tr * B * NL};
    size_t total = 0;
    int ok = encoder_stack_alloc(&a->st, &m->enc, m->layers, m->L, B, T, save_all, training) == PEFT_OK;
    for (size_t i = 0; ok && i < sizeof sizes / sizeof sizes[0]; i++) ok = peft_add_ok(total, sizes[i], &total);
    a->pos_ids = malloc(N * sizeof(int32_t));
    a->type_ids = malloc(N * sizeof(int32_t));
    if (!ok || !a->pos_ids || !a->type_ids || !(a->slab = malloc(total * sizeof(float)))) {
        acts_free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate activations for a %d x %d batch", m->base.dir, B, T);
    }
    float *p = a->slab;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; p += sizes[i], i++) *bufs[i] = sizes[i] ? p : NULL;
    *out = a;
    return PEFT_OK;
}

const float *bert_hidden_states(const peft_acts *a) { return encoder_stack_output(&a->st, a->fwd_B, a->fwd_T); }
const float *bert_pooled(const peft_acts *a) { return a->z; }
static const float *bert_outputs(const peft_acts *a) { return a->logits; }

/* ---- forward ------------------------------------------------------------------------------ */

/* Validates the batch and fills the position and token type ids. */
static int prepare_ids(const bert_model *m, peft_acts *a, const peft_batch *b, peft_err *err) {
    if (!b->ids) return peft_fail(err, PEFT_EINVAL, "%s: %s needs token ids", m->base.dir, m->base.info.arch);
    if (b->B < 1 || b->T < 1 || b->B > a->B || b->T > a->T)
        return peft_fail(err, PEFT_EINVAL, "%s: batch %d x %d exceeds the activations' %d x %d", m->base.dir, b->B, b->T, a->B, a->T);
    for (int r = 0; r < b->B; r++) {
        const int len = b->lengths ? b->lengths[r] : b->T;
        if (len < 1 || len > b->T)
            return peft_fail(err, PEFT_EINVAL, "batch row %d: length %d is outside [1, %d]", r, len, b->T);
        if (b->targets && (b->targets[r] < -1 || b->targets[r] >= m->NL))
            return peft_fail(err, PEFT_EINVAL, "batch row %d: label %d is outside [0, %d) (or -1)", r, b->targets[r], m->NL);
        int count = 0;
        for (int t = 0; t < b->T; t++) {
            const size_t i = (size_t)r * b->T + t;
            const int32_t id = b->ids[i], ty = b->type_ids ? b->type_ids[i] : 0;
            if (id < 0 || id >= m->V) return peft_fail(err, PEFT_EINVAL, "batch row %d: token id %d is outside [0, %d)", r, id, m->V);
            if (ty < 0 || ty >= m->TV)
                return peft_fail(err, PEFT_EINVAL, "batch row %d: token type %d is outside [0, %d)", r, ty, m->TV);
            a->type_ids[i] = ty;
            /* RoBERTa (create_position_ids_from_input_ids): pad + cumulative count of non-pad tokens, pad for pad tokens */
            if (m->roberta) a->pos_ids[i] = id == m->pad_id ? m->pad_id : m->pad_id + (++count);
            else a->pos_ids[i] = t;
            if (a->pos_ids[i] >= m->P)
                return peft_fail(err, PEFT_EINVAL, "batch row %d: position %d is beyond max_position_embeddings %d", r, a->pos_ids[i], m->P);
        }
    }
    return PEFT_OK;
}

static int bert_forward(peft_model *pm, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err) {
    bert_model *m = (bert_model *)pm;
    int rc = prepare_ids(m, a, b, err);
    if (rc) return rc;
    const int B = b->B, T = b->T, N = B * T, C = m->C;
    a->fwd_B = B, a->fwd_T = T;
    a->targets = b->targets;
    const int save = a->training;
    /* embeddings: x0 = LN(word + position + token type)   [N, C] */
    embedding_forward(a->emb, b->ids, m->word, N, C);
    embedding_add_forward(a->emb, a->pos_ids, m->pos, N, C);
    embedding_add_forward(a->emb, a->type_ids, m->type, N, C);
    const peft_norm_site *eln = &m->norm_arr[0];
    layernorm_forward(a->st.x, a->emb_mean, a->emb_rstd, a->emb, eln->weight, eln->bias, m->enc.eps, N, C);
    if ((rc = encoder_stack_forward(&a->st, b->lengths, B, T))) return peft_fail(err, rc, "%s: out of memory in the forward", m->base.dir);
    /* head on the first token: z = tanh(W1 h0 + b1) [B, C], logits = W2 z + b2 [B, NL] */
    const float *hL = encoder_stack_output(&a->st, B, T);
    for (int r = 0; r < B; r++) memcpy(a->h0 + (size_t)r * C, hL + (size_t)r * T * C, (size_t)C * sizeof(float));
    if (m->roberta) matmul_forward(a->z, a->h0, m->w1, m->b1, B, C, C);
    else if ((rc = site_forward(&m->site_arr[m->L * BERT_SITES_PER_LAYER], a->z, a->h0, B, save)))
        return peft_fail(err, rc, "%s: out of memory in the pooler", m->base.dir);
    for (size_t i = 0; i < (size_t)B * C; i++) a->z[i] = tanhf(a->z[i]);
    matmul_forward(a->logits, a->z, m->w2, m->b2, B, C, m->NL);
    if (b->targets) {
        const int n = crossentropy_forward(a->losses, a->logits, b->targets, B, m->NL);
        double s = 0.0;
        for (int r = 0; r < B; r++) s += a->losses[r];
        if (loss) *loss = n ? s / n : 0.0;
        if (n_counted) *n_counted = n;
    }
    return PEFT_OK;
}

/* ---- backward ----------------------------------------------------------------------------- */

static int bert_backward(peft_model *pm, peft_acts *a, const peft_batch *b, int n_counted) {
    bert_model *m = (bert_model *)pm;
    if (!a->training || !a->targets || n_counted <= 0) return n_counted > 0 ? PEFT_EINVAL : PEFT_OK;
    const int B = a->fwd_B, T = a->fwd_T, N = B * T, C = m->C, NL = m->NL;
    /* dlogits [B, NL] -> head gradients and dz [B, C] -> dpre = dz (1 - z^2) */
    memset(a->dlogits, 0, (size_t)B * NL * sizeof(float));
    crossentropy_backward(a->dlogits, a->logits, a->targets, 1.0f / (float)n_counted, B, NL);
    memset(a->dz, 0, (size_t)B * C * sizeof(float));
    const peft_param *out_w = &m->head[m->roberta ? 2 : 0], *out_b = out_w + 1; /* grads NULL: head frozen */
    matmul_backward(a->dz, out_w->grad, out_b->grad, a->dlogits, a->z, m->w2, B, C, NL);
    for (size_t i = 0; i < (size_t)B * C; i++) a->dz[i] *= 1.0f - a->z[i] * a->z[i];
    memset(a->dh0, 0, (size_t)B * C * sizeof(float));
    int rc = PEFT_OK;
    if (m->roberta) matmul_backward(a->dh0, m->head[0].grad, m->head[1].grad, a->dz, a->h0, m->w1, B, C, C);
    else rc = site_backward(&m->site_arr[m->L * BERT_SITES_PER_LAYER], a->dh0, a->dz, a->h0, B);
    /* the gradient of the last hidden states is dh0 on each row's first token, 0 elsewhere */
    float *dout = a->st.dout;
    memset(dout, 0, (size_t)N * C * sizeof(float));
    for (int r = 0; r < B; r++) memcpy(dout + (size_t)r * T * C, a->dh0 + (size_t)r * C, (size_t)C * sizeof(float));
    const float *dy = NULL;
    if (rc == PEFT_OK) rc = encoder_stack_backward(&a->st, b->lengths, B, T, &dy);
    const peft_norm_site *eln = &m->norm_arr[0];
    if (rc == PEFT_OK && (eln->grad || eln->bias_grad)) /* LayerNorm tuning of the embeddings' norm */
        layernorm_backward(NULL, eln->grad, eln->bias_grad, dy, a->emb, eln->weight, a->emb_mean, a->emb_rstd, N, C);
    return rc;
}

/* ---- tensors and saving ------------------------------------------------------------------- */

static const bert_tensor *find_own(const bert_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

static const float *bert_tensor_values(peft_model *pm, const char *name, int64_t *shape, int *ndim) {
    const bert_tensor *t = find_own((bert_model *)pm, name);
    if (!t) return NULL;
    for (int d = 0; shape && d < t->ndim; d++) shape[d] = t->shape[d];
    if (ndim) *ndim = t->ndim;
    return t->data;
}

static int bert_save_hf(peft_model *pm, const char *dir, peft_err *err) {
    bert_model *m = (bert_model *)pm;
    if (!m->slab) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded for its shapes only (no weights)", m->base.dir);
    peft_st_entry *e = calloc((size_t)m->n_tensors, sizeof *e);
    if (!e) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < m->n_tensors; i++) {
        const bert_tensor *t = &m->tensors[i];
        e[i] = (peft_st_entry){.name = t->name, .dtype = PEFT_F32, .ndim = t->ndim, .data = t->data};
        e[i].shape[0] = t->shape[0];
        e[i].shape[1] = t->shape[1];
    }
    static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                                             "vocab.json", "merges.txt"};
    int rc = peft_hf_checkpoint_write(&m->base, dir, m->config_text, m->NL, e, m->n_tensors, side_files,
                                      (int)(sizeof side_files / sizeof side_files[0]), err);
    free(e);
    return rc;
}

static const peft_model_ops bert_ops = {
    .abi_version = PEFT_MODEL_ABI,
    .arch = "bert",
    .free = bert_free,
    .acts_alloc = acts_alloc,
    .acts_free = acts_free,
    .forward = bert_forward,
    .outputs = bert_outputs,
    .backward = bert_backward,
    .save_hf = bert_save_hf,
    .tensor = bert_tensor_values,
};

static const char *const bert_types[] = {"bert", "roberta", NULL};
const peft_arch peft_arch_bert = {.name = "bert", .model_types = bert_types, .load = bert_load};
