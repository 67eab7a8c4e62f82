/* driver_encoder.c: the C side of tests/models/test_bert_parity.py.
 *
 *   driver_encoder fd
 *     The composed encoder layer (models/encoder.c), post-LN and pre-LN, with key padding and LoRA
 *     at q and v, against central finite differences of its own float forward: loss
 *     L = sum(out * R) in double; gradients of x, both LayerNorms' weight and bias, LoRA A and B.
 *     Prints one line per gradient and "fd: N checks, F failed"; exits 1 on a failure.
 *
 *   driver_encoder run DIR [RANK ALPHA]
 *     Loads DIR/model (bert / roberta, task seq-cls) and DIR/batch.safetensors: I32 "ids" [B, T],
 *     "lengths" [B], optional "type_ids" [B, T] and "labels" [B]. With RANK: LoRA at every query
 *     and value site, A and B read from DIR/lora.safetensors under PEFT's keys
 *     ("base_model.model.<site>.lora_A.weight"). Runs a training forward (and with labels the
 *     backward) and writes DIR/out.safetensors: "logits" [B, NL], "hidden" [B*T, C], "pooled"
 *     [B, C], with labels "loss" [1], every LoRA gradient under its PEFT key and every head
 *     gradient under "grad.<head name>", every LayerNorm's weight and bias gradient under
 *     "grad.<norm>.weight" / ".bias" (hooked as LayerNorm tuning does). PEFT_DRIVER_RECOMPUTE=1: recompute each layer in backward.
 *
 *   driver_encoder train DIR OUT STEPS LR
 *     A fresh LoRA adapter set (query,value, r 4, alpha 8) on DIR/model trained STEPS AdamW
 *     steps on the batch's labels through the peft_model interface, saved to OUT in PEFT's
 *     format; DIR/out.safetensors gets the trained model's "logits" [B, NL].
 *
 *   driver_encoder save DIR OUT
 *     DIR/model loaded (seq-cls) and written back with peft_model_save_hf into OUT.
 *
 *   driver_encoder load DIR TASK [N_LABELS [shapes]]
 *     DIR loaded for TASK (n_labels N_LABELS, 0: config.json's; "shapes": shapes_only): one
 *     line of what was loaded, or the error on stderr and exit 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "methods/adapter.h"
#include "methods/adapter_set.h"
#include "methods/lora.h"
#include "models/bert.h"
#include "models/encoder.h"
#include "train/optim.h"

/* ---- fd ------------------------------------------------------------------------------------ */

#define FD_EPS 1e-2f
#define FD_TOL 3e-3 /* ||numeric - analytic|| / ||numeric|| */

static uint64_t rng_ = 0x9e3779b97f4a7c15ull;
static float urand_(void) { /* uniform [-1, 1) */
    rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;
    return (float)((double)(rng_ >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *rbuf_(size_t n, float amp, float mean) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = mean + amp * urand_();
    return p;
}

typedef struct fd_ctx {
    peft_encoder_cfg cfg;
    peft_encoder_layer L;
    peft_site sites[6];
    peft_norm_site norms[2];
    peft_encoder_acts acts;
    peft_encoder_grads grads;
    float *x, *out, *R, *dx;
    int32_t lengths[2];
    int B, T;
} fd_ctx;

static double fd_loss(fd_ctx *c) {
    CHECK(encoder_layer_forward(&c->cfg, &c->L, &c->acts, c->out, c->x, c->lengths, c->B, c->T, 0) == PEFT_OK);
    const size_t n = (size_t)c->B * c->T * c->cfg.C;
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)c->out[i] * c->R[i];
    return s;
}

/* Central differences on x[n] against the analytic gradient g[n]. */
static void fd_check(fd_ctx *c, const char *what, float *x, const float *g, size_t n) {
    double num2 = 0.0, diff2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        const float x0 = x[i];
        x[i] = x0 + FD_EPS;
        const double lp = fd_loss(c);
        x[i] = x0 - FD_EPS;
        const double lm = fd_loss(c);
        x[i] = x0;
        const double num = (lp - lm) / (2.0 * FD_EPS), ana = g[i];
        num2 += num * num;
        diff2 += (num - ana) * (num - ana);
    }
    const double err = sqrt(diff2) / fmax(sqrt(num2), 1e-6);
    printf("  %-10s %-12s grad rel err %.3g\n", c->cfg.pre_ln ? "pre-LN" : "post-LN", what, err);
    CHECK_MSG(err < FD_TOL, "%s %s: gradcheck %.3g", c->cfg.pre_ln ? "pre-LN" : "post-LN", what, err);
}

