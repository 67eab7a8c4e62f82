/* test_corda_calib.c: CorDA's calibration pass (train/corda_calib.h).
 *
 * As a plain CTest, on the demo model (models/demo) with all-linear targets and a batch with
 * a plain row and a packed row ending in padding:
 *   - the recorders add nothing: the logits of the calibration forward equal the base model's
 *     bit for bit, and removing them leaves no adapter behind;
 *   - sites fed the same input (q/k/v, gate/up of a layer) get the same covariance, every
 *     covariance is symmetric with a positive diagonal, and each counts one sample per row;
 *   - CorDA-IPM and -KPM adapters created from the covariances keep the model's function at
 *     init (logits within 1e-5 of the base model's); freeing them restores W bit for bit;
 *   - errors: a CorDA adapter without covariances, calibrating sites that carry an adapter.
 * With PEFT_DRIVER_CORDA=DIR it is the driver of tests/parity/test_corda_parity.py: it reads
 * DIR/model/ and DIR/batch.safetensors ("ids", "pos": I32 [B, T]), calibrates every linear
 * layer on that batch, creates PEFT_DRIVER_METHOD (corda_ipm / corda_kpm, r 4, alpha 8) and
 * writes DIR/out.safetensors: "cov.<site>" F64 [in, in], "A.<site>", "B.<site>", "Wres.<site>"
 * (the residual weight), "logits_base" and "logits_init" [B*T, V]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "driver.h"
#include "io/safetensors.h"
#include "methods/adapter_set.h"
#include "methods/pissa.h"
#include "train/corda_calib.h"

enum { RANK = 4 };

static void config_for(peft_adapter_config *cfg, const char *method) {
    peft_adapter_config_default(cfg);
    snprintf(cfg->method, sizeof cfg->method, "%s", method);
    strcpy(cfg->target_modules, "all-linear");
    cfg->opts.rank = RANK;
    cfg->opts.alpha = 8;
}

/* Base logits into logits_base [B*T, V] (may be NULL), then the calibration covariances. */
static int calibrate(peft_llama *m, const int32_t *ids, const int32_t *pos, int B, int T, float *logits_base,
                     float *logits_calib, peft_corda_covs **covs, peft_err *err) {
    peft_adapter_config cfg;
    config_for(&cfg, "corda_ipm");
    llama_acts a;
    int rc = llama_acts_alloc(m, B, T, 0, 0, &a, err);
    if (rc) return rc;
    size_t nl = (size_t)B * T * m->cfg.vocab_size;
    rc = llama_forward(m, &a, ids, pos, NULL, NULL, NULL, err);
    if (rc == PEFT_OK && logits_base) memcpy(logits_base, a.logits, nl * sizeof(float));
    peft_corda_collector *c;
    if (rc == PEFT_OK) rc = peft_corda_collect_begin(&m->base, &cfg, B, T, &c, err);
    if (rc == PEFT_OK) {
        rc = peft_corda_collect_batch(c, (peft_acts *)&a, /* llama.c: peft_acts is llama_acts */ ids, pos, B, err);
        if (rc == PEFT_OK && logits_calib) memcpy(logits_calib, a.logits, nl * sizeof(float));
        rc = peft_corda_collect_end(c, rc, covs, err);
    }
    llama_acts_free(&a);
    return rc;
}

/* Logits [B*T, V] of the model with `method` created from covs (the set is freed after). */
static int init_logits(peft_llama *m, const char *method, const peft_corda_covs *covs, const int32_t *ids, const int32_t *pos,
                       int B, int T, float *logits, peft_adapter_set **keep, peft_err *err) {
    peft_adapter_config cfg;
    config_for(&cfg, method);
    cfg.opts.corda_covs = covs;
    peft_adapter_set *set;
    int rc = peft_adapter_set_create(&m->base, &cfg, B * T, &set, err);
    if (rc) return rc;
    llama_acts a;
    rc = llama_acts_alloc(m, B, T, 0, 0, &a, err);
    if (rc == PEFT_OK) rc = llama_forward(m, &a, ids, pos, NULL, NULL, NULL, err);
    if (rc == PEFT_OK) memcpy(logits, a.logits, (size_t)B * T * m->cfg.vocab_size * sizeof(float));
    llama_acts_free(&a);
    if (keep && rc == PEFT_OK) *keep = set;
    else peft_adapter_set_free(set);
    return rc;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, big = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), big = fmax(big, fabs((double)b[i]));
    return d / fmax(big, 1e-30);
}

