/* hf_checkpoint.c: config.json reading and checkpoint writing shared by bert.c and vit.c. */
#include "hf_checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fileio.h"
#include "kernels/kernels.h"

int peft_cfg_int(const cJSON *j, const char *key, int required, int dflt, int lo, int hi, int *out, const char *file,
                 peft_err *err) {
    long long v = dflt;
    int rc = peft_json_int(j, key, required, &v, file, err);
    if (rc) return rc;
    if (v < lo || v > hi) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" = %lld is outside [%d, %d]", file, key, v, lo, hi);
    *out = (int)v;
    return PEFT_OK;
}

int peft_cfg_n_labels(const cJSON *j, const peft_model_load_opts *opts, int max, const char *arch, const char *file,
                      int *out, peft_err *err) {
    int NL = 2, rc;
    const cJSON *id2label = cJSON_GetObjectItemCaseSensitive(j, "id2label");
    if (cJSON_IsObject(id2label)) NL = cJSON_GetArraySize(id2label);
    else if ((rc = peft_cfg_int(j, "num_labels", 0, 2, 1, max, &NL, file, err))) return rc;
    if (opts && opts->n_labels) NL = opts->n_labels;
    if (NL == 1)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: 1 label means regression (MSE) in HF, which %s does not do; use >= 2 labels",
                         file, arch);
    if (NL < 2 || NL > max) return peft_fail(err, PEFT_EFORMAT, "%s: %d labels is outside [2, %d]", file, NL, max);
    *out = NL;
    return PEFT_OK;
}

int peft_cfg_encoder(const cJSON *j, const char *file, double *eps, double *init_range, int *gelu_kind, peft_err *err) {
    int rc;
    *init_range = 0.02;
    if ((rc = peft_json_double(j, "layer_norm_eps", 0, eps, file, err))) return rc;
    if ((rc = peft_json_double(j, "initializer_range", 0, init_range, file, err))) return rc;
    if (!(*eps > 0 && *eps < 1)) return peft_fail(err, PEFT_EFORMAT, "%s: \"layer_norm_eps\" = %g is outside (0, 1)", file, *eps);
    if (!(*init_range >= 0 && *init_range < 10))
        return peft_fail(err, PEFT_EFORMAT, "%s: \"initializer_range\" = %g is outside [0, 10)", file, *init_range);
    const char *act = "gelu", *problem = NULL;
    if ((rc = peft_json_string(j, "hidden_act", 0, &act, file, err))) return rc;
    if ((rc = peft_json_string(j, "problem_type", 0, &problem, file, err))) return rc;
    if (!strcmp(act, "gelu")) *gelu_kind = GELU_ERF;
    else if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh")) *gelu_kind = GELU_TANH;
    else return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"hidden_act\" = \"%s\" (supported: gelu, gelu_new, gelu_pytorch_tanh)", file, act);
    if (problem && strcmp(problem, "single_label_classification"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: \"problem_type\" = \"%s\" (supported: single_label_classification)", file, problem);
    return PEFT_OK;
}

/* config.json for the saved model: the loaded one with the class and the labels it now has. */
static int write_config(const char *config_text, const char *hf_class, int n_labels, const char *path, peft_err *err) {
    cJSON *j = cJSON_Parse(config_text);
    if (!j) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "architectures");
    cJSON_AddItemToObject(j, "architectures", cJSON_CreateStringArray((const char *const[]){hf_class}, 1));
    const cJSON *old = cJSON_GetObjectItemCaseSensitive(j, "id2label");
    if (n_labels && (!cJSON_IsObject(old) || cJSON_GetArraySize(old) != n_labels)) {
        cJSON *id2label = cJSON_CreateObject(), *label2id = cJSON_CreateObject();
        for (int i = 0; i < n_labels; i++) {
            char k[32], v[40];
            snprintf(k, sizeof k, "%d", i);
            snprintf(v, sizeof v, "LABEL_%d", i);
            cJSON_AddItemToObject(id2label, k, cJSON_CreateString(v));
            cJSON_AddItemToObject(label2id, v, cJSON_CreateNumber(i));
        }
        cJSON_DeleteItemFromObjectCaseSensitive(j, "id2label");
        cJSON_DeleteItemFromObjectCaseSensitive(j, "label2id");
        cJSON_DeleteItemFromObjectCaseSensitive(j, "num_labels");
        cJSON_AddItemToObject(j, "id2label", id2label);
        cJSON_AddItemToObject(j, "label2id", label2id);
    }
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    int rc = peft_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

