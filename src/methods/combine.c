/* combine.c: PEFT's add_weighted_adapter (combine.h): the merges of merge_utils on flat
 * tensors, one site's combination, and the whole set (load, check, combine, new set). */
#include "combine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/linalg.h"
#include "methods/lora.h"
#include "rng.h"

static const struct {
    const char *name;
    peft_merge_kind merge;
    int svd;
} types[] = {
    {"svd", PEFT_MERGE_LINEAR, 1},
    {"linear", PEFT_MERGE_LINEAR, 0},
    {"cat", PEFT_MERGE_CAT, 0},
    {"ties", PEFT_MERGE_TIES, 0},
    {"ties_svd", PEFT_MERGE_TIES, 1},
    {"dare_ties", PEFT_MERGE_DARE_TIES, 0},
    {"dare_linear", PEFT_MERGE_DARE_LINEAR, 0},
    {"dare_ties_svd", PEFT_MERGE_DARE_TIES, 1},
    {"dare_linear_svd", PEFT_MERGE_DARE_LINEAR, 1},
    {"magnitude_prune", PEFT_MERGE_MAGNITUDE, 0},
    {"magnitude_prune_svd", PEFT_MERGE_MAGNITUDE, 1},
};

const char peft_combine_type_names[] =
    "svd, linear, cat, ties, ties_svd, dare_ties, dare_linear, dare_ties_svd, dare_linear_svd, magnitude_prune, magnitude_prune_svd";

int peft_combine_type_parse(const char *name, peft_combine_opts *o) {
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(name, types[i].name)) {
            o->merge = types[i].merge;
            o->svd = types[i].svd;
            return 0;
        }
    return -1;
}

static const char *type_name(const peft_combine_opts *o) {
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].merge == o->merge && types[i].svd == o->svd) return types[i].name;
    return "?";
}

int peft_combine_uses_density(const peft_combine_opts *o) { return o->merge != PEFT_MERGE_LINEAR && o->merge != PEFT_MERGE_CAT; }
int peft_combine_uses_sign(const peft_combine_opts *o) { return o->merge == PEFT_MERGE_TIES || o->merge == PEFT_MERGE_DARE_TIES; }
int peft_combine_uses_seed(const peft_combine_opts *o) {
    return o->merge == PEFT_MERGE_DARE_LINEAR || o->merge == PEFT_MERGE_DARE_TIES;
}

/* ---- merge_utils on flat tensors ------------------------------------------------------ */

typedef struct mag_entry {
    float mag;
    size_t idx;
} mag_entry;