static int same_cov(const peft_corda_covs *c, const char *x, const char *y) {
    const peft_corda_cov *a = peft_corda_covs_find(c, x), *b = peft_corda_covs_find(c, y);
    return a && b && a->in == b->in && !memcmp(a->C, b->C, (size_t)a->in * a->in * sizeof(double));
}

static void plain_checks(void) {
    const char *src = getenv("PEFT_SRC");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/models/demo", src ? src : ".");
    peft_err err = {0};
    peft_llama *m;
    if (llama_load(dir, &m, &err)) {  /* the embedded demo model is part of the project: no skip */
        fprintf(stderr, "test_corda_calib: %s\n", err.msg);
        exit(1);
    }
    enum { B = 2, T = 24 };
    int32_t ids[B * T], pos[B * T];
    for (int t = 0; t < B * T; t++) ids[t] = (37 * t + 11) % m->cfg.vocab_size;
    for (int t = 0; t < T; t++) {
        pos[t] = t;                                    /* row 0: one example */
        pos[T + t] = t < 9 ? t : t < 20 ? t - 9 : 0;   /* row 1: examples of 9 and 11 tokens, 4 padding */
    }
    size_t nl = (size_t)B * T * m->cfg.vocab_size;
    float *base = malloc(nl * sizeof(float)), *calib = malloc(nl * sizeof(float)), *init = malloc(nl * sizeof(float));
    float *w0 = malloc((size_t)m->cfg.hidden_size * m->cfg.hidden_size * sizeof(float));
    peft_corda_covs *covs = NULL;
    CHECK_MSG(calibrate(m, ids, pos, B, T, base, calib, &covs, &err) == 0, "%s", err.msg);
    if (!covs) exit(check_report("test_corda_calib"));
    CHECK_MSG(!memcmp(base, calib, nl * sizeof(float)), "the recorders changed the logits");
    int attached = 0;
    for (int i = 0; i < llama_n_sites(m); i++) attached += llama_site(m, i)->adapter != NULL;
    CHECK(attached == 0);
    CHECK(covs->n == llama_n_sites(m) - (llama_find_site(m, "lm_head") != NULL));
    double worst_sym = 0, min_diag = 1e300;
    for (int i = 0; i < covs->n; i++) {
        const peft_corda_cov *e = &covs->cov[i];
        CHECK_MSG(e->samples == B, "%s: %ld samples", e->name, e->samples);
        for (int a = 0; a < e->in; a++) {
            min_diag = fmin(min_diag, e->C[(size_t)a * e->in + a]);
            for (int b = 0; b < a; b++) worst_sym = fmax(worst_sym, fabs(e->C[(size_t)a * e->in + b] - e->C[(size_t)b * e->in + a]));
        }
    }
    CHECK_MSG(worst_sym < 1e-12 && min_diag > 0, "asymmetry %g, smallest diagonal %g", worst_sym, min_diag);
    CHECK(same_cov(covs, "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"));
    CHECK(same_cov(covs, "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"));
    CHECK(same_cov(covs, "model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj"));
    CHECK(!same_cov(covs, "model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj"));
    printf("calibration: %d sites, %ld samples each, logits unchanged, symmetric (%.1e), min diagonal %.3g\n", covs->n,
           covs->cov[0].samples, worst_sym, min_diag);

    peft_site *q = llama_find_site(m, "model.layers.0.self_attn.q_proj");
    size_t nw = (size_t)q->out_features * q->in_features;
    memcpy(w0, q->weight, nw * sizeof(float));
    const char *methods[] = {"corda_ipm", "corda_kpm"};
    for (int k = 0; k < 2; k++) {
        peft_adapter_set *set = NULL;
        CHECK_MSG(init_logits(m, methods[k], covs, ids, pos, B, T, init, &set, &err) == 0, "%s", err.msg);
        double d = rel_diff(init, base, nl), wd = rel_diff(q->weight, w0, nw);
        CHECK_MSG(d < 1e-5, "%s: logits at init differ from the base model's by %.2e", methods[k], d);
        CHECK_MSG(wd > 1e-3, "%s: W was not replaced by the residual (%.2e)", methods[k], wd);
        peft_adapter_set_free(set);
        CHECK_MSG(!memcmp(q->weight, w0, nw * sizeof(float)), "%s: freeing did not restore W", methods[k]);
        printf("%s at init: logits vs base model %.1e (residual W differs from W by %.1e)\n", methods[k], d, wd);
    }

    /* errors */
    peft_adapter_config cfg;
    config_for(&cfg, "corda_kpm");
    peft_adapter_set *set = NULL;
    CHECK(peft_adapter_set_create(&m->base, &cfg, B * T, &set, &err) == PEFT_EINVAL);
    CHECK(strstr(err.msg, "calibration") != NULL);
    config_for(&cfg, "lora");
    CHECK(peft_adapter_set_create(&m->base, &cfg, B * T, &set, &err) == 0);
    peft_corda_collector *c = NULL;
    config_for(&cfg, "corda_ipm");
    CHECK(peft_corda_collect_begin(&m->base, &cfg, B, T, &c, &err) == PEFT_EINVAL && c == NULL);
    CHECK(strstr(err.msg, "already carries an adapter") != NULL);
    peft_adapter_set_free(set);
    peft_corda_covs_free(covs);
    free(base), free(calib), free(init), free(w0);
    llama_free(m);
}

