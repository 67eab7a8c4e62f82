/* hut.c: the HUT method on the adapter interface (see hut.h for the formula).
 *
 * With M = W ⊙ (B A) [out, in] formed per call in the scratch (as DoRA forms W + s B A):
 * Forward (N rows):   xd = dropout(x)                   [N, in]
 *                     y += s * xd M^T                   [N, out]
 * Backward:           P   = (s * dy^T xd) ⊙ W           [out, in]   (dM ⊙ W)
 *                     dB += P A^T,  dA += B^T P
 *                     dx += mask * (s * dy M)
 * Nothing is saved between forward and backward: backward rebuilds M and xd from x.
 * Cost: out * in * (r + N) flops per call, like one extra dense layer; no N x r activation. */
#include "hut.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"

typedef struct hut_adapter {
    peft_adapter base;
    int r, in, out;
    float scale, dropout;
    float *A, *B;   /* [r, in], [out, r] */
    float *dA, *dB; /* same shapes */
    uint64_t site_hash;
} hut_adapter;

static int dropout_active(const hut_adapter *a) { return a->base.training && a->dropout > 0.0f; }

static void dropout_apply(const hut_adapter *a, float *out, const float *in, int N, int accumulate) {
    peft_dropout_apply(out, in, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, accumulate);
}

/* M[out, in] = W ⊙ (B A). */
static void hadamard_delta(const hut_adapter *a, const float *W, float *M) {
    size_t n = (size_t)a->out * a->in;
    memset(M, 0, n * sizeof(float));
    gemm_acc(M, a->B, a->A, a->out, a->in, a->r, 0, 0, 1.0f);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) M[i] *= W[i];
}

static int hut_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    (void)max_rows;
    int invalid = lowrank_check_opts(o, s, "HUT", err);
    if (invalid) return invalid;
    hut_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_hut;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->site_hash = peft_site_hash(s->name);
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    a->A = calloc(2 * (nA + nB), sizeof(float));
    if (!a->A) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate HUT weights", s->name);
    }
    a->B = a->A + nA;
    a->dA = a->B + nB;
    a->dB = a->dA + nA;
    lora_init_A(a->A, a->r, a->in, o, a->site_hash);
    *out = &a->base;
    return PEFT_OK;
}

static void hut_destroy(peft_adapter *base) {
    hut_adapter *a = (hut_adapter *)base;
    if (!a) return;
    free(a->A);
    free(a);
}

static size_t hut_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const hut_adapter *a = (const hut_adapter *)base;
    (void)s;
    return 2 * (size_t)a->out * a->in + 2 * (size_t)N * a->in;
}

static void hut_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    hut_adapter *a = (hut_adapter *)base;
    (void)save;
    float *M = a->base.work, *xd_buf = M + (size_t)a->out * a->in;
    const float *xd = x;
    if (dropout_active(a)) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
    }
    hadamard_delta(a, s->weight, M);
    gemm_acc(y, xd, M, N, a->out, a->in, 0, 1, a->scale); /* y += s * xd M^T */
}

static void hut_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    hut_adapter *a = (hut_adapter *)base;
    size_t n = (size_t)a->out * a->in;
    float *P = a->base.work, *M = P + n, *xd_buf = M + n, *dxd = xd_buf + (size_t)N * a->in;
    const float *xd = x, *W = s->weight;
    if (dropout_active(a)) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
    }
    memset(P, 0, n * sizeof(float));
    gemm_acc(P, dy, xd, a->out, a->in, N, 1, 0, a->scale); /* P = s dy^T xd */
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) P[i] *= W[i];
    gemm_acc(a->dB, P, a->A, a->out, a->r, a->in, 0, 1, 1.0f); /* dB += P A^T */
    gemm_acc(a->dA, a->B, P, a->r, a->in, a->out, 1, 0, 1.0f); /* dA += B^T P */
    if (!dx) return;
    hadamard_delta(a, W, M);
    if (xd == x) {
        gemm_acc(dx, dy, M, N, a->in, a->out, 0, 0, a->scale); /* dx += s dy M */
        return;
    }
    memset(dxd, 0, (size_t)N * a->in * sizeof(float));
    gemm_acc(dxd, dy, M, N, a->in, a->out, 0, 0, a->scale);
    dropout_apply(a, dx, dxd, N, 1);
}

/* W' = W ⊙ (1 + s B A); unmerge divides by the same factor (refused where it is 0). */
static int hut_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    hut_adapter *a = (hut_adapter *)base;
    size_t n = (size_t)a->out * a->in;
    float *D = calloc(n, sizeof(float));
    if (!D) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    gemm_acc(D, a->B, a->A, a->out, a->in, a->r, 0, 0, 1.0f);
    for (size_t i = 0; i < n; i++) D[i] = 1.0f + a->scale * D[i];
    if (sign < 0)
        for (size_t i = 0; i < n; i++)
            if (D[i] == 0.0f) {
                free(D);
                return peft_fail(err, PEFT_EINVAL, "%s: 1 + s (B A) is 0 at [%zu, %zu], the merge cannot be undone", s->name,
                                 i / a->in, i % a->in);
            }
    for (size_t i = 0; i < n; i++) s->weight[i] = sign > 0 ? s->weight[i] * D[i] : s->weight[i] / D[i];
    free(D);
    return PEFT_OK;
}

static int hut_params(peft_adapter *base, peft_param *out, int max) {
    hut_adapter *a = (hut_adapter *)base;
    if (max >= 2) {
        out[0] = (peft_param){.name = "hut_A.weight", .data = a->A, .grad = a->dA, .numel = (size_t)a->r * a->in, .ndim = 2,
                              .shape = {a->r, a->in}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "hut_B.weight", .data = a->B, .grad = a->dB, .numel = (size_t)a->out * a->r, .ndim = 2,
                              .shape = {a->out, a->r}, .lr_scale = 1.0f};
    }
    return 2;
}

/* LoRA's field names for the low-rank options (r, lora_alpha, lora_dropout, use_rslora,
 * init_lora_weights), so lora_config_read_common reads them back. */
static void hut_config_write(const peft_method_opts *o, cJSON *obj) {
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int hut_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return lora_config_read_common(obj, o, 0, what, err);
}

const peft_method peft_method_hut = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "hut",
    .forward_replaces_base = 0,
    .reads_base = 1,
    .create = hut_create,
    .destroy = hut_destroy,
    .forward = hut_forward,
    .backward = hut_backward,
    .merge = hut_merge,
    .params = hut_params,
    .work_floats = hut_work_floats,
    .peft_type = "HUT",
    .config_write = hut_config_write,
    .config_read = hut_config_read,
};
