/* fuzz_serve_request.c: libFuzzer target for the request bodies of `peft serve`
 * (src/serve/request.c, compiled into the target: run.sh's library has no src/serve).
 * Input: one option byte (bits 0-1: the route: /v1/completions, /v1/chat/completions,
 * /v1/load_lora_adapter, /v1/unload_lora_adapter; bit 2: no chat template; bits 3-4: the
 * server's --max-tokens cap 1, 16, 256 or 4096), then the body. Any body must be refused with a
 * 4xx status and a message naming the field (or the body as a whole), or give a request whose
 * every number lies in its documented range (request.h) and whose strings are NUL-terminated
 * valid UTF-8 of the documented lengths. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/request.c"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

static void check_string(const char *s, size_t lo, size_t hi) {
    REQUIRE(s != NULL);
    size_t n = strlen(s);
    REQUIRE(n >= lo && n <= hi && valid_utf8(s, n));
}

static void check_refusal(const serve_refusal *e, int whole_body) {
    REQUIRE(e->status >= 400 && e->status < 500 && memchr(e->msg, 0, sizeof e->msg) && e->msg[0]);
    if (whole_body) REQUIRE(e->param == NULL && strstr(e->msg, "request body"));
    else REQUIRE(e->param && (strstr(e->msg, e->param) || strstr(e->msg, "out of memory")));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static peft_chat_template *chatml;
    if (!chatml) {
        peft_err err = {0};
        REQUIRE(peft_chat_template_for(NULL, "chatml", &chatml, &err) == PEFT_OK);
    }
    if (size < 1 || size > (1u << 16)) return 0;
    int route = data[0] & 3;
    const peft_chat_template *tpl = data[0] & 4 ? NULL : chatml;
    static const size_t CAPS[] = {1, 16, 256, 4096};
    size_t cap = CAPS[(data[0] >> 3) & 3], len = size - 1;
    char *body = len ? malloc(len) : NULL; /* exactly sized and not NUL-terminated, as MHD's body */
    if (len && !body) return 0;
    if (len) memcpy(body, data + 1, len);
    cJSON *root;
    serve_refusal e;
    if (!serve_body_parse(body, len, &root, &e)) {
        REQUIRE(root == NULL);
        check_refusal(&e, 1);
        free(body);
        return 0;
    }
    free(body);
    REQUIRE(cJSON_IsObject(root));
    if (route < 2) {
        serve_request r;
        if (serve_request_parse(root, route, tpl, cap, &r, &e)) {
            check_string(r.model, 0, SERVE_NAME_MAX - 1);
            REQUIRE(r.stream == 0 || r.stream == 1);
            REQUIRE(r.p.max_tokens >= 1 && r.p.max_tokens <= cap);
            REQUIRE(r.p.temperature >= 0 && r.p.temperature <= 2);
            REQUIRE(r.p.top_p > 0 && r.p.top_p <= 1);
            REQUIRE(r.p.seed <= (1ull << 53));
            REQUIRE(r.p.n_stop >= 0 && r.p.n_stop <= SERVE_MAX_STOP);
            for (int i = 0; i < r.p.n_stop; i++) check_string(r.p.stop[i], 1, 256);
            check_string(r.prompt, 0, SIZE_MAX);
            REQUIRE(r.add_special == !route);
            serve_request_free(&r);
        } else {
            REQUIRE(r.prompt == NULL && r.p.n_stop == 0);
            check_refusal(&e, 0);
        }
    } else {
        const char *name, *path;
        if (serve_adapter_request_parse(root, route == 2, &name, &path, &e)) {
            check_string(name, 1, SERVE_NAME_MAX - 1);
            if (route == 2) check_string(path, 0, SIZE_MAX);
            else REQUIRE(path == NULL);
        } else {
            check_refusal(&e, 0);
        }
    }
    cJSON_Delete(root);
    return 0;
}
