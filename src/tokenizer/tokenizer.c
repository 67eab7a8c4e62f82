/* tokenizer.c: loading tokenizer.json / tokenizer_config.json, and the encode pipeline:
 * added tokens are cut out of the raw text first (longest match, never split), each section in
 * between is normalized, pre-tokenized and merged (pretok.c, bpe.c), then the post-processor's
 * tokens (BOS...) go around the sequence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/json.h"
#include "tok_internal.h"
#include "utf8.h"

/* The inverse of GPT-2's bytes_to_unicode: byte-level vocabularies spell byte b as the
 * character cp; printable Latin-1 bytes are themselves, the other 68 bytes are 256 + k. */
static int byte_of_char(uint32_t cp) {
    if ((cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    int k = (int)cp - 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (!printable && k-- == 0) return b;
    }
    return -1;
}

/* Keeps every string the tokenizer owns; freed together. */
typedef struct strpool { char **s; size_t n, cap; } strpool;
static char *pool_add(strpool *p, const char *s, size_t n) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 1024;
        char **g = realloc(p->s, cap * sizeof *g);
        if (!g) return NULL;
        p->s = g;
        p->cap = cap;
    }
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return p->s[p->n++] = d;
}

typedef struct tok_full {
    peft_tokenizer t;
    strpool pool;
} tok_full;

/* A vocabulary string as the tokenizer stores it: byte-level entries become their raw bytes
 * (a string with a character outside the byte alphabet is kept as is; no word can reach it). */
static char *vocab_text(tok_full *f, const char *s, uint32_t *len) {
    size_t n = strlen(s);
    if (f->t.byte_level) {
        char buf[1024];
        size_t w = 0, i = 0;
        while (i < n && w < sizeof buf) {
            uint32_t cp;
            i += utf8_decode(s + i, n - i, &cp);
            int b = byte_of_char(cp);
            if (b < 0) break;
            buf[w++] = (char)b;
        }
        if (i == n) {
            *len = (uint32_t)w;
            return pool_add(&f->pool, buf, w);
        }
    }
    *len = (uint32_t)n;
    return pool_add(&f->pool, s, n);
}

static int lookup_text(tok_full *f, const char *s, int32_t *id) {
    char buf[1024];
    size_t n = strlen(s), w = 0, i = 0;
    if (f->t.byte_level) {
        while (i < n && w < sizeof buf) {
            uint32_t cp;
            i += utf8_decode(s + i, n - i, &cp);
            int b = byte_of_char(cp);
            if (b < 0) break;
            buf[w++] = (char)b;
        }
        if (i == n) return (*id = tok_strmap_get(&f->t.vocab, buf, w)) >= 0;
    }
    return (*id = tok_strmap_get(&f->t.vocab, s, n)) >= 0;
}

static int load_merges(tok_full *f, const cJSON *merges, const char *path, peft_err *err) {
    int n = cJSON_GetArraySize(merges), rank = 0;
    f->t.sp_word_split = !f->t.byte_level; /* until a merge shows otherwise */
    if (tok_mergemap_init(&f->t.merges, (size_t)n)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        char a[512], b[512], ab[1024];
        if (cJSON_IsString(m)) {
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || (size_t)(sp - m->valuestring) >= sizeof a || strlen(sp + 1) >= sizeof b)
                return peft_fail(err, PEFT_EFORMAT, "%s: merge %d \"%s\" is not \"A B\"", path, rank, m->valuestring);
            memcpy(a, m->valuestring, (size_t)(sp - m->valuestring));
            a[sp - m->valuestring] = 0;
            strcpy(b, sp + 1);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1)) && strlen(cJSON_GetArrayItem(m, 0)->valuestring) < sizeof a &&
                   strlen(cJSON_GetArrayItem(m, 1)->valuestring) < sizeof b) {
            strcpy(a, cJSON_GetArrayItem(m, 0)->valuestring);
            strcpy(b, cJSON_GetArrayItem(m, 1)->valuestring);
        } else {
            return peft_fail(err, PEFT_EFORMAT, "%s: merge %d is neither \"A B\" nor [A, B]", path, rank);
        }
        snprintf(ab, sizeof ab, "%s%s", a, b);
        int32_t ia, ib, iab;
        size_t alen = strlen(a);
        if (!strncmp(b, "\xe2\x96\x81", 3) && (alen < 3 || strcmp(a + alen - 3, "\xe2\x96\x81"))) f->t.sp_word_split = 0;
        /* a merge whose parts or result are not in the vocabulary can never apply */
        if (lookup_text(f, a, &ia) && lookup_text(f, b, &ib) && lookup_text(f, ab, &iab) &&
            tok_mergemap_put(&f->t.merges, ia, ib, (uint32_t)rank, iab))
            return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        rank++;
    }
    return 0;
}