static void fd_run(int pre_ln) {
    fd_ctx c = {.cfg = {.C = 16, .NH = 4, .HD = 4, .F = 24, .eps = 1e-5f, .pre_ln = pre_ln, .gelu_kind = GELU_ERF},
                .lengths = {5, 3}, .B = 2, .T = 5};
    const int C = c.cfg.C, F = c.cfg.F, N = c.B * c.T;
    const int in[6] = {C, C, C, C, C, F}, out[6] = {C, C, C, C, F, C};
    peft_site **ps[6] = {&c.L.q, &c.L.k, &c.L.v, &c.L.o, &c.L.up, &c.L.down};
    for (int s = 0; s < 6; s++) {
        peft_site *site = &c.sites[s];
        snprintf(site->name, sizeof site->name, "layer.site%d", s);
        site->in_features = in[s];
        site->out_features = out[s];
        site->weight = rbuf_((size_t)in[s] * out[s], 0.6f / sqrtf((float)in[s]) * 1.7f, 0.0f);
        site->bias = rbuf_((size_t)out[s], 0.1f, 0.0f);
        *ps[s] = site;
    }
    for (int k = 0; k < 2; k++) {
        peft_norm_site *n = &c.norms[k];
        n->dim = C;
        n->weight = rbuf_((size_t)C, 0.3f, 1.0f);
        n->bias = rbuf_((size_t)C, 0.2f, 0.0f);
        n->grad = calloc((size_t)C, sizeof(float));
        n->bias_grad = calloc((size_t)C, sizeof(float));
    }
    c.L.ln1 = &c.norms[0];
    c.L.ln2 = &c.norms[1];
    /* LoRA at q and v, B made non-zero so that A gets a gradient */
    peft_method_opts mo = {.rank = 2, .alpha = 4, .seed = 7};
    peft_adapter *ad[2];
    peft_param prm[2][2];
    float *work = malloc((size_t)N * (C + 8) * sizeof(float) * 4);
    for (int i = 0; i < 2; i++) {
        peft_site *s = i ? c.L.v : c.L.q;
        peft_err err = {0};
        CHECK(peft_method_lora.create(&mo, s, N, &ad[i], &err) == PEFT_OK);
        ad[i]->training = 1;
        ad[i]->work = work;
        CHECK(peft_method_lora.work_floats(ad[i], s, N) <= (size_t)N * (C + 8) * 4);
        CHECK(peft_method_lora.params(ad[i], prm[i], 2) == 2);
        for (int p = 0; p < 2; p++)
            for (size_t j = 0; j < prm[i][p].numel; j++) prm[i][p].data[j] = 0.4f * urand_();
        s->adapter = ad[i];
    }
    float *aslab = malloc(encoder_acts_floats(&c.cfg, c.B, c.T) * sizeof(float));
    float *gslab = malloc(encoder_grads_floats(&c.cfg, c.B, c.T) * sizeof(float));
    encoder_acts_point(&c.acts, aslab, &c.cfg, c.B, c.T);
    encoder_grads_point(&c.grads, gslab, &c.cfg, c.B, c.T);
    c.x = rbuf_((size_t)N * C, 1.0f, 0.0f);
    c.R = rbuf_((size_t)N * C, 1.0f, 0.0f);
    c.out = malloc((size_t)N * C * sizeof(float));
    c.dx = malloc((size_t)N * C * sizeof(float));

    CHECK(encoder_layer_forward(&c.cfg, &c.L, &c.acts, c.out, c.x, c.lengths, c.B, c.T, 1) == PEFT_OK);
    CHECK(encoder_layer_backward(&c.cfg, &c.L, &c.acts, &c.grads, c.dx, c.R, c.x, c.lengths, c.B, c.T) == PEFT_OK);
    /* the analytic gradients are in place; the FD forwards below do not save (a->training stays,
     * but save = 0 leaves the backward's state alone and gradients are not touched) */
    float *gA[2][2];
    for (int i = 0; i < 2; i++)
        for (int p = 0; p < 2; p++) {
            gA[i][p] = malloc(prm[i][p].numel * sizeof(float));
            memcpy(gA[i][p], prm[i][p].grad, prm[i][p].numel * sizeof(float));
        }
    fd_check(&c, "x", c.x, c.dx, (size_t)N * C);
    fd_check(&c, "ln1.weight", c.norms[0].weight, c.norms[0].grad, (size_t)C);
    fd_check(&c, "ln1.bias", c.norms[0].bias, c.norms[0].bias_grad, (size_t)C);
    fd_check(&c, "ln2.weight", c.norms[1].weight, c.norms[1].grad, (size_t)C);
    fd_check(&c, "ln2.bias", c.norms[1].bias, c.norms[1].bias_grad, (size_t)C);
    for (int i = 0; i < 2; i++)
        for (int p = 0; p < 2; p++) {
            char what[32];
            snprintf(what, sizeof what, "%s.%s", i ? "v" : "q", p ? "B" : "A");
            fd_check(&c, what, prm[i][p].data, gA[i][p], prm[i][p].numel);
            free(gA[i][p]);
        }
    /* a padding row's output does not change a valid row: perturb row (b=1, t=4) of x */
    fd_loss(&c);
    float *ref = malloc((size_t)N * C * sizeof(float));
    memcpy(ref, c.out, (size_t)N * C * sizeof(float));
    for (int j = 0; j < C; j++) c.x[(size_t)(1 * c.T + 4) * C + j] += 1.0f;
    fd_loss(&c);
    double moved = 0.0;
    for (int t = 0; t < c.lengths[1]; t++)
        for (int j = 0; j < C; j++)
            moved = fmax(moved, fabs(c.out[(size_t)(c.T + t) * C + j] - ref[(size_t)(c.T + t) * C + j]));
    CHECK_MSG(moved == 0.0, "padding leaked into valid rows: %g", moved);
    free(ref);

    for (int i = 0; i < 2; i++) peft_method_lora.destroy(ad[i]);
    for (int s = 0; s < 6; s++) free(c.sites[s].weight), free(c.sites[s].bias);
    for (int k = 0; k < 2; k++)
        free(c.norms[k].weight), free(c.norms[k].bias), free(c.norms[k].grad), free(c.norms[k].bias_grad);
    free(work), free(aslab), free(gslab), free(c.x), free(c.R), free(c.out), free(c.dx);
}

