/* request.c: parsing and range checks of the request bodies of `peft serve` (see request.h). */
#include "serve/request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/utf8.h"

static int refuse(serve_refusal *e, const char *param) {
    e->status = 400;
    e->param = param;
    return 0;
}

static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_valid_len(s + i, n - i))) return 0;
    return 1;
}

int serve_body_parse(const char *body, size_t len, cJSON **root, serve_refusal *e) {
    *root = NULL;
    if (!valid_utf8(body ? body : "", len))
        return snprintf(e->msg, sizeof e->msg, "the request body is not valid UTF-8"), refuse(e, NULL);
    cJSON *j = body ? cJSON_ParseWithLength(body, len) : NULL;
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return snprintf(e->msg, sizeof e->msg, "the request body is not a JSON object"), refuse(e, NULL);
    }
    *root = j;
    return 1;
}

/* A finite JSON number in [lo, hi] (integral when `integer`), or absent (*v untouched).
 * Returns 0, or writes the reason into msg and returns -1. */
static int get_number(const cJSON *root, const char *key, double lo, double hi, int integer, double *v, char *msg) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return 0;
    double x = it->valuedouble;
    if (!cJSON_IsNumber(it) || !isfinite(x) || x < lo || x > hi || (integer && x != floor(x))) {
        snprintf(msg, SERVE_MSG_MAX, integer ? "'%s' must be an integer in [%.0f, %.0f]" : "'%s' must be a number in [%g, %g]",
                 key, lo, hi);
        return -1;
    }
    *v = x;
    return 0;
}

/* Fills r from the fields both generation routes share; returns the offending field or NULL. */
static const char *parse_common(const cJSON *root, size_t max_tokens_cap, serve_request *r, char *msg) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsString(model) || strlen(model->valuestring) >= SERVE_NAME_MAX)
        return snprintf(msg, SERVE_MSG_MAX, "'model' must be a string naming a model of /v1/models"), "model";
    r->model = model->valuestring;
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream)) return snprintf(msg, SERVE_MSG_MAX, "'stream' must be a boolean"), "stream";
    r->stream = cJSON_IsTrue(stream);
    /* OpenAI's default of 16, within the server's cap */
    double max_tokens = max_tokens_cap < 16 ? (double)max_tokens_cap : 16, temperature = 1, top_p = 1, seed = 0, n = 1;
    const char *key = "max_tokens";
    if (get_number(root, key, 1, (double)max_tokens_cap, 1, &max_tokens, msg) ||
        get_number(root, key = "max_completion_tokens", 1, (double)max_tokens_cap, 1, &max_tokens, msg) ||
        get_number(root, key = "temperature", 0, 2, 0, &temperature, msg) ||
        get_number(root, key = "top_p", 0, 1, 0, &top_p, msg) ||
        get_number(root, key = "seed", 0, 9007199254740992.0, 1, &seed, msg) || /* 2^53: exact in a double */
        get_number(root, key = "n", 1, 1, 1, &n, msg))
        return key;
    if (top_p <= 0) return snprintf(msg, SERVE_MSG_MAX, "'top_p' must be in (0, 1]"), "top_p";
    r->p.max_tokens = (size_t)max_tokens;
    r->p.temperature = (float)temperature;
    r->p.top_p = (float)top_p;
    r->p.seed = (uint64_t)seed;
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (!stop || cJSON_IsNull(stop)) return NULL;
    int n_stop = cJSON_IsString(stop) ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
    if (n_stop < 0 || n_stop > SERVE_MAX_STOP)
        return snprintf(msg, SERVE_MSG_MAX, "'stop' must be a string or an array of up to %d strings", SERVE_MAX_STOP), "stop";
    for (int i = 0; i < n_stop; i++) {
        const cJSON *s = cJSON_IsString(stop) ? stop : cJSON_GetArrayItem(stop, i);
        if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) > 256)
            return snprintf(msg, SERVE_MSG_MAX, "'stop' strings must be 1 to 256 bytes"), "stop";
        if (!(r->p.stop[r->p.n_stop] = strdup(s->valuestring))) return snprintf(msg, SERVE_MSG_MAX, "out of memory"), "stop";
        r->p.n_stop++;
    }
    return NULL;
}

void serve_request_free(serve_request *r) {
    for (int i = 0; i < r->p.n_stop; i++) free(r->p.stop[i]);
    free(r->prompt);
    memset(r, 0, sizeof *r);
}

int serve_request_parse(const cJSON *root, int chat, const peft_chat_template *tpl, size_t max_tokens,
                        serve_request *r, serve_refusal *e) {
    memset(r, 0, sizeof *r);
    char *msg = e->msg;
    const char *bad = parse_common(root, max_tokens, r, msg);
    if (!bad && !chat) {
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (!cJSON_IsString(prompt)) bad = "prompt", snprintf(msg, SERVE_MSG_MAX, "'prompt' must be a string");
        else if (!(r->prompt = strdup(prompt->valuestring))) bad = "prompt", snprintf(msg, SERVE_MSG_MAX, "out of memory");
        r->add_special = 1;
    } else if (!bad) {
        const cJSON *messages = cJSON_GetObjectItemCaseSensitive(root, "messages");
        cJSON *record = cJSON_CreateObject();
        peft_err err = {0};
        size_t len;
        if (!tpl) bad = "messages", snprintf(msg, SERVE_MSG_MAX, "'messages' cannot be rendered: this model has no chat template (start the server with --chat-template)");
        else if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
            bad = "messages", snprintf(msg, SERVE_MSG_MAX, "'messages' must be a non-empty array");
        else if (!record || !cJSON_AddItemReferenceToObject(record, "messages", (cJSON *)messages))
            bad = "messages", snprintf(msg, SERVE_MSG_MAX, "out of memory");
        else if (peft_chat_render_json(tpl, record, 1, &r->prompt, &len, NULL, NULL, "messages", &err))
            bad = "messages", snprintf(msg, SERVE_MSG_MAX, "%s", err.msg);
        cJSON_Delete(record);
        r->add_special = 0; /* the template spells out BOS itself, as HF's apply_chat_template */
    }
    if (!bad) return 1;
    serve_request_free(r);
    return refuse(e, bad);
}

int serve_adapter_request_parse(const cJSON *root, int load, const char **name, const char **path, serve_refusal *e) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "lora_name"), *p = cJSON_GetObjectItemCaseSensitive(root, "lora_path");
    *name = *path = NULL;
    if (!cJSON_IsString(n) || !n->valuestring[0] || strlen(n->valuestring) >= SERVE_NAME_MAX)
        return snprintf(e->msg, sizeof e->msg, "'lora_name' must be a non-empty string (up to 127 bytes)"), refuse(e, "lora_name");
    if (load && !cJSON_IsString(p)) return snprintf(e->msg, sizeof e->msg, "'lora_path' must be a string"), refuse(e, "lora_path");
    *name = n->valuestring;
    *path = load ? p->valuestring : NULL;
    return 1;
}
