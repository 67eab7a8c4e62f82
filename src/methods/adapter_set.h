/* adapter_set.h: the adapters attached to a model as one unit: created from a method and a
 * target list, trained, saved in Hugging Face PEFT's format (adapter_config.json +
 * adapter_model.safetensors with PEFT's key names) and loaded back. */
#ifndef PEFT_METHODS_ADAPTER_SET_H
#define PEFT_METHODS_ADAPTER_SET_H

#include "error.h"
#include "methods/adapter.h"
#include "models/model.h"

#define PEFT_MAX_PATTERNS 32

/* A (regex, value) pair of PEFT's rank_pattern / alpha_pattern. */
typedef struct peft_pattern {
    char key[128];
    double value;
} peft_pattern;

typedef struct peft_adapter_config {
    char method[32];           /* "lora" */
    /* Targets, as PEFT: a comma list of module names matched as the name or its last
     * components ("q_proj,v_proj"), "all-linear", or (target_regex) one regex that must
     * match the whole module name. */
    char target_modules[512];
    int target_regex;
    int layers_to_transform[64]; /* restricts targets to these layers when n_layers_to_transform > 0 */
    int n_layers_to_transform;
    peft_method_opts opts;     /* rank, alpha, rslora, dropout, init, seed */
    peft_pattern rank_pattern[PEFT_MAX_PATTERNS];
    int n_rank_pattern;
    peft_pattern alpha_pattern[PEFT_MAX_PATTERNS];
    int n_alpha_pattern;
    char base_model[512];      /* base_model_name_or_path written to adapter_config.json */
    /* PiSSA/CorDA: save the equivalent LoRA of rank 2r on the ORIGINAL weights instead of the
     * adapter of the residual ones (PEFT's path_initial_model_for_weight_conversion). */
    int save_as_lora;
} peft_adapter_config;

/* PEFT's defaults: LoRA, r 8, alpha 8, no dropout, q_proj,v_proj (PEFT's Llama default). */
void peft_adapter_config_default(peft_adapter_config *cfg);

/* A trainable tensor with its full PEFT key ("base_model.model.<site>.lora_A.weight"). */
typedef struct peft_named_param {
    char key[256];
    peft_param p;
} peft_named_param;

typedef struct peft_adapter_set peft_adapter_set;

/* Attaches a fresh adapter to every site of m matching cfg. max_rows: the most token rows a
 * training forward will run (0 for inference only). Fails if no site matches. */
int peft_adapter_set_create(peft_model *m, const peft_adapter_config *cfg, int max_rows, peft_adapter_set **out,
                            peft_err *err);
/* Parses the text of an adapter_config.json (`what` names it in messages). */
int peft_adapter_config_parse(const char *text, size_t len, const char *what, peft_adapter_config *cfg, peft_err *err);
/* Reads and parses DIR/adapter_config.json (messages name that file). */
int peft_adapter_config_read(const char *dir, peft_adapter_config *cfg, peft_err *err);
/* Loads DIR/adapter_config.json + DIR/adapter_model.safetensors and attaches the adapters.
 * Every tensor in the file must belong to a site of m with the right shape, and every
 * adapter parameter must be in the file. */
int peft_adapter_set_load(const char *dir, peft_model *m, int max_rows, peft_adapter_set **out, peft_err *err);
/* The same, with CorDA's calibration covariances (methods/pissa.h) for creating the adapters
 * (NULL: none; a CorDA adapter is then refused). covs is not kept. */
int peft_adapter_set_load_covs(const char *dir, peft_model *m, int max_rows, const struct peft_corda_covs *covs,
                               peft_adapter_set **out, peft_err *err);
/* The sites of m that cfg targets (PEFT's matching of target_modules / target_regex and
 * layers_to_transform), in model order, into sites[m->n_sites]; their number in *n. */
int peft_adapter_set_targets(peft_model *m, const peft_adapter_config *cfg, peft_site **sites, int *n, peft_err *err);
/* Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (each atomically); with
 * cfg.save_as_lora, the LoRA of the original weights (see peft_adapter_config). A method that
 * trains the base itself (LISA, trains_base) writes the model instead (peft_model_save_hf). */
int peft_adapter_set_save(const peft_adapter_set *set, const char *dir, peft_err *err);
/* Detaches the adapters from their sites and frees them. NULL is a no-op. */
void peft_adapter_set_free(peft_adapter_set *set);

/* Makes the shared scratch large enough for forward/backward over N rows. */
int peft_adapter_set_reserve(peft_adapter_set *set, int N, peft_err *err);
/* Training mode on/off (dropout) and the seed of this step's dropout masks. */
void peft_adapter_set_mode(peft_adapter_set *set, int training, uint64_t step_seed);
/* sign +1: fold every adapter into its site's weight; -1: take it out again. */
int peft_adapter_set_merge(peft_adapter_set *set, int sign, peft_err *err);

int peft_adapter_set_n_params(const peft_adapter_set *set);
peft_named_param *peft_adapter_set_params(peft_adapter_set *set);
/* Methods whose trainable tensors change during training (LISA, begin_step): brings every
 * adapter to update `step` (0-based; creation does step 0). Returns 1 when the parameter and
 * state lists changed since the caller last saw them (re-read them; an optimizer starts afresh;
 * the first call after creation returns 1), 0 when not (always for other methods), or a
 * negative error. */
int peft_adapter_set_begin_step(peft_adapter_set *set, long step, peft_err *err);
/* What a checkpoint must carry besides the parameters to resume exactly (LISA: the weights of
 * layers trained in earlier periods, frozen now), keyed like the parameters. */
int peft_adapter_set_n_state(const peft_adapter_set *set);
peft_named_param *peft_adapter_set_state(peft_adapter_set *set);
/* The decoder layers (ascending) holding trainable parameters now, up to max into layers;
 * returns their number. */
int peft_adapter_set_active_layers(const peft_adapter_set *set, int *layers, int max);
size_t peft_adapter_set_numel(const peft_adapter_set *set);
int peft_adapter_set_n_sites(const peft_adapter_set *set);
const peft_adapter_config *peft_adapter_set_config(const peft_adapter_set *set);
void peft_adapter_set_zero_grad(peft_adapter_set *set);

/* Every method peft.c has, NULL-terminated (methods/registry.c). */
extern const peft_method *const peft_methods[];
/* Resolves a method name ("lora") to its table; NULL if unknown. */
const peft_method *peft_method_find(const char *name);

#endif
