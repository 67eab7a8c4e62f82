/* test_methods_grad.c: the checks every PEFT method in peft_methods[] must pass, so a method
 * added to the registry is covered without touching this file. For each method, on the sites
 * of a small random Llama (tiny config, all-linear targets, biases on every site, so shared
 * set-level tensors such as VeRA's bases are exercised as in training):
 *   - finite differences of every parameter gradient and of dx, at the site level
 *     (site_forward / site_backward, loss = sum(y * R)), without and with dropout;
 *   - backward accumulates (a second backward doubles every gradient and dx);
 *   - merge (when the method has one): merged base alone == unmerged output (1e-5), and
 *     unmerge restores W and the bias (1e-6);
 *   - save -> load round trip: parameters bit for bit and the same site outputs.
 * Gradients a method deliberately detaches are checked against the function with the
 * detached quantity held fixed (fd_freeze below: DoRA's weight norm, as PEFT). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fileio.h"
#include "methods/adapter_set.h"
#include "methods/pissa.h"
#include "models/llama.h"
#include "rng.h"

static const char *tiny_config =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":37,\"rms_norm_eps\":1e-5,\"rope_theta\":10000,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false}";

enum { N_ROWS = 5 };

static void fill(float *x, size_t n, float scale, peft_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * peft_rng_uniform(r) - 1.0f);
}

/* ---- detached quantities ----------------------------------------------------------- */

/* DoRA: y depends on m / ||W + s B A||_row with the norm detached. To differentiate the
 * function PEFT's gradient belongs to, a perturbed A or B is evaluated with m rescaled so
 * that m / norm keeps its unperturbed value. */
typedef struct fd_ctx {
    const peft_site *s;
    peft_param *p;
    int np;
    double scale;    /* alpha / r */
    float *m_saved;  /* [out] */
    double *n0;      /* [out] */
} fd_ctx;

static peft_param *find_param(peft_param *p, int np, const char *name) {
    for (int i = 0; i < np; i++)
        if (!strcmp(p[i].name, name)) return &p[i];
    return NULL;
}

static void dora_norm(const fd_ctx *c, double *n) {
    const peft_param *A = find_param(c->p, c->np, "lora_A.weight"), *B = find_param(c->p, c->np, "lora_B.weight");
    int out = c->s->out_features, in = c->s->in_features, r = (int)A->shape[0];
    for (int o = 0; o < out; o++) {
        double ss = 0;
        for (int i = 0; i < in; i++) {
            double v = c->s->weight[(size_t)o * in + i];
            for (int k = 0; k < r; k++) v += c->scale * B->data[(size_t)o * r + k] * A->data[(size_t)k * in + i];
            ss += v * v;
        }
        n[o] = sqrt(ss);
    }
}

/* Called with on = 1 after a parameter was perturbed, on = 0 after it was restored. */
static void fd_freeze(fd_ctx *c, const peft_param *perturbed, int on) {
    if (strcmp(c->s->adapter->method->name, "dora") || !strcmp(perturbed->name, "lora_magnitude_vector")) return;
    peft_param *m = find_param(c->p, c->np, "lora_magnitude_vector");
    int out = c->s->out_features;
    if (!on) {
        memcpy(m->data, c->m_saved, out * sizeof(float));
        return;
    }
    double *n1 = malloc(out * sizeof(double));
    dora_norm(c, n1);
    for (int o = 0; o < out; o++) m->data[o] = (float)(c->m_saved[o] * n1[o] / c->n0[o]);
    free(n1);
}

/* ---- site-level checks ------------------------------------------------------------- */

static double site_loss(const peft_site *s, const float *x, const float *R, int N, float *y) {
    site_forward(s, y, x, N, 1);
    double L = 0;
    for (size_t i = 0; i < (size_t)N * s->out_features; i++) L += (double)y[i] * R[i];
    return L;
}

