/* mos.c: the MoS method on the adapter interface (see mos.h for the layout).
 *
 * Each call assembles A [r, in] and B [out, r] in the scratch from the private tensors and
 * the routed pool shards, then runs LoRA's computation:
 * Forward (N rows):   xd = dropout(x),  ax = xd A^T    [N, r]   saved for backward
 *                     y += s * ax B^T
 * Backward:           GB = s dy^T ax,  g = s dy B,  GA = g^T xd
 *                     GA, GB scattered (+=) to the private gradients and to the routed shards'
 *                     pool gradients (a site's shards are distinct, other sites add to them too)
 *                     dx += mask * (g A)
 * Routing (mirrored by tests/parity/test_methods2_parity.py): slot j of the (r - r_priv) * L
 * slots takes perm[j] of a Fisher-Yates shuffle of 0..P-1 whose step j swaps j with
 * j + peft_rng_below(P - j). */
#include "mos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "io/json.h"
#include "kernels/kernels.h"
#include "methods/dropout.h"
#include "methods/lora.h"
#include "rng.h"

#define MOS_STREAM_A 0x4d6f5341ull /* "MoSA" */
#define MOS_STREAM_B 0x4d6f5342ull
#define MOS_STREAM_POOL 0x4d6f5350ull

typedef struct mos_adapter {
    peft_adapter base;
    int r, rp, in, out;   /* rank, private ranks */
    int la, lb;           /* shards per A row / per B column */
    int pa, pb;           /* pool sizes (shards) */
    float scale, dropout;
    float *pA, *pB;       /* private [rp, in], [out, rp] */
    float *dpA, *dpB;
    float *poolA, *poolB; /* shared [pa, in / la], [pb, out / lb] */
    float *dpoolA, *dpoolB;
    int *idxA, *idxB;     /* [(r - rp) * la], [(r - rp) * lb] routed shards */
    float *ax;            /* [max_rows, r] */
    int max_rows;
    uint64_t site_hash;
} mos_adapter;

/* idx[n] = the first n entries of a seeded Fisher-Yates shuffle of 0..pool-1 (n <= pool). */
static int route(int *idx, int n, int pool, uint64_t seed, uint64_t stream) {
    int *perm = malloc((size_t)pool * sizeof(int));
    if (!perm) return -1;
    for (int i = 0; i < pool; i++) perm[i] = i;
    peft_rng rng;
    peft_rng_seed(&rng, seed, stream);
    for (int j = 0; j < n; j++) {
        int t = j + (int)peft_rng_below(&rng, (uint32_t)(pool - j)), v = perm[j];
        perm[j] = perm[t];
        perm[t] = v;
        idx[j] = perm[j];
    }
    free(perm);
    return 0;
}

/* A[r, in] and B[out, r] from the private tensors and the routed shards. */
static void assemble(const mos_adapter *a, float *A, float *B) {
    int ns = a->r - a->rp, wa = a->in / a->la, wb = a->out / a->lb;
    memcpy(A, a->pA, (size_t)a->rp * a->in * sizeof(float));
    for (int k = 0; k < ns; k++)
        for (int j = 0; j < a->la; j++)
            memcpy(A + (size_t)(a->rp + k) * a->in + (size_t)j * wa, a->poolA + (size_t)a->idxA[k * a->la + j] * wa,
                   (size_t)wa * sizeof(float));
    for (int o = 0; o < a->out; o++) {
        for (int k = 0; k < a->rp; k++) B[(size_t)o * a->r + k] = a->pB[(size_t)o * a->rp + k];
        int j = o / wb, e = o % wb;
        for (int k = 0; k < ns; k++) B[(size_t)o * a->r + a->rp + k] = a->poolB[(size_t)a->idxB[k * a->lb + j] * wb + e];
    }
}

/* The transpose of assemble: gradients of A and B added to their sources. */
static void scatter_grads(mos_adapter *a, const float *GA, const float *GB) {
    int ns = a->r - a->rp, wa = a->in / a->la, wb = a->out / a->lb;
    add_inplace(a->dpA, GA, (size_t)a->rp * a->in);
    for (int k = 0; k < ns; k++)
        for (int j = 0; j < a->la; j++)
            add_inplace(a->dpoolA + (size_t)a->idxA[k * a->la + j] * wa, GA + (size_t)(a->rp + k) * a->in + (size_t)j * wa,
                        (size_t)wa);
    for (int o = 0; o < a->out; o++) {
        for (int k = 0; k < a->rp; k++) a->dpB[(size_t)o * a->rp + k] += GB[(size_t)o * a->r + k];
        int j = o / wb, e = o % wb;
        for (int k = 0; k < ns; k++) a->dpoolB[(size_t)a->idxB[k * a->lb + j] * wb + e] += GB[(size_t)o * a->r + a->rp + k];
    }
}

