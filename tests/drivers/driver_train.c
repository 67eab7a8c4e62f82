/* driver_train.c: the C side of the training parity tests (tests/hf/test_transformers_lora.py,
 * tests/parity/). With PEFT_DRIVER_TRAIN=DIR it reads
 *   DIR/model/ (HF checkpoint), DIR/adapter/ (PEFT LoRA adapter: the initial weights),
 *   DIR/batch.safetensors ("ids", "targets", optional "pos": I32 [B, T])
 * and writes DIR/out.safetensors with
 *   "loss" [1]           mean loss of the first forward,
 *   "grad.<PEFT key>"     every LoRA gradient of that loss,
 *   "final.<PEFT key>"    the parameters after PEFT_DRIVER_STEPS AdamW updates on the batch
 *   "losses" [steps]      the loss before each update.
 * With DIR/covariance.safetensors (one F32 [in, in] tensor per module name), CorDA adapters are
 * created from those calibration covariances.
 * Options: PEFT_DRIVER_LR, PEFT_DRIVER_WD, PEFT_DRIVER_STEPS, PEFT_DRIVER_RECOMPUTE, and
 * PEFT_DRIVER_QUANTIZE=q8_0|q4_0|nf4 (llama_quantize after the adapter is attached). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/llama.h"
#include "driver.h"
#include "fileio.h"
#include "io/safetensors.h"
#include "kernels/quant.h"
#include "methods/adapter_set.h"
#include "methods/pissa.h"
#include "train/optim.h"

static double env_num(const char *name, double dflt) {
    const char *v = getenv(name);
    return v ? atof(v) : dflt;
}

/* DIR/covariance.safetensors as CorDA covariances; *out = NULL when there is no such file. */
static int read_covs(const char *dir, peft_corda_covs **out, peft_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/covariance.safetensors", dir);
    *out = NULL;
    if (!peft_file_exists(path)) return PEFT_OK;
    peft_st_file *f;
    int rc = peft_st_open(path, &f, err);
    if (rc) return rc;
    peft_corda_covs *c = calloc(1, sizeof *c);
    c->cov = calloc((size_t)f->n_tensors, sizeof *c->cov);
    for (int i = 0; i < f->n_tensors && rc == PEFT_OK; i++) {
        const peft_st_tensor *t = &f->tensors[i];
        if (t->dtype != PEFT_F32 || t->ndim != 2 || t->shape[0] != t->shape[1]) {
            rc = peft_fail(err, PEFT_EFORMAT, "%s: \"%s\" must be F32 [in, in]", path, t->name);
            break;
        }
        peft_corda_cov *e = &c->cov[c->n++];
        snprintf(e->name, sizeof e->name, "%s", t->name);
        e->in = (int)t->shape[0];
        e->samples = 1;
        e->C = malloc(t->numel * sizeof(double));
        for (size_t j = 0; j < t->numel; j++) e->C[j] = ((const float *)t->data)[j];
    }
    peft_st_close(f);
    if (rc) peft_corda_covs_free(c);
    else *out = c;
    return rc;
}

