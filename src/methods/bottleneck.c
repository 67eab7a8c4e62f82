/* bottleneck.c: the sequential (Houlsby) and parallel (He et al.) bottleneck adapters.
 * One implementation; `seq` selects where the bottleneck reads (see bottleneck.h).
 *
 * Forward (N rows):   z  = seq ? (x W^T + b) : x       [N, dim]   (seq computes the base itself)
 *                     zd = dropout(z)
 *                     h  = zd D^T + d                  [N, r]     saved for backward
 *                     y += s * (act(h) U^T + u)
 * Backward:           g   = s dy                       (folded into the gemm alphas)
 *                     dU += s dy^T act(h),  du += s sum_n dy
 *                     dh  = (s dy U) * act'(h)         [N, r]   (act: SiLU for seq, ReLU for par)
 *                     z recomputed (seq: x W^T + b; no N x out saved per site), zd = dropout(z)
 *                     dD += dh^T zd,  dd += sum_n dh
 *                     dz  = mask * (dh D)
 *                     par: dx += dz               seq: dx += (dy + dz) W   (the method owns dx) */
#include "bottleneck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"

typedef struct bottleneck_adapter {
    peft_adapter base;
    int seq;             /* 1: on the output (Houlsby), 0: parallel on the input (He et al.) */
    int r, in, out, dim; /* dim: the bottleneck's input width (out for seq, in for par) */
    float scale, dropout;
    float *D, *d, *U, *u;     /* [r, dim], [r], [out, r], [out] */
    float *dD, *dd, *dU, *du; /* same shapes */
    float *h;                 /* [max_rows, r] pre-activations saved by a training forward */
    int max_rows;
    uint64_t site_hash;
} bottleneck_adapter;

/* act(h): SiLU ("swish", Houlsby's adapter) or ReLU (the parallel adapter). */
static void activate(const bottleneck_adapter *a, float *act, const float *h, size_t n) {
    if (a->seq)
        for (size_t i = 0; i < n; i++) act[i] = h[i] / (1.0f + expf(-h[i]));
    else
        for (size_t i = 0; i < n; i++) act[i] = h[i] > 0.0f ? h[i] : 0.0f;
}

/* dh *= act'(h). */
static void activate_backward(const bottleneck_adapter *a, float *dh, const float *h, size_t n) {
    if (a->seq)
        for (size_t i = 0; i < n; i++) {
            float sg = 1.0f / (1.0f + expf(-h[i]));
            dh[i] *= sg * (1.0f + h[i] * (1.0f - sg));
        }
    else
        for (size_t i = 0; i < n; i++)
            if (!(h[i] > 0.0f)) dh[i] = 0.0f;
}

static const char *act_name(int seq) { return seq ? "swish" : "relu"; }

static int dropout_active(const bottleneck_adapter *a) { return a->base.training && a->dropout > 0.0f; }

static void dropout_apply(const bottleneck_adapter *a, float *out, const float *in, int N, int accumulate) {
    peft_dropout_apply(out, in, (size_t)N * a->dim, a->dropout, a->base.step_seed, a->site_hash, accumulate);
}

static int bottleneck_create_(const peft_method *m, int seq, const peft_method_opts *o, const peft_site *s, int max_rows,
                              peft_adapter **out, peft_err *err) {
    int dim = seq ? s->out_features : s->in_features;
    if (o->rank < 1 || o->rank > 65536)
        return peft_fail(err, PEFT_EINVAL, "%s: %s bottleneck width r %d must be in [1, 65536]", s->name, m->name, o->rank);
    if (o->dropout < 0 || o->dropout >= 1) return peft_fail(err, PEFT_EINVAL, "%s dropout %g must be in [0, 1)", m->name, o->dropout);
    bottleneck_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = m;
    a->seq = seq;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->dim = dim;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t r = (size_t)a->r, nD = r * dim, nU = (size_t)a->out * r, no = (size_t)a->out;
    a->D = calloc(2 * (nD + r + nU + no) + (size_t)max_rows * r, sizeof(float));
    if (!a->D) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate the adapter's weights", s->name);
    }
    a->d = a->D + nD;
    a->U = a->d + r;
    a->u = a->U + nU;
    a->dD = a->u + no;
    a->dd = a->dD + nD;
    a->dU = a->dd + r;
    a->du = a->dU + nU;
    a->h = a->du + no;
    lora_init_A(a->D, a->r, dim, o, a->site_hash);
    *out = &a->base;
    return PEFT_OK;
}

