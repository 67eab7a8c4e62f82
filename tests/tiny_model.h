/* tiny_model.h: writes a small random Llama checkpoint (config.json + model.safetensors) for
 * tests that need a model on disk without PyTorch. Header-only: each test is one program. */
#ifndef PEFT_TESTS_TINY_MODEL_H
#define PEFT_TESTS_TINY_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/safetensors.h"
#include "models/llama.h"
#include "rng.h"

#define TINY_C 16
#define TINY_V 37

static const char *tiny_config_json =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":37,\"rms_norm_eps\":1e-5,\"rope_theta\":10000,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false}";

static void tiny_fill(float *x, size_t n, float scale, peft_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * peft_rng_uniform(r) - 1.0f);
}

/* Writes the model in `dtype` (PEFT_F32, PEFT_BF16 or PEFT_F16). Returns 0 on success. */
static int tiny_model_write(const char *dir, peft_dtype dtype, uint64_t seed) {
    peft_err err;
    peft_rng r;
    peft_rng_seed(&r, seed, 2);
    if (peft_mkdir(dir, &err)) return -1;
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (peft_write_file_atomic(path, tiny_config_json, strlen(tiny_config_json), &err)) return -1;
    peft_llama *shape;
    if (llama_load_shapes(path, &shape, &err)) return -1;
    peft_st_entry e[64];
    void *bufs[64];
    char names[64][160];
    int n = 0;
    const struct { const char *name; int d0, d1; } extra[] = {
        {"model.embed_tokens.weight", TINY_V, TINY_C}, {"lm_head.weight", TINY_V, TINY_C}, {"model.norm.weight", TINY_C, 0}};
    for (int i = 0; i < 3; i++, n++) {
        snprintf(names[n], sizeof names[n], "%s", extra[i].name);
        e[n] = (peft_st_entry){.name = names[n], .ndim = extra[i].d1 ? 2 : 1, .shape = {extra[i].d0, extra[i].d1}};
    }
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 2; k++, n++) {
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l, k ? "post_attention_layernorm" : "input_layernorm");
            e[n] = (peft_st_entry){.name = names[n], .ndim = 1, .shape = {TINY_C}};
        }
    for (int i = 0; i < llama_n_sites(shape); i++, n++) {
        peft_site *s = llama_site(shape, i);
        snprintf(names[n], sizeof names[n], "%s.weight", s->name);
        e[n] = (peft_st_entry){.name = names[n], .ndim = 2, .shape = {s->out_features, s->in_features}};
    }
    for (int i = 0; i < n; i++) {
        size_t numel = (size_t)e[i].shape[0] * (e[i].ndim == 2 ? (size_t)e[i].shape[1] : 1);
        float *f = malloc(numel * sizeof(float));
        if (e[i].ndim == 1)
            for (size_t j = 0; j < numel; j++) f[j] = 1.0f + 0.2f * (peft_rng_uniform(&r) - 0.5f);
        else tiny_fill(f, numel, 0.4f, &r);
        bufs[i] = malloc(numel * peft_dtype_size(dtype));
        peft_convert_from_f32(bufs[i], f, dtype, numel);
        free(f);
        e[i].dtype = dtype;
        e[i].data = bufs[i];
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = peft_st_write(path, e, n, NULL, 0, &err);
    for (int i = 0; i < n; i++) free(bufs[i]);
    llama_free(shape);
    return rc;
}

#endif