int peft_hf_checkpoint_write(const peft_model *m, const char *dir, const char *config_text, int n_labels,
                             const peft_st_entry *tensors, int n, const char *const *side_files, int n_side,
                             peft_err *err) {
    if (peft_same_path(dir, m->dir))
        return peft_fail(err, PEFT_EINVAL, "%s: is the base model's directory; write the model elsewhere", dir);
    static const char *const meta[] = {"format", "pt"};
    char src[4200], dst[4200];
    int rc = peft_mkdir(dir, err);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_write(dst, tensors, n, meta, 1, err);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    if (rc == PEFT_OK) rc = write_config(config_text, m->info.hf_class, n_labels, dst, err);
    for (int i = 0; rc == PEFT_OK && i < n_side; i++) {
        snprintf(src, sizeof src, "%s/%s", m->dir, side_files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, side_files[i]);
        if (peft_file_exists(src)) rc = peft_copy_file(src, dst, err);
    }
    return rc;
}

char *peft_hf_config_copy(const char *config_json, size_t config_len) {
    char *text = malloc(config_len + 1);
    if (!text) return NULL;
    memcpy(text, config_json, config_len);
    text[config_len] = 0;
    return text;
}

int peft_hf_bind_tensor(peft_model *m, peft_param *hp, const char *name, const float *p, size_t n, int ndim,
                        const int64_t *shape, peft_err *err) {
    for (size_t k = 0; p && k < n; k++)
        if (!isfinite(p[k]))
            return peft_fail(err, PEFT_ENUMERIC, "%s: tensor \"%s\" holds a non-finite value at index %zu", m->dir, name, k);
    if (!hp) {
        m->n_params += n;
        return PEFT_OK;
    }
    snprintf(hp->name, sizeof hp->name, "%.63s", name);
    hp->data = (float *)p;
    hp->grad = NULL;
    hp->numel = n;
    hp->ndim = ndim;
    hp->shape[0] = shape[0];
    hp->shape[1] = ndim > 1 ? shape[1] : 0;
    hp->lr_scale = 1.0f;
    return PEFT_OK;
}

void peft_hf_bind_done(peft_model *m, peft_param *head, int n_head) {
    m->n_head = n_head;
    m->head = head;
    for (int i = 0; i < m->n_norms; i++) {
        m->norms[i]->weight = m->norms[i]->base;
        m->norms[i]->bias = m->norms[i]->bias_base;
    }
}

int peft_hf_sites_alloc(peft_model *m, peft_site **site_arr, int n_sites, peft_norm_site **norm_arr, int n_norms) {
    *site_arr = calloc((size_t)n_sites, sizeof **site_arr);
    *norm_arr = calloc((size_t)n_norms, sizeof **norm_arr);
    m->sites = calloc((size_t)n_sites, sizeof *m->sites);
    m->norms = calloc((size_t)n_norms, sizeof *m->norms);
    if (!*site_arr || !*norm_arr || !m->sites || !m->norms) return PEFT_ENOMEM;
    m->n_sites = n_sites;
    m->n_norms = n_norms;
    for (int i = 0; i < n_sites; i++) m->sites[i] = &(*site_arr)[i];
    for (int i = 0; i < n_norms; i++) m->norms[i] = &(*norm_arr)[i];
    return PEFT_OK;
}

void peft_hf_sites_free(peft_model *m, peft_site *site_arr, peft_norm_site *norm_arr) {
    free(site_arr);
    free(norm_arr);
    free(m->sites);
    free(m->norms);
}
