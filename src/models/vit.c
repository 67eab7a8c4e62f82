/* vit.c: ViT (model_type "vit") for image classification, in the order HF's modeling_vit.py
 * computes ViTForImageClassification (eval mode: dropout off; PEFT's LoRA dropout lives in the
 * method):
 *
 *   e[b, p]  = Conv2d(Cin, C, kernel = stride = P)(pixels[b])   patches row-major, NP = (S/P)^2
 *   x0[b]    = [cls; e[b, 0..NP-1]] + pos                       [T = NP + 1, C]
 *   x_{l+1}  = encoder layer l (pre-LN, models/encoder.h: layernorm_before / layernorm_after)
 *   z[b]     = LN(x_L[b, 0])                                    vit.layernorm, on the CLS token only
 *                                                               (the classifier reads nothing else)
 *   logits   = W z + b                                          classifier [n_labels, C] (head, trained)
 *   loss     = mean CE over counted labels
 *
 * Batches carry pixels [B, Cin, S, S] already preprocessed (io/image_preprocess.h); every image
 * is T = NP + 1 tokens, so acts_alloc's T is not used. Position interpolation is not done: the
 * images must be image_size square. Weights are copied to f32 at load; tensor names are HF's with
 * or without the "vit." prefix (a ViTModel save has none) and always carry it in the model.
 *
 * Names: transformers 5 renamed ViT's modules (vit.layers.{i}.attention.q_proj/k_proj/v_proj/
 * o_proj, mlp.fc1/fc2) but save_pretrained still writes the original tensor names
 * (vit.encoder.layer.{i}.attention.attention.query, ...output.dense, intermediate.dense,
 * output.dense). Sites and norms carry the module names, since HF PEFT keys adapters by them
 * ("base_model.model.vit.layers.0.attention.q_proj.lora_A.weight"); tensors (load, save_hf,
 * tensor()) carry the stored names. */
#include "vit.h"

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

#define VIT_SITES_PER_LAYER 6
#define VIT_MAX_DIM (1 << 20)
#define VIT_MAX_LAYERS 1024
#define VIT_MAX_LABELS (1 << 16)
#define VIT_MAX_IMAGE 8192
#define VIT_HEAD_SEED 0x5eed5eedull /* a missing classifier is initialised from this fixed seed */

/* One f32 tensor of the model under its HF name (with prefix). */
typedef struct vit_tensor {
    char name[160];
    float *data;
    float **dst;     /* the model's pointer to it */
    int ndim;
    int64_t shape[4];
    int head;        /* the classifier: initialised when the checkpoint lacks it, trained */
} vit_tensor;

typedef struct vit_model {
    peft_model base;
    int C, L, NH, F, S, P, CIN, NP, NL;
    float init_range;
    peft_encoder_cfg enc;
    float *patch_w, *patch_b;   /* [C, Cin, P, P], [C] */
    float *cls, *pos;           /* [C], [NP + 1, C] */
    float *head_w, *head_b;     /* classifier [NL, C], [NL] */
    peft_norm_site *norm_arr;   /* [2L + 1]: per layer layernorm_before, layernorm_after; then vit.layernorm */
    peft_site *site_arr;        /* [6L] */
    peft_encoder_layer *layers; /* [L] */
    peft_param head[2];
    int n_tensors;
    vit_tensor *tensors;
    float *slab;                /* every tensor's f32 values */
    char *config_text;          /* config.json as read (save_hf rewrites it) */
} vit_model;

struct peft_acts {
    vit_model *m;
    int B, save_all, training;
    float *slab;
    float *cols;              /* [B*NP, Cin*P*P] im2col of the images */
    float *pe;                /* [B*NP, C] patch embeddings */
    peft_encoder_stack st;    /* the layers; st.x[0] the embeddings */
    float *h0;                /* [B, C] the CLS token of x[L] */
    float *fmean, *frstd;     /* [B] vit.layernorm's statistics */
    float *z;                 /* [B, C] LN(h0) */
    float *logits;            /* [B, NL] */
    float *losses;            /* [B] */
    /* training */
    float *dz, *dh0;          /* [B, C] */
    float *dlogits;           /* [B, NL] */
    const int32_t *targets;   /* the last forward's */
    int fwd_B;
};

