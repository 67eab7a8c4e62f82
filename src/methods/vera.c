/* vera.c: the VeRA method on the adapter interface.
 *
 * Forward (N rows):   xd = dropout(x)                  [N, in]
 *                     t  = xd A_s^T                    [N, r]    saved for backward
 *                     z  = (t * ld) B_s^T              [N, out]
 *                     y += lb * z
 * Backward:           dlb += sum_n dy * z              (z recomputed from t)
 *                     du   = (dy * lb) B_s             [N, r]
 *                     dld += sum_n du * t
 *                     dx  += mask * ((du * ld) A_s)
 *
 * The shared bases: PEFT sizes them by the largest in/out features over all target sites
 * (_find_dim), which the set passes in opts.max_in / max_out. Without a set
 * (opts.shared == NULL) an adapter owns bases of its own site's size. A_s is packed into the
 * scratch when in < max_in (its rows are strided). */
#include "vera.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "rng.h"

typedef struct vera_adapter {
    peft_adapter base;
    int r, in, out;
    float dropout;
    float *lb, *ld;        /* [out], [r] */
    float *dlb, *dld;      /* same shapes */
    float *t;              /* [max_rows, r] saved by a training forward */
    int max_rows;
    uint64_t site_hash, seed;
    float *vA, *vB;        /* [r, max_in], [max_out, r] */
    int max_in, max_out;
    float *own;            /* standalone bases */
} vera_adapter;

static int dropout_active(const vera_adapter *a) { return a->base.training && a->dropout > 0.0f; }

static void dropout_apply(const vera_adapter *a, float *out, const float *in, int N, int accumulate) {
    peft_dropout_apply(out, in, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, accumulate);
}

/* PEFT's _kaiming_init: U(+-sqrt(6 / fan_in)), fan_in = the tensor's second dimension. */
static void kaiming_fill(float *x, size_t n, int fan_in, uint64_t seed, uint64_t stream) {
    peft_rng rng;
    peft_rng_seed(&rng, seed, stream);
    float bound = sqrtf(6.0f / (float)fan_in);
    for (size_t i = 0; i < n; i++) x[i] = bound * (2.0f * peft_rng_uniform(&rng) - 1.0f);
}

/* A_s = A[:, :in] as a contiguous [r, in] matrix: A itself, or packed into buf. */
static const float *slice_A(const vera_adapter *a, float *buf) {
    if (a->in == a->max_in) return a->vA;
    for (int k = 0; k < a->r; k++) memcpy(buf + (size_t)k * a->in, a->vA + (size_t)k * a->max_in, (size_t)a->in * sizeof(float));
    return buf;
}

static int vera_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    if (o->rank < 1 || o->rank > 65536) return peft_fail(err, PEFT_EINVAL, "%s: VeRA r %d must be in [1, 65536]", s->name, o->rank);
    if (o->dropout < 0 || o->dropout >= 1) return peft_fail(err, PEFT_EINVAL, "VeRA dropout %g must be in [0, 1)", o->dropout);
    vera_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_vera;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    a->seed = o->seed;
    size_t no = (size_t)a->out, nr = (size_t)a->r;
    a->lb = calloc(2 * (no + nr) + (size_t)max_rows * nr, sizeof(float));
    if (!a->lb) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate VeRA vectors", s->name);
    }
    a->ld = a->lb + no;
    a->dlb = a->ld + nr;
    a->dld = a->dlb + no;
    a->t = a->dld + nr;
    for (size_t k = 0; k < nr; k++) a->ld[k] = (float)o->init_scale; /* lambda_b = 0, lambda_d = d_initial */
    if (o->shared) {
        a->max_in = o->max_in;
        a->max_out = o->max_out;
        int64_t sa[2] = {a->r, a->max_in}, sb[2] = {a->max_out, a->r};
        int created_a, created_b;
        a->vA = peft_shared_tensor(o->shared, "base_model.vera_A", 2, sa, 0, 1, NULL, &created_a);
        a->vB = a->vA ? peft_shared_tensor(o->shared, "base_model.vera_B", 2, sb, 0, 1, NULL, &created_b) : NULL;
        if (!a->vA || !a->vB) {
            free(a->lb), free(a);
            return peft_fail(err, PEFT_EINVAL, "%s: VeRA's shared bases could not be had: r must be the same at every site (%d here), "
                             "or out of memory", s->name, o->rank);
        }
        if (created_a) kaiming_fill(a->vA, nr * a->max_in, a->max_in, a->seed, 0x7665726141ull);
        if (created_b) kaiming_fill(a->vB, (size_t)a->max_out * nr, a->r, a->seed, 0x7665726142ull);
    } else {
        a->max_in = a->in;
        a->max_out = a->out;
        a->own = malloc(nr * ((size_t)a->in + no) * sizeof(float));
        if (!a->own) {
            free(a->lb), free(a);
            return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate VeRA bases", s->name);
        }
        a->vA = a->own;
        a->vB = a->own + nr * a->in;
        kaiming_fill(a->vA, nr * a->in, a->in, a->seed, 0x7665726141ull);
        kaiming_fill(a->vB, no * nr, a->r, a->seed, 0x7665726142ull);
    }
    *out = &a->base;
    return PEFT_OK;
}

static void vera_destroy(peft_adapter *base) {
    vera_adapter *a = (vera_adapter *)base;
    if (!a) return;
    free(a->own);
    free(a->lb);
    free(a);
}

static size_t vera_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const vera_adapter *a = (const vera_adapter *)base;
    return (size_t)a->r * a->in + (size_t)N * (2 * (size_t)a->in + 3 * (size_t)a->r + a->out);
}

