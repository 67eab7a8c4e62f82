/* server.c: OpenAI-compatible HTTP routes of `peft serve` over libmicrohttpd (see server.h).
 *
 *   GET  /health                      {"status":"ok"} (no API key needed)
 *   GET  /v1/models                   the base model, then the loaded adapters
 *   POST /v1/completions              {"model","prompt",...}         (stream: server-sent events)
 *   POST /v1/chat/completions         {"model","messages",...}       (the chat template renders them)
 *   POST /v1/load_lora_adapter        {"lora_name","lora_path"}      (vLLM's run-time adapter routes)
 *   POST /v1/unload_lora_adapter      {"lora_name"}
 *
 * Every error is OpenAI's {"error": {"message", "type", "param", "code"}} with a 4xx/5xx status. */
#include "serve/server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "serve/request.h"

struct serve_http {
    struct MHD_Daemon *d;
    serve_sched *s;
    const peft_chat_template *tpl;
    serve_http_opts o;
    atomic_int in_flight;      /* requests begun whose response is not yet sent (or failed) */
};

/* One HTTP request's body, gathered across the access handler's calls. */
typedef struct conn_ctx {
    char *body;
    size_t len;
    int too_big;
} conn_ctx;

static atomic_ulong next_id = 1;

/* ---- responses ---- */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, char *text, const char *type) {
    if (!text) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Sends j (deleted) as the response body. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return send_text(c, status, text, "application/json");
}

static const char *error_type(unsigned status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 500: return "server_error";
    case 503: return "service_unavailable";
    default: return "invalid_request_error";
    }
}

static cJSON *error_json(unsigned status, const char *param, const char *msg) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", error_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (status == 404) cJSON_AddStringToObject(e, "code", "model_not_found");
    else cJSON_AddNullToObject(e, "code");
    return root;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *param, const char *msg) {
    return send_json(c, status, error_json(status, param, msg));
}

/* ---- generation routes ---- */

typedef struct stream_ctx {
    serve_job *job;
    int chat, started, finished;
    char id[32], model[SERVE_NAME_MAX];
    long created;
    char *pending;           /* SSE bytes not yet handed to MHD: [pending_len], from pending_pos */
    size_t pending_len, pending_pos;
    char *first_text;        /* what the first wait returned, sent first */
    size_t first_len;
    serve_result first_res;
    int first_ended;
} stream_ctx;

/* The choice object of a response or of a stream chunk. */
static cJSON *choice_json(int chat, int stream, const char *text, size_t len, const char *finish) {
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", 0);
    char *t = strndup(text ? text : "", len);
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(ch, stream ? "delta" : "message");
        if (!stream || !finish) {
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", t ? t : "");
        }
    } else {
        cJSON_AddStringToObject(ch, "text", t ? t : "");
        cJSON_AddNullToObject(ch, "logprobs");
    }
    free(t);
    if (finish) cJSON_AddStringToObject(ch, "finish_reason", finish);
    else cJSON_AddNullToObject(ch, "finish_reason");
    return ch;
}

static cJSON *envelope(int chat, int stream, const char *id, const char *model, long created) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object", chat ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)created);
    cJSON_AddStringToObject(root, "model", model);
    return root;
}

/* Appends one SSE event "data: <json>\n\n" (json deleted) to st->pending. */
static void stream_event(stream_ctx *st, cJSON *json) {
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    if (!text) return;
    size_t need = st->pending_len + strlen(text) + 9;
    char *p = realloc(st->pending, need);
    if (p) {
        st->pending = p;
        st->pending_len += (size_t)sprintf(p + st->pending_len, "data: %s\n\n", text);
    }
    free(text);
}

static void stream_chunk(stream_ctx *st, const char *text, size_t len, const char *finish) {
    cJSON *root = envelope(st->chat, 1, st->id, st->model, st->created);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToArray(choices, choice_json(st->chat, 1, text, len, finish));
    stream_event(st, root);
}

/* Turns what the job produced (text, and its end) into SSE events. */
static void stream_fill(stream_ctx *st, const char *text, size_t len, int ended, const serve_result *res) {
    if (len || (!st->started && st->chat)) stream_chunk(st, text, len, NULL);
    st->started = 1;
    if (!ended) return;
    if (res->status == 200) stream_chunk(st, NULL, 0, res->finish_reason);
    else stream_event(st, error_json((unsigned)res->status, NULL, res->msg));
    char *p = realloc(st->pending, st->pending_len + 15);
    if (p) {
        st->pending = p;
        st->pending_len += (size_t)sprintf(p + st->pending_len, "data: [DONE]\n\n");
    }
    st->finished = 1;
}