/* ---- loading ------------------------------------------------------------------------------ */

static int parse_config(vit_model *m, const cJSON *j, const peft_model_load_opts *opts, const char *file, peft_err *err) {
    int rc = PEFT_OK;
    if (!rc) rc = peft_cfg_int(j, "hidden_size", 1, 0, 1, VIT_MAX_DIM, &m->C, file, err);
    if (!rc) rc = peft_cfg_int(j, "num_hidden_layers", 1, 0, 1, VIT_MAX_LAYERS, &m->L, file, err);
    if (!rc) rc = peft_cfg_int(j, "num_attention_heads", 1, 0, 1, VIT_MAX_DIM, &m->NH, file, err);
    if (!rc) rc = peft_cfg_int(j, "intermediate_size", 1, 0, 1, VIT_MAX_DIM, &m->F, file, err);
    if (!rc) rc = peft_cfg_int(j, "image_size", 0, 224, 1, VIT_MAX_IMAGE, &m->S, file, err);
    if (!rc) rc = peft_cfg_int(j, "patch_size", 0, 16, 1, VIT_MAX_IMAGE, &m->P, file, err);
    if (!rc) rc = peft_cfg_int(j, "num_channels", 0, 3, 1, 64, &m->CIN, file, err);
    if (rc) return rc;
    if (m->C % m->NH)
        return peft_fail(err, PEFT_EFORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", file, m->C, m->NH);
    if (m->S % m->P)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"image_size\" %d is not a multiple of \"patch_size\" %d", file, m->S, m->P);
    m->NP = (m->S / m->P) * (m->S / m->P);
    double eps = 1e-12, range;
    int gelu;
    if ((rc = peft_cfg_encoder(j, file, &eps, &range, &gelu, err))) return rc;
    m->init_range = (float)range;
    const cJSON *qkv_bias = cJSON_GetObjectItemCaseSensitive(j, "qkv_bias");
    if (qkv_bias && !cJSON_IsTrue(qkv_bias))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"qkv_bias\" must be true (query/key/value without bias are not implemented)", file);
    int NL;
    if ((rc = peft_cfg_n_labels(j, opts, VIT_MAX_LABELS, "vit", file, &NL, err))) return rc;
    m->NL = NL;
    m->enc = (peft_encoder_cfg){.C = m->C, .NH = m->NH, .HD = m->C / m->NH, .F = m->F, .eps = (float)eps,
                                .pre_ln = 1, .gelu_kind = gelu};
    return PEFT_OK;
}

