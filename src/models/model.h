/* model.h: the model interface. Every architecture (src/models/<arch>.c) implements it; the
 * methods, the trainer, eval, generate, merge, serve and the CLI see only this header, never an
 * architecture's own (as methods sit behind methods/adapter.h).
 *
 * An architecture's model struct embeds `peft_model` as its first member, the way an adapter
 * embeds peft_adapter: what a method may read or hook (sites, norms, layers, virtual tokens, the
 * task head's trainable tensors) lives here, the rest stays private to the architecture.
 *
 * Tasks: a model is loaded for one task. causal-lm: logits over the vocabulary for every token
 * (decoders; the LM head). seq-cls: logits over n_labels for each sequence, from the pooled
 * token the HF class pools (BERT's [CLS] through its pooler, RoBERTa's <s>, a decoder's last
 * non-padding token). image-cls: logits over n_labels for each image (ViT's CLS token).
 * The head of a classification task is trained in full (PEFT's modules_to_save): its tensors
 * are `head[n_head]`, named by their HF module names ("classifier.weight", "score.weight").
 *
 * The op table is versioned like a method's (PEFT_MODEL_ABI; entries only appended). Ops a
 * model cannot do are NULL: decode for encoders, quantize for a model that has no block path;
 * the peft_model_* wrappers below turn NULL into a clear PEFT_EUNSUPPORTED naming the
 * architecture. */
#ifndef PEFT_MODELS_MODEL_H
#define PEFT_MODELS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "models/site.h"

#define PEFT_MODEL_ABI 1
#define PEFT_MODEL_MAX_EOS 8
#define PEFT_MODEL_MAX_DIMS 4 /* tensor(): room in its shape argument */

typedef enum peft_task { PEFT_TASK_CAUSAL_LM = 0, PEFT_TASK_SEQ_CLS, PEFT_TASK_IMAGE_CLS } peft_task;

/* "causal-lm", "seq-cls", "image-cls"; peft_task_parse returns -1 for anything else. */
const char *peft_task_name(peft_task t);
int peft_task_parse(const char *s);

/* A normalization layer's weight (and bias for LayerNorm) by HF module name. A model-level
 * method (LayerNorm tuning, LISA) may point `weight`/`bias` at trained copies and give them
 * gradients, which the model's backward then accumulates. */
typedef struct peft_norm_site {
    char name[128];    /* "model.layers.0.input_layernorm", "encoder.layer.0.output.LayerNorm" */
    int layer;         /* its layer, or -1 (embedding / final norms) */
    int dim;           /* C: length of weight and bias */
    float *weight;     /* [C] the weight in use */
    float *base;       /* [C] the checkpoint's */
    float *grad;       /* [C] accumulated by backward, or NULL (frozen) */
    float *bias;       /* [C] LayerNorm's bias in use, NULL for RMSNorm */
    float *bias_base;  /* [C] the checkpoint's bias */
    float *bias_grad;  /* [C] or NULL (frozen) */
} peft_norm_site;

/* What a caller needs to know of a loaded model. Dimensions are those of config.json. */
typedef struct peft_model_info {
    const char *arch;        /* the architecture's name: "llama", "gpt2", "bert", "roberta", "vit", ... */
    char hf_class[64];       /* config.json's architectures[0], or the class the task implies */
    char model_type[32];     /* config.json's model_type ("llama", "gpt2", ...) */
    peft_task task;
    int is_decoder;          /* causal attention; decode/KV cache available */
    int vocab_size;          /* V (0 for image models) */
    int hidden_size;         /* C */
    int intermediate_size;   /* F: the MLP's width */
    int n_layers;            /* L */
    int n_heads;             /* NH */
    int n_kv_heads;          /* NKV (== NH without grouped-query attention) */
    int head_dim;            /* HD */
    int max_positions;       /* longest sequence (tokens incl. virtual ones, or patches + 1) */
    int n_labels;            /* classification tasks: logits per example; 0 for causal-lm */
    int image_size, n_channels, patch_size; /* image models; 0 otherwise */
    int n_type_ids;          /* BERT's type_vocab_size (token_type_ids < it); 0: none */
    int bos_token_id, pad_token_id; /* -1 if absent */
    int n_eos;
    int eos_token_ids[PEFT_MODEL_MAX_EOS];
    int tie_word_embeddings;
    const char *file;        /* the config (or .gguf) path, for messages */
} peft_model_info;