/* Descending magnitude; equal magnitudes in index order, so the kept set is deterministic. */
static int by_magnitude(const void *pa, const void *pb) {
    const mag_entry *a = pa, *b = pb;
    if (a->mag != b->mag) return a->mag < b->mag ? 1 : -1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* magnitude_based_pruning: p[numel] = t with all but its k = int(density * numel) largest |t|
 * zeroed. scratch [numel]. */
static void prune_magnitude(const float *t, size_t numel, double density, float *p, mag_entry *scratch) {
    size_t k = (size_t)(density * (double)numel);
    for (size_t e = 0; e < numel; e++) scratch[e] = (mag_entry){fabsf(t[e]), e};
    qsort(scratch, numel, sizeof *scratch, by_magnitude);
    memset(p, 0, numel * sizeof *p);
    for (size_t j = 0; j < k; j++) p[scratch[j].idx] = t[scratch[j].idx];
}

/* random_pruning with rescale: each element kept with probability density, then / density. */
static void prune_random(const float *t, size_t numel, double density, peft_rng *r, float *p) {
    for (size_t e = 0; e < numel; e++) p[e] = peft_rng_uniform(r) < density ? (float)(t[e] / density) : 0.0f;
}

static int sign_of(float x) { return (x > 0) - (x < 0); }

/* out[numel] = the o->merge of t[n][numel] with weights w[n] (combine.h). The weights are
 * rounded to float first, as PEFT holds them in a float32 tensor. `stream` seeds the DARE
 * masks of these tensors (t_i gets stream * n + i). */
static int merge_tensors(const peft_combine_opts *o, const float *const *t, const double *w, int n, size_t numel, uint64_t stream,
                         float *out, peft_err *err) {
    int by_magnitude_kind = o->merge == PEFT_MERGE_MAGNITUDE || o->merge == PEFT_MERGE_TIES;
    int ties = peft_combine_uses_sign(o), prunes = peft_combine_uses_density(o) && o->density < 1;
    float *p = prunes ? malloc((size_t)n * numel * sizeof *p) : NULL;
    mag_entry *scratch = prunes && by_magnitude_kind ? malloc(numel * sizeof *scratch) : NULL;
    if ((prunes && !p) || (prunes && by_magnitude_kind && !scratch)) {
        free(p), free(scratch);
        return peft_fail(err, PEFT_ENOMEM, "out of memory (%zu MB for the pruned tensors)", (size_t)n * numel * 4 >> 20);
    }
    const float **pt = malloc((size_t)n * sizeof *pt);
    if (!pt) {
        free(p), free(scratch);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        pt[i] = prunes ? p + (size_t)i * numel : t[i];
        if (!prunes) continue;
        if (by_magnitude_kind) {
            prune_magnitude(t[i], numel, o->density, p + (size_t)i * numel, scratch);
        } else {
            peft_rng r;
            peft_rng_seed(&r, o->seed, stream * (uint64_t)n + (uint64_t)i);
            prune_random(t[i], numel, o->density, &r, p + (size_t)i * numel);
        }
    }
    for (size_t e = 0; e < numel; e++) {
        double acc = 0;
        int kept = 0, majority = 1;
        if (ties) { /* calculate_majority_sign_mask on the pruned, unweighted tensors */
            double elect = 0;
            for (int i = 0; i < n; i++) elect += o->majority_frequency ? sign_of(pt[i][e]) : pt[i][e];
            majority = elect >= 0 ? 1 : -1;
        }
        for (int i = 0; i < n; i++) {
            if (ties && sign_of(pt[i][e]) != majority) continue;
            acc += (double)(float)w[i] * pt[i][e];
            kept++;
        }
        out[e] = (float)(ties && kept > 1 ? acc / kept : acc); /* disjoint_merge: mean over the kept, at least 1 */
    }
    free(pt), free(p), free(scratch);
    return PEFT_OK;
}

/* ---- one site ------------------------------------------------------------------------- */

static int by_value(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* torch.quantile(x, q) with linear interpolation, x [n] (sorted in place). */
static float quantile(float *x, size_t n, double q) {
    qsort(x, n, sizeof *x, by_value);
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos), hi = (size_t)ceil(pos);
    return (float)(x[lo] + (x[hi] - x[lo]) * (pos - (double)lo));
}

/* PEFT's SVD clamp: both factors into [-q, q], q the quantile of all their entries (when
 * q < 0 torch.clamp gives every entry q, and so does min(max(x, -q), q)). */
static int clamp_factors(float *A, size_t nA, float *B, size_t nB, double q, peft_err *err) {
    float *dist = malloc((nA + nB) * sizeof *dist);
    if (!dist) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    memcpy(dist, B, nB * sizeof *B); /* torch.cat([U.flatten(), Vh.flatten()]): B first */
    memcpy(dist + nB, A, nA * sizeof *A);
    float hi = quantile(dist, nA + nB, q), lo = -hi;
    free(dist);
    for (size_t e = 0; e < nA; e++) A[e] = fminf(fmaxf(A[e], lo), hi);
    for (size_t e = 0; e < nB; e++) B[e] = fminf(fmaxf(B[e], lo), hi);
    return PEFT_OK;
}

/* The SVD types: dW_i = s_i B_i A_i [out, in] merged with w_i, then B = U_R S_R [out, R],
 * A = Vt_R [R, in] (torch.linalg.svd; only the first R components are used, so the thin SVD
 * gives the same). */
static int combine_svd(const peft_combine_opts *o, const peft_combine_term *t, int n, int in, int out, int R, uint64_t stream,
                       const char *site, float *A, float *B, peft_err *err) {
    int k = in < out ? in : out;
    if (R > k)
        return peft_fail(err, PEFT_EINVAL, "%s: the SVD rank %d exceeds min(in, out) = %d of this module", site, R, k);
    size_t nW = (size_t)out * in;
    float *dW = calloc((size_t)(n + 1) * nW, sizeof *dW), *U = malloc((size_t)out * k * sizeof *U), *S = malloc((size_t)k * sizeof *S),
          *Vt = malloc((size_t)k * in * sizeof *Vt);
    const float **parts = malloc((size_t)n * sizeof *parts);
    double *w = malloc((size_t)n * sizeof *w);
    int rc = dW && U && S && Vt && parts && w ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "%s: out of memory for the SVD", site);
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        float *d = dW + (size_t)(i + 1) * nW;
        gemm_acc(d, t[i].B, t[i].A, out, in, t[i].r, 0, 0, t[i].scale); /* get_delta_weight: s B A */
        parts[i] = d;
        w[i] = t[i].weight;
    }
    if (rc == PEFT_OK) rc = merge_tensors(o, parts, w, n, nW, stream, dW, err);
    int info = rc == PEFT_OK ? svd_f32(dW, out, in, U, S, Vt) : 0;
    if (info) rc = peft_fail(err, info < 0 ? PEFT_ENOMEM : PEFT_ENUMERIC, "%s: the SVD of the combined delta failed (%d)", site, info);
    for (int r = 0; r < out && rc == PEFT_OK; r++)
        for (int j = 0; j < R; j++) B[(size_t)r * R + j] = U[(size_t)r * k + j] * S[j];
    if (rc == PEFT_OK) memcpy(A, Vt, (size_t)R * in * sizeof *A); /* the first R rows of Vt [k, in] */
    if (rc == PEFT_OK && o->svd_clamp >= 0) rc = clamp_factors(A, (size_t)R * in, B, (size_t)out * R, o->svd_clamp, err);
    free(dW), free(U), free(S), free(Vt), free(parts), free(w);
    return rc;
}

