/* adapter_set.c: attaching, saving and loading a model's adapters in HF PEFT's format. */
#include "adapter_set.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "kernels/quant.h"
#include "methods/lora.h"
#include "methods/pissa.h"

#define MAX_PARAMS_PER_ADAPTER 8

typedef struct shared_tensor {
    char key[256];
    float *data, *grad;
    size_t numel;
    int ndim;
    int64_t shape[PEFT_PARAM_MAX_DIMS];
    int trainable, saved;
} shared_tensor;

struct peft_shared {
    int n;
    shared_tensor t[64];
};

float *peft_shared_tensor(peft_shared *sh, const char *key, int ndim, const int64_t *shape, int trainable, int saved,
                          float **grad, int *created) {
    *created = 0;
    for (int i = 0; i < sh->n; i++)
        if (!strcmp(sh->t[i].key, key)) {
            int same = sh->t[i].ndim == ndim;
            for (int d = 0; same && d < ndim; d++) same = sh->t[i].shape[d] == shape[d];
            if (!same) return NULL;
            if (grad) *grad = sh->t[i].grad;
            return sh->t[i].data;
        }
    if (sh->n == (int)(sizeof sh->t / sizeof sh->t[0]) || ndim > PEFT_PARAM_MAX_DIMS) return NULL;
    shared_tensor *t = &sh->t[sh->n];
    memset(t, 0, sizeof *t);
    snprintf(t->key, sizeof t->key, "%s", key);
    t->numel = 1;
    for (int d = 0; d < ndim; d++) t->numel *= (size_t)(t->shape[d] = shape[d]);
    t->ndim = ndim;
    t->trainable = trainable;
    t->saved = saved;
    t->data = calloc(t->numel * (trainable ? 2 : 1), sizeof(float));
    if (!t->data) return NULL;
    if (trainable) t->grad = t->data + t->numel;
    if (grad) *grad = t->grad;
    sh->n++;
    *created = 1;
    return t->data;
}

static void shared_free(peft_shared *sh) {
    for (int i = 0; i < sh->n; i++) free(sh->t[i].data);
    sh->n = 0;
}

struct peft_adapter_set {
    peft_adapter_config cfg;
    peft_shared shared;
    const peft_method *method;
    peft_model *model;        /* for model-level methods' detach */
    int n_sites;
    peft_site **sites;        /* the sites that carry this set's adapters */
    int n_params;
    peft_named_param *params;
    int n_state;
    peft_named_param *state;  /* methods with state() (LISA): what checkpoints carry besides params */
    int lists_new;            /* begin_step methods: the lists are new to the caller (until its first begin_step) */
    int n_head;               /* the model's task head tensors, the last n_head params (PEFT's modules_to_save) */
    peft_param *head;         /* [n_head] the model's (m->head) */
    float *head_grad;         /* their gradients, owned by the set while it lives */
    float *work;
    size_t work_floats;
    int work_rows;
};

void peft_adapter_config_default(peft_adapter_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->method, "lora");
    strcpy(cfg->target_modules, "q_proj,v_proj");
    cfg->opts.rank = 8;
    cfg->opts.alpha = 8;
    cfg->opts.lisa_gamma = 2;     /* LMFlow's lisa_activated_layers */
    cfg->opts.lisa_interval = 20; /* LMFlow's lisa_interval_steps */
}

/* ---- target selection (PEFT's check_target_module_exists and get_pattern_key) ---- */

/* 1 if the regex matches all of subject, 0 if not, negative on a bad pattern. */
static int regex_match(const char *pattern, const char *subject, int whole, peft_err *err) {
    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &errcode, &erroff, NULL);
    if (!re) return peft_fail(err, PEFT_EINVAL, "bad regular expression \"%s\" at offset %zu", pattern, (size_t)erroff);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)subject, PCRE2_ZERO_TERMINATED, 0, PCRE2_ANCHORED | (whole ? PCRE2_ENDANCHORED : 0),
                              md, NULL)
                : PCRE2_ERROR_NOMEMORY;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) return peft_fail(err, PEFT_ENOMEM, "regular expression \"%s\" failed to run", pattern);
    return 1;
}

/* PEFT: a list entry t matches module name `key` if key == t or key ends with "." + t. */
static int name_matches(const char *key, const char *target, size_t tlen) {
    size_t klen = strlen(key);
    if (klen == tlen) return !strncmp(key, target, tlen);
    return klen > tlen && key[klen - tlen - 1] == '.' && !strncmp(key + klen - tlen, target, tlen);
}

static int site_is_target(const peft_adapter_config *cfg, const peft_site *s, peft_err *err) {
    if (cfg->n_layers_to_transform > 0) {
        int in = 0;
        for (int i = 0; i < cfg->n_layers_to_transform; i++) in |= cfg->layers_to_transform[i] == s->layer;
        if (!in) return 0;
    }
    if (cfg->target_regex) return regex_match(cfg->target_modules, s->name, 1, err);
    if (!strcmp(cfg->target_modules, "all-linear")) return 1; /* every linear site except lm_head */
    for (const char *t = cfg->target_modules; *t;) {
        size_t len = strcspn(t, ",");
        if (len && name_matches(s->name, t, len)) return 1;
        t += len + (t[len] == ',');
    }
    return 0;
}