/* MHD's content reader: blocks (this connection's own thread) until the job has more. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream_ctx *st = cls;
    while (st->pending_pos == st->pending_len) {
        st->pending_pos = st->pending_len = 0;
        if (st->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->first_text || !st->started) {
            stream_fill(st, st->first_text, st->first_len, st->first_ended, &st->first_res);
            free(st->first_text);
            st->first_text = NULL;
            continue;
        }
        char *text;
        size_t len;
        serve_result res;
        int ended = serve_job_wait(st->job, 500, &text, &len, &res);
        if (text || ended) stream_fill(st, text, len, ended, &res);
        free(text);
    }
    size_t n = st->pending_len - st->pending_pos < max ? st->pending_len - st->pending_pos : max;
    memcpy(buf, st->pending + st->pending_pos, n);
    st->pending_pos += n;
    return (ssize_t)n;
}

/* Called when the response is done or the client went away mid-stream: the job is cancelled. */
static void stream_free(void *cls) {
    stream_ctx *st = cls;
    serve_job_release(st->job);
    free(st->pending);
    free(st->first_text);
    free(st);
}

static enum MHD_Result run_generation(serve_http *h, struct MHD_Connection *c, serve_request *r, int chat) {
    char msg[SERVE_MSG_MAX];
    serve_job *job;
    int rc = serve_sched_submit(h->s, r->model, r->prompt, r->add_special, &r->p, &job, msg);
    r->prompt = NULL, r->p.n_stop = 0; /* taken over */
    if (rc) return send_error(c, (unsigned)rc, rc == SERVE_UNKNOWN ? "model" : NULL, msg);
    char id[32];
    snprintf(id, sizeof id, "%s-%lu", chat ? "chatcmpl" : "cmpl", (unsigned long)atomic_fetch_add(&next_id, 1));
    long created = (long)time(NULL);
    /* The first wait ends with the prefill: a prompt the scheduler refuses is still a plain
     * JSON error, also for streams. */
    char *text;
    size_t len;
    serve_result res;
    int ended;
    while (!(ended = serve_job_wait(job, 1000, &text, &len, &res)) && !text) {}
    if (ended && res.status != 200) {
        free(text);
        serve_job_release(job);
        return send_error(c, (unsigned)res.status, NULL, res.msg);
    }
    if (r->stream) {
        stream_ctx *st = calloc(1, sizeof *st);
        if (!st) {
            free(text);
            serve_job_release(job);
            return send_error(c, 500, NULL, "out of memory");
        }
        st->job = job, st->chat = chat, st->created = created;
        snprintf(st->id, sizeof st->id, "%s", id);
        snprintf(st->model, sizeof st->model, "%s", r->model);
        st->first_text = text, st->first_len = len, st->first_res = res, st->first_ended = ended;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
        if (!resp) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    /* not streamed: gather the whole text */
    size_t all_len = len;
    char *all = text;
    while (!ended) {
        ended = serve_job_wait(job, 1000, &text, &len, &res);
        if (!text) continue;
        char *p = realloc(all, all_len + len + 1);
        if (p) {
            memcpy(p + all_len, text, len);
            all = p, all_len += len;
        }
        free(text);
    }
    serve_job_release(job);
    if (res.status != 200) {
        free(all);
        return send_error(c, (unsigned)res.status, NULL, res.msg);
    }
    cJSON *root = envelope(chat, 0, id, r->model, created);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "choices"), choice_json(chat, 0, all, all_len, res.finish_reason));
    free(all);
    cJSON *usage = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(usage, "prompt_tokens", (double)res.prompt_tokens);
    cJSON_AddNumberToObject(usage, "completion_tokens", (double)res.completion_tokens);
    cJSON_AddNumberToObject(usage, "total_tokens", (double)(res.prompt_tokens + res.completion_tokens));
    return send_json(c, 200, root);
}

static enum MHD_Result route_generate(serve_http *h, struct MHD_Connection *c, const cJSON *root, int chat) {
    serve_request r;
    serve_refusal e;
    if (!serve_request_parse(root, chat, h->tpl, h->o.max_tokens, &r, &e)) return send_error(c, e.status, e.param, e.msg);
    return run_generation(h, c, &r, chat);
}

/* ---- other routes ---- */

static enum MHD_Result route_models(serve_http *h, struct MHD_Connection *c) {
    char(*names)[SERVE_NAME_MAX];
    int n;
    if (serve_sched_models(h->s, &names, &n)) return send_error(c, 500, NULL, "out of memory");
    cJSON *root = cJSON_CreateObject(), *data;
    cJSON_AddStringToObject(root, "object", "list");
    data = cJSON_AddArrayToObject(root, "data");
    for (int i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", names[i]);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "peft.c");
        if (i) cJSON_AddStringToObject(m, "parent", names[0]);
        else cJSON_AddNullToObject(m, "parent");
        cJSON_AddItemToArray(data, m);
    }
    free(names);
    return send_json(c, 200, root);
}

