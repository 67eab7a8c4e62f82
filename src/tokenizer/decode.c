/* decode.c: ids back to text through tokenizer.json's decoder chain, as HF tokenizers does it:
 * ByteLevel (bytes of each run of vocabulary tokens, added tokens verbatim), Replace,
 * ByteFallback (<0xNN> runs to bytes), Fuse, Strip, Metaspace, WordPiece ("##" pieces joined,
 * a space before the others, its own `cleanup`). Invalid UTF-8 becomes U+FFFD.
 * tokenizer_config.json's clean_up_tokenization_spaces is not applied: transformers ignores it
 * for BPE tokenizers ("destructive for BPE"); for WordPiece it is the decoder's `cleanup`, which
 * is what the tokenizers library applies. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tok_internal.h"
#include "utf8.h"

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int dec_one(peft_tokenizer *tok, const cJSON *o, const char *what, peft_err *err) {
    const char *type = jstr(o, "type");
    tok_dec d = {0};
    if (!type) return peft_fail(err, PEFT_EFORMAT, "%s: a decoder has no \"type\"", what);
    if (!strcmp(type, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "decoders")) {
            int rc = dec_one(tok, it, what, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) {
        d.kind = TOK_DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        d.kind = TOK_DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d.kind = TOK_DEC_FUSE;
    } else if (!strcmp(type, "Replace")) {
        const char *from = jstr(cJSON_GetObjectItemCaseSensitive(o, "pattern"), "String"), *to = jstr(o, "content");
        if (!from || !to || !*from) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: Replace decoder: only a String pattern is supported", what);
        d.kind = TOK_DEC_REPLACE;
        d.a = strdup(from), d.an = strlen(from);
        d.b = strdup(to), d.bn = strlen(to);
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(o, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(o, "start"), *stop = cJSON_GetObjectItemCaseSensitive(o, "stop");
        /* an empty content would strip nothing `start` times over: up to 2^31 idle steps per token */
        if (c && !*c) return peft_fail(err, PEFT_EFORMAT, "%s: Strip decoder with an empty \"content\"", what);
        d.kind = TOK_DEC_STRIP;
        d.a = strdup(c ? c : " "), d.an = strlen(c ? c : " ");
        d.start = cJSON_IsNumber(start) ? start->valueint : 0;
        d.stop = cJSON_IsNumber(stop) ? stop->valueint : 0;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement"), *scheme = jstr(o, "prepend_scheme");
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(o, "add_prefix_space");
        d.kind = TOK_DEC_METASPACE;
        d.a = strdup(r ? r : "\xe2\x96\x81"), d.an = strlen(r ? r : "\xe2\x96\x81");
        d.prefix = scheme ? strcmp(scheme, "never") != 0 : !cJSON_IsFalse(aps);
    } else if (!strcmp(type, "WordPiece")) {
        const char *pf = jstr(o, "prefix");
        const cJSON *cleanup = cJSON_GetObjectItemCaseSensitive(o, "cleanup");
        d.kind = TOK_DEC_WORDPIECE;
        d.a = strdup(pf ? pf : "##"), d.an = strlen(pf ? pf : "##");
        d.cleanup = !cJSON_IsFalse(cleanup);
    } else {
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: decoder \"%s\" is not supported", what, type);
    }
    tok_dec *g = realloc(tok->dec, (size_t)(tok->n_dec + 1) * sizeof *g);
    if (!g || (d.kind == TOK_DEC_REPLACE && (!d.a || !d.b)) || ((d.kind == TOK_DEC_STRIP || d.kind == TOK_DEC_METASPACE || d.kind == TOK_DEC_WORDPIECE) && !d.a)) {
        free(d.a), free(d.b);
        if (g) tok->dec = g;
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    }
    tok->dec = g;
    tok->dec[tok->n_dec++] = d;
    return 0;
}

int tok_parse_decoder(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err) {
    const cJSON *o = cjson;
    return !o || cJSON_IsNull(o) ? 0 : dec_one(tok, o, what, err);
}

/* A growable byte string. */
typedef struct sbuf { char *s; size_t n, cap; } sbuf;
static int sb_put(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *g = realloc(b->s, cap);
        if (!g) return -1;
        b->s = g;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
    return 0;
}

/* Appends s with each ill-formed subsequence replaced by U+FFFD (the rule of Rust's
 * String::from_utf8_lossy, which HF's decoders use, and of WHATWG: one replacement per maximal
 * prefix of a valid sequence). */