/* rank_pattern / alpha_pattern: the first key k with re.match("(.*\.)?(k)$", name) wins. */
static int pattern_value(const peft_pattern *pats, int n, const char *name, double *value, peft_err *err) {
    for (int i = 0; i < n; i++) {
        char re[300];
        snprintf(re, sizeof re, "(.*\\.)?(%s)$", pats[i].key);
        int m = regex_match(re, name, 0, err);
        if (m < 0) return m;
        if (m) {
            *value = pats[i].value;
            return PEFT_OK;
        }
    }
    return PEFT_OK;
}

/* PEFT 0.21's IA3Config has no bias, layers_to_transform or layers_pattern fields (its
 * from_pretrained warns about them as unexpected and ignores them); every other config of a site
 * method has them. */
static int layers_in_config(const peft_method *method) { return strcmp(method->peft_type, "IA3") != 0; }

/* ---- creation ---------------------------------------------------------------- */

/* The list of `which` tensors of every adapter (params() or state()) with full keys into out;
 * returns their number. */
static int site_tensors(peft_adapter_set *set, int (*which)(peft_adapter *, peft_param *, int), peft_named_param *out) {
    int n = 0;
    for (int i = 0; i < set->n_sites; i++) {
        peft_site *s = set->sites[i];
        peft_param p[MAX_PARAMS_PER_ADAPTER];
        int np = which(s->adapter, p, MAX_PARAMS_PER_ADAPTER);
        for (int k = 0; k < np; k++, n++) {
            snprintf(out[n].key, sizeof out[n].key, "base_model.model.%.127s.%.63s", s->name, p[k].name);
            out[n].p = p[k];
        }
    }
    return n;
}

/* The set's parameters (each adapter's in site order, then the trainable shared tensors) and
 * checkpoint state, as they are now. */
static void collect_tensors(peft_adapter_set *set) {
    set->n_params = site_tensors(set, set->method->params, set->params);
    for (int i = 0; i < set->shared.n; i++) {
        shared_tensor *t = &set->shared.t[i];
        if (!t->trainable) continue;
        peft_named_param *np_ = &set->params[set->n_params++];
        snprintf(np_->key, sizeof np_->key, "%s", t->key);
        np_->p = (peft_param){.data = t->data, .grad = t->grad, .numel = t->numel, .ndim = t->ndim, .lr_scale = 1.0f};
        memcpy(np_->p.shape, t->shape, sizeof t->shape);
        snprintf(np_->p.name, sizeof np_->p.name, "%.63s", strrchr(t->key, '.') ? strrchr(t->key, '.') + 1 : t->key);
    }
    for (int i = 0; i < set->n_head; i++) { /* the task head, trained in full, saved under PEFT's key */
        const peft_param *h = &set->head[i];
        peft_named_param *np_ = &set->params[set->n_params++];
        snprintf(np_->key, sizeof np_->key, "base_model.model.%.63s", h->name);
        np_->p = *h;
    }
    if (set->state) set->n_state = site_tensors(set, set->method->state, set->state);
}

/* Gives the model's task head gradients (the model's backward accumulates into them). */
static int attach_head(peft_adapter_set *set, peft_model *m, peft_err *err) {
    if (!m->n_head) return PEFT_OK;
    size_t total = 0;
    for (int i = 0; i < m->n_head; i++) total += m->head[i].numel;
    if (!(set->head_grad = calloc(total ? total : 1, sizeof(float))))
        return peft_fail(err, PEFT_ENOMEM, "out of memory for the task head's gradients");
    float *g = set->head_grad;
    for (int i = 0; i < m->n_head; i++) {
        m->head[i].grad = g;
        g += m->head[i].numel;
    }
    set->n_head = m->n_head;
    set->head = m->head;
    return PEFT_OK;
}

int peft_adapter_set_begin_step(peft_adapter_set *set, long step, peft_err *err) {
    if (!set->method->begin_step) return 0;
    int changed = set->lists_new;
    set->lists_new = 0;
    for (int i = 0; i < set->n_sites; i++) {
        int rc = set->method->begin_step(set->sites[i]->adapter, set->sites[i], step, err);
        if (rc < 0) return rc;
        changed |= rc;
    }
    if (changed) collect_tensors(set);
    return changed;
}

int peft_adapter_set_targets(peft_model *m, const peft_adapter_config *cfg, peft_site **sites, int *n, peft_err *err) {
    *n = 0;
    for (int i = 0; i < m->n_sites; i++) {
        peft_site *s = m->sites[i];
        int hit = site_is_target(cfg, s, err);
        if (hit < 0) return hit;
        if (hit) sites[(*n)++] = s;
    }
    return PEFT_OK;
}

void peft_adapter_set_free(peft_adapter_set *set) {
    if (!set) return;
    if (set->method && set->method->detach_model && set->model) set->method->detach_model(set->model);
    for (int i = 0; i < set->n_sites; i++) {
        peft_site *s = set->sites[i];
        if (s->adapter) s->adapter->method->destroy(s->adapter);
        s->adapter = NULL;
    }
    for (int i = 0; i < set->n_head; i++) set->head[i].grad = NULL;
    free(set->head_grad);
    free(set->sites);
    free(set->params);
    free(set->state);
    free(set->work);
    shared_free(&set->shared);
    free(set);
}

