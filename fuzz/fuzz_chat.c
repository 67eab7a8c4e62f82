/* fuzz_chat.c: libFuzzer target for the chat templates: template detection on the input taken
 * as a Jinja text (peft_chat_template_detect), and rendering of the input taken as a JSON
 * list of {"role", "content"} messages (peft_chat_render_json) by every family, with and
 * without the generation prompt. Any input must give an error, or a NUL-terminated rendering
 * of the stated length whose assistant spans are ordered and inside it. Built by fuzz/run.sh. */
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

static const char *const FAMILIES[] = {"chatml", "qwen3", "llama3", "llama2", "mistral"};

static void render(const peft_chat_template *t, const cJSON *msgs) {
    for (int gen = 0; gen < 2; gen++) {
        peft_err err = {0};
        char *out = NULL;
        size_t len = 0, n_spans = 0;
        peft_chat_span *spans = NULL;
        int rc = peft_chat_render_json(t, msgs, gen, &out, &len, &spans, &n_spans, "fuzz:1", &err);
        if (rc != PEFT_OK) {
            REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz:1"));
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
    peft_chat_template t;
    peft_err err = {0};
    int detected = peft_chat_template_detect(text, &t, &err) == PEFT_OK;
    if (detected) REQUIRE(t.family >= PEFT_CHAT_CHATML && t.family <= PEFT_CHAT_MISTRAL);
    cJSON *msgs = cJSON_ParseWithLength(text, size);
    free(text);
    if (!msgs) return 0;
    if (detected) render(&t, msgs);
    for (size_t f = 0; f < sizeof FAMILIES / sizeof *FAMILIES; f++) {
        REQUIRE(peft_chat_template_named(FAMILIES[f], &t, &err) == PEFT_OK);
        render(&t, msgs);
        /* the same family with a default system prompt and explicit bos/eos */
        snprintf(t.default_system, sizeof t.default_system, "You are a helpful assistant.");
        t.has_default_system = 1;
        snprintf(t.bos, sizeof t.bos, "<s>");
        snprintf(t.eos, sizeof t.eos, "</s>");
        render(&t, msgs);
    }
    cJSON_Delete(msgs);
    return 0;
}