/* Worst relative error of grad vs central differences over up to 16 coordinates of data. */
static double fd_param(fd_ctx *c, const peft_param *which, float *data, const float *grad, size_t n, const float *x,
                       const float *R, int N, float *y) {
    /* relative to the coordinate, floored at a tenth of the tensor's largest gradient: the
     * float forward leaves ~1e-5 of absolute noise in the central difference */
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(grad[i]));
    double floor_ = fmax(1e-2, 0.1 * gmax);
    size_t count = n < 16 ? n : 16;
    for (size_t k = 0; k < count; k++) {
        size_t i = n <= 16 ? k : (k * 7919) % n;
        float old = data[i], eps = 1e-2f;
        data[i] = old + eps;
        if (which) fd_freeze(c, which, 1);
        double lp = site_loss(c->s, x, R, N, y);
        data[i] = old - eps;
        if (which) fd_freeze(c, which, 1);
        double lm = site_loss(c->s, x, R, N, y);
        data[i] = old;
        if (which) fd_freeze(c, which, 0);
        double num = (lp - lm) / (2 * eps), e = fabs(num - grad[i]) / fmax(floor_, fabs(num));
        if (e > worst) worst = e;
    }
    return worst;
}

/* The parameters of the adapter at s: its own (via the vtable) plus the set's trainable
 * shared tensors (keys outside base_model.model.*), which receive this site's gradient. */
static int site_params(peft_adapter_set *set, peft_site *s, peft_param *out, int max) {
    int n = s->adapter->method->params(s->adapter, out, max);
    peft_named_param *sp = peft_adapter_set_params(set);
    for (int i = 0; i < peft_adapter_set_n_params(set) && n < max; i++)
        if (strncmp(sp[i].key, "base_model.model.", 17)) out[n++] = sp[i].p;
    return n;
}

static void check_site(peft_adapter_set *set, peft_site *s, const peft_adapter_config *cfg, double dropout, peft_rng *rng) {
    const char *mname = s->adapter->method->name;
    int N = N_ROWS, in = s->in_features, out = s->out_features;
    float *x = malloc(sizeof(float) * N * in), *R = malloc(sizeof(float) * N * out), *y = malloc(sizeof(float) * N * out),
          *dx = calloc((size_t)N * in, sizeof(float)), *dx2 = calloc((size_t)N * in, sizeof(float));
    fill(x, (size_t)N * in, 1.0f, rng);
    fill(R, (size_t)N * out, 1.0f, rng);
    peft_param p[16];
    int np = site_params(set, s, p, 16);
    fd_ctx c = {.s = s, .p = p, .np = np, .scale = cfg->opts.alpha / cfg->opts.rank};
    c.m_saved = malloc(out * sizeof(float));
    c.n0 = malloc(out * sizeof(double));
    peft_param *m = find_param(p, np, "lora_magnitude_vector");
    if (m && !strcmp(mname, "dora")) {
        memcpy(c.m_saved, m->data, out * sizeof(float));
        dora_norm(&c, c.n0);
    }
    peft_adapter_set_zero_grad(set);
    site_loss(s, x, R, N, y);
    site_backward(s, dx, R, x, N);
    double worst = 0;
    char worst_name[80] = "";
    for (int k = 0; k < np; k++) {
        double e = fd_param(&c, &p[k], p[k].data, p[k].grad, p[k].numel, x, R, N, y);
        if (e > worst) worst = e, snprintf(worst_name, sizeof worst_name, "%.63s", p[k].name);
        CHECK_MSG(e < 2e-3, "%s dropout %.1f %s: %s rel err %.2e", mname, dropout, s->name, p[k].name, e);
    }
    double ex = fd_param(&c, NULL, x, dx, (size_t)N * in, x, R, N, y);
    CHECK_MSG(ex < 2e-3, "%s dropout %.1f %s: dx rel err %.2e", mname, dropout, s->name, ex);
    printf("  %-5s %-34s dropout %.1f: %d params, max FD rel err %.1e (%s), dx %.1e\n", mname, s->name, dropout, np, worst,
           worst_name, ex);

    /* backward accumulates: a second identical backward doubles everything */
    float *g1 = NULL;
    size_t total = 0;
    for (int k = 0; k < np; k++) total += p[k].numel;
    g1 = malloc(total * sizeof(float));
    peft_adapter_set_zero_grad(set);
    memset(dx, 0, sizeof(float) * N * in);
    site_loss(s, x, R, N, y);
    site_backward(s, dx, R, x, N);
    size_t off = 0;
    for (int k = 0; k < np; k++, off += p[k - 1].numel) memcpy(g1 + off, p[k].grad, p[k].numel * sizeof(float));
    memcpy(dx2, dx, sizeof(float) * N * in);
    site_backward(s, dx2, R, x, N);
    /* max |second - 2 first| / max |first|, per tensor (the adds round differently) */
    double acc = 0, big = 0, worst_abs = 0;
    off = 0;
    for (int k = 0; k < np; k++) {
        big = 0, worst_abs = 0;
        for (size_t i = 0; i < p[k].numel; i++, off++) {
            big = fmax(big, fabs(g1[off]));
            worst_abs = fmax(worst_abs, fabs(p[k].grad[i] - 2 * g1[off]));
        }
        acc = fmax(acc, worst_abs / fmax(big, 1e-20));
    }
    big = 0, worst_abs = 0;
    for (int i = 0; i < N * in; i++) big = fmax(big, fabs(dx[i])), worst_abs = fmax(worst_abs, fabs(dx2[i] - 2 * dx[i]));
    acc = fmax(acc, worst_abs / fmax(big, 1e-20));
    CHECK_MSG(acc < 1e-5, "%s %s: backward does not accumulate (rel diff %.2e)", mname, s->name, acc);
    free(g1);
    free(c.m_saved), free(c.n0);
    free(x), free(R), free(y), free(dx), free(dx2);
}