int peft_adapter_set_reserve(peft_adapter_set *set, int N, peft_err *err) {
    if (!set || N <= set->work_rows) return PEFT_OK;
    size_t need = 0;
    for (int i = 0; i < set->n_sites; i++) {
        size_t w = set->method->work_floats(set->sites[i]->adapter, set->sites[i], N);
        if (w > need) need = w;
    }
    float *work = realloc(set->work, need * sizeof(float));
    if (!work && need) return peft_fail(err, PEFT_ENOMEM, "cannot allocate %zu MB of adapter scratch", need * 4 >> 20);
    set->work = work;
    set->work_floats = need;
    set->work_rows = N;
    for (int i = 0; i < set->n_sites; i++) set->sites[i]->adapter->work = work;
    return PEFT_OK;
}

/* The distinct kinds of m's sites in model order ("q_proj, k_proj, ..."), for messages. */
static void site_kinds(const peft_model *m, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < m->n_sites && n < cap; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = !strcmp(m->sites[j]->kind, m->sites[i]->kind);
        if (!seen) n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", m->sites[i]->kind);
    }
}

int peft_adapter_set_create(peft_model *m, const peft_adapter_config *cfg, int max_rows, peft_adapter_set **out,
                            peft_err *err) {
    *out = NULL;
    const peft_method *method = peft_method_find(cfg->method);
    if (!method) {
        char names[512] = "";
        for (int i = 0; peft_methods[i]; i++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", peft_methods[i]->name);
        return peft_fail(err, PEFT_EUNSUPPORTED, "unknown PEFT method \"%s\" (available: %s)", cfg->method, names);
    }
    peft_adapter_set *set = calloc(1, sizeof *set);
    int n_all = m->n_sites;
    if (!set || !(set->sites = calloc((size_t)n_all, sizeof *set->sites)) ||
        !(set->params = calloc((size_t)n_all * MAX_PARAMS_PER_ADAPTER + 16 + (size_t)m->n_head, sizeof *set->params)) ||
        (method->state && !(set->state = calloc((size_t)n_all * MAX_PARAMS_PER_ADAPTER, sizeof *set->state)))) {
        peft_adapter_set_free(set);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    set->cfg = *cfg;
    set->method = method;
    set->model = m;
    int rc = attach_head(set, m, err), max_in = 0, max_out = 0;
    if (rc) {
        peft_adapter_set_free(set);
        return rc;
    }
    if (method->attach_model) { /* a model-level method: no sites */
        set->cfg.opts.model_hidden = m->info.hidden_size;
        set->cfg.opts.model_layers = m->info.n_layers;
        set->cfg.opts.model_kv_heads = m->info.n_kv_heads;
        set->cfg.opts.model_head_dim = m->info.head_dim;
        peft_method_opts o = set->cfg.opts;
        o.shared = &set->shared;
        if ((rc = method->attach_model(&o, m, err))) {
            set->model = NULL;
            peft_adapter_set_free(set);
            return rc;
        }
        n_all = 0;
    }
    /* First the targets (methods with shared tensors size them by the largest site). */
    int n_targets = 0;
    if (n_all > 0) rc = peft_adapter_set_targets(m, cfg, set->sites, &n_targets, err);
    for (int i = 0; i < n_targets; i++) {
        if (set->sites[i]->in_features > max_in) max_in = set->sites[i]->in_features;
        if (set->sites[i]->out_features > max_out) max_out = set->sites[i]->out_features;
    }
    for (int i = 0; i < n_targets && rc == PEFT_OK; i++) {
        peft_site *s = set->sites[i];
        if (s->adapter) {
            rc = peft_fail(err, PEFT_EINVAL, "%s already carries an adapter", s->name);
            break;
        }
        peft_method_opts o = cfg->opts;
        o.shared = &set->shared;
        o.max_in = max_in;
        o.max_out = max_out;
        o.model = m;
        double rank = o.rank, alpha = o.alpha;
        if ((rc = pattern_value(cfg->rank_pattern, cfg->n_rank_pattern, s->name, &rank, err)) ||
            (rc = pattern_value(cfg->alpha_pattern, cfg->n_alpha_pattern, s->name, &alpha, err)))
            break;
        if (!(rank >= 1 && rank <= 65536)) { /* patterns can come from anywhere: check before the cast */
            rc = peft_fail(err, PEFT_EINVAL, "%s: rank %g is out of range [1, 65536]", s->name, rank);
            break;
        }
        o.rank = (int)rank;
        o.alpha = alpha;
        if ((rc = method->create(&o, s, max_rows, &s->adapter, err))) break;
        set->sites[set->n_sites++] = s;
    }
    int first = rc == PEFT_OK ? peft_adapter_set_begin_step(set, 0, err) : rc; /* LISA: the first period's layers */
    if (first < 0) rc = first;
    else collect_tensors(set);
    set->lists_new = method->begin_step != NULL;
    if (rc == PEFT_OK && set->n_sites == 0 && !method->attach_model && cfg->target_regex)
        rc = peft_fail(err, PEFT_EINVAL, "the target regex \"%s\" matches no module of %s: it must match the FULL module name, "
                                         "such as \"%s\" (e.g. \".*\\.q_proj\")",
                       cfg->target_modules, m->info.hf_class, m->n_sites ? m->sites[0]->name : "");
    else if (rc == PEFT_OK && set->n_sites == 0 && !method->attach_model) {
        char kinds[512];
        site_kinds(m, kinds, sizeof kinds);
        rc = peft_fail(err, PEFT_EINVAL, "target modules \"%s\" match no linear layer of %s (its layers have %s)",
                       cfg->target_modules, m->info.hf_class, kinds);
    }
    if (rc == PEFT_OK && cfg->n_layers_to_transform > 0 && !layers_in_config(method))
        rc = peft_fail(err, PEFT_EUNSUPPORTED, "%s adapters cannot be restricted to layers: PEFT's %s config has no layers_to_transform",
                       method->name, method->peft_type);
    if (rc == PEFT_OK && cfg->save_as_lora && pissa_lora_equivalent(set->sites[0]->adapter, NULL, NULL) < 0)
        rc = peft_fail(err, PEFT_EINVAL, "saving as a LoRA of the original model is for PiSSA and CorDA adapters, not %s", method->name);
    if (rc == PEFT_OK && cfg->save_as_lora && cfg->opts.use_rslora && (cfg->n_rank_pattern || cfg->n_alpha_pattern))
        rc = peft_fail(err, PEFT_EINVAL, "saving as a LoRA of the original model is not supported with rsLoRA and rank or alpha "
                                         "patterns together (PEFT refuses it too: doubled patterns would change the scale)");
    set->cfg.opts.corda_covs = NULL; /* borrowed for create only */
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(set, max_rows > 0 ? max_rows : 1, err);
    if (rc) {
        peft_adapter_set_free(set);
        return rc;
    }
    *out = set;
    return PEFT_OK;
}

void peft_adapter_set_mode(peft_adapter_set *set, int training, uint64_t step_seed) {
    for (int i = 0; i < set->n_sites; i++) {
        set->sites[i]->adapter->training = training;
        set->sites[i]->adapter->step_seed = step_seed;
    }
}

int peft_adapter_set_merge(peft_adapter_set *set, int sign, peft_err *err) {
    if (!set->method->merge)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s adapters cannot be merged into the base weights", set->method->name);
    for (int i = 0; i < set->n_sites; i++) {
        peft_site *s = set->sites[i];
        if (s->w_half) return peft_fail(err, PEFT_EINVAL, "%s: merge before switching the model to 16-bit compute", s->name);
        if (s->w_q)
            return peft_fail(err, PEFT_EINVAL, "%s: the base weight is quantized (%s): merge into the unquantized model instead",
                             s->name, s->qfmt->name);
        if (!s->weight) return peft_fail(err, PEFT_EINVAL, "%s: the model was loaded without weights", s->name);
        int rc = set->method->merge(s->adapter, s, sign, err);
        if (rc) return rc;
    }
    return PEFT_OK;
}

int peft_adapter_set_n_params(const peft_adapter_set *set) { return set->n_params; }
peft_named_param *peft_adapter_set_params(peft_adapter_set *set) { return set->params; }
int peft_adapter_set_n_state(const peft_adapter_set *set) { return set->n_state; }
peft_named_param *peft_adapter_set_state(peft_adapter_set *set) { return set->state; }

int peft_adapter_set_active_layers(const peft_adapter_set *set, int *layers, int max) {
    int n = 0, last = -1;
    for (int i = 0; i < set->n_sites; i++) { /* sites are in model order: layers ascend */
        peft_site *s = set->sites[i];
        peft_param p[MAX_PARAMS_PER_ADAPTER];
        if (s->layer < 0 || s->layer == last || set->method->params(s->adapter, p, MAX_PARAMS_PER_ADAPTER) == 0) continue;
        if (n < max) layers[n] = s->layer;
        n++;
        last = s->layer;
    }
    return n;
}
int peft_adapter_set_n_sites(const peft_adapter_set *set) { return set->n_sites; }
const peft_adapter_config *peft_adapter_set_config(const peft_adapter_set *set) { return &set->cfg; }

size_t peft_adapter_set_numel(const peft_adapter_set *set) {
    size_t n = 0;
    for (int i = 0; i < set->n_params; i++) n += set->params[i].p.numel;
    return n;
}

void peft_adapter_set_zero_grad(peft_adapter_set *set) {
    for (int i = 0; i < set->n_params; i++) memset(set->params[i].p.grad, 0, set->params[i].p.numel * sizeof(float));
}

/* ---- PEFT files ------------------------------------------------------------------ */

static cJSON *patterns_json(const peft_pattern *p, int n) {
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; i < n; i++) cJSON_AddNumberToObject(o, p[i].key, p[i].value);
    return o;
}

/* The target list as PEFT writes it: the distinct module kinds that carry adapters (PEFT
 * resolves "all-linear" to names the same way), or the regex string. */
static cJSON *targets_json(const peft_adapter_set *set) {
    if (set->cfg.target_regex) return cJSON_CreateString(set->cfg.target_modules);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < set->n_sites; i++) {
        const char *kind = set->sites[i]->kind;
        int seen = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) seen |= !strcmp(e->valuestring, kind);
        if (!seen) cJSON_AddItemToArray(arr, cJSON_CreateString(kind));
    }
    return arr;
}