/* ---- run ----------------------------------------------------------------------------------- */

static const int32_t *batch_i32(const peft_st_file *f, const char *name, size_t numel, int required, peft_err *err) {
    const peft_st_tensor *t = peft_st_find(f, name);
    if (!t && !required) return NULL;
    if (!t || t->dtype != PEFT_I32 || t->numel != numel) {
        peft_fail(err, PEFT_EFORMAT, "%s: needs I32 \"%s\" of %zu values", f->path, name, numel);
        return NULL;
    }
    return (const int32_t *)t->data;
}

#define MAX_OUT 512
typedef struct outs {
    int n;
    peft_st_entry e[MAX_OUT];
    char names[MAX_OUT][192];
} outs;
static void out_add(outs *o, const char *name, const float *data, int64_t d0, int64_t d1) {
    if (o->n == MAX_OUT) return;
    snprintf(o->names[o->n], sizeof o->names[0], "%s", name);
    o->e[o->n] = (peft_st_entry){.name = o->names[o->n], .dtype = PEFT_F32, .ndim = d1 ? 2 : 1, .data = data};
    o->e[o->n].shape[0] = d0;
    o->e[o->n].shape[1] = d1;
    o->n++;
}

/* Loads DIR/model (seq-cls) and DIR/batch.safetensors into b (pointing into *bf). */
static int open_model_batch(const char *dir, peft_model **m, peft_st_file **bf, peft_batch *b, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model", dir);
    const peft_model_load_opts lo = {.task = PEFT_TASK_SEQ_CLS};
    int rc = peft_model_load(path, &lo, m, err);
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_open(path, bf, err);
    const peft_st_tensor *ids_t = rc ? NULL : peft_st_find(*bf, "ids");
    if (rc == PEFT_OK && (!ids_t || ids_t->ndim != 2)) rc = peft_fail(err, PEFT_EFORMAT, "%s: needs ids [B, T]", path);
    *b = (peft_batch){0};
    if (rc == PEFT_OK) {
        b->B = (int)ids_t->shape[0], b->T = (int)ids_t->shape[1];
        const size_t N = (size_t)b->B * b->T;
        b->ids = batch_i32(*bf, "ids", N, 1, err);
        b->lengths = batch_i32(*bf, "lengths", (size_t)b->B, 1, err);
        b->type_ids = batch_i32(*bf, "type_ids", N, 0, err);
        b->targets = batch_i32(*bf, "labels", (size_t)b->B, 0, err);
        if (!b->ids || !b->lengths) rc = PEFT_EFORMAT;
    }
    return rc;
}

