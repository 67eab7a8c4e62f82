/* cmd_serve.c: `peft serve`: an OpenAI-compatible HTTP server over a base model and named
 * adapters (src/serve/, docs/serving.md). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "serve/server.h"

static void usage(void) {
    printf("usage: peft serve --model DIR [--adapter NAME=DIR ...] [options]\n"
           "  OpenAI-compatible /v1/completions, /v1/chat/completions (streamed or not), /v1/models,\n"
           "  /v1/load_lora_adapter, /v1/unload_lora_adapter and /health (docs/serving.md). A request's\n"
           "  \"model\" picks the adapter (or the base model by its name). SIGTERM / SIGINT: stop accepting,\n"
           "  finish the running requests, exit 0.\n"
           "  --adapter NAME=DIR   serve the adapter in DIR as model NAME (repeat)\n"
           "  --name NAME          the base model's name (default: the last component of --model)\n"
           "  --host ADDR          IPv4 address to listen on (default 127.0.0.1: this machine only)\n"
           "  --port N             TCP port (default 8000; 0 = any free one); the port is printed on stdout\n"
           "  --api-key KEY        require `Authorization: Bearer KEY` on /v1/ routes (default: env PEFT_API_KEY)\n"
           "  --chat-template T    a built-in template (%s) or a Jinja file (default:\n"
           "                       tokenizer_config.json's)\n"
           "  --max-tokens N       the largest max_tokens a request may ask for\n"
           "  --max-len N          prompt + new tokens of one request\n"
           "  --max-queue N        requests queued or running; more get 429\n"
           "  --max-batch N        sequences decoded together\n"
           "  --max-body N         request body bytes; larger get 413\n"
           "  --max-connections N  open connections (one thread each)\n"
           "  --timeout S          idle connections are closed after S seconds\n"
           "  --grace S            on SIGTERM, wait up to S seconds for the running requests\n"
           CLI_PRECISION_HELP,
           peft_chat_template_names());
}

/* The last path component of dir, without a trailing slash or ".gguf". */
static void base_name(const char *dir, char *out, size_t n) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    size_t k = len - start;
    if (k > 5 && !strncmp(dir + len - 5, ".gguf", 5)) k -= 5;
    snprintf(out, n, "%.*s", (int)k, dir + start);
}

/* Loads every `--adapter NAME=DIR` in order, marking the options used. Returns 0, or prints
 * the problem and returns the exit code. */
static int load_adapters(cli_args *a, serve_sched *s) {
    for (int i = 1; i < a->argc; i++) {
        if (strcmp(a->argv[i], "--adapter")) continue;
        const char *v = i + 1 < a->argc ? a->argv[i + 1] : "", *eq = strchr(v, '=');
        if (!eq || eq == v || !eq[1] || eq - v >= SERVE_NAME_MAX) {
            fprintf(stderr, "peft serve: --adapter needs NAME=DIR (NAME up to %d bytes), got '%s'\n",
                    SERVE_NAME_MAX - 1, v);
            return 2;
        }
        char name[SERVE_NAME_MAX], msg[SERVE_MSG_MAX];
        snprintf(name, sizeof name, "%.*s", (int)(eq - v), v);
        a->used[i] = a->used[i + 1] = 1;
        if (serve_sched_load(s, name, eq + 1, msg)) {
            fprintf(stderr, "peft: error: --adapter %s: %s\n", v, msg);
            return 1;
        }
        i++;
    }
    return 0;
}

int cmd_serve(int argc, char **argv) {
    cli_args a;
    args_init(&a, "serve", argc, argv);
    const char *dir = args_str(&a, "--model", NULL), *name = args_str(&a, "--name", NULL),
               *tname = args_str(&a, "--chat-template", NULL);
    serve_http_opts ho = {
        .host = args_str(&a, "--host", "127.0.0.1"),
        .port = (int)args_int(&a, "--port", 8000, 0, 65535),
        .api_key = args_str(&a, "--api-key", getenv("PEFT_API_KEY")),
        .max_tokens = (size_t)args_int(&a, "--max-tokens", 1024, 1, CLI_MAX_SEQ),
        .max_body = (size_t)args_int(&a, "--max-body", 1 << 20, 1024, 1 << 30),
        .max_connections = (int)args_int(&a, "--max-connections", 64, 1, 1024),
        .timeout_s = (int)args_int(&a, "--timeout", 30, 1, 3600),
    };
    int grace = (int)args_int(&a, "--grace", 60, 0, 3600);
    cli_precision prec;
    cli_precision_args(&a, &prec);
    prec.quantize = "none"; /* a GGUF is served dequantized to f32 (block-form weights: not with adapters loaded later) */
    serve_sched_opts so = {
        .max_len = (size_t)args_int(&a, "--max-len", 4096, 2, CLI_MAX_SEQ),
        .max_queue = (int)args_int(&a, "--max-queue", 64, 1, 4096),
        .max_active = (int)args_int(&a, "--max-batch", 16, 1, 1024),
    };
    if (a.help) {
        usage();
        args_print_numbers(&a, stdout);
        return 0;
    }
    if (!dir) {
        fprintf(stderr, "peft serve: --model DIR is required (see peft serve --help)\n");
        return 2;
    }
    if (ho.api_key && !ho.api_key[0]) ho.api_key = NULL;
    char base[SERVE_NAME_MAX];
    base_name(dir, base, sizeof base);
    if (name) snprintf(base, sizeof base, "%s", name);
    /* SIGTERM / SIGINT are taken by sigwait below: blocked before any thread starts, so every
     * thread inherits the mask and none is interrupted. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that went away is a failed write, not a dead server */

    peft_err err = {0};
    cli_model cm;
    if (cli_precision_resolve(&prec, dir, 0, &err) || cli_model_load(dir, NULL, &cm, &err)) return cli_report(err.msg);
    if (cli_precision_apply(cm.model, &prec, 0, &err)) {
        cli_model_free(&cm);
        return cli_report(err.msg);
    }
    peft_chat_template *tpl = NULL;
    serve_sched *s = NULL;
    serve_http *h = NULL;
    int rc = 0;
    if (!cm.tok) rc = cli_report("the model has no tokenizer: peft serve takes and returns text");
    else if ((tname || peft_tokenizer_chat_template(cm.tok)) && peft_chat_template_for(cm.tok, tname, &tpl, &err))
        rc = cli_report(err.msg);
    else if (serve_sched_create(cm.model, cm.tok, base, &so, &s, &err)) rc = cli_report(err.msg);
    else if ((rc = load_adapters(&a, s)) == 0 && (rc = args_finish(&a)) == 0 &&
             serve_http_start(s, tpl, &ho, &h, &err))
        rc = cli_report(err.msg);
    if (rc == 0) {
        printf("peft serve: listening on http://%s:%d (model %s)\n", ho.host, serve_http_port(h), base);
        fflush(stdout);
        int sig;
        sigwait(&sigs, &sig);
        serve_http_quiesce(h);
        serve_sched_close(s);
        fprintf(stderr, "peft serve: %s: %d request(s) running, finishing them\n", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                serve_http_drain(h, 0));
        int left = serve_http_drain(h, grace);
        if (left) fprintf(stderr, "peft serve: %d request(s) still running after %d s: cancelled\n", left, grace);
    }
    serve_http_stop(h);
    serve_sched_free(s);
    peft_chat_template_free(tpl);
    cli_model_free(&cm);
    return rc;
}
