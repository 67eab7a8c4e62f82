/* cmd_tokenize.c: `peft tokenize`: text to token ids with a model's tokenizer, ids back to text,
 * and chat conversations rendered with the model's chat template. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "args.h"
#include "cli_common.h"
#include "commands.h"
#include "fileio.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: peft tokenize --model DIR (--text STR | --file F) [--pair STR_B] [--no-special]\n"
            "       peft tokenize --model DIR --jsonl F [--no-special]\n"
            "       peft tokenize --model DIR --chat F [--chat-template NAME] [--render] [--generation-prompt]\n"
            "       peft tokenize --model DIR --decode (--ids 1,2,3 | --jsonl F) [--skip-special]\n\n"
            "  --model DIR        directory with tokenizer.json (and tokenizer_config.json)\n"
            "  --text STR         encode STR and print its ids, comma-separated\n"
            "  --file F           encode the whole file F\n"
            "  --pair STR_B       encode the pair (text, STR_B) as BERT's sequence pairs: print the ids, then\n"
            "                     a line of the token type ids\n"
            "  --jsonl F          each line of F is a JSON string: print one line of ids per line; or a\n"
            "                     list [A, B]: print the pair's ids and its type ids (two lines)\n"
            "  --no-special       do not add the post-processor's tokens (BOS...)\n"
            "  --time             with --text/--file: report the encoding time and throughput on stderr\n"
            "  --chat F           each line of F is {\"messages\": [{\"role\", \"content\"}...]} (optional \"tools\",\n"
            "                     \"chat_template_kwargs\"): print its ids\n"
            "                     as the chat template renders it\n"
            "  --chat-template N  use built-in template N (%s) or the Jinja file N instead of\n"
            "                     tokenizer_config.json's\n"
            "  --render           with --chat: print the rendered text (a JSON string per line) instead\n"
            "  --generation-prompt  with --chat: end with the assistant header\n"
            "  --decode --ids L   print the text of the comma-separated ids L\n"
            "  --decode --jsonl F each line of F is a JSON list of ids: print each text as a JSON string\n"
            "  --skip-special     with --decode: drop special tokens\n",
            peft_chat_template_names());
}

static int print_ids(const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", (int)ids[i]);
    putchar('\n');
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int timed = 0; /* --time */

static int encode_print(const peft_tokenizer *tok, const char *text, size_t len, int special) {
    int32_t *ids;
    size_t n;
    peft_err err;
    double t0 = now_s();
    if (peft_tokenizer_encode(tok, text, len, special, &ids, &n, &err)) return cli_report(err.msg);
    double dt = now_s() - t0;
    if (timed)
        fprintf(stderr, "encoded %zu bytes into %zu tokens in %.1f ms: %.2f MB/s, %.0f tokens/s\n", len, n, dt * 1e3,
                (double)len / dt / 1e6, (double)n / dt);
    print_ids(ids, n);
    free(ids);
    return 0;
}

static int encode_pair_print(const peft_tokenizer *tok, const char *a, size_t alen, const char *b, size_t blen, int special) {
    int32_t *ids;
    uint32_t *types;
    size_t n;
    peft_err err;
    if (peft_tokenizer_encode_pair(tok, a, alen, b, blen, special, &ids, &types, &n, &err)) return cli_report(err.msg);
    print_ids(ids, n);
    for (size_t i = 0; i < n; i++) printf(i ? ",%u" : "%u", (unsigned)types[i]);
    putchar('\n');
    free(ids);
    free(types);
    return 0;
}

