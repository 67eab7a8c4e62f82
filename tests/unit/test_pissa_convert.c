/* test_pissa_convert.c: saving a PiSSA / CorDA adapter as the equivalent LoRA of the ORIGINAL
 * model (peft_adapter_config.save_as_lora, `peft train --save-as-lora`; PEFT's
 * save_pretrained(path_initial_model_for_weight_conversion=...)), on the demo model:
 *   - oracle: the trained adapter merged into its residual base (W_res + s B A, LoRA's merge);
 *     the converted file, loaded as a plain LoRA on the original model and merged, gives the
 *     same weights within 1e-5 (relative to the weight's largest entry), at every site;
 *   - the file is PEFT's: adapter_config.json is a LoraConfig with r, lora_alpha, rank_pattern
 *     and alpha_pattern doubled (lora_alpha * sqrt(2) with rsLoRA, PEFT's rule), 
 *     init_lora_weights true, no corda_config; adapter_model.safetensors holds exactly
 *     base_model.model.<site>.lora_A.weight [2r, in] and .lora_B.weight [out, 2r] per site;
 *   - refused: another method, and rsLoRA with rank/alpha patterns (PEFT refuses it too). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "models/llama.h"
#include "check.h"
#include "fileio.h"
#include "io/safetensors.h"
#include "methods/adapter_set.h"
#include "methods/pissa.h"
#include "rng.h"
#include "train/corda_calib.h"

static void config_for(peft_adapter_config *cfg, const char *method, int rslora, int patterns) {
    peft_adapter_config_default(cfg);
    snprintf(cfg->method, sizeof cfg->method, "%s", method);
    strcpy(cfg->target_modules, "all-linear");
    cfg->opts.rank = 4;
    cfg->opts.alpha = 8;
    cfg->opts.use_rslora = rslora;
    cfg->save_as_lora = 1;
    if (patterns) {
        cfg->rank_pattern[cfg->n_rank_pattern++] = (peft_pattern){"q_proj", 6};
        cfg->alpha_pattern[cfg->n_alpha_pattern++] = (peft_pattern){"v_proj", 12};
    }
}

/* CorDA covariances of every linear layer from one batch of fixed ids. */
static peft_corda_covs *calibration(peft_llama *m, const peft_adapter_config *cfg) {
    enum { B = 2, T = 16 };
    int32_t ids[B * T];
    for (int t = 0; t < B * T; t++) ids[t] = (29 * t + 5) % m->cfg.vocab_size;
    peft_err err = {0};
    llama_acts a;
    peft_corda_collector *c;
    peft_corda_covs *covs = NULL;
    CHECK(llama_acts_alloc(m, B, T, 0, 0, &a, &err) == 0);
    CHECK_MSG(peft_corda_collect_begin(&m->base, cfg, B, T, &c, &err) == 0, "%s", err.msg);
    int rc = peft_corda_collect_batch(c, (peft_acts *)&a, /* llama.c: peft_acts is llama_acts */ ids, NULL, B, &err);
    CHECK_MSG(peft_corda_collect_end(c, rc, &covs, &err) == 0, "%s", err.msg);
    llama_acts_free(&a);
    return covs;
}

static double number(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* adapter_config.json against PEFT's converted LoraConfig. */
static void check_config(const char *dir, const peft_adapter_config *cfg) {
    char path[700], *text;
    size_t len;
    peft_err err = {0};
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    CHECK_MSG(peft_read_file(path, &text, &len, &err) == 0, "%s", err.msg);
    cJSON *o = cJSON_ParseWithLength(text, len);
    double alpha = cfg->opts.alpha * (cfg->opts.use_rslora ? sqrt(2.0) : 2.0);
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(o, "peft_type")->valuestring, "LORA"));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "init_lora_weights")));
    CHECK(number(o, "r") == 2 * cfg->opts.rank && fabs(number(o, "lora_alpha") - alpha) < 1e-12);
    CHECK(!cJSON_GetObjectItemCaseSensitive(o, "corda_config"));
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rank_pattern"), *ap = cJSON_GetObjectItemCaseSensitive(o, "alpha_pattern");
    CHECK(cJSON_GetArraySize(rp) == cfg->n_rank_pattern && cJSON_GetArraySize(ap) == cfg->n_alpha_pattern);
    for (int i = 0; i < cfg->n_rank_pattern; i++) CHECK(number(rp, cfg->rank_pattern[i].key) == 2 * cfg->rank_pattern[i].value);
    for (int i = 0; i < cfg->n_alpha_pattern; i++) CHECK(number(ap, cfg->alpha_pattern[i].key) == 2 * cfg->alpha_pattern[i].value);
    cJSON_Delete(o);
    free(text);
}

