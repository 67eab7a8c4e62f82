/* optim.c: AdamW, gradient norms and learning-rate schedules. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int peft_adamw_init(peft_adamw *o, peft_named_param *params, int n, double beta1, double beta2, double eps,
                    double weight_decay, peft_err *err) {
    memset(o, 0, sizeof *o);
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    int rc = peft_adamw_rebind(o, params, n, err);
    if (rc) peft_adamw_free(o);
    return rc;
}

void peft_adamw_free(peft_adamw *o) {
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

int peft_adamw_rebind(peft_adamw *o, peft_named_param *params, int n, peft_err *err) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += params[i].p.numel;
    size_t need = total ? total : 1; /* never a zero-size slab */
    for (int k = 0; k < 2 && need > o->capacity; k++) {
        float **slab = k ? &o->v : &o->m, *grown = realloc(*slab, need * sizeof(float));
        if (!grown) return peft_fail(err, PEFT_ENOMEM, "cannot allocate AdamW state for %zu parameters", total);
        *slab = grown;
    }
    if (need > o->capacity) o->capacity = need;
    memset(o->m, 0, need * sizeof(float));
    memset(o->v, 0, need * sizeof(float));
    o->params = params;
    o->n = n;
    o->step = 0;
    return PEFT_OK;
}

static size_t offset_of(const peft_adamw *o, int i) {
    size_t off = 0;
    for (int k = 0; k < i; k++) off += o->params[k].p.numel;
    return off;
}

float *peft_adamw_m(peft_adamw *o, int i) { return o->m + offset_of(o, i); }
float *peft_adamw_v(peft_adamw *o, int i) { return o->v + offset_of(o, i); }

double peft_allora_factor(const float *row, size_t n, double eta) {
    double ss = 0;
    for (size_t j = 0; j < n; j++) ss += (double)row[j] * row[j];
    return 1.0 / sqrt(ss + 1.0 / (eta * eta));
}

/* ALLoRA: the AdamW update of parameter p, row by row, each with its own learning rate
 * plr * peft_allora_factor(row) (decay and step both use it, as AdamW's lr). */
static void allora_update(peft_param *p, float *m, float *v, double plr, double bc1, float b1, float b2, float c1, float c2,
                          float eps, float sqrt_bc2, double wd, double eta) {
    size_t rows = p->ndim >= 2 && p->shape[0] > 0 ? (size_t)p->shape[0] : 1, cols = p->numel / rows;
#pragma omp parallel for
    for (size_t r = 0; r < rows; r++) {
        float *d = p->data + r * cols, *mr = m + r * cols, *vr = v + r * cols;
        const float *g = p->grad + r * cols;
        double rlr = plr * peft_allora_factor(d, cols, eta);
        float decay = (float)(1.0 - rlr * wd), step_size = (float)(rlr / bc1);
        for (size_t j = 0; j < cols; j++) {
            d[j] *= decay;
            mr[j] = b1 * mr[j] + c1 * g[j];
            vr[j] = b2 * vr[j] + c2 * g[j] * g[j];
            d[j] -= step_size * mr[j] / (sqrtf(vr[j]) / sqrt_bc2 + eps);
        }
    }
}

void peft_adamw_step(peft_adamw *o, double lr) {
    o->step++;
    /* torch.optim.AdamW (single-tensor path): decay, moments, then
     * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps). */
    double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
    float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    /* 1 - beta in double, as torch: 1.0f - 0.999f is 1.3e-5 (relative) off 0.001, which moved the
     * early updates by 6e-6 (relative) */
    float c1 = (float)(1.0 - o->beta1), c2 = (float)(1.0 - o->beta2);
    float sqrt_bc2 = (float)sqrt(bc2);
    size_t off = 0;
    for (int i = 0; i < o->n; i++) {
        peft_param *p = &o->params[i].p;
        double plr = lr * p->lr_scale;
        if (o->allora_eta > 0) {
            allora_update(p, o->m + off, o->v + off, plr, bc1, b1, b2, c1, c2, eps, sqrt_bc2, o->weight_decay, o->allora_eta);
            off += p->numel;
            continue;
        }
        float decay = (float)(1.0 - plr * o->weight_decay), step_size = (float)(plr / bc1);
        float *m = o->m + off, *v = o->v + off;
#pragma omp parallel for
        for (size_t j = 0; j < p->numel; j++) {
            float g = p->grad[j];
            p->data[j] *= decay;
            m[j] = b1 * m[j] + c1 * g;
            v[j] = b2 * v[j] + c2 * g * g;
            p->data[j] -= step_size * m[j] / (sqrtf(v[j]) / sqrt_bc2 + eps);
        }
        off += p->numel;
    }
}

double peft_grad_norm(const peft_named_param *params, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        const float *g = params[i].p.grad;
        double s = 0;
#pragma omp parallel for reduction(+ : s)
        for (size_t j = 0; j < params[i].p.numel; j++) s += (double)g[j] * g[j];
        sum += s;
    }
    return sqrt(sum);
}

void peft_grad_scale(peft_named_param *params, int n, float s) {
    for (int i = 0; i < n; i++) {
        float *g = params[i].p.grad;
        for (size_t j = 0; j < params[i].p.numel; j++) g[j] *= s;
    }
}

double peft_lr_at(peft_schedule kind, double base_lr, long step, long total, long warmup) {
    if (step < warmup) return base_lr * (double)step / (double)(warmup > 0 ? warmup : 1);
    double progress = total > warmup ? (double)(step - warmup) / (double)(total - warmup) : 1.0;
    switch (kind) {
    case PEFT_SCHED_LINEAR: return base_lr * fmax(0.0, 1.0 - progress);
    case PEFT_SCHED_COSINE: return base_lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
    default: return base_lr;
    }
}

int peft_schedule_parse(const char *name) {
    if (!strcmp(name, "constant")) return PEFT_SCHED_CONSTANT;
    if (!strcmp(name, "linear")) return PEFT_SCHED_LINEAR;
    if (!strcmp(name, "cosine")) return PEFT_SCHED_COSINE;
    return -1;
}
