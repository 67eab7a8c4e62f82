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
#include "io/gguf_write.h"
#include "io/image_preprocess.h"
#include "methods/adapter_set.h"
#include "models/llama.h"
#include "tokenizer/tokenizer.h"

/* request.c belongs to the CLI (src/serve), not libpeft: compiled in here, as fuzz_serve_request.c does */
#include "serve/request.c"

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
    CHECK_MSG(peft_adapter_set_create(&m->base, &cfg, 0, &set, &err) == PEFT_OK, "%s", err.msg);
    peft_adapter_set_free(set);
    const double huge[] = {21e300, -1, 0, 1e10};
    for (int i = 0; i < 4; i++) {
        cfg.rank_pattern[0].value = huge[i];
        set = NULL;
        CHECK(peft_adapter_set_create(&m->base, &cfg, 0, &set, &err) == PEFT_EINVAL && set == NULL);
    }
    llama_free(m);
}

/* Finding 5 (fuzz_image, non-finite pixel_values): preprocessor_config.json values that are
 * finite doubles but overflow or vanish in float32, where transformers computes
 * ((float32)(x * rescale_factor) - mean) / std, gave inf pixel_values ("rescale_factor":
 * 3.1e297 from the fuzzer; an image_std of 1e-50 is not 0 as a double but is as a float). Such
 * configs are now refused naming the file; an ordinary one (and a tiny but float-safe std)
 * still loads. */
static int processor_case(const char *json, peft_image_processor *p, peft_err *err) {
    char path[] = "/tmp/peft-fuzzreg-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, json, strlen(json)) == (ssize_t)strlen(json));
    if (fd >= 0) close(fd);
    int rc = peft_image_processor_load(path, p, err);
    if (rc) CHECK_MSG(err->code == rc && strstr(err->msg, path), "\"%s\"", err->msg);
    unlink(path);
    return rc;
}