static int cmp_added(const void *x, const void *y) {
    const tok_added *a = x, *b = y;
    unsigned char ca = (unsigned char)a->text[0], cb = (unsigned char)b->text[0];
    if (ca != cb) return ca < cb ? -1 : 1;
    return a->len > b->len ? -1 : a->len < b->len ? 1 : 0;
}

static int load_added(tok_full *f, const cJSON *arr, const char *path, peft_err *err) {
    peft_tokenizer *t = &f->t;
    int n = cJSON_GetArraySize(arr);
    if (!(t->added = calloc((size_t)(n ? n : 1), sizeof *t->added))) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    const cJSON *a;
    cJSON_ArrayForEach(a, arr) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id"), *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || id->valuedouble < 0 || id->valuedouble >= t->n_ids)
            return peft_fail(err, PEFT_EFORMAT, "%s: added_tokens[%d] needs an \"id\" and a \"content\"", path, t->n_added);
        size_t len = strlen(content->valuestring);
        if (!len) return peft_fail(err, PEFT_EFORMAT, "%s: added_tokens[%d] is empty", path, t->n_added);
        char *s = pool_add(&f->pool, content->valuestring, len);
        if (!s) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        int32_t i = (int32_t)id->valuedouble;
        tok_added *ad = &t->added[t->n_added++];
        ad->text = s;
        ad->len = (uint32_t)len;
        ad->id = i;
        ad->lstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "lstrip"));
        ad->rstrip = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "rstrip"));
        ad->single_word = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "single_word"));
        t->text[i] = s;
        t->text_len[i] = (uint32_t)len;
        t->flags[i] = TOK_ADDED | (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special")) ? TOK_SPECIAL : 0);
        if (tok_strmap_put(&t->vocab, s, (uint32_t)len, i)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    }
    qsort(t->added, (size_t)t->n_added, sizeof *t->added, cmp_added);
    for (int c = 0, k = 0; c <= 256; c++) {
        while (k < t->n_added && (unsigned char)t->added[k].text[0] < c) k++;
        t->first_added[c] = k;
    }
    return 0;
}

static int push_id(int32_t **v, int *n, int32_t id) {
    int32_t *g = realloc(*v, (size_t)(*n + 1) * sizeof *g);
    if (!g) return -1;
    g[(*n)++] = id;
    *v = g;
    return 0;
}

static int parse_post(peft_tokenizer *t, const cJSON *o, const char *path, peft_err *err) {
    if (!o || cJSON_IsNull(o)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (!strcmp(ty, "ByteLevel")) return 0; /* offsets only; no tokens */
    if (!strcmp(ty, "Sequence")) {
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(o, "processors")) {
            int rc = parse_post(t, p, path, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) {
        const cJSON *cls = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "cls"), 1);
        const cJSON *sep = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "sep"), 1);
        if (!cJSON_IsNumber(cls) || !cJSON_IsNumber(sep))
            return peft_fail(err, PEFT_EFORMAT, "%s: %s without cls/sep", path, ty);
        /* the ids are emitted as they are: they must be ids of the vocabulary */
        if (cls->valuedouble < 0 || cls->valuedouble >= t->n_ids || sep->valuedouble < 0 || sep->valuedouble >= t->n_ids)
            return peft_fail(err, PEFT_EFORMAT, "%s: %s has a cls/sep id outside the vocabulary", path, ty);
        if (push_id(&t->post_prefix, &t->n_post_prefix, cls->valueint) ||
            push_id(&t->post_suffix, &t->n_post_suffix, sep->valueint))
            return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        return 0;
    }
    if (strcmp(ty, "TemplateProcessing"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: post_processor \"%s\" is not supported", path, ty);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens"), *it;
    int seen_a = 0;
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (!sp) {
            seen_a = 1;
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        const cJSON *def = cJSON_IsString(name) ? cJSON_GetObjectItemCaseSensitive(specials, name->valuestring) : NULL;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *id;
        if (!cJSON_IsArray(ids))
            return peft_fail(err, PEFT_EFORMAT, "%s: post_processor names special token \"%s\" it does not define", path,
                             cJSON_IsString(name) ? name->valuestring : "?");
        cJSON_ArrayForEach(id, ids) {
            if (!cJSON_IsNumber(id) || id->valueint < 0 || id->valueint >= t->n_ids)
                return peft_fail(err, PEFT_EFORMAT, "%s: post_processor has a bad id", path);
            if (seen_a ? push_id(&t->post_suffix, &t->n_post_suffix, id->valueint) : push_id(&t->post_prefix, &t->n_post_prefix, id->valueint))
                return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        }
    }
    return 0;
}