/* Runs fn on each non-blank line of path; a failure names FILE:LINE. */
static int each_line(const char *path, int (*fn)(const char *line, size_t len, const char *where, void *ctx), void *ctx) {
    char *data, where[4200];
    size_t len;
    peft_err err;
    if (peft_read_file(path, &data, &len, &err)) return cli_report(err.msg);
    int rc = 0, lineno = 0;
    for (char *p = data; !rc && p < data + len;) {
        char *nl = memchr(p, '\n', (size_t)(data + len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(data + len - p);
        lineno++;
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (strspn(p, " \t\r") < n) rc = fn(p, n, where, ctx);
        p += n + 1;
    }
    free(data);
    return rc;
}

typedef struct line_ctx {
    const peft_tokenizer *tok;
    int special, render, gen_prompt, skip_special;
    peft_chat_template *tpl;
} line_ctx;

static int print_json_string(const char *text) {
    cJSON *s = cJSON_CreateString(text);
    char *out = s ? cJSON_PrintUnformatted(s) : NULL;
    if (out) puts(out);
    free(out);
    cJSON_Delete(s);
    return out ? 0 : cli_report("out of memory");
}

static int decode_line(const char *line, size_t len, const char *where, void *vctx) {
    line_ctx *c = vctx;
    char msg[4400], *text;
    peft_err err;
    cJSON *j = cJSON_ParseWithLength(line, len), *it;
    int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : -1, k = 0, rc;
    int32_t *ids = n >= 0 ? malloc(((size_t)n + 1) * sizeof *ids) : NULL;
    cJSON *list = ids ? j : NULL;
    cJSON_ArrayForEach(it, list) { /* ids are integers in [0, INT32_MAX]: anything else ends the list early */
        double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(v >= 0 && v <= INT32_MAX && v == (double)(int32_t)v)) break;
        ids[k++] = (int32_t)v;
    }
    cJSON_Delete(j);
    if (!ids || k != n) {
        free(ids);
        snprintf(msg, sizeof msg, "%s: expected a JSON list of token ids (integers in [0, %d])", where, INT32_MAX);
        return cli_report(msg);
    }
    rc = peft_tokenizer_decode(c->tok, ids, (size_t)n, c->skip_special, &text, &err);
    free(ids);
    if (rc) return cli_report(err.msg);
    rc = print_json_string(text);
    free(text);
    return rc;
}

static int jsonl_line(const char *line, size_t len, const char *where, void *vctx) {
    line_ctx *c = vctx;
    char msg[4400];
    cJSON *j = cJSON_ParseWithLength(line, len);
    const cJSON *a = cJSON_GetArrayItem(j, 0), *b = cJSON_GetArrayItem(j, 1);
    int pair = cJSON_IsArray(j) && cJSON_GetArraySize(j) == 2 && cJSON_IsString(a) && cJSON_IsString(b);
    if (!cJSON_IsString(j) && !pair) {
        cJSON_Delete(j);
        snprintf(msg, sizeof msg, "%s: expected a JSON string or a list of two strings", where);
        return cli_report(msg);
    }
    int rc = pair ? encode_pair_print(c->tok, a->valuestring, strlen(a->valuestring), b->valuestring, strlen(b->valuestring), c->special)
                  : encode_print(c->tok, j->valuestring, strlen(j->valuestring), c->special);
    cJSON_Delete(j);
    return rc;
}

static int chat_line(const char *line, size_t len, const char *where, void *vctx) {
    line_ctx *c = vctx;
    peft_err err;
    char *text = NULL;
    size_t n;
    cJSON *j = cJSON_ParseWithLength(line, len);
    int rc = peft_chat_render_json(c->tpl, j, c->gen_prompt, &text, &n,
                                   NULL, NULL, where, &err);
    cJSON_Delete(j);
    if (rc) return cli_report(err.msg);
    if (c->render) {
        rc = print_json_string(text);
    } else {
        /* the template spells out BOS itself, as HF's apply_chat_template(tokenize=True) assumes */
        rc = encode_print(c->tok, text, n, 0);
    }
    free(text);
    return rc;
}

int cmd_tokenize(int argc, char **argv) {
    cli_args a;
    args_init(&a, "tokenize", argc, argv);
    const char *model = args_str(&a, "--model", NULL), *text = args_str(&a, "--text", NULL), *file = args_str(&a, "--file", NULL),
               *jsonl = args_str(&a, "--jsonl", NULL), *chat = args_str(&a, "--chat", NULL), *ids_arg = args_str(&a, "--ids", NULL),
               *tname = args_str(&a, "--chat-template", NULL), *pair = args_str(&a, "--pair", NULL);
    int special = !args_has(&a, "--no-special"), decode = args_has(&a, "--decode"), skip_special = args_has(&a, "--skip-special"),
        render = args_has(&a, "--render"), gen_prompt = args_has(&a, "--generation-prompt");
    timed = args_has(&a, "--time");
    if (a.help) {
        usage(stdout);
        return 0;
    }
    int rc = args_finish(&a);
    if (rc) return rc;
    int inputs = !!text + !!file + !!jsonl + !!chat + !!ids_arg;
    const char *usage_error = !model ? "--model DIR is required"
                            : inputs != 1 ? "give exactly one of --text, --file, --jsonl, --chat, --ids"
                            : decode && !ids_arg && !jsonl ? "--decode reads --ids or --jsonl"
                            : !decode && ids_arg ? "--ids is for --decode"
                            : pair && !text ? "--pair goes with --text" : NULL;
    if (usage_error) {
        fprintf(stderr, "peft tokenize: %s (see peft tokenize --help)\n", usage_error);
        return 2;
    }
    peft_tokenizer *tok;
    peft_err err;
    if (peft_tokenizer_load(model, &tok, &err)) return cli_report(err.msg);
    line_ctx c = {tok, special, render, gen_prompt, skip_special, NULL};
    if (decode && jsonl) {
        rc = each_line(jsonl, decode_line, &c);
    } else if (decode) {
        int32_t *ids = NULL;
        size_t n;
        char *out;
        if (cli_parse_ids(ids_arg, "--ids", &ids, &n, &err)) {
            fprintf(stderr, "peft tokenize: %s\n", err.msg);
            rc = 2;
        } else if (peft_tokenizer_decode(tok, ids, n, skip_special, &out, &err)) {
            rc = cli_report(err.msg);
        } else {
            puts(out);
            free(out);
        }
        free(ids);
    } else if (text && pair) {
        rc = encode_pair_print(tok, text, strlen(text), pair, strlen(pair), special);
    } else if (text) {
        rc = encode_print(tok, text, strlen(text), special);
    } else if (file) {
        char *data;
        size_t len;
        if (peft_read_file(file, &data, &len, &err)) rc = cli_report(err.msg);
        else rc = encode_print(tok, data, len, special), free(data);
    } else {
        if (jsonl) rc = each_line(jsonl, jsonl_line, &c);
        else if (peft_chat_template_for(tok, tname, &c.tpl, &err)) rc = cli_report(err.msg);
        else rc = each_line(chat, chat_line, &c);
    }
    peft_chat_template_free(c.tpl);
    peft_tokenizer_free(tok);
    return rc;
}