/* One batch of B examples of T positions. Text: ids[B*T]; images: pixels[B*3*H*W]. */
typedef struct peft_batch {
    int B, T;
    const int32_t *ids;      /* [B, T] token ids, or NULL for image models */
    const int32_t *pos;      /* [B, T] position of each token inside its packed example (causal-lm:
                                attention stays within the example), or NULL: 0..T-1 per row */
    const int32_t *type_ids; /* [B, T] BERT token_type_ids, or NULL (all 0) */
    const int32_t *lengths;  /* [B] valid tokens of each row (the rest is padding, masked out of
                                attention and pooling), or NULL: all T */
    const float *pixels;     /* [B, n_channels, image_size, image_size] preprocessed images, or NULL */
    /* Loss targets, or NULL for no loss. causal-lm: [B, T] next-token ids (-1 = not counted).
     * seq-cls / image-cls: [B] class labels in [0, n_labels) (-1 = not counted). */
    const int32_t *targets;
} peft_batch;

typedef struct peft_model peft_model;
typedef struct peft_acts peft_acts; /* an architecture's activations (opaque) */
typedef struct peft_kv peft_kv;     /* an architecture's KV cache of one sequence (opaque) */
struct peft_param;                  /* methods/adapter.h */
struct peft_half_matmul;            /* kernels/kernels.h */
struct peft_qformat;                /* kernels/quant.h */
struct peft_weights;                /* io/safetensors.h */

typedef struct peft_model_ops {
    int abi_version;         /* PEFT_MODEL_ABI when the table was written */
    const char *arch;        /* "llama" */
    void (*free)(peft_model *m);
    /* Activations for batches of up to B x T (save_all: keep every layer for backward, else
     * recompute: gradient checkpointing; training: allocate the backward scratch too). */
    int (*acts_alloc)(peft_model *m, int B, int T, int save_all, int training, peft_acts **out, peft_err *err);
    void (*acts_free)(peft_acts *a);
    /* Forward over b. With b->targets: the mean loss over counted targets in *loss, their number
     * in *n_counted, and (training acts) the loss gradient kept for backward. Without targets:
     * the outputs (logits) are left for peft_model_outputs. */
    int (*forward)(peft_model *m, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err);
    /* The last target-less forward's logits: causal-lm [B*T, V]; classification [B, n_labels]. */
    const float *(*outputs)(const peft_acts *a);
    /* Backward of the mean loss of the last forward (same batch): gradients accumulate into the
     * attached adapters, the hooked norms/virtual tokens and the head; base weights stay frozen.
     * PEFT_OK, or PEFT_ENOMEM (gradients then incomplete). */
    int (*backward)(peft_model *m, peft_acts *a, const peft_batch *b, int n_counted);
    /* Decoders: a KV cache of one sequence for up to `capacity` tokens, fed `chunk` at a time. */
    int (*kv_alloc)(peft_model *m, int capacity, int chunk, peft_kv **out, peft_err *err);
    void (*kv_free)(peft_kv *kv);
    int (*kv_len)(const peft_kv *kv); /* tokens stored (virtual tokens included) */
    /* Appends n <= chunk tokens, writes the last one's logits [V]. Virtual tokens go first. */
    int (*decode)(peft_model *m, peft_kv *kv, const int32_t *ids, int n, float *logits, peft_err *err);
    /* One step of n_seq sequences with distinct caches: ids[n_seq], logits[n_seq, V]; the
     * linear layers run once over the n_seq rows (row i = sequence i for an adapter pool). */
    int (*decode_batch)(peft_model *m, peft_kv *const *kv, const int32_t *ids, int n_seq, float *logits, peft_err *err);
    /* Writes the model (its current weights, e.g. merged or trained by LISA) as an HF
     * checkpoint directory: config.json + model.safetensors, atomically. */
    int (*save_hf)(peft_model *m, const char *dir, peft_err *err);
    /* The frozen matmuls in a 16-bit format / a block format / back to f32 at some sites:
     * see llama.h's llama_use_half, llama_quantize, llama_dequantize_sites for the contract. */
    int (*use_half)(peft_model *m, const struct peft_half_matmul *fmt, int training, peft_err *err);
    int (*quantize)(peft_model *m, const struct peft_qformat *fmt, peft_err *err);
    int (*dequantize_sites)(peft_model *m, peft_site *const *sites, int n, peft_err *err);
    /* The checkpoint's tensor `name` (HF key) as the model's current f32 values, or NULL (merge
     * and export read it); its shape into shape[PEFT_MODEL_MAX_DIMS] and *ndim when non-NULL. */
    const float *(*tensor)(peft_model *m, const char *name, int64_t *shape, int *ndim);
} peft_model_ops;

/* Virtual tokens (prompt and prefix tuning): the first n_virtual rows of every sequence are the
 * method's (callers put placeholder ids there, with no loss on them). Prompt tuning: trained
 * embeddings take the place of those rows' input. Prefix tuning: trained keys/values take the
 * place of those rows' k and v in every layer (not rotated, as HF uses a prefix cache). */
typedef struct peft_virtual {
    int n_virtual;
    const float *emb;        /* [n_virtual, C] or NULL */
    float *emb_grad;         /* [n_virtual, C], accumulated by backward */
    const float *prefix_kv;  /* [n_virtual, L * 2 * NKV * HD] (PEFT's layout: layer l's key at
                                column block 2l, value at 2l+1) or NULL */
    float *prefix_grad;      /* same shape, accumulated by backward */
} peft_virtual;

