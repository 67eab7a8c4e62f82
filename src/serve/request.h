/* request.h: the request bodies of `peft serve` (server.c), parsed and range-checked apart
 * from the HTTP layer so that they can be fuzzed (fuzz/fuzz_serve_request.c).
 *
 * A refusal is OpenAI's error: an HTTP status (400), the offending field (`param`, NULL for the
 * body as a whole) and a message naming it; server.c sends it as {"error": {...}}. */
#ifndef PEFT_SERVE_REQUEST_H
#define PEFT_SERVE_REQUEST_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "serve/scheduler.h"
#include "tokenizer/chat_template.h"

typedef struct serve_refusal {
    unsigned status;   /* 4xx */
    const char *param; /* the field, or NULL */
    char msg[SERVE_MSG_MAX];
} serve_refusal;

/* A /v1/completions or /v1/chat/completions request. */
typedef struct serve_request {
    const char *model; /* inside the body's cJSON tree: valid while it is */
    int stream;
    serve_params p;    /* max_tokens in [1, max_tokens], temperature in [0, 2], top_p in (0, 1],
                        * seed in [0, 2^53], stop: 0..SERVE_MAX_STOP strings of 1..256 bytes */
    char *prompt;      /* the completion prompt or the rendered chat (NUL-terminated) */
    int add_special;   /* 1 for completions; 0 for chats (the template spells out BOS) */
} serve_request;

/* The body as a JSON object: *root (free with cJSON_Delete), or 0 with a refusal (not UTF-8,
 * not a JSON object). body may be NULL when len is 0. */
int serve_body_parse(const char *body, size_t len, cJSON **root, serve_refusal *e);

/* A completion (chat 0: "prompt") or chat (chat 1: "messages", rendered with tpl, which may be
 * NULL: refused) request with max_tokens at most `max_tokens`. Returns 1 with *r filled (free
 * with serve_request_free), or 0 with a refusal and *r empty. */
int serve_request_parse(const cJSON *root, int chat, const peft_chat_template *tpl, size_t max_tokens,
                        serve_request *r, serve_refusal *e);
void serve_request_free(serve_request *r);

/* A /v1/load_lora_adapter (load 1: "lora_name", "lora_path") or /v1/unload_lora_adapter body:
 * *name is 1..SERVE_NAME_MAX-1 bytes, *path a string (load only); both inside root. Returns 1,
 * or 0 with a refusal. */
int serve_adapter_request_parse(const cJSON *root, int load, const char **name, const char **path, serve_refusal *e);

#endif