static int seq_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    return bottleneck_create_(&peft_method_adapter_seq, 1, o, s, max_rows, out, err);
}

static int par_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    return bottleneck_create_(&peft_method_adapter_par, 0, o, s, max_rows, out, err);
}

static void bottleneck_destroy(peft_adapter *base) {
    bottleneck_adapter *a = (bottleneck_adapter *)base;
    if (!a) return;
    free(a->D);
    free(a);
}

static size_t bottleneck_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const bottleneck_adapter *a = (const bottleneck_adapter *)base;
    (void)s;
    return (size_t)N * (3 * (size_t)a->dim + 2 * (size_t)a->r);
}

/* zd[N, dim] = dropout(z), or z itself. */
static const float *apply_dropout(const bottleneck_adapter *a, const float *z, float *buf, int N) {
    if (!dropout_active(a)) return z;
    dropout_apply(a, buf, z, N, 0);
    return buf;
}

static void bottleneck_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    bottleneck_adapter *a = (bottleneck_adapter *)base;
    size_t Nr = (size_t)N * a->r;
    float *zd_buf = a->base.work, *act = zd_buf + (size_t)N * a->dim, *h = save ? a->h : act + Nr;
    if (a->seq) matmul_forward(y, x, s->weight, s->bias, N, a->in, a->out); /* the base: y = x W^T + b */
    const float *zd = apply_dropout(a, a->seq ? y : x, zd_buf, N);
    matmul_forward(h, zd, a->D, a->d, N, a->dim, a->r); /* h = zd D^T + d */
    activate(a, act, h, Nr);
    gemm_acc(y, act, a->U, N, a->out, a->r, 0, 1, a->scale); /* y += s act U^T */
    const float *u = a->u;
    float sc = a->scale;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) y[(size_t)n * a->out + o] += sc * u[o];
}

static void bottleneck_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    bottleneck_adapter *a = (bottleneck_adapter *)base;
    size_t Nr = (size_t)N * a->r, Ndim = (size_t)N * a->dim;
    float *z = a->base.work, *zd_buf = z + Ndim, *dz = zd_buf + Ndim, *act = dz + Ndim, *dh = act + Nr;
    const float *h = a->h;
    float sc = a->scale;
    activate(a, act, h, Nr);
    gemm_acc(a->dU, dy, act, a->out, a->r, N, 1, 0, sc); /* dU += s dy^T act */
    float *du = a->du;
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += dy[(size_t)n * a->out + o];
        du[o] += sc * (float)acc;
    }
    memset(dh, 0, Nr * sizeof(float));
    gemm_acc(dh, dy, a->U, N, a->r, a->out, 0, 0, sc); /* dh = s dy U ... */
    activate_backward(a, dh, h, Nr);                   /* ... * act'(h) */
    for (int k = 0; k < a->r; k++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += dh[(size_t)n * a->r + k];
        a->dd[k] += (float)acc;
    }
    const float *zsrc = x;
    if (a->seq) {
        matmul_forward(z, x, s->weight, s->bias, N, a->in, a->out); /* the base output, recomputed */
        zsrc = z;
    }
    const float *zd = apply_dropout(a, zsrc, zd_buf, N);
    gemm_acc(a->dD, dh, zd, a->r, a->dim, N, 1, 0, 1.0f); /* dD += dh^T zd */
    if (!dx && !a->seq) return;
    /* dz[N, dim] = mask * (dh D), plus dy itself for the sequential adapter's residual */
    float *g = dz;
    if (a->seq) memcpy(g, dy, (size_t)N * a->out * sizeof(float));
    else memset(g, 0, Ndim * sizeof(float));
    if (!dropout_active(a)) {
        gemm_acc(g, dh, a->D, N, a->dim, a->r, 0, 0, 1.0f);
    } else {
        memset(zd_buf, 0, Ndim * sizeof(float));
        gemm_acc(zd_buf, dh, a->D, N, a->dim, a->r, 0, 0, 1.0f);
        dropout_apply(a, g, zd_buf, N, 1);
    }
    if (!dx) return;
    if (a->seq) matmul_backward(dx, NULL, NULL, g, x, s->weight, N, a->in, a->out); /* dx += (dy + dz) W */
    else add_inplace(dx, g, Ndim);
}