/* bos_token & co. are a string or an AddedToken object {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Applies the text of a tokenizer_config.json (`path` names it in messages). */
static int load_config(tok_full *f, const char *text, size_t len, const char *path, peft_err *err) {
    peft_tokenizer *t = &f->t;
    cJSON *cfg;
    int rc = peft_json_parse(text, len, path, &cfg, err);
    if (rc) return rc;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token"), *pad = config_token(cfg, "pad_token");
    if ((bos && !(t->bos_text = strdup(bos))) || (eos && !(t->eos_text = strdup(eos)))) {
        cJSON_Delete(cfg);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    }
    /* a token the vocabulary lacks leaves its id at -1 rather than failing the load */
    if (bos) t->bos_id = peft_tokenizer_token_id(t, bos);
    if (eos) t->eos_id = peft_tokenizer_token_id(t, eos);
    if (pad) t->pad_id = peft_tokenizer_token_id(t, pad);
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens"), *it;
    cJSON_ArrayForEach(it, extra) {
        const char *s = cJSON_IsString(it) ? it->valuestring : config_token(it, "content");
        int id = s ? peft_tokenizer_token_id(t, s) : -1;
        if (id >= 0) t->flags[id] |= TOK_SPECIAL;
    }
    /* transformers' current default is not to clean up; files of these models say so anyway */
    t->clean_up_spaces = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "clean_up_tokenization_spaces"));
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    const cJSON *named = cJSON_IsArray(ct) ? ct : NULL;
    cJSON_ArrayForEach(it, named) {
        const char *name = config_token(it, "name"), *text = config_token(it, "template");
        if (name && text && !strcmp(name, "default")) tmpl = text;
    }
    if (tmpl && !(t->chat_template = strdup(tmpl))) rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    cJSON_Delete(cfg);
    return rc;
}

static int load_model(tok_full *f, const cJSON *root, const char *path, peft_err *err) {
    peft_tokenizer *t = &f->t;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *it;
    if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE"))
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", path, type->valuestring);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return peft_fail(err, PEFT_EFORMAT, "%s: model has no \"vocab\" object or \"merges\" list", path);
    const char *sfx[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, sfx[i]);
        if (cJSON_IsString(v) && v->valuestring[0])
            return peft_fail(err, PEFT_EUNSUPPORTED, "%s: BPE with a %s is not supported", path, sfx[i]);
    }
    int max_id = -1;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1e8)
            return peft_fail(err, PEFT_EFORMAT, "%s: vocab entry \"%s\" has no valid id", path, it->string);
        if (it->valueint > max_id) max_id = it->valueint;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (cJSON_IsNumber(id) && id->valuedouble <= 1e8 && id->valueint > max_id) max_id = id->valueint;
    }
    t->n_ids = max_id + 1;
    t->text = calloc((size_t)t->n_ids + 1, sizeof *t->text);
    t->text_len = calloc((size_t)t->n_ids + 1, sizeof *t->text_len);
    t->flags = calloc((size_t)t->n_ids + 1, 1);
    if (!t->text || !t->text_len || !t->flags || tok_strmap_init(&t->vocab, (size_t)cJSON_GetArraySize(vocab) + 1024))
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    cJSON_ArrayForEach(it, vocab) {
        uint32_t len;
        char *s = vocab_text(f, it->string, &len);
        if (!s || tok_strmap_put(&t->vocab, s, len, it->valueint)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        t->text[it->valueint] = s;
        t->text_len[it->valueint] = len;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b, hex[8];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        t->byte_id[b] = t->byte_level ? tok_strmap_get(&t->vocab, &c, 1) : tok_strmap_get(&t->vocab, hex, 6);
        if (t->byte_level && t->byte_id[b] < 0)
            return peft_fail(err, PEFT_EFORMAT, "%s: byte-level vocabulary lacks the symbol of byte 0x%02X", path, b);
    }
    t->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    int rc = load_merges(f, merges, path, err);
    if (!rc && cJSON_IsArray(added)) rc = load_added(f, added, path, err);
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (!rc && cJSON_IsString(unk)) t->unk_id = peft_tokenizer_token_id(t, unk->valuestring);
    return rc;
}

