/* llama.h: the Llama family (Llama 1-3, Mistral, Qwen2) as HF's LlamaForCausalLM computes it:
 *   x = embed(ids)
 *   for each layer: x += o_proj(attn(rope(q_proj(rms(x))), rope(k_proj(rms(x))), v_proj(rms(x))))
 *                   x += down_proj(silu(gate_proj(rms(x))) * up_proj(rms(x)))
 *   logits = lm_head(rms(x))
 * Base weights are frozen: f32 tensors point into the mmapped checkpoint (copy-on-write, so
 * an in-place merge never touches the file); bf16/f16 tensors are widened to f32 once.
 * Every linear layer is an adapter site (models/site.h) named as in HF.
 *
 * Callers use it through models/model.h (peft_model_load picks it for model_type llama,
 * mistral, qwen2 or a .gguf); this header is for llama.c, llama_export.c and llama's own tests. */
#ifndef PEFT_MODELS_LLAMA_H
#define PEFT_MODELS_LLAMA_H

#include <stdint.h>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "models/model.h"

enum { SITE_Q, SITE_K, SITE_V, SITE_O, SITE_GATE, SITE_UP, SITE_DOWN, SITES_PER_LAYER };

typedef struct peft_llama_layer {
    peft_norm_site attn_norm;  /* input_layernorm */
    peft_norm_site mlp_norm;   /* post_attention_layernorm */
    peft_site sites[SITES_PER_LAYER]; /* q [NH*HD,C], k,v [NKV*HD,C], o [C,NH*HD], gate,up [F,C], down [C,F] */
} peft_llama_layer;

typedef struct peft_llama {
    peft_model base;         /* first: a peft_llama is a peft_model (dir, sites, norms, virt, n_params) */
    peft_llama_config cfg;
    peft_weights *weights;   /* the mapped checkpoint */
    float *converted;        /* slab of widened bf16/f16 tensors (NULL if all f32) */
    size_t converted_floats; /* its length */
    float *embed;            /* [V, C] */
    float *lm_head;          /* [V, C]; == embed when tied */
    peft_norm_site final_norm; /* model.norm */
    peft_llama_layer *layers;/* [L] */
    int rope_max_pos;
    float *rope_cos, *rope_sin; /* [rope_max_pos, HD/2] */
    const struct peft_half_matmul *half; /* 16-bit format of the frozen matmuls (llama_use_half), or NULL */
    uint16_t *half_slab;      /* their packed copies */
    const uint16_t *lm_head_half, *lm_head_t_half;
    const struct peft_qformat *qfmt; /* block format of the sites' frozen weights (llama_quantize), or NULL */
    void *q_slab;             /* their quantized rows */
    float *kept_f32;          /* f32 copies of such weights for methods that read them (llama_dequantize_sites) */
    peft_site **site_list;    /* [L * SITES_PER_LAYER] base.sites */
    peft_norm_site **norm_list; /* [2L + 1] base.norms */
    char config_path[4200];   /* base.info.file */
} peft_llama;

/* Loads DIR/config.json and the weights. Errors name the file and the problem. */
int llama_load(const char *dir, peft_llama **out, peft_err *err);
/* llama_load with flags. LLAMA_KEEP_BLOCKS: a GGUF's linear-site weights stored in a block
 * format (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) stay in it as read: each such site gets s->qfmt and
 * s->w_q pointing into the mapped file (q/k rows un-permuted as whole block rows) and no f32
 * weight (s->weight NULL); the frozen matmuls dequantize tile by tile as after llama_quantize.
 * The embedding, norms, LM head and f32/f16/bf16 tensors load as usual. Merging, llama_use_half
 * and llama_quantize are refused on such a model; methods that read the base weight need
 * llama_dequantize_sites first. No effect on a safetensors directory. */
#define LLAMA_KEEP_BLOCKS 1
int llama_load_ex(const char *dir, int flags, peft_llama **out, peft_err *err);
/* Turns each of sites[n] whose weight is kept in block form into an f32 site: s->weight = its
 * blocks dequantized (HF layout), s->w_q / s->qfmt cleared, for methods that read or change the
 * base weight (reads_base; PiSSA's residual, SVFT's SVD, ... at create). Other sites are left
 * alone. Once per model: a second call that would convert sites fails. */
