/* adapter.h: the interface every PEFT method implements (one file per method in
 * src/methods/), in the "unified view" of PEFT: a method is a modification attached at a
 * site, here a frozen linear layer (models/site.h), that adds a term to its output.
 *
 * A method is a const, versioned table of functions (SQLite's io_methods style): new
 * entries are only ever appended, and abi_version says which exist. An adapter instance
 * embeds `peft_adapter` as its first member and carries its own parameters, gradients
 * and saved activations.
 *
 * Forward/backward contract (llm.c style):
 *   forward(a, s, y, x, N, save): y[N,out] already holds x W^T + b; the method ADDS its
 *     term (or, when forward_replaces_base, computes y itself). When save is set (a
 *     training forward) it keeps what backward needs; each adapter sits at one site, so
 *     one saved set of max_rows rows suffices.
 *   backward(a, s, dx, dy, x, N): ACCUMULATES (+=) parameter gradients and, when dx is
 *     non-NULL, its part of the input gradient. The base term's dx is done by the site,
 *     unless forward_replaces_base, when the method does all of it.
 *   merge(a, s, +1) folds the adapter into s->weight; merge(a, s, -1) takes it out again
 *     (NULL when the method's function cannot be folded into W).
 *
 * Adapter files: params() names each tensor with the key suffix PEFT uses after the site
 * name; tensors shared by all sites of a set (VeRA's random bases, MoS's shard pools) come
 * from peft_shared_tensor() under a full key of their own. config_write/config_read carry
 * the method's own adapter_config.json fields; the set writes the common ones. */
#ifndef PEFT_METHODS_ADAPTER_H
#define PEFT_METHODS_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/site.h"

#define PEFT_METHOD_ABI 3
#define PEFT_PARAM_MAX_DIMS 4

/* A named trainable tensor. `name` is the PEFT key suffix after the site name, e.g.
 * "lora_A.weight" (saved as "base_model.model.<site>.lora_A.weight"). */
typedef struct peft_param {
    char name[64];
    float *data;
    float *grad;
    size_t numel;
    int ndim;
    int64_t shape[PEFT_PARAM_MAX_DIMS];
    float lr_scale; /* multiplies the learning rate (LoRA+ uses it for B); 1 by default */
} peft_param;

typedef struct peft_adapter peft_adapter;
typedef struct peft_shared peft_shared;
struct cJSON;
struct peft_model;
struct peft_corda_covs;

/* Options of a set of adapters; each method reads the fields it uses. */
typedef struct peft_method_opts {
    int rank;
    double alpha;
    int use_rslora;      /* scale = alpha / sqrt(rank) instead of alpha / rank */
    double dropout;      /* on the adapter's input, training only */
    int init_gaussian;   /* 0: PEFT default (A Kaiming-uniform, B zero); 1: A ~ N(0, 1/r), B zero */
    uint64_t seed;       /* the adapter's own RNG stream (init, dropout) */
    double init_scale;   /* method-specific initial value (VeRA's d_initial, ...) */
    char feedforward_modules[256]; /* IA3: comma list of sites whose input (not output) is scaled */
    peft_shared *shared; /* the set's shared tensors (filled in by the set) */
    int max_in, max_out; /* largest in/out features over the set's target sites (filled in by the set) */
    int n_virtual;       /* prompt tuning: virtual tokens */
    const float *init_rows; /* prompt tuning: [n_virtual, hidden] initial embeddings, or NULL (random) */
    char init_text[256]; /* prompt tuning: the text init_rows came from (written to the config) */
    /* The model's dimensions, filled in by the set for model-level methods' configs. */
    int model_hidden, model_layers, model_kv_heads, model_head_dim;
    /* CorDA: the calibration covariances of the target sites' inputs (methods/pissa.h), read
     * only while the adapters are created; NULL otherwise. */
    const struct peft_corda_covs *corda_covs;
    /* LISA: gamma layers sampled every `lisa_interval` updates; the model (filled in by the
     * set) whose norms it trains with the layers. */
    int lisa_gamma;
    long lisa_interval;
    struct peft_model *model;
} peft_method_opts;