static int run(const char *dir, int rank, double alpha) {
    peft_err err = {0};
    char path[4200];
    peft_model *m = NULL;
    peft_st_file *bf = NULL, *lf = NULL;
    peft_acts *a = NULL;
    peft_batch b;
    int rc = open_model_batch(dir, &m, &bf, &b, &err);
    /* LoRA at query / value */
    peft_adapter *ad[256];
    const peft_site *ad_site[256];
    int n_ad = 0;
    float *work = NULL;
    if (rc == PEFT_OK && rank) {
        snprintf(path, sizeof path, "%s/lora.safetensors", dir);
        rc = peft_st_open(path, &lf, &err);
        peft_method_opts mo = {.rank = rank, .alpha = alpha, .seed = 1};
        size_t wf = 0;
        for (int i = 0; rc == PEFT_OK && i < m->n_sites && n_ad < 256; i++) {
            peft_site *s = m->sites[i];
            if (strcmp(s->kind, "query") && strcmp(s->kind, "value")) continue;
            rc = peft_method_lora.create(&mo, s, b.B * b.T, &ad[n_ad], &err);
            if (rc) break;
            s->adapter = ad[n_ad];
            ad_site[n_ad] = s;
            ad[n_ad]->training = 1;
            size_t w = peft_method_lora.work_floats(ad[n_ad], s, b.B * b.T);
            if (w > wf) wf = w;
            peft_param ps[4];
            int np = peft_method_lora.params(ad[n_ad], ps, 4);
            for (int p = 0; rc == PEFT_OK && p < np; p++) {
                char key[320];
                snprintf(key, sizeof key, "base_model.model.%.127s.%.63s", s->name, ps[p].name);
                const peft_st_tensor *t = peft_st_find(lf, key);
                if (!t || t->dtype != PEFT_F32 || t->numel != ps[p].numel) rc = peft_fail(&err, PEFT_EFORMAT, "%s: needs F32 %s", path, key);
                else memcpy(ps[p].data, t->data, t->numel * sizeof(float));
            }
            n_ad++;
        }
        if (rc == PEFT_OK && !(work = malloc((wf ? wf : 1) * sizeof(float)))) rc = PEFT_ENOMEM;
        for (int i = 0; i < n_ad; i++) ad[i]->work = work;
    }
    /* every LayerNorm gets weight and bias gradients (LayerNorm tuning's hook) */
    float *ln_grads = rc ? NULL : calloc((size_t)m->n_norms * 2 * m->info.hidden_size, sizeof(float));
    for (int i = 0; ln_grads && i < m->n_norms; i++) {
        m->norms[i]->grad = ln_grads + (size_t)(2 * i) * m->info.hidden_size;
        m->norms[i]->bias_grad = ln_grads + (size_t)(2 * i + 1) * m->info.hidden_size;
    }
    double loss = 0.0;
    int n_counted = 0;
    const char *rec = getenv("PEFT_DRIVER_RECOMPUTE"); /* 1: gradient checkpointing */
    if (rc == PEFT_OK) rc = peft_model_acts_alloc(m, b.B, b.T, !(rec && !strcmp(rec, "1")), 1, &a, &err);
    if (rc == PEFT_OK) rc = peft_model_forward(m, a, &b, &loss, &n_counted, &err);
    if (rc == PEFT_OK && b.targets) rc = peft_model_backward(m, a, &b, n_counted);
    if (rc == PEFT_OK) {
        static outs o;
        const int B = b.B, N = b.B * b.T, C = m->info.hidden_size;
        float lossf = (float)loss;
        out_add(&o, "logits", peft_model_outputs(m, a), B, m->info.n_labels);
        out_add(&o, "hidden", bert_hidden_states(a), N, C);
        out_add(&o, "pooled", bert_pooled(a), B, C);
        static peft_param ps[256][4];
        if (b.targets) {
            out_add(&o, "loss", &lossf, 1, 0);
            for (int i = 0; i < n_ad; i++) {
                int np = peft_method_lora.params(ad[i], ps[i], 4);
                for (int p = 0; p < np; p++) {
                    char key[320];
                    snprintf(key, sizeof key, "base_model.model.%.127s.%.63s", ad_site[i]->name, ps[i][p].name);
                    out_add(&o, key, ps[i][p].grad, ps[i][p].shape[0], ps[i][p].shape[1]);
                }
            }
            for (int h = 0; h < m->n_head; h++) {
                char key[96];
                snprintf(key, sizeof key, "grad.%s", m->head[h].name);
                out_add(&o, key, m->head[h].grad, m->head[h].shape[0], m->head[h].ndim > 1 ? m->head[h].shape[1] : 0);
            }
            for (int i = 0; ln_grads && i < m->n_norms; i++) {
                char key[160];
                snprintf(key, sizeof key, "grad.%.127s.weight", m->norms[i]->name);
                out_add(&o, key, m->norms[i]->grad, m->norms[i]->dim, 0);
                snprintf(key, sizeof key, "grad.%.127s.bias", m->norms[i]->name);
                out_add(&o, key, m->norms[i]->bias_grad, m->norms[i]->dim, 0);
            }
        }
        snprintf(path, sizeof path, "%s/out.safetensors", dir);
        rc = peft_st_write(path, o.e, o.n, NULL, 0, &err);
        printf("run: B %d T %d loss %.6f counted %d, %d adapters, %d outputs\n", b.B, b.T, loss, n_counted, n_ad, o.n);
    }
    if (rc) fprintf(stderr, "driver_encoder run: %s\n", err.msg[0] ? err.msg : "failed");
    if (a) peft_model_acts_free(m, a);
    for (int i = 0; i < n_ad; i++) peft_method_lora.destroy(ad[i]);
    free(work);
    free(ln_grads);
    if (m) peft_model_free(m);
    peft_st_close(bf);
    peft_st_close(lf);
    return rc ? 1 : 0;
}