int llama_dequantize_sites(peft_llama *m, peft_site *const *sites, int n, peft_err *err);
/* Computes the frozen linear layers and the LM head in a 16-bit format (kernels.h:
 * &peft_half_bf16 or &peft_half_f16): packs a copy of each weight once (both layouts when
 * `training`, for the input gradient too). Outputs then differ from f32 by about 1e-3 (f16) or
 * 2e-3 (bf16) of their norm. Call it after the adapters are attached and after any merge.
 * Afterwards a site's f32 weight stays readable only for methods that read it (reads_base):
 * for the others, mapped f32 weights give back their resident pages (read from the file again
 * if touched) and, when `training`, widened bf16/f16 ones are freed (s->weight = NULL; an
 * untied lm_head too).
 * Merging is refused from then on. One format per model: another format fails. */
struct peft_half_matmul;
int llama_use_half(peft_llama *m, const struct peft_half_matmul *fmt, int training, peft_err *err);
/* Keeps every linear SITE's frozen weight in the block format fmt (kernels/quant.h, one with
 * quantize_rows: q8_0, q4_0, q4_1, nf4), quantized once from the f32 weight; the embedding,
 * the norms and the LM head stay as they are (as QLoRA does). The frozen matmuls then
 * dequantize tile by tile (matmul_q_forward / matmul_q_backward_input). Call it after the
 * adapters are attached. The f32 weights are then given back as llama_use_half does (kept for
 * methods that read them: reads_base); merging is refused from then on. A site whose
 * in_features is not a multiple of the format's block stays f32 (its s->qfmt NULL; llama.cpp
 * falls back per tensor too). Fails when the model already computes in 16 bits or is quantized
 * in another format. */
struct peft_qformat;
int llama_quantize(peft_llama *m, const struct peft_qformat *fmt, peft_err *err);
/* Only config.json: the sites with their names and shapes but no weights (to validate an
 * adapter against a model that is not at hand). Forward and merge are not possible. A .gguf
 * path gives its metadata's config, and its tensors in m->weights (unbound). */
int llama_load_shapes(const char *config_path, peft_llama **out, peft_err *err);
void llama_free(peft_llama *m);

/* Finds a site by HF module name ("model.layers.0.self_attn.q_proj"); NULL if none. */
peft_site *llama_find_site(peft_llama *m, const char *name);
int llama_n_sites(const peft_llama *m);
peft_site *llama_site(peft_llama *m, int i);
/* The norm sites: 2 per layer, then the final norm. */
int llama_n_norm_sites(const peft_llama *m);
peft_norm_site *llama_norm_site(peft_llama *m, int i);

#define LLAMA_HEAD_CHUNK 256

/* Activations of one forward/backward over B x T tokens (N = B*T). With save_all, every
 * layer keeps its intermediates for backward; otherwise (inference, or recompute during
 * backward) one set is reused by all layers. */
typedef struct llama_layer_acts {
    /* xn1, xn2 and act are cheap to recompute (one norm or one SwiGLU) and are 30 % of a
     * layer's activations: with save_all every layer's pointers share one scratch, and
     * backward rebuilds them from x_in, x_mid, gate and up. */
    float *xn1;       /* [N, C]    rms(x) before attention */
    float *rstd1;     /* [N] */
    float *q;         /* [N, NH*HD] after RoPE */
    float *k, *v;     /* [N, NKV*HD] (k after RoPE) */
    float *att;       /* [N, NH*HD] attention output, before o_proj */
    float *lse;       /* [B, NH, T] */
    float *x_mid;     /* [N, C]    residual after attention */
    float *xn2;       /* [N, C] */
    float *rstd2;     /* [N] */
    float *gate, *up; /* [N, F] */
    float *act;       /* [N, F]    silu(gate) * up */
    /* When the model computes in 16 bits (llama_use_half before llama_acts_alloc) and every
     * layer is saved, gate and up are kept as bf16 copies [N, F] (the two largest saved
     * tensors, 40 % of a layer), as PyTorch's autocast keeps its matmul outputs; gate and up
     * then point to one f32 scratch shared by the layers, refilled in backward. Else NULL. */
    uint16_t *gate_h, *up_h;
} llama_layer_acts;

