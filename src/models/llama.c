/* llama.c: loading, forward, backward and cached decoding of Llama-family models. */
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/gguf.h"
#include "kernels/kernels.h"
#include "kernels/quant.h"
#include "methods/adapter.h"
#include "models/llama_export.h"

#define ROPE_TABLE_CAP 32768 /* positions precomputed; longer contexts are refused */

static const char *const site_kinds[SITES_PER_LAYER] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                          "gate_proj", "up_proj", "down_proj"};

/* ---- loading ----------------------------------------------------------------- */

/* One base tensor the model needs: name, shape, and where to put its f32 pointer. */
typedef struct wanted {
    char name[160];
    int ndim;
    int64_t shape[2];
    float **dst;
    peft_site *site; /* the site whose weight this is (it may stay in block form), else NULL */
} wanted;

static wanted *want(wanted *w, int *n, float **dst, int64_t d0, int64_t d1, const char *fmt, int layer) {
    wanted *x = &w[(*n)++];
    snprintf(x->name, sizeof x->name, fmt, layer);
    x->ndim = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->dst = dst;
    x->site = NULL;
    return x;
}

/* Lists every tensor of the checkpoint with its expected shape. Returns the count. */
static int list_wanted(peft_llama *m, wanted *w) {
    const peft_llama_config *c = &m->cfg;
    int n = 0, C = c->hidden_size, F = c->intermediate_size, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    want(w, &n, &m->embed, c->vocab_size, C, "model.embed_tokens.weight", 0);
    want(w, &n, &m->final_norm.base, C, 0, "model.norm.weight", 0);
    snprintf(m->final_norm.name, sizeof m->final_norm.name, "model.norm");
    if (!c->tie_word_embeddings) want(w, &n, &m->lm_head, c->vocab_size, C, "lm_head.weight", 0);
    const int out_dim[SITES_PER_LAYER] = {QD, KD, KD, C, F, F, C}, in_dim[SITES_PER_LAYER] = {C, C, C, QD, C, C, F};
    const int has_bias[SITES_PER_LAYER] = {c->qkv_bias, c->qkv_bias, c->qkv_bias, c->o_bias, c->mlp_bias, c->mlp_bias, c->mlp_bias};
    for (int l = 0; l < c->n_layers; l++) {
        peft_llama_layer *L = &m->layers[l];
        want(w, &n, &L->attn_norm.base, C, 0, "model.layers.%d.input_layernorm.weight", l);
        want(w, &n, &L->mlp_norm.base, C, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        snprintf(L->attn_norm.name, sizeof L->attn_norm.name, "model.layers.%d.input_layernorm", l);
        snprintf(L->mlp_norm.name, sizeof L->mlp_norm.name, "model.layers.%d.post_attention_layernorm", l);
        for (int s = 0; s < SITES_PER_LAYER; s++) {
            peft_site *site = &L->sites[s];
            snprintf(site->name, sizeof site->name, "model.layers.%d.%s.%s", l, s < SITE_GATE ? "self_attn" : "mlp", site_kinds[s]);
            site->kind = site_kinds[s];
            site->layer = l;
            site->in_features = in_dim[s];
            site->out_features = out_dim[s];
            char fmt[192];
            snprintf(fmt, sizeof fmt, "%s.weight", site->name);
            want(w, &n, &site->weight, out_dim[s], in_dim[s], fmt, 0)->site = site;
            if (has_bias[s]) {
                snprintf(fmt, sizeof fmt, "%s.bias", site->name);
                want(w, &n, &site->bias, out_dim[s], 0, fmt, 0);
            }
        }
    }
    return n;
}

static int check_finite(const float *x, size_t n, const char *name, const char *file, peft_err *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return peft_fail(err, PEFT_ENUMERIC, "%s: tensor \"%s\" holds a non-finite value (%g) at index %zu", file, name, x[i], i);
    return PEFT_OK;
}

/* A block-form weight [rows, cols] holds only finite values, checked a dequantized row at a time. */
static int check_finite_blocks(const peft_qformat *qf, const void *q, size_t rows, int cols, const char *name,
                               const char *file, peft_err *err) {
    float *row = malloc((size_t)(cols > 0 ? cols : 1) * sizeof(float));
    if (!row) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    const size_t rb = qf->row_bytes(cols);
    int rc = PEFT_OK;
    for (size_t r = 0; r < rows && rc == PEFT_OK; r++) {
        qf->dequantize_row(row, (const unsigned char *)q + r * rb, cols);
        rc = check_finite(row, (size_t)cols, name, file, err);
    }
    free(row);
    return rc;
}

/* Gives back the resident pages of [p, p + bytes) when it lies in the mapped checkpoint (they
 * are read from the file again if touched; peft_mapping_release). Returns 1 when it does. */
static int release_mapped(const peft_llama *m, const void *p, size_t bytes, int unwritten) {
    for (int i = 0; m->weights && i < m->weights->n_files; i++)
        if (peft_mapping_release(&m->weights->files[i]->map, p, bytes, unwritten)) return 1;
    return 0;
}

/* Points each wanted tensor into the mapping (aligned f32) or into the conversion slab. */
static int bind_weights(peft_llama *m, wanted *w, int n, peft_err *err) {
    size_t slab = 0;
    const peft_st_tensor **found = calloc((size_t)n, sizeof *found);
    const char **files = calloc((size_t)n, sizeof *files);
    if (!found || !files) {
        free(found);
        free(files);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    int rc = PEFT_OK;
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        const char *file = NULL;
        const peft_st_tensor *t = peft_weights_find(m->weights, w[i].name, &file);
        if (!t) {
            rc = peft_fail(err, PEFT_ESHAPE, "%s: missing tensor \"%s\" for %s", m->base.dir, w[i].name, m->cfg.arch_name);
            break;
        }
        int same = t->ndim == w[i].ndim;
        for (int d = 0; same && d < w[i].ndim; d++) same = t->shape[d] == w[i].shape[d];
        if (!same) {
            rc = peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" has shape [%lld%s%lld], config.json implies [%lld%s%lld]", file,
                           w[i].name, (long long)t->shape[0], t->ndim > 1 ? "," : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL,
                           (long long)w[i].shape[0], w[i].ndim > 1 ? "," : "", w[i].ndim > 1 ? (long long)w[i].shape[1] : 0LL);
            break;
        }
        if (t->ggml_type) { /* kept in block form (LLAMA_KEEP_BLOCKS): only a site's weight can be */
            const peft_qformat *qf = peft_qformat_of_ggml(t->ggml_type);
            if (!qf || !w[i].site || t->shape[1] % qf->block || t->nbytes != qf->row_bytes(t->shape[1]) * (size_t)t->shape[0]) {
                rc = peft_fail(err, PEFT_EFORMAT, "%s: tensor \"%s\": ggml type %d in block form is not %s", file, w[i].name,
                               t->ggml_type, qf ? "rows of whole blocks" : "a block format");
                break;
            }
        } else if (t->dtype != PEFT_F32 && t->dtype != PEFT_BF16 && t->dtype != PEFT_F16) {
            rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"%s\" has dtype %s (supported: F32, BF16, F16)", file, w[i].name,
                           peft_dtype_name(t->dtype));
            break;
        }
        found[i] = t;
        files[i] = file;
        if (!t->ggml_type && (t->dtype != PEFT_F32 || ((uintptr_t)t->data & 3))) slab += t->numel;
        m->base.n_params += t->numel;
    }
    m->converted_floats = slab;
    if (rc == PEFT_OK && slab && !(m->converted = malloc(slab * sizeof(float))))
        rc = peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate %zu MB to widen weights to f32", m->base.dir, slab * 4 >> 20);
    size_t off = 0;
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        const peft_st_tensor *t = found[i];
        if (t->ggml_type) {
            peft_site *site = w[i].site;
            site->qfmt = peft_qformat_of_ggml(t->ggml_type);
            site->w_q = t->data;
            *w[i].dst = NULL; /* no f32 copy: the matmuls read the blocks */
            m->base.n_kept_blocks++;
            rc = check_finite_blocks(site->qfmt, t->data, (size_t)t->shape[0], (int)t->shape[1], w[i].name, files[i], err);
            continue;
        }
        if (t->dtype == PEFT_F32 && !((uintptr_t)t->data & 3)) {
            *w[i].dst = (float *)t->data; /* the mapping is private copy-on-write */
        } else {
            *w[i].dst = m->converted + off;
            peft_convert_to_f32(*w[i].dst, t->data, t->dtype, t->numel);
            release_mapped(m, t->data, t->nbytes, 1); /* the widened copy serves from now on; loading
                                                         writes nothing, so the pages are unwritten */
            off += t->numel;
        }
        rc = check_finite(*w[i].dst, t->numel, w[i].name, files[i], err);
        /* the scan made every page of a mapped tensor resident: give them back (unwritten so far),
         * so that what stays resident is what the model touches next (all of it for f32 compute;
         * one site at a time for llama_quantize / llama_use_half, which release each as they go) */
        if (rc == PEFT_OK && *w[i].dst == (const float *)t->data) release_mapped(m, t->data, t->nbytes, 1);
    }
    free(found);
    free(files);
    return rc;
}

