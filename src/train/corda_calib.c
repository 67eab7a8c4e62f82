/* corda_calib.c: CorDA's calibration pass (corda_calib.h). The recorder is an internal
 * peft_method with a forward only: it sees each target site's input during peft_model_forward,
 * adds nothing to y, and sums the per-sample covariances into its site's f64 accumulator. */
#include "corda_calib.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

typedef struct recorder {
    peft_adapter base;
    peft_corda_collector *c;
    double *acc;   /* [in, in] sum of the samples' covariances */
    long samples;
} recorder;

struct peft_corda_collector {
    peft_model *m;
    int n_sites;
    peft_site **sites;   /* [n_sites] the target sites, each carrying a recorder */
    recorder *rec;       /* [n_sites] */
    int B, T;
    int *len;            /* [B] tokens of each row that count in this batch (0: not a sample) */
    float *xn, *cov;     /* scratch: [T, max_in], [max_in, max_in] */
    int rc;              /* first error met inside a forward (sticky) */
    peft_err err;
};

/* PEFT's hook, per sample b: xn = x_b / |max(x_b)|, acc += xn^T xn. */
static void record_forward(peft_adapter *base, const peft_site *s, float *y, const float *x, int N, int save) {
    (void)y, (void)save;
    recorder *r = (recorder *)base;
    peft_corda_collector *c = r->c;
    int in = s->in_features;
    for (int b = 0; b < c->B && c->rc == PEFT_OK && (long)(b + 1) * c->T <= N; b++) {
        int len = c->len[b];
        if (len <= 0) continue;
        const float *xb = x + (size_t)b * c->T * in;
        size_t n = (size_t)len * in;
        float mx = -INFINITY;
        for (size_t i = 0; i < n; i++) mx = xb[i] > mx || isnan(xb[i]) ? xb[i] : mx;
        if (!isfinite(mx) || mx == 0.0f) {
            c->rc = peft_fail(&c->err, PEFT_EINVAL, "%s: CorDA calibration input of row %d has maximum %g (must be finite and non-zero)",
                              s->name, b, mx);
            return;
        }
        float d = fabsf(mx);
        for (size_t i = 0; i < n; i++) {
            c->xn[i] = xb[i] / d;
            if (!isfinite(c->xn[i])) {
                c->rc = peft_fail(&c->err, PEFT_EINVAL, "%s: CorDA calibration input of row %d is not finite", s->name, b);
                return;
            }
        }
        memset(c->cov, 0, (size_t)in * in * sizeof(float));
        gemm_acc(c->cov, c->xn, c->xn, in, in, len, 1, 0, 1.0f); /* cov [in, in] = xn^T xn */
        /* The sgemm's blocks round (i, j) and (j, i) differently (per split and per CPU's
         * kernel); the covariance is symmetric by definition, so take the upper triangle. */
        for (size_t i = 0; i < (size_t)in; i++)
            for (size_t j = 0; j < i; j++) c->cov[i * in + j] = c->cov[j * in + i];
        for (size_t i = 0; i < (size_t)in * in; i++) r->acc[i] += c->cov[i];
        r->samples++;
    }
}

static const peft_method recorder_method = {
    .abi_version = PEFT_METHOD_ABI,
    .name = "corda_calibration",
    .forward = record_forward,
};

static void collector_free(peft_corda_collector *c) {
    if (!c) return;
    for (int i = 0; i < c->n_sites; i++) {
        if (c->sites[i]->adapter == &c->rec[i].base) c->sites[i]->adapter = NULL;
        free(c->rec[i].acc);
    }
    free(c->sites), free(c->rec), free(c->len), free(c->xn), free(c->cov);
    free(c);
}

int peft_corda_collect_begin(peft_model *m, const peft_adapter_config *cfg, int B, int T, peft_corda_collector **out,
                             peft_err *err) {
    *out = NULL;
    peft_corda_collector *c = calloc(1, sizeof *c);
    int ns = m->n_sites, rc = PEFT_OK, max_in = 0;
    if (!c || !(c->sites = calloc((size_t)ns, sizeof *c->sites)) || !(c->rec = calloc((size_t)ns, sizeof *c->rec)) ||
        !(c->len = calloc((size_t)B, sizeof *c->len))) {
        collector_free(c);
        return peft_fail(err, PEFT_ENOMEM, "out of memory");
    }
    c->m = m, c->B = B, c->T = T;
    int n = 0;
    rc = peft_adapter_set_targets(m, cfg, c->sites, &n, err);
    if (rc == PEFT_OK && n == 0) rc = peft_fail(err, PEFT_EINVAL, "CorDA calibration: target modules \"%s\" match no linear layer", cfg->target_modules);
    for (int i = 0; i < n && rc == PEFT_OK; i++) {
        peft_site *s = c->sites[i];
        if (s->adapter) rc = peft_fail(err, PEFT_EINVAL, "%s already carries an adapter: calibrate on the base model", s->name);
        else if (!s->weight) rc = peft_fail(err, PEFT_EINVAL, "%s: CorDA calibration needs the base weights", s->name);
        else if (!(c->rec[i].acc = calloc((size_t)s->in_features * s->in_features, sizeof(double))))
            rc = peft_fail(err, PEFT_ENOMEM, "%s: cannot allocate the CorDA covariance", s->name);
        if (rc) break;
        c->rec[i].base.method = &recorder_method;
        c->rec[i].c = c;
        s->adapter = &c->rec[i].base;
        c->n_sites = i + 1;
        if (s->in_features > max_in) max_in = s->in_features;
    }
    if (rc == PEFT_OK && (!(c->xn = malloc((size_t)T * max_in * sizeof(float))) ||
                          !(c->cov = malloc((size_t)max_in * max_in * sizeof(float)))))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc) {
        collector_free(c);
        return rc;
    }
    *out = c;
    return PEFT_OK;
}

