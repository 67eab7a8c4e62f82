/* sara.c: sparse tuning of the smallest weights (sara.h) on the adapter interface.
 *
 * The chosen entries are kept as CSR: idx [k] (flat, ascending) and row_ptr [out + 1].
 * Forward (N rows):   xd = dropout(x)
 *                     y[n, o] += sum_{j in row o} delta[j] * xd[n, idx[j] - o * in]
 * Backward:           ddelta[j] += sum_n dy[n, o] * xd[n, c]
 *                     dx[n, c]  += mask * delta[j] * dy[n, o]
 * Merge is exact: +1 keeps the k original values and adds delta, -1 puts them back. */
#include "sara.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "methods/dropout.h"

typedef struct sara_adapter {
    peft_adapter base;
    int in, out;
    size_t k;
    float dropout;
    int32_t *idx;        /* [k] flat indices into W, ascending */
    int32_t *row_ptr;    /* [out + 1] */
    float *delta, *ddelta; /* [k] */
    float *w_saved;      /* [k] W's values before a merge */
    int merged;
    uint64_t site_hash;
} sara_adapter;

/* ---- selection ----------------------------------------------------------------------- */

static void swapf(float *a, float *b) {
    float t = *a;
    *a = *b, *b = t;
}

static float median3(float a, float b, float c) {
    if (a > b) swapf(&a, &b);
    if (b > c) swapf(&b, &c);
    return a > b ? a : b;
}

/* The value of rank q (0-based, ascending) of v [n] (no NaN); reorders v. Quickselect with
 * a median-of-three pivot and a three-way partition (many equal values stay linear). */
static float select_rank(float *v, size_t n, size_t q) {
    size_t lo = 0, hi = n; /* q lies in [lo, hi) */
    while (hi - lo > 1) {
        float pivot = median3(v[lo], v[lo + (hi - lo) / 2], v[hi - 1]);
        size_t lt = lo, i = lo, gt = hi; /* [lo,lt) < pivot, [lt,gt) == pivot, [gt,hi) > pivot */
        while (i < gt) {
            if (v[i] < pivot) swapf(&v[lt++], &v[i++]);
            else if (v[i] > pivot) swapf(&v[i], &v[--gt]);
            else i++;
        }
        if (q < lt) hi = lt;
        else if (q >= gt) lo = gt;
        else return pivot;
    }
    return v[lo];
}

int sara_select(const float *w, size_t n, size_t k, int32_t *idx) {
    if (k == 0) return 0;
    float *v = malloc(n * sizeof(float));
    if (!v) return -1;
    for (size_t i = 0; i < n; i++) v[i] = isnan(w[i]) ? INFINITY : fabsf(w[i]);
    float t = select_rank(v, n, k - 1); /* the k-th smallest |w| */
    size_t below = 0;
    for (size_t i = 0; i < n; i++) below += v[i] < t;
    free(v);
    size_t ties = k - below, m = 0; /* entries equal to t: the first ones in index order */
    for (size_t i = 0; i < n && m < k; i++) {
        float a = isnan(w[i]) ? INFINITY : fabsf(w[i]);
        if (a < t) idx[m++] = (int32_t)i;
        else if (a == t && ties > 0) idx[m++] = (int32_t)i, ties--;
    }
    return 0;
}

/* ---- the method ---------------------------------------------------------------------- */

static const float *apply_dropout(const sara_adapter *a, const float *x, float *buf, int N) {
    if (!(a->base.training && a->dropout > 0.0f)) return x;
    peft_dropout_apply(buf, x, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, 0);
    return buf;
}

static void sara_destroy(peft_adapter *base) {
    sara_adapter *a = (sara_adapter *)base;
    if (!a) return;
    free(a->idx), free(a->row_ptr), free(a->delta);
    free(a);
}

static int sara_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    if (!s->weight) return peft_fail(err, PEFT_EINVAL, "%s: sara needs the base weights (the model was loaded without them)", s->name);
    double p = o->init_scale;
    if (!(p > 0 && p <= 1)) return peft_fail(err, PEFT_EINVAL, "%s: SaRA's trainable fraction %g must be in (0, 1]", s->name, p);
    if (o->dropout < 0 || o->dropout >= 1) return peft_fail(err, PEFT_EINVAL, "SaRA dropout %g must be in [0, 1)", o->dropout);
    size_t n = (size_t)s->in_features * s->out_features;
    if (n > INT32_MAX) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: %zu weights exceed SaRA's 32-bit indices", s->name, n);
    size_t k = (size_t)floor(p * (double)n + 0.5);
    if (k < 1) k = 1;
    if (k > n) k = n;
    sara_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_sara;
    a->in = s->in_features, a->out = s->out_features, a->k = k;
    a->dropout = (float)o->dropout;
    a->site_hash = peft_site_hash(s->name);
    a->idx = malloc(k * sizeof(int32_t));
    a->row_ptr = calloc((size_t)a->out + 1, sizeof(int32_t));
    a->delta = calloc(3 * k, sizeof(float));
    if (!a->idx || !a->row_ptr || !a->delta || sara_select(s->weight, n, k, a->idx)) {
        sara_destroy(&a->base);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate SaRA's %zu entries", s->name, k);
    }
    a->ddelta = a->delta + k;
    a->w_saved = a->ddelta + k;
    for (size_t j = 0; j < k; j++) a->row_ptr[a->idx[j] / a->in + 1]++;
    for (int r = 0; r < a->out; r++) a->row_ptr[r + 1] += a->row_ptr[r];
    *out = &a->base;
    return PEFT_OK;
}

