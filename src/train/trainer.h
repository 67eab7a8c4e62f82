/* trainer.h: the fine-tuning loop: batches from a dataset, forward/backward through the
 * model with its adapters, gradient accumulation and clipping, AdamW with a schedule,
 * periodic validation, crash-safe checkpoints with exact resume, a JSONL log and an SVG
 * loss curve. */
#ifndef PEFT_TRAIN_TRAINER_H
#define PEFT_TRAIN_TRAINER_H

#include <stdint.h>

#include "error.h"
#include "methods/adapter_set.h"
#include "models/model.h"
#include "train/cls_data.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/optim.h"

typedef struct peft_train_opts {
    int batch;             /* rows per micro-batch (B) */
    int seq_len;           /* T, must equal the dataset's */
    int grad_accum;        /* micro-batches per update */
    long steps;            /* updates in total */
    double lr, beta1, beta2, eps, weight_decay;
    double lr_ratio_b;     /* LoRA+: learning rate of lora_B = lr * this (1 = plain LoRA) */
    double allora_eta;     /* ALLoRA: > 0 gives each parameter row lr / sqrt(||row||^2 + 1/eta^2) (optim.h); 0 off */
    double max_grad_norm;  /* <= 0: no clipping */
    long warmup;
    peft_schedule schedule;
    long eval_every;       /* validation every N updates (0: only at the end) */
    int eval_batches;      /* validation micro-batches per evaluation (0: whole split) */
    long save_every;       /* checkpoint every N updates (0: never) */
    uint64_t seed;         /* data order, dropout */
    int recompute;         /* gradient checkpointing: keep only layer inputs, recompute in backward */
    int skip_nonfinite;    /* on NaN/Inf loss or gradient: skip the update instead of stopping */
    int resume;            /* continue from out_dir/checkpoint.safetensors if present */
    int progress;          /* draw a progress bar on stderr */
    const char *out_dir;   /* adapter, checkpoint, train_log.jsonl, loss.svg */
    const peft_dataset *val_data; /* validate on all of this one (NULL: the held-out split of the training data) */
    const peft_dist *dist; /* the MPI job whose ranks share each update's micro-batches (NULL: this process alone) */
} peft_train_opts;

void peft_train_opts_default(peft_train_opts *o);

typedef struct peft_train_result {
    long steps_done;
    double first_val_loss;  /* before training (NAN if no validation split) */
    double final_val_loss;
    double final_train_loss;
    double tokens_per_s;    /* training tokens / time in updates (validation and checkpoints excluded) */
    long skipped_steps;
} peft_train_result;

/* Trains set's parameters on ds and writes the final adapter to opts->out_dir. In a job of N
 * ranks (opts->dist) every rank calls it with the same arguments; each update's grad_accum
 * micro-batches (a multiple of N) are shared among them and the adapter equals a single
 * process's bit for bit; rank 0 alone validates and writes the files (its res has the
 * validation losses). */
int peft_train(peft_model *m, peft_adapter_set *set, const peft_dataset *ds, const peft_train_opts *opts,
               peft_train_result *res, peft_err *err);

/* The same for seq-cls / image-cls: micro-batches of o->batch examples of ds (padded to the
 * batch's longest, at most o->seq_len tokens as loaded), the labels as targets; validation on
 * all of val (NULL: none). o->val_data is not used. */
int peft_train_cls(peft_model *m, peft_adapter_set *set, const peft_cls_dataset *ds, const peft_cls_dataset *val,
                   const peft_train_opts *o, peft_train_result *res, peft_err *err);

/* Mean validation loss over up to max_batches micro-batches (0: all). */
int peft_evaluate(peft_model *m, peft_adapter_set *set, const peft_dataset *ds, int B, int T, int split,
                  int max_batches, double *loss, peft_err *err);

#endif
