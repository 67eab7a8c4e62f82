/* ia3.c: the (IA)^3 method on the adapter interface. It replaces the base computation
 * (forward_replaces_base) because it scales the base term itself.
 *
 * Attention-type site (l [out]):
 *   forward   y   = (x W^T + b) * l
 *   backward  dx += (dy * l) W
 *             dl += sum_n dy * (x W^T + b)    (the base output is recomputed, not saved)
 * Feedforward site (l [in]):
 *   forward   xs  = x * l,  y = xs W^T + b
 *   backward  dxs = dy W,   dl += sum_n dxs * x,   dx += dxs * l
 * Merge scales W's rows (and the bias) or W's columns by l; unmerge divides them back. */
#include "ia3.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"

typedef struct ia3_adapter {
    peft_adapter base;
    int in, out;
    int feedforward; /* l scales the input (1) or the output (0) */
    int n;           /* numel of l: in or out */
    float *l, *dl;   /* [n] */
} ia3_adapter;

/* 1 if `name` is an entry of the comma list, or ends with "." + entry (PEFT's target rule). */
static int name_in_list(const char *name, const char *list) {
    size_t klen = strlen(name);
    for (const char *t = list; *t;) {
        size_t len = strcspn(t, ",");
        if (len && ((klen == len && !strncmp(name, t, len)) ||
                    (klen > len && name[klen - len - 1] == '.' && !strncmp(name + klen - len, t, len))))
            return 1;
        t += len + (t[len] == ',');
    }
    return 0;
}

static int ia3_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    ia3_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_ia3;
    a->in = s->in_features;
    a->out = s->out_features;
    a->feedforward = name_in_list(s->name, o->feedforward_modules);
    a->n = a->feedforward ? a->in : a->out;
    a->l = calloc(2 * (size_t)a->n, sizeof(float));
    if (!a->l) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate IA3 vectors", s->name);
    }
    a->dl = a->l + a->n;
    for (int i = 0; i < a->n; i++) a->l[i] = 1.0f; /* PEFT's init_ia3_weights: ones */
    *out = &a->base;
    return PEFT_OK;
}

static void ia3_destroy(peft_adapter *base) {
    ia3_adapter *a = (ia3_adapter *)base;
    if (!a) return;
    free(a->l);
    free(a);
}

static size_t ia3_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const ia3_adapter *a = (const ia3_adapter *)base;
    return a->feedforward ? 2 * (size_t)N * a->in : 2 * (size_t)N * a->out;
}

static void ia3_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    ia3_adapter *a = (ia3_adapter *)base;
    const float *l = a->l;
    if (a->feedforward) {
        float *xs = a->base.work; /* [N, in] */
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int i = 0; i < a->in; i++) xs[(size_t)n * a->in + i] = x[(size_t)n * a->in + i] * l[i];
        matmul_forward(y, xs, s->weight, s->bias, N, a->in, a->out);
        return;
    }
    matmul_forward(y, x, s->weight, s->bias, N, a->in, a->out);
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int o = 0; o < a->out; o++) y[(size_t)n * a->out + o] *= l[o];
}

static void ia3_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    ia3_adapter *a = (ia3_adapter *)base;
    const float *l = a->l;
    float *dl = a->dl;
    if (a->feedforward) {
        float *dxs = a->base.work; /* [N, in] */
        memset(dxs, 0, (size_t)N * a->in * sizeof(float));
        matmul_backward(dxs, NULL, NULL, dy, x, s->weight, N, a->in, a->out); /* dxs = dy W */
#pragma omp parallel for
        for (int i = 0; i < a->in; i++) {
            double acc = 0;
            for (int n = 0; n < N; n++) acc += (double)dxs[(size_t)n * a->in + i] * x[(size_t)n * a->in + i];
            dl[i] += (float)acc;
        }
        if (dx) {
#pragma omp parallel for
            for (int n = 0; n < N; n++)
                for (int i = 0; i < a->in; i++) dx[(size_t)n * a->in + i] += dxs[(size_t)n * a->in + i] * l[i];
        }
        return;
    }
    float *dyl = a->base.work, *y0 = dyl + (size_t)N * a->out; /* [N, out] each */
    if (dx) {
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int o = 0; o < a->out; o++) dyl[(size_t)n * a->out + o] = dy[(size_t)n * a->out + o] * l[o];
        matmul_backward(dx, NULL, NULL, dyl, x, s->weight, N, a->in, a->out); /* dx += (dy * l) W */
    }
    matmul_forward(y0, x, s->weight, s->bias, N, a->in, a->out); /* the unscaled base output */
#pragma omp parallel for
    for (int o = 0; o < a->out; o++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += (double)dy[(size_t)n * a->out + o] * y0[(size_t)n * a->out + o];
        dl[o] += (float)acc;
    }
}