/* cat: A = [w_i s_i A_i] stacked by rows, B = [B_i] side by side, zero past sum r_i. */
static int combine_cat(const peft_combine_term *t, int n, int in, int out, int R, const char *site, float *A, float *B, peft_err *err) {
    memset(A, 0, (size_t)R * in * sizeof *A);
    memset(B, 0, (size_t)out * R * sizeof *B);
    int row = 0;
    for (int i = 0; i < n; i++) {
        if (row + t[i].r > R) return peft_fail(err, PEFT_EINVAL, "%s: the ranks add up to more than %d", site, R);
        float f = (float)(t[i].weight * t[i].scale);
        for (size_t e = 0; e < (size_t)t[i].r * in; e++) A[(size_t)row * in + e] = t[i].A[e] * f;
        for (int r = 0; r < out; r++) memcpy(B + (size_t)r * R + row, t[i].B + (size_t)r * t[i].r, (size_t)t[i].r * sizeof *B);
        row += t[i].r;
    }
    return PEFT_OK;
}

/* The merges of A and B separately (_generalized_task_arithmetic_weighted_adapter): weights
 * sqrt(|w s|), the sign on A's only (two negative factors would cancel). */
static int combine_factors(const peft_combine_opts *o, const peft_combine_term *t, int n, int in, int out, int R, uint64_t stream,
                           const char *site, float *A, float *B, peft_err *err) {
    const float **tA = malloc((size_t)n * sizeof *tA), **tB = malloc((size_t)n * sizeof *tB);
    double *wA = malloc((size_t)n * sizeof *wA), *wB = malloc((size_t)n * sizeof *wB);
    int rc = tA && tB && wA && wB ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        if (t[i].r != R) {
            rc = peft_fail(err, PEFT_EINVAL, "%s: adapter %d has rank %d here, not %d: the %s type merges A and B element-wise and needs "
                                             "one rank (use cat or svd)", site, i + 1, t[i].r, R, type_name(o));
            break;
        }
        double ws = t[i].weight * (double)t[i].scale;
        wB[i] = sqrt(fabs(ws));
        wA[i] = ws >= 0 ? wB[i] : -wB[i];
        tA[i] = t[i].A;
        tB[i] = t[i].B;
    }
    if (rc == PEFT_OK) rc = merge_tensors(o, tA, wA, n, (size_t)R * in, 2 * stream, A, err);
    if (rc == PEFT_OK) rc = merge_tensors(o, tB, wB, n, (size_t)out * R, 2 * stream + 1, B, err);
    free(tA), free(tB), free(wA), free(wB);
    return rc;
}

