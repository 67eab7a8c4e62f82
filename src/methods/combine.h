/* combine.h: several LoRA adapters of one base model combined into one LoRA adapter, as HF
 * PEFT's LoraModel.add_weighted_adapter (peft 0.21.2) does it, for every combination type:
 *
 *   cat          A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] [sum r_i, in], B = [B_1, B_2, ...] [out, sum r_i]:
 *                exactly sum_i w_i s_i B_i A_i;
 *   linear, ties, dare_linear, dare_ties, magnitude_prune
 *                the A's and the B's are merged separately (all ranks equal) with the weights
 *                sqrt(|w_i s_i|) (A: times the sign of w_i s_i), so linear is
 *                (sum_i sqrt. B_i)(sum_i +-sqrt. A_i): a rough approximation of the sum;
 *   svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd
 *                the deltas dW_i = s_i B_i A_i [out, in] are merged with the weights w_i and
 *                re-factorised by a truncated SVD: B = U_R S_R, A = Vt_R, R = --svd-rank or
 *                the largest rank, optionally clamped to the svd_clamp quantile of their entries.
 *
 * The merges are PEFT's merge_utils on n tensors t_i with weights w_i:
 *   linear (task arithmetic)  sum_i w_i t_i;
 *   magnitude_prune           the same after keeping the int(density * numel) largest |t_i|;
 *   ties                      magnitude-pruned t_i, then per element the majority sign (of
 *                             sum_i t_i, "total", or of sum_i sign(t_i), "frequency"; >= 0 is +)
 *                             and the mean of the weighted w_i t_i that have it;
 *   dare_linear, dare_ties    as linear / ties, but each element of each t_i is kept with
 *                             probability density (and divided by it) instead of by magnitude:
 *                             the masks come from peft_rng with opts.seed, so a run is
 *                             reproducible (PEFT draws them with torch.bernoulli).
 * density >= 1 prunes nothing (PEFT's prune returns the tensor as it is).
 *
 * The result is written as PEFT writes it: a plain LoRA config with r = lora_alpha = R (so
 * s = 1; with rsLoRA inherited from the first adapter s = sqrt(R), as in PEFT), no rank or
 * alpha patterns, the first adapter's other fields. */
#ifndef PEFT_METHODS_COMBINE_H
#define PEFT_METHODS_COMBINE_H

#include <stdint.h>

#include "error.h"
#include "methods/adapter_set.h"
#include "models/model.h"

/* How the tensors are merged (PEFT's merge_utils function). */
typedef enum peft_merge_kind {
    PEFT_MERGE_LINEAR,      /* task_arithmetic */
    PEFT_MERGE_TIES,
    PEFT_MERGE_DARE_LINEAR,
    PEFT_MERGE_DARE_TIES,
    PEFT_MERGE_MAGNITUDE,   /* magnitude_prune */
    PEFT_MERGE_CAT          /* no merge: the factors are concatenated */
} peft_merge_kind;

typedef struct peft_combine_opts {
    peft_merge_kind merge;
    int svd;                /* merge the deltas and re-factorise them (the *_svd types, "svd") */
    double density;         /* fraction kept by ties / dare / magnitude_prune, in [0, 1] ((0, 1] for dare) */
    int majority_frequency; /* ties: elect the sign by counting signs ("frequency") instead of summing ("total") */
    int svd_rank;           /* rank of an SVD result; 0: the largest rank of the adapters */
    double svd_clamp;       /* quantile in [0, 1] the SVD factors are clamped to (+-); negative: no clamp */
    uint64_t seed;          /* DARE's random masks */
} peft_combine_opts;

/* PEFT's combination_type name ("svd", "linear", "cat", "ties", "ties_svd", "dare_ties",
 * "dare_linear", "dare_ties_svd", "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
 * into o->merge and o->svd. Returns 0, or -1 for an unknown name. */
int peft_combine_type_parse(const char *name, peft_combine_opts *o);
/* The names, comma-separated, for messages and --help. */
extern const char peft_combine_type_names[];
/* 1 when the type takes a density (ties, dare, magnitude_prune) / a majority sign method (ties
 * kinds) / a seed (dare kinds). */
int peft_combine_uses_density(const peft_combine_opts *o);
int peft_combine_uses_sign(const peft_combine_opts *o);
int peft_combine_uses_seed(const peft_combine_opts *o);

/* One adapter at one site: A [r, in], B [out, r], scale s, combination weight w. */
typedef struct peft_combine_term {
    const float *A, *B;
    int r;
    float scale;
    double weight;
} peft_combine_term;

/* Combines the n terms of a site [out, in] into A [R, in], B [out, R] (see the top of this
 * file; cat zero-pads up to R, the merges of A and B need every r == R, an SVD needs
 * R <= min(in, out)). `stream` makes the site's DARE masks differ from other sites'; `site`
 * names it in messages. */
int peft_combine_site(const peft_combine_opts *o, const peft_combine_term *t, int n, int in, int out, int R, uint64_t stream,
                      const char *site, float *A, float *B, peft_err *err);

/* Loads the LoRA adapters in dirs[n] onto m (a shapes-only model is enough: peft_model_load_opts.shapes_only),
 * combines them with weights[n] and returns the result as a new adapter set on m (save it
 * with peft_adapter_set_save). With one adapter the type is linear, as in PEFT. Refused, with
 * the adapter directory named: another method than plain LoRA (DoRA included: PEFT keeps no
 * combined magnitude vector), another base_model_name_or_path or set of adapted modules than
 * the first adapter, unequal ranks for the merges of A and B. */
int peft_combine_adapters(peft_model *m, const char *const *dirs, const double *weights, int n, const peft_combine_opts *o,
                          peft_adapter_set **out, peft_err *err);

#endif