/* ---- train ------------------------------------------------------------------------------- */

/* A fresh LoRA set (query,value, r 4, alpha 8) trained STEPS AdamW steps on the batch's labels
 * (the head stays as loaded), saved to OUT; then the logits of the trained model. */
static int train(const char *dir, const char *out_dir, int steps, double lr) {
    peft_err err = {0};
    peft_model *m = NULL;
    peft_st_file *bf = NULL;
    peft_acts *a = NULL;
    peft_adapter_set *set = NULL;
    peft_adamw opt = {0};
    peft_batch b;
    int rc = open_model_batch(dir, &m, &bf, &b, &err);
    if (rc == PEFT_OK && !b.targets) rc = peft_fail(&err, PEFT_EFORMAT, "%s: train needs labels", dir);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    snprintf(cfg.target_modules, sizeof cfg.target_modules, "query,value");
    cfg.opts.rank = 4;
    cfg.opts.alpha = 8;
    cfg.opts.seed = 3;
    const int N = b.B * b.T;
    if (rc == PEFT_OK) rc = peft_adapter_set_create(m, &cfg, N, &set, &err);
    if (rc == PEFT_OK) rc = peft_adapter_set_reserve(set, N, &err);
    if (rc == PEFT_OK) rc = peft_model_acts_alloc(m, b.B, b.T, 1, 1, &a, &err);
    if (rc == PEFT_OK)
        rc = peft_adamw_init(&opt, peft_adapter_set_params(set), peft_adapter_set_n_params(set), 0.9, 0.999, 1e-8, 0.0, &err);
    double loss = 0.0;
    int n_counted = 0;
    for (int s = 0; rc == PEFT_OK && s < steps; s++) {
        peft_adapter_set_mode(set, 1, (uint64_t)s);
        peft_adapter_set_zero_grad(set);
        rc = peft_model_forward(m, a, &b, &loss, &n_counted, &err);
        if (rc == PEFT_OK) rc = peft_model_backward(m, a, &b, n_counted);
        if (rc == PEFT_OK) peft_adamw_step(&opt, lr);
        printf("train: step %d loss %.6f\n", s, loss);
    }
    if (rc == PEFT_OK) rc = peft_adapter_set_save(set, out_dir, &err);
    peft_batch eval = b;
    eval.targets = NULL;
    if (rc == PEFT_OK) {
        peft_adapter_set_mode(set, 0, 0);
        rc = peft_model_forward(m, a, &eval, NULL, NULL, &err);
    }
    if (rc == PEFT_OK) {
        peft_st_entry e = {.name = "logits", .dtype = PEFT_F32, .ndim = 2, .shape = {b.B, m->info.n_labels},
                           .data = peft_model_outputs(m, a)};
        char path[4200];
        snprintf(path, sizeof path, "%s/out.safetensors", dir);
        rc = peft_st_write(path, &e, 1, NULL, 0, &err);
    }
    if (rc) fprintf(stderr, "driver_encoder train: %s\n", err.msg[0] ? err.msg : "failed");
    peft_adamw_free(&opt);
    if (a) peft_model_acts_free(m, a);
    peft_adapter_set_free(set);
    if (m) peft_model_free(m);
    peft_st_close(bf);
    return rc ? 1 : 0;
}