static void add_tensor(vit_model *m, float **dst, int ndim, const int64_t *shape, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
static void add_tensor(vit_model *m, float **dst, int ndim, const int64_t *shape, const char *fmt, ...) {
    vit_tensor *t = &m->tensors[m->n_tensors++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    for (int d = 0; d < 4; d++) t->shape[d] = d < ndim ? shape[d] : 0;
    t->data = NULL;
    t->dst = dst;
    t->head = 0;
}

static void add_vec(vit_model *m, float **dst, int64_t n, const char *name, const char *suffix) {
    add_tensor(m, dst, 1, (int64_t[]){n}, "%s%s", name, suffix);
}

/* A site named by its module (`module`) and its weight [out, in] / bias [out] tensors, named as
 * the checkpoint stores them (`tensor`). */
static void add_site(vit_model *m, peft_site *s, int layer, int in, int out, const char *module, const char *tensor) {
    snprintf(s->name, sizeof s->name, "%s", module);
    const char *dot = strrchr(s->name, '.');
    s->kind = dot ? dot + 1 : s->name;
    s->layer = layer;
    s->in_features = in;
    s->out_features = out;
    add_tensor(m, &s->weight, 2, (int64_t[]){out, in}, "%s.weight", tensor);
    add_vec(m, &s->bias, out, tensor, ".bias");
}

static void add_norm(vit_model *m, peft_norm_site *n, int layer, const char *module, const char *tensor) {
    snprintf(n->name, sizeof n->name, "%s", module);
    n->layer = layer;
    n->dim = m->C;
    add_vec(m, &n->base, m->C, tensor, ".weight");
    add_vec(m, &n->bias_base, m->C, tensor, ".bias");
}

/* Lists every tensor with its HF shape (destinations recorded, bound by bind_tensors). */
static void list_tensors(vit_model *m) {
    const int C = m->C, F = m->F;
    char module[128], tensor[128]; /* peft_site.name is 128 */
    add_tensor(m, &m->cls, 3, (int64_t[]){1, 1, C}, "vit.embeddings.cls_token");
    add_tensor(m, &m->pos, 3, (int64_t[]){1, m->NP + 1, C}, "vit.embeddings.position_embeddings");
    add_tensor(m, &m->patch_w, 4, (int64_t[]){C, m->CIN, m->P, m->P}, "vit.embeddings.patch_embeddings.projection.weight");
    add_vec(m, &m->patch_b, C, "vit.embeddings.patch_embeddings.projection", ".bias");
    /* transformers 5's module names (what PEFT targets and keys adapters by), then the names the
     * checkpoint stores (save_pretrained still writes HF's original ViT names) */
    static const char *const modules[VIT_SITES_PER_LAYER + 2] = {"attention.q_proj", "attention.k_proj", "attention.v_proj",
                                                                 "attention.o_proj", "mlp.fc1", "mlp.fc2",
                                                                 "layernorm_before", "layernorm_after"};
    static const char *const stored[VIT_SITES_PER_LAYER + 2] = {"attention.attention.query", "attention.attention.key",
                                                                "attention.attention.value", "attention.output.dense",
                                                                "intermediate.dense", "output.dense",
                                                                "layernorm_before", "layernorm_after"};
    const int in[VIT_SITES_PER_LAYER] = {C, C, C, C, C, F}, out[VIT_SITES_PER_LAYER] = {C, C, C, C, F, C};
    for (int l = 0; l < m->L; l++) {
        peft_site *s = &m->site_arr[l * VIT_SITES_PER_LAYER];
        peft_norm_site *n = &m->norm_arr[2 * l];
        for (int k = 0; k < VIT_SITES_PER_LAYER + 2; k++) {
            snprintf(module, sizeof module, "vit.layers.%d.%s", l, modules[k]);
            snprintf(tensor, sizeof tensor, "vit.encoder.layer.%d.%s", l, stored[k]);
            if (k < VIT_SITES_PER_LAYER) add_site(m, &s[k], l, in[k], out[k], module, tensor);
            else add_norm(m, &n[k - VIT_SITES_PER_LAYER], l, module, tensor);
        }
        m->layers[l] = (peft_encoder_layer){.q = &s[0], .k = &s[1], .v = &s[2], .o = &s[3], .up = &s[4], .down = &s[5],
                                            .ln1 = &n[0], .ln2 = &n[1]};
    }
    add_norm(m, &m->norm_arr[2 * m->L], -1, "vit.layernorm", "vit.layernorm");
    add_tensor(m, &m->head_w, 2, (int64_t[]){m->NL, C}, "classifier.weight");
    add_vec(m, &m->head_b, m->NL, "classifier", ".bias");
    m->tensors[m->n_tensors - 2].head = m->tensors[m->n_tensors - 1].head = 1;
}

static size_t tensor_numel(const vit_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

/* HF's ViT _init_weights for a Linear: weight trunc_normal(0, initializer_range) cut at +-2
 * (absolute, as torch's trunc_normal_ defaults), bias 0. */
static void init_head(float *p, size_t n, int ndim, float range, peft_rng *rng) {
    for (size_t k = 0; k < n; k++) {
        float v = 0.0f;
        if (ndim == 2)
            do v = range * peft_rng_normal(rng);
            while (fabsf(v) > 2.0f);
        p[k] = v;
    }
}

/* Allocates the slab, points every destination into it, reads or initialises the values; w NULL
 * (shapes_only): names, shapes and the head's parameter list only, no memory. */
static int bind_tensors(vit_model *m, const peft_weights *w, peft_err *err) {
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (!peft_add_ok(total, tensor_numel(&m->tensors[i]), &total))
            return peft_fail(err, PEFT_EFORMAT, "%s: config.json's sizes overflow", m->base.dir);
    if (w && !(m->slab = calloc(total ? total : 1, sizeof(float))))
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu MB for the weights", m->base.dir, total * 4 >> 20);
    float *p = m->slab;
    peft_rng rng;
    peft_rng_seed(&rng, VIT_HEAD_SEED, 0);
    int nh = 0, rc = PEFT_OK;
    for (int i = 0; i < m->n_tensors && rc == PEFT_OK; i++) {
        vit_tensor *t = &m->tensors[i];
        const size_t n = tensor_numel(t);
        *t->dst = t->data = p;
        const char *file = NULL;
        const peft_st_tensor *st = w ? peft_weights_find(w, t->name, &file) : NULL;
        if (w && !st) st = peft_weights_find(w, t->name + strlen("vit."), &file); /* a ViTModel save */
        if (st) rc = peft_weights_read_f32(w, st->name, t->ndim, t->shape, p, err);
        else if (w && !t->head) rc = peft_fail(err, PEFT_ESHAPE, "%s: missing tensor \"%s\" for vit", m->base.dir, t->name);
        else if (p) init_head(p, n, t->ndim, m->init_range, &rng);
        if (rc == PEFT_OK)
            rc = peft_hf_bind_tensor(&m->base, t->head ? &m->head[nh++] : NULL, t->name, p, n, t->ndim, t->shape, err);
        if (p) p += n;
    }
    peft_hf_bind_done(&m->base, m->head, nh);
    return rc;
}

static const peft_model_ops vit_ops;

static int vit_load(const char *path, const char *config_json, size_t config_len, const peft_model_load_opts *opts,
                    peft_model **out, peft_err *err) {
    *out = NULL;
    char file[4200];
    snprintf(file, sizeof file, "%s/config.json", path);
    const peft_task task = opts ? opts->task : PEFT_TASK_CAUSAL_LM;
    if (task != PEFT_TASK_IMAGE_CLS)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: vit is an image encoder: task %s is not available (use image-cls)", file,
                         peft_task_name(task));
    cJSON *j = NULL;
    int rc = peft_json_parse(config_json, config_len, file, &j, err);
    vit_model *m = rc == PEFT_OK ? calloc(1, sizeof *m) : NULL;
    if (rc == PEFT_OK && !m) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc) {
        cJSON_Delete(j);
        return rc;
    }
    m->base.ops = &vit_ops;
    snprintf(m->base.dir, sizeof m->base.dir, "%s", path);
    rc = parse_config(m, j, opts, file, err);
    cJSON_Delete(j);
    if (rc == PEFT_OK && !(m->config_text = peft_hf_config_copy(config_json, config_len)))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    peft_model_info *in = &m->base.info;
    in->arch = "vit";
    snprintf(in->hf_class, sizeof in->hf_class, "ViTForImageClassification");
    snprintf(in->model_type, sizeof in->model_type, "vit");
    in->task = task;
    in->file = m->base.dir;
    in->bos_token_id = in->pad_token_id = -1;
    if (rc) {
        m->base.ops->free(&m->base);
        return rc;
    }
    in->hidden_size = m->C;
    in->n_layers = m->L;
    in->n_heads = in->n_kv_heads = m->NH;
    in->head_dim = m->C / m->NH;
    in->max_positions = m->NP + 1;
    in->n_labels = m->NL;
    in->image_size = m->S;
    in->n_channels = m->CIN;
    in->patch_size = m->P;
    m->base.compute = "f32";
    const int n_sites = m->L * VIT_SITES_PER_LAYER, n_norms = 2 * m->L + 1;
    const int sites_ok = peft_hf_sites_alloc(&m->base, &m->site_arr, n_sites, &m->norm_arr, n_norms) == PEFT_OK;
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    m->tensors = calloc((size_t)(4 + 2 * n_norms + 2 * n_sites + 2), sizeof *m->tensors);
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
    *out = &m->base;
    return PEFT_OK;
}

static void vit_free(peft_model *pm) {
    vit_model *m = (vit_model *)pm;
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
    free(a);
}

static int acts_alloc(peft_model *pm, int B, int T, int save_all, int training, peft_acts **out, peft_err *err) {
    vit_model *m = (vit_model *)pm;
    (void)T; /* every image is NP + 1 tokens */
    *out = NULL;
    if (B < 1) return peft_fail(err, PEFT_EINVAL, "%s: batch of %d images", m->base.dir, B);
    if (!m->slab) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded for its shapes only (no weights)", m->base.dir);
    peft_acts *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    *a = (peft_acts){.m = m, .B = B, .save_all = save_all, .training = training};
    const int TT = m->NP + 1;
    const size_t C = (size_t)m->C, NL = (size_t)m->NL, BP = (size_t)B * m->NP, tr = training ? 1 : 0;
    /* the buffers around the layer stack (sz[i] floats for *dst[i]); training buffers are 0 without training */
    float **dst[] = {&a->cols, &a->pe, &a->h0, &a->fmean, &a->frstd, &a->z, &a->logits, &a->losses,
                     &a->dz, &a->dh0, &a->dlogits};
    const size_t sz[] = {BP * m->CIN * m->P * m->P, BP * C, B * C, (size_t)B, (size_t)B, B * C, B * NL, (size_t)B,
                         tr * B * C, tr * B * C, tr * B * NL};
    size_t total = 0;
    int ok = encoder_stack_alloc(&a->st, &m->enc, m->layers, m->L, B, TT, save_all, training) == PEFT_OK;
    for (size_t i = 0; ok && i < sizeof sz / sizeof sz[0]; i++) ok = peft_add_ok(total, sz[i], &total);
    if (!ok || !(a->slab = malloc(total * sizeof(float)))) {
        acts_free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate activations for a batch of %d images", m->base.dir, B);
    }
    float *p = a->slab;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; p += sz[i], i++) *dst[i] = sz[i] ? p : NULL;
    *out = a;
    return PEFT_OK;
}

