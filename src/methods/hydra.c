/* hydra.c: the Hydra method on the adapter interface (see hydra.h for the formula).
 *
 * Forward (N rows):   xd = dropout(x)                       [N, in]
 *                     u  = xd W^T   (= y - b without dropout) [N, out]
 *                     ap = xd A_p^T,  as = u A_s^T          [N, r] each, saved for backward
 *                     y += s * (ap B_p^T + as B_s^T)
 * Backward:           dB_p += s dy^T ap,   dB_s += s dy^T as
 *                     gp = s dy B_p,  gs = s dy B_s         [N, r]
 *                     dA_p += gp^T xd
 *                     u recomputed (no N x out saved per site); dA_s += gs^T u
 *                     dx += mask * (gp A_p + (gs A_s) W)
 * Merge:  W' = W + s B_p A_p + s B_s T with T = A_s W [r, in] kept, so unmerge subtracts the
 * same terms exactly (W is needed to form T and is what merge overwrites). */
#include "hydra.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"
#include "rng.h"

typedef struct hydra_adapter {
    peft_adapter base;
    int r, in, out;
    float scale, dropout;
    float *Ap, *Bp, *As, *Bs;     /* [r, in], [out, r], [r, out], [out, r] */
    float *dAp, *dBp, *dAs, *dBs; /* same shapes */
    float *ap, *as;               /* [max_rows, r] each, saved by a training forward */
    float *merged_T;              /* [r, in] A_s W at merge time (NULL when not merged) */
    int max_rows;
    uint64_t site_hash;
} hydra_adapter;

static int dropout_active(const hydra_adapter *a) { return a->base.training && a->dropout > 0.0f; }

static void dropout_apply(const hydra_adapter *a, float *out, const float *in, int N, int accumulate) {
    peft_dropout_apply(out, in, (size_t)N * a->in, a->dropout, a->base.step_seed, a->site_hash, accumulate);
}

static int hydra_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    int invalid = lowrank_check_opts(o, s, "Hydra", err);
    if (invalid) return invalid;
    hydra_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_hydra;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t r = (size_t)a->r, nAp = r * a->in, nB = (size_t)a->out * r, nAs = r * a->out;
    a->Ap = calloc(2 * (nAp + 2 * nB + nAs) + 2 * (size_t)max_rows * r, sizeof(float));
    if (!a->Ap) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate Hydra weights", s->name);
    }
    a->Bp = a->Ap + nAp;
    a->As = a->Bp + nB;
    a->Bs = a->As + nAs;
    a->dAp = a->Bs + nB;
    a->dBp = a->dAp + nAp;
    a->dAs = a->dBp + nB;
    a->dBs = a->dAs + nAs;
    a->ap = a->dBs + nB;
    a->as = a->ap + (size_t)max_rows * r;
    lora_init_A(a->Ap, a->r, a->in, o, a->site_hash);
    lora_init_A(a->As, a->r, a->out, o, peft_mix64(a->site_hash ^ 0x6879647261ull)); /* "hydra": its own stream */
    *out = &a->base;
    return PEFT_OK;
}

static void hydra_destroy(peft_adapter *base) {
    hydra_adapter *a = (hydra_adapter *)base;
    if (!a) return;
    free(a->merged_T);
    free(a->Ap);
    free(a);
}

static size_t hydra_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const hydra_adapter *a = (const hydra_adapter *)base;
    (void)s;
    return (size_t)N * (2 * (size_t)a->in + 2 * (size_t)a->out + 4 * (size_t)a->r);
}

static void hydra_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    hydra_adapter *a = (hydra_adapter *)base;
    size_t Nr = (size_t)N * a->r;
    float *xd_buf = a->base.work, *u = xd_buf + (size_t)N * a->in, *tmp = u + (size_t)N * a->out;
    float *ap = save ? a->ap : tmp, *as = save ? a->as : tmp + Nr;
    const float *xd = x;
    if (dropout_active(a)) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
        matmul_forward(u, xd, s->weight, NULL, N, a->in, a->out); /* u = xd W^T */
    } else {
        const float *b = s->bias;
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int o = 0; o < a->out; o++) u[(size_t)n * a->out + o] = y[(size_t)n * a->out + o] - (b ? b[o] : 0.0f);
    }
    matmul_forward(ap, xd, a->Ap, NULL, N, a->in, a->r);  /* ap = xd A_p^T */
    matmul_forward(as, u, a->As, NULL, N, a->out, a->r);  /* as = u A_s^T */
    gemm_acc(y, ap, a->Bp, N, a->out, a->r, 0, 1, a->scale);
    gemm_acc(y, as, a->Bs, N, a->out, a->r, 0, 1, a->scale);
}