/* PEFT's task_type of the model's task; image classification has none in PEFT (null). */
static cJSON *task_type_json(const peft_adapter_set *set) {
    switch (set->model->info.task) {
    case PEFT_TASK_CAUSAL_LM: return cJSON_CreateString("CAUSAL_LM");
    case PEFT_TASK_SEQ_CLS: return cJSON_CreateString("SEQ_CLS");
    default: return cJSON_CreateNull();
    }
}

/* modules_to_save as peft 0.21 writes it: null without a task head; for SEQ_CLS the
 * ["classifier", "score"] PeftModelForSequenceClassification adds; then each head module not
 * covered yet (an entry covers itself and its submodules), e.g. ["classifier"] for a ViT. */
/* PEFT's fan_in_fan_out: the targeted HF modules store [in, out] (GPT-2's Conv1D). */
static int targets_conv1d(const peft_adapter_set *set) {
    for (int i = 0; i < set->n_sites; i++)
        if (set->sites[i]->fan_in_fan_out) return 1;
    return 0;
}

static cJSON *modules_to_save_json(const peft_adapter_set *set) {
    if (!set->n_head) return cJSON_CreateNull();
    cJSON *arr = cJSON_CreateArray();
    if (set->model->info.task == PEFT_TASK_SEQ_CLS) {
        cJSON_AddItemToArray(arr, cJSON_CreateString("classifier"));
        cJSON_AddItemToArray(arr, cJSON_CreateString("score"));
    }
    for (int i = 0; i < set->n_head; i++) {
        char module[64];
        snprintf(module, sizeof module, "%s", set->head[i].name);
        char *dot = strrchr(module, '.'); /* "classifier.weight" -> "classifier" */
        if (dot) *dot = '\0';
        int covered = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, arr) {
            size_t len = strlen(e->valuestring);
            covered |= !strncmp(module, e->valuestring, len) && (module[len] == '\0' || module[len] == '.');
        }
        if (!covered) cJSON_AddItemToArray(arr, cJSON_CreateString(module));
    }
    return arr;
}

