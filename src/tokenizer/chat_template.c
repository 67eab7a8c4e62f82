/* chat_template.c: native renderers of the chat templates of ChatML (Qwen2/2.5, SmolLM),
 * Qwen3, Llama-3, Llama-2-chat and Mistral Instruct, and the recognition of a Jinja template's
 * family. Each renderer follows its template's Jinja line by line; the comments quote it. */
#include "chat_template.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "error.h"
#include "tok_internal.h"
#include "utf8.h"

static const struct { const char *name; int family; } FAMILIES[] = {
    {"chatml", PEFT_CHAT_CHATML}, {"qwen3", PEFT_CHAT_QWEN3}, {"llama3", PEFT_CHAT_LLAMA3},
    {"llama2", PEFT_CHAT_LLAMA2}, {"mistral", PEFT_CHAT_MISTRAL},
};

const char *peft_chat_template_names(void) { return "chatml, qwen3, llama3, llama2, mistral"; }

int peft_chat_template_named(const char *name, peft_chat_template *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        if (!strcmp(name, FAMILIES[i].name)) {
            out->family = FAMILIES[i].family;
            out->eos_space = out->family == PEFT_CHAT_MISTRAL;
            return PEFT_OK;
        }
    return peft_fail(err, PEFT_EINVAL, "unknown chat template \"%s\" (known: %s)", name, peft_chat_template_names());
}

/* The default system prompt a ChatML template writes when the conversation has none: the text
 * of a literal '<|im_start|>system\n...<|im_end|>' in the template, Jinja escapes undone. */
static void default_system(const char *j, peft_chat_template *t) {
    static const char *heads[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int h = 0; h < 2; h++) {
        const char *p = strstr(j, heads[h]);
        if (!p) continue;
        p += strlen(heads[h]);
        const char *e = strstr(p, "<|im_end|>");
        if (!e || e == p) continue;
        size_t w = 0;
        int ok = 1;
        for (const char *q = p; q < e && ok; q++) {
            if (*q == '\'' || *q == '"' || *q == '{' || *q == '}' || *q == '+') ok = 0; /* not a literal */
            else if (*q == '\\' && q + 1 < e) {
                q++;
                char c = *q == 'n' ? '\n' : *q == 't' ? '\t' : *q;
                if (w + 1 < sizeof t->default_system) t->default_system[w++] = c;
            } else if (w + 1 < sizeof t->default_system) t->default_system[w++] = *q;
            else ok = 0;
        }
        if (!ok) continue;
        t->default_system[w] = 0;
        t->has_default_system = 1;
        return;
    }
}

int peft_chat_template_detect(const char *j, peft_chat_template *out, peft_err *err) {
    memset(out, 0, sizeof *out);
    if (strstr(j, "<|im_start|>")) {
        if (strstr(j, "</think>")) out->family = PEFT_CHAT_QWEN3;
        else out->family = PEFT_CHAT_CHATML, default_system(j, out);
    } else if (strstr(j, "<|start_header_id|>")) {
        /* Llama-3.1+ templates add a dated system turn and tool calls: not this renderer */
        if (strstr(j, "Cutting Knowledge Date")) goto unknown;
        out->family = PEFT_CHAT_LLAMA3;
        out->gen_prompt_always = !strstr(j, "add_generation_prompt");
    } else if (strstr(j, "[INST]")) {
        if (strstr(j, "<<SYS>>")) out->family = PEFT_CHAT_LLAMA2;
        else if (!strstr(j, "system")) out->family = PEFT_CHAT_MISTRAL, out->eos_space = strstr(j, "eos_token + ' '") != NULL;
        else goto unknown; /* Mistral v0.2+ move the system prompt into the last user turn */
    } else {
        goto unknown;
    }
    return PEFT_OK;
unknown:
    return peft_fail(err, PEFT_EUNSUPPORTED,
                     "the chat template of tokenizer_config.json is not one peft.c recognises; "
                     "name a family with --chat-template (%s)", peft_chat_template_names());
}

