/* test_optim.c: the optimizer pieces of src/train/optim.c against numbers worked out by hand.
 *   - learning-rate schedules at chosen steps, against transformers' get_constant_ / linear_ /
 *     cosine_schedule_with_warmup lambdas (lr_k = base * lambda(k) for the k-th update, 0-based);
 *   - AdamW's first two updates, where m_hat / sqrt(v_hat) has a closed form (sign(g) on step 1;
 *     -1/19 on step 2 after gradients +1, -1), with decoupled weight decay and lr_scale;
 *   - ALLoRA's per-row learning rate lr / sqrt(||row||^2 + 1/eta^2) on rows (3, 4) and (0, 0).
 * Whole-model ALLoRA trajectories are compared with PyTorch by
 * tests/parity/test_bitfit_allora_parity.py, which runs this executable as its driver: with
 * PEFT_OPTIM_DRIVER=DIR it reads DIR/model, DIR/adapter (a PEFT LoRA adapter) and
 * DIR/batch.safetensors ("ids", "targets", optional "pos") as driver_train.c does, takes
 * PEFT_DRIVER_STEPS ALLoRA updates (PEFT_DRIVER_LR, PEFT_DRIVER_WD, PEFT_ALLORA_ETA) and writes
 * DIR/out.safetensors: "final.<PEFT key>" per parameter and "losses" [steps]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "io/safetensors.h"
#include "methods/adapter_set.h"
#include "train/optim.h"

#define CHECK_ABS(a, b, tol) CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g", (double)(a), (double)(b))

static void check_schedules(void) {
    /* warmup 10 of 110 updates, base 2: linear warmup k / 10, then the kind's decay over 100 */
    const double base = 2.0;
    for (int kind = 0; kind < 3; kind++) {
        CHECK_ABS(peft_lr_at((peft_schedule)kind, base, 0, 110, 10), 0.0, 1e-15);
        CHECK_ABS(peft_lr_at((peft_schedule)kind, base, 5, 110, 10), 1.0, 1e-15);
        CHECK_ABS(peft_lr_at((peft_schedule)kind, base, 10, 110, 10), 2.0, 1e-15);
    }
    CHECK_ABS(peft_lr_at(PEFT_SCHED_CONSTANT, base, 60, 110, 10), 2.0, 1e-15);
    CHECK_ABS(peft_lr_at(PEFT_SCHED_CONSTANT, base, 109, 110, 10), 2.0, 1e-15);
    /* linear: max(0, (110 - k) / 100) */
    CHECK_ABS(peft_lr_at(PEFT_SCHED_LINEAR, base, 60, 110, 10), 1.0, 1e-15);
    CHECK_ABS(peft_lr_at(PEFT_SCHED_LINEAR, base, 85, 110, 10), 0.5, 1e-15);
    CHECK_ABS(peft_lr_at(PEFT_SCHED_LINEAR, base, 110, 110, 10), 0.0, 1e-15);
    /* cosine (num_cycles 0.5): 0.5 (1 + cos(pi p)), p = (k - 10) / 100:
     * p = 0.25 -> (1 + sqrt(2)/2) / 2 = 0.853553390593..., p = 0.5 -> 0.5, p = 1 -> 0 */
    CHECK_ABS(peft_lr_at(PEFT_SCHED_COSINE, base, 35, 110, 10), 2 * 0.8535533905932737, 1e-12);
    CHECK_ABS(peft_lr_at(PEFT_SCHED_COSINE, base, 60, 110, 10), 1.0, 1e-12);
    CHECK_ABS(peft_lr_at(PEFT_SCHED_COSINE, base, 110, 110, 10), 0.0, 1e-12);
    /* no warmup: update 0 already has the full rate */
    CHECK_ABS(peft_lr_at(PEFT_SCHED_COSINE, base, 0, 100, 0), 2.0, 1e-15);
    CHECK(peft_schedule_parse("cosine") == PEFT_SCHED_COSINE && peft_schedule_parse("linear") == PEFT_SCHED_LINEAR &&
          peft_schedule_parse("constant") == PEFT_SCHED_CONSTANT && peft_schedule_parse("exp") == -1);
    printf("schedules: constant, linear and cosine with warmup match transformers' lambdas\n");
}

/* One 2 x 2 parameter W (rows (3, 4) and (0, 0)) and one 1-D parameter v = (1), lr_scale 2. */
typedef struct toy {
    float W[4], gW[4], v[1], gv[1];
    peft_named_param p[2];
} toy;

static void toy_init(toy *t) {
    memset(t, 0, sizeof *t);
    t->W[0] = 3, t->W[1] = 4;
    t->v[0] = 1;
    t->p[0].p = (peft_param){.name = "W", .data = t->W, .grad = t->gW, .numel = 4, .ndim = 2, .shape = {2, 2}, .lr_scale = 1};
    t->p[1].p = (peft_param){.name = "v", .data = t->v, .grad = t->gv, .numel = 1, .ndim = 1, .shape = {1}, .lr_scale = 2};
}

