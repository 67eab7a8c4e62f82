/* test_lora_grad.c: finite-difference checks of LoRA (method level and through the whole
 * model's backward), and merge/unmerge exactness. The model is a random Llama written to a
 * temporary directory (tests/tiny_model.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "tiny_model.h"
#include "fileio.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "methods/adapter_set.h"
#include "methods/lora.h"
#include "models/llama.h"
#include "rng.h"


/* sum(y * R) for the site output at x. */
static double site_loss(const peft_site *s, const float *x, const float *R, int N, float *y) {
    site_forward(s, y, x, N, 1);
    double L = 0;
    for (size_t i = 0; i < (size_t)N * s->out_features; i++) L += (double)y[i] * R[i];
    return L;
}

/* Relative error of analytic vs numeric gradient over a few coordinates of x. */
static double fd_check(const peft_site *s, float *param, const float *grad, size_t n, const float *x, const float *R, int N,
                       float *y) {
    double worst = 0;
    for (size_t k = 0; k < 12; k++) {
        size_t i = (k * 7919) % n;
        float old = param[i], eps = 1e-2f;
        param[i] = old + eps;
        double lp = site_loss(s, x, R, N, y);
        param[i] = old - eps;
        double lm = site_loss(s, x, R, N, y);
        param[i] = old;
        double num = (lp - lm) / (2 * eps), err = fabs(num - grad[i]) / fmax(1e-2, fabs(num));
        if (err > worst) worst = err;
    }
    return worst;
}

static void method_level(double dropout) {
    int N = 5, in = 12, out = 10;
    peft_rng r;
    peft_rng_seed(&r, 7, 1);
    peft_site s = {.name = "model.layers.0.self_attn.q_proj", .kind = "q_proj", .in_features = in, .out_features = out};
    float *W = malloc(sizeof(float) * in * out), *bias = malloc(sizeof(float) * out), *x = malloc(sizeof(float) * N * in),
          *R = malloc(sizeof(float) * N * out), *y = malloc(sizeof(float) * N * out), *dx = calloc((size_t)N * in, sizeof(float));
    tiny_fill(W, (size_t)in * out, 0.5f, &r);
    tiny_fill(bias, out, 0.5f, &r);
    tiny_fill(x, (size_t)N * in, 1.0f, &r);
    tiny_fill(R, (size_t)N * out, 1.0f, &r);
    s.weight = W;
    s.bias = bias;
    peft_method_opts o = {.rank = 3, .alpha = 6, .dropout = dropout, .seed = 3};
    peft_err err;
    CHECK(peft_method_lora.create(&o, &s, N, &s.adapter, &err) == 0);
    float *work = malloc(peft_method_lora.work_floats(s.adapter, &s, N) * sizeof(float));
    s.adapter->work = work;
    s.adapter->training = 1;
    s.adapter->step_seed = 99;
    peft_param p[2];
    peft_method_lora.params(s.adapter, p, 2);
    tiny_fill(p[1].data, p[1].numel, 0.5f, &r); /* B != 0 so dA and dx through the adapter are non-trivial */
    site_loss(&s, x, R, N, y);
    site_backward(&s, dx, R, x, N);
    double eA = fd_check(&s, p[0].data, p[0].grad, p[0].numel, x, R, N, y);
    double eB = fd_check(&s, p[1].data, p[1].grad, p[1].numel, x, R, N, y);
    double ex = fd_check(&s, x, dx, (size_t)N * in, x, R, N, y);
    CHECK_MSG(eA < 2e-3 && eB < 2e-3 && ex < 2e-3, "dropout %g: rel err dA %.2e dB %.2e dx %.2e", dropout, eA, eB, ex);
    printf("lora dropout=%.1f: max rel err dA %.1e dB %.1e dx %.1e\n", dropout, eA, eB, ex);

    /* merge: the merged base alone reproduces base + adapter (no dropout at inference) */
    s.adapter->training = 0;
    float *y1 = malloc(sizeof(float) * N * out), *W0 = malloc(sizeof(float) * in * out);
    memcpy(W0, W, sizeof(float) * in * out);
    site_forward(&s, y1, x, N, 0);
    CHECK(peft_method_lora.merge(s.adapter, &s, +1, &err) == 0);
    peft_adapter *keep = s.adapter;
    s.adapter = NULL;
    site_forward(&s, y, x, N, 0);
    double md = 0, ud = 0;
    for (int i = 0; i < N * out; i++) md = fmax(md, fabs(y[i] - y1[i]));
    s.adapter = keep;
    CHECK(peft_method_lora.merge(s.adapter, &s, -1, &err) == 0);
    for (int i = 0; i < in * out; i++) ud = fmax(ud, fabs(W[i] - W0[i]));
    CHECK_MSG(md < 1e-5, "merged vs unmerged output differ by %g", md);
    CHECK_MSG(ud < 1e-6, "unmerge leaves W off by %g", ud);
    peft_method_lora.destroy(s.adapter);
    free(W), free(bias), free(x), free(R), free(y), free(dx), free(work), free(y1), free(W0);
}

