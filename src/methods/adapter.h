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
 *   forward(a, s, y, x, N, slot): y[N,out] already holds x W^T + b; the method ADDS its
 *     term (or, when forward_replaces_base, computes y itself). When slot >= 0 (training)
 *     it saves what backward needs under that slot (one slot per layer-recomputation unit).
 *   backward(a, s, dx, dy, x, N, slot): ACCUMULATES (+=) parameter gradients and, when dx
 *     is non-NULL, its part of the input gradient. The base term's dx is done by the site.
 *   merge(a, s, +1) folds the adapter into s->weight; merge(a, s, -1) takes it out again. */
#ifndef PEFT_METHODS_ADAPTER_H
#define PEFT_METHODS_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/site.h"

#define PEFT_METHOD_ABI 1
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

/* Options shared by the low-rank family; each method reads what it uses. */
typedef struct peft_method_opts {
    int rank;
    double alpha;
    int use_rslora;      /* scale = alpha / sqrt(rank) instead of alpha / rank */
    double dropout;      /* on the adapter's input, training only */
    int init_gaussian;   /* 0: PEFT default (A Kaiming-uniform, B zero); 1: A ~ N(0, 1/r), B zero */
    uint64_t seed;       /* the adapter's own RNG stream (init, dropout) */
} peft_method_opts;

typedef struct peft_method {
    int abi_version;     /* PEFT_METHOD_ABI when the table was written */
    const char *name;    /* "lora" */
    int forward_replaces_base;
    /* Creates an adapter for site s. n_slots saved-activation slots of max_rows rows each. */
    int (*create)(const peft_method_opts *opts, const peft_site *s, int n_slots, int max_rows, peft_adapter **out,
                  peft_err *err);
    void (*destroy)(peft_adapter *a);
    void (*forward)(peft_adapter *a, const peft_site *s, float *y, const float *x, int N, int slot);
    void (*backward)(peft_adapter *a, const peft_site *s, float *dx, const float *dy, const float *x, int N, int slot);
    /* sign = +1 merges into s->weight, -1 unmerges. */
    int (*merge)(peft_adapter *a, peft_site *s, int sign, peft_err *err);
    /* Fills up to max params; returns how many the adapter has. */
    int (*params)(peft_adapter *a, peft_param *out, int max);
    /* Floats of shared scratch (peft_adapter.work) forward/backward need for N rows. */
    size_t (*work_floats)(const peft_adapter *a, const peft_site *s, int N);
} peft_method;

struct peft_adapter {
    const peft_method *method;
    int training;        /* dropout and activation saving are on only while training */
    uint64_t step_seed;  /* advanced by the trainer each step: dropout masks derive from it */
    float *work;         /* scratch shared by all adapters of a set (sites run one at a time) */
};

#endif
