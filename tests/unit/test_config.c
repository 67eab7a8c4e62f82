/* test_config.c: config.json parsing of the Llama family: defaults and derived values, the
 * llama3 RoPE frequencies against transformers' rule evaluated here in double, and every
 * refusal (unknown architecture, bad fields, fuzzer findings) with a message naming the field. */
#include <math.h>
#include <string.h>

#include "models/llama.h"
#include "check.h"
#include "io/hf_config.h"

static int parse(const char *json, peft_llama_config *c, peft_err *err) {
    return peft_llama_config_parse(json, strlen(json), "config.json", c, err);
}

#define BASE "\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":128," \
             "\"num_hidden_layers\":2,\"num_attention_heads\":8"

static void refused(const char *json, const char *needle) {
    peft_llama_config c;
    peft_err err = {0};
    int rc = parse(json, &c, &err);
    CHECK_MSG(rc != 0 && strstr(err.msg, needle) && strstr(err.msg, "config.json"), "'%s' -> rc %d, '%s'", json, rc, err.msg);
}

int main(void) {
    peft_llama_config c;
    peft_err err = {0};
    CHECK(parse("{" BASE "}", &c, &err) == 0);
    CHECK(c.n_kv_heads == 8 && c.head_dim == 8 && c.rms_norm_eps == 1e-6f && c.rope_theta == 10000 && !c.tie_word_embeddings);
    CHECK(parse("{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,\"intermediate_size\":128,"
                "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"num_key_value_heads\":2,\"tie_word_embeddings\":true,"
                "\"eos_token_id\":[5,7]}", &c, &err) == 0);
    CHECK(c.arch == PEFT_ARCH_QWEN2 && c.qkv_bias && !c.o_bias && c.n_kv_heads == 2 && c.tie_word_embeddings);
    CHECK(c.n_eos == 2 && c.eos_token_ids[1] == 7);

    /* llama3 scaling (Llama-3.2-1B's values): low frequencies divided by the factor, high ones
     * kept, the band between interpolated, as transformers' _compute_llama3_parameters. */
    CHECK(parse("{" BASE ",\"head_dim\":64,\"rope_theta\":500000,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32,"
                "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}", &c, &err) == 0);
    float f[32];
    peft_llama_rope_inv_freq(&c, f);
    for (int i = 0; i < 32; i++) {
        double base = 1.0 / pow(500000.0, 2.0 * i / 64.0), wl = 2 * M_PI / base, want = base;
        if (wl > 8192.0) want = base / 32;
        else if (wl >= 2048.0) {
            double s = (8192.0 / wl - 1) / 3;
            want = (1 - s) * base / 32 + s * base;
        }
        CHECK_CLOSE(f[i], want, 1e-6);
    }
    CHECK_CLOSE(f[0], 1.0, 1e-7);     /* highest frequency untouched */
    CHECK(f[31] < 1.0 / pow(500000.0, 62.0 / 64) / 31); /* lowest divided by 32 */

    refused("{\"architectures\":[\"GPT2LMHeadModel\"]}", "GPT2LMHeadModel");
    refused("{\"vocab_size\":3}", "architectures");
    refused("{" BASE ",\"hidden_act\":\"gelu\"}", "hidden_act");
    /* token ids index the embedding: integers inside the vocabulary (issue 13) */
    refused("{" BASE ",\"eos_token_id\":-1}", "\"eos_token_id\" must hold token ids");
    refused("{" BASE ",\"bos_token_id\":1e300}", "\"bos_token_id\" must hold token ids");
    refused("{" BASE ",\"eos_token_id\":[1,2.5]}", "\"eos_token_id\" must hold token ids");
    refused("{" BASE ",\"num_key_value_heads\":3}", "num_attention_heads");
    refused("{" BASE ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}", "yarn");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":-1}", "vocab_size");
    refused("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":\"64\"}", "hidden_size");
    refused("{" BASE ",\"vocab_size\":200}", "duplicate key \"vocab_size\""); /* Python keeps the last, cJSON the first */
    refused("{" BASE ",\"head_dim\":512}", "head_dim");
    refused("{" BASE ",\"head_dim\":7}", "head_dim");
    refused("{" BASE ",\"tie_word_embeddings\":1}", "tie_word_embeddings");
    refused("{" BASE "} trailing", "after the JSON");
    refused("{" BASE ",}", "invalid JSON at line 1");
    /* fuzzer findings (fuzz/README.md) */
    refused("{" BASE ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
            "\"original_max_position_embeddings\":1e300}}", "rope_scaling");
    refused("{" BASE ",\"rms_norm_eps\":1e-85}", "rms_norm_eps");
    return check_report("test_config");
}
