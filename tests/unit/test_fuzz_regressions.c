/* test_fuzz_regressions.c: every input the libFuzzer targets (fuzz/) found a bug with, fed
 * through the same entry point as the target; each must now give the expected result. Run it
 * under `make test-asan` too: several findings were leaks or sanitizer reports that only the
 * sanitizer build sees. fuzz/README.md lists the findings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "check.h"
#include "methods/adapter_set.h"
#include "models/llama.h"
#include "tokenizer/tokenizer.h"

/* A tokenizer.json (with an optional tokenizer_config.json) must load with rc `want`. */
static void tokenizer_case(const char *name, const char *json, const char *config, int want) {
    peft_err err = {0};
    peft_tokenizer *tok = NULL;
    int rc = peft_tokenizer_load_json(json, strlen(json), config, config ? strlen(config) : 0, "fuzz", &tok, &err);
    CHECK_MSG(rc == want, "%s: rc %d, want %d (%s)", name, rc, want, rc ? err.msg : "ok");
    if (rc) CHECK_MSG(err.code == rc && strstr(err.msg, "fuzz/tokenizer"), "%s: message \"%s\"", name, err.msg);
    peft_tokenizer_free(tok);
}

/* Finding 1 (fuzz_tokenizer, leak): a Replace normalizer with an empty String pattern was
 * refused after its pattern and content had been copied, and the copies leaked. */
static void test_tokenizer_replace_empty_pattern(void) {
    tokenizer_case("empty Replace pattern", "{\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\"\"},\"content\":\"x\"}}",
                   NULL, PEFT_EFORMAT);
}

/* Finding 2 (fuzz_tokenizer, out-of-range ids): a RobertaProcessing/BertProcessing
 * post-processor's cls and sep ids were taken unchecked, so encoding with add_special gave ids
 * outside the vocabulary (read out of bounds by decode and by the model's embedding). */
static void test_tokenizer_roberta_ids(void) {
    const char *fmt = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]},"
                      "\"post_processor\":{\"type\":\"RobertaProcessing\",\"cls\":[\"<s>\",%s],\"sep\":[\"</s>\",%s]}}";
    const char *bad[][2] = {{"5", "0"}, {"0", "-1"}, {"1e300", "1"}, {"0", "2"}};
    char json[512];
    for (int i = 0; i < 4; i++) {
        snprintf(json, sizeof json, fmt, bad[i][0], bad[i][1]);
        tokenizer_case(json, json, NULL, PEFT_EFORMAT);
    }
    snprintf(json, sizeof json, fmt, "1", "0");
    peft_err err = {0};
    peft_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(peft_tokenizer_load_json(json, strlen(json), NULL, 0, "fuzz", &tok, &err) == PEFT_OK);
    CHECK(tok && peft_tokenizer_encode(tok, "ab", 2, 1, &ids, &n, &err) == PEFT_OK);
    CHECK(n == 4 && ids[0] == 1 && ids[1] == 0 && ids[2] == 1 && ids[3] == 0);
    free(ids);
    peft_tokenizer_free(tok);
}

/* Finding 3 (fuzz_tokenizer, hang): a Strip decoder with an empty "content" and a large
 * "start" advanced by zero bytes `start` times for every decoded token (2^31 steps: over 10 s
 * per token). Such a decoder is now refused; an ordinary one still decodes. */
static void test_tokenizer_strip_empty_content(void) {
    const char *fmt = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\" \":1},\"merges\":[]},"
                      "\"decoder\":{\"type\":\"Strip\",\"content\":\"%s\",\"start\":2147483647,\"stop\":0}}";
    char json[512];
    snprintf(json, sizeof json, fmt, "");
    tokenizer_case("empty Strip content", json, NULL, PEFT_EFORMAT);
    snprintf(json, sizeof json, fmt, " ");
    peft_err err = {0};
    peft_tokenizer *tok = NULL;
    char *text = NULL;
    const int32_t ids[] = {1, 1, 0, 1};
    CHECK(peft_tokenizer_load_json(json, strlen(json), NULL, 0, "fuzz", &tok, &err) == PEFT_OK);
    CHECK(tok && peft_tokenizer_decode(tok, ids, 4, 0, &text, &err) == PEFT_OK && text && !strcmp(text, "a"));
    free(text);
    peft_tokenizer_free(tok);
}

/* Finding 4 (fuzz_adapter_config, UBSan): a rank_pattern value such as 21e300 was accepted and
 * cast to int when the adapters were attached (adapter_set.c: (int)rank, undefined). The parser
 * now takes only integer ranks in [1, 65536] (and finite alphas), and attaching checks the
 * range before the cast for patterns from elsewhere (the CLI's --rank-pattern). */
static const char tiny_config_json[] =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16,\"intermediate_size\":24,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":37,\"rms_norm_eps\":1e-5,\"rope_theta\":10000,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false}";

static void test_adapter_rank_pattern_range(void) {
    const char *fmt = "{\"peft_type\":\"LORA\",\"r\":4,\"target_modules\":[\"q_proj\",\"v_proj\"],"
                      "\"rank_pattern\":{\"q_proj\":%s},\"alpha_pattern\":{\"v_proj\":%s}}";
    const char *bad[][2] = {{"21e300", "8"}, {"24444444444444444444444444444444444444444", "8"}, {"0", "8"}, {"2.5", "8"},
                            {"-3", "8"}, {"65537", "8"}, {"4", "1e999"}, {"4", "-1e999"}};
    char json[512];
    peft_adapter_config cfg;
    peft_err err = {0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(json, sizeof json, fmt, bad[i][0], bad[i][1]);
        int rc = peft_adapter_config_parse(json, strlen(json), "fuzz.json", &cfg, &err);
        CHECK_MSG(rc == PEFT_EFORMAT && strstr(err.msg, "fuzz.json"), "%s: rc %d", json, rc);
    }
    snprintf(json, sizeof json, fmt, "2", "16");
    CHECK(peft_adapter_config_parse(json, strlen(json), "fuzz.json", &cfg, &err) == PEFT_OK);
    CHECK(cfg.n_rank_pattern == 1 && cfg.rank_pattern[0].value == 2 && cfg.n_alpha_pattern == 1);
    /* attaching: a good pattern works, an out-of-range one set directly is refused */
    char path[] = "/tmp/peft-fuzzreg-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, tiny_config_json, strlen(tiny_config_json)) == (ssize_t)strlen(tiny_config_json));
    if (fd >= 0) close(fd);
    peft_llama *m = NULL;
    CHECK_MSG(llama_load_shapes(path, &m, &err) == PEFT_OK, "%s", err.msg);
    unlink(path);
    if (!m) return;
    peft_adapter_set *set = NULL;
    CHECK_MSG(peft_adapter_set_create(m, &cfg, 0, &set, &err) == PEFT_OK, "%s", err.msg);
    peft_adapter_set_free(set);
    const double huge[] = {21e300, -1, 0, 1e10};
    for (int i = 0; i < 4; i++) {
        cfg.rank_pattern[0].value = huge[i];
        set = NULL;
        CHECK(peft_adapter_set_create(m, &cfg, 0, &set, &err) == PEFT_EINVAL && set == NULL);
    }
    llama_free(m);
}

int main(void) {
    test_tokenizer_replace_empty_pattern();
    test_tokenizer_roberta_ids();
    test_tokenizer_strip_empty_content();
    test_adapter_rank_pattern_range();
    return check_report("test_fuzz_regressions");
}