int peft_corda_collect_batch(peft_corda_collector *c, peft_acts *a, const int32_t *ids, const int32_t *pos, int rows,
                             peft_err *err) {
    for (int b = 0; b < c->B; b++) {
        /* a row's content ends after the last token with pos != 0 (every example has >= 2 tokens);
         * what follows is padding */
        int len = pos ? 0 : c->T;
        for (int t = 0; pos && t < c->T; t++)
            if (pos[(size_t)b * c->T + t] != 0) len = t + 1;
        c->len[b] = b < rows ? len : 0;
    }
    peft_batch batch = {.B = c->B, .T = c->T, .ids = ids, .pos = pos}; /* the model refuses acts of another size */
    int rc = peft_model_forward(c->m, a, &batch, NULL, NULL, err);
    if (rc == PEFT_OK && c->rc) {
        *err = c->err;
        rc = c->rc;
    }
    return rc;
}

int peft_corda_collect_end(peft_corda_collector *c, int rc, peft_corda_covs **out, peft_err *err) {
    *out = NULL;
    peft_corda_covs *covs = rc ? NULL : calloc(1, sizeof *covs);
    if (rc == PEFT_OK && (!covs || !(covs->cov = calloc((size_t)c->n_sites, sizeof *covs->cov))))
        rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < c->n_sites && rc == PEFT_OK; i++) {
        const peft_site *s = c->sites[i];
        recorder *r = &c->rec[i];
        if (r->samples == 0) {
            rc = peft_fail(err, PEFT_EINVAL, "%s: no CorDA calibration sample reached the site", s->name);
            break;
        }
        peft_corda_cov *e = &covs->cov[covs->n++];
        snprintf(e->name, sizeof e->name, "%s", s->name);
        e->in = s->in_features;
        e->samples = r->samples;
        e->C = r->acc; /* the sum becomes the mean in place; the collector gives it up */
        r->acc = NULL;
        for (size_t j = 0; j < (size_t)e->in * e->in; j++) e->C[j] /= (double)r->samples;
    }
    collector_free(c);
    if (rc) {
        peft_corda_covs_free(covs);
        return rc;
    }
    *out = covs;
    return PEFT_OK;
}

int peft_corda_calibrate(peft_model *m, const peft_adapter_config *cfg, const peft_dataset *ds, int B, int T, int n_batches,
                         peft_corda_covs **out, peft_err *err) {
    *out = NULL;
    int n_rows = peft_dataset_rows(ds, 0);
    if (n_batches < 1 || n_rows < 1)
        return peft_fail(err, PEFT_EINVAL, "CorDA calibration needs at least one batch of data (%d batches, %d rows)", n_batches, n_rows);
    peft_corda_collector *c;
    int rc = peft_corda_collect_begin(m, cfg, B, T, &c, err);
    if (rc) return rc;
    peft_acts *a = NULL;
    size_t n = (size_t)B * T;
    int32_t *ids = malloc(n * sizeof *ids), *tgt = malloc(n * sizeof *tgt), *pos = malloc(n * sizeof *pos);
    rc = ids && tgt && pos ? peft_model_acts_alloc(m, B, T, 0, 0, &a, err) : peft_fail(err, PEFT_ENOMEM, "out of memory");
    for (int k = 0; k < n_batches && k * B < n_rows && rc == PEFT_OK; k++) {
        int rows = n_rows - k * B < B ? n_rows - k * B : B;
        for (int b = 0; b < B && rc == PEFT_OK; b++) {
            int32_t *bi = ids + (size_t)b * T, *bt = tgt + (size_t)b * T, *bp = pos + (size_t)b * T;
            if (b < rows) rc = peft_dataset_row(ds, 0, k * B + b, bi, bt, bp);
            else
                for (int t = 0; t < T; t++) bi[t] = 0, bp[t] = t; /* filler, not a sample */
            if (rc) rc = peft_fail(err, rc, "calibration row %d could not be read", k * B + b);
        }
        if (rc == PEFT_OK) rc = peft_corda_collect_batch(c, a, ids, pos, rows, err);
    }
    peft_model_acts_free(m, a);
    free(ids), free(tgt), free(pos);
    return peft_corda_collect_end(c, rc, out, err);
}
