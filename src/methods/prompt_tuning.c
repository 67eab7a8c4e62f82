/* prompt_tuning.c: prompt tuning as a model-level method. The embeddings live in the set's
 * shared tensor "prompt_embeddings" (PEFT's key); the model reads them through
 * peft_model.virt.emb and the model accumulates their gradient into virt.emb_grad. */
#include "prompt_tuning.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "io/json.h"
#include "models/model.h"
#include "rng.h"

#define PROMPT_KEY "prompt_embeddings"

static int prompt_attach(const peft_method_opts *o, peft_model *m, peft_err *err) {
    int C = m->info.hidden_size;
    if (o->n_virtual < 1 || o->n_virtual > 4096)
        return peft_fail(err, PEFT_EINVAL, "prompt tuning: num_virtual_tokens %d must be in [1, 4096]", o->n_virtual);
    if (m->virt.n_virtual) return peft_fail(err, PEFT_EINVAL, "the model already has virtual tokens attached");
    int64_t shape[2] = {o->n_virtual, C};
    float *grad;
    int created;
    float *emb = peft_shared_tensor(o->shared, PROMPT_KEY, 2, shape, 1, 1, &grad, &created);
    if (!emb) return peft_fail(err, PEFT_ENOMEM, "prompt tuning: cannot allocate %d x %d embeddings", o->n_virtual, C);
    if (o->init_rows) {
        memcpy(emb, o->init_rows, (size_t)o->n_virtual * C * sizeof(float));
    } else { /* PEFT's RANDOM init: torch.nn.Embedding's N(0, 1) */
        peft_rng rng;
        peft_rng_seed(&rng, o->seed, 0x70726f6d7074ull);
        for (size_t i = 0; i < (size_t)o->n_virtual * C; i++) emb[i] = peft_rng_normal(&rng);
    }
    m->virt.n_virtual = o->n_virtual;
    m->virt.emb = emb;
    m->virt.emb_grad = grad;
    return PEFT_OK;
}

static void prompt_detach(peft_model *m) {
    m->virt.n_virtual = 0;
    m->virt.emb = NULL;
    m->virt.emb_grad = NULL;
}

static void prompt_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "num_virtual_tokens", o->n_virtual);
    cJSON_AddNumberToObject(obj, "num_transformer_submodules", 1);
    cJSON_AddNumberToObject(obj, "token_dim", o->model_hidden);
    cJSON_AddNumberToObject(obj, "num_layers", o->model_layers);
    if (o->init_text[0]) {
        cJSON_AddStringToObject(obj, "prompt_tuning_init", "TEXT");
        cJSON_AddStringToObject(obj, "prompt_tuning_init_text", o->init_text);
    } else {
        cJSON_AddStringToObject(obj, "prompt_tuning_init", "RANDOM");
        cJSON_AddNullToObject(obj, "prompt_tuning_init_text");
    }
}

static int prompt_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long nv = 0, subs = 1;
    int rc;
    if ((rc = peft_json_int(obj, "num_virtual_tokens", 1, &nv, what, err)) ||
        (rc = peft_json_int(obj, "num_transformer_submodules", 0, &subs, what, err)))
        return rc;
    if (subs != 1)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: num_transformer_submodules %lld (decoder-only models have 1)", what, subs);
    if (nv < 1 || nv > 4096) return peft_fail(err, PEFT_EFORMAT, "%s: num_virtual_tokens %lld is out of range", what, nv);
    o->n_virtual = (int)nv;
    const char *text = NULL;
    if ((rc = peft_json_string(obj, "prompt_tuning_init_text", 0, &text, what, err))) return rc;
    if (text) snprintf(o->init_text, sizeof o->init_text, "%s", text);
    return PEFT_OK;
}

const peft_method peft_method_prompt_tuning = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "prompt_tuning",
    .peft_type = "PROMPT_TUNING",
    .config_write = prompt_config_write,
    .config_read = prompt_config_read,
    .attach_model = prompt_attach,
    .detach_model = prompt_detach,
};