static void hydra_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    hydra_adapter *a = (hydra_adapter *)base;
    size_t Nr = (size_t)N * a->r, Nin = (size_t)N * a->in, Nout = (size_t)N * a->out;
    float *xd_buf = a->base.work, *u = xd_buf + Nin, *gp = u + Nout, *gs = gp + Nr, *du = gs + Nr, *dxd = du + Nout;
    const float *xd = x;
    if (dropout_active(a)) {
        dropout_apply(a, xd_buf, x, N, 0);
        xd = xd_buf;
    }
    gemm_acc(a->dBp, dy, a->ap, a->out, a->r, N, 1, 0, a->scale); /* dB_p += s dy^T ap */
    gemm_acc(a->dBs, dy, a->as, a->out, a->r, N, 1, 0, a->scale); /* dB_s += s dy^T as */
    memset(gp, 0, 2 * Nr * sizeof(float));
    gemm_acc(gp, dy, a->Bp, N, a->r, a->out, 0, 0, a->scale);     /* gp = s dy B_p */
    gemm_acc(gs, dy, a->Bs, N, a->r, a->out, 0, 0, a->scale);     /* gs = s dy B_s */
    gemm_acc(a->dAp, gp, xd, a->r, a->in, N, 1, 0, 1.0f);         /* dA_p += gp^T xd */
    matmul_forward(u, xd, s->weight, NULL, N, a->in, a->out);      /* u = xd W^T */
    gemm_acc(a->dAs, gs, u, a->r, a->out, N, 1, 0, 1.0f);         /* dA_s += gs^T u */
    if (!dx) return;
    memset(du, 0, Nout * sizeof(float));
    gemm_acc(du, gs, a->As, N, a->out, a->r, 0, 0, 1.0f);         /* du = gs A_s */
    float *acc = xd == x ? dx : dxd;
    if (acc == dxd) memset(dxd, 0, Nin * sizeof(float));
    gemm_acc(acc, gp, a->Ap, N, a->in, a->r, 0, 0, 1.0f);         /* += gp A_p */
    matmul_backward(acc, NULL, NULL, du, xd, s->weight, N, a->in, a->out); /* += du W */
    if (acc == dxd) dropout_apply(a, dx, dxd, N, 1);
}

static int hydra_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    hydra_adapter *a = (hydra_adapter *)base;
    size_t nT = (size_t)a->r * a->in;
    if (sign > 0) {
        if (a->merged_T) return peft_fail(err, PEFT_EINVAL, "%s: the Hydra adapter is already merged", s->name);
        a->merged_T = calloc(nT, sizeof(float));
        if (!a->merged_T) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
        gemm_acc(a->merged_T, a->As, s->weight, a->r, a->in, a->out, 0, 0, 1.0f);         /* T = A_s W */
        gemm_acc(s->weight, a->Bp, a->Ap, a->out, a->in, a->r, 0, 0, a->scale);          /* W += s B_p A_p */
        gemm_acc(s->weight, a->Bs, a->merged_T, a->out, a->in, a->r, 0, 0, a->scale);    /* W += s B_s T */
        return PEFT_OK;
    }
    if (!a->merged_T) return peft_fail(err, PEFT_EINVAL, "%s: the Hydra adapter is not merged, nothing to unmerge", s->name);
    gemm_acc(s->weight, a->Bs, a->merged_T, a->out, a->in, a->r, 0, 0, -a->scale);
    gemm_acc(s->weight, a->Bp, a->Ap, a->out, a->in, a->r, 0, 0, -a->scale);
    free(a->merged_T);
    a->merged_T = NULL;
    return PEFT_OK;
}

static int hydra_params(peft_adapter *base, peft_param *out, int max) {
    hydra_adapter *a = (hydra_adapter *)base;
    if (max >= 4) {
        out[0] = (peft_param){.name = "hydra_par_A.weight", .data = a->Ap, .grad = a->dAp, .numel = (size_t)a->r * a->in,
                              .ndim = 2, .shape = {a->r, a->in}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "hydra_par_B.weight", .data = a->Bp, .grad = a->dBp, .numel = (size_t)a->out * a->r,
                              .ndim = 2, .shape = {a->out, a->r}, .lr_scale = 1.0f};
        out[2] = (peft_param){.name = "hydra_seq_A.weight", .data = a->As, .grad = a->dAs, .numel = (size_t)a->r * a->out,
                              .ndim = 2, .shape = {a->r, a->out}, .lr_scale = 1.0f};
        out[3] = (peft_param){.name = "hydra_seq_B.weight", .data = a->Bs, .grad = a->dBs, .numel = (size_t)a->out * a->r,
                              .ndim = 2, .shape = {a->out, a->r}, .lr_scale = 1.0f};
    }
    return 4;
}

static void hydra_config_write(const peft_method_opts *o, cJSON *obj) {
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int hydra_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    return lora_config_read_common(obj, o, 0, what, err);
}

const peft_method peft_method_hydra = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "hydra",
    .forward_replaces_base = 0,
    .reads_base = 1,
    .create = hydra_create,
    .destroy = hydra_destroy,
    .forward = hydra_forward,
    .backward = hydra_backward,
    .merge = hydra_merge,
    .params = hydra_params,
    .work_floats = hydra_work_floats,
    .peft_type = "HYDRA",
    .config_write = hydra_config_write,
    .config_read = hydra_config_read,
};
