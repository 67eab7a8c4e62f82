/* fuzz_config.c: libFuzzer target for config.json parsing (peft_llama_config_parse).
 * Any input must give an error, or a configuration the model code can size itself from:
 * positive dimensions, heads divisible by kv heads, an even head_dim within the kernels'
 * limit, and finite RoPE frequencies. Built by fuzz/run.sh. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/hf_config.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 16)) return 0;
    char *text = malloc(size ? size : 1); /* not NUL-terminated: the parser must honour len */
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    peft_err err = {0};
    peft_llama_config cfg;
    int rc = peft_llama_config_parse(text, size, "fuzz.json", &cfg, &err);
    if (rc != PEFT_OK) {
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz.json"));
    } else {
        REQUIRE(cfg.vocab_size > 0 && cfg.hidden_size > 0 && cfg.intermediate_size > 0 && cfg.n_layers > 0);
        REQUIRE(cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads % cfg.n_kv_heads == 0);
        REQUIRE(cfg.head_dim >= 2 && cfg.head_dim % 2 == 0 && cfg.head_dim <= 256);
        REQUIRE(cfg.max_position_embeddings > 0 && cfg.rms_norm_eps > 0 && cfg.rope_theta > 1);
        REQUIRE(cfg.n_eos >= 0 && cfg.n_eos <= PEFT_MAX_EOS && memchr(cfg.arch_name, 0, sizeof cfg.arch_name));
        float inv_freq[128];
        peft_llama_rope_inv_freq(&cfg, inv_freq);
        for (int i = 0; i < cfg.head_dim / 2; i++) REQUIRE(isfinite(inv_freq[i]) && inv_freq[i] >= 0);
    }
    free(text);
    return 0;
}