void peft_tokenizer_free(peft_tokenizer *tok) {
    if (!tok) return;
    tok_full *f = (tok_full *)tok;
    for (size_t i = 0; i < f->pool.n; i++) free(f->pool.s[i]);
    free(f->pool.s);
    free(tok->text);
    free(tok->text_len);
    free(tok->flags);
    tok_strmap_free(&tok->vocab);
    tok_mergemap_free(&tok->merges);
    free(tok->added);
    tok_free_steps(tok);
    for (int i = 0; i < tok->n_dec; i++) free(tok->dec[i].a), free(tok->dec[i].b);
    free(tok->dec);
    free(tok->post_prefix);
    free(tok->post_suffix);
    free(tok->bos_text);
    free(tok->eos_text);
    free(tok->chat_template);
    free(f);
}

int peft_tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                             const char *what, peft_tokenizer **out, peft_err *err) {
    char path[4096], cfg_path[4096];
    *out = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", what);
    snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", what);
    tok_full *f = calloc(1, sizeof *f);
    if (!f) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    peft_tokenizer *t = &f->t;
    t->unk_id = t->bos_id = t->eos_id = t->pad_id = -1;
    cJSON *root = NULL;
    int rc = peft_json_parse(tokenizer_json, len, path, &root, err);
    if (!rc && !cJSON_IsObject(root)) rc = peft_fail(err, PEFT_EFORMAT, "%s: not a JSON object", path);
    if (!rc) rc = tok_parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, err);
    if (!rc) rc = tok_parse_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, err);
    if (!rc) rc = tok_parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), path, err);
    if (!rc) rc = load_model(f, root, path, err);
    if (!rc) rc = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, err);
    cJSON_Delete(root);
    if (!rc && config_json) rc = load_config(f, config_json, config_len, cfg_path, err);
    if (rc) {
        peft_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return PEFT_OK;
}

int peft_tokenizer_load(const char *model_dir, peft_tokenizer **out, peft_err *err) {
    char path[4096];
    char *json, *cfg = NULL;
    size_t len, cfg_len = 0;
    *out = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    int rc = peft_read_file(path, &json, &len, err);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    if (peft_file_exists(path)) rc = peft_read_file(path, &cfg, &cfg_len, err);
    if (!rc) rc = peft_tokenizer_load_json(json, len, cfg, cfg_len, model_dir, out, err);
    free(json);
    free(cfg);
    return rc;
}

/* ---- encoding ---- */

