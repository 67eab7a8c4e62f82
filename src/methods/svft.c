/* svft.c: singular-value tuning (svft.h) on the adapter interface.
 *
 * Forward (N rows):   xd = dropout(x)            [N, in]
 *                     t  = xd Vt^T               [N, k]    saved for backward
 *                     y += (t * dS) U^T          [N, out]
 * Backward:           g   = dy U                 [N, k]
 *                     ddS += sum_n g * t
 *                     dx  += mask * ((g * dS) Vt)
 * Merge: W += U diag(dS) Vt (unmerge subtracts). U and Vt are frozen and recomputed from the
 * base weight at create (a load re-derives them; the product U diag(dS) Vt does not depend on
 * the SVD's sign choices, so a file is portable across SVD implementations). */
#include "svft.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "kernels/linalg.h"
#include "methods/dropout.h"

typedef struct svft_adapter {
    peft_adapter base;
    int k, in, out;
    float dropout;
    float *U, *Vt;     /* [out, k], [k, in] frozen */
    float *ds, *dds;   /* [k] trained shift of the singular values, its gradient */
    float *t;          /* [max_rows, k] saved by a training forward */
    int max_rows;
    uint64_t site_hash;
} svft_adapter;

static const float *apply_dropout(const svft_adapter *a, const float *x, float *buf, int N) {
    if (!(a->base.training && a->dropout > 0.0f)) return x;
    peft_dropout_apply(buf, x, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, 0);
    return buf;
}

static int svft_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    if (!s->weight) return peft_fail(err, PEFT_EINVAL, "%s: svft needs the base weights (the model was loaded without them)", s->name);
    if (o->dropout < 0 || o->dropout >= 1) return peft_fail(err, PEFT_EINVAL, "svft dropout %g must be in [0, 1)", o->dropout);
    svft_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_svft;
    a->in = s->in_features, a->out = s->out_features;
    a->k = a->in < a->out ? a->in : a->out;
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t k = (size_t)a->k;
    a->U = calloc(k * ((size_t)a->out + a->in + 2) + (size_t)max_rows * k, sizeof(float));
    float *S = malloc(k * sizeof(float));
    if (!a->U || !S) {
        free(a->U), free(a), free(S);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate svft's singular vectors", s->name);
    }
    a->Vt = a->U + k * a->out;
    a->ds = a->Vt + k * a->in;
    a->dds = a->ds + k;
    a->t = a->dds + k;
    int info = svd_f32(s->weight, a->out, a->in, a->U, S, a->Vt);
    free(S);
    if (info) {
        free(a->U), free(a);
        return peft_fail(err, info < 0 ? PEFT_ENOMEM : PEFT_EINVAL, "%s: SVD failed (%d)", s->name, info);
    }
    *out = &a->base;
    return PEFT_OK;
}

static void svft_destroy(peft_adapter *base) {
    svft_adapter *a = (svft_adapter *)base;
    if (!a) return;
    free(a->U);
    free(a);
}

static size_t svft_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const svft_adapter *a = (const svft_adapter *)base;
    return (size_t)N * (2 * (size_t)a->in + 2 * (size_t)a->k);
}

static void svft_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    svft_adapter *a = (svft_adapter *)base;
    int k = a->k;
    float *xd_buf = a->base.work, *u = xd_buf + (size_t)N * a->in, *t = save ? a->t : u + (size_t)N * k;
    const float *xd = apply_dropout(a, x, xd_buf, N);
    matmul_forward(t, xd, a->Vt, NULL, N, a->in, k); /* t = xd Vt^T */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) u[(size_t)n * k + j] = t[(size_t)n * k + j] * a->ds[j];
    gemm_acc(y, u, a->U, N, a->out, k, 0, 1, 1.0f); /* y += u U^T */
}

static void svft_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    svft_adapter *a = (svft_adapter *)base;
    int k = a->k;
    float *dxd = a->base.work, *g = dxd + (size_t)N * a->in;
    memset(g, 0, (size_t)N * k * sizeof(float));
    gemm_acc(g, dy, a->U, N, k, a->out, 0, 0, 1.0f); /* g = dy U */
    for (int j = 0; j < k; j++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)g[(size_t)n * k + j] * a->t[(size_t)n * k + j];
        a->dds[j] += (float)acc;
    }
    if (!dx) return;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < k; j++) g[(size_t)n * k + j] *= a->ds[j];
    if (!(a->base.training && a->dropout > 0.0f)) {
        gemm_acc(dx, g, a->Vt, N, a->in, k, 0, 0, 1.0f); /* dx += (g * dS) Vt */
        return;
    }
    memset(dxd, 0, (size_t)N * a->in * sizeof(float));
    gemm_acc(dxd, g, a->Vt, N, a->in, k, 0, 0, 1.0f);
    peft_dropout_apply(dx, dxd, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, 1);
}

static int svft_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    svft_adapter *a = (svft_adapter *)base;
    float *Us = malloc((size_t)a->out * a->k * sizeof(float));
    if (!Us) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    for (int o = 0; o < a->out; o++)
        for (int j = 0; j < a->k; j++) Us[(size_t)o * a->k + j] = a->U[(size_t)o * a->k + j] * a->ds[j];
    gemm_acc(s->weight, Us, a->Vt, a->out, a->in, a->k, 0, 0, (float)sign); /* W += +-U diag(dS) Vt */
    free(Us);
    return PEFT_OK;
}

static int svft_params(peft_adapter *base, peft_param *out, int max) {
    svft_adapter *a = (svft_adapter *)base;
    if (max >= 1)
        out[0] = (peft_param){.name = "svft_delta_s", .data = a->ds, .grad = a->dds, .numel = (size_t)a->k, .ndim = 1,
                              .shape = {a->k}, .lr_scale = 1.0f};
    return 1;
}

static void svft_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON_AddBoolToObject(obj, "init_weights", 1);
    cJSON_AddNumberToObject(obj, "svft_dropout", o->dropout);
}

static int svft_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return peft_json_double(obj, "svft_dropout", 0, &o->dropout, what, err);
}

const peft_method peft_method_svft = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "svft",
    .forward_replaces_base = 0,
    .create = svft_create,
    .destroy = svft_destroy,
    .forward = svft_forward,
    .backward = svft_backward,
    .merge = svft_merge,
    .params = svft_params,
    .work_floats = svft_work_floats,
    .peft_type = "SVFT",
    .config_write = svft_config_write,
    .config_read = svft_config_read,
};
