/* dora.c: the DoRA method on the adapter interface (an additive term on top of the base).
 *
 * Forward (N rows):   xd  = dropout(x)                    [N, in]
 *                     ax  = xd A^T                        [N, r]    saved for backward
 *                     n   = ||W + s B A||_row, f = m / n  [out]     kept for backward
 *                     bx  = xd W^T  (= y - b without dropout)
 *                     y  += (f - 1) * bx + f * s * ax B^T
 * Backward (n is a constant, as PEFT detaches it):
 *                     v   = xd W^T + s ax B^T             [N, out]  recomputed (no N x out saved)
 *                     dm += sum_n dy * v / n
 *                     g   = f * dy
 *                     dB += s g^T ax,  ga = s g B,  dA += ga^T xd
 *                     dx += mask * (((f - 1) * dy) W + ga A)     (the site adds dy W)
 * Merge:  W' = f * (W + s B A) with f = m / ||W + s B A||, kept so unmerge divides it out
 * exactly: W = W' / f - s B A. */
#include "dora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"

typedef struct dora_adapter {
    peft_adapter base;
    int r, in, out;
    float scale, dropout;
    float *A, *B, *m;    /* [r, in], [out, r], [out] */
    float *dA, *dB, *dm; /* same shapes */
    float *ax;           /* [max_rows, r] saved by a training forward */
    float *norm, *f;     /* [out] ||W + s B A||_row and m / norm of the last forward */
    float *merged_f;     /* [out] the factor a merge applied (for unmerge) */
    int merged;
    int max_rows;
    uint64_t site_hash;
} dora_adapter;

static int dropout_active(const dora_adapter *a) { return a->base.training && a->dropout > 0.0f; }

static void dropout_apply(const dora_adapter *a, float *out, const float *in, int N, int accumulate) {
    peft_dropout_apply(out, in, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, accumulate);
}

/* norm[o] = ||W_o + s (B A)_o|| using v[out, in] as scratch. */
static void weight_norm(const dora_adapter *a, const float *W, float *v, float *norm) {
    size_t n = (size_t)a->out * a->in;
    memcpy(v, W, n * sizeof(float));
    gemm_acc(v, a->B, a->A, a->out, a->in, a->r, 0, 0, a->scale);
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        const float *row = v + (size_t)o * a->in;
        double ss = 0;
        for (int i = 0; i < a->in; i++) ss += (double)row[i] * row[i];
        norm[o] = (float)sqrt(ss);
    }
}

static int dora_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    int invalid = lowrank_check_opts(o, s, "DoRA", err);
    if (invalid) return invalid;
    dora_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_dora;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r, no = (size_t)a->out;
    a->A = calloc(2 * (nA + nB + no) + (size_t)max_rows * a->r + 3 * no, sizeof(float));
    if (!a->A) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate DoRA weights", s->name);
    }
    a->B = a->A + nA;
    a->m = a->B + nB;
    a->dA = a->m + no;
    a->dB = a->dA + nA;
    a->dm = a->dB + nB;
    a->ax = a->dm + no;
    a->norm = a->ax + (size_t)max_rows * a->r;
    a->f = a->norm + no;
    a->merged_f = a->f + no;
    lora_init_A(a->A, a->r, a->in, o, a->site_hash); /* B = 0 */
    /* m = ||W + s B A||_row = ||W||_row since B = 0. A shapes-only model (no weights) gets
     * m = 0: such a model only ever loads m from a file. */
    if (s->weight)
        for (int r = 0; r < a->out; r++) {
            double ss = 0;
            for (int i = 0; i < a->in; i++) ss += (double)s->weight[(size_t)r * a->in + i] * s->weight[(size_t)r * a->in + i];
            a->m[r] = (float)sqrt(ss);
        }
    *out = &a->base;
    return PEFT_OK;
}

static void dora_destroy(peft_adapter *base) {
    dora_adapter *a = (dora_adapter *)base;
    if (!a) return;
    free(a->A);
    free(a);
}

static size_t dora_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const dora_adapter *a = (const dora_adapter *)base;
    size_t fwd = (size_t)a->out * a->in + (size_t)N * (a->in + a->r + 2 * (size_t)a->out);
    size_t bwd = (size_t)N * (2 * (size_t)a->in + 2 * (size_t)a->out + a->r);
    return fwd > bwd ? fwd : bwd;
}

static void dora_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    dora_adapter *a = (dora_adapter *)base;
    int drop = dropout_active(a);
    float *v = a->base.work;                              /* [out, in] */
    float *xd_buf = v + (size_t)a->out * a->in;           /* [N, in] */
    float *lb = xd_buf + (size_t)N * a->in;               /* [N, out] s * ax B^T */
    float *bx = lb + (size_t)N * a->out;                  /* [N, out] xd W^T (dropout only) */
    float *ax = save ? a->ax : bx + (size_t)N * a->out;   /* [N, r] */
    const float *xd = x;
    if (drop) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
        matmul_forward(bx, xd, s->weight, NULL, N, a->in, a->out);
    }
    weight_norm(a, s->weight, v, a->norm);
    for (int o = 0; o < a->out; o++) a->f[o] = a->m[o] / a->norm[o];
    matmul_forward(ax, xd, a->A, NULL, N, a->in, a->r);          /* ax = xd A^T */
    memset(lb, 0, (size_t)N * a->out * sizeof(float));
    gemm_acc(lb, ax, a->B, N, a->out, a->r, 0, 1, a->scale);     /* lb = s ax B^T */
    const float *f = a->f, *bias = s->bias;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *yr = y + (size_t)n * a->out;
        const float *lr = lb + (size_t)n * a->out, *br = bx + (size_t)n * a->out;
        for (int o = 0; o < a->out; o++) {
            float b0 = drop ? br[o] : yr[o] - (bias ? bias[o] : 0.0f);
            yr[o] += (f[o] - 1.0f) * b0 + f[o] * lr[o];
        }
    }
}

