/* llama_export.c: writing a loaded model as a Hugging Face checkpoint. */
#include "llama_export.h"

#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "fileio.h"
#include "io/safetensors.h"

/* Files a model directory may carry besides the weights; copied as they are. */
static const char *const side_files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json", "tokenizer.model"};

/* 1 if name is module + suffix. */
static int is_tensor_of(const char *name, const char *module, const char *suffix) {
    size_t ml = strlen(module);
    return !strncmp(name, module, ml) && !strcmp(name + ml, suffix);
}

const float *llama_tensor_values(peft_llama *m, const char *name) {
    if (!strcmp(name, "model.embed_tokens.weight")) return m->embed;
    if (!strcmp(name, "lm_head.weight")) return m->cfg.tie_word_embeddings ? NULL : m->lm_head;
    for (int i = 0; i < llama_n_norm_sites(m); i++) {
        const peft_norm_site *ns = llama_norm_site(m, i);
        if (is_tensor_of(name, ns->name, ".weight")) return ns->weight;
    }
    for (int i = 0; i < llama_n_sites(m); i++) {
        const peft_site *s = llama_site(m, i);
        if (is_tensor_of(name, s->name, ".weight")) return s->weight;
        if (is_tensor_of(name, s->name, ".bias")) return s->bias;
    }
    return NULL;
}

int llama_save_hf(peft_llama *m, const char *dir, peft_err *err) {
    const peft_weights *w = m->weights;
    if (!w) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded without weights", m->base.dir);
    if (peft_same_path(dir, m->base.dir))
        return peft_fail(err, PEFT_EINVAL, "%s: is the base model's directory; write the fine-tuned model elsewhere", dir);
    int rc = peft_mkdir(dir, err), total = 0, n = 0;
    for (int f = 0; f < w->n_files; f++) total += w->files[f]->n_tensors;
    peft_st_entry *e = calloc((size_t)total, sizeof *e);
    void **owned = calloc((size_t)total, sizeof *owned);
    if (rc == PEFT_OK && (!e || !owned)) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int f = 0; rc == PEFT_OK && f < w->n_files; f++)
        for (int i = 0; rc == PEFT_OK && i < w->files[f]->n_tensors; i++, n++) {
            const peft_st_tensor *t = &w->files[f]->tensors[i];
            e[n] = (peft_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            memcpy(e[n].shape, t->shape, sizeof t->shape);
            const float *v = llama_tensor_values(m, t->name);
            if (!v || (const void *)v == t->data) continue; /* f32 in the (copy-on-write) mapping: written as it is now */
            if (!(owned[n] = malloc(t->nbytes))) {
                rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
                break;
            }
            peft_convert_from_f32(owned[n], v, t->dtype, t->numel);
            if (memcmp(owned[n], t->data, t->nbytes)) e[n].data = owned[n];
            else free(owned[n]), owned[n] = NULL;
        }
    char src[4200], dst[4200];
    static const char *const meta[] = {"format", "pt"};
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_write(dst, e, n, meta, 1, err);
    for (int i = 0; i < n && owned; i++) free(owned[i]);
    free(owned);
    free(e);
    for (size_t i = 0; rc == PEFT_OK && i < sizeof side_files / sizeof side_files[0]; i++) {
        snprintf(src, sizeof src, "%s/%s", m->base.dir, side_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, side_files[i]);
        if (peft_file_exists(src)) rc = peft_copy_file(src, dst, err);
    }
    return rc;
}