static const peft_model_ops llama_ops;

/* The model.h view of a loaded m: info from its config, the site and norm lists, the ops. */
static int fill_base(peft_llama *m, const char *config_path, peft_err *err) {
    static const char *const model_types[] = {"llama", "mistral", "qwen2"}; /* by peft_llama_arch */
    const peft_llama_config *c = &m->cfg;
    peft_model *b = &m->base;
    b->ops = &llama_ops;
    b->compute = "f32";
    b->tok_embed = m->embed;
    b->weights = m->weights;
    b->n_sites = llama_n_sites(m);
    b->n_norms = llama_n_norm_sites(m);
    m->site_list = malloc((size_t)b->n_sites * sizeof *m->site_list);
    m->norm_list = malloc((size_t)b->n_norms * sizeof *m->norm_list);
    if (!m->site_list || !m->norm_list) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < b->n_sites; i++) m->site_list[i] = llama_site(m, i);
    for (int i = 0; i < b->n_norms; i++) {
        peft_norm_site *ns = m->norm_list[i] = llama_norm_site(m, i);
        ns->layer = i < 2 * c->n_layers ? i / 2 : -1;
        ns->dim = c->hidden_size;
    }
    b->sites = m->site_list;
    b->norms = m->norm_list;
    snprintf(m->config_path, sizeof m->config_path, "%s", config_path);
    peft_model_info *in = &b->info;
    in->arch = "llama";
    snprintf(in->hf_class, sizeof in->hf_class, "%s", c->arch_name);
    snprintf(in->model_type, sizeof in->model_type, "%s", model_types[c->arch]);
    in->task = PEFT_TASK_CAUSAL_LM;
    in->is_decoder = 1;
    in->vocab_size = c->vocab_size;
    in->hidden_size = c->hidden_size;
    in->intermediate_size = c->intermediate_size;
    in->n_layers = c->n_layers;
    in->n_heads = c->n_heads;
    in->n_kv_heads = c->n_kv_heads;
    in->head_dim = c->head_dim;
    in->max_positions = c->max_position_embeddings;
    in->bos_token_id = c->bos_token_id;
    in->pad_token_id = -1;
    in->n_eos = c->n_eos < PEFT_MODEL_MAX_EOS ? c->n_eos : PEFT_MODEL_MAX_EOS;
    memcpy(in->eos_token_ids, c->eos_token_ids, (size_t)in->n_eos * sizeof(int));
    in->tie_word_embeddings = c->tie_word_embeddings;
    in->file = m->config_path;
    return PEFT_OK;
}

int llama_load(const char *dir, peft_llama **out, peft_err *err) { return llama_load_ex(dir, 0, out, err); }

