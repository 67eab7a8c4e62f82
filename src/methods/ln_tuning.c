/* ln_tuning.c: LayerNorm tuning as a model-level method on the model's norm sites
 * (models/model.h, m->norms): each gets a trained copy of its weight (a shared tensor of the set, so it
 * is saved, loaded and optimised like any parameter) and a gradient. */
#include "ln_tuning.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "io/json.h"
#include "models/model.h"

static int ln_attach(const peft_method_opts *o, peft_model *m, peft_err *err) {
    int C = m->info.hidden_size;
    int64_t shape[1] = {C};
    for (int i = 0; i < m->n_norms; i++) {
        peft_norm_site *ns = m->norms[i];
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s.ln_tuning_layers.weight", ns->name);
        float *grad;
        int created;
        float *w = peft_shared_tensor(o->shared, key, 1, shape, 1, 1, &grad, &created);
        if (!w) return peft_fail(err, PEFT_ENOMEM, "LayerNorm tuning: cannot allocate %s", key);
        if (ns->base) memcpy(w, ns->base, (size_t)C * sizeof(float)); /* start from the model's norm */
        ns->weight = w;
        ns->grad = grad;
    }
    return PEFT_OK;
}

static void ln_detach(peft_model *m) {
    for (int i = 0; i < m->n_norms; i++) {
        peft_norm_site *ns = m->norms[i];
        ns->weight = ns->base;
        ns->grad = NULL;
    }
}

static void ln_config_write(const peft_method_opts *o, cJSON *obj) {
    const char *targets[] = {"input_layernorm", "post_attention_layernorm", "norm"};
    cJSON_AddItemToObject(obj, "target_modules", cJSON_CreateStringArray(targets, 3));
}

/* peft.c tunes every norm; a file that names another set of modules is refused. */
static int ln_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(obj, "target_modules"), *e;
    int seen = 0;
    if (!cJSON_IsArray(tm)) return peft_fail(err, PEFT_EFORMAT, "%s: LN_TUNING needs a target_modules list", what);
    cJSON_ArrayForEach(e, tm) {
        const char *v = cJSON_IsString(e) ? e->valuestring : "";
        int bit = !strcmp(v, "input_layernorm") ? 1 : !strcmp(v, "post_attention_layernorm") ? 2 : !strcmp(v, "norm") ? 4 : 0;
        if (!bit) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: LN_TUNING target \"%s\" is not a norm of a Llama-family model", what, v);
        seen |= bit;
    }
    if (seen != 7)
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: peft.c tunes all of input_layernorm, post_attention_layernorm and norm; this file names a subset", what);
    return PEFT_OK;
}

const peft_method peft_method_ln_tuning = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "ln_tuning",
    .peft_type = "LN_TUNING",
    .config_write = ln_config_write,
    .config_read = ln_config_read,
    .attach_model = ln_attach,
    .detach_model = ln_detach,
};