int peft_chat_template_for(const peft_tokenizer *tok, const char *name, peft_chat_template *out, peft_err *err) {
    const char *j = peft_tokenizer_chat_template(tok);
    int rc;
    if (name) rc = peft_chat_template_named(name, out, err);
    else if (j) rc = peft_chat_template_detect(j, out, err);
    else rc = peft_fail(err, PEFT_EINVAL, "the tokenizer has no chat_template; name a family with --chat-template (%s)",
                        peft_chat_template_names());
    if (rc) return rc;
    const char *bos = peft_tokenizer_bos_text(tok), *eos = peft_tokenizer_eos_text(tok);
    if ((bos && strlen(bos) >= sizeof out->bos) || (eos && strlen(eos) >= sizeof out->eos))
        return peft_fail(err, PEFT_EFORMAT, "tokenizer_config.json: bos_token/eos_token too long");
    strcpy(out->bos, bos ? bos : "");
    strcpy(out->eos, eos ? eos : "");
    return PEFT_OK;
}

/* ---- rendering ---- */

typedef struct rbuf {
    char *s;
    size_t n, cap;
    peft_chat_span *spans;
    size_t n_spans, cap_spans;
    int oom;
} rbuf;

static void put_n(rbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *g = realloc(b->s, cap);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->s = g;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void put(rbuf *b, const char *s) { put_n(b, s, strlen(s)); }

static void span(rbuf *b, size_t start) {
    if (b->oom) return;
    if (b->n_spans == b->cap_spans) {
        size_t cap = b->cap_spans ? b->cap_spans * 2 : 8;
        peft_chat_span *g = realloc(b->spans, cap * sizeof *g);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->spans = g;
        b->cap_spans = cap;
    }
    b->spans[b->n_spans].start = start;
    b->spans[b->n_spans++].end = b->n;
}

/* Jinja's trim / strip(): JavaScript's whitespace at both ends (what @huggingface/jinja does). */
static void put_trimmed(rbuf *b, const char *s) {
    size_t n = strlen(s), st = 0, e = n;
    while (st < e) {
        uint32_t cp;
        size_t k = utf8_decode(s + st, e - st, &cp);
        if (!tok_is_space(cp)) break;
        st += k;
    }
    while (e > st) {
        size_t k = e - 1;
        while (k > st && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        uint32_t cp;
        utf8_decode(s + k, e - k, &cp);
        if (!tok_is_space(cp)) break;
        e = k;
    }
    put_n(b, s + st, e - st);
}

static int is(const char *a, const char *b) { return a && !strcmp(a, b); }

static int chatml(const peft_chat_template *t, const peft_chat_msg *m, size_t n, int gen, rbuf *b) {
    /* {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n<default><|im_end|>\n' }} */
    if (t->has_default_system && n && !is(m[0].role, "system")) {
        put(b, "<|im_start|>system\n");
        put(b, t->default_system);
        put(b, "<|im_end|>\n");
    }
    /* {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}} */
    for (size_t i = 0; i < n; i++) {
        put(b, "<|im_start|>");
        put(b, m[i].role);
        put(b, "\n");
        size_t s = b->n;
        put(b, m[i].content);
        put(b, "<|im_end|>");
        if (is(m[i].role, "assistant")) span(b, s);
        put(b, "\n");
    }
    if (gen) put(b, "<|im_start|>assistant\n");
    return 0;
}

static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }
static int ends_with(const char *s, const char *p) {
    size_t n = strlen(s), k = strlen(p);
    return n >= k && !memcmp(s + n - k, p, k);
}

/* Python's s.lstrip('\n') / rstrip('\n') / strip('\n') on [*b, *e). */
static void strip_nl(const char *s, size_t *b, size_t *e, int left, int right) {
    while (left && *b < *e && s[*b] == '\n') (*b)++;
    while (right && *e > *b && s[*e - 1] == '\n') (*e)--;
}

static int qwen3(const peft_chat_template *t, const peft_chat_msg *m, size_t n, int gen, rbuf *b) {
    /* {%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }} */
    if (n && is(m[0].role, "system")) {
        put(b, "<|im_start|>system\n");
        put(b, m[0].content);
        put(b, "<|im_end|>\n");
    }
    /* last_query_index: the last user turn that is not a wrapped tool response */
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;)
        if (is(m[k].role, "user") && !(starts_with(m[k].content, "<tool_response>") && ends_with(m[k].content, "</tool_response>"))) {
            last_query = k;
            break;
        }
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role, *c = m[i].content;
        if (is(role, "user") || (is(role, "system") && i > 0)) {
            put(b, "<|im_start|>");
            put(b, role);
            put(b, "\n");
            put(b, c);
            put(b, "<|im_end|>\n");
        } else if (is(role, "assistant")) {
            /* content = after the last '</think>' (lstrip '\n'); reasoning = between the last
             * '<think>' and the first '</think>' (rstrip then lstrip '\n') */
            size_t cb = 0, ce = strlen(c), rb = 0, re = 0;
            const char *close = strstr(c, "</think>");
            if (close) {
                const char *last = close, *p;
                while ((p = strstr(last + 1, "</think>"))) last = p;
                cb = (size_t)(last - c) + 8;
                strip_nl(c, &cb, &ce, 1, 0);
                re = (size_t)(close - c);
                strip_nl(c, &rb, &re, 0, 1);
                for (const char *q = c; (q = strstr(q, "<think>")) && (size_t)(q - c) < re; q++) rb = (size_t)(q - c) + 7;
                strip_nl(c, &rb, &re, 1, 0);
            }
            put(b, "<|im_start|>assistant\n");
            size_t s = b->n;
            if (i > last_query && (i == n - 1 || re > rb)) {
                /* '<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') */
                strip_nl(c, &rb, &re, 1, 1);
                put(b, "<think>\n");
                put_n(b, c + rb, re - rb);
                put(b, "\n</think>\n\n");
                strip_nl(c, &cb, &ce, 1, 0);
            }
            put_n(b, c + cb, ce - cb);
            put(b, "<|im_end|>");
            span(b, s);
            put(b, "\n");
        } else if (is(role, "tool")) {
            if (i == 0 || !is(m[i - 1].role, "tool")) put(b, "<|im_start|>user");
            put(b, "\n<tool_response>\n");
            put(b, c);
            put(b, "\n</tool_response>");
            if (i == n - 1 || !is(m[i + 1].role, "tool")) put(b, "<|im_end|>\n");
        }
    }
    if (gen) put(b, "<|im_start|>assistant\n");
    (void)t;
    return 0;
}