static void check_merge(peft_site *s, peft_rng *rng) {
    const peft_method *meth = s->adapter->method;
    int N = N_ROWS, in = s->in_features, out = s->out_features;
    float *x = malloc(sizeof(float) * N * in), *y0 = malloc(sizeof(float) * N * out), *y1 = malloc(sizeof(float) * N * out),
          *W0 = malloc(sizeof(float) * in * out), *b0 = malloc(sizeof(float) * out);
    fill(x, (size_t)N * in, 1.0f, rng);
    memcpy(W0, s->weight, sizeof(float) * in * out);
    memcpy(b0, s->bias, sizeof(float) * out);
    s->adapter->training = 0;
    site_forward(s, y0, x, N, 0);
    peft_err err = {0};
    CHECK_MSG(meth->merge(s->adapter, s, +1, &err) == 0, "%s", err.msg);
    peft_adapter *keep = s->adapter;
    s->adapter = NULL;
    site_forward(s, y1, x, N, 0);
    s->adapter = keep;
    double md = 0, wd = 0, bd = 0;
    for (int i = 0; i < N * out; i++) md = fmax(md, fabs(y1[i] - y0[i]) / fmax(1.0, fabs(y0[i])));
    CHECK_MSG(meth->merge(s->adapter, s, -1, &err) == 0, "%s", err.msg);
    for (int i = 0; i < in * out; i++) wd = fmax(wd, fabs(s->weight[i] - W0[i]));
    for (int i = 0; i < out; i++) bd = fmax(bd, fabs(s->bias[i] - b0[i]));
    CHECK_MSG(md < 1e-5, "%s %s: merged vs unmerged output differ by %g", meth->name, s->name, md);
    CHECK_MSG(wd < 1e-6 && bd < 1e-6, "%s %s: unmerge leaves W off by %g, bias by %g", meth->name, s->name, wd, bd);
    printf("  %-5s %-34s merge: output diff %.1e, unmerge W diff %.1e, bias diff %.1e\n", meth->name, s->name, md, wd, bd);
    memcpy(s->weight, W0, sizeof(float) * in * out); /* exact state for the next checks */
    memcpy(s->bias, b0, sizeof(float) * out);
    free(x), free(y0), free(y1), free(W0), free(b0);
}