const float *vit_cls_features(const peft_acts *a) { return a->z; }
static const float *vit_outputs(const peft_acts *a) { return a->logits; }

/* ---- forward ------------------------------------------------------------------------------ */

static int check_batch(const vit_model *m, const peft_acts *a, const peft_batch *b, peft_err *err) {
    if (!b->pixels) return peft_fail(err, PEFT_EINVAL, "%s: vit needs pixel values (an image batch)", m->base.dir);
    if (b->B < 1 || b->B > a->B)
        return peft_fail(err, PEFT_EINVAL, "%s: batch of %d images is outside the activations' [1, %d]", m->base.dir, b->B, a->B);
    for (int r = 0; b->targets && r < b->B; r++)
        if (b->targets[r] < -1 || b->targets[r] >= m->NL)
            return peft_fail(err, PEFT_EINVAL, "batch image %d: label %d is outside [0, %d) (or -1)", r, b->targets[r], m->NL);
    return PEFT_OK;
}

static int vit_forward(peft_model *pm, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err) {
    vit_model *m = (vit_model *)pm;
    int rc = check_batch(m, a, b, err);
    if (rc) return rc;
    const int B = b->B, T = m->NP + 1, C = m->C;
    a->fwd_B = B;
    a->targets = b->targets;
    /* embeddings: x0[b] = [cls; patches(b)] + pos   [B, T, C] */
    patch_embed_forward(a->pe, a->cols, b->pixels, m->patch_w, m->patch_b, B, m->CIN, m->S, m->S, m->P, C);
    for (int r = 0; r < B; r++) {
        float *x0 = a->st.x + (size_t)r * T * C;
        memcpy(x0, m->cls, (size_t)C * sizeof(float));
        memcpy(x0 + C, a->pe + (size_t)r * m->NP * C, (size_t)m->NP * C * sizeof(float));
        for (size_t i = 0; i < (size_t)T * C; i++) x0[i] += m->pos[i];
    }
    if ((rc = encoder_stack_forward(&a->st, NULL, B, T))) return peft_fail(err, rc, "%s: out of memory in the forward", m->base.dir);
    /* head on the CLS token: z = LN(h0) [B, C], logits = W z + b [B, NL] */
    const float *hL = encoder_stack_output(&a->st, B, T);
    for (int r = 0; r < B; r++) memcpy(a->h0 + (size_t)r * C, hL + (size_t)r * T * C, (size_t)C * sizeof(float));
    const peft_norm_site *fln = &m->norm_arr[2 * m->L];
    layernorm_forward(a->z, a->fmean, a->frstd, a->h0, fln->weight, fln->bias, m->enc.eps, B, C);
    matmul_forward(a->logits, a->z, m->head_w, m->head_b, B, C, m->NL);
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

static int vit_backward(peft_model *pm, peft_acts *a, const peft_batch *b, int n_counted) {
    vit_model *m = (vit_model *)pm;
    (void)b; /* no layer reads the batch again: no padding, frozen embeddings */
    if (!a->training || !a->targets || n_counted <= 0) return n_counted > 0 ? PEFT_EINVAL : PEFT_OK;
    const int B = a->fwd_B, T = m->NP + 1, C = m->C, NL = m->NL;
    /* dlogits [B, NL] -> classifier gradients and dz [B, C] -> through vit.layernorm to dh0 [B, C] */
    memset(a->dlogits, 0, (size_t)B * NL * sizeof(float));
    crossentropy_backward(a->dlogits, a->logits, a->targets, 1.0f / (float)n_counted, B, NL);
    memset(a->dz, 0, (size_t)B * C * sizeof(float));
    matmul_backward(a->dz, m->head[0].grad, m->head[1].grad, a->dlogits, a->z, m->head_w, B, C, NL); /* NULL: frozen */
    memset(a->dh0, 0, (size_t)B * C * sizeof(float));
    const peft_norm_site *fln = &m->norm_arr[2 * m->L];
    layernorm_backward(a->dh0, fln->grad, fln->bias_grad, a->dz, a->h0, fln->weight, a->fmean, a->frstd, B, C);
    /* the gradient of the last hidden states is dh0 on each image's CLS token, 0 elsewhere */
    float *dout = a->st.dout;
    memset(dout, 0, (size_t)B * T * C * sizeof(float));
    for (int r = 0; r < B; r++) memcpy(dout + (size_t)r * T * C, a->dh0 + (size_t)r * C, (size_t)C * sizeof(float));
    const float *dx0; /* unused: the embeddings (patch conv, CLS, positions) are frozen */
    return encoder_stack_backward(&a->st, NULL, B, T, &dx0);
}

/* ---- tensors and saving ------------------------------------------------------------------- */

static const float *vit_tensor_values(peft_model *pm, const char *name, int64_t *shape, int *ndim) {
    const vit_model *m = (const vit_model *)pm;
    for (int i = 0; i < m->n_tensors; i++) {
        const vit_tensor *t = &m->tensors[i];
        if (strcmp(t->name, name)) continue;
        if (shape)
            for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
        if (ndim) *ndim = t->ndim;
        return t->data;
    }
    return NULL;
}

static int vit_save_hf(peft_model *pm, const char *dir, peft_err *err) {
    vit_model *m = (vit_model *)pm;
    if (!m->slab) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded for its shapes only (no weights)", m->base.dir);
    peft_st_entry *e = calloc((size_t)m->n_tensors, sizeof *e);
    if (!e) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < m->n_tensors; i++) {
        const vit_tensor *t = &m->tensors[i];
        e[i] = (peft_st_entry){.name = t->name, .dtype = PEFT_F32, .ndim = t->ndim, .data = t->data};
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
    }
    static const char *const side_files[] = {"preprocessor_config.json"};
    int rc = peft_hf_checkpoint_write(&m->base, dir, m->config_text, m->NL, e, m->n_tensors, side_files, 1, err);
    free(e);
    return rc;
}

static const peft_model_ops vit_ops = {
    .abi_version = PEFT_MODEL_ABI,
    .arch = "vit",
    .free = vit_free,
    .acts_alloc = acts_alloc,
    .acts_free = acts_free,
    .forward = vit_forward,
    .outputs = vit_outputs,
    .backward = vit_backward,
    .save_hf = vit_save_hf,
    .tensor = vit_tensor_values,
};

static const char *const vit_types[] = {"vit", NULL};
const peft_arch peft_arch_vit = {.name = "vit", .model_types = vit_types, .load = vit_load};
