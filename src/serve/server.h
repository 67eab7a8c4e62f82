/* server.h: the HTTP side of `peft serve`: OpenAI-compatible routes over libmicrohttpd (one
 * thread per connection, so a route may block on its job), in front of a scheduler. */
#ifndef PEFT_SERVE_SERVER_H
#define PEFT_SERVE_SERVER_H

#include <stddef.h>

#include "error.h"
#include "serve/scheduler.h"
#include "tokenizer/chat_template.h"

typedef struct serve_http_opts {
    const char *host;        /* IPv4 address to bind ("127.0.0.1") */
    int port;                /* 0: any free port (serve_http_port tells which) */
    const char *api_key;     /* NULL: no authentication */
    size_t max_body;         /* request bytes; larger bodies get 413 */
    size_t max_tokens;       /* the largest max_tokens a request may ask for */
    int max_connections;
    int timeout_s;           /* idle connections are closed after this */
} serve_http_opts;

typedef struct serve_http serve_http;

/* Starts listening. tpl (may be NULL: /v1/chat/completions answers 400) renders chats; s, tpl
 * and the strings in o must outlive the server. */
int serve_http_start(serve_sched *s, const peft_chat_template *tpl, const serve_http_opts *o, serve_http **out,
                     peft_err *err);
int serve_http_port(const serve_http *h);
/* Stops accepting connections; the open ones are served on. */
void serve_http_quiesce(serve_http *h);
/* Waits until every request begun has its response sent (or its client gone), at most
 * `seconds`; returns how many are still open. */
int serve_http_drain(serve_http *h, int seconds);
/* Closes every connection (waits for their threads) and frees h; NULL is a no-op. */
void serve_http_stop(serve_http *h);

#endif