/* Site outputs of every adapted site at fixed inputs (inference mode). */
static float *all_outputs(peft_llama *m, size_t *n_out) {
    size_t total = 0;
    for (int i = 0; i < llama_n_sites(m); i++) total += (size_t)N_ROWS * llama_site(m, i)->out_features;
    float *ys = malloc(total * sizeof(float)), *x = malloc(sizeof(float) * N_ROWS * 64);
    peft_rng r;
    peft_rng_seed(&r, 5, 5);
    size_t off = 0;
    for (int i = 0; i < llama_n_sites(m); i++) {
        peft_site *s = llama_site(m, i);
        fill(x, (size_t)N_ROWS * s->in_features, 1.0f, &r);
        site_forward(s, ys + off, x, N_ROWS, 0);
        off += (size_t)N_ROWS * s->out_features;
    }
    free(x);
    *n_out = total;
    return ys;
}

static void check_method(const peft_method *meth, peft_llama *m, const char *dir, const peft_corda_covs *covs) {
    printf("%s (peft_type %s)\n", meth->name, meth->peft_type);
    for (int pass = 0; pass < 2; pass++) {
        double dropout = pass ? 0.3 : 0.0;
        peft_adapter_config cfg;
        peft_adapter_config_default(&cfg);
        snprintf(cfg.method, sizeof cfg.method, "%s", meth->name);
        strcpy(cfg.target_modules, "all-linear");
        cfg.opts.rank = 3;
        cfg.opts.alpha = 6;
        cfg.opts.dropout = dropout;
        cfg.opts.seed = 3;
        cfg.opts.init_scale = 0.1;
        strcpy(cfg.opts.feedforward_modules, "down_proj");
        cfg.opts.corda_covs = covs;
        peft_err err = {0};
        peft_adapter_set *set;
        int rc = peft_adapter_set_create(&m->base, &cfg, N_ROWS, &set, &err);
        CHECK_MSG(rc == 0, "%s: %s", meth->name, err.msg);
        if (rc) return;
        peft_rng r;
        peft_rng_seed(&r, 17, pass);
        peft_named_param *p = peft_adapter_set_params(set);
        for (int i = 0; i < peft_adapter_set_n_params(set); i++) /* nonzero values, away from 0 (IA3 scales) */
            for (size_t j = 0; j < p[i].p.numel; j++) p[i].p.data[j] = (0.4f + 0.6f * peft_rng_uniform(&r)) * (peft_rng_uniform(&r) < 0.5f ? -1.0f : 1.0f);
        peft_adapter_set_mode(set, pass == 1, 1234);
        /* a layer-0 attention site, a k_proj (out 8, the narrowest) and a layer-1 down_proj */
        const char *names[] = {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj",
                               "model.layers.0.mlp.gate_proj"};
        for (int k = 0; k < 4; k++) {
            peft_site *s = llama_find_site(m, names[k]);
            CHECK(s && s->adapter);
            if (s && s->adapter) check_site(set, s, &cfg, dropout, &r);
        }
        if (pass == 0 && meth->merge) {
            for (int k = 0; k < 4; k++) check_merge(llama_find_site(m, names[k]), &r);
        }
        if (pass == 0 && !meth->trains_base) { /* save -> load round trip (LISA writes the model: test_lisa.c) */
            peft_adapter_set_mode(set, 0, 0);
            size_t n1, n2;
            float *ys = all_outputs(m, &n1);
            int np = peft_adapter_set_n_params(set);
            size_t numel = peft_adapter_set_numel(set), off = 0;
            float *vals = malloc(numel * sizeof(float));
            for (int i = 0; i < np; i++, off += p[i - 1].p.numel) memcpy(vals + off, p[i].p.data, p[i].p.numel * sizeof(float));
            CHECK_MSG(peft_adapter_set_save(set, dir, &err) == 0, "%s", err.msg);
            peft_adapter_set_free(set);
            set = NULL;
            rc = peft_adapter_set_load_covs(dir, &m->base, N_ROWS, covs, &set, &err);
            CHECK_MSG(rc == 0, "%s: load: %s", meth->name, err.msg);
            if (rc == 0) {
                CHECK(peft_adapter_set_n_params(set) == np && peft_adapter_set_numel(set) == numel);
                CHECK(!strcmp(peft_adapter_set_config(set)->method, meth->name));
                p = peft_adapter_set_params(set);
                int same = 1;
                off = 0;
                for (int i = 0; i < np && same; i++, off += p[i - 1].p.numel) same = !memcmp(vals + off, p[i].p.data, p[i].p.numel * sizeof(float));
                CHECK_MSG(same, "%s: parameters differ after save -> load", meth->name);
                float *ys2 = all_outputs(m, &n2);
                int same_y = n1 == n2 && !memcmp(ys, ys2, n1 * sizeof(float));
                CHECK_MSG(same_y, "%s: site outputs differ after save -> load", meth->name);
                printf("  %-5s save -> load: %d tensors, %zu values, params %s, outputs %s\n", meth->name, np, numel,
                       same ? "identical" : "DIFFER", same_y ? "identical" : "DIFFER");
                free(ys2);
            }
            free(ys), free(vals);
        }
        peft_adapter_set_free(set);
    }
}