typedef struct llama_acts {
    int B, T, save_all;
    int training;          /* backward scratch allocated; forwards save adapter activations */
    float *slab;
    int32_t *pos;          /* [N] position of each token inside its example */
    int pos_is_packed;     /* the last forward got explicit positions: attention is windowed */
    float *residual;       /* [L+1, N, C] residual stream entering each layer; [L] = final */
    llama_layer_acts *layer; /* [L] (all alias layer 0 when !save_all) */
    float *xnf;            /* [N, C] final rms */
    float *rstdf;          /* [N] */
    float *logits;         /* [N, V], allocated by the first forward without targets (the loss
                              never needs all N x V logits: see head_chunk) */
    float *losses;         /* [N] */
    /* Loss head, LLAMA_HEAD_CHUNK rows at a time (the full logits would be 201 MB for
     * SmolLM2 at 4 x 256): the counted rows' xnf gathered, their logits, their gradient. */
    float *head_x;         /* [LLAMA_HEAD_CHUNK, C] */
    float *head_logits;    /* [LLAMA_HEAD_CHUNK, V] */
    float *head_dx;        /* [LLAMA_HEAD_CHUNK, C] */
    float *dxnf;           /* [N, C] training: d(mean loss)/dxnf, formed by the forward */
    int head_counted;      /* rows the mean in dxnf is over; 0 when the last forward formed none */
    /* backward scratch, one layer at a time */
    float *dres;           /* [N, C] gradient of the residual stream */
    float *dxn;            /* [N, C] */
    float *dq, *dk, *dv, *datt; /* sized like q, k, v, att */
    float *dgate, *dup, *dact;  /* [N, F] */
} llama_acts;

/* training: also allocate the backward scratch. */
int llama_acts_alloc(const peft_llama *m, int B, int T, int save_all, int training, llama_acts *a, peft_err *err);
void llama_acts_free(llama_acts *a);

/* Forward over ids[B,T]; pos[B,T] gives each token's position inside its own packed example
 * (attention is restricted to that example), or NULL for plain causal sequences.
 * Without targets, leaves the logits in a->logits. With targets (B*T ids, -1 = ignored),
 * returns the mean loss over counted tokens in *loss and their number in *n_counted, computing
 * logits only for counted rows, a chunk at a time (a->logits is not written); with training
 * acts it also forms the loss gradient at the final norm for llama_backward. */
int llama_forward(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *pos, const int32_t *targets,
                  double *loss, int *n_counted, peft_err *err);

/* Backward of the mean loss of the last llama_forward (same ids/pos/targets): gradients flow
 * to the adapters attached at sites (base weights stay frozen, no dW is formed). When the
 * acts were not saved (save_all == 0) each layer is recomputed from its saved input first
 * (gradient checkpointing). Returns PEFT_OK, or PEFT_ENOMEM when a kernel's scratch could
 * not be allocated (the gradients are then incomplete). */
int llama_backward(peft_llama *m, llama_acts *a, const int32_t *ids, const int32_t *targets, int n_counted);

/* KV cache for incremental decoding of one sequence (B = 1). */
typedef struct llama_kv_cache {
    int capacity;  /* max tokens */
    int len;       /* tokens stored */
    float *k, *v;  /* [L, capacity, NKV*HD] */
    llama_acts acts; /* inference activations for up to `chunk` new tokens */
    int chunk;
} llama_kv_cache;

int llama_kv_alloc(const peft_llama *m, int capacity, int chunk, llama_kv_cache *kv, peft_err *err);
void llama_kv_free(llama_kv_cache *kv);
/* Appends n tokens (n <= chunk) and writes the logits of the last one into logits[V]. With
 * prompt tuning, the virtual tokens are fed first when the cache is empty. */
int llama_decode(peft_llama *m, llama_kv_cache *kv, const int32_t *ids, int n, float *logits, peft_err *err);
/* One decoding step for n_seq independent sequences, each with its own KV cache (B = 1 each, any
 * lengths): ids[n_seq] (one new token each), logits[n_seq, V]. The linear layers run once over the n_seq
 * rows (with the pool's per-row adapters, methods/adapter_pool.h: row i is sequence i); attention runs
 * per sequence against its own cache. The caches must be distinct; with virtual tokens (prompt or
 * prefix tuning) each must have been prefilled by llama_decode. On failure no cache has grown. */
int llama_decode_batch(peft_llama *m, llama_kv_cache *const *kv, const int32_t *ids, int n_seq, float *logits,
                       peft_err *err);

#endif
