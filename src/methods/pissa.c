/* pissa.c: PiSSA and CorDA (pissa.h) on the adapter interface.
 *
 * An adapter wraps a plain LoRA adapter (lora.c does forward, backward, dropout and the
 * parameters) and adds what the SVD initialisation changes:
 *   create:  decompose W (PiSSA) or W C (CorDA), set A, B to the chosen components scaled
 *            by 1/s, keep A0 = A, B0 = B and a copy of the original W, then W -= s B A;
 *   merge:   +1 is LoRA's (W_res + s B A); -1 rebuilds W_res from the copy exactly as create
 *            did (W_orig - s B0 A0, the same gemm), so unmerge is bit-exact;
 *   destroy: puts the original W back bit for bit (unless merged: the merged weight is then
 *            the fine-tuned model, W_orig + s (B A - B0 A0), and stays).
 * Memory per site: a copy of W [out, in] plus A0, B0. */
#include "pissa.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "kernels/linalg.h"
#include "methods/lora.h"

enum { KIND_PISSA, KIND_CORDA_KPM, KIND_CORDA_IPM };

typedef struct pissa_adapter {
    peft_adapter base;
    peft_adapter *lora;  /* the LoRA doing the training */
    int kind, r, in, out;
    float scale;
    float *A, *B;        /* the LoRA's parameters [r, in], [out, r] */
    float *A0, *B0;      /* their initial values */
    float *W;            /* the site's weight [out, in] (holds W_res while not merged) */
    float *W_orig;       /* [out, in] the weight before create */
    int merged;
} pissa_adapter;

/* ---- CorDA covariances ------------------------------------------------------------- */

const peft_corda_cov *peft_corda_covs_find(const peft_corda_covs *c, const char *name) {
    for (int i = 0; c && i < c->n; i++)
        if (!strcmp(c->cov[i].name, name)) return &c->cov[i];
    return NULL;
}

void peft_corda_covs_free(peft_corda_covs *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) free(c->cov[i].C);
    free(c->cov);
    free(c);
}

/* The site's calibration covariance [in, in], or an error naming what is missing. */
static int corda_covariance(const peft_method_opts *o, const peft_site *s, const char *method, const double **C, peft_err *err) {
    const peft_corda_cov *e = peft_corda_covs_find(o->corda_covs, s->name);
    if (!e)
        return peft_fail(err, PEFT_EINVAL,
                         "%s: %s needs the covariance of the site's inputs from a calibration pass (peft train runs it: "
                         "--corda-calib-data, --corda-calib-batches); a saved CorDA adapter only loads with it, as in PEFT "
                         "(train with --save-as-lora for an adapter that loads on the original model)",
                         s->name, method);
    if (e->in != s->in_features)
        return peft_fail(err, PEFT_ESHAPE, "%s: CorDA covariance is [%d, %d], the site has %d inputs", s->name, e->in, e->in,
                         s->in_features);
    *C = e->C;
    return PEFT_OK;
}

/* ---- decomposition ------------------------------------------------------------------ */

/* U [out, k], S [k], Vt [k, in] (k = min(out, in)) with W = U diag(S) Vt, in double: the
 * SVD of W (PiSSA) or PEFT's collect_eigens_for_layer (CorDA): C_fix = C + damp * mean(diag C)
 * * I, damp = 0.01 doubled until |C_fix C_fix^-1 - I|_F < 0.05, SVD of W C_fix = U S Vh and
 * Vt = Vh C_fix^-1. */