static size_t sara_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const sara_adapter *a = (const sara_adapter *)base;
    return (size_t)N * 2 * a->in;
}

static void sara_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    sara_adapter *a = (sara_adapter *)base;
    const float *xd = apply_dropout(a, x, a->base.work, N);
    int in = a->in, outf = a->out;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = xd + (size_t)n * in;
        float *yr = y + (size_t)n * outf;
        for (int o = 0; o < outf; o++) {
            float acc = 0;
            size_t base_o = (size_t)o * in;
            for (int32_t j = a->row_ptr[o]; j < a->row_ptr[o + 1]; j++) acc += a->delta[j] * xr[a->idx[j] - base_o];
            yr[o] += acc;
        }
    }
}

static void sara_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    sara_adapter *a = (sara_adapter *)base;
    int in = a->in, outf = a->out, drop = a->base.training && a->dropout > 0.0f;
    float *dxd = (float *)a->base.work + (size_t)N * in;
    const float *xd = apply_dropout(a, x, a->base.work, N);
#pragma omp parallel for schedule(static)
    for (int o = 0; o < outf; o++)
        for (int32_t j = a->row_ptr[o]; j < a->row_ptr[o + 1]; j++) {
            size_t c = (size_t)a->idx[j] - (size_t)o * in;
            float acc = 0;
            for (int n = 0; n < N; n++) acc += dy[(size_t)n * outf + o] * xd[(size_t)n * in + c];
            a->ddelta[j] += acc;
        }
    if (!dx) return;
    float *gx = drop ? dxd : dx;
    if (drop) memset(dxd, 0, (size_t)N * in * sizeof(float));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *dyr = dy + (size_t)n * outf;
        float *gr = gx + (size_t)n * in;
        for (int o = 0; o < outf; o++) {
            float g = dyr[o];
            size_t base_o = (size_t)o * in;
            for (int32_t j = a->row_ptr[o]; j < a->row_ptr[o + 1]; j++) gr[a->idx[j] - base_o] += a->delta[j] * g;
        }
    }
    if (drop) peft_dropout_apply(dx, dxd, (size_t)N * in, a->dropout, a->base.step_seed, a->site_hash, 1);
}

static int sara_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    sara_adapter *a = (sara_adapter *)base;
    if (sign > 0) {
        for (size_t j = 0; j < a->k; j++) {
            a->w_saved[j] = s->weight[a->idx[j]];
            s->weight[a->idx[j]] += a->delta[j];
        }
        a->merged = 1;
    } else if (a->merged) { /* exact: the saved values go back */
        for (size_t j = 0; j < a->k; j++) s->weight[a->idx[j]] = a->w_saved[j];
        a->merged = 0;
    } else {
        for (size_t j = 0; j < a->k; j++) s->weight[a->idx[j]] -= a->delta[j];
    }
    return PEFT_OK;
}

static int sara_params(peft_adapter *base, peft_param *out, int max) {
    sara_adapter *a = (sara_adapter *)base;
    if (max >= 1)
        out[0] = (peft_param){.name = "sara_delta", .data = a->delta, .grad = a->ddelta, .numel = a->k, .ndim = 1,
                              .shape = {(int64_t)a->k}, .lr_scale = 1.0f};
    return 1;
}

const int32_t *sara_indices(const peft_adapter *base, size_t *k) {
    if (!base || base->method != &peft_method_sara) return NULL;
    const sara_adapter *a = (const sara_adapter *)base;
    *k = a->k;
    return a->idx;
}

static void sara_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "sara_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "trainable_fraction", o->init_scale);
}

static int sara_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    int rc = peft_json_double(obj, "trainable_fraction", 1, &o->init_scale, what, err);
    if (rc == PEFT_OK) rc = peft_json_double(obj, "sara_dropout", 0, &o->dropout, what, err);
    if (rc == PEFT_OK && !(o->init_scale > 0 && o->init_scale <= 1))
        rc = peft_fail(err, PEFT_EFORMAT, "%s: trainable_fraction %g must be in (0, 1]", what, o->init_scale);
    return rc;
}

const peft_method peft_method_sara = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "sara",
    .forward_replaces_base = 0,
    .create = sara_create,
    .destroy = sara_destroy,
    .forward = sara_forward,
    .backward = sara_backward,
    .merge = sara_merge,
    .params = sara_params,
    .work_floats = sara_work_floats,
    .peft_type = "SARA",
    .config_write = sara_config_write,
    .config_read = sara_config_read,
};
