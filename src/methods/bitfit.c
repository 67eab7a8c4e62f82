/* bitfit.c: the BitFit method on the adapter interface (a bias delta per target site).
 *
 *   forward   y[n, o]  += b'[o]
 *   backward  db'[o]   += sum_n dy[n, o]     (dx gets nothing: the term does not depend on x)
 *   merge     bias[o]  += sign * b'[o]       (only when the site has a bias) */
#include "bitfit.h"

#include <stdlib.h>

#include <cjson/cJSON.h>

#include "io/json.h"

typedef struct bitfit_adapter {
    peft_adapter base;
    int out;
    float *b, *db; /* [out] each */
} bitfit_adapter;

static int bitfit_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    (void)o, (void)max_rows;
    bitfit_adapter *a = calloc(1, sizeof *a);
    float *buf = a ? calloc(2 * (size_t)s->out_features, sizeof(float)) : NULL; /* b' = 0: training starts at the base model */
    if (!buf) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate the BitFit bias", s->name);
    }
    a->base.method = &peft_method_bitfit;
    a->out = s->out_features;
    a->b = buf;
    a->db = buf + a->out;
    *out = &a->base;
    return PEFT_OK;
}

static void bitfit_destroy(peft_adapter *base) {
    bitfit_adapter *a = (bitfit_adapter *)base;
    if (!a) return;
    free(a->b);
    free(a);
}

static size_t bitfit_work_floats(const peft_adapter *a, const peft_site *s, int N) {
    (void)a, (void)s, (void)N;
    return 0;
}

static void bitfit_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    (void)s, (void)x, (void)save;
    const bitfit_adapter *a = (const bitfit_adapter *)base;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) y[(size_t)n * a->out + o] += a->b[o];
}

static void bitfit_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    (void)s, (void)dx, (void)x;
    bitfit_adapter *a = (bitfit_adapter *)base;
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += dy[(size_t)n * a->out + o];
        a->db[o] += (float)acc;
    }
}

static int bitfit_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    bitfit_adapter *a = (bitfit_adapter *)base;
    if (!s->bias)
        return peft_fail(err, PEFT_EUNSUPPORTED,
                         "%s: has no bias, so its BitFit bias cannot be merged in place (keep the adapter unmerged, or target "
                         "only modules with a bias, e.g. Qwen2's q_proj,k_proj,v_proj)", s->name);
    for (int o = 0; o < a->out; o++) s->bias[o] += sign > 0 ? a->b[o] : -a->b[o];
    return PEFT_OK;
}

static int bitfit_params(peft_adapter *base, peft_param *out, int max) {
    bitfit_adapter *a = (bitfit_adapter *)base;
    if (max >= 1)
        out[0] = (peft_param){.name = "bitfit_bias", .data = a->b, .grad = a->db, .numel = (size_t)a->out, .ndim = 1,
                              .shape = {a->out}, .lr_scale = 1.0f};
    return 1;
}

static void bitfit_config_write(const peft_method_opts *o, cJSON *obj) { (void)o, (void)obj; }

static int bitfit_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    (void)obj, (void)o, (void)what, (void)err;
    return PEFT_OK;
}

const peft_method peft_method_bitfit = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "bitfit",
    .forward_replaces_base = 0,
    .create = bitfit_create,
    .destroy = bitfit_destroy,
    .forward = bitfit_forward,
    .backward = bitfit_backward,
    .merge = bitfit_merge,
    .params = bitfit_params,
    .work_floats = bitfit_work_floats,
    .peft_type = "BITFIT",
    .config_write = bitfit_config_write,
    .config_read = bitfit_config_read,
};