/* adapter_config.json: the fields every PEFT config has, then the method's own (the set's
 * method and config, or those it is saved as). */
static char *config_json(const peft_adapter_set *set, const peft_method *method, const peft_adapter_config *c) {
    cJSON *o = cJSON_CreateObject();
    if (method->attach_model) { /* PEFT's prompt-learning configs have no targets */
        cJSON_AddNullToObject(o, "auto_mapping");
        cJSON_AddStringToObject(o, "base_model_name_or_path", c->base_model);
        cJSON_AddBoolToObject(o, "inference_mode", 1);
        cJSON_AddItemToObject(o, "modules_to_save", modules_to_save_json(set));
        cJSON_AddStringToObject(o, "peft_type", method->peft_type);
        cJSON_AddNullToObject(o, "revision");
        cJSON_AddItemToObject(o, "task_type", task_type_json(set));
        method->config_write(&c->opts, o);
        char *text = cJSON_Print(o);
        cJSON_Delete(o);
        return text;
    }
    int lora_family = !strcmp(method->peft_type, "LORA"); /* only LoraConfig has the patterns */
    int has_layers = layers_in_config(method);
    if (lora_family) cJSON_AddItemToObject(o, "alpha_pattern", patterns_json(c->alpha_pattern, c->n_alpha_pattern));
    cJSON_AddNullToObject(o, "auto_mapping");
    cJSON_AddStringToObject(o, "base_model_name_or_path", c->base_model);
    if (has_layers) cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddBoolToObject(o, "fan_in_fan_out", targets_conv1d(set));
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    if (has_layers) cJSON_AddNullToObject(o, "layers_pattern");
    if (has_layers && c->n_layers_to_transform > 0)
        cJSON_AddItemToObject(o, "layers_to_transform", cJSON_CreateIntArray(c->layers_to_transform, c->n_layers_to_transform));
    else if (has_layers) cJSON_AddNullToObject(o, "layers_to_transform");
    cJSON_AddItemToObject(o, "modules_to_save", modules_to_save_json(set));
    cJSON_AddStringToObject(o, "peft_type", method->peft_type);
    if (lora_family) cJSON_AddItemToObject(o, "rank_pattern", patterns_json(c->rank_pattern, c->n_rank_pattern));
    cJSON_AddNullToObject(o, "revision");
    cJSON_AddItemToObject(o, "target_modules", targets_json(set));
    cJSON_AddItemToObject(o, "task_type", task_type_json(set));
    method->config_write(&c->opts, o);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

/* PEFT's save_pretrained(path_initial_model_for_weight_conversion=...) of a PiSSA/CorDA set:
 * per site A2 = [A; A0] [2r, in], B2 = [B, -B0] [out, 2r] (pissa_lora_equivalent), and a plain
 * LoRA config with r, lora_alpha (alpha * sqrt(2) with rsLoRA), rank_pattern and alpha_pattern
 * doubled and init_lora_weights true. Fills e[] (names in keys[], data in *slab, both freed by
 * the caller) and *cfg. */
static int lora_equivalent(const peft_adapter_set *set, peft_st_entry *e, char (*keys)[256], float **slab, peft_adapter_config *cfg,
                           peft_err *err) {
    size_t total = 0;
    for (int i = 0; i < set->n_sites; i++) {
        const peft_site *s = set->sites[i];
        total += 2 * (size_t)pissa_lora_equivalent(s->adapter, NULL, NULL) * ((size_t)s->in_features + s->out_features);
    }
    float *p = *slab = malloc(total * sizeof(float));
    if (!p) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < set->n_sites; i++) {
        const peft_site *s = set->sites[i];
        int r2 = 2 * pissa_lora_equivalent(s->adapter, NULL, NULL);
        pissa_lora_equivalent(s->adapter, p, p + (size_t)r2 * s->in_features); /* A2 [2r, in], then B2 [out, 2r] */
        const int64_t shapes[2][2] = {{r2, s->in_features}, {s->out_features, r2}};
        for (int k = 0; k < 2; k++) {
            snprintf(keys[2 * i + k], sizeof keys[0], "base_model.model.%.127s.lora_%c.weight", s->name, k ? 'B' : 'A');
            e[2 * i + k] = (peft_st_entry){.name = keys[2 * i + k], .dtype = PEFT_F32, .ndim = 2, .shape = {shapes[k][0], shapes[k][1]},
                                           .data = p};
            p += (size_t)shapes[k][0] * shapes[k][1];
        }
    }
    *cfg = set->cfg;
    snprintf(cfg->method, sizeof cfg->method, "lora");
    cfg->opts.rank *= 2;
    cfg->opts.alpha *= cfg->opts.use_rslora ? sqrt(2.0) : 2.0;
    cfg->opts.init_gaussian = 0; /* init_lora_weights: true */
    for (int i = 0; i < cfg->n_rank_pattern; i++) cfg->rank_pattern[i].value *= 2;
    for (int i = 0; i < cfg->n_alpha_pattern; i++) cfg->alpha_pattern[i].value *= 2;
    return PEFT_OK;
}

