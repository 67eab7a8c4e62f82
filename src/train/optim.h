/* optim.h: AdamW (Loshchilov & Hutter, 2019) over a set of named parameters, learning-rate
 * schedules, and global-norm gradient clipping. The update follows torch.optim.AdamW step
 * for step, so trajectories can be compared with PyTorch.
 *
 * ALLoRA (Huang & Balestriero, 2024, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal
 * Flaws") is an option of the same optimizer: with allora_eta > 0, each row i of a parameter
 * (shape[0] rows of numel / shape[0]; a 1-D parameter is one row) is updated with learning
 * rate lr * lr_scale / sqrt(||theta_i||^2 + 1 / eta^2), the norm taken before the update. A
 * row at 0 (LoRA's B at init) moves with lr * eta; a row of large norm with lr / ||theta_i||. */
#ifndef PEFT_TRAIN_OPTIM_H
#define PEFT_TRAIN_OPTIM_H

#include "error.h"
#include "methods/adapter_set.h"

typedef struct peft_adamw {
    int n;                    /* parameters */
    peft_named_param *params; /* borrowed from the adapter set */
    float *m, *v;             /* first/second moments, one slab each, params back to back */
    size_t capacity;          /* floats each slab holds (>= the params' total) */
    long step;                /* updates taken */
    double beta1, beta2, eps, weight_decay;
    double allora_eta;        /* > 0: ALLoRA's per-row learning rate (above); 0: plain AdamW (init sets 0) */
} peft_adamw;

int peft_adamw_init(peft_adamw *o, peft_named_param *params, int n, double beta1, double beta2, double eps,
                    double weight_decay, peft_err *err);
void peft_adamw_free(peft_adamw *o);
/* Starts afresh on a new parameter list (a method whose trainable tensors changed, LISA):
 * moments zero, step 0. The slabs grow only when the list needs more than they hold. */
int peft_adamw_rebind(peft_adamw *o, peft_named_param *params, int n, peft_err *err);
/* One update with learning rate lr (times each parameter's lr_scale). */
void peft_adamw_step(peft_adamw *o, double lr);
/* ALLoRA's learning-rate factor of one row [n]: 1 / sqrt(||row||^2 + 1 / eta^2) (eta > 0). */
double peft_allora_factor(const float *row, size_t n, double eta);
/* Moments of parameter i (for checkpoints). */
float *peft_adamw_m(peft_adamw *o, int i);
float *peft_adamw_v(peft_adamw *o, int i);

/* sqrt(sum of squared gradients) over all params. */
double peft_grad_norm(const peft_named_param *params, int n);
/* Multiplies every gradient by s. */
void peft_grad_scale(peft_named_param *params, int n, float s);

typedef enum peft_schedule { PEFT_SCHED_CONSTANT = 0, PEFT_SCHED_LINEAR, PEFT_SCHED_COSINE } peft_schedule;
/* Learning rate of update `step` (0-based) of `total`, as transformers' get_*_schedule_with_warmup:
 * linear warmup from 0 over `warmup` steps, then constant, linear decay to 0, or cosine to 0. */
double peft_lr_at(peft_schedule kind, double base_lr, long step, long total, long warmup);
/* "constant", "linear", "cosine" -> kind; -1 if unknown. */
int peft_schedule_parse(const char *name);

#endif