int llama_load_ex(const char *dir, int flags, peft_llama **out, peft_err *err) {
    *out = NULL;
    peft_llama *m = calloc(1, sizeof *m);
    if (!m) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    snprintf(m->base.dir, sizeof m->base.dir, "%s", dir);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc;
    if (peft_gguf_is_file(dir)) { /* a .gguf: config and f32 weights under HF names from it */
        rc = peft_gguf_open_llama_ex(dir, flags & LLAMA_KEEP_BLOCKS, &m->cfg, &m->weights, err);
    } else {
        rc = peft_llama_config_load(path, &m->cfg, err);
        if (rc == PEFT_OK) rc = peft_weights_open(dir, &m->weights, err);
    }
    const peft_llama_config *c = &m->cfg;
    wanted *w = NULL;
    if (rc == PEFT_OK) {
        m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
        w = calloc((size_t)c->n_layers * 2 * (SITES_PER_LAYER + 1) + 3, sizeof *w);
        if (!m->layers || !w) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    if (rc == PEFT_OK) rc = bind_weights(m, w, list_wanted(m, w), err);
    free(w);
    for (int i = 0; rc == PEFT_OK && i < llama_n_norm_sites(m); i++) llama_norm_site(m, i)->weight = llama_norm_site(m, i)->base;
    if (rc == PEFT_OK) rc = fill_base(m, peft_gguf_is_file(dir) ? dir : path, err);
    if (rc == PEFT_OK) {
        if (c->tie_word_embeddings) m->lm_head = m->embed;
        int half = c->head_dim / 2;
        m->rope_max_pos = c->max_position_embeddings < ROPE_TABLE_CAP ? c->max_position_embeddings : ROPE_TABLE_CAP;
        float *inv_freq = malloc((size_t)half * sizeof(float));
        m->rope_cos = malloc((size_t)m->rope_max_pos * half * sizeof(float));
        m->rope_sin = malloc((size_t)m->rope_max_pos * half * sizeof(float));
        if (!inv_freq || !m->rope_cos || !m->rope_sin) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        else {
            peft_llama_rope_inv_freq(c, inv_freq);
            rope_build_table(m->rope_cos, m->rope_sin, inv_freq, m->rope_max_pos, half);
        }
        free(inv_freq);
    }
    if (rc) {
        llama_free(m);
        return rc;
    }
    *out = m;
    return PEFT_OK;
}

int llama_load_shapes(const char *config_path, peft_llama **out, peft_err *err) {
    *out = NULL;
    peft_llama *m = calloc(1, sizeof *m);
    if (!m) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    snprintf(m->base.dir, sizeof m->base.dir, "%s", config_path);
    int rc = peft_gguf_is_file(config_path) ? peft_gguf_open_llama(config_path, &m->cfg, &m->weights, err)
                                            : peft_llama_config_load(config_path, &m->cfg, err);
    wanted *w = NULL;
    if (rc == PEFT_OK) {
        m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
        w = calloc((size_t)m->cfg.n_layers * 2 * (SITES_PER_LAYER + 1) + 3, sizeof *w);
        if (!m->layers || !w) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
        else list_wanted(m, w); /* names and shapes of the sites; weights stay NULL */
    }
    free(w);
    if (rc == PEFT_OK) rc = fill_base(m, config_path, err);
    if (rc) {
        llama_free(m);
        return rc;
    }
    *out = m;
    return PEFT_OK;
}

/* Frees the resident memory of an f32 tensor that 16-bit copies now serve. A tensor in the
 * mapped checkpoint keeps its contents (its pages are read from the file again if touched); a
 * widened one (bf16/f16 checkpoint) is discarded when may_discard: returns 1, and the caller
 * must drop its pointer. Returns 0 when the tensor is still readable. */
static int release_weight(const peft_llama *m, float *p, size_t numel, int may_discard) {
    if (release_mapped(m, p, numel * sizeof(float), 0)) return 0; /* merges or PiSSA may have written it */
    if (may_discard && m->converted && p >= m->converted && p + numel <= m->converted + m->converted_floats) {
        peft_pages_discard(p, numel * sizeof(float));
        return 1;
    }
    return 0;
}

int llama_use_half(peft_llama *m, const peft_half_matmul *fmt, int training, peft_err *err) {
    if (m->half) {
        if (m->half == fmt) return PEFT_OK;
        return peft_fail(err, PEFT_EINVAL, "%s: the model already computes in %s", m->base.dir, m->half->name);
    }
    if (m->qfmt)
        return peft_fail(err, PEFT_EINVAL, "%s: the weights are quantized to %s, which is multiplied in f32", m->base.dir,
                         m->qfmt->name);
    if (m->base.n_kept_blocks)
        return peft_fail(err, PEFT_EINVAL, "%s: %d linear weights are kept in their GGUF block formats, which are multiplied in f32",
                         m->base.dir, m->base.n_kept_blocks);
    const peft_llama_config *c = &m->cfg;
    const int C = c->hidden_size, V = c->vocab_size;
    size_t total = fmt->packed_size(V, C) + (training ? fmt->packed_t_size(V, C) : 0);
    for (int i = 0; i < llama_n_sites(m); i++) {
        const peft_site *s = llama_site(m, i);
        total += fmt->packed_size(s->out_features, s->in_features) +
                 (training ? fmt->packed_t_size(s->out_features, s->in_features) : 0);
    }
    m->half_slab = malloc(total * sizeof(uint16_t));
    if (!m->half_slab)
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB for %s weights", total * 2 >> 20, fmt->name);
    uint16_t *p = m->half_slab;
    for (int i = 0; i < llama_n_sites(m); i++) {
        peft_site *s = llama_site(m, i);
        fmt->pack_weight(p, s->weight, s->out_features, s->in_features);
        s->w_half = p;
        p += fmt->packed_size(s->out_features, s->in_features);
        if (training) {
            fmt->pack_weight_t(p, s->weight, s->out_features, s->in_features);
            s->wt_half = p;
            p += fmt->packed_t_size(s->out_features, s->in_features);
        }
        s->half = fmt;
        /* nothing reads W after this unless the method does (merge is refused from now on);
         * widened copies go only when `training` packed both layouts (every product has a
         * 16-bit path then, backward included) */
        if (!(s->adapter && s->adapter->method->reads_base) &&
            release_weight(m, s->weight, (size_t)s->out_features * s->in_features, training))
            s->weight = NULL;
    }
    fmt->pack_weight(p, m->lm_head, V, C);
    m->lm_head_half = p;
    p += fmt->packed_size(V, C);
    if (training) {
        fmt->pack_weight_t(p, m->lm_head, V, C);
        m->lm_head_t_half = p;
    }
    /* a tied head is the embedding, which gathers the rows of the tokens it sees: mapped
     * pages come back one at a time (real text uses a small part of the vocabulary), widened
     * ones must stay */
    if (release_weight(m, m->lm_head, (size_t)V * C, training && m->lm_head != m->embed)) m->lm_head = NULL;
    m->half = fmt;
    m->base.compute = fmt->name;
    return PEFT_OK;
}

int llama_quantize(peft_llama *m, const peft_qformat *fmt, peft_err *err) {
    if (m->qfmt) {
        if (m->qfmt == fmt) return PEFT_OK;
        return peft_fail(err, PEFT_EINVAL, "%s: the model is already quantized to %s", m->base.dir, m->qfmt->name);
    }
    if (m->half)
        return peft_fail(err, PEFT_EINVAL, "%s: the model computes in %s; quantized weights are multiplied in f32", m->base.dir,
                         m->half->name);
    if (m->base.n_kept_blocks)
        return peft_fail(err, PEFT_EINVAL, "%s: %d linear weights are already in block form as the GGUF stores them", m->base.dir,
                         m->base.n_kept_blocks);
    if (!fmt->quantize_rows) return peft_fail(err, PEFT_EUNSUPPORTED, "peft.c reads %s but does not write it", fmt->name);
    size_t total = 0;
    for (int i = 0; i < llama_n_sites(m); i++) {
        const peft_site *s = llama_site(m, i);
        if (!s->weight) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded without weights", s->name);
        if (s->in_features % fmt->block == 0) total += fmt->row_bytes(s->in_features) * (size_t)s->out_features;
    }
    unsigned char *p = m->q_slab = malloc(total ? total : 1);
    if (!p) return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB for %s weights", total >> 20, fmt->name);
    for (int i = 0; i < llama_n_sites(m); i++) {
        peft_site *s = llama_site(m, i);
        if (s->in_features % fmt->block) continue; /* rows of whole blocks only: this site stays f32 */
        if (fmt->quantize_rows(p, s->weight, s->out_features, s->in_features))
            return peft_fail(err, PEFT_ENOMEM, "%s: out of memory quantizing to %s", s->name, fmt->name);
        s->w_q = p;
        s->qfmt = fmt;
        p += fmt->row_bytes(s->in_features) * (size_t)s->out_features;
        /* both products of a frozen site now read the blocks: W goes unless the method reads it */
        if (!(s->adapter && s->adapter->method->reads_base) &&
            release_weight(m, s->weight, (size_t)s->out_features * s->in_features, 1))
            s->weight = NULL;
    }
    m->qfmt = fmt;
    return PEFT_OK;
}

int llama_dequantize_sites(peft_llama *m, peft_site *const *sites, int n, peft_err *err) {
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (sites[i]->w_q && !sites[i]->weight) total += (size_t)sites[i]->out_features * sites[i]->in_features;
    if (!total) return PEFT_OK;
    if (m->kept_f32) return peft_fail(err, PEFT_EINVAL, "%s: block-form weights were already dequantized once", m->base.dir);
    if (!(m->kept_f32 = malloc(total * sizeof(float))))
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB to dequantize block-form weights", total * 4 >> 20);
    float *p = m->kept_f32;
    for (int i = 0; i < n; i++) {
        peft_site *s = sites[i];
        if (!s->w_q || s->weight) continue;
        const size_t rb = s->qfmt->row_bytes(s->in_features);
#pragma omp parallel for schedule(static)
        for (int r = 0; r < s->out_features; r++)
            s->qfmt->dequantize_row(p + (size_t)r * s->in_features, (const unsigned char *)s->w_q + (size_t)r * rb, s->in_features);
        /* the site is f32 from now on: a method may change W (PiSSA's residual), so the
         * matmuls must read the copy, not the blocks */
        s->weight = p;
        s->w_q = NULL;
        s->qfmt = NULL;
        m->base.n_kept_blocks--;
        p += (size_t)s->out_features * s->in_features;
    }
    return PEFT_OK;
}

/* logits[N,V] = x[N,C] lm_head^T, in 16 bits when packed. PEFT_ENOMEM: the 16-bit kernel's
 * scratch could not be allocated (so for every int-returning step function below). */
static int lm_head_forward(const peft_llama *m, float *logits, const float *x, int N) {
    if (m->lm_head_half) return m->half->forward(logits, x, m->lm_head_half, NULL, N, m->cfg.hidden_size, m->cfg.vocab_size);
    matmul_forward(logits, x, m->lm_head, NULL, N, m->cfg.hidden_size, m->cfg.vocab_size);
    return PEFT_OK;
}

/* dx[N,C] += dlogits[N,V] lm_head, in 16 bits when packed. */
static int lm_head_backward_input(const peft_llama *m, float *dx, const float *dlogits, int N) {
    int C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    if (m->lm_head_t_half) return m->half->backward_input(dx, dlogits, m->lm_head_t_half, N, C, V);
    matmul_backward(dx, NULL, NULL, dlogits, NULL, m->lm_head, N, C, V);
    return PEFT_OK;
}

void llama_free(peft_llama *m) {
    if (!m) return;
    free(m->half_slab);
    free(m->q_slab);
    free(m->kept_f32);
    peft_weights_close(m->weights);
    free(m->converted);
    free(m->layers);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->site_list);
    free(m->norm_list);
    free(m);
}