int peft_adapter_set_save(const peft_adapter_set *set, const char *dir, peft_err *err) {
    if (set->method->trains_base) return peft_model_save_hf(set->model, dir, err); /* LISA: the model is the output */
    /* Both files are written into a staged copy of dir that then replaces dir in one rename:
     * a reader (or a kill) never sees a config of one save with the tensors of another. */
    peft_dir_stage st;
    int rc = peft_dir_stage_begin(&st, dir, err);
    if (rc) return rc;
    int as_lora = set->cfg.save_as_lora;
    peft_st_entry *e = calloc((size_t)set->n_params + (size_t)set->shared.n + 1, sizeof *e);
    char(*keys)[256] = as_lora ? calloc((size_t)set->n_sites * 2, sizeof *keys) : NULL;
    if (!e || (as_lora && !keys)) {
        free(e), free(keys);
        peft_dir_stage_abort(&st);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    peft_adapter_config saved = set->cfg;
    const peft_method *method = set->method;
    float *slab = NULL;
    int n = 0;
    if (as_lora) {
        rc = lora_equivalent(set, e, keys, &slab, &saved, err);
        method = &peft_method_lora;
        n = 2 * set->n_sites;
    }
    for (int i = as_lora ? set->n_params - set->n_head : 0; i < set->n_params; i++, n++) { /* as LoRA: the head only */
        const peft_param *p = &set->params[i].p;
        e[n] = (peft_st_entry){.name = set->params[i].key, .dtype = PEFT_F32, .ndim = p->ndim, .data = p->data};
        for (int d = 0; d < p->ndim; d++) e[n].shape[d] = p->shape[d];
    }
    for (int i = 0; i < set->shared.n; i++) {
        const shared_tensor *t = &set->shared.t[i];
        if (t->trainable || !t->saved) continue; /* trainable ones are among the params */
        e[n] = (peft_st_entry){.name = t->key, .dtype = PEFT_F32, .ndim = t->ndim, .data = t->data};
        for (int d = 0; d < t->ndim; d++) e[n].shape[d] = t->shape[d];
        n++;
    }
    char path[sizeof st.path + 64];
    static const char *const meta[] = {"format", "pt"};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", st.path);
    if (rc == PEFT_OK) rc = peft_st_write(path, e, n, meta, 1, err);
    free(e), free(keys), free(slab);
    char *json = rc ? NULL : config_json(set, method, &saved);
    if (rc == PEFT_OK) {
        snprintf(path, sizeof path, "%s/adapter_config.json", st.path);
        rc = json ? peft_write_file_atomic(path, json, strlen(json), err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    free(json);
    if (rc == PEFT_OK) rc = peft_dir_stage_commit(&st, err);
    else peft_dir_stage_abort(&st);
    return rc;
}

static int parse_patterns(const cJSON *root, const char *key, peft_pattern *out, int *n, const char *what, peft_err *err) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, key);
    *n = 0;
    if (!o || cJSON_IsNull(o)) return PEFT_OK;
    if (!cJSON_IsObject(o)) return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must be an object", what, key);
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        if (*n == PEFT_MAX_PATTERNS || !cJSON_IsNumber(e) || strlen(e->string) >= sizeof out->key)
            return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" entries must be numbers (at most %d)", what, key, PEFT_MAX_PATTERNS);
        /* ranks become ints (as "r": 1..65536); alphas must be finite (cJSON reads 1e999 as inf) */
        double v = e->valuedouble;
        if (!strcmp(key, "rank_pattern") ? !(v >= 1 && v <= 65536 && v == (int)v) : !(v > -1e300 && v < 1e300))
            return peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" value %g for \"%s\" is out of range", what, key, v, e->string);
        snprintf(out[*n].key, sizeof out[*n].key, "%s", e->string);
        out[(*n)++].value = e->valuedouble;
    }
    return PEFT_OK;
}