int peft_combine_site(const peft_combine_opts *o, const peft_combine_term *t, int n, int in, int out, int R, uint64_t stream,
                      const char *site, float *A, float *B, peft_err *err) {
    int rc = o->merge == PEFT_MERGE_CAT ? combine_cat(t, n, in, out, R, site, A, B, err)
             : o->svd                   ? combine_svd(o, t, n, in, out, R, stream, site, A, B, err)
                                        : combine_factors(o, t, n, in, out, R, stream, site, A, B, err);
    if (rc) return rc;
    for (size_t e = 0; e < (size_t)R * in; e++)
        if (!isfinite(A[e])) return peft_fail(err, PEFT_ENUMERIC, "%s: the combined lora_A holds %g (weights too large?)", site, A[e]);
    for (size_t e = 0; e < (size_t)out * R; e++)
        if (!isfinite(B[e])) return peft_fail(err, PEFT_ENUMERIC, "%s: the combined lora_B holds %g (weights too large?)", site, B[e]);
    return PEFT_OK;
}

/* ---- whole adapter sets ------------------------------------------------------------- */

/* The rank PEFT sizes the result by: r, or the largest rank_pattern value when larger. */
static int config_rank(const peft_adapter_config *c) {
    int r = c->opts.rank;
    for (int i = 0; i < c->n_rank_pattern; i++)
        if (c->rank_pattern[i].value > r) r = (int)c->rank_pattern[i].value;
    return r;
}

