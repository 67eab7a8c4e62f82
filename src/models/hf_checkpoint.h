/* hf_checkpoint.h: what the architectures that copy an HF checkpoint to f32 (bert.c, vit.c)
 * share to read config.json and to write the model back (save_hf): range-checked integers, the
 * classification label count as HF derives it, and the checkpoint directory itself. */
#ifndef PEFT_MODELS_HF_CHECKPOINT_H
#define PEFT_MODELS_HF_CHECKPOINT_H

#include <stddef.h>

#include "io/json.h"
#include "io/safetensors.h"
#include "methods/adapter.h"
#include "models/model.h"

/* config.json's integer `key` in [lo, hi] (dflt when absent and not required); errors name file and key. */
int peft_cfg_int(const cJSON *j, const char *key, int required, int dflt, int lo, int hi, int *out, const char *file,
                 peft_err *err);

/* The labels of a classification head: opts->n_labels when set, else id2label's size, else
 * num_labels, else HF's default 2; 1 (HF's regression) is refused naming `arch`; in [2, max]. */
int peft_cfg_n_labels(const cJSON *j, const peft_model_load_opts *opts, int max, const char *arch, const char *file,
                      int *out, peft_err *err);

/* The fields HF's encoder configs share: layer_norm_eps in (0, 1) (default *eps),
 * initializer_range in [0, 10) (default 0.02), hidden_act as a GELU_* kind (gelu, gelu_new,
 * gelu_pytorch_tanh) and problem_type, which must be single-label classification when present. */
int peft_cfg_encoder(const cJSON *j, const char *file, double *eps, double *init_range, int *gelu_kind, peft_err *err);

/* Writes m as an HF checkpoint into dir (not the base model's own): model.safetensors holding
 * tensors[n] (f32), config.json = config_text (the loaded config) with architectures =
 * [m->info.hf_class] and id2label / label2id rewritten when they do not hold n_labels entries
 * (n_labels 0: left alone), and each of side_files[n_side] copied from m->dir when it exists. */
int peft_hf_checkpoint_write(const peft_model *m, const char *dir, const char *config_text, int n_labels,
                             const peft_st_entry *tensors, int n, const char *const *side_files, int n_side,
                             peft_err *err);

/* A NUL-terminated copy of config.json's text (what save_hf rewrites); NULL when out of memory. */
char *peft_hf_config_copy(const char *config_json, size_t config_len);

/* Accounts for one tensor of m just read or initialised, values p[n] of HF shape[ndim] (ndim <= 2
 * for a head tensor): non-finite values are refused naming m->dir and `name`; a head tensor
 * (hp non-NULL) becomes *hp with no gradient until an adapter set trains it (model.h), any other
 * counts in m->n_params. p NULL (shapes only): nothing to check. */
int peft_hf_bind_tensor(peft_model *m, peft_param *hp, const char *name, const float *p, size_t n, int ndim,
                        const int64_t *shape, peft_err *err);
/* After every tensor is bound: m's head is head[n_head], and each norm uses its base weight/bias. */
void peft_hf_bind_done(peft_model *m, peft_param *head, int n_head);

/* Allocates *site_arr[n_sites] and *norm_arr[n_norms] (zeroed) and m's sites / norms lists
 * pointing at them; PEFT_ENOMEM when out of memory (what was allocated is freed by
 * peft_hf_sites_free, which takes NULLs too). */
int peft_hf_sites_alloc(peft_model *m, peft_site **site_arr, int n_sites, peft_norm_site **norm_arr, int n_norms);
void peft_hf_sites_free(peft_model *m, peft_site *site_arr, peft_norm_site *norm_arr);

#endif