static int shards_per(int width) { return width % MOS_SHARDS_PER_VECTOR == 0 ? MOS_SHARDS_PER_VECTOR : 1; }

static void mos_destroy(peft_adapter *base) {
    mos_adapter *a = (mos_adapter *)base;
    if (!a) return;
    free(a->idxA);
    free(a->pA);
    free(a);
}

static int mos_create(const peft_method_opts *o, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err) {
    int invalid = lowrank_check_opts(o, s, "MoS", err);
    if (invalid) return invalid;
    mos_adapter *a = calloc(1, sizeof *a);
    if (!a) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    a->base.method = &peft_method_mos;
    a->r = o->rank;
    a->rp = o->rank / 4 > 1 ? o->rank / 4 : 1;
    a->in = s->in_features;
    a->out = s->out_features;
    a->la = shards_per(a->in);
    a->lb = shards_per(a->out);
    int ns = a->r - a->rp;
    a->pa = MOS_POOL_FACTOR * ns * a->la;
    a->pb = MOS_POOL_FACTOR * ns * a->lb;
    a->scale = lowrank_scale(o);
    a->dropout = (float)o->dropout;
    a->max_rows = max_rows;
    a->site_hash = peft_site_hash(s->name);
    size_t nA = (size_t)a->rp * a->in, nB = (size_t)a->out * a->rp;
    a->pA = calloc(2 * (nA + nB) + (size_t)max_rows * a->r, sizeof(float));
    a->idxA = malloc(((size_t)ns * (a->la + a->lb) + 1) * sizeof(int));
    if (!a->pA || !a->idxA) {
        mos_destroy(&a->base);
        return peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate MoS weights", s->name);
    }
    a->pB = a->pA + nA;
    a->dpA = a->pB + nB;
    a->dpB = a->dpA + nA;
    a->ax = a->dpB + nB;
    a->idxB = a->idxA + (size_t)ns * a->la;
    lora_init_A(a->pA, a->rp, a->in, o, a->site_hash);
    if (ns > 0) {
        if (route(a->idxA, ns * a->la, a->pa, o->seed, a->site_hash ^ MOS_STREAM_A) ||
            route(a->idxB, ns * a->lb, a->pb, o->seed, a->site_hash ^ MOS_STREAM_B)) {
            mos_destroy(&a->base);
            return peft_fail(err, PEFT_ENOMEM, "out of memory");
        }
        if (!o->shared) {
            mos_destroy(&a->base);
            return peft_fail(err, PEFT_EINVAL, "%s: MoS needs the set's shared shard pools", s->name);
        }
        char key_a[160], key_b[160];
        snprintf(key_a, sizeof key_a, "base_model.mos_A_%s", s->kind);
        snprintf(key_b, sizeof key_b, "base_model.mos_B_%s", s->kind);
        int64_t sa[2] = {a->pa, a->in / a->la}, sb[2] = {a->pb, a->out / a->lb};
        int created_a = 0, created_b = 0;
        a->poolA = peft_shared_tensor(o->shared, key_a, 2, sa, 1, 1, &a->dpoolA, &created_a);
        a->poolB = a->poolA ? peft_shared_tensor(o->shared, key_b, 2, sb, 1, 1, &a->dpoolB, &created_b) : NULL;
        if (!a->poolA || !a->poolB) {
            mos_destroy(&a->base);
            return peft_fail(err, PEFT_EINVAL, "%s: MoS's shard pools for %s could not be had: r must be the same at every %s "
                             "site (%d here), or out of memory / too many shared tensors", s->name, s->kind, s->kind, o->rank);
        }
        if (created_a) { /* LoRA's A range for every A shard; B's pool stays zero */
            peft_rng rng;
            peft_rng_seed(&rng, o->seed, peft_site_hash(s->kind) ^ MOS_STREAM_POOL);
            float bound = 1.0f / sqrtf((float)a->in);
            for (size_t i = 0; i < (size_t)sa[0] * sa[1]; i++) a->poolA[i] = bound * (2.0f * peft_rng_uniform(&rng) - 1.0f);
        }
    }
    *out = &a->base;
    return PEFT_OK;
}