static void set_grads(toy *t, float g) {
    for (int i = 0; i < 4; i++) t->gW[i] = i % 2 ? -g : g;
    t->gv[0] = g;
}

static void check_adamw(void) {
    toy t;
    toy_init(&t);
    peft_adamw o;
    peft_err err = {0};
    const double lr = 0.1, wd = 0.5, tol = 1e-6; /* eps = 1e-8 moves the updates by ~1e-9 */
    CHECK(peft_adamw_init(&o, t.p, 2, 0.9, 0.999, 1e-8, wd, &err) == 0);
    CHECK(o.allora_eta == 0);
    /* step 1: m_hat / (sqrt(v_hat) + eps) = sign(g); p = p (1 - lr wd) - lr sign(g) */
    set_grads(&t, 1.0f);
    peft_adamw_step(&o, lr);
    CHECK_ABS(t.W[0], 3 * (1 - lr * wd) - lr, tol);  /* 2.75 */
    CHECK_ABS(t.W[1], 4 * (1 - lr * wd) + lr, tol);  /* 3.9  */
    CHECK_ABS(t.W[2], -lr, tol);
    CHECK_ABS(t.W[3], lr, tol);
    CHECK_ABS(t.v[0], 1 * (1 - 2 * lr * wd) - 2 * lr, tol); /* lr_scale 2: 0.7 */
    /* step 2 with the opposite gradient: m = 0.9 * 0.1 - 0.1 = -0.01, m_hat = -0.01 / 0.19 = -1/19;
     * v = 0.999 * 0.001 + 0.001 = 0.001999 = 1 - 0.999^2, v_hat = 1 */
    float w0 = t.W[0], v0 = t.v[0];
    set_grads(&t, -1.0f);
    peft_adamw_step(&o, lr);
    CHECK_ABS(t.W[0], w0 * (1 - lr * wd) + lr / 19, tol);
    CHECK_ABS(t.v[0], v0 * (1 - 2 * lr * wd) + 2 * lr / 19, tol);
    peft_adamw_free(&o);
    printf("AdamW: two updates match the closed forms (decoupled decay, bias correction, lr_scale)\n");
}

static void check_allora(void) {
    float row[2] = {3, 4}, zero[2] = {0, 0};
    CHECK_ABS(peft_allora_factor(row, 2, 2.0), 1 / sqrt(25.25), 1e-12);
    CHECK_ABS(peft_allora_factor(zero, 2, 2.0), 2.0, 1e-12); /* a row at 0 moves with lr * eta */
    CHECK_ABS(peft_allora_factor(row, 2, 1e6), 0.2, 1e-9);   /* eta -> inf: lr / ||row|| */
    toy t;
    toy_init(&t);
    peft_adamw o;
    peft_err err = {0};
    const double lr = 0.1, wd = 0.5, tol = 1e-6;
    CHECK(peft_adamw_init(&o, t.p, 2, 0.9, 0.999, 1e-8, wd, &err) == 0);
    o.allora_eta = 2.0;
    set_grads(&t, 1.0f);
    peft_adamw_step(&o, lr);
    /* row 0 = (3, 4): lr_row = 0.1 / sqrt(25.25) = 0.019900743804...; row 1 = (0, 0): 0.2;
     * v = (1): one row, lr_scale 2 -> 0.2 / sqrt(1.25) = 0.178885438... */
    double r0 = 0.1 / sqrt(25.25), r1 = 0.2, rv = 0.2 / sqrt(1.25);
    CHECK_ABS(t.W[0], 3 * (1 - r0 * wd) - r0, tol);
    CHECK_ABS(t.W[1], 4 * (1 - r0 * wd) + r0, tol);
    CHECK_ABS(t.W[2], -r1, tol);
    CHECK_ABS(t.W[3], r1, tol);
    CHECK_ABS(t.v[0], 1 - rv * wd - rv, tol);
    /* step 2 takes the norms after step 1 */
    float W1[4], v1 = t.v[0];
    memcpy(W1, t.W, sizeof W1);
    double r0b = lr / sqrt((double)W1[0] * W1[0] + (double)W1[1] * W1[1] + 0.25),
           r1b = lr / sqrt((double)W1[2] * W1[2] + (double)W1[3] * W1[3] + 0.25), rvb = 2 * lr / sqrt((double)v1 * v1 + 0.25);
    set_grads(&t, -1.0f);
    peft_adamw_step(&o, lr);
    CHECK_ABS(t.W[0], W1[0] * (1 - r0b * wd) + r0b / 19, tol);
    CHECK_ABS(t.W[3], W1[3] * (1 - r1b * wd) - r1b / 19, tol);
    CHECK_ABS(t.v[0], v1 * (1 - rvb * wd) + rvb / 19, tol);
    peft_adamw_free(&o);
    printf("ALLoRA: per-row learning rates lr / sqrt(||row||^2 + 1/eta^2) on (3,4), (0,0) and a 1-D row\n");
}

