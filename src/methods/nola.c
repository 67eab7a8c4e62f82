/* nola.c: the NOLA method on the adapter interface (see nola.h for the formula).
 *
 * The bases live in the adapter ([k, r, in] and [l, out, r] floats per site, regenerated at
 * create, never saved). Each call assembles A and B in the scratch (k r in + l out r flops),
 * then runs LoRA's computation:
 * Forward (N rows):   A = alpha . A_bases,  B = beta . B_bases
 *                     xd = dropout(x),  ax = xd A^T    [N, r]   saved for backward
 *                     y += s * ax B^T
 * Backward:           GB = s dy^T ax                   [out, r]   dbeta_j  += <GB, B_j>
 *                     g  = s dy B                      [N, r]
 *                     GA = g^T xd                      [r, in]    dalpha_i += <GA, A_i>
 *                     dx += mask * (g A)
 * Generation (mirrored by tests/parity/test_methods2_parity.py): A bases from
 * peft_rng_seed(seed, site_hash ^ NOLA_STREAM_A), filled in [k, r, in] order with
 * bound * (2 u - 1); B bases likewise from NOLA_STREAM_B in [l, out, r] order. */
#include "nola.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"
#include "rng.h"

#define NOLA_STREAM_A 0x4e4f4c4141ull /* "NOLAA" */
#define NOLA_STREAM_B 0x4e4f4c4142ull
#define NOLA_STREAM_INIT 0x4e4f4c4149ull

typedef struct nola_adapter {
    peft_adapter base;
    int r, in, out, k, l;
    float scale, dropout;
    float *alpha, *beta;   /* [k], [l] trained */
    float *dalpha, *dbeta; /* same shapes */
    float *Ab, *Bb;        /* [k, r, in], [l, out, r] frozen bases */
    float *ax;             /* [max_rows, r] saved by a training forward */
    int max_rows;
    uint64_t site_hash;
} nola_adapter;

static void uniform_fill(float *x, size_t n, float bound, uint64_t seed, uint64_t stream) {
    peft_rng rng;
    peft_rng_seed(&rng, seed, stream);
    for (size_t i = 0; i < n; i++) x[i] = bound * (2.0f * peft_rng_uniform(&rng) - 1.0f);
}

/* A[r, in] = alpha . A_bases, B[out, r] = beta . B_bases. */
static void assemble(const nola_adapter *a, float *A, float *B) {
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    memset(A, 0, nA * sizeof(float));
    memset(B, 0, nB * sizeof(float));
    gemm_acc(A, a->alpha, a->Ab, 1, (int)nA, a->k, 0, 0, 1.0f);
    gemm_acc(B, a->beta, a->Bb, 1, (int)nB, a->l, 0, 0, 1.0f);
}

static int nola_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    int invalid = lowrank_check_opts(o, s, "NOLA", err);
    if (invalid) return invalid;
    nola_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_nola;
    a->r = o->rank;
    a->in = s->in_features;
    a->out = s->out_features;
    a->k = a->l = NOLA_NUM_BASIS;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r, k = (size_t)a->k, l = (size_t)a->l;
    a->alpha = calloc(2 * (k + l) + k * nA + l * nB + (size_t)max_rows * a->r, sizeof(float));
    if (!a->alpha) {
        free(a);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate NOLA bases (%zu MB)", s->name, (k * nA + l * nB) * 4 >> 20);
    }
    a->beta = a->alpha + k;
    a->dalpha = a->beta + l;
    a->dbeta = a->dalpha + k;
    a->Ab = a->dbeta + l;
    a->Bb = a->Ab + k * nA;
    a->ax = a->Bb + l * nB;
    uniform_fill(a->Ab, k * nA, 1.0f / sqrtf((float)a->in), o->seed, a->site_hash ^ NOLA_STREAM_A);
    uniform_fill(a->Bb, l * nB, 1.0f / sqrtf((float)a->r), o->seed, a->site_hash ^ NOLA_STREAM_B);
    uniform_fill(a->alpha, k, 1.0f / sqrtf((float)a->k), o->seed, a->site_hash ^ NOLA_STREAM_INIT); /* beta = 0 */
    *out = &a->base;
    return PEFT_OK;
}

static void nola_destroy(peft_adapter *base) {
    nola_adapter *a = (nola_adapter *)base;
    if (!a) return;
    free(a->alpha);
    free(a);
}