int llama_n_sites(const peft_llama *m) { return m->cfg.n_layers * SITES_PER_LAYER; }

peft_site *llama_site(peft_llama *m, int i) { return &m->layers[i / SITES_PER_LAYER].sites[i % SITES_PER_LAYER]; }

int llama_n_norm_sites(const peft_llama *m) { return 2 * m->cfg.n_layers + 1; }

peft_norm_site *llama_norm_site(peft_llama *m, int i) {
    if (i == 2 * m->cfg.n_layers) return &m->final_norm;
    return i % 2 ? &m->layers[i / 2].mlp_norm : &m->layers[i / 2].attn_norm;
}

peft_site *llama_find_site(peft_llama *m, const char *name) {
    for (int i = 0; i < llama_n_sites(m); i++)
        if (!strcmp(llama_site(m, i)->name, name)) return llama_site(m, i);
    return NULL;
}

/* ---- activations ------------------------------------------------------------- */

/* Floats per token of one layer's saved activations, without the recomputable xn1, xn2, act. */
static size_t layer_floats(const peft_llama_config *c) {
    size_t C = c->hidden_size, F = c->intermediate_size, QD = (size_t)c->n_heads * c->head_dim,
           KD = (size_t)c->n_kv_heads * c->head_dim;
    return C + 2 + 2 * QD + 2 * KD + c->n_heads + 2 * F;
}

int llama_acts_alloc(const peft_llama *m, int B, int T, int save_all, int training, llama_acts *a, peft_err *err) {
    memset(a, 0, sizeof *a);
    const peft_llama_config *c = &m->cfg;
    size_t N = (size_t)B * T, C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, L = c->n_layers,
           QD = (size_t)c->n_heads * c->head_dim, KD = (size_t)c->n_kv_heads * c->head_dim;
    size_t n_layer_sets = save_all ? L : 1, R = N < LLAMA_HEAD_CHUNK ? N : LLAMA_HEAD_CHUNK;
    const int half_mlp = m->half && save_all && training; /* gate, up saved as bf16 (llama_layer_acts) */
    size_t total = (L + 1) * N * C + n_layer_sets * N * layer_floats(c) + N * (2 * C + F) + N * C + N + N +
                   R * (2 * C + V);
    if (half_mlp) total += 2 * N * F - n_layer_sets * N * F; /* shared f32 gate, up; 2 x N x F halves per layer */
    if (training) total += 3 * N * C + N * (2 * QD + 2 * KD) + 3 * N * F;
    a->B = B;
    a->T = T;
    a->save_all = save_all;
    a->training = training;
    a->slab = malloc(total * sizeof(float));
    a->pos = malloc(N * sizeof(int32_t));
    a->layer = calloc(L, sizeof *a->layer);
    if (!a->slab || !a->pos || !a->layer) {
        llama_acts_free(a);
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB of activations for %d x %d tokens", total * 4 >> 20, B, T);
    }
    float *p = a->slab;
#define TAKE(ptr, count) (ptr = p, p += (count))
    TAKE(a->residual, (L + 1) * N * C);
    float *xn1, *xn2, *act; /* shared by all layers (llama_layer_acts) */
    TAKE(xn1, N * C);
    TAKE(xn2, N * C);
    TAKE(act, N * F);
    float *gate = NULL, *up = NULL;
    if (half_mlp) {
        TAKE(gate, N * F);
        TAKE(up, N * F);
    }
    for (size_t l = 0; l < n_layer_sets; l++) {
        llama_layer_acts *la = &a->layer[l];
        la->xn1 = xn1;
        la->xn2 = xn2;
        la->act = act;
        TAKE(la->rstd1, N);
        TAKE(la->q, N * QD);
        TAKE(la->k, N * KD);
        TAKE(la->v, N * KD);
        TAKE(la->att, N * QD);
        TAKE(la->lse, N * c->n_heads);
        TAKE(la->x_mid, N * C);
        TAKE(la->rstd2, N);
        if (half_mlp) {
            la->gate = gate, la->up = up;
            la->gate_h = (uint16_t *)p, la->up_h = la->gate_h + N * F;
            p += N * F; /* the two [N, F] bf16 arrays */
        } else {
            TAKE(la->gate, N * F);
            TAKE(la->up, N * F);
        }
    }
    for (size_t l = n_layer_sets; l < L; l++) a->layer[l] = a->layer[0];
    TAKE(a->xnf, N * C);
    TAKE(a->rstdf, N);
    TAKE(a->losses, N);
    TAKE(a->head_x, R * C);
    TAKE(a->head_dx, R * C);
    TAKE(a->head_logits, R * V);
    if (training) {
        TAKE(a->dxnf, N * C);
        TAKE(a->dres, N * C);
        TAKE(a->dxn, N * C);
        TAKE(a->dq, N * QD);
        TAKE(a->datt, N * QD);
        TAKE(a->dk, N * KD);
        TAKE(a->dv, N * KD);
        TAKE(a->dgate, N * F);
        TAKE(a->dup, N * F);
        TAKE(a->dact, N * F);
    }
#undef TAKE
    return PEFT_OK;
}

void llama_acts_free(llama_acts *a) {
    free(a->slab);
    free(a->logits);
    free(a->pos);
    free(a->layer);
    memset(a, 0, sizeof *a);
}

/* ---- forward ------------------------------------------------------------------ */

/* Prefix tuning: rows t < n_virtual of k, v [B, T, KD] become layer l's trained prefix. */
static void prefix_rows(const peft_llama *m, int l, float *k, float *v, int B, int T) {
    size_t KD = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim, stride = (size_t)m->cfg.n_layers * 2 * KD;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < m->base.virt.n_virtual; t++) {
            const float *row = m->base.virt.prefix_kv + (size_t)t * stride + (size_t)2 * l * KD;
            memcpy(k + ((size_t)b * T + t) * KD, row, KD * sizeof(float));
            memcpy(v + ((size_t)b * T + t) * KD, row + KD, KD * sizeof(float));
        }
}

/* A decoder layer up to attention: xn1 = rms(x_in[N,C]); q, k, v from their sites, q and k
 * rotated at rope_pos[N]. save: a training forward (adapters keep what backward needs). */
static int layer_qkv(peft_llama *m, int l, llama_layer_acts *la, const float *x_in, const int32_t *rope_pos, int N, int save) {
    const peft_llama_config *c = &m->cfg;
    peft_llama_layer *L = &m->layers[l];
    rmsnorm_forward(la->xn1, la->rstd1, x_in, L->attn_norm.weight, c->rms_norm_eps, N, c->hidden_size);
    int rc = site_forward(&L->sites[SITE_Q], la->q, la->xn1, N, save);
    if (rc == PEFT_OK) rc = site_forward(&L->sites[SITE_K], la->k, la->xn1, N, save);
    if (rc == PEFT_OK) rc = site_forward(&L->sites[SITE_V], la->v, la->xn1, N, save);
    if (rc) return rc;
    rope_forward(la->q, rope_pos, m->rope_cos, m->rope_sin, N, c->n_heads, c->head_dim);
    rope_forward(la->k, rope_pos, m->rope_cos, m->rope_sin, N, c->n_kv_heads, c->head_dim);
    return PEFT_OK;
}