static int sb_put_lossy(sbuf *b, const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k = utf8_valid_len(s + i, n - i);
        if (k) {
            if (sb_put(b, s + i, k)) return -1;
            i += k;
            continue;
        }
        /* length of the maximal valid prefix: bounded by the lead byte's allowed ranges */
        const unsigned char *u = (const unsigned char *)s + i;
        size_t need = (u[0] >= 0xC2 && u[0] <= 0xDF) ? 2 : (u[0] >= 0xE0 && u[0] <= 0xEF) ? 3 : (u[0] >= 0xF0 && u[0] <= 0xF4) ? 4 : 1;
        size_t j = 1;
        while (j < need && i + j < n) {
            unsigned char lo = 0x80, hi = 0xBF;
            if (j == 1) {
                if (u[0] == 0xE0) lo = 0xA0;
                else if (u[0] == 0xED) hi = 0x9F;
                else if (u[0] == 0xF0) lo = 0x90;
                else if (u[0] == 0xF4) hi = 0x8F;
            }
            if (u[j] < lo || u[j] > hi) break;
            j++;
        }
        if (sb_put(b, "\xef\xbf\xbd", 3)) return -1;
        i += j;
    }
    return 0;
}

/* The decoder chain works on a list of pieces, as HF's decode_chain does. */
typedef struct dpiece { char *s; size_t n; int added; } dpiece;

static int replace_all(dpiece *p, const char *a, size_t an, const char *b, size_t bn) {
    sbuf o = {0};
    for (size_t i = 0; i < p->n;) {
        if (i + an <= p->n && !memcmp(p->s + i, a, an)) {
            if (sb_put(&o, b, bn)) return free(o.s), -1;
            i += an;
        } else {
            if (sb_put(&o, p->s + i, 1)) return free(o.s), -1;
            i++;
        }
    }
    if (!o.s && !(o.s = calloc(1, 1))) return -1;
    free(p->s);
    p->s = o.s;
    p->n = o.n;
    return 0;
}

/* The library's WordPiece cleanup: the spaces its joining put before punctuation and
 * contractions, in this order. */
static const char *const CLEANUP[][2] = {
    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
};

/* WordPiece: after the first token, a token starting with the prefix loses it and any other gets
 * a space before it; then each token is cleaned up. */
static int wordpiece(const tok_dec *d, dpiece *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        dpiece *p = &v[i];
        if (i && p->n >= d->an && !memcmp(p->s, d->a, d->an)) {
            memmove(p->s, p->s + d->an, p->n - d->an + 1);
            p->n -= d->an;
        } else if (i) {
            char *g = malloc(p->n + 2);
            if (!g) return -1;
            g[0] = ' ';
            memcpy(g + 1, p->s, p->n + 1);
            free(p->s);
            p->s = g;
            p->n++;
        }
        for (size_t k = 0; d->cleanup && k < sizeof CLEANUP / sizeof *CLEANUP; k++)
            if (replace_all(p, CLEANUP[k][0], strlen(CLEANUP[k][0]), CLEANUP[k][1], strlen(CLEANUP[k][1]))) return -1;
    }
    return 0;
}

static int is_byte_token(const dpiece *p, unsigned *byte) {
    if (p->n != 6 || memcmp(p->s, "<0x", 3) || p->s[5] != '>') return 0;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p->s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + (unsigned)d;
    }
    *byte = v;
    return 1;
}

/* Joins runs of pieces selected by `take` into one piece whose bytes go through the lossy
 * UTF-8 conversion: ByteLevel (runs of vocabulary tokens) and ByteFallback (runs of <0xNN>). */
static int join_runs(dpiece *v, size_t *n, int bytefallback) {
    size_t w = 0;
    for (size_t i = 0; i < *n;) {
        unsigned byte;
        int take = bytefallback ? is_byte_token(&v[i], &byte) : !v[i].added;
        if (!take) {
            v[w++] = v[i++];
            continue;
        }
        sbuf raw = {0}, o = {0};
        size_t j = i;
        for (; j < *n && (bytefallback ? is_byte_token(&v[j], &byte) : !v[j].added); j++) {
            char c = (char)byte;
            if (bytefallback ? sb_put(&raw, &c, 1) : sb_put(&raw, v[j].s, v[j].n)) return free(raw.s), -1;
        }
        if (sb_put_lossy(&o, raw.s ? raw.s : "", raw.n) || (!o.s && !(o.s = calloc(1, 1)))) return free(raw.s), free(o.s), -1;
        free(raw.s);
        for (size_t k = i; k < j; k++) free(v[k].s);
        v[w].s = o.s, v[w].n = o.n, v[w].added = 0;
        w++;
        i = j;
    }
    *n = w;
    return 0;
}