/* The numbers every method's config_read may have set, checked once for all methods: a file
 * is untrusted input, and a non-finite alpha would poison every merged or evaluated weight. */
static int check_opts(const peft_method_opts *o, const char *what, peft_err *err) {
    if (o->rank < 1 || o->rank > 65536) return peft_fail(err, PEFT_EFORMAT, "%s: rank %d is outside [1, 65536]", what, o->rank);
    if (!isfinite(o->alpha) || fabs(o->alpha) > 1e30)
        return peft_fail(err, PEFT_EFORMAT, "%s: the alpha (scaling) %g is not a finite number of at most 1e30", what, o->alpha);
    if (!(o->dropout >= 0 && o->dropout < 1)) return peft_fail(err, PEFT_EFORMAT, "%s: dropout %g is outside [0, 1)", what, o->dropout);
    if (!isfinite(o->init_scale) || fabs(o->init_scale) > 1e30)
        return peft_fail(err, PEFT_EFORMAT, "%s: the initial value %g (d_initial, init scale) is not a finite number of at most 1e30",
                         what, o->init_scale);
    if (o->n_virtual < 0 || o->n_virtual > 4096)
        return peft_fail(err, PEFT_EFORMAT, "%s: num_virtual_tokens %d is outside [0, 4096]", what, o->n_virtual);
    return PEFT_OK;
}

/* Fills cfg from a PEFT adapter_config.json: the common fields here, the method's own by the
 * first method of that peft_type that claims the config. */
static int parse_adapter_config(const cJSON *root, const char *what, peft_adapter_config *cfg, peft_err *err) {
    peft_adapter_config_default(cfg);
    const char *type = NULL, *bias = "none", *base = "";
    int rc, fan_in_fan_out = 0;
    /* fan_in_fan_out only says how the HF module stores its weight (GPT-2's Conv1D [in, out]);
     * peft.c's sites know their own layout (peft_site.fan_in_fan_out) and PEFT itself corrects
     * a wrong value per module, so it is type-checked and not otherwise used. */
    if ((rc = peft_json_string(root, "peft_type", 1, &type, what, err)) ||
        (rc = peft_json_string(root, "bias", 0, &bias, what, err)) ||
        (rc = peft_json_bool(root, "fan_in_fan_out", 0, &fan_in_fan_out, what, err)) ||
        (rc = peft_json_string(root, "base_model_name_or_path", 0, &base, what, err)))
        return rc;
    snprintf(cfg->base_model, sizeof cfg->base_model, "%s", base);
    if (strcmp(bias, "none")) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: bias \"%s\" is not supported (only \"none\")", what, bias);
    /* modules_to_save: the model's task head, whose tensors the file must then hold (read_params) */
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(root, "modules_to_save");
    if (mts && !cJSON_IsNull(mts) && !cJSON_IsArray(mts))
        return peft_fail(err, PEFT_EFORMAT, "%s: modules_to_save must be null or a list of module names", what);
    if (cJSON_IsArray(mts)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, mts) {
            if (!cJSON_IsString(e)) return peft_fail(err, PEFT_EFORMAT, "%s: modules_to_save must hold strings", what);
        }
    }
    const peft_method *method = NULL;
    for (int i = 0; peft_methods[i] && !method; i++) {
        if (strcmp(peft_methods[i]->peft_type, type)) continue;
        rc = peft_methods[i]->config_read(root, &cfg->opts, what, err);
        if (rc == 1) continue; /* another method of this peft_type */
        if (rc) return rc;
        method = peft_methods[i];
        snprintf(cfg->method, sizeof cfg->method, "%s", method->name);
    }
    if (!method)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: peft_type \"%s\" (with these settings) is not supported", what, type);
    if ((rc = check_opts(&cfg->opts, what, err))) return rc;
    if (method->attach_model) return PEFT_OK;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    if (cJSON_IsString(tm)) {
        cfg->target_regex = 1;
        snprintf(cfg->target_modules, sizeof cfg->target_modules, "%s", tm->valuestring);
    } else if (cJSON_IsArray(tm)) {
        cfg->target_modules[0] = '\0';
        const cJSON *e;
        cJSON_ArrayForEach(e, tm) {
            if (!cJSON_IsString(e)) return peft_fail(err, PEFT_EFORMAT, "%s: target_modules must hold strings", what);
            size_t used = strlen(cfg->target_modules);
            if (used + strlen(e->valuestring) + 2 > sizeof cfg->target_modules)
                return peft_fail(err, PEFT_EFORMAT, "%s: target_modules is too long", what);
            snprintf(cfg->target_modules + used, sizeof cfg->target_modules - used, "%s%s", used ? "," : "", e->valuestring);
        }
    } else {
        return peft_fail(err, PEFT_EFORMAT, "%s: target_modules must be a list of names or a regex string", what);
    }
    const cJSON *ltt = cJSON_GetObjectItemCaseSensitive(root, "layers_to_transform");
    if (ltt && !cJSON_IsNull(ltt)) {
        const cJSON *e = cJSON_IsArray(ltt) ? ltt->child : ltt;
        for (; e; e = cJSON_IsArray(ltt) ? e->next : NULL) {
            double v = e->valuedouble;
            if (!cJSON_IsNumber(e) || cfg->n_layers_to_transform == 64 || !(v >= 0 && v <= 65536 && v == floor(v)))
                return peft_fail(err, PEFT_EFORMAT, "%s: layers_to_transform must be a layer index or a list of at most 64 (integers "
                                 "in [0, 65536])", what);
            cfg->layers_to_transform[cfg->n_layers_to_transform++] = (int)v;
        }
    }
    if ((rc = parse_patterns(root, "rank_pattern", cfg->rank_pattern, &cfg->n_rank_pattern, what, err))) return rc;
    return parse_patterns(root, "alpha_pattern", cfg->alpha_pattern, &cfg->n_alpha_pattern, what, err);
}

