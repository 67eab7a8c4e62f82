/* optim.c: AdamW, gradient norms and learning-rate schedules. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int peft_adamw_init(peft_adamw *o, peft_named_param *params, int n, double beta1, double beta2, double eps,
                    double weight_decay, peft_err *err) {
    memset(o, 0, sizeof *o);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += params[i].p.numel;
    o->m = calloc(total ? total : 1, sizeof(float));
    o->v = calloc(total ? total : 1, sizeof(float));
    if (!o->m || !o->v) {
        peft_adamw_free(o);
        return peft_fail(err, PEFT_ENOMEM, "cannot allocate AdamW state for %zu parameters", total);
    }
    o->n = n;
    o->params = params;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    return PEFT_OK;
}

void peft_adamw_free(peft_adamw *o) {
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

static size_t offset_of(const peft_adamw *o, int i) {
    size_t off = 0;
    for (int k = 0; k < i; k++) off += o->params[k].p.numel;
    return off;
}

float *peft_adamw_m(peft_adamw *o, int i) { return o->m + offset_of(o, i); }
float *peft_adamw_v(peft_adamw *o, int i) { return o->v + offset_of(o, i); }

void peft_adamw_step(peft_adamw *o, double lr) {
    o->step++;
    /* torch.optim.AdamW (single-tensor path): decay, moments, then
     * p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps). */
    double bc1 = 1.0 - pow(o->beta1, (double)o->step), bc2 = 1.0 - pow(o->beta2, (double)o->step);
    float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    float sqrt_bc2 = (float)sqrt(bc2);
    size_t off = 0;
    for (int i = 0; i < o->n; i++) {
        peft_param *p = &o->params[i].p;
        double plr = lr * p->lr_scale;
        float decay = (float)(1.0 - plr * o->weight_decay), step_size = (float)(plr / bc1);
        float *m = o->m + off, *v = o->v + off;
#pragma omp parallel for
        for (size_t j = 0; j < p->numel; j++) {
            float g = p->grad[j];
            p->data[j] *= decay;
            m[j] = b1 * m[j] + (1.0f - b1) * g;
            v[j] = b2 * v[j] + (1.0f - b2) * g * g;
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