static int apply(const tok_dec *d, dpiece *v, size_t *n) {
    switch (d->kind) {
    case TOK_DEC_BYTELEVEL:
        return join_runs(v, n, 0);
    case TOK_DEC_BYTEFALLBACK:
        return join_runs(v, n, 1);
    case TOK_DEC_REPLACE:
        for (size_t i = 0; i < *n; i++)
            if (replace_all(&v[i], d->a, d->an, d->b, d->bn)) return -1;
        return 0;
    case TOK_DEC_METASPACE:
        for (size_t i = 0; i < *n; i++) {
            if (replace_all(&v[i], d->a, d->an, " ", 1)) return -1;
            if (d->prefix && i == 0 && v[i].n && v[i].s[0] == ' ') memmove(v[i].s, v[i].s + 1, v[i].n--);
        }
        return 0;
    case TOK_DEC_WORDPIECE:
        return wordpiece(d, v, *n);
    case TOK_DEC_FUSE: {
        if (*n <= 1) return 0;
        sbuf o = {0};
        for (size_t i = 0; i < *n; i++)
            if (sb_put(&o, v[i].s, v[i].n)) return free(o.s), -1;
        for (size_t i = 0; i < *n; i++) free(v[i].s);
        v[0].s = o.s, v[0].n = o.n, v[0].added = 0;
        *n = 1;
        return 0;
    }
    default: /* STRIP: up to `start` copies of the character at the front, `stop` at the back */
        for (size_t i = 0; i < *n; i++) {
            dpiece *p = &v[i];
            size_t b = 0, e = p->n;
            for (int k = 0; k < d->start && b + d->an <= e && !memcmp(p->s + b, d->a, d->an); k++) b += d->an;
            for (int k = 0; k < d->stop && e >= b + d->an && !memcmp(p->s + e - d->an, d->a, d->an); k++) e -= d->an;
            memmove(p->s, p->s + b, e - b);
            p->n = e - b;
            p->s[p->n] = 0;
        }
        return 0;
    }
}

int peft_tokenizer_decode(const peft_tokenizer *tok, const int32_t *ids, size_t n, int skip_special, char **out, peft_err *err) {
    *out = NULL;
    dpiece *v = calloc(n ? n : 1, sizeof *v);
    size_t m = 0;
    int rc = 0;
    if (!v) return peft_fail(err, PEFT_ENOMEM, "decode: out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids) {
            rc = peft_fail(err, PEFT_EINVAL, "decode: id %d at position %zu is not in the vocabulary (size %d)", (int)id, i, tok->n_ids);
            break;
        }
        /* an unused id below the vocabulary size decodes to nothing, as in HF */
        if (!tok->text[id] || (skip_special && (tok->flags[id] & TOK_SPECIAL))) continue;
        if (!(v[m].s = malloc(tok->text_len[id] + 1))) rc = peft_fail(err, PEFT_ENOMEM, "decode: out of memory");
        else {
            memcpy(v[m].s, tok->text[id], tok->text_len[id] + 1);
            v[m].n = tok->text_len[id];
            v[m++].added = (tok->flags[id] & TOK_ADDED) != 0;
        }
    }
    for (int k = 0; k < tok->n_dec && !rc; k++)
        if (apply(&tok->dec[k], v, &m)) rc = peft_fail(err, PEFT_ENOMEM, "decode: out of memory");
    sbuf o = {0};
    /* without a decoder HF joins tokens with spaces */
    for (size_t i = 0; i < m && !rc; i++)
        if ((i && !tok->n_dec && sb_put(&o, " ", 1)) || sb_put_lossy(&o, v[i].s, v[i].n)) rc = peft_fail(err, PEFT_ENOMEM, "decode: out of memory");
    if (!rc && !o.s && !(o.s = calloc(1, 1))) rc = peft_fail(err, PEFT_ENOMEM, "decode: out of memory");
    for (size_t i = 0; i < m; i++) free(v[i].s);
    free(v);
    if (rc) return free(o.s), rc;
    *out = o.s;
    return PEFT_OK;
}
