/* prefix_tuning.c: prefix tuning as a model-level method. The prefix lives in the set's
 * shared tensor "prompt_embeddings" (PEFT's key and layout); the model writes it into the
 * first n_virtual rows of k and v in every layer (peft_model.virt.prefix_kv) and accumulates its
 * gradient (prefix_grad). Positions of the real tokens start at n_virtual, as HF's do after a
 * prefix cache. */
#include "prefix_tuning.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "io/json.h"
#include "models/model.h"
#include "rng.h"

static int prefix_attach(const peft_method_opts *o, peft_model *m, peft_err *err) {
    int KD = m->info.n_kv_heads * m->info.head_dim;
    if (o->n_virtual < 1 || o->n_virtual > 4096)
        return peft_fail(err, PEFT_EINVAL, "prefix tuning: num_virtual_tokens %d must be in [1, 4096]", o->n_virtual);
    if (m->virt.n_virtual) return peft_fail(err, PEFT_EINVAL, "the model already has virtual tokens attached");
    int64_t shape[2] = {o->n_virtual, (int64_t)m->info.n_layers * 2 * KD};
    float *grad;
    int created;
    float *kv = peft_shared_tensor(o->shared, "prompt_embeddings", 2, shape, 1, 1, &grad, &created);
    if (!kv) return peft_fail(err, PEFT_ENOMEM, "prefix tuning: cannot allocate the prefix");
    peft_rng rng; /* PEFT's PrefixEncoder without projection: torch.nn.Embedding's N(0, 1) */
    peft_rng_seed(&rng, o->seed, 0x707265666978ull);
    for (size_t i = 0; i < (size_t)shape[0] * shape[1]; i++) kv[i] = peft_rng_normal(&rng);
    m->virt.n_virtual = o->n_virtual;
    m->virt.prefix_kv = kv;
    m->virt.prefix_grad = grad;
    return PEFT_OK;
}

static void prefix_detach(peft_model *m) {
    m->virt.n_virtual = 0;
    m->virt.prefix_kv = NULL;
    m->virt.prefix_grad = NULL;
}

static void prefix_config_write(const peft_method_opts *o, cJSON *obj) {
    int token_dim = o->model_kv_heads * o->model_head_dim;
    cJSON_AddNumberToObject(obj, "num_virtual_tokens", o->n_virtual);
    cJSON_AddNumberToObject(obj, "num_transformer_submodules", 1);
    cJSON_AddNumberToObject(obj, "num_layers", o->model_layers);
    cJSON_AddNumberToObject(obj, "num_attention_heads", o->model_kv_heads);
    cJSON_AddNumberToObject(obj, "token_dim", token_dim);
    cJSON_AddNumberToObject(obj, "encoder_hidden_size", token_dim);
    cJSON_AddBoolToObject(obj, "prefix_projection", 0);
}

static int prefix_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long nv = 0;
    int projection = 0, rc;
    if ((rc = peft_json_int(obj, "num_virtual_tokens", 1, &nv, what, err)) ||
        (rc = peft_json_bool(obj, "prefix_projection", 0, &projection, what, err)))
        return rc;
    if (projection) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: prefix_projection (an MLP prefix encoder) is not supported", what);
    if (nv < 1 || nv > 4096) return peft_fail(err, PEFT_EFORMAT, "%s: num_virtual_tokens %lld is out of range", what, nv);
    o->n_virtual = (int)nv;
    return PEFT_OK; /* the prefix's shape is checked against the model when the tensor is read */
}

const peft_method peft_method_prefix_tuning = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "prefix_tuning",
    .peft_type = "PREFIX_TUNING",
    .config_write = prefix_config_write,
    .config_read = prefix_config_read,
    .attach_model = prefix_attach,
    .detach_model = prefix_detach,
};