static int ia3_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    ia3_adapter *a = (ia3_adapter *)base;
    if (sign < 0)
        for (int i = 0; i < a->n; i++)
            if (a->l[i] == 0.0f) return peft_fail(err, PEFT_EINVAL, "%s: ia3_l[%d] = 0, the merge cannot be undone", s->name, i);
    for (int o = 0; o < a->out; o++) {
        float *row = s->weight + (size_t)o * a->in;
        if (a->feedforward) {
            if (sign > 0) for (int i = 0; i < a->in; i++) row[i] *= a->l[i];
            else for (int i = 0; i < a->in; i++) row[i] /= a->l[i];
        } else {
            if (sign > 0) for (int i = 0; i < a->in; i++) row[i] *= a->l[o];
            else for (int i = 0; i < a->in; i++) row[i] /= a->l[o];
            if (s->bias) s->bias[o] = sign > 0 ? s->bias[o] * a->l[o] : s->bias[o] / a->l[o];
        }
    }
    return PEFT_OK;
}

static int ia3_params(peft_adapter *base, peft_param *out, int max) {
    ia3_adapter *a = (ia3_adapter *)base;
    if (max >= 1) {
        /* PEFT's shapes: [out, 1] for attention-type sites, [1, in] for feedforward ones. */
        out[0] = (peft_param){.name = "ia3_l", .data = a->l, .grad = a->dl, .numel = (size_t)a->n, .ndim = 2,
                              .shape = {a->feedforward ? 1 : a->out, a->feedforward ? a->in : 1}, .lr_scale = 1.0f};
    }
    return 1;
}

/* feedforward_modules as PEFT needs it: a subset of target_modules (already in obj, as the
 * module kinds that carry adapters). A kind is listed when a feedforward entry names it. */
static void ia3_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON *ff = cJSON_CreateArray();
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(obj, "target_modules");
    if (cJSON_IsArray(targets)) {
        const cJSON *t;
        cJSON_ArrayForEach(t, targets)
            if (cJSON_IsString(t) && name_in_list(t->valuestring, o->feedforward_modules))
                cJSON_AddItemToArray(ff, cJSON_CreateString(t->valuestring));
    } else { /* a regex target: PEFT checks no subset, write the list as given */
        for (const char *t = o->feedforward_modules; *t;) {
            size_t len = strcspn(t, ",");
            if (len) {
                char name[256];
                snprintf(name, sizeof name, "%.*s", (int)len, t);
                cJSON_AddItemToArray(ff, cJSON_CreateString(name));
            }
            t += len + (t[len] == ',');
        }
    }
    cJSON_AddItemToObject(obj, "feedforward_modules", ff);
    cJSON_AddBoolToObject(obj, "init_ia3_weights", 1);
}

static int ia3_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    const cJSON *ff = cJSON_GetObjectItemCaseSensitive(obj, "feedforward_modules");
    o->feedforward_modules[0] = '\0';
    if (!ff || cJSON_IsNull(ff)) { /* PEFT fills in its model mapping: down_proj for Llama, Mistral, Qwen2 */
        snprintf(o->feedforward_modules, sizeof o->feedforward_modules, "down_proj");
        return PEFT_OK;
    }
    if (cJSON_IsString(ff))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: feedforward_modules as a regex (\"%s\") is not supported; use a list", what,
                         ff->valuestring);
    if (!cJSON_IsArray(ff)) return peft_fail(err, PEFT_EFORMAT, "%s: feedforward_modules must be a list of names", what);
    const cJSON *e;
    cJSON_ArrayForEach(e, ff) {
        size_t used = strlen(o->feedforward_modules);
        if (!cJSON_IsString(e)) return peft_fail(err, PEFT_EFORMAT, "%s: feedforward_modules must hold strings", what);
        if (used + strlen(e->valuestring) + 2 > sizeof o->feedforward_modules)
            return peft_fail(err, PEFT_EFORMAT, "%s: feedforward_modules is too long", what);
        snprintf(o->feedforward_modules + used, sizeof o->feedforward_modules - used, "%s%s", used ? "," : "", e->valuestring);
    }
    return PEFT_OK;
}

const peft_method peft_method_ia3 = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "ia3",
    .forward_replaces_base = 1,
    .reads_base = 1,
    .create = ia3_create,
    .destroy = ia3_destroy,
    .forward = ia3_forward,
    .backward = ia3_backward,
    .merge = ia3_merge,
    .params = ia3_params,
    .work_floats = ia3_work_floats,
    .peft_type = "IA3",
    .config_write = ia3_config_write,
    .config_read = ia3_config_read,
};