static int llama3(const peft_chat_template *t, const peft_chat_msg *m, size_t n, int gen, rbuf *b) {
    /* '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>', bos first */
    for (size_t i = 0; i < n; i++) {
        if (i == 0) put(b, t->bos);
        put(b, "<|start_header_id|>");
        put(b, m[i].role);
        put(b, "<|end_header_id|>\n\n");
        size_t s = b->n;
        put_trimmed(b, m[i].content);
        put(b, "<|eot_id|>");
        if (is(m[i].role, "assistant")) span(b, s);
    }
    if (gen || t->gen_prompt_always) put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return 0;
}

static int alternation_error(peft_err *err) {
    return peft_fail(err, PEFT_EINVAL, "Conversation roles must alternate user/assistant/user/assistant/...");
}

static int llama2(const peft_chat_template *t, const peft_chat_msg *m, size_t n, rbuf *b, peft_err *err) {
    const char *sys = NULL;
    if (n && is(m[0].role, "system")) sys = m[0].content, m++, n--;
    for (size_t i = 0; i < n; i++) {
        if (is(m[i].role, "user") != (i % 2 == 0)) return alternation_error(err);
        if (is(m[i].role, "user")) {
            /* bos_token + '[INST] ' + content.strip() + ' [/INST]', the system prompt inside the first */
            put(b, t->bos);
            put(b, "[INST] ");
            if (i == 0 && sys) {
                rbuf c = {0};
                put(&c, "<<SYS>>\n");
                put(&c, sys);
                put(&c, "\n<</SYS>>\n\n");
                put(&c, m[i].content);
                if (c.oom) return free(c.s), -1;
                put_trimmed(b, c.s);
                free(c.s);
            } else {
                put_trimmed(b, m[i].content);
            }
            put(b, " [/INST]");
        } else if (is(m[i].role, "assistant")) {
            /* ' ' + content.strip() + ' ' + eos_token */
            size_t s = b->n;
            put(b, " ");
            put_trimmed(b, m[i].content);
            put(b, " ");
            put(b, t->eos);
            span(b, s);
        }
    }
    return 0;
}