/* ---- whole model ------------------------------------------------------------------- */

static double model_loss(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *pos, const int32_t *tgt) {
    double loss;
    int counted;
    peft_err err;
    llama_forward(m, a, ids, pos, tgt, &loss, &counted, &err);
    return loss;
}

static void model_level(int recompute) {
    char dir[] = "/tmp/peft_lora_grad_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    peft_rng r;
    peft_rng_seed(&r, 11, 2);
    CHECK(tiny_model_write(dir, PEFT_F32, 11) == 0);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(dir, &m, &err) == 0, "%s", err.msg);
    peft_adapter_config cfg;
    peft_adapter_config_default(&cfg);
    strcpy(cfg.target_modules, "all-linear");
    cfg.opts.rank = 2;
    cfg.opts.alpha = 4;
    int B = 2, T = 6;
    peft_adapter_set *set;
    CHECK_MSG(peft_adapter_set_create(&m->base, &cfg, B * T, &set, &err) == 0, "%s", err.msg);
    peft_named_param *p = peft_adapter_set_params(set);
    int np = peft_adapter_set_n_params(set);
    for (int i = 0; i < np; i++) tiny_fill(p[i].p.data, p[i].p.numel, 0.3f, &r);
    llama_acts a;
    CHECK(llama_acts_alloc(m, B, T, !recompute, 1, &a, &err) == 0);
    /* row 0: one sequence; row 1: two packed examples (positions restart) */
    int32_t ids[12], tgt[12], pos[12] = {0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2};
    for (int i = 0; i < 12; i++) ids[i] = (int32_t)peft_rng_below(&r, 37), tgt[i] = (int32_t)peft_rng_below(&r, 37);
    tgt[8] = -1; /* an example boundary carries no loss */
    peft_adapter_set_zero_grad(set);
    peft_adapter_set_mode(set, 0, 0);
    double loss;
    int counted;
    CHECK(llama_forward(m, &a, ids, pos, tgt, &loss, &counted, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    /* The loss gradient is formed by the forward when it has targets, by the backward when it
     * had none (a forward for logits only); both must give the same parameter gradients. */
    size_t ng = 0;
    for (int i = 0; i < np; i++) ng += p[i].p.numel;
    float *g1 = malloc(ng * sizeof(float));
    for (int i = 0, off = 0; i < np; off += (int)p[i].p.numel, i++)
        memcpy(g1 + off, p[i].p.grad, p[i].p.numel * sizeof(float));
    peft_adapter_set_zero_grad(set);
    CHECK(llama_forward(m, &a, ids, pos, NULL, NULL, NULL, &err) == 0);
    llama_backward(m, &a, ids, tgt, counted);
    double gd = 0;
    for (int i = 0, off = 0; i < np; off += (int)p[i].p.numel, i++)
        for (size_t j = 0; j < p[i].p.numel; j++) gd = fmax(gd, fabs(p[i].p.grad[j] - g1[off + j]));
    CHECK_MSG(gd < 1e-6, "gradients after a forward without targets differ by %g", gd);
    free(g1);
    double worst = 0;
    for (int i = 0; i < np; i++) {
        for (int k = 0; k < 3; k++) {
            size_t j = (k * 104729u + i) % p[i].p.numel;
            float old = p[i].p.data[j], eps = 5e-3f;
            p[i].p.data[j] = old + eps;
            double lp = model_loss(m, &a, ids, pos, tgt);
            p[i].p.data[j] = old - eps;
            double lm = model_loss(m, &a, ids, pos, tgt);
            p[i].p.data[j] = old;
            double num = (lp - lm) / (2 * eps), e = fabs(num - p[i].p.grad[j]) / fmax(2e-3, fabs(num));
            if (e > worst) worst = e;
        }
    }
    CHECK_MSG(worst < 2e-2, "model-level LoRA gradient rel err %.3e (recompute=%d)", worst, recompute);
    printf("model-level LoRA grads (recompute=%d): max rel err %.2e over %d params\n", recompute, worst, np * 3);

    /* merge equivalence over the whole model (logits are kept only by a forward without targets) */
    CHECK(llama_forward(m, &a, ids, pos, NULL, NULL, NULL, &err) == 0);
    size_t NV = (size_t)B * T * 37;
    float *ref = malloc(NV * sizeof(float));
    memcpy(ref, a.logits, NV * sizeof(float));
    CHECK(peft_adapter_set_merge(set, +1, &err) == 0);
    peft_adapter_set_free(set); /* detaches: the merged weights alone must reproduce the logits */
    CHECK(llama_forward(m, &a, ids, pos, NULL, NULL, NULL, &err) == 0);
    double md = 0;
    for (size_t i = 0; i < NV; i++) md = fmax(md, fabs(a.logits[i] - ref[i]) / fmax(1.0, fabs(ref[i])));
    CHECK_MSG(md < 1e-5, "merged logits differ by %g", md);
    free(ref);
    llama_acts_free(&a);
    llama_free(m);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* The chunked loss head (LLAMA_HEAD_CHUNK rows of counted targets at a time) against the full
 * logits of a forward without targets and crossentropy_forward over all rows, on 8 x 60 rows
 * (two chunks, the second partly filled) with a third of the targets masked. */
static void chunked_head(void) {
    char dir[] = "/tmp/peft_head_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK(tiny_model_write(dir, PEFT_F32, 5) == 0);
    peft_err err = {0};
    peft_llama *m;
    CHECK_MSG(llama_load(dir, &m, &err) == 0, "%s", err.msg);
    enum { B = 8, T = 60, N = B * T };
    peft_rng r;
    peft_rng_seed(&r, 5, 1);
    int32_t ids[N], tgt[N];
    for (int i = 0; i < N; i++) {
        ids[i] = (int32_t)peft_rng_below(&r, TINY_V);
        tgt[i] = peft_rng_below(&r, 3) == 0 ? -100 : (int32_t)peft_rng_below(&r, TINY_V);
    }
    llama_acts a;
    CHECK(llama_acts_alloc(m, B, T, 1, 1, &a, &err) == 0);
    double loss;
    int counted;
    CHECK(llama_forward(m, &a, ids, NULL, tgt, &loss, &counted, &err) == 0);
    float chunked[N];
    memcpy(chunked, a.losses, sizeof chunked);
    CHECK(llama_forward(m, &a, ids, NULL, NULL, NULL, NULL, &err) == 0);
    float full[N];
    int ref_counted = crossentropy_forward(full, a.logits, tgt, N, TINY_V);
    double md = 0, sum = 0;
    for (int i = 0; i < N; i++) md = fmax(md, fabs(chunked[i] - full[i])), sum += full[i];
    CHECK(counted == ref_counted && counted > LLAMA_HEAD_CHUNK);
    CHECK_MSG(md < 1e-5 && fabs(loss - sum / ref_counted) < 1e-5, "chunked losses differ by %g", md);
    printf("chunked loss head: %d counted rows, max loss diff %.2e\n", counted, md);
    llama_acts_free(&a);
    llama_free(m);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

int main(void) {
    chunked_head();
    method_level(0.0);
    method_level(0.3);
    model_level(0);
    model_level(1);
    return check_report("test_lora_grad");
}