/* The shared tensor `key` of the set ([ndim] shape), zero-filled and *created = 1 on first
 * request, the same memory afterwards. trainable: gets a gradient and an optimizer entry;
 * saved: written to / read from the adapter file under `key`. NULL when out of memory or
 * when `key` exists with another shape. */
float *peft_shared_tensor(peft_shared *sh, const char *key, int ndim, const int64_t *shape, int trainable, int saved,
                          float **grad, int *created);

typedef struct peft_method {
    int abi_version;     /* PEFT_METHOD_ABI when the table was written */
    const char *name;    /* "lora" */
    int forward_replaces_base;
    /* Creates an adapter for site s, able to save activations for up to max_rows rows. */
    int (*create)(const peft_method_opts *opts, const peft_site *s, int max_rows, peft_adapter **out, peft_err *err);
    void (*destroy)(peft_adapter *a);
    void (*forward)(peft_adapter *a, const peft_site *s, float *y, const float *x, int N, int save);
    void (*backward)(peft_adapter *a, const peft_site *s, float *dx, const float *dy, const float *x, int N);
    /* sign = +1 merges into s->weight, -1 unmerges. NULL: not mergeable. */
    int (*merge)(peft_adapter *a, peft_site *s, int sign, peft_err *err);
    /* Fills up to max params; returns how many the adapter has. */
    int (*params)(peft_adapter *a, peft_param *out, int max);
    /* Floats of shared scratch (peft_adapter.work) forward/backward need for N rows. */
    size_t (*work_floats)(const peft_adapter *a, const peft_site *s, int N);
    /* PEFT's peft_type for adapter_config.json ("LORA", "IA3", ...). */
    const char *peft_type;
    /* The method's own adapter_config.json fields. config_read returns 1 for a config of
     * its peft_type that another method handles (LoRA vs DoRA), 0 when it read it. */
    void (*config_write)(const peft_method_opts *o, struct cJSON *obj);
    int (*config_read)(const struct cJSON *obj, peft_method_opts *o, const char *what, peft_err *err);
    /* Model-level methods (prompt tuning) act on the model instead of on sites: the set calls
     * attach_model (which may create shared tensors) instead of create per site, and
     * detach_model when it is freed. NULL for site methods. */
    int (*attach_model)(const peft_method_opts *o, struct peft_model *m, peft_err *err);
    void (*detach_model)(struct peft_model *m);
    /* ABI 2: methods that train the base model's own weights, a changing part at a time
     * (LISA). begin_step brings the adapter to update `step` (0-based; the set calls it at
     * creation with 0 and the trainer before every update): returns 1 when params() or state()
     * changed, 0 when not, or a negative error. state() fills the tensors besides params() that
     * a checkpoint must carry to resume exactly (weights trained earlier, frozen now).
     * trains_base: the output is the trained model itself (peft_model_save_hf), not an
     * adapter file. NULL / 0 for every other method. */
    int (*begin_step)(peft_adapter *a, const peft_site *s, long step, peft_err *err);
    int (*state)(peft_adapter *a, peft_param *out, int max);
    int trains_base;
    /* ABI 3: forward or backward read s->weight (DoRA, HUT, Hydra, IA3, the sequential
     * bottleneck adapter, LISA). 0: after create the adapter touches s->weight only in merge,
     * so a model computing in 16 bits may drop the f32 copy (peft_model_use_half). */
    int reads_base;
} peft_method;

struct peft_adapter {
    const peft_method *method;
    int training;        /* dropout and activation saving are on only while training */
    uint64_t step_seed;  /* advanced by the trainer each step: dropout masks derive from it */
    float *work;         /* scratch shared by all adapters of a set (sites run one at a time) */
};

#endif
