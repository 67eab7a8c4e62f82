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

#include "dtype.h"
#include "io/json.h"
#include "io/safetensors.h"
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

/* ---- CorDA covariance store --------------------------------------------------------- */

typedef struct cov_entry {
    char name[128];
    int in;
    long count;  /* calibration batches summed into C */
    float *C;    /* [in, in] sum of per-batch covariances */
} cov_entry;

static cov_entry *cov_store;
static int cov_n, cov_cap, cov_env_tried;

static cov_entry *cov_find(const char *name) {
    for (int i = 0; i < cov_n; i++)
        if (!strcmp(cov_store[i].name, name)) return &cov_store[i];
    return NULL;
}

/* The entry for name with in x in storage (zeroed when new or resized); NULL on OOM. */
static cov_entry *cov_get(const char *name, int in) {
    cov_entry *e = cov_find(name);
    if (e && e->in == in) return e;
    if (!e) {
        if (cov_n == cov_cap) {
            int cap = cov_cap ? 2 * cov_cap : 64;
            cov_entry *s = realloc(cov_store, (size_t)cap * sizeof *s);
            if (!s) return NULL;
            cov_store = s, cov_cap = cap;
        }
        e = &cov_store[cov_n];
        memset(e, 0, sizeof *e);
        snprintf(e->name, sizeof e->name, "%s", name);
    }
    float *C = calloc((size_t)in * in, sizeof(float));
    if (!C) return NULL;
    free(e->C);
    e->C = C, e->in = in, e->count = 0;
    if (e == &cov_store[cov_n]) cov_n++;
    return e;
}

void corda_covariance_clear(void) {
    for (int i = 0; i < cov_n; i++) free(cov_store[i].C);
    free(cov_store);
    cov_store = NULL, cov_n = cov_cap = 0;
}

int corda_collect(const peft_site *s, const float *x, int N, peft_err *err) {
    int in = s->in_features;
    size_t n = (size_t)N * in;
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx || isnan(x[i]) ? x[i] : mx;
    if (!isfinite(mx) || mx == 0.0f)
        return peft_fail(err, PEFT_EINVAL, "%s: CorDA calibration input has maximum %g (must be finite and non-zero)", s->name, mx);
    cov_entry *e = cov_find(s->name);
    if (!e || e->in != in) e = cov_get(s->name, in);
    float *xn = malloc(n * sizeof(float));
    if (!e || !xn) {
        free(xn);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate the CorDA covariance", s->name);
    }
    float d = fabsf(mx); /* PEFT: input / torch.max(input).abs() */
    for (size_t i = 0; i < n; i++) xn[i] = x[i] / d;
    gemm_acc(e->C, xn, xn, in, in, N, 1, 0, 1.0f); /* C += xn^T xn */
    e->count++;
    free(xn);
    return PEFT_OK;
}

int corda_covariance_load(const char *path, peft_err *err) {
    peft_st_file *f;
    int rc = peft_st_open(path, &f, err);
    if (rc) return rc;
    for (int i = 0; i < f->n_tensors && rc == PEFT_OK; i++) {
        const peft_st_tensor *t = &f->tensors[i];
        if (t->ndim != 2 || t->shape[0] != t->shape[1] || t->shape[0] < 1 || t->shape[0] > 1 << 20) {
            rc = peft_fail(err, PEFT_EFORMAT, "%s: covariance \"%s\" must be square [in, in]", path, t->name);
            break;
        }
        cov_entry *e = cov_get(t->name, (int)t->shape[0]);
        if (!e) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        else if (peft_convert_to_f32(e->C, t->data, t->dtype, t->numel))
            rc = peft_fail(err, PEFT_EFORMAT, "%s: covariance \"%s\" has non-float dtype", path, t->name);
        else e->count = 1;
    }
    peft_st_close(f);
    return rc;
}

int corda_covariance_save(const char *path, peft_err *err) {
    peft_st_entry *e = calloc((size_t)cov_n + 1, sizeof *e);
    float **avg = calloc((size_t)cov_n + 1, sizeof *avg);
    int rc = e && avg ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < cov_n && rc == PEFT_OK; i++) {
        const cov_entry *c = &cov_store[i];
        size_t nn = (size_t)c->in * c->in;
        if (!(avg[i] = malloc(nn * sizeof(float)))) {
            rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
            break;
        }
        for (size_t j = 0; j < nn; j++) avg[i][j] = c->count ? c->C[j] / (float)c->count : 0.0f;
        e[i] = (peft_st_entry){.name = c->name, .dtype = PEFT_F32, .ndim = 2, .shape = {c->in, c->in}, .data = avg[i]};
    }
    if (rc == PEFT_OK) rc = peft_st_write(path, e, cov_n, NULL, 0, err);
    for (int i = 0; avg && i < cov_n; i++) free(avg[i]);
    free(avg), free(e);
    return rc;
}

/* The site's averaged covariance into C [in, in]: the store, else PEFT_CORDA_COVARIANCE's
 * file, else the identity. */
static int corda_covariance(const peft_site *s, float *C, peft_err *err) {
    int in = s->in_features;
    const cov_entry *e = cov_find(s->name);
    const char *env = getenv("PEFT_CORDA_COVARIANCE");
    if (!e && env && *env && !cov_env_tried) {
        cov_env_tried = 1;
        int rc = corda_covariance_load(env, err);
        if (rc) return peft_err_prefix(err, "PEFT_CORDA_COVARIANCE");
        e = cov_find(s->name);
    }
    if (e && e->in != in)
        return peft_fail(err, PEFT_ESHAPE, "%s: CorDA covariance is [%d, %d], the site has %d inputs", s->name, e->in, e->in, in);
    if (e && e->count > 0) {
        for (size_t j = 0; j < (size_t)in * in; j++) C[j] = e->C[j] / (float)e->count;
        return PEFT_OK;
    }
    memset(C, 0, (size_t)in * in * sizeof(float));
    for (int i = 0; i < in; i++) C[(size_t)i * in + i] = 1.0f;
    return PEFT_OK;
}

/* ---- decomposition ------------------------------------------------------------------ */

/* U [out, k], S [k], Vt [k, in] (k = min(out, in)) with W = U diag(S) Vt, in double: the
 * SVD of W (PiSSA) or PEFT's collect_eigens_for_layer (CorDA): C_fix = C + damp * mean(diag C)
 * * I, damp = 0.01 doubled until |C_fix C_fix^-1 - I|_F < 0.05, SVD of W C_fix = U S Vh and
 * Vt = Vh C_fix^-1. */
static int decompose(const pissa_adapter *a, const peft_site *s, double *U, double *S, double *Vt, peft_err *err) {
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
    float *Cs = malloc(nn * sizeof(float));
    double *Cf = malloc(nn * sizeof(double)), *Ci = malloc(nn * sizeof(double)), *P = malloc(nn * sizeof(double)),
           *WC = malloc(nw * sizeof(double)), *Vh = malloc((size_t)k * in * sizeof(double));
    rc = Cs && Cf && Ci && P && WC && Vh ? corda_covariance(s, Cs, err) : peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
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
    free(W), free(Cs), free(Cf), free(Ci), free(P), free(WC), free(Vh);
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
    rc = U && S && Vt && a->A0 && a->W_orig ? decompose(a, s, U, S, Vt, err) : peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
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