static int decompose(const pissa_adapter *a, const peft_method_opts *o, const peft_site *s, double *U, double *S, double *Vt,
                     peft_err *err) {
    int in = a->in, out = a->out, k = in < out ? in : out, rc = PEFT_OK, info;
    size_t nw = (size_t)out * in, nn = (size_t)in * in;
    double *W = malloc(nw * sizeof(double));
    if (!W) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    for (size_t i = 0; i < nw; i++) W[i] = s->weight[i];
    if (a->kind == KIND_PISSA) {
        info = svd_f64(W, out, in, U, S, Vt);
        free(W);
        return info ? peft_fail(err, info < 0 ? PEFT_ENOMEM : PEFT_EINVAL, "%s: SVD failed (%d)", s->name, info) : PEFT_OK;
    }
    const double *Cs = NULL;
    double *Cf = malloc(nn * sizeof(double)), *Ci = malloc(nn * sizeof(double)), *P = malloc(nn * sizeof(double)),
           *WC = malloc(nw * sizeof(double)), *Vh = malloc((size_t)k * in * sizeof(double));
    rc = Cf && Ci && P && WC && Vh ? corda_covariance(o, s, a->base.method->name, &Cs, err)
                                   : peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    if (rc == PEFT_OK) {
        double mean = 0, damp = 0.01;
        for (int i = 0; i < in; i++) mean += Cs[(size_t)i * in + i];
        mean /= in;
        for (int tries = 0;; tries++, damp *= 2) {
            for (size_t j = 0; j < nn; j++) Cf[j] = Cs[j];
            for (int i = 0; i < in; i++) Cf[(size_t)i * in + i] += mean * damp;
            info = inv_f64(Cf, in, Ci);
            if (info < 0) {
                rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
                break;
            }
            double e2 = 0;
            if (info == 0) {
                cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in, in, 1.0, Cf, in, Ci, in, 0.0, P, in);
                for (int i = 0; i < in; i++)
                    for (int j = 0; j < in; j++) {
                        double d = P[(size_t)i * in + j] - (i == j);
                        e2 += d * d;
                    }
            }
            if (info == 0 && isfinite(e2) && sqrt(e2) < 0.05) break;
            if (tries == 40 || !(mean > 0)) {
                rc = peft_fail(err, PEFT_EINVAL, "%s: the CorDA covariance cannot be inverted (mean diagonal %g)", s->name, mean);
                break;
            }
        }
    }
    if (rc == PEFT_OK) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out, in, in, 1.0, W, in, Cf, in, 0.0, WC, in); /* W C_fix */
        info = svd_f64(WC, out, in, U, S, Vh);
        if (info) rc = peft_fail(err, info < 0 ? PEFT_ENOMEM : PEFT_EINVAL, "%s: SVD of W C failed (%d)", s->name, info);
    }
    if (rc == PEFT_OK) /* Vt = Vh C_fix^-1 */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, k, in, in, 1.0, Vh, in, Ci, in, 0.0, Vt, in);
    free(W), free(Cf), free(Ci), free(P), free(WC), free(Vh);
    return rc;
}

/* ---- the method --------------------------------------------------------------------- */

static const peft_method *method_of(int kind) {
    return kind == KIND_PISSA ? &peft_method_pissa : kind == KIND_CORDA_KPM ? &peft_method_corda_kpm : &peft_method_corda_ipm;
}

static void pissa_destroy(peft_adapter *base) {
    pissa_adapter *a = (pissa_adapter *)base;
    if (!a) return;
    if (a->W_orig && !a->merged) memcpy(a->W, a->W_orig, (size_t)a->out * a->in * sizeof(float));
    if (a->lora) a->lora->method->destroy(a->lora);
    free(a->W_orig), free(a->A0);
    free(a);
}

