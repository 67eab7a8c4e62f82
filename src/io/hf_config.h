/* hf_config.h: the config.json of Hugging Face Llama-style decoder causal LMs
 * (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, GemmaForCausalLM,
 * Gemma2ForCausalLM, Phi3ForCausalLM). Each family is a row of data in hf_config.c (its flags
 * below); models/llama.c runs them all with one decoder loop. Anything peft.c cannot run
 * faithfully is refused with an error naming config.json and the field. */
#ifndef PEFT_IO_HF_CONFIG_H
#define PEFT_IO_HF_CONFIG_H

#include "dtype.h"
#include "error.h"

typedef enum peft_llama_arch {
    PEFT_ARCH_LLAMA = 0,
    PEFT_ARCH_MISTRAL,
    PEFT_ARCH_QWEN2,
    PEFT_ARCH_QWEN3,
    PEFT_ARCH_GEMMA,
    PEFT_ARCH_GEMMA2,
    PEFT_ARCH_PHI3
} peft_llama_arch;

/* The MLP's gate activation: SwiGLU (silu) or GeGLU (Gemma: tanh or exact GELU). */
typedef enum peft_mlp_act { PEFT_MLP_SILU = 0, PEFT_MLP_GELU_TANH, PEFT_MLP_GELU_ERF } peft_mlp_act;

#define PEFT_MAX_EOS 8
#define PEFT_MAX_LAYERS 4096

typedef struct peft_llama_config {
    peft_llama_arch arch;
    char arch_name[64];      /* "LlamaForCausalLM", ... */
    int vocab_size;          /* V */
    int hidden_size;         /* C */
    int intermediate_size;   /* F */
    int n_layers;            /* L */
    int n_heads;             /* NH */
    int n_kv_heads;          /* NKV, divides NH (grouped-query attention) */
    int head_dim;            /* HD; explicit "head_dim" or C / NH */
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    int rope_llama3;         /* rope_scaling of type llama3 */
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int tie_word_embeddings;
    int qkv_bias;            /* q/k/v projections have biases (Qwen2, or attention_bias) */
    int o_bias;              /* o_proj has a bias (attention_bias) */
    int mlp_bias;
    int sliding_window;      /* 0 = none; Mistral's window, enforced as a maximum context */
    int bos_token_id;        /* -1 if absent */
    int n_eos;
    int eos_token_ids[PEFT_MAX_EOS];
    peft_dtype torch_dtype;  /* the dtype the checkpoint declares */
    /* Family variants (all 0 for Llama, Mistral, Qwen2; set from the family's row of data): */
    int qk_norm;             /* Qwen3: RMSNorm over each head of q and k (self_attn.q_norm / k_norm [HD]) before RoPE */
    int norm_offset;         /* Gemma: every RMSNorm computes x * (1 + w) (GemmaRMSNorm) */
    int embed_scale;         /* Gemma: token embeddings times sqrt(C) (rounded to f32) */
    peft_mlp_act mlp_act;    /* gate activation of the MLP */
    int post_norms;          /* Gemma2: post_attention_layernorm on the attention output,
                                pre/post_feedforward_layernorm around the MLP */
    float attn_softcap;      /* Gemma2 attn_logit_softcapping; 0 = none */
    float final_softcap;     /* Gemma2 final_logit_softcapping; 0 = none */
    float attn_scale;        /* scores scale (Gemma2: query_pre_attn_scalar^-1/2); 0 = 1/sqrt(HD) */
    int layer_window;        /* Gemma2's sliding_window, applied on layers with layer_sliding[l] (0 = none) */
    unsigned char layer_sliding[PEFT_MAX_LAYERS];
    int fused;               /* Phi-3: one qkv_proj [(NH+2*NKV)*HD, C] and one gate_up_proj [2F, C] site */
} peft_llama_config;

/* The family's HF model_type ("llama", "qwen3", "gemma2", ...). */
const char *peft_llama_model_type(peft_llama_arch arch);

/* Parses DIR/config.json (path given in full). */
int peft_llama_config_load(const char *path, peft_llama_config *cfg, peft_err *err);
int peft_llama_config_parse(const char *json_text, size_t len, const char *what, peft_llama_config *cfg, peft_err *err);

/* inv_freq[head_dim/2] for RoPE, with llama3 frequency scaling when configured
 * (the rule of transformers' _compute_llama3_parameters). */
void peft_llama_rope_inv_freq(const peft_llama_config *cfg, float *inv_freq);

#endif
