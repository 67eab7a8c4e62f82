/* gguf_names.c: llama.cpp's names for a llama-family model and Hugging Face's, both ways (the
 * GGUF reader renames to HF, the GGUF writers rename back). */
#include <stdio.h>
#include <string.h>

#include "gguf.h"

static const peft_gguf_arch known_archs[] = {
    {"llama", "LlamaForCausalLM", 1},
    {"mistral", "MistralForCausalLM", 1},
    {"qwen2", "Qwen2ForCausalLM", 0},
};

/* The whole-model tensors, then the per-layer ones ("blk.N.<gguf>" / "model.layers.N.<hf>"). */
static const char *const top_names[][2] = {{"token_embd.weight", "model.embed_tokens.weight"},
                                           {"output_norm.weight", "model.norm.weight"},
                                           {"output.weight", "lm_head.weight"}};
static const char *const layer_names[][2] = {
    {"attn_norm", "input_layernorm"},        {"ffn_norm", "post_attention_layernorm"}, {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},          {"attn_v", "self_attn.v_proj"},           {"attn_output", "self_attn.o_proj"},
    {"ffn_gate", "mlp.gate_proj"},           {"ffn_up", "mlp.up_proj"},                {"ffn_down", "mlp.down_proj"},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

const peft_gguf_arch *peft_gguf_arch_find(const char *name, size_t len) {
    for (size_t k = 0; k < N_OF(known_archs); k++)
        if (strlen(known_archs[k].gguf) == len && !memcmp(name, known_archs[k].gguf, len)) return &known_archs[k];
    return NULL;
}

const peft_gguf_arch *peft_gguf_arch_of_hf(const char *hf_arch) {
    for (size_t k = 0; k < N_OF(known_archs); k++)
        if (!strcmp(hf_arch, known_archs[k].hf)) return &known_archs[k];
    return NULL;
}

/* Maps `name` from column `from` of the tables to column 1 - from; *qk as in gguf.h. */
static int map_name(const char *name, int from, char *out, size_t size, int *qk) {
    *qk = 0;
    for (size_t i = 0; i < N_OF(top_names); i++)
        if (!strcmp(name, top_names[i][from])) return snprintf(out, size, "%s", top_names[i][1 - from]) > 0;
    int layer, end = 0;
    char kind[64], suffix[16];
    int got = from == 0 ? sscanf(name, "blk.%d.%63[a-z_].%15[a-z]%n", &layer, kind, suffix, &end)
                        : sscanf(name, "model.layers.%d.%63[a-z_.].%15[a-z]%n", &layer, kind, suffix, &end);
    /* %[a-z_.] also eats ".weight"; split the suffix off the kind again */
    if (from == 1 && got == 2) {
        char *dot = strrchr(kind, '.');
        if (dot && strlen(dot + 1) < sizeof suffix) {
            strcpy(suffix, dot + 1);
            *dot = 0;
            got = 3;
            end = (int)strlen(name);
        }
    }
    if (got != 3 || name[end] || layer < 0 || (strcmp(suffix, "weight") && strcmp(suffix, "bias"))) return 0;
    for (size_t i = 0; i < N_OF(layer_names); i++)
        if (!strcmp(kind, layer_names[i][from])) {
            const char *g = layer_names[i][0];
            *qk = !strcmp(g, "attn_q") ? 1 : !strcmp(g, "attn_k") ? 2 : 0;
            return snprintf(out, size, from == 0 ? "model.layers.%d.%s.%s" : "blk.%d.%s.%s", layer, layer_names[i][1 - from],
                            suffix) > 0;
        }
    return 0;
}

int peft_gguf_hf_name(const char *gguf_name, char *hf, size_t size, int *qk) {
    return map_name(gguf_name, 0, hf, size, qk);
}

int peft_gguf_name_of_hf(const char *hf_name, char *gguf, size_t size, int *qk) {
    return map_name(hf_name, 1, gguf, size, qk);
}

void peft_gguf_permute_rows(float *dst, const float *src, size_t rows, size_t cols, int n_head) {
    size_t hd = rows / (size_t)n_head, half = hd / 2;
    for (size_t h = 0; h < (size_t)n_head; h++)
        for (size_t i = 0; i < 2; i++)
            for (size_t j = 0; j < half; j++)
                memcpy(dst + (h * hd + 2 * j + i) * cols, src + (h * hd + i * half + j) * cols, cols * sizeof(float));
}