/* DIR/model written back by peft_model_save_hf into OUT. */
static int save(const char *dir, const char *out_dir) {
    peft_err err = {0};
    peft_model *m = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/model", dir);
    const peft_model_load_opts lo = {.task = PEFT_TASK_SEQ_CLS};
    int rc = peft_model_load(path, &lo, &m, &err);
    if (rc == PEFT_OK) rc = peft_model_save_hf(m, out_dir, &err);
    if (rc) fprintf(stderr, "driver_encoder save: %s\n", err.msg);
    peft_model_free(m);
    return rc ? 1 : 0;
}

/* DIR loaded for TASK with N_LABELS (0: config.json's); prints its info, or the error (exit 1). */
static int load(const char *dir, const char *task, int n_labels, int shapes_only) {
    peft_err err = {0};
    peft_model *m = NULL;
    const peft_model_load_opts lo = {.task = (peft_task)peft_task_parse(task), .n_labels = n_labels, .shapes_only = shapes_only};
    int rc = peft_model_load(dir, &lo, &m, &err);
    if (rc == PEFT_OK)
        printf("load: %s %s %s labels %d sites %d norms %d head %d params %zu\n", m->info.arch, m->info.hf_class,
               peft_task_name(m->info.task), m->info.n_labels, m->n_sites, m->n_norms, m->n_head, m->n_params);
    else fprintf(stderr, "%s\n", err.msg);
    peft_model_free(m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "fd")) {
        fd_run(0);
        fd_run(1);
        return check_report("fd");
    }
    if (argc >= 6 && !strcmp(argv[1], "train")) return train(argv[2], argv[3], atoi(argv[4]), atof(argv[5]));
    if (argc >= 4 && !strcmp(argv[1], "save")) return save(argv[2], argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "load"))
        return load(argv[2], argv[3], argc >= 5 ? atoi(argv[4]) : 0, argc >= 6 && !strcmp(argv[5], "shapes"));
    if (argc >= 3 && !strcmp(argv[1], "run")) return run(argv[2], argc >= 5 ? atoi(argv[3]) : 0, argc >= 5 ? atof(argv[4]) : 0);
    fprintf(stderr, "usage: driver_encoder fd | run DIR [RANK ALPHA] | train DIR OUT STEPS LR | save DIR OUT | load DIR TASK [N_LABELS [shapes]]\n");
    return 2;
}