/* The rest of a decoder layer after attention (la->att [N, NH*HD]):
 * x_mid = x_in + o_proj(att), x_out = x_mid + down_proj(silu(gate_proj(rms(x_mid))) * up_proj(...)). */
static int layer_out(peft_llama *m, int l, llama_layer_acts *la, const float *x_in, float *x_out, int N, int save) {
    const peft_llama_config *c = &m->cfg;
    peft_llama_layer *L = &m->layers[l];
    int C = c->hidden_size, F = c->intermediate_size;
    int rc = site_forward(&L->sites[SITE_O], la->x_mid, la->att, N, save);
    if (rc) return rc;
    add_inplace(la->x_mid, x_in, (size_t)N * C);
    rmsnorm_forward(la->xn2, la->rstd2, la->x_mid, L->mlp_norm.weight, c->rms_norm_eps, N, C);
    rc = site_forward(&L->sites[SITE_GATE], la->gate, la->xn2, N, save);
    if (rc == PEFT_OK) rc = site_forward(&L->sites[SITE_UP], la->up, la->xn2, N, save);
    if (rc) return rc;
    swiglu_forward(la->act, la->gate, la->up, N, F);
    if (la->gate_h) {
        f32_to_bf16_array(la->gate_h, la->gate, (size_t)N * F);
        f32_to_bf16_array(la->up_h, la->up, (size_t)N * F);
    }
    rc = site_forward(&L->sites[SITE_DOWN], x_out, la->act, N, save);
    add_inplace(x_out, la->x_mid, (size_t)N * C);
    return rc;
}

/* One decoder layer: x_out[N,C] from x_in[N,C]. rope_pos[N] are RoPE positions; attn_pos
 * the packed-example window (see attention_forward). With a KV cache (kc, vc: this layer's
 * [capacity, KD] rows, kv_len already stored), new k/v rows are appended and attention runs
 * over the cache. save: a training forward (adapters keep what backward needs). */
static int layer_forward(peft_llama *m, int l, llama_layer_acts *la, const float *x_in, float *x_out,
                         const int32_t *rope_pos, const int32_t *attn_pos, int B, int T, float *kc, float *vc,
                         int kv_len, int save) {
    const peft_llama_config *c = &m->cfg;
    int N = B * T, HD = c->head_dim, KD = c->n_kv_heads * HD;
    int rc = layer_qkv(m, l, la, x_in, rope_pos, N, save);
    if (rc) return rc;
    if (m->base.virt.prefix_kv && !kc) prefix_rows(m, l, la->k, la->v, B, T);
    if (kc) {
        memcpy(kc + (size_t)kv_len * KD, la->k, (size_t)N * KD * sizeof(float));
        memcpy(vc + (size_t)kv_len * KD, la->v, (size_t)N * KD * sizeof(float));
        rc = attention_forward(la->att, NULL, la->q, kc, vc, NULL, 1, T, kv_len + T, c->n_heads, c->n_kv_heads, HD);
    } else {
        rc = attention_forward(la->att, la->lse, la->q, la->k, la->v, attn_pos, B, T, T, c->n_heads, c->n_kv_heads, HD);
    }
    return rc ? rc : layer_out(m, l, la, x_in, x_out, N, save);
}

static int check_ids(const peft_llama *m, const int32_t *ids, size_t n, peft_err *err) {
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return peft_fail(err, PEFT_EINVAL, "token id %d at index %zu is outside the vocabulary [0, %d)", ids[i], i,
                             m->cfg.vocab_size);
    return PEFT_OK;
}

static int check_context(const peft_llama *m, int T, peft_err *err) {
    int limit = m->rope_max_pos;
    if (m->cfg.sliding_window > 0 && m->cfg.sliding_window < limit) limit = m->cfg.sliding_window;
    if (T > limit)
        return peft_fail(err, PEFT_EINVAL, "%d tokens exceed the model's context of %d (max_position_embeddings%s)", T, limit,
                         m->cfg.sliding_window ? " or sliding_window" : "");
    return PEFT_OK;
}

/* The loss head over the counted rows only (targets >= 0), LLAMA_HEAD_CHUNK at a time: their
 * xnf rows gathered into head_x, logits [R, V], cross-entropy; when dxnf is non-NULL also the
 * gradient of (sum of the losses) / total, scattered into dxnf[N, C] (zero on ignored rows).
 * Rows left out of the loss (prompts) cost nothing. Fills losses[N]; returns the counted rows,
 * or PEFT_ENOMEM. */
static int head_loss(const peft_llama *m, llama_acts *a, const int32_t *targets, int total, float *dxnf) {
    const int N = a->B * a->T, C = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int rows[LLAMA_HEAD_CHUNK], tgt[LLAMA_HEAD_CHUNK], counted = 0;
    float loss[LLAMA_HEAD_CHUNK];
    if (dxnf) memset(dxnf, 0, (size_t)N * C * sizeof(float));
    for (int n = 0; n < N;) {
        int R = 0;
        for (; n < N && R < LLAMA_HEAD_CHUNK; n++) {
            a->losses[n] = 0.0f;
            if (targets[n] < 0) continue;
            rows[R] = n;
            tgt[R] = targets[n];
            memcpy(a->head_x + (size_t)R * C, a->xnf + (size_t)n * C, (size_t)C * sizeof(float));
            R++;
        }
        if (!R) continue;
        if (lm_head_forward(m, a->head_logits, a->head_x, R)) return PEFT_ENOMEM;
        if (dxnf) {
            counted += crossentropy_fused(loss, a->head_logits, tgt, 1.0f / (float)total, R, V);
            memset(a->head_dx, 0, (size_t)R * C * sizeof(float));
            if (lm_head_backward_input(m, a->head_dx, a->head_logits, R)) return PEFT_ENOMEM;
            for (int r = 0; r < R; r++)
                memcpy(dxnf + (size_t)rows[r] * C, a->head_dx + (size_t)r * C, (size_t)C * sizeof(float));
        } else {
            counted += crossentropy_forward(loss, a->head_logits, tgt, R, V);
        }
        for (int r = 0; r < R; r++) a->losses[rows[r]] = loss[r];
    }
    return counted;
}