static size_t trim_end(const char *s, size_t b, size_t e) {
    while (e > b) {
        size_t k = e - 1;
        while (k > b && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        uint32_t cp;
        utf8_decode(s + k, e - k, &cp);
        if (!tok_is_space(cp)) break;
        e = k;
    }
    return e;
}

static size_t trim_start(const char *s, size_t b, size_t e) {
    while (b < e) {
        uint32_t cp;
        size_t k = utf8_decode(s + b, e - b, &cp);
        if (!tok_is_space(cp)) break;
        b += k;
    }
    return b;
}

/* A letter, digit or '_' (any non-ASCII byte counts as part of a word). */
static int word_byte(unsigned char c) {
    return c >= 0x80 || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* The longest added token at s[i..n), or NULL. A single_word token must not touch a word. */
static const tok_added *match_added(const peft_tokenizer *t, const char *s, size_t i, size_t n) {
    unsigned char c = (unsigned char)s[i];
    for (int k = t->first_added[c]; k < t->first_added[c + 1]; k++) {
        const tok_added *a = &t->added[k];
        if (a->len > n - i || memcmp(s + i, a->text, a->len)) continue;
        if (a->single_word && ((i > 0 && word_byte((unsigned char)s[i - 1])) || (i + a->len < n && word_byte((unsigned char)s[i + a->len]))))
            continue;
        return a;
    }
    return NULL;
}

static int section(const peft_tokenizer *t, tok_scratch *sc, const char *s, size_t b, size_t e, tok_out *out, peft_err *err) {
    if (e <= b) return 0;
    int rc = tok_encode_section(t, sc, s + b, e - b, (uint32_t)b, b == 0, out);
    if (rc < 0) return peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    if (rc > 0) return peft_fail(err, PEFT_EINVAL, "tokenizer: the text has a character the vocabulary lacks and there is no unk token");
    return 0;
}

int peft_tokenizer_encode_spans(const peft_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                                uint32_t **starts, uint32_t **ends, size_t *n_ids, peft_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (starts) *starts = NULL;
    if (ends) *ends = NULL;
    if (len > UINT32_MAX - 16) return peft_fail(err, PEFT_EINVAL, "tokenizer: text of %zu bytes is too long", len);
    for (size_t i = 0; i < len;) {
        size_t k = utf8_valid_len(text + i, len - i);
        if (!k) return peft_fail(err, PEFT_EINVAL, "tokenizer: text is not valid UTF-8 at byte %zu", i);
        i += k;
    }
    tok_out out = {0};
    tok_scratch sc = {0};
    int rc = 0;
    for (int i = 0; add_special && !rc && i < t->n_post_prefix; i++)
        if (tok_out_push(&out, t->post_prefix[i], 0, 0)) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    size_t sec = 0, i = 0;
    int trim_next = 0;
    while (!rc && i < len) {
        const tok_added *a = t->first_added[(unsigned char)text[i]] < t->first_added[(unsigned char)text[i] + 1]
                                 ? match_added(t, text, i, len) : NULL;
        if (!a) {
            i++;
            continue;
        }
        size_t b = trim_next ? trim_start(text, sec, i) : sec, e = a->lstrip ? trim_end(text, b, i) : i;
        rc = section(t, &sc, text, b, e, &out, err);
        if (!rc && tok_out_push(&out, a->id, (uint32_t)i, (uint32_t)(i + a->len))) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
        i += a->len;
        sec = i;
        trim_next = a->rstrip;
    }
    if (!rc) rc = section(t, &sc, text, trim_next ? trim_start(text, sec, len) : sec, len, &out, err);
    for (int k = 0; add_special && !rc && k < t->n_post_suffix; k++)
        if (tok_out_push(&out, t->post_suffix[k], (uint32_t)len, (uint32_t)len)) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    tok_scratch_free(&sc);
    if (!rc && !out.ids && !(out.ids = malloc(sizeof *out.ids))) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    if (rc) {
        free(out.ids), free(out.start), free(out.end);
        return rc;
    }
    *ids = out.ids;
    *n_ids = out.n;
    if (starts) *starts = out.start;
    else free(out.start);
    if (ends) *ends = out.end;
    else free(out.end);
    return PEFT_OK;
}

int peft_tokenizer_encode(const peft_tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                          size_t *n_ids, peft_err *err) {
    return peft_tokenizer_encode_spans(tok, text, len, add_special, ids, NULL, NULL, n_ids, err);
}

int peft_tokenizer_vocab_size(const peft_tokenizer *tok) { return tok->n_ids; }
int peft_tokenizer_bos_id(const peft_tokenizer *tok) { return tok->bos_id; }
int peft_tokenizer_eos_id(const peft_tokenizer *tok) { return tok->eos_id; }
int peft_tokenizer_pad_id(const peft_tokenizer *tok) { return tok->pad_id; }
const char *peft_tokenizer_bos_text(const peft_tokenizer *tok) { return tok->bos_text; }
const char *peft_tokenizer_eos_text(const peft_tokenizer *tok) { return tok->eos_text; }
const char *peft_tokenizer_chat_template(const peft_tokenizer *tok) { return tok->chat_template; }

const char *peft_tokenizer_added_text(const peft_tokenizer *tok, int id) {
    return id >= 0 && id < tok->n_ids && (tok->flags[id] & TOK_ADDED) ? tok->text[id] : NULL;
}

int peft_tokenizer_token_id(const peft_tokenizer *tok, const char *text) {
    for (int k = 0; k < tok->n_added; k++)
        if (!strcmp(tok->added[k].text, text)) return tok->added[k].id;
    return tok_strmap_get(&tok->vocab, text, strlen(text));
}