static int driver(const char *dir, peft_err *err) {
    char path[4200];
    peft_llama *m;
    peft_st_file *batch;
    int rc = driver_open(dir, &m, &batch, err);
    if (rc) return rc;
    const peft_st_tensor *ids = peft_st_find(batch, "ids"), *pos = peft_st_find(batch, "pos");
    if (!pos || pos->dtype != PEFT_I32) return peft_fail(err, PEFT_EFORMAT, "%s/batch.safetensors: needs I32 pos [B, T]", dir);
    int B = (int)ids->shape[0], T = (int)ids->shape[1], ns = llama_n_sites(m);
    size_t nl = (size_t)B * T * m->cfg.vocab_size;
    const char *method = getenv("PEFT_DRIVER_METHOD");
    float *base = malloc(nl * sizeof(float)), *init = malloc(nl * sizeof(float));
    peft_corda_covs *covs = NULL;
    peft_adapter_set *set = NULL;
    rc = calibrate(m, ids->data, pos->data, B, T, base, NULL, &covs, err);
    if (rc == PEFT_OK) rc = init_logits(m, method ? method : "corda_ipm", covs, ids->data, pos->data, B, T, init, &set, err);
    peft_st_entry *e = calloc((size_t)4 * ns + 2, sizeof *e);
    char(*names)[200] = calloc((size_t)4 * ns, sizeof *names);
    peft_named_param *p = set ? peft_adapter_set_params(set) : NULL;
    int n = 0;
    for (int i = 0; rc == PEFT_OK && i < covs->n; i++) {
        const peft_corda_cov *c = &covs->cov[i];
        const peft_site *s = llama_find_site(m, c->name);
        snprintf(names[n], sizeof names[0], "cov.%s", c->name);
        e[n] = (peft_st_entry){.name = names[n], .dtype = PEFT_F64, .ndim = 2, .shape = {c->in, c->in}, .data = c->C};
        n++;
        snprintf(names[n], sizeof names[0], "Wres.%s", c->name);
        e[n] = (peft_st_entry){.name = names[n], .dtype = PEFT_F32, .ndim = 2, .shape = {s->out_features, s->in_features}, .data = s->weight};
        n++;
        for (int k = 0; k < 2; k++, n++) { /* lora_A, lora_B of site i */
            const peft_param *q = &p[2 * i + k].p;
            snprintf(names[n], sizeof names[0], "%c.%s", k ? 'B' : 'A', c->name);
            e[n] = (peft_st_entry){.name = names[n], .dtype = PEFT_F32, .ndim = 2, .shape = {q->shape[0], q->shape[1]}, .data = q->data};
        }
    }
    int64_t V = m->cfg.vocab_size;
    e[n++] = (peft_st_entry){.name = "logits_base", .dtype = PEFT_F32, .ndim = 2, .shape = {(int64_t)B * T, V}, .data = base};
    e[n++] = (peft_st_entry){.name = "logits_init", .dtype = PEFT_F32, .ndim = 2, .shape = {(int64_t)B * T, V}, .data = init};
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_write(path, e, n, NULL, 0, err);
    free(e), free(names), free(base), free(init);
    peft_adapter_set_free(set);
    peft_corda_covs_free(covs);
    peft_st_close(batch);
    llama_free(m);
    return rc;
}

int main(void) {
    const char *dir = getenv("PEFT_DRIVER_CORDA");
    if (dir) {
        peft_err err = {0};
        if (driver(dir, &err)) {
            fprintf(stderr, "driver: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    plain_checks();
    return check_report("test_corda_calib");
}
