/* model.c: the architecture-independent part of models/model.h: task names, lookups by HF
 * module name, and the dispatch to an architecture's ops (a NULL op is refused by name). */
#include "model.h"

#include <stdlib.h>
#include <string.h>

static const char *const task_names[] = {"causal-lm", "seq-cls", "image-cls"};

const char *peft_task_name(peft_task t) {
    return (unsigned)t < sizeof task_names / sizeof task_names[0] ? task_names[t] : "unknown";
}

int peft_task_parse(const char *s) {
    for (int i = 0; s && i < (int)(sizeof task_names / sizeof task_names[0]); i++)
        if (!strcmp(s, task_names[i])) return i;
    return -1;
}

peft_site *peft_model_find_site(peft_model *m, const char *name) {
    for (int i = 0; i < m->n_sites; i++)
        if (!strcmp(m->sites[i]->name, name)) return m->sites[i];
    return NULL;
}

peft_norm_site *peft_model_find_norm(peft_model *m, const char *name) {
    for (int i = 0; i < m->n_norms; i++)
        if (!strcmp(m->norms[i]->name, name)) return m->norms[i];
    return NULL;
}

int peft_model_n_outputs(const peft_model *m) {
    return m->info.task == PEFT_TASK_CAUSAL_LM ? m->info.vocab_size : m->info.n_labels;
}

void peft_model_free(peft_model *m) {
    if (m) m->ops->free(m);
}

/* The refusal of an op the architecture does not have. */
static int missing(const peft_model *m, const char *what, peft_err *err) {
    return peft_fail(err, PEFT_EUNSUPPORTED, "%s: the %s architecture has no %s", m->info.file ? m->info.file : m->dir,
                     m->info.arch, what);
}

int peft_model_acts_alloc(peft_model *m, int B, int T, int save_all, int training, peft_acts **out, peft_err *err) {
    *out = NULL;
    if (!m->ops->acts_alloc) return missing(m, "forward pass", err);
    return m->ops->acts_alloc(m, B, T, save_all, training, out, err);
}

void peft_model_acts_free(peft_model *m, peft_acts *a) {
    if (a) m->ops->acts_free(a);
}

int peft_model_forward(peft_model *m, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err) {
    if (!m->ops->forward) return missing(m, "forward pass", err);
    return m->ops->forward(m, a, b, loss, n_counted, err);
}

const float *peft_model_outputs(const peft_model *m, const peft_acts *a) {
    return m->ops->outputs ? m->ops->outputs(a) : NULL;
}

int peft_model_backward(peft_model *m, peft_acts *a, const peft_batch *b, int n_counted) {
    return m->ops->backward ? m->ops->backward(m, a, b, n_counted) : PEFT_EUNSUPPORTED;
}

int peft_model_kv_alloc(peft_model *m, int capacity, int chunk, peft_kv **out, peft_err *err) {
    *out = NULL;
    if (!m->ops->kv_alloc) return missing(m, "KV-cache decoding", err);
    return m->ops->kv_alloc(m, capacity, chunk, out, err);
}

void peft_model_kv_free(peft_model *m, peft_kv *kv) {
    if (kv) m->ops->kv_free(kv);
}

int peft_model_kv_len(const peft_model *m, const peft_kv *kv) { return m->ops->kv_len ? m->ops->kv_len(kv) : 0; }

int peft_model_decode(peft_model *m, peft_kv *kv, const int32_t *ids, int n, float *logits, peft_err *err) {
    if (!m->ops->decode) return missing(m, "KV-cache decoding", err);
    return m->ops->decode(m, kv, ids, n, logits, err);
}

int peft_model_decode_batch(peft_model *m, peft_kv *const *kv, const int32_t *ids, int n_seq, float *logits, peft_err *err) {
    if (!m->ops->decode_batch) return missing(m, "batched KV-cache decoding", err);
    return m->ops->decode_batch(m, kv, ids, n_seq, logits, err);
}

int peft_model_save_hf(peft_model *m, const char *dir, peft_err *err) {
    if (!m->ops->save_hf) return missing(m, "writer of HF checkpoints", err);
    return m->ops->save_hf(m, dir, err);
}

int peft_model_use_half(peft_model *m, const struct peft_half_matmul *fmt, int training, peft_err *err) {
    if (!m->ops->use_half) return missing(m, "16-bit matmuls", err);
    return m->ops->use_half(m, fmt, training, err);
}

int peft_model_quantize(peft_model *m, const struct peft_qformat *fmt, peft_err *err) {
    if (!m->ops->quantize) return missing(m, "quantized weights", err);
    return m->ops->quantize(m, fmt, err);
}

int peft_model_dequantize_sites(peft_model *m, peft_site *const *sites, int n, peft_err *err) {
    if (!m->ops->dequantize_sites) return m->n_kept_blocks ? missing(m, "dequantization of block-form weights", err) : PEFT_OK;
    return m->ops->dequantize_sites(m, sites, n, err);
}

const float *peft_model_tensor(peft_model *m, const char *name, int64_t *shape, int *ndim) {
    if (ndim) *ndim = 0;
    return m->ops->tensor ? m->ops->tensor(m, name, shape, ndim) : NULL;
}