int llama_forward(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *pos, const int32_t *targets,
                  double *loss, int *n_counted, peft_err *err) {
    const peft_llama_config *c = &m->cfg;
    int B = a->B, T = a->T, N = B * T, C = c->hidden_size, V = c->vocab_size;
    int rc = check_ids(m, ids, (size_t)N, err);
    if (rc == PEFT_OK) rc = check_context(m, T, err);
    if (rc == PEFT_OK && m->base.virt.n_virtual >= T)
        rc = peft_fail(err, PEFT_EINVAL, "rows of %d tokens leave no room after %d virtual tokens", T, m->base.virt.n_virtual);
    if (rc) return rc;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int p = pos ? pos[b * T + t] : t;
            if (p < 0 || p > t) return peft_fail(err, PEFT_EINVAL, "position %d of token %d in row %d must be in [0, %d]", p, t, b, t);
            a->pos[b * T + t] = p;
        }
    a->pos_is_packed = pos != NULL;
    embedding_forward(a->residual, ids, m->embed, N, C);
    for (int b = 0; b < B && m->base.virt.emb; b++) /* prompt tuning: trained rows replace the placeholders */
        memcpy(a->residual + (size_t)b * T * C, m->base.virt.emb, (size_t)m->base.virt.n_virtual * C * sizeof(float));
    for (int l = 0; l < c->n_layers && rc == PEFT_OK; l++)
        rc = layer_forward(m, l, &a->layer[l], a->residual + (size_t)l * N * C, a->residual + (size_t)(l + 1) * N * C,
                           a->pos, pos ? a->pos : NULL, B, T, NULL, NULL, 0, a->training);
    if (rc) return peft_fail(err, rc, "out of memory for a kernel's scratch (forward pass)");
    rmsnorm_forward(a->xnf, a->rstdf, a->residual + (size_t)c->n_layers * N * C, m->final_norm.weight, c->rms_norm_eps, N, C);
    a->head_counted = 0;
    if (!targets) {
        if (!a->logits && !(a->logits = malloc((size_t)N * V * sizeof(float))))
            return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB of logits", (size_t)N * V * 4 >> 20);
        if (lm_head_forward(m, a->logits, a->xnf, N)) return peft_fail(err, PEFT_ENOMEM, "out of memory for a kernel's scratch (lm_head)");
    } else {
        int total = 0;
        for (int i = 0; i < N; i++) {
            if (targets[i] >= V) return peft_fail(err, PEFT_EINVAL, "target id %d is outside the vocabulary", targets[i]);
            total += targets[i] >= 0;
        }
        int counted = head_loss(m, a, targets, total, a->training ? a->dxnf : NULL);
        if (counted < 0) return peft_fail(err, counted, "out of memory for a kernel's scratch (loss head)");
        if (a->training) a->head_counted = counted;
        double sum = 0;
        for (int i = 0; i < N; i++) sum += a->losses[i];
        if (loss) *loss = counted ? sum / counted : 0.0;
        if (n_counted) *n_counted = counted;
    }
    return PEFT_OK;
}

/* ---- backward ----------------------------------------------------------------- */

/* dres[N,C]: on entry dL/dx_out, on return dL/dx_in. Frozen weights get no gradient. */
static int layer_backward(peft_llama *m, int l, llama_layer_acts *la, llama_acts *a, const float *x_in) {
    const peft_llama_config *c = &m->cfg;
    peft_llama_layer *L = &m->layers[l];
    int B = a->B, T = a->T, N = B * T, C = c->hidden_size, F = c->intermediate_size, HD = c->head_dim;
    size_t QD = (size_t)c->n_heads * HD, KD = (size_t)c->n_kv_heads * HD;
    /* MLP: x_out = x_mid + down(silu(gate(xn2)) * up(xn2)) */
    const int rebuild = a->save_all; /* xn1, xn2, act are shared by all layers (llama_layer_acts) */
    if (la->gate_h) {
        bf16_to_f32_array(la->gate, la->gate_h, (size_t)N * F);
        bf16_to_f32_array(la->up, la->up_h, (size_t)N * F);
    }
    if (rebuild) swiglu_forward(la->act, la->gate, la->up, N, F);
    memset(a->dact, 0, (size_t)N * F * sizeof(float));
    int rc = site_backward(&L->sites[SITE_DOWN], a->dact, a->dres, la->act, N);
    if (rc) return rc;
    memset(a->dgate, 0, (size_t)N * F * sizeof(float));
    memset(a->dup, 0, (size_t)N * F * sizeof(float));
    swiglu_backward(a->dgate, a->dup, a->dact, la->gate, la->up, N, F);
    if (rebuild) rmsnorm_forward(la->xn2, la->rstd2, la->x_mid, L->mlp_norm.weight, c->rms_norm_eps, N, C);
    memset(a->dxn, 0, (size_t)N * C * sizeof(float));
    rc = site_backward(&L->sites[SITE_GATE], a->dxn, a->dgate, la->xn2, N);
    if (rc == PEFT_OK) rc = site_backward(&L->sites[SITE_UP], a->dxn, a->dup, la->xn2, N);
    if (rc) return rc;
    rmsnorm_backward(a->dres, L->mlp_norm.grad, a->dxn, la->x_mid, L->mlp_norm.weight, la->rstd2, N, C);
    /* attention: x_mid = x_in + o(attn(q, k, v)) */
    memset(a->datt, 0, QD * N * sizeof(float));
    if ((rc = site_backward(&L->sites[SITE_O], a->datt, a->dres, la->att, N))) return rc;
    memset(a->dq, 0, QD * N * sizeof(float));
    memset(a->dk, 0, KD * N * sizeof(float));
    memset(a->dv, 0, KD * N * sizeof(float));
    rc = attention_backward(a->dq, a->dk, a->dv, a->datt, la->q, la->k, la->v, la->att, la->lse,
                            a->pos_is_packed ? a->pos : NULL, B, T, c->n_heads, c->n_kv_heads, HD);
    if (rc) return rc;
    if (m->base.virt.prefix_grad) /* the prefix rows' dk, dv are the prefix's gradient; nothing flows on from them */
        for (int b = 0; b < B; b++)
            for (int t = 0; t < m->base.virt.n_virtual; t++) {
                float *g = m->base.virt.prefix_grad + (size_t)t * c->n_layers * 2 * KD + (size_t)2 * l * KD;
                float *dk = a->dk + ((size_t)b * T + t) * KD, *dv = a->dv + ((size_t)b * T + t) * KD;
                add_inplace(g, dk, KD);
                add_inplace(g + KD, dv, KD);
                memset(dk, 0, KD * sizeof(float));
                memset(dv, 0, KD * sizeof(float));
            }
    rope_backward(a->dq, a->pos, m->rope_cos, m->rope_sin, N, c->n_heads, HD);
    rope_backward(a->dk, a->pos, m->rope_cos, m->rope_sin, N, c->n_kv_heads, HD);
    if (rebuild) rmsnorm_forward(la->xn1, la->rstd1, x_in, L->attn_norm.weight, c->rms_norm_eps, N, C);
    memset(a->dxn, 0, (size_t)N * C * sizeof(float));
    rc = site_backward(&L->sites[SITE_Q], a->dxn, a->dq, la->xn1, N);
    if (rc == PEFT_OK) rc = site_backward(&L->sites[SITE_K], a->dxn, a->dk, la->xn1, N);
    if (rc == PEFT_OK) rc = site_backward(&L->sites[SITE_V], a->dxn, a->dv, la->xn1, N);
    if (rc) return rc;
    rmsnorm_backward(a->dres, L->attn_norm.grad, a->dxn, x_in, L->attn_norm.weight, la->rstd1, N, C);
    return PEFT_OK;
}