static int run(const char *dir, peft_err *err) {
    char path[4200];
    peft_llama *m;
    peft_st_file *batch;
    int rc = driver_open(dir, &m, &batch, err);
    if (rc) return rc;
    const peft_st_tensor *ids = peft_st_find(batch, "ids"), *tgt = peft_st_find(batch, "targets"), *pos = peft_st_find(batch, "pos");
    if (!tgt) return peft_fail(err, PEFT_EFORMAT, "%s/batch.safetensors: needs I32 targets [B, T]", dir);
    int B = (int)ids->shape[0], T = (int)ids->shape[1], steps = (int)env_num("PEFT_DRIVER_STEPS", 3);
    peft_adapter_set *set;
    snprintf(path, sizeof path, "%s/adapter", dir);
    peft_corda_covs *covs;
    if ((rc = read_covs(dir, &covs, err))) return rc;
    rc = peft_adapter_set_load_covs(path, &m->base, B * T, covs, &set, err);
    peft_corda_covs_free(covs);
    const char *quantize = getenv("PEFT_DRIVER_QUANTIZE");
    if (rc == PEFT_OK && quantize && *quantize) {
        const peft_qformat *fmt = peft_qformat_find(quantize);
        rc = fmt ? llama_quantize(m, fmt, err) : peft_fail(err, PEFT_EINVAL, "PEFT_DRIVER_QUANTIZE=%s: unknown format", quantize);
    }
    if (rc) return rc;
    llama_acts a;
    if ((rc = llama_acts_alloc(m, B, T, env_num("PEFT_DRIVER_RECOMPUTE", 0) == 0, 1, &a, err))) return rc;
    int np = peft_adapter_set_n_params(set);
    peft_named_param *p = peft_adapter_set_params(set);
    peft_adamw opt;
    if ((rc = peft_adamw_init(&opt, p, np, 0.9, 0.999, 1e-8, env_num("PEFT_DRIVER_WD", 0.0), err))) return rc;
    float *grads = malloc(peft_adapter_set_numel(set) * sizeof(float)), *losses = malloc((size_t)steps * sizeof(float)), loss0 = 0;
    peft_adapter_set_mode(set, 0, 0);
    for (int s = 0; s < steps && rc == PEFT_OK; s++) {
        peft_adapter_set_zero_grad(set);
        double loss;
        int counted;
        rc = llama_forward(m, &a, ids->data, pos ? pos->data : NULL, tgt->data, &loss, &counted, err);
        if (rc) break;
        llama_backward(m, &a, ids->data, tgt->data, counted);
        losses[s] = (float)loss;
        if (s == 0) {
            loss0 = (float)loss;
            size_t off = 0;
            for (int i = 0; i < np; i++, off += p[i - 1].p.numel) memcpy(grads + off, p[i].p.grad, p[i].p.numel * sizeof(float));
        }
        peft_adamw_step(&opt, env_num("PEFT_DRIVER_LR", 1e-2));
    }
    peft_st_entry *e = calloc((size_t)2 * np + 2, sizeof *e);
    char(*names)[300] = calloc((size_t)2 * np, sizeof *names);
    size_t off = 0;
    for (int i = 0; i < np; i++) {
        snprintf(names[2 * i], sizeof names[0], "grad.%s", p[i].key);
        snprintf(names[2 * i + 1], sizeof names[0], "final.%s", p[i].key);
        for (int k = 0; k < 2; k++) {
            e[2 * i + k] = (peft_st_entry){.name = names[2 * i + k], .dtype = PEFT_F32, .ndim = p[i].p.ndim,
                                           .data = k ? (const void *)p[i].p.data : (const void *)(grads + off)};
            memcpy(e[2 * i + k].shape, p[i].p.shape, sizeof p[i].p.shape);
        }
        off += p[i].p.numel;
    }
    e[2 * np] = (peft_st_entry){.name = "loss", .dtype = PEFT_F32, .ndim = 1, .shape = {1}, .data = &loss0};
    e[2 * np + 1] = (peft_st_entry){.name = "losses", .dtype = PEFT_F32, .ndim = 1, .shape = {steps}, .data = losses};
    snprintf(path, sizeof path, "%s/out.safetensors", dir);
    if (rc == PEFT_OK) rc = peft_st_write(path, e, 2 * np + 2, NULL, 0, err);
    free(e), free(names), free(grads), free(losses);
    peft_adamw_free(&opt);
    llama_acts_free(&a);
    peft_adapter_set_free(set);
    peft_st_close(batch);
    llama_free(m);
    return rc;
}

int main(void) {
    const char *dir = getenv("PEFT_DRIVER_TRAIN");
    peft_err err = {0};
    if (!dir) {
        fprintf(stderr, "driver_train: set PEFT_DRIVER_TRAIN to the work directory\n");
        return 2;
    }
    if (run(dir, &err)) {
        fprintf(stderr, "driver: %s\n", err.msg);
        return 1;
    }
    return 0;
}