static size_t mos_work_floats(const peft_adapter *base, const peft_site *s, int N) {
    const mos_adapter *a = (const mos_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    return 2 * (nA + nB) + (size_t)N * (2 * (size_t)a->in + a->r);
}

/* The assembled A [r, in], B [out, r] as a low-rank term with this step's dropout. */
static lowrank_term mos_term(const mos_adapter *a, const float *A, const float *B, float *dA, float *dB) {
    return (lowrank_term){.A = A, .B = B, .dA = dA, .dB = dB, .in = a->in, .r = a->r, .out = a->out, .scale = a->scale,
                          .dropout = a->base.training ? a->dropout : 0.0f, .step_seed = a->base.step_seed,
                          .site_hash = a->site_hash};
}

static void mos_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    mos_adapter *a = (mos_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = a->base.work, *B = A + nA, *buf = B + nB, *ax = save ? a->ax : buf + (size_t)N * a->in;
    assemble(a, A, B);
    lowrank_term t = mos_term(a, A, B, NULL, NULL);
    lowrank_forward(&t, y, ax, x, N, buf);
}

static void mos_backward(peft_adapter *base, const peft_site *s, float *dx, const float *dy, const float *x, int N) {
    mos_adapter *a = (mos_adapter *)base;
    (void)s;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = a->base.work, *B = A + nA, *GA = B + nB, *GB = GA + nA, *buf = GB + nB, *g = buf + (size_t)N * a->in;
    assemble(a, A, B);
    memset(GA, 0, (nA + nB) * sizeof(float));
    lowrank_term t = mos_term(a, A, B, GA, GB);
    lowrank_backward(&t, dx, dy, x, a->ax, N, g, buf); /* GA, GB: gradients of the assembled A, B */
    scatter_grads(a, GA, GB);
}

static int mos_merge(peft_adapter *base, peft_site *s, int sign, peft_err *err) {
    mos_adapter *a = (mos_adapter *)base;
    size_t nA = (size_t)a->r * a->in, nB = (size_t)a->out * a->r;
    float *A = malloc((nA + nB) * sizeof(float));
    if (!A) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", s->name);
    assemble(a, A, A + nA);
    gemm_acc(s->weight, A + nA, A, a->out, a->in, a->r, 0, 0, (float)sign * a->scale); /* W += +-s B A */
    free(A);
    return PEFT_OK;
}

static int mos_params(peft_adapter *base, peft_param *out, int max) {
    mos_adapter *a = (mos_adapter *)base;
    if (max >= 2) {
        out[0] = (peft_param){.name = "mos_private_A.weight", .data = a->pA, .grad = a->dpA, .numel = (size_t)a->rp * a->in,
                              .ndim = 2, .shape = {a->rp, a->in}, .lr_scale = 1.0f};
        out[1] = (peft_param){.name = "mos_private_B.weight", .data = a->pB, .grad = a->dpB, .numel = (size_t)a->out * a->rp,
                              .ndim = 2, .shape = {a->out, a->rp}, .lr_scale = 1.0f};
    }
    return 2;
}

static void mos_config_write(const peft_method_opts *o, cJSON *obj) {
    if (o->init_gaussian) cJSON_AddStringToObject(obj, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(obj, "init_lora_weights", 1);
    cJSON_AddNumberToObject(obj, "lora_alpha", o->alpha);
    cJSON_AddNumberToObject(obj, "lora_dropout", o->dropout);
    cJSON_AddNumberToObject(obj, "pool_factor", MOS_POOL_FACTOR);
    cJSON_AddStringToObject(obj, "private_rank", "max(1, r / 4)");
    cJSON_AddNumberToObject(obj, "r", o->rank);
    cJSON_AddNumberToObject(obj, "routing_seed", (double)o->seed);
    cJSON_AddNumberToObject(obj, "shards_per_vector", MOS_SHARDS_PER_VECTOR);
    cJSON_AddBoolToObject(obj, "use_rslora", o->use_rslora);
}

static int mos_config_read(const cJSON *obj, peft_method_opts *o, const char *what, peft_err *err) {
    long long seed = -1, l = MOS_SHARDS_PER_VECTOR, f = MOS_POOL_FACTOR;
    const char *priv = "max(1, r / 4)";
    int rc = lora_config_read_common(obj, o, 0, what, err);
    if (rc) return rc;
    if ((rc = peft_json_int(obj, "routing_seed", 1, &seed, what, err)) ||
        (rc = peft_json_int(obj, "shards_per_vector", 0, &l, what, err)) || (rc = peft_json_int(obj, "pool_factor", 0, &f, what, err)) ||
        (rc = peft_json_string(obj, "private_rank", 0, &priv, what, err)))
        return rc;
    if (seed < 0) return peft_fail(err, PEFT_EFORMAT, "%s: routing_seed = %lld must be >= 0", what, seed);
    if (l != MOS_SHARDS_PER_VECTOR || f != MOS_POOL_FACTOR || strcmp(priv, "max(1, r / 4)"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: peft.c's MoS has shards_per_vector %d, pool_factor %d and private_rank "
                         "\"max(1, r / 4)\"", what, MOS_SHARDS_PER_VECTOR, MOS_POOL_FACTOR);
    o->seed = (uint64_t)seed;
    return PEFT_OK;
}

const peft_method peft_method_mos = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "mos",
    .forward_replaces_base = 0,
    .create = mos_create,
    .destroy = mos_destroy,
    .forward = mos_forward,
    .backward = mos_backward,
    .merge = mos_merge,
    .params = mos_params,
    .work_floats = mos_work_floats,
    .peft_type = "MOS",
    .config_write = mos_config_write,
    .config_read = mos_config_read,
};