static int create_kind(int kind, const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    const char *name = method_of(kind)->name;
    if (!s->weight) return peft_fail(err, PEFT_EINVAL, "%s: %s needs the base weights (the model was loaded without them)", s->name, name);
    if (!(o->alpha > 0)) return peft_fail(err, PEFT_EINVAL, "%s: %s needs lora_alpha > 0 (got %g)", s->name, name, o->alpha);
    pissa_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = method_of(kind);
    a->kind = kind;
    int rc = peft_method_lora.create(o, s, max_rows, &a->lora, err); /* checks rank and dropout */
    if (rc) {
        free(a);
        return rc;
    }
    peft_param p[2];
    peft_method_lora.params(a->lora, p, 2);
    a->A = p[0].data, a->B = p[1].data;
    a->r = o->rank, a->in = s->in_features, a->out = s->out_features;
    a->scale = lowrank_scale(o);
    a->W = s->weight;
    int in = a->in, outf = a->out, r = a->r, k = in < outf ? in : outf;
    size_t nw = (size_t)outf * in;
    double *U = malloc((size_t)outf * k * sizeof(double)), *S = malloc((size_t)k * sizeof(double)),
           *Vt = malloc((size_t)k * in * sizeof(double));
    a->A0 = malloc(((size_t)r * in + (size_t)outf * r) * sizeof(float));
    a->W_orig = malloc(nw * sizeof(float));
    rc = U && S && Vt && a->A0 && a->W_orig ? decompose(a, o, s, U, S, Vt, err) : peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    if (rc == PEFT_OK) {
        /* PEFT: S_r /= scaling; A = diag(sqrt(S_r)) Vt_r; B = U_r diag(sqrt(S_r)) */
        for (int j = 0; j < r; j++) {
            int c = kind == KIND_CORDA_KPM ? k - r + j : j; /* KPM adapts the smallest r */
            double sq = sqrt(S[c] / a->scale);
            for (int i = 0; i < in; i++) a->A[(size_t)j * in + i] = (float)(sq * Vt[(size_t)c * in + i]);
            for (int i = 0; i < outf; i++) a->B[(size_t)i * r + j] = (float)(U[(size_t)i * k + c] * sq);
        }
        a->B0 = a->A0 + (size_t)r * in;
        memcpy(a->A0, a->A, (size_t)r * in * sizeof(float));
        memcpy(a->B0, a->B, (size_t)outf * r * sizeof(float));
        memcpy(a->W_orig, s->weight, nw * sizeof(float));
        gemm_acc(s->weight, a->B0, a->A0, outf, in, r, 0, 0, -a->scale); /* W_res = W - s B0 A0 */
    }
    free(U), free(S), free(Vt);
    if (rc) {
        free(a->W_orig), a->W_orig = NULL; /* the weight was not touched */
        pissa_destroy(&a->base);
        return rc;
    }
    *out = &a->base;
    return PEFT_OK;
}

static int pissa_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    return create_kind(KIND_PISSA, o, s, max_rows, out, err);
}
static int corda_kpm_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    return create_kind(KIND_CORDA_KPM, o, s, max_rows, out, err);
}
static int corda_ipm_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    return create_kind(KIND_CORDA_IPM, o, s, max_rows, out, err);
}

/* The inner LoRA sees the state the set gives the wrapper. */
static peft_adapter *inner(pissa_adapter *a) {
    a->lora->training = a->base.training;
    a->lora->step_seed = a->base.step_seed;
    a->lora->work = a->base.work;
    return a->lora;
}

static void pissa_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    pissa_adapter *a = (pissa_adapter *)base;
    peft_method_lora.forward(inner(a), s, y, x, N, save);
}

static void pissa_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    pissa_adapter *a = (pissa_adapter *)base;
    peft_method_lora.backward(inner(a), s, dx, dy, x, N);
}

static int pissa_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    pissa_adapter *a = (pissa_adapter *)base;
    if (sign < 0 && a->merged && s->weight == a->W) { /* rebuild W_res exactly as create did */
        memcpy(s->weight, a->W_orig, (size_t)a->out * a->in * sizeof(float));
        gemm_acc(s->weight, a->B0, a->A0, a->out, a->in, a->r, 0, 0, -a->scale);
        a->merged = 0;
        return PEFT_OK;
    }
    int rc = peft_method_lora.merge(inner(a), s, sign, err);
    if (rc == PEFT_OK) a->merged = sign > 0;
    return rc;
}

static int pissa_params(peft_adapter *base, peft_param *out, int max) {
    pissa_adapter *a = (pissa_adapter *)base;
    return peft_method_lora.params(a->lora, out, max);
}

static size_t pissa_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const pissa_adapter *a = (const pissa_adapter *)base;
    return peft_method_lora.work_floats(a->lora, s, N);
}

int pissa_lora_equivalent(const peft_adapter *base, float *A2, float *B2) {
    if (!base || (base->method != &peft_method_pissa && base->method != &peft_method_corda_kpm && base->method != &peft_method_corda_ipm))
        return -1;
    const pissa_adapter *a = (const pissa_adapter *)base;
    int r = a->r, in = a->in;
    if (A2) {
        memcpy(A2, a->A, (size_t)r * in * sizeof(float));
        memcpy(A2 + (size_t)r * in, a->A0, (size_t)r * in * sizeof(float));
    }
    if (B2)
        for (int o = 0; o < a->out; o++)
            for (int j = 0; j < r; j++) {
                B2[(size_t)o * 2 * r + j] = a->B[(size_t)o * r + j];
                B2[(size_t)o * 2 * r + r + j] = -a->B0[(size_t)o * r + j];
            }
    return r;
}