/* CorDA's calibration covariances for every site: X^T X / n of a random correlated X [2 in, in]. */
static peft_corda_covs *random_covs(peft_llama *m, peft_rng *r) {
    int ns = llama_n_sites(m);
    peft_corda_covs *c = calloc(1, sizeof *c);
    c->cov = calloc((size_t)ns, sizeof *c->cov);
    for (int i = 0; i < ns; i++) {
        const peft_site *s = llama_site(m, i);
        int in = s->in_features, n = 2 * in;
        peft_corda_cov *e = &c->cov[c->n++];
        snprintf(e->name, sizeof e->name, "%s", s->name);
        e->in = in;
        e->samples = 1;
        e->C = calloc((size_t)in * in, sizeof(double));
        float *X = malloc(sizeof(float) * n * in);
        fill(X, (size_t)n * in, 1.0f, r);
        for (int k = 0; k < n; k++)
            for (int a = 0; a < in; a++)
                for (int b = 0; b < in; b++) e->C[(size_t)a * in + b] += (double)X[(size_t)k * in + a] * X[(size_t)k * in + b] / n;
        free(X);
    }
    return c;
}

int main(void) {
    char dir[] = "/tmp/peft_methods_grad_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[600], adir[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    peft_err err = {0};
    CHECK(peft_write_file_atomic(path, tiny_config, strlen(tiny_config), &err) == 0);
    peft_llama *m;
    CHECK_MSG(llama_load_shapes(path, &m, &err) == 0, "%s", err.msg);
    /* random weights and biases on every site (biases make "correct with bias" a checked claim) */
    peft_rng r;
    peft_rng_seed(&r, 11, 2);
    int ns = llama_n_sites(m);
    float **bufs = calloc((size_t)ns, sizeof *bufs);
    for (int i = 0; i < ns; i++) {
        peft_site *s = llama_site(m, i);
        size_t nw = (size_t)s->in_features * s->out_features;
        bufs[i] = malloc((nw + s->out_features) * sizeof(float));
        fill(bufs[i], nw + s->out_features, 0.4f, &r);
        s->weight = bufs[i];
        s->bias = bufs[i] + nw;
    }
    /* norm weights too, for methods that train them with a layer's sites (LISA) */
    float *norms = malloc(sizeof(float) * llama_n_norm_sites(m) * m->cfg.hidden_size);
    fill(norms, (size_t)llama_n_norm_sites(m) * m->cfg.hidden_size, 1.0f, &r);
    for (int i = 0; i < llama_n_norm_sites(m); i++) llama_norm_site(m, i)->weight = norms + (size_t)i * m->cfg.hidden_size;
    peft_corda_covs *covs = random_covs(m, &r);
    for (int i = 0; peft_methods[i]; i++)
        if (!peft_methods[i]->attach_model) /* model-level methods have tests of their own (test_prompt_tuning.c) */
            check_method(peft_methods[i], m, adir, covs);
    peft_corda_covs_free(covs);
    for (int i = 0; i < ns; i++) llama_site(m, i)->weight = NULL, llama_site(m, i)->bias = NULL, free(bufs[i]);
    free(bufs);
    for (int i = 0; i < llama_n_norm_sites(m); i++) llama_norm_site(m, i)->weight = NULL;
    free(norms);
    llama_free(m);
    snprintf(path, sizeof path, "rm -rf %s", dir);
    CHECK(system(path) == 0);
    return check_report("test_methods_grad");
}