static void test_image_processor_float_range(void) {
    const char *bad[] = {
        "{\"do_rescale\":true,\"rescale_factor\":3.1e297,\"do_normalize\":true}",
        "{\"do_rescale\":true,\"rescale_factor\":1e39,\"do_normalize\":false}",
        "{\"do_normalize\":true,\"image_std\":[0.5,1e-50,0.5]}",
        "{\"do_normalize\":true,\"image_mean\":-1e39}",
        "{\"do_normalize\":true,\"do_rescale\":false,\"image_std\":1e-45}", /* 255 / 1.4e-45 overflows */
    };
    peft_image_processor p;
    peft_err err = {0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_MSG(processor_case(bad[i], &p, &err) == PEFT_EFORMAT, "%s: accepted", bad[i]);
    CHECK(processor_case("{\"do_normalize\":true,\"image_std\":1e-30,\"rescale_factor\":0.00392156862745098}", &p,
                         &err) == PEFT_OK);
    CHECK(processor_case("{\"do_normalize\":false,\"image_std\":1e-50}", &p, &err) == PEFT_OK);
}

/* Review of the fuzz_image harness: shortest_edge 65535 on a 1x40000 image cast 2.6e9 output
 * pixels to int (undefined), and an explicit 65535x65535 size allocated 12.9 GB. Outputs
 * past PEFT_IMAGE_MAX_PIXELS are now refused naming the image; a small resize still works. */
static void test_image_resize_bounds(void) {
    uint8_t *rgb = calloc(40000 * 3, 1);
    peft_image img = {.width = 1, .height = 40000, .mode = "RGB", .rgb = rgb};
    peft_image_processor p;
    peft_image_processor_defaults(&p);
    peft_err err = {0};
    float *pv = NULL;
    int oh = 0, ow = 0;
    p.shortest_edge = 65535;
    CHECK(rgb && peft_image_preprocess(&p, &img, "fuzz.png", &pv, &oh, &ow, &err) == PEFT_EUNSUPPORTED && !pv &&
          strstr(err.msg, "fuzz.png"));
    p.shortest_edge = 0;
    p.height = p.width = 65535;
    CHECK(rgb && peft_image_preprocess(&p, &img, "fuzz.png", &pv, &oh, &ow, &err) == PEFT_EUNSUPPORTED && !pv);
    p.shortest_edge = 2; /* 1x40000 -> 2x80000 would be 160000 pixels: allowed */
    CHECK_MSG(rgb && peft_image_preprocess(&p, &img, "fuzz.png", &pv, &oh, &ow, &err) == PEFT_OK && oh == 80000 && ow == 2,
              "%s", err.msg);
    free(pv);
    free(rgb);
}

/* Finding 6 (fuzz_tokenizer, UBSan): a tokenizer without added tokens computed
 * t->added + 0 with t->added NULL (tokenizer.c, split_added), undefined behaviour on every
 * encode. It must encode (the sanitizer build sees the UB). */
static void test_tokenizer_no_added_tokens(void) {
    const char *json = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    peft_err err = {0};
    peft_tokenizer *tok = NULL;
    int32_t *ids = NULL, *pair = NULL;
    uint32_t *types = NULL;
    size_t n = 0, n_pair = 0;
    CHECK_MSG(peft_tokenizer_load_json(json, strlen(json), NULL, 0, "fuzz", &tok, &err) == PEFT_OK, "%s", err.msg);
    CHECK(tok && peft_tokenizer_encode(tok, "ab", 2, 1, &ids, &n, &err) == PEFT_OK && n == 1 && ids[0] == 2);
    CHECK(tok && peft_tokenizer_encode_pair(tok, "ab", 2, "b", 1, 1, &pair, &types, &n_pair, &err) == PEFT_OK &&
          n_pair == 2 && pair[0] == 2 && pair[1] == 1);
    free(ids);
    free(pair);
    free(types);
    peft_tokenizer_free(tok);
}

/* Finding 7 (fuzz_gguf round trip, UBSan): the GGUF writer passed a NULL pointer to memcpy for
 * zero bytes (a file without keys: the empty metadata; an empty array read from a file). Such
 * files must write and re-read. */
static void test_gguf_write_empty(void) {
    char path[] = "/tmp/peft-fuzzreg-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    peft_err err = {0};
    for (int with_array = 0; with_array < 2; with_array++) {
        peft_gguf_writer w;
        peft_gguf_writer_init(&w);
        if (with_array) peft_gguf_add_array(&w, "empty", PEFT_GGUF_U32, 0, NULL);
        CHECK_MSG(peft_gguf_write(&w, path, &err) == PEFT_OK, "%s", err.msg);
        peft_gguf_writer_free(&w);
        peft_gguf_file *f = NULL;
        CHECK_MSG(peft_gguf_open(path, &f, &err) == PEFT_OK, "%s", err.msg);
        CHECK(f && f->n_kv == with_array && f->n_tensors == 0);
        if (f && with_array) CHECK(f->kv[0].type == PEFT_GGUF_ARRAY && f->kv[0].n == 0);
        peft_gguf_close(f);
    }
    unlink(path);
}

/* Finding 8 (fuzz_serve_request): a request without max_tokens got OpenAI's default of 16
 * even when the server's --max-tokens cap was lower, so it could generate past the cap. The
 * default is now min(16, cap); an explicit value above the cap is still a 400 naming it, and
 * every refusal names its field. */
static void test_serve_default_max_tokens(void) {
    cJSON *root = cJSON_Parse("{\"model\":\"m\",\"prompt\":\"x\"}");
    serve_request r;
    serve_refusal e;
    CHECK(root && serve_request_parse(root, 0, NULL, 1, &r, &e) && r.p.max_tokens == 1 && r.add_special == 1);
    serve_request_free(&r);
    CHECK(root && serve_request_parse(root, 0, NULL, 4096, &r, &e) && r.p.max_tokens == 16);
    serve_request_free(&r);
    cJSON_Delete(root);
    root = cJSON_Parse("{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":2}");
    CHECK(root && !serve_request_parse(root, 0, NULL, 1, &r, &e) && e.status == 400 && !strcmp(e.param, "max_tokens") &&
          strstr(e.msg, "max_tokens"));
    cJSON_Delete(root);
    root = cJSON_Parse("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    CHECK(root && !serve_request_parse(root, 1, NULL, 16, &r, &e) && e.status == 400 && !strcmp(e.param, "messages") &&
          strstr(e.msg, "messages") && r.prompt == NULL);
    cJSON_Delete(root);
}

int main(void) {
    test_tokenizer_replace_empty_pattern();
    test_tokenizer_roberta_ids();
    test_tokenizer_strip_empty_content();
    test_adapter_rank_pattern_range();
    test_image_processor_float_range();
    test_image_resize_bounds();
    test_tokenizer_no_added_tokens();
    test_gguf_write_empty();
    test_serve_default_max_tokens();
    return check_report("test_fuzz_regressions");
}