/* NaN or Inf in a tensor read from a file would reach every output of the model (a merge
 * poisons the weights): refused for every method, naming the tensor. */
static int check_finite(const peft_st_file *f, const char *key, const float *x, size_t n, peft_err *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return peft_fail(err, PEFT_ENUMERIC, "%s: tensor \"%s\" holds a non-finite value (%g at element %zu)", f->path, key, x[i], i);
    return PEFT_OK;
}

/* Copies one tensor from the file into dst after checking its shape. */
static int read_tensor(const peft_st_file *f, const char *key, int ndim, const int64_t *shape, float *dst, peft_err *err) {
    const peft_st_tensor *t = peft_st_find(f, key);
    if (!t) return peft_fail(err, PEFT_ESHAPE, "%s: missing tensor \"%s\"", f->path, key);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same)
        return peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" has shape [%lld, %lld], the model needs [%lld, %lld]", f->path, key,
                         (long long)t->shape[0], t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)shape[0],
                         ndim > 1 ? (long long)shape[1] : 0LL);
    if (peft_convert_to_f32(dst, t->data, t->dtype, t->numel))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: tensor \"%s\" has non-float dtype %s", f->path, key, peft_dtype_name(t->dtype));
    return check_finite(f, key, dst, t->numel, err);
}

/* Copies every parameter and saved shared tensor from the file; every tensor in the file
 * must be one of them. */
static int read_params(peft_adapter_set *set, const peft_st_file *f, peft_err *err) {
    int used = 0, rc;
    for (int i = 0; i < set->n_params; i++, used++)
        if ((rc = read_tensor(f, set->params[i].key, set->params[i].p.ndim, set->params[i].p.shape, set->params[i].p.data, err)))
            return rc;
    for (int i = 0; i < set->shared.n; i++) {
        shared_tensor *t = &set->shared.t[i];
        if (t->trainable || !t->saved) continue;
        if ((rc = read_tensor(f, t->key, t->ndim, t->shape, t->data, err))) return rc;
        used++;
    }
    if (f->n_tensors == used) return PEFT_OK;
    for (int i = 0; i < f->n_tensors; i++) {
        int known = 0;
        for (int k = 0; k < set->n_params && !known; k++) known = !strcmp(f->tensors[i].name, set->params[k].key);
        for (int k = 0; k < set->shared.n && !known; k++) known = !strcmp(f->tensors[i].name, set->shared.t[k].key);
        if (!known)
            return peft_fail(err, PEFT_ESHAPE, "%s: tensor \"%s\" matches no adapter site of this model", f->path, f->tensors[i].name);
    }
    return PEFT_OK;
}

int peft_adapter_config_parse(const char *text, size_t len, const char *what, peft_adapter_config *cfg, peft_err *err) {
    cJSON *root;
    int rc = peft_json_parse(text, len, what, &root, err);
    if (rc) return rc;
    rc = cJSON_IsObject(root) ? parse_adapter_config(root, what, cfg, err) : peft_fail(err, PEFT_EFORMAT, "%s: not a JSON object", what);
    cJSON_Delete(root);
    return rc;
}

int peft_adapter_config_read(const char *dir, peft_adapter_config *cfg, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char *text;
    size_t len;
    int rc = peft_read_file(path, &text, &len, err);
    if (rc) return rc;
    rc = peft_adapter_config_parse(text, len, path, cfg, err);
    free(text);
    return rc;
}

int peft_adapter_set_load(const char *dir, peft_model *m, int max_rows, peft_adapter_set **out, peft_err *err) {
    return peft_adapter_set_load_covs(dir, m, max_rows, NULL, out, err);
}

int peft_adapter_set_load_covs(const char *dir, peft_model *m, int max_rows, const struct peft_corda_covs *covs,
                               peft_adapter_set **out, peft_err *err) {
    *out = NULL;
    peft_adapter_config cfg;
    int rc = peft_adapter_config_read(dir, &cfg, err);
    if (rc) return rc;
    cfg.opts.corda_covs = covs;
    peft_adapter_set *set;
    if ((rc = peft_adapter_set_create(m, &cfg, max_rows, &set, err))) return peft_err_prefix(err, "%s", dir);
    peft_st_file *f;
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    rc = peft_st_open(path, &f, err);
    if (rc == PEFT_OK) {
        rc = read_params(set, f, err);
        peft_st_close(f);
    }
    if (rc) {
        peft_adapter_set_free(set);
        return rc;
    }
    *out = set;
    return PEFT_OK;
}
