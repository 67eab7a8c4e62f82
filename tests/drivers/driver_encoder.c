/* driver_encoder.c: the C side of tests/models/test_bert_parity.py.
 *
 *   driver_encoder fd
 *     The composed encoder layer (models/encoder.c), post-LN and pre-LN, with key padding and LoRA
 *     at q and v, against central finite differences of its own float forward: loss
 *     L = sum(out * R) in double; gradients of x, both LayerNorms' weight and bias, LoRA A and B.
 *     Prints one line per gradient and "fd: N checks, F failed"; exits 1 on a failure. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/kernels.h"
#include "methods/adapter.h"
#include "methods/lora.h"
#include "models/encoder.h"

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

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "fd")) {
        fd_run(0);
        fd_run(1);
        return check_report("fd");
    }
    fprintf(stderr, "usage: driver_encoder fd\n");
    return 2;
}