static enum MHD_Result route_adapter(serve_http *h, struct MHD_Connection *c, const cJSON *root, int load) {
    const char *name, *path;
    serve_refusal e;
    if (!serve_adapter_request_parse(root, load, &name, &path, &e)) return send_error(c, e.status, e.param, e.msg);
    char msg[SERVE_MSG_MAX];
    int rc = load ? serve_sched_load(h->s, name, path, msg) : serve_sched_unload(h->s, name, msg);
    if (rc) return send_error(c, (unsigned)rc, "lora_name", msg);
    cJSON *ok = cJSON_CreateObject();
    cJSON_AddStringToObject(ok, "status", load ? "loaded" : "unloaded");
    cJSON_AddStringToObject(ok, "lora_name", name);
    return send_json(c, 200, ok);
}

/* "Bearer KEY" against the configured key, in time independent of where they differ. */
static int authorized(const serve_http *h, struct MHD_Connection *c) {
    if (!h->o.api_key) return 1;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v || strncmp(v, "Bearer ", 7)) return 0;
    v += 7;
    size_t n = strlen(v), k = strlen(h->o.api_key);
    unsigned char diff = (unsigned char)(n != k);
    for (size_t i = 0; i < k; i++) diff |= (unsigned char)(h->o.api_key[i] ^ (i < n ? v[i] : 0));
    return diff == 0;
}

static enum MHD_Result route(serve_http *h, struct MHD_Connection *c, const char *url, const char *method,
                             conn_ctx *cc) {
    int post = !strcmp(method, "POST"), get = !strcmp(method, "GET");
    if (!strcmp(url, "/health")) {
        if (!get) return send_error(c, 405, NULL, "use GET");
        return send_text(c, 200, strdup("{\"status\":\"ok\"}"), "application/json");
    }
    static const char *const posts[] = {"/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter",
                                        "/v1/unload_lora_adapter"};
    int which = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(url, posts[i])) which = i;
    if (which < 0 && strcmp(url, "/v1/models")) return send_error(c, 404, NULL, "no such route");
    if (!authorized(h, c)) return send_error(c, 401, NULL, "a valid API key is needed (Authorization: Bearer KEY)");
    if (which < 0) return get ? route_models(h, c) : send_error(c, 405, NULL, "use GET");
    if (!post) return send_error(c, 405, NULL, "use POST");
    if (cc->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", h->o.max_body);
        return send_error(c, 413, NULL, msg);
    }
    cJSON *root;
    serve_refusal e;
    if (!serve_body_parse(cc->body, cc->len, &root, &e)) return send_error(c, e.status, e.param, e.msg);
    enum MHD_Result ret = which < 2 ? route_generate(h, c, root, which == 1) : route_adapter(h, c, root, which == 2);
    cJSON_Delete(root);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    serve_http *h = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) { /* the headers: the body (if any) comes in later calls */
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        atomic_fetch_add(&h->in_flight, 1);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > h->o.max_body) cc->too_big = 1;
        *con_cls = cc;
        return MHD_YES;
    }
    if (*upload_size) { /* a body piece; past the limit the rest is read and dropped */
        if (!cc->too_big && cc->len + *upload_size <= h->o.max_body) {
            char *p = realloc(cc->body, cc->len + *upload_size + 1);
            if (!p) return MHD_NO;
            memcpy(p + cc->len, upload, *upload_size);
            cc->body = p, cc->len += *upload_size;
        } else cc->too_big = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    return route(h, c, url, method, cc);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    serve_http *h = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    atomic_fetch_sub(&h->in_flight, 1);
    free(cc->body);
    free(cc);
    *con_cls = NULL;
}

int serve_http_start(serve_sched *s, const peft_chat_template *tpl, const serve_http_opts *o, serve_http **out,
                     peft_err *err) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    if (inet_pton(AF_INET, o->host, &addr.sin_addr) != 1)
        return peft_fail(err, PEFT_EINVAL, "--host %s is not an IPv4 address", o->host);
    serve_http *h = calloc(1, sizeof *h);
    if (!h) return peft_fail(err, PEFT_ENOMEM, "out of memory");
    h->s = s, h->tpl = tpl, h->o = *o;
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                                MHD_USE_ERROR_LOG,
                            0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)o->timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return peft_fail(err, PEFT_EIO, "cannot listen on %s:%d (in use, or not an address of this machine)", o->host,
                         o->port);
    }
    *out = h;
    return PEFT_OK;
}

int serve_http_port(const serve_http *h) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? (int)i->port : -1;
}

void serve_http_quiesce(serve_http *h) {
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int serve_http_drain(serve_http *h, int seconds) {
    for (int i = 0; i < seconds * 20 && atomic_load(&h->in_flight) > 0; i++) {
        struct timespec t = {0, 50 * 1000000L};
        nanosleep(&t, NULL);
    }
    return atomic_load(&h->in_flight);
}

void serve_http_stop(serve_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->d);
    free(h);
}