/* adapter_model.safetensors: lora_A [2r, in] and lora_B [out, 2r] of every site, nothing else. */
static void check_tensors(const char *dir, peft_llama *m, const peft_adapter_set *set) {
    char path[700];
    peft_err err = {0};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    peft_st_file *f;
    CHECK_MSG(peft_st_open(path, &f, &err) == 0, "%s", err.msg);
    CHECK(f->n_tensors == 2 * peft_adapter_set_n_sites(set));
    for (int i = 0; i < llama_n_sites(m); i++) {
        const peft_site *s = llama_site(m, i);
        if (!s->adapter) continue;
        int r2 = 2 * pissa_lora_equivalent(s->adapter, NULL, NULL);
        char key[300];
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", s->name);
        const peft_st_tensor *A = peft_st_find(f, key);
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", s->name);
        const peft_st_tensor *B = peft_st_find(f, key);
        CHECK_MSG(A && A->ndim == 2 && A->shape[0] == r2 && A->shape[1] == s->in_features, "%s: lora_A", s->name);
        CHECK_MSG(B && B->ndim == 2 && B->shape[0] == s->out_features && B->shape[1] == r2, "%s: lora_B", s->name);
    }
    peft_st_close(f);
}

static void check_conversion(peft_llama *m, const char *method, int rslora, int patterns, const char *dir) {
    peft_adapter_config cfg;
    config_for(&cfg, method, rslora, patterns);
    peft_corda_covs *covs = strncmp(method, "corda", 5) ? NULL : calibration(m, &cfg);
    cfg.opts.corda_covs = covs;
    peft_err err = {0};
    peft_adapter_set *set;
    int rc = peft_adapter_set_create(&m->base, &cfg, 16, &set, &err);
    CHECK_MSG(rc == 0, "%s: %s", method, err.msg);
    peft_corda_covs_free(covs);
    if (rc) return;
    peft_rng r;
    peft_rng_seed(&r, 3, 1);
    peft_named_param *p = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set); i++) /* "trained": move A and B away from their init */
        for (size_t j = 0; j < p[i].p.numel; j++) p[i].p.data[j] += 0.05f * (2 * peft_rng_uniform(&r) - 1);
    CHECK_MSG(peft_adapter_set_save(set, dir, &err) == 0, "%s", err.msg);
    check_config(dir, &cfg);
    check_tensors(dir, m, set);
    /* the oracle: the trained model's merged weights, W_res + s B A */
    int ns = llama_n_sites(m);
    float **merged = calloc((size_t)ns, sizeof *merged);
    CHECK(peft_adapter_set_merge(set, +1, &err) == 0);
    for (int i = 0; i < ns; i++) {
        const peft_site *s = llama_site(m, i);
        size_t nw = (size_t)s->in_features * s->out_features;
        if (s->adapter && (merged[i] = malloc(nw * sizeof(float)))) memcpy(merged[i], s->weight, nw * sizeof(float));
    }
    CHECK(peft_adapter_set_merge(set, -1, &err) == 0);
    peft_adapter_set_free(set); /* the original W again */
    rc = peft_adapter_set_load(dir, &m->base, 16, &set, &err);
    CHECK_MSG(rc == 0, "%s: loading the converted adapter: %s", method, err.msg);
    double worst = 0;
    if (rc == 0) {
        CHECK(!strcmp(peft_adapter_set_config(set)->method, "lora"));
        CHECK(peft_adapter_set_merge(set, +1, &err) == 0);
        for (int i = 0; i < ns; i++) {
            const peft_site *s = llama_site(m, i);
            size_t nw = (size_t)s->in_features * s->out_features;
            double d = 0, big = 0;
            for (size_t j = 0; merged[i] && j < nw; j++) d = fmax(d, fabs(s->weight[j] - merged[i][j])), big = fmax(big, fabs(merged[i][j]));
            if (merged[i]) worst = fmax(worst, d / big);
        }
        CHECK(peft_adapter_set_merge(set, -1, &err) == 0);
        peft_adapter_set_free(set);
    }
    CHECK_MSG(worst < 1e-5, "%s: converted LoRA merged on W differs from the trained model by %.2e", method, worst);
    printf("%-9s rslora %d patterns %d: converted LoRA on the original W vs trained model merged: %.1e\n", method, rslora, patterns,
           worst);
    for (int i = 0; i < ns; i++) free(merged[i]);
    free(merged);
}

int main(void) {
    const char *src = getenv("PEFT_SRC");
    char model_dir[4200], dir[] = "/tmp/peft_pissa_convert_XXXXXX";
    snprintf(model_dir, sizeof model_dir, "%s/models/demo", src ? src : ".");
    peft_err err = {0};
    peft_llama *m;
    if (llama_load(model_dir, &m, &err)) {  /* the embedded demo model is part of the project: no skip */
        fprintf(stderr, "test_pissa_convert: %s\n", err.msg);
        return 1;
    }
    CHECK(mkdtemp(dir) != NULL);
    check_conversion(m, "pissa", 0, 1, dir);
    check_conversion(m, "pissa", 1, 0, dir);
    check_conversion(m, "corda_kpm", 0, 1, dir);
    check_conversion(m, "corda_ipm", 1, 0, dir);
    peft_adapter_config cfg;
    peft_adapter_set *set = NULL;
    config_for(&cfg, "lora", 0, 0);
    CHECK(peft_adapter_set_create(&m->base, &cfg, 16, &set, &err) == PEFT_EINVAL && strstr(err.msg, "PiSSA and CorDA"));
    config_for(&cfg, "pissa", 1, 1);
    CHECK(peft_adapter_set_create(&m->base, &cfg, 16, &set, &err) == PEFT_EINVAL && strstr(err.msg, "rsLoRA"));
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    llama_free(m);
    return check_report("test_pissa_convert");
}