static size_t nola_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const nola_adapter *a = (const nola_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    return 2 * (nA + nB) + (size_t)N * (2 * (size_t)a->in + a->r);
}

/* The assembled A [r, in], B [out, r] as a low-rank term with this step's dropout. */
static lowrank_term nola_term(const nola_adapter *a, const float *A, const float *B, float *dA, float *dB) {
    return (lowrank_term){.A = A, .B = B, .dA = dA, .dB = dB, .in = a->in, .r = a->r, .out = a->out, .scale = a->scale,
                          .dropout = a->base.training ? a->dropout : 0.0f, .step_seed = a->base.step_seed,
                          .site_hash = a->site_hash};
}

static void nola_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    nola_adapter *a = (nola_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = a->base.work, *B = A + nA, *buf = B + nB, *ax = save ? a->ax : buf + (size_t)N * a->in;
    assemble(a, A, B);
    lowrank_term t = nola_term(a, A, B, NULL, NULL);
    lowrank_forward(&t, y, ax, x, N, buf);
}

static void nola_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    nola_adapter *a = (nola_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = a->base.work, *B = A + nA, *GA = B + nB, *GB = GA + nA, *buf = GB + nB, *g = buf + (size_t)N * a->in;
    assemble(a, A, B);
    memset(GA, 0, (nA + nB) * sizeof(float));
    lowrank_term t = nola_term(a, A, B, GA, GB);
    lowrank_backward(&t, dx, dy, x, a->ax, N, g, buf); /* GA, GB: gradients of the assembled A, B */
    gemm_acc(a->dbeta, GB, a->Bb, 1, a->l, (int)nB, 0, 1, 1.0f);  /* dbeta += B_bases . GB */
    gemm_acc(a->dalpha, GA, a->Ab, 1, a->k, (int)nA, 0, 1, 1.0f); /* dalpha += A_bases . GA */
}

static int nola_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    nola_adapter *a = (nola_adapter *)base;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = malloc((nA + nB) * sizeof(float));
    if (!A) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    assemble(a, A, A + nA);
    gemm_acc(s->weight, A + nA, A, a->out, a->in, a->r, 0, 0, (float)sign * a->scale); /* W += +-s B A */
    free(A);
    return PEFT_OK;
}

static int nola_params(peft_adapter *base, peft_param *out, int max) {
    nola_adapter *a = (nola_adapter *)base;
    if (max >= 2) {
        out[0] = (peft_param){.name = "nola_alpha", .data = a->alpha, .grad = a->dalpha, .numel = (size_t)a->k, .ndim = 1,
                              .shape = {a->k}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "nola_beta", .data = a->beta, .grad = a->dbeta, .numel = (size_t)a->l, .ndim = 1,
                              .shape = {a->l}, .lr_scale = 1.0f};
    }
    return 2;
}

static void nola_config_write(const peft_method_opts *o, cJSON *obj) {
    cJSON_AddNumberToObject(obj, "basis_seed", (double)o->seed);
    cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "num_basis_A", NOLA_NUM_BASIS);
    cJSON_AddNumberToObject(obj, "num_basis_B", NOLA_NUM_BASIS);
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int nola_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long seed = -1, ka = NOLA_NUM_BASIS, kb = NOLA_NUM_BASIS;
    int rc = lora_config_read_common(obj, o, 0, what, err);
    if (rc) return rc;
    if ((rc = peft_json_int(obj, "basis_seed", 1, &seed, what, err)) || (rc = peft_json_int(obj, "num_basis_A", 0, &ka, what, err)) ||
        (rc = peft_json_int(obj, "num_basis_B", 0, &kb, what, err)))
        return rc;
    if (seed < 0) return peft_fail(err, PEFT_EFORMAT, "%s: basis_seed = %lld must be >= 0", what, seed);
    if (ka != NOLA_NUM_BASIS || kb != NOLA_NUM_BASIS)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: num_basis_A/B = %lld/%lld: peft.c's NOLA has %d bases per matrix", what, ka, kb,
                         NOLA_NUM_BASIS);
    o->seed = (uint64_t)seed;
    return PEFT_OK;
}

const peft_method peft_method_nola = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "nola",
    .forward_replaces_base = 0,
    .create = nola_create,
    .destroy = nola_destroy,
    .forward = nola_forward,
    .backward = nola_backward,
    .merge = nola_merge,
    .params = nola_params,
    .work_floats = nola_work_floats,
    .peft_type = "NOLA",
    .config_write = nola_config_write,
    .config_read = nola_config_read,
};