static int bottleneck_params(peft_adapter *base, peft_param *out, int max) {
    bottleneck_adapter *a = (bottleneck_adapter *)base;
    if (max >= 4) {
        out[0] = (peft_param){.name = "adapter_down.weight", .data = a->D, .grad = a->dD, .numel = (size_t)a->r * a->dim,
                              .ndim = 2, .shape = {a->r, a->dim}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "adapter_down.bias", .data = a->d, .grad = a->dd, .numel = (size_t)a->r, .ndim = 1,
                              .shape = {a->r}, .lr_scale = 1.0f};
        out[2] = (peft_param){.name = "adapter_up.weight", .data = a->U, .grad = a->dU, .numel = (size_t)a->out * a->r,
                              .ndim = 2, .shape = {a->out, a->r}, .lr_scale = 1.0f};
        out[3] = (peft_param){.name = "adapter_up.bias", .data = a->u, .grad = a->du, .numel = (size_t)a->out, .ndim = 1,
                              .shape = {a->out}, .lr_scale = 1.0f};
    }
    return 4;
}

static void config_write_(int seq, const peft_method_opts *o, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "adapter_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "adapter_dropout", o->dropout);
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_weights", 1);
    cJSON_AddStringToObject(obj, "non_linearity", act_name(seq));
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int config_read_(int seq, const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long r = 8;
    int rc;
    const char *act = act_name(seq);
    if ((rc = peft_json_int(obj, "r", 0, &r, what, err)) || (rc = peft_json_double(obj, "adapter_alpha", 0, &o->alpha, what, err)) ||
        (rc = peft_json_double(obj, "adapter_dropout", 0, &o->dropout, what, err)) ||
        (rc = peft_json_bool(obj, "use_rslora", 0, &o->use_rslora, what, err)) ||
        (rc = peft_json_string(obj, "non_linearity", 0, &act, what, err)))
        return rc;
    if (r < 1 || r > 65536) return peft_fail(err, PEFT_EFORMAT, "%s: r = %lld is out of range", what, r);
    if (strcmp(act, act_name(seq)))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: non_linearity \"%s\" is not supported (peft.c's %s adapter uses %s)", what,
                         act, seq ? "sequential" : "parallel", act_name(seq));
    o->rank = (int)r;
    const cJSON *init = cJSON_GetObjectItemCaseSensitive(obj, "init_weights");
    o->init_gaussian = cJSON_IsString(init) && !strcmp(init->valuestring, "gaussian");
    return PEFT_OK;
}

static void seq_config_write(const peft_method_opts *o, cJSON *obj) { config_write_(1, o, obj); }
static void par_config_write(const peft_method_opts *o, cJSON *obj) { config_write_(0, o, obj); }

static int seq_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return config_read_(1, obj, o, what, err);
}

static int par_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return config_read_(0, obj, o, what, err);
}

const peft_method peft_method_adapter_seq = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "adapter_seq",
    .forward_replaces_base = 1,
    .reads_base = 1,
    .create = seq_create,
    .destroy = bottleneck_destroy,
    .forward = bottleneck_forward,
    .backward = bottleneck_backward,
    .merge = NULL,
    .params = bottleneck_params,
    .work_floats = bottleneck_work_floats,
    .peft_type = "ADAPTER_SEQ",
    .config_write = seq_config_write,
    .config_read = seq_config_read,
};

const peft_method peft_method_adapter_par = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "adapter_par",
    .forward_replaces_base = 0,
    .create = par_create,
    .destroy = bottleneck_destroy,
    .forward = bottleneck_forward,
    .backward = bottleneck_backward,
    .merge = NULL,
    .params = bottleneck_params,
    .work_floats = bottleneck_work_floats,
    .peft_type = "ADAPTER_PAR",
    .config_write = par_config_write,
    .config_read = par_config_read,
};