int llama_backward(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *targets, int n_counted) {
    const peft_llama_config *c = &m->cfg;
    int B = a->B, T = a->T, N = B * T, C = c->hidden_size, rc = PEFT_OK;
    (void)ids;
    if (n_counted <= 0) return PEFT_OK;
    if (!a->head_counted) { /* the forward had no targets: form d(mean loss)/dxnf now */
        a->head_counted = n_counted;
        int counted = head_loss(m, a, targets, n_counted, a->dxnf); /* the count, or PEFT_ENOMEM */
        if (counted < 0) return counted;
    } else if (a->head_counted != n_counted) { /* a mean over another count than the forward's */
        scale_inplace(a->dxnf, (float)a->head_counted / (float)n_counted, (size_t)N * C);
        a->head_counted = n_counted;
    }
    memset(a->dres, 0, (size_t)N * C * sizeof(float));
    rmsnorm_backward(a->dres, m->final_norm.grad, a->dxnf, a->residual + (size_t)c->n_layers * N * C, m->final_norm.weight, a->rstdf, N, C);
    for (int l = c->n_layers - 1; l >= 0 && rc == PEFT_OK; l--) {
        const float *x_in = a->residual + (size_t)l * N * C;
        if (!a->save_all) /* gradient checkpointing: rebuild this layer's intermediates */
            rc = layer_forward(m, l, &a->layer[l], x_in, a->residual + (size_t)(l + 1) * N * C, a->pos,
                               a->pos_is_packed ? a->pos : NULL, B, T, NULL, NULL, 0, 1);
        if (rc == PEFT_OK) rc = layer_backward(m, l, &a->layer[l], a, x_in);
    }
    if (rc) return rc;
    /* dres is now dL/d(embeddings): the virtual tokens' rows are prompt tuning's gradient. */
    for (int b = 0; b < B && m->base.virt.emb_grad; b++)
        add_inplace(m->base.virt.emb_grad, a->dres + (size_t)b * T * C, (size_t)m->base.virt.n_virtual * C);
    return PEFT_OK;
}

/* ---- cached decoding ---------------------------------------------------------- */

int llama_kv_alloc(const peft_llama *m, int capacity, int chunk, llama_kv_cache *kv, peft_err *err) {
    memset(kv, 0, sizeof *kv);
    const peft_llama_config *c = &m->cfg;
    capacity += m->base.virt.n_virtual; /* virtual tokens take cache rows too */
    int rc = check_context(m, capacity, err);
    if (rc) return rc;
    size_t n = (size_t)c->n_layers * capacity * c->n_kv_heads * c->head_dim;
    kv->capacity = capacity;
    kv->chunk = chunk;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
        llama_kv_free(kv);
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate a KV cache of %d tokens", capacity);
    }
    rc = llama_acts_alloc(m, 1, chunk, 0, 0, &kv->acts, err);
    if (rc) llama_kv_free(kv);
    return rc;
}

void llama_kv_free(llama_kv_cache *kv) {
    free(kv->k);
    free(kv->v);
    llama_acts_free(&kv->acts);
    memset(kv, 0, sizeof *kv);
}

/* Appends n rows to the cache: token ids, or (ids NULL) embedding rows emb[n, C]. */
static int decode_rows(peft_llama *m, llama_kv_cache *kv, const int32_t *ids, const float *emb, int n, float *logits) {
    const peft_llama_config *c = &m->cfg;
    int C = c->hidden_size, KD = c->n_kv_heads * c->head_dim;
    llama_acts *a = &kv->acts;
    for (int i = 0; i < n; i++) a->pos[i] = kv->len + i;
    if (ids) embedding_forward(a->residual, ids, m->embed, n, C);
    else memcpy(a->residual, emb, (size_t)n * C * sizeof(float));
    /* Inference reuses two residual rows of the slab: layer l reads slot l%2, writes the other. */
    int rc = PEFT_OK;
    for (int l = 0; l < c->n_layers && rc == PEFT_OK; l++) {
        size_t off = (size_t)l * kv->capacity * KD;
        rc = layer_forward(m, l, &a->layer[0], a->residual + (size_t)(l % 2) * n * C,
                           a->residual + (size_t)((l + 1) % 2) * n * C, a->pos, NULL, 1, n, kv->k + off, kv->v + off, kv->len, 0);
    }
    const float *last = a->residual + (size_t)(c->n_layers % 2) * n * C + (size_t)(n - 1) * C;
    rmsnorm_forward(a->xnf, a->rstdf, last, m->final_norm.weight, c->rms_norm_eps, 1, C);
    if (rc == PEFT_OK) rc = lm_head_forward(m, logits, a->xnf, 1);
    kv->len += n;
    return rc;
}

int llama_decode(peft_llama *m, llama_kv_cache *kv, const int32_t *ids, int n, float *logits, peft_err *err) {
    if (n < 1 || n > kv->chunk) return peft_fail(err, PEFT_EINVAL, "decode of %d tokens (chunk is %d)", n, kv->chunk);
    int virt = kv->len == 0 ? m->base.virt.n_virtual : 0;
    if (kv->len + virt + n > kv->capacity)
        return peft_fail(err, PEFT_EINVAL, "context full: %d + %d tokens exceed %d", kv->len + virt, n, kv->capacity);
    int rc = check_ids(m, ids, (size_t)n, err);
    if (rc) return rc;
    if (virt && m->base.virt.prefix_kv) { /* prefix tuning: the prefix is the first cache rows of every layer */
        size_t KD = (size_t)m->cfg.n_kv_heads * m->cfg.head_dim;
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int t = 0; t < virt; t++) {
                const float *row = m->base.virt.prefix_kv + (size_t)t * m->cfg.n_layers * 2 * KD + (size_t)2 * l * KD;
                memcpy(kv->k + ((size_t)l * kv->capacity + t) * KD, row, KD * sizeof(float));
                memcpy(kv->v + ((size_t)l * kv->capacity + t) * KD, row + KD, KD * sizeof(float));
            }
        kv->len = virt;
    }
    for (int i = 0; i < virt && m->base.virt.emb && rc == PEFT_OK; i += kv->chunk) /* prompt tuning: the virtual tokens come first */
        rc = decode_rows(m, kv, NULL, m->base.virt.emb + (size_t)i * m->cfg.hidden_size,
                         virt - i < kv->chunk ? virt - i : kv->chunk, logits);
    if (rc == PEFT_OK) rc = decode_rows(m, kv, ids, NULL, n, logits);
    return rc ? peft_fail(err, rc, "out of memory for a kernel's scratch (decoding)") : PEFT_OK;
}

/* The n_seq rows (one new token per sequence) go through every site together: one base matmul
 * and, with an adapter pool, one gathered adapter term per row group. Attention runs per
 * sequence: row i's k, v are appended to cache i and its query attends that cache alone. */
int llama_decode_batch(peft_llama *m, llama_kv_cache *const *kv, const int32_t *ids, int n_seq, float *logits,
                       peft_err *err) {
    if (n_seq < 1) return peft_fail(err, PEFT_EINVAL, "batched decode of %d sequences", n_seq);
    for (int i = 0; i < n_seq; i++) {
        if (kv[i]->len + 1 > kv[i]->capacity)
            return peft_fail(err, PEFT_EINVAL, "sequence %d: context full (%d tokens)", i, kv[i]->capacity);
        if (m->base.virt.n_virtual && kv[i]->len == 0)
            return peft_fail(err, PEFT_EINVAL, "sequence %d: prefill it with llama_decode first (virtual tokens)", i);
        for (int j = 0; j < i; j++)
            if (kv[j] == kv[i]) return peft_fail(err, PEFT_EINVAL, "sequences %d and %d share a KV cache", j, i);
    }
    int rc = check_ids(m, ids, (size_t)n_seq, err);
    if (rc) return rc;
    const peft_llama_config *c = &m->cfg;
    int C = c->hidden_size, HD = c->head_dim, QD = c->n_heads * HD, KD = c->n_kv_heads * HD;
    llama_acts a; /* n_seq rows of inference scratch, a few MB at most: small against a step */
    if ((rc = llama_acts_alloc(m, n_seq, 1, 0, 0, &a, err))) return rc;
    llama_layer_acts *la = &a.layer[0];
    for (int i = 0; i < n_seq; i++) a.pos[i] = kv[i]->len;
    embedding_forward(a.residual, ids, m->embed, n_seq, C);
    for (int l = 0; l < c->n_layers && rc == PEFT_OK; l++) { /* layer l reads residual slot l%2, writes the other */
        const float *x_in = a.residual + (size_t)(l % 2) * n_seq * C;
        rc = layer_qkv(m, l, la, x_in, a.pos, n_seq, 0);
        for (int i = 0; i < n_seq && rc == PEFT_OK; i++) {
            size_t off = (size_t)l * kv[i]->capacity * KD, len = (size_t)kv[i]->len;
            float *kc = kv[i]->k + off, *vc = kv[i]->v + off;
            memcpy(kc + len * KD, la->k + (size_t)i * KD, (size_t)KD * sizeof(float));
            memcpy(vc + len * KD, la->v + (size_t)i * KD, (size_t)KD * sizeof(float));
            rc = attention_forward(la->att + (size_t)i * QD, NULL, la->q + (size_t)i * QD, kc, vc, NULL, 1, 1, (int)len + 1,
                                   c->n_heads, c->n_kv_heads, HD);
        }
        if (rc == PEFT_OK) rc = layer_out(m, l, la, x_in, a.residual + (size_t)((l + 1) % 2) * n_seq * C, n_seq, 0);
    }
    if (rc == PEFT_OK) {
        rmsnorm_forward(a.xnf, a.rstdf, a.residual + (size_t)(c->n_layers % 2) * n_seq * C, m->final_norm.weight,
                        c->rms_norm_eps, n_seq, C);
        rc = lm_head_forward(m, logits, a.xnf, n_seq);
    }
    llama_acts_free(&a);
    if (rc) return peft_fail(err, rc, "out of memory for a kernel's scratch (batched decoding)");
    for (int i = 0; i < n_seq; i++) kv[i]->len++;
    return PEFT_OK;
}