/* ---- driver for the PyTorch parity test ------------------------------------------------ */

static double env_num(const char *name, double dflt) {
    const char *v = getenv(name);
    return v ? atof(v) : dflt;
}

static int drive(const char *dir, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/model", dir);
    peft_llama *m = NULL;
    peft_st_file *batch = NULL;
    peft_adapter_set *set = NULL;
    llama_acts a = {0};
    peft_adamw opt = {0};
    float *losses = NULL;
    int rc = llama_load(path, &m, err), steps = (int)env_num("PEFT_DRIVER_STEPS", 3), acts = 0;
    snprintf(path, sizeof path, "%s/batch.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_open(path, &batch, err);
    const peft_st_tensor *ids = batch ? peft_st_find(batch, "ids") : NULL, *tgt = batch ? peft_st_find(batch, "targets") : NULL,
                         *pos = batch ? peft_st_find(batch, "pos") : NULL;
    if (rc == PEFT_OK && (!ids || !tgt || ids->dtype != PEFT_I32 || ids->ndim != 2))
        rc = peft_fail(err, PEFT_EFORMAT, "%s: needs I32 ids and targets [B, T]", path);
    int B = ids ? (int)ids->shape[0] : 0, T = ids ? (int)ids->shape[1] : 0;
    snprintf(path, sizeof path, "%s/adapter", dir);
    if (rc == PEFT_OK) rc = peft_adapter_set_load(path, &m->base, B * T, &set, err);
    if (rc == PEFT_OK && (rc = llama_acts_alloc(m, B, T, 1, 1, &a, err)) == PEFT_OK) acts = 1;
    int np = set ? peft_adapter_set_n_params(set) : 0;
    peft_named_param *p = set ? peft_adapter_set_params(set) : NULL;
    if (rc == PEFT_OK) rc = peft_adamw_init(&opt, p, np, 0.9, 0.999, 1e-8, env_num("PEFT_DRIVER_WD", 0.0), err);
    opt.allora_eta = env_num("PEFT_ALLORA_ETA", 2.0);
    losses = malloc((size_t)(steps > 0 ? steps : 1) * sizeof(float));
    if (rc == PEFT_OK && !losses) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) peft_adapter_set_mode(set, 0, 0);
    for (int s = 0; s < steps && rc == PEFT_OK; s++) {
        peft_adapter_set_zero_grad(set);
        double loss;
        int counted;
        rc = llama_forward(m, &a, ids->data, pos ? pos->data : NULL, tgt->data, &loss, &counted, err);
        if (rc) break;
        llama_backward(m, &a, ids->data, tgt->data, counted);
        losses[s] = (float)loss;
        peft_adamw_step(&opt, env_num("PEFT_DRIVER_LR", 1e-2));
    }
    peft_st_entry *e = rc == PEFT_OK ? calloc((size_t)np + 1, sizeof *e) : NULL;
    char(*names)[300] = rc == PEFT_OK ? calloc((size_t)np, sizeof *names) : NULL;
    if (rc == PEFT_OK && (!e || !names)) rc = peft_fail(err, PEFT_ENOMEM, "out of memory");
    if (rc == PEFT_OK) {
        for (int i = 0; i < np; i++) {
            snprintf(names[i], sizeof names[0], "final.%s", p[i].key);
            e[i] = (peft_st_entry){.name = names[i], .dtype = PEFT_F32, .ndim = p[i].p.ndim, .data = p[i].p.data};
            memcpy(e[i].shape, p[i].p.shape, sizeof p[i].p.shape);
        }
        e[np] = (peft_st_entry){.name = "losses", .dtype = PEFT_F32, .ndim = 1, .shape = {steps}, .data = losses};
        snprintf(path, sizeof path, "%s/out.safetensors", dir);
        rc = peft_st_write(path, e, np + 1, NULL, 0, err);
    }
    free(e), free(names), free(losses);
    peft_adamw_free(&opt);
    if (acts) llama_acts_free(&a);
    peft_adapter_set_free(set);
    if (batch) peft_st_close(batch);
    if (m) llama_free(m);
    return rc;
}

int main(void) {
    const char *dir = getenv("PEFT_OPTIM_DRIVER");
    if (dir) {
        peft_err err = {0};
        if (drive(dir, &err)) {
            fprintf(stderr, "driver: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    check_schedules();
    check_adamw();
    check_allora();
    return check_report("test_optim");
}