static int mistral(const peft_chat_template *t, const peft_chat_msg *m, size_t n, rbuf *b, peft_err *err) {
    put(b, t->bos);
    for (size_t i = 0; i < n; i++) {
        if (is(m[i].role, "user") != (i % 2 == 0)) return alternation_error(err);
        if (is(m[i].role, "user")) {
            put(b, "[INST] ");
            put(b, m[i].content);
            put(b, " [/INST]");
        } else if (is(m[i].role, "assistant")) {
            size_t s = b->n;
            put(b, m[i].content);
            put(b, t->eos);
            span(b, s);
            if (t->eos_space) put(b, " ");
        } else {
            return peft_fail(err, PEFT_EINVAL, "Only user and assistant roles are supported!");
        }
    }
    return 0;
}

int peft_chat_render(const peft_chat_template *t, const peft_chat_msg *msgs, size_t n, int gen_prompt, char **out,
                     size_t *out_len, peft_chat_span **spans, size_t *n_spans, peft_err *err) {
    rbuf b = {0};
    int rc;
    *out = NULL;
    if (spans) *spans = NULL, *n_spans = 0;
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) return peft_fail(err, PEFT_EINVAL, "message %zu has no role or content", i);
    switch (t->family) {
    case PEFT_CHAT_CHATML: rc = chatml(t, msgs, n, gen_prompt, &b); break;
    case PEFT_CHAT_QWEN3: rc = qwen3(t, msgs, n, gen_prompt, &b); break;
    case PEFT_CHAT_LLAMA3: rc = llama3(t, msgs, n, gen_prompt, &b); break;
    case PEFT_CHAT_LLAMA2: rc = llama2(t, msgs, n, &b, err); break;
    case PEFT_CHAT_MISTRAL: rc = mistral(t, msgs, n, &b, err); break;
    default: rc = peft_fail(err, PEFT_EINVAL, "chat template family %d is not known", t->family);
    }
    put(&b, ""); /* an empty rendering is still a string */
    if (!rc && b.oom) rc = peft_fail(err, PEFT_ENOMEM, "chat template: out of memory");
    if (rc) {
        free(b.s);
        free(b.spans);
        return rc;
    }
    *out = b.s;
    *out_len = b.n;
    if (spans) *spans = b.spans, *n_spans = b.n_spans;
    else free(b.spans);
    return PEFT_OK;
}

int peft_chat_render_json(const peft_chat_template *t, const struct cJSON *messages, int gen_prompt, char **out,
                          size_t *out_len, peft_chat_span **spans, size_t *n_spans, const char *where, peft_err *err) {
    const cJSON *arr = messages, *it;
    if (!cJSON_IsArray(arr)) return peft_fail(err, PEFT_EFORMAT, "%s: \"messages\" is not a list", where);
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    peft_chat_msg *m = calloc(n ? n : 1, sizeof *m);
    if (!m) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", where);
    cJSON_ArrayForEach(it, arr) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "role"), *c = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(r) || !cJSON_IsString(c)) {
            free(m);
            return peft_fail(err, PEFT_EFORMAT, "%s: message %zu needs string \"role\" and \"content\"", where, i);
        }
        m[i].role = r->valuestring;
        m[i++].content = c->valuestring;
    }
    int rc = peft_chat_render(t, m, n, gen_prompt, out, out_len, spans, n_spans, err);
    free(m);
    if (rc && err && rc != PEFT_ENOMEM) peft_err_prefix(err, "%s", where);
    return rc;
}
