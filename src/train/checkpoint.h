/* checkpoint.h: the trainer's checkpoint.safetensors and the run signature it carries.
 *
 * A checkpoint holds every trainable tensor under its adapter key, the AdamW moments under
 * "adamw.m.<key>" / "adamw.v.<key>", LISA's frozen-now layers under their keys, and string
 * metadata: format, step, adamw_step and run (the signature). A file is untrusted input:
 * restoring validates every field before use. */
#ifndef PEFT_TRAIN_CHECKPOINT_H
#define PEFT_TRAIN_CHECKPOINT_H

#include "error.h"
#include "io/safetensors.h"
#include "train/trainer.h"

#define PEFT_CHECKPOINT_FORMAT "peft.c-checkpoint-2"

/* Everything that changes what a run computes, one "name=value" line per setting: every
 * training option that enters an update, the model's shape and compute mode, every field of
 * the adapter configuration (method, targets, patterns, method options), the number of
 * trainable numbers and the hashes of the training and validation data (peft_dataset_hash or
 * peft_cls_hash; 0: no validation file). A resume must match it exactly. Returns a heap string (caller frees) or NULL when out of memory. */
char *peft_run_signature(const peft_train_opts *o, const peft_model *m, const peft_adapter_set *set, uint64_t data_hash,
                         uint64_t val_hash);

/* Writes the checkpoint of update `step` to path atomically. */
int peft_checkpoint_save(const char *path, peft_adapter_set *set, peft_adamw *opt, long step, const char *signature,
                         peft_err *err);

/* Restores set and opt from the opened checkpoint f. Refused, naming f->path and the field:
 * metadata that is not a JSON object of strings, another format, step outside [0, max_step],
 * adamw_step outside [0, step], a signature that differs from `signature` (the message names
 * the first differing setting with both values), a tensor missing or of another dtype or
 * shape, a non-finite value, a negative second moment. On success *step is the update to
 * continue from; on error set and opt hold partial data and must not be trained on. */
int peft_checkpoint_restore(const peft_st_file *f, peft_adapter_set *set, peft_adamw *opt, const char *signature, long max_step,
                            long *step, peft_err *err);

#endif