/* ---- the model interface (models/model.h) ---------------------------------------- */

/* peft_acts and peft_kv are llama_acts and llama_kv_cache on the heap. */
static void op_free(peft_model *m) { llama_free((peft_llama *)m); }

static int op_acts_alloc(peft_model *m, int B, int T, int save_all, int training, peft_acts **out, peft_err *err) {
    llama_acts *a = malloc(sizeof *a);
    int rc = a ? llama_acts_alloc((peft_llama *)m, B, T, save_all, training, a, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc) free(a), a = NULL;
    *out = (peft_acts *)a;
    return rc;
}

static void op_acts_free(peft_acts *pa) {
    if (!pa) return;
    llama_acts_free((llama_acts *)pa);
    free(pa);
}

static int op_forward(peft_model *m, peft_acts *pa, const peft_batch *b, double *loss, int *n_counted, peft_err *err) {
    const llama_acts *a = (const llama_acts *)pa;
    if (b->B != a->B || b->T != a->T)
        return peft_fail(err, PEFT_EINVAL, "a batch of %d x %d tokens for activations of %d x %d", b->B, b->T, a->B, a->T);
    if (!b->ids || b->type_ids || b->lengths || b->pixels)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: a llama batch is token ids (with positions), without type ids, lengths or pixels",
                         m->info.file);
    return llama_forward((peft_llama *)m, (llama_acts *)pa, b->ids, b->pos, b->targets, loss, n_counted, err);
}

static const float *op_outputs(const peft_acts *a) { return ((const llama_acts *)a)->logits; }

static int op_backward(peft_model *m, peft_acts *a, const peft_batch *b, int n_counted) {
    return llama_backward((peft_llama *)m, (llama_acts *)a, b->ids, b->targets, n_counted);
}

static int op_kv_alloc(peft_model *m, int capacity, int chunk, peft_kv **out, peft_err *err) {
    llama_kv_cache *kv = malloc(sizeof *kv);
    int rc = kv ? llama_kv_alloc((peft_llama *)m, capacity, chunk, kv, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc) free(kv), kv = NULL;
    *out = (peft_kv *)kv;
    return rc;
}

static void op_kv_free(peft_kv *kv) {
    if (!kv) return;
    llama_kv_free((llama_kv_cache *)kv);
    free(kv);
}

static int op_kv_len(const peft_kv *kv) { return ((const llama_kv_cache *)kv)->len; }

static int op_decode(peft_model *m, peft_kv *kv, const int32_t *ids, int n, float *logits, peft_err *err) {
    return llama_decode((peft_llama *)m, (llama_kv_cache *)kv, ids, n, logits, err);
}

static int op_decode_batch(peft_model *m, peft_kv *const *kv, const int32_t *ids, int n_seq, float *logits, peft_err *err) {
    return llama_decode_batch((peft_llama *)m, (llama_kv_cache *const *)kv, ids, n_seq, logits, err);
}

static int op_save_hf(peft_model *m, const char *dir, peft_err *err) { return llama_save_hf((peft_llama *)m, dir, err); }

static int op_use_half(peft_model *m, const peft_half_matmul *fmt, int training, peft_err *err) {
    return llama_use_half((peft_llama *)m, fmt, training, err);
}

static int op_quantize(peft_model *m, const peft_qformat *fmt, peft_err *err) { return llama_quantize((peft_llama *)m, fmt, err); }

static int op_dequantize_sites(peft_model *m, peft_site *const *sites, int n, peft_err *err) {
    return llama_dequantize_sites((peft_llama *)m, sites, n, err);
}

static const float *op_tensor(peft_model *pm, const char *name, int64_t *shape, int *ndim) {
    peft_llama *m = (peft_llama *)pm;
    const float *v = llama_tensor_values(m, name);
    const peft_st_tensor *t = v && m->weights ? peft_weights_find(m->weights, name, NULL) : NULL;
    if (ndim) *ndim = t ? t->ndim : 0;
    for (int d = 0; shape && t && d < t->ndim && d < PEFT_MODEL_MAX_DIMS; d++) shape[d] = t->shape[d];
    return v;
}

static const peft_model_ops llama_ops = {
    .abi_version = PEFT_MODEL_ABI,
    .arch = "llama",
    .free = op_free,
    .acts_alloc = op_acts_alloc,
    .acts_free = op_acts_free,
    .forward = op_forward,
    .outputs = op_outputs,
    .backward = op_backward,
    .kv_alloc = op_kv_alloc,
    .kv_free = op_kv_free,
    .kv_len = op_kv_len,
    .decode = op_decode,
    .decode_batch = op_decode_batch,
    .save_hf = op_save_hf,
    .use_half = op_use_half,
    .quantize = op_quantize,
    .dequantize_sites = op_dequantize_sites,
    .tensor = op_tensor,
};

/* The registry's loader (models/registry.c): causal-lm only (LlamaForSequenceClassification
 * is not implemented). config.json is parsed again by llama_load_ex, which also reads GGUFs. */
static int llama_arch_load(const char *path, const char *config_json, size_t config_len, const peft_model_load_opts *o,
                           peft_model **out, peft_err *err) {
    (void)config_json, (void)config_len;
    *out = NULL;
    if (o->task != PEFT_TASK_CAUSAL_LM)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: the llama architecture runs the causal-lm task only, not %s", path,
                         peft_task_name(o->task));
    peft_llama *m = NULL;
    int rc;
    if (o->shapes_only) { /* a GGUF's config is its metadata */
        char config[4200];
        if (peft_gguf_is_file(path)) snprintf(config, sizeof config, "%s", path);
        else snprintf(config, sizeof config, "%s/config.json", path);
        rc = llama_load_shapes(config, &m, err);
    } else {
        rc = llama_load_ex(path, o->keep_blocks ? LLAMA_KEEP_BLOCKS : 0, &m, err);
    }
    if (rc == PEFT_OK) *out = &m->base;
    return rc;
}

static const char *const llama_model_types[] = {"llama", "mistral", "qwen2", NULL};
const peft_arch peft_arch_llama = {"llama", llama_model_types, llama_arch_load};
