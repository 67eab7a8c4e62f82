/* hf_config.h: the config.json of Hugging Face Llama-family causal LMs
 * (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM). Anything peft.c cannot run
 * faithfully is refused with an error naming the field. */
#ifndef PEFT_IO_HF_CONFIG_H
#define PEFT_IO_HF_CONFIG_H

#include "dtype.h"
#include "error.h"

typedef enum peft_llama_arch { PEFT_ARCH_LLAMA = 0, PEFT_ARCH_MISTRAL, PEFT_ARCH_QWEN2 } peft_llama_arch;

#define PEFT_MAX_EOS 8

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
} peft_llama_config;

/* Parses DIR/config.json (path given in full). */
int peft_llama_config_load(const char *path, peft_llama_config *cfg, peft_err *err);
int peft_llama_config_parse(const char *json_text, size_t len, const char *what, peft_llama_config *cfg, peft_err *err);

/* inv_freq[head_dim/2] for RoPE, with llama3 frequency scaling when configured
 * (the rule of transformers' _compute_llama3_parameters). */
void peft_llama_rope_inv_freq(const peft_llama_config *cfg, float *inv_freq);

#endif
