/* fuzz_chat.c: libFuzzer target for the chat templates. The input is taken twice: as a Jinja
 * template (peft_chat_template_parse, then rendered on fixed conversations with and without
 * the generation prompt), and as a JSON conversation record rendered by every built-in
 * template. Any input must give an error, or a NUL-terminated rendering of the stated length
 * whose assistant spans are ordered and inside it. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tokenizer/chat_template.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

static const char *const BUILTINS[] = {"chatml", "qwen3", "llama3", "llama2", "mistral"};

static const char *const CONVS[] = {
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
    " {\"role\": \"assistant\", \"content\": \"<think>\\nr\\n</think>\\n\\nHello.\"}, {\"role\": \"user\", \"content\": \" Bye \"}],"
    " \"chat_template_kwargs\": {\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\":"
    " [{\"function\": {\"name\": \"f\", \"arguments\": {\"x\": [1, 2.5, null]}}}]}, {\"role\": \"tool\", \"content\": \"1\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}",
};

static void render(const peft_chat_template *t, const cJSON *rec) {
    for (int gen = 0; gen < 2; gen++) {
        peft_err err = {0};
        char *out = NULL;
        size_t len = 0, n_spans = 0;
        peft_chat_span *spans = NULL;
        int rc = peft_chat_render_json(t, rec, gen, &out, &len, &spans, &n_spans, "fuzz:1", &err);
        if (rc != PEFT_OK) {
            REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && !out && !spans);
            REQUIRE(rc == PEFT_ENOMEM || strstr(err.msg, "fuzz:1"));
            continue;
        }
        REQUIRE(out && out[len] == 0);
        for (size_t i = 0; i < n_spans; i++) {
            REQUIRE(spans[i].start <= spans[i].end && spans[i].end <= len);
            if (i) REQUIRE(spans[i - 1].end <= spans[i].start);
        }
        free(out);
        free(spans);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 16)) return 0;
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    peft_chat_template *t = NULL;
    peft_err err = {0};
    int rc = peft_chat_template_parse(text, "tokenizer_config.json", NULL, &t, &err);
    if (rc == PEFT_OK) {
        for (size_t c = 0; c < sizeof CONVS / sizeof *CONVS; c++) {
            cJSON *rec = cJSON_Parse(CONVS[c]);
            REQUIRE(rec);
            render(t, rec);
            cJSON_Delete(rec);
        }
        peft_chat_template_free(t);
    } else {
        REQUIRE(!t && rc < 0 && err.code == rc && (rc == PEFT_ENOMEM || strstr(err.msg, "tokenizer_config.json")));
    }
    cJSON *rec = cJSON_ParseWithLength(text, size);
    free(text);
    if (!rec) return 0;
    for (size_t b = 0; b < sizeof BUILTINS / sizeof *BUILTINS; b++) {
        REQUIRE(peft_chat_template_for(NULL, BUILTINS[b], &t, &err) == PEFT_OK);
        render(t, rec);
        peft_chat_template_free(t);
    }
    cJSON_Delete(rec);
    return 0;
}