struct peft_model {
    const peft_model_ops *ops;
    peft_model_info info;
    char dir[4096];          /* the directory (or .gguf path) it was loaded from */
    int n_sites;
    peft_site **sites;       /* [n_sites] every linear layer, in model order (HF module names) */
    int n_norms;
    peft_norm_site **norms;  /* [n_norms] every norm, in model order */
    int n_head;
    /* [n_head] the task head's tensors (trained in full), or NULL: name = the HF tensor name
     * ("score.weight"; saved as "base_model.model.score.weight"), data = the weights in use.
     * grad is NULL until an adapter set trains the head (it owns the gradients while it lives);
     * backward accumulates into a non-NULL grad. The head is never a site. */
    struct peft_param *head;
    peft_virtual virt;
    const float *tok_embed;  /* [V, C] the token embedding (prompt tuning's text init), NULL if none */
    /* The checkpoint's tensors under their HF names as stored (`peft inspect`), or NULL: a
     * shapes-only load of a directory opens none (a GGUF's are its tensors as HF ones). */
    const struct peft_weights *weights;
    int n_kept_blocks;       /* sites whose frozen weight stays in a GGUF block format as read */
    const char *compute;     /* the frozen matmuls' format: "f32", or use_half's ("bf16", "f16") */
    size_t n_params;         /* parameters of the base model */
};

/* How to load. */
typedef struct peft_model_load_opts {
    peft_task task;          /* the task to load for (default causal-lm) */
    int n_labels;            /* classification: 0 = config.json's (id2label / num_labels) */
    int keep_blocks;         /* a GGUF's block-typed linear weights stay as read (llama.h) */
    int shapes_only;         /* config.json only: names and shapes, no weights (no forward) */
} peft_model_load_opts;

/* Loads an HF directory (config.json + safetensors) or a .gguf file, picking the architecture
 * from config.json's model_type (or the GGUF's general.architecture) among the registered ones
 * (src/models/registry.c). Errors name the file and field. opts may be NULL (causal-lm). */
int peft_model_load(const char *path, const peft_model_load_opts *opts, peft_model **out, peft_err *err);
void peft_model_free(peft_model *m);

/* An architecture as registered: its names in config.json and its loader. */
typedef struct peft_arch {
    const char *name;               /* "llama" */
    const char *const *model_types; /* config.json model_type values it runs, NULL-terminated */
    int (*load)(const char *path, const char *config_json, size_t config_len, const peft_model_load_opts *opts,
                peft_model **out, peft_err *err);
} peft_arch;
const peft_arch *peft_arch_find(const char *model_type);
int peft_n_archs(void);
const peft_arch *peft_arch_at(int i);

/* Sites and norms by HF module name; NULL if none. */
peft_site *peft_model_find_site(peft_model *m, const char *name);
peft_norm_site *peft_model_find_norm(peft_model *m, const char *name);

/* Dispatch to m->ops, with PEFT_EUNSUPPORTED ("gpt2 has no KV-cache decoding") for NULL ops. */
int peft_model_acts_alloc(peft_model *m, int B, int T, int save_all, int training, peft_acts **out, peft_err *err);
void peft_model_acts_free(peft_model *m, peft_acts *a);
int peft_model_forward(peft_model *m, peft_acts *a, const peft_batch *b, double *loss, int *n_counted, peft_err *err);
const float *peft_model_outputs(const peft_model *m, const peft_acts *a);
int peft_model_backward(peft_model *m, peft_acts *a, const peft_batch *b, int n_counted);
int peft_model_kv_alloc(peft_model *m, int capacity, int chunk, peft_kv **out, peft_err *err);
void peft_model_kv_free(peft_model *m, peft_kv *kv);
int peft_model_kv_len(const peft_model *m, const peft_kv *kv);
int peft_model_decode(peft_model *m, peft_kv *kv, const int32_t *ids, int n, float *logits, peft_err *err);
int peft_model_decode_batch(peft_model *m, peft_kv *const *kv, const int32_t *ids, int n_seq, float *logits, peft_err *err);
int peft_model_save_hf(peft_model *m, const char *dir, peft_err *err);
int peft_model_use_half(peft_model *m, const struct peft_half_matmul *fmt, int training, peft_err *err);
int peft_model_quantize(peft_model *m, const struct peft_qformat *fmt, peft_err *err);
int peft_model_dequantize_sites(peft_model *m, peft_site *const *sites, int n, peft_err *err);
const float *peft_model_tensor(peft_model *m, const char *name, int64_t *shape, int *ndim);

/* Output width: V for causal-lm, n_labels for the classification tasks. */
int peft_model_n_outputs(const peft_model *m);

#endif