/* ---- adapter_config.json: a LoraConfig with init_lora_weights "pissa" / "corda" ---------- */

static void config_write_kind(int kind, const peft_method_opts *o, cJSON *obj) {
    peft_method_lora.config_write(o, obj);
    cJSON_ReplaceItemInObjectCaseSensitive(obj, "init_lora_weights", cJSON_CreateString(kind == KIND_PISSA ? "pissa" : "corda"));
    if (kind != KIND_PISSA) {
        cJSON *cc = cJSON_CreateObject();
        cJSON_AddNullToObject(cc, "cache_file");
        cJSON_AddStringToObject(cc, "corda_method", kind == KIND_CORDA_KPM ? "kpm" : "ipm");
        cJSON_AddNullToObject(cc, "covariance_file");
        cJSON_AddBoolToObject(cc, "prune_temporary_fields", 1);
        cJSON_AddBoolToObject(cc, "use_float16_for_covariance", 0);
        cJSON_AddBoolToObject(cc, "verbose", 0);
        cJSON_AddItemToObject(obj, "corda_config", cc);
    }
}

/* Claims LoraConfigs whose init_lora_weights is "pissa" (or PEFT's fast "pissa_niter_K", done
 * here with the exact SVD) for PiSSA, "corda" with corda_config.corda_method kpm/ipm (PEFT's
 * default ipm) for CorDA; returns 1 for any other config. */
static int config_read_kind(int kind, const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(obj, "init_lora_weights");
    if (!cJSON_IsString(init)) return 1;
    const char *v = init->valuestring;
    if (kind == KIND_PISSA) {
        if (strcmp(v, "pissa") && strncmp(v, "pissa_niter_", 12)) return 1;
    } else {
        if (strcmp(v, "corda")) return 1;
        const char *method = "ipm";
        const cJSON *cc = cJSON_GetObjectItemCaseSensitive(obj, "corda_config");
        const cJSON *m = cJSON_IsObject(cc) ? cJSON_GetObjectItemCaseSensitive(cc, "corda_method") : NULL;
        if (cJSON_IsString(m)) method = m->valuestring;
        if (strcmp(method, "kpm") && strcmp(method, "ipm"))
            return peft_fail(err, PEFT_EFORMAT, "%s: corda_method \"%s\" must be \"kpm\" or \"ipm\"", what, method);
        if (strcmp(method, kind == KIND_CORDA_KPM ? "kpm" : "ipm")) return 1;
    }
    return lora_config_read_common(obj, o, 0, what, err); /* 1 for use_dora: not ours either */
}

#define PISSA_KIND_FUNCS(fn, K)                                                                                 \
    static void fn##_config_write(const peft_method_opts *o, cJSON *obj) { config_write_kind(K, o, obj); }      \
    static int fn##_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {       \
        return config_read_kind(K, obj, o, what, err);                                                          \
    }
PISSA_KIND_FUNCS(pissa, KIND_PISSA)
PISSA_KIND_FUNCS(corda_kpm, KIND_CORDA_KPM)
PISSA_KIND_FUNCS(corda_ipm, KIND_CORDA_IPM)

#define PISSA_TABLE(fn, NAME)                                                                                   \
    const peft_method peft_method_##fn = {                                                                      \
        .abi_version = PEFT_METHOD_ABI, .name = NAME, .forward_replaces_base = 0, .create = fn##_create,        \
        .destroy = pissa_destroy, .forward = pissa_forward, .backward = pissa_backward, .merge = pissa_merge,   \
        .params = pissa_params, .work_floats = pissa_work_floats, .peft_type = "LORA",                          \
        .config_write = fn##_config_write, .config_read = fn##_config_read,                                     \
    }
PISSA_TABLE(pissa, "pissa");
PISSA_TABLE(corda_kpm, "corda_kpm");
PISSA_TABLE(corda_ipm, "corda_ipm");