static void dora_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    dora_adapter *a = (dora_adapter *)base;
    int drop = dropout_active(a);
    float *xd_buf = a->base.work;                 /* [N, in] */
    float *h = xd_buf + (size_t)N * a->in;        /* [N, in] */
    float *v = h + (size_t)N * a->in;             /* [N, out] v, then (f - 1) dy */
    float *g = v + (size_t)N * a->out;            /* [N, out] f dy */
    float *ga = g + (size_t)N * a->out;           /* [N, r] */
    const float *xd = x;
    if (drop) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
    }
    matmul_forward(v, xd, s->weight, NULL, N, a->in, a->out);    /* v = xd W^T + s ax B^T */
    gemm_acc(v, a->ax, a->B, N, a->out, a->r, 0, 1, a->scale);
    const float *f = a->f, *norm = a->norm;
    float *dm = a->dm;
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)dy[(size_t)n * a->out + o] * v[(size_t)n * a->out + o];
        dm[o] += (float)(acc / norm[o]);
    }
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) {
            size_t i = (size_t)n * a->out + o;
            g[i] = f[o] * dy[i];
            v[i] = (f[o] - 1.0f) * dy[i];
        }
    gemm_acc(a->dB, g, a->ax, a->out, a->r, N, 1, 0, a->scale);  /* dB += s g^T ax */
    memset(ga, 0, (size_t)N * a->r * sizeof(float));
    gemm_acc(ga, g, a->B, N, a->r, a->out, 0, 0, a->scale);      /* ga = s g B */
    gemm_acc(a->dA, ga, xd, a->r, a->in, N, 1, 0, 1.0f);         /* dA += ga^T xd */
    if (!dx) return;
    float *hx = drop ? h : dx;
    if (drop) memset(h, 0, (size_t)N * a->in * sizeof(float));
    gemm_acc(hx, v, s->weight, N, a->in, a->out, 0, 0, 1.0f);   /* += ((f - 1) dy) W */
    gemm_acc(hx, ga, a->A, N, a->in, a->r, 0, 0, 1.0f);         /* += ga A */
    if (drop) dropout_apply(a, dx, h, N, 1);
}

static int dora_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    dora_adapter *a = (dora_adapter *)base;
    size_t in = (size_t)a->in;
    if (sign > 0) {
        if (a->merged) return peft_fail(err, PEFT_EINVAL, "%s: DoRA adapter is already merged", s->name);
        gemm_acc(s->weight, a->B, a->A, a->out, a->in, a->r, 0, 0, a->scale); /* W + s B A */
        for (int o = 0; o < a->out; o++) {
            float *row = s->weight + o * in;
            double ss = 0;
            for (size_t i = 0; i < in; i++) ss += (double)row[i] * row[i];
            float fo = a->m[o] / (float)sqrt(ss);
            a->merged_f[o] = fo;
            for (size_t i = 0; i < in; i++) row[i] *= fo;
        }
        a->merged = 1;
        return PEFT_OK;
    }
    if (!a->merged) return peft_fail(err, PEFT_EINVAL, "%s: DoRA adapter is not merged", s->name);
    for (int o = 0; o < a->out; o++)
        if (!(a->merged_f[o] != 0.0f) || !isfinite(a->merged_f[o]))
            return peft_fail(err, PEFT_EINVAL, "%s: row %d was merged with factor %g and cannot be unmerged", s->name, o,
                             a->merged_f[o]);
    for (int o = 0; o < a->out; o++) {
        float *row = s->weight + o * in;
        for (size_t i = 0; i < in; i++) row[i] /= a->merged_f[o];
    }
    gemm_acc(s->weight, a->B, a->A, a->out, a->in, a->r, 0, 0, -a->scale);
    a->merged = 0;
    return PEFT_OK;
}

static int dora_params(peft_adapter *base, peft_param *out, int max) {
    dora_adapter *a = (dora_adapter *)base;
    if (max >= 3) {
        out[0] = (peft_param){.name = "lora_A.weight", .data = a->A, .grad = a->dA, .numel = (size_t)a->r * a->in,
                              .ndim = 2, .shape = {a->r, a->in}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "lora_B.weight", .data = a->B, .grad = a->dB, .numel = (size_t)a->out * a->r,
                              .ndim = 2, .shape = {a->out, a->r}, .lr_scale = 1.0f};
        /* PEFT saves the magnitude under "lora_magnitude_vector" (it strips ".weight"), shape [out]. */
        out[2] = (peft_param){.name = "lora_magnitude_vector", .data = a->m, .grad = a->dm, .numel = (size_t)a->out,
                              .ndim = 1, .shape = {a->out}, .lr_scale = 1.0f};
    }
    return 3;
}

static void dora_config_write(const peft_method_opts *o, cJSON *obj) {
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_dora", 1);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int dora_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return lora_config_read_common(obj, o, 1, what, err);
}

const peft_method peft_method_dora = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "dora",
    .forward_replaces_base = 0,
    .reads_base = 1,
    .create = dora_create,
    .destroy = dora_destroy,
    .forward = dora_forward,
    .backward = dora_backward,
    .merge = dora_merge,
    .params = dora_params,
    .work_floats = dora_work_floats,
    .peft_type = "LORA",
    .config_write = dora_config_write,
    .config_read = dora_config_read,
};