static void vera_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    vera_adapter *a = (vera_adapter *)base;
    size_t r = (size_t)a->r;
    float *As_buf = a->base.work, *xd_buf = As_buf + r * a->in, *t_buf = xd_buf + (size_t)N * a->in;
    float *u = t_buf + (size_t)N * r, *z = u + (size_t)N * r;
    float *t = save ? a->t : t_buf;
    const float *As = slice_A(a, As_buf), *xd = x;
    if (dropout_active(a)) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
    }
    matmul_forward(t, xd, As, NULL, N, a->in, a->r);       /* t = xd A_s^T */
    for (size_t i = 0; i < (size_t)N * r; i++) u[i] = t[i] * a->ld[i % r];
    matmul_forward(z, u, a->vB, NULL, N, a->r, a->out);   /* z = u B_s^T (B_s = first out rows) */
    const float *lb = a->lb;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) y[(size_t)n * a->out + o] += lb[o] * z[(size_t)n * a->out + o];
}

static void vera_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    vera_adapter *a = (vera_adapter *)base;
    size_t r = (size_t)a->r;
    float *As_buf = a->base.work, *h = As_buf + r * a->in, *u = h + (size_t)N * a->in;
    float *du = u + (size_t)N * r, *z = du + (size_t)N * r;
    const float *t = a->t, *ld = a->ld, *lb = a->lb;
    for (size_t i = 0; i < (size_t)N * r; i++) u[i] = t[i] * ld[i % r];
    matmul_forward(z, u, a->vB, NULL, N, a->r, a->out);
    float *dlb = a->dlb, *dld = a->dld;
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)dy[(size_t)n * a->out + o] * z[(size_t)n * a->out + o];
        dlb[o] += (float)acc;
    }
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) z[(size_t)n * a->out + o] = dy[(size_t)n * a->out + o] * lb[o];
    memset(du, 0, (size_t)N * r * sizeof(float));
    gemm_acc(du, z, a->vB, N, a->r, a->out, 0, 0, 1.0f);  /* du = (dy * lb) B_s */
    for (size_t k = 0; k < r; k++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)du[(size_t)n * r + k] * t[(size_t)n * r + k];
        dld[k] += (float)acc;
    }
    if (!dx) return;
    for (size_t i = 0; i < (size_t)N * r; i++) du[i] *= ld[i % r];
    const float *As = slice_A(a, As_buf);
    if (!dropout_active(a)) {
        gemm_acc(dx, du, As, N, a->in, a->r, 0, 0, 1.0f); /* dx += (du * ld) A_s */
        return;
    }
    memset(h, 0, (size_t)N * a->in * sizeof(float));
    gemm_acc(h, du, As, N, a->in, a->r, 0, 0, 1.0f);
    dropout_apply(a, dx, h, N, 1);
}

/* W += sign * (lb * B_s) (ld * A_s): PEFT's get_delta_weight. */
static int vera_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    vera_adapter *a = (vera_adapter *)base;
    size_t r = (size_t)a->r;
    float *buf = malloc(((size_t)a->out * r + r * a->in) * sizeof(float));
    if (!buf) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    float *Bl = buf, *As_buf = buf + (size_t)a->out * r;
    for (int o = 0; o < a->out; o++)
        for (size_t k = 0; k < r; k++) Bl[o * r + k] = a->lb[o] * a->vB[o * r + k] * a->ld[k];
    gemm_acc(s->weight, Bl, slice_A(a, As_buf), a->out, a->in, a->r, 0, 0, (float)sign);
    free(buf);
    return PEFT_OK;
}

static int vera_params(peft_adapter *base, peft_param *out, int max) {
    vera_adapter *a = (vera_adapter *)base;
    if (max >= 2) {
        out[0] = (peft_param){.name = "vera_lambda_b", .data = a->lb, .grad = a->dlb, .numel = (size_t)a->out, .ndim = 1,
                              .shape = {a->out}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "vera_lambda_d", .data = a->ld, .grad = a->dld, .numel = (size_t)a->r, .ndim = 1,
                              .shape = {a->r}, .lr_scale = 1.0f};
    }
    return 2;
}

static void vera_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "d_initial", o->init_scale);
    cJSON_AddBoolToObject(obj, "init_weights", 1);
    cJSON_AddNumberToObject(obj, "projection_prng_key", (double)o->seed);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "save_projection", 1);
    cJSON_AddNumberToObject(obj, "vera_dropout", o->dropout);
}

static int vera_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long r = 256, key = 0;
    int save = 1, rc;
    o->init_scale = 0.1;
    o->dropout = 0.0;
    if ((rc = peft_json_int(obj, "r", 0, &r, what, err)) || (rc = peft_json_double(obj, "d_initial", 0, &o->init_scale, what, err)) ||
        (rc = peft_json_double(obj, "vera_dropout", 0, &o->dropout, what, err)) ||
        (rc = peft_json_int(obj, "projection_prng_key", 0, &key, what, err)) ||
        (rc = peft_json_bool(obj, "save_projection", 0, &save, what, err)))
        return rc;
    if (r < 1 || r > 65536) return peft_fail(err, PEFT_EFORMAT, "%s: r = %lld is out of range", what, r);
    if (!save)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: save_projection = false: vera_A/vera_B would have to be regenerated with "
                                                 "torch's generator from projection_prng_key, which peft.c cannot do", what);
    o->rank = (int)r;
    o->seed = (uint64_t)key;
    return PEFT_OK;
}

const peft_method peft_method_vera = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "vera",
    .forward_replaces_base = 0,
    .create = vera_create,
    .destroy = vera_destroy,
    .forward = vera_forward,
    .backward = vera_backward,
    .merge = vera_merge,
    .params = vera_params,
    .work_floats = vera_work_floats,
    .peft_type = "VERA",
    .config_write = vera_config_write,
    .config_read = vera_config_read,
};