/* Reads dir's adapter_config.json and refuses what cannot be combined. */
static int read_lora_config(const char *dir, peft_adapter_config *cfg, peft_err *err) {
    int rc = peft_adapter_config_read(dir, cfg, err);
    if (rc) return rc;
    if (!strcmp(cfg->method, "dora"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: a DoRA adapter cannot be combined: its magnitude vector has no weighted "
                                                 "combination (PEFT's add_weighted_adapter would keep a fresh one)", dir);
    if (strcmp(cfg->method, "lora"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: a %s adapter: only plain LoRA adapters can be combined", dir, cfg->method);
    return PEFT_OK;
}

/* Copies the LoRA factors of every site of the just-loaded set into t[k * n + i] (k the
 * model's site index), each A then B in one allocation; has[k] = 1 for the adapted sites. */
static int take_terms(peft_model *m, double weight, int i, int n, peft_combine_term *t, unsigned char *has, peft_err *err) {
    for (int k = 0; k < m->n_sites; k++) {
        peft_site *s = m->sites[k];
        if (!(has[k] = s->adapter != NULL)) continue;
        peft_param p[2];
        s->adapter->method->params(s->adapter, p, 2);
        float *buf = malloc((p[0].numel + p[1].numel) * sizeof *buf);
        if (!buf) return peft_fail(err, PEFT_ENOMEM, "out of memory");
        memcpy(buf, p[0].data, p[0].numel * sizeof *buf);
        memcpy(buf + p[0].numel, p[1].data, p[1].numel * sizeof *buf);
        t[(size_t)k * n + i] = (peft_combine_term){.A = buf, .B = buf + p[0].numel, .r = (int)p[0].shape[0],
                                                   .scale = lora_adapter_scale(s->adapter), .weight = weight};
    }
    return PEFT_OK;
}

/* Loads adapter i (config cfg) and checks it against the first one (cfg0, has0). */
static int load_terms(peft_model *m, const char *const *dirs, const double *weights, int i, int n, const peft_adapter_config *cfg,
                      const peft_adapter_config *cfg0, const unsigned char *has0, peft_combine_term *t, unsigned char *has,
                      peft_err *err) {
    if (i > 0 && strcmp(cfg->base_model, cfg0->base_model))
        return peft_fail(err, PEFT_EINVAL, "%s: base model \"%s\" differs from \"%s\" of %s", dirs[i], cfg->base_model,
                         cfg0->base_model, dirs[0]);
    peft_adapter_set *set;
    int rc = peft_adapter_set_load(dirs[i], m, 0, &set, err);
    if (rc) return rc;
    rc = take_terms(m, weights[i], i, n, t, has, err);
    peft_adapter_set_free(set);
    for (int k = 0; k < m->n_sites && rc == PEFT_OK && i > 0; k++)
        if (has[k] != has0[k])
            rc = peft_fail(err, PEFT_EINVAL, "%s: %s %s, which %s %s: combined adapters must adapt the same modules", dirs[i],
                           has[k] ? "adapts" : "does not adapt", m->sites[k]->name, dirs[0], has[k] ? "does not" : "adapts");
    return rc;
}

/* The result's rank: equal ranks (the merges of A and B), their sum (cat), or svd_rank / the
 * largest (SVD types), from the configs' ranks as PEFT's _check_add_weighted_adapter. */
static int result_rank(const peft_combine_opts *o, const int *ranks, const char *const *dirs, int n, int *R, peft_err *err) {
    int sum = 0, max = 0;
    for (int i = 0; i < n; i++) {
        sum += ranks[i];
        if (ranks[i] > max) max = ranks[i];
        if (o->merge != PEFT_MERGE_CAT && !o->svd && ranks[i] != ranks[0])
            return peft_fail(err, PEFT_EINVAL, "%s: rank %d differs from rank %d of %s: the %s type needs equal ranks (use cat or svd)",
                             dirs[i], ranks[i], ranks[0], dirs[0], type_name(o));
    }
    *R = o->merge == PEFT_MERGE_CAT ? sum : o->svd && o->svd_rank > 0 ? o->svd_rank : max;
    return PEFT_OK;
}

int peft_combine_adapters(peft_model *m, const char *const *dirs, const double *weights, int n, const peft_combine_opts *opts,
                          peft_adapter_set **out, peft_err *err) {
    *out = NULL;
    peft_combine_opts o = *opts;
    if (n == 1) o.merge = PEFT_MERGE_LINEAR, o.svd = 0; /* PEFT: one adapter is always a linear combination */
    int n_all = m->n_sites, R = 0;
    peft_combine_term *t = calloc((size_t)n_all * n, sizeof *t);
    unsigned char *has0 = calloc((size_t)n_all, 1), *has = calloc((size_t)n_all, 1);
    int *ranks = calloc((size_t)n, sizeof *ranks);
    peft_adapter_config cfg0;
    int rc = t && has0 && has && ranks ? PEFT_OK : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        peft_adapter_config cfg;
        if ((rc = read_lora_config(dirs[i], &cfg, err))) break;
        if (i == 0) cfg0 = cfg;
        ranks[i] = config_rank(&cfg);
        rc = load_terms(m, dirs, weights, i, n, &cfg, &cfg0, has0, t, i ? has : has0, err);
    }
    if (rc == PEFT_OK) rc = result_rank(&o, ranks, dirs, n, &R, err);
    peft_adapter_set *set = NULL;
    if (rc == PEFT_OK) {
        peft_adapter_config cfg = cfg0; /* PEFT: replace(config of the first, r=R, lora_alpha=R, no patterns) */
        cfg.opts.rank = R;
        cfg.opts.alpha = R;
        cfg.n_rank_pattern = cfg.n_alpha_pattern = 0;
        rc = peft_adapter_set_create(m, &cfg, 0, &set, err);
    }
    for (int k = 0; k < n_all && rc == PEFT_OK; k++) {
        peft_site *s = m->sites[k];
        if (!s->adapter) continue;
        peft_param p[2];
        s->adapter->method->params(s->adapter, p, 2);
        rc = peft_combine_site(&o, t + (size_t)k * n, n, s->in_features, s->out_features, R, (uint64_t)k, s->name, p[0].data,
                               p[1].data, err);
    }
    for (size_t e = 0; t && e < (size_t)n_all * n; e++) free((void *)t[e].A);
    free(t), free(has0), free(has), free(ranks);
    if (rc) {
        peft_adapter_set_free(set);
        return rc;
    }
    *out = set;
    return PEFT_OK;
}
