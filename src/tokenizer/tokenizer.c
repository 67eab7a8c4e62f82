/* tokenizer.c: loading tokenizer.json / tokenizer_config.json, and the encode pipeline:
 * added tokens are cut out of the raw text first (leftmost-longest, found with a trie, trie.c;
 * never split), each section in between is normalized, pre-tokenized and merged (pretok.c,
 * bpe.c or wordpiece.c), then the post-processor's template puts its tokens (BOS, [CLS]/[SEP]...)
 * around the sequence, or the pair of sequences, and gives each token its type id. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"
#include "io/gguf.h"
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
        /* HF refuses a file whose merge names a token the vocabulary lacks */
        const char *missing = !lookup_text(f, a, &ia) ? a : !lookup_text(f, b, &ib) ? b : !lookup_text(f, ab, &iab) ? ab : NULL;
        if (missing)
            return peft_fail(err, PEFT_EFORMAT, "%s: merge %d (\"%s\" + \"%s\") needs \"%s\", which is not in the vocabulary",
                             path, rank, a, b, missing);
        if (tok_mergemap_put(&f->t.merges, ia, ib, (uint32_t)rank, iab))
            return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        rank++;
    }
    return 0;
}

/* Fills t->added in two groups, as HF matches them in two passes: the tokens with
 * "normalized": false first (t->n_raw_added of them), then the normalized ones; file order
 * within each. */
static int load_added(tok_full *f, const cJSON *arr, const char *path, peft_err *err) {
    peft_tokenizer *t = &f->t;
    int n = cJSON_GetArraySize(arr);
    if (!(t->added = calloc((size_t)(n ? n : 1), sizeof *t->added))) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *a;
        int index = 0;
        cJSON_ArrayForEach(a, arr) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id"), *content = cJSON_GetObjectItemCaseSensitive(a, "content");
            const cJSON *normalized = cJSON_GetObjectItemCaseSensitive(a, "normalized");
            int special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"));
            /* HF's default: special tokens are not normalized */
            if ((cJSON_IsBool(normalized) ? cJSON_IsTrue(normalized) : !special) != pass) {
                index++;
                continue;
            }
            if (!cJSON_IsNumber(id) || !cJSON_IsString(content) || id->valuedouble < 0 || id->valuedouble >= t->n_ids)
                return peft_fail(err, PEFT_EFORMAT, "%s: added_tokens[%d] needs an \"id\" and a \"content\"", path, index);
            size_t len = strlen(content->valuestring);
            if (!len) return peft_fail(err, PEFT_EFORMAT, "%s: added_tokens[%d] is empty", path, index);
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
            t->flags[i] = TOK_ADDED | (special ? TOK_SPECIAL : 0);
            if (tok_strmap_put(&t->vocab, s, (uint32_t)len, i)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
            index++;
        }
        if (pass == 0) t->n_raw_added = t->n_added;
    }
    return 0;
}

/* The matcher of the added tokens: their trie, and for single_word tokens the class of word
 * characters of HF's check (regex-syntax's \w: Alphabetic, marks, decimal digits, connector
 * punctuation, ZWNJ/ZWJ; so "²" or an emoji is not part of a word, "é" or "Ⓐ" is). */
static int build_matcher(peft_tokenizer *t, const char *path, peft_err *err) {
    const char **s = malloc((size_t)(t->n_added ? t->n_added : 1) * sizeof *s);
    uint32_t *len = malloc((size_t)(t->n_added ? t->n_added : 1) * sizeof *len);
    int single_word = 0, rc = s && len ? 0 : -1;
    for (int k = 0; k < t->n_added && !rc; k++) {
        s[k] = t->added[k].text;
        len[k] = t->added[k].len;
        single_word |= t->added[k].single_word;
    }
    if (!rc) rc = tok_trie_build(&t->added_trie[0], s, len, t->n_raw_added);
    if (!rc) rc = tok_trie_build(&t->added_trie[1], s + t->n_raw_added, len + t->n_raw_added, t->n_added - t->n_raw_added);
    free(s);
    free(len);
    if (rc) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    if (!single_word) return 0;
    int ec;
    PCRE2_SIZE eo;
    t->word_re = pcre2_compile((PCRE2_SPTR) "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]", PCRE2_ZERO_TERMINATED,
                               PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!t->word_re) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: single_word tokens need PCRE2 10.40 or later (\\p{Alphabetic})", path);
    return 0;
}

static int push_piece(peft_tokenizer *t, int pair, int seq, int32_t id, uint32_t type_id) {
    tok_post_piece *g = realloc(t->post[pair], (size_t)(t->n_post[pair] + 1) * sizeof *g);
    if (!g) return -1;
    g[t->n_post[pair]++] = (tok_post_piece){seq, id, type_id};
    t->post[pair] = g;
    return 0;
}

/* BertProcessing and RobertaProcessing as templates: [CLS] A [SEP] (B [SEP]) with B's part of
 * type 1; <s> A </s> (</s> B </s>), every type 0 ("Roberta is weird", says the library). */
static int parse_cls_sep(peft_tokenizer *t, const cJSON *o, const char *ty, const char *path, peft_err *err) {
    const cJSON *cls = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "cls"), 1);
    const cJSON *sep = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "sep"), 1);
    if (!cJSON_IsNumber(cls) || !cJSON_IsNumber(sep))
        return peft_fail(err, PEFT_EFORMAT, "%s: %s without cls/sep", path, ty);
    /* the ids are emitted as they are: they must be ids of the vocabulary */
    if (cls->valuedouble < 0 || cls->valuedouble >= t->n_ids || sep->valuedouble < 0 || sep->valuedouble >= t->n_ids)
        return peft_fail(err, PEFT_EFORMAT, "%s: %s has a cls/sep id outside the vocabulary", path, ty);
    int32_t c = cls->valueint, e = sep->valueint;
    uint32_t b = strcmp(ty, "RobertaProcessing") ? 1 : 0;
    int rc = push_piece(t, 0, -1, c, 0) || push_piece(t, 0, 0, 0, 0) || push_piece(t, 0, -1, e, 0) ||
             push_piece(t, 1, -1, c, 0) || push_piece(t, 1, 0, 0, 0) || push_piece(t, 1, -1, e, 0) ||
             (!b && push_piece(t, 1, -1, e, 0)) || push_piece(t, 1, 1, 0, b) || push_piece(t, 1, -1, e, b);
    return rc ? peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path) : 0;
}

/* One of TemplateProcessing's templates ("single" or "pair": lists of {"SpecialToken": {"id",
 * "type_id"}} and {"Sequence": {"id": "A" | "B", "type_id"}}) into t->post[pair]. */
static int parse_template(peft_tokenizer *t, const cJSON *tmpl, const cJSON *specials, int pair, const char *path, peft_err *err) {
    const char *name = pair ? "pair" : "single";
    const cJSON *it;
    int seen[2] = {0, 0};
    cJSON_ArrayForEach(it, tmpl) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken"), *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        const cJSON *piece = sp ? sp : sq, *id = cJSON_GetObjectItemCaseSensitive(piece, "id");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(piece, "type_id");
        if (!cJSON_IsString(id) || (type && !(cJSON_IsNumber(type) && type->valuedouble >= 0 && type->valuedouble <= 1e6)))
            return peft_fail(err, PEFT_EFORMAT, "%s: post_processor's %s template has a piece without an id or with a bad type_id", path, name);
        uint32_t type_id = type ? (uint32_t)type->valuedouble : 0;
        if (sq) {
            int seq = !strcmp(id->valuestring, "A") ? 0 : !strcmp(id->valuestring, "B") ? 1 : -1;
            if (seq < 0 || (seq && !pair) || seen[seq]++)
                return peft_fail(err, PEFT_EFORMAT, "%s: post_processor's %s template has sequence \"%s\" misplaced or repeated", path, name, id->valuestring);
            if (push_piece(t, pair, seq, 0, type_id)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
            continue;
        }
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(specials, id->valuestring);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids"), *v;
        if (!cJSON_IsArray(ids))
            return peft_fail(err, PEFT_EFORMAT, "%s: post_processor names special token \"%s\" it does not define", path, id->valuestring);
        cJSON_ArrayForEach(v, ids) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= t->n_ids)
                return peft_fail(err, PEFT_EFORMAT, "%s: post_processor has a bad id", path);
            if (push_piece(t, pair, -1, v->valueint, type_id)) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
        }
    }
    if (!seen[0] || (pair && !seen[1]))
        return peft_fail(err, PEFT_EFORMAT, "%s: post_processor's %s template lacks sequence %s", path, name, seen[0] ? "B" : "A");
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
    int known = !strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing") || !strcmp(ty, "TemplateProcessing");
    if (!known) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: post_processor \"%s\" is not supported", path, ty);
    if (t->n_post[0])
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: a Sequence of post-processors that add tokens twice is not supported", path);
    if (strcmp(ty, "TemplateProcessing")) return parse_cls_sep(t, o, ty, path, err);
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    const cJSON *pair = cJSON_GetObjectItemCaseSensitive(o, "pair");
    int rc = parse_template(t, cJSON_GetObjectItemCaseSensitive(o, "single"), specials, 0, path, err);
    if (!rc && cJSON_GetArraySize(pair) > 0) return parse_template(t, pair, specials, 1, path, err);
    /* without a pair template (none, or [], as gguf_vocab.c and some files write): the single one
     * with B (type 1) after A */
    for (int i = 0; !rc && i < t->n_post[0]; i++) {
        tok_post_piece q = t->post[0][i];
        if (push_piece(t, 1, q.seq, q.id, q.type_id) || (q.seq == 0 && push_piece(t, 1, 1, 0, 1)))
            rc = peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
    }
    return rc;
}

/* Without a post-processor that adds tokens: A alone, or A then B (type 1), as the library's
 * default processing gives. */
static int default_post(peft_tokenizer *t, const char *path, peft_err *err) {
    if (t->n_post[0]) return 0;
    if (push_piece(t, 0, 0, 0, 0) || push_piece(t, 1, 0, 0, 0) || push_piece(t, 1, 1, 0, 1))
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", path);
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
    int wordpiece = cJSON_IsString(type) && !strcmp(type->valuestring, "WordPiece");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "BPE") && !wordpiece)
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE and WordPiece)", path, type->valuestring);
    if (wordpiece && !cJSON_IsObject(vocab))
        return peft_fail(err, PEFT_EFORMAT, "%s: WordPiece model has no \"vocab\" object", path);
    if (!wordpiece && (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)))
        return peft_fail(err, PEFT_EFORMAT, "%s: model has no \"vocab\" object or \"merges\" list", path);
    const char *sfx[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2 && !wordpiece; i++) {
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
        /* -1 where a byte-level vocabulary lacks the byte's symbol: HF loads such files and
         * drops the byte when encoding (see bpe_word) */
        t->byte_id[b] = t->byte_level ? tok_strmap_get(&t->vocab, &c, 1) : tok_strmap_get(&t->vocab, hex, 6);
    }
    t->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    int rc = wordpiece ? tok_wordpiece_load(t, model, path, err) : load_merges(f, merges, path, err);
    if (!rc && cJSON_IsArray(added)) rc = load_added(f, added, path, err);
    if (!rc) rc = build_matcher(t, path, err);
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (!rc && !wordpiece && cJSON_IsString(unk)) t->unk_id = peft_tokenizer_token_id(t, unk->valuestring);
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
    tok_trie_free(&tok->added_trie[0]);
    tok_trie_free(&tok->added_trie[1]);
    if (tok->word_re) pcre2_code_free(tok->word_re);
    tok_free_steps(tok);
    for (int i = 0; i < tok->n_dec; i++) free(tok->dec[i].a), free(tok->dec[i].b);
    free(tok->dec);
    free(tok->post[0]);
    free(tok->post[1]);
    free(tok->wp_prefix);
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
    if (!rc) rc = default_post(t, path, err);
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
    if (peft_gguf_is_file(model_dir)) return peft_gguf_tokenizer_load(model_dir, out, err); /* gguf_vocab.c */
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

/* Whitespace as HF's lstrip/rstrip see it: Rust's char::is_whitespace, Unicode White_Space
 * (U+0085 is, U+FEFF is not). */
static int white_space(uint32_t cp) {
    return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Start of the character that ends at byte e (> 0) of valid UTF-8. */
static size_t char_before(const char *s, size_t e) {
    size_t k = e - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

static size_t trim_end(const char *s, size_t b, size_t e) {
    while (e > b) {
        size_t k = char_before(s, e);
        uint32_t cp;
        utf8_decode(s + k, e - k, &cp);
        if (!white_space(cp)) break;
        e = k;
    }
    return e;
}

static size_t trim_start(const char *s, size_t b, size_t e) {
    while (b < e) {
        uint32_t cp;
        size_t k = utf8_decode(s + b, e - b, &cp);
        if (!white_space(cp)) break;
        b += k;
    }
    return b;
}

/* Whether the character at s[i..n) is a word character (t->word_re). Returns 1, 0, or -1 when
 * out of memory. */
static int word_char(const peft_tokenizer *t, tok_scratch *sc, const char *s, size_t i, size_t n) {
    if (!sc->md && !(sc->md = pcre2_match_data_create(1, NULL))) return -1;
    return pcre2_match(t->word_re, (PCRE2_SPTR)s, n, i, PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, sc->md, NULL) >= 0;
}

/* A single_word token matched at s[i..i+len) of the text s[b..e) counts only between non-word
 * characters (or the ends of that text). Returns 1, 0, or -1 when out of memory. */
static int single_word_ok(const peft_tokenizer *t, tok_scratch *sc, const char *s, size_t b, size_t i, size_t len, size_t e) {
    int before = i > b ? word_char(t, sc, s, char_before(s, i), e) : 0;
    int after = before == 0 && i + len < e ? word_char(t, sc, s, i + len, e) : 0;
    return before < 0 || after < 0 ? -1 : !before && !after;
}

static int section(const peft_tokenizer *t, tok_scratch *sc, const char *s, size_t b, size_t e, tok_out *out, peft_err *err) {
    if (e <= b) return 0;
    int rc = tok_encode_section(t, sc, s + b, e - b, (uint32_t)b, b == 0, out);
    return rc ? peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory") : 0;
}

/* Cuts the added tokens out of text[b..e) as HF's AddedVocabulary does: pass 0 finds the
 * non-normalized tokens in the text, then pass 1 the normalized ones in each section left
 * between them (in the raw text, not the normalized one: the same for the files in use). Each
 * pass is leftmost-longest and non-overlapping: the longest token at the first position that
 * has one; a single_word token touching a word is no token, and the search resumes after it (a
 * shorter token at the same place is not tried). lstrip/rstrip trim Unicode whitespace off the
 * sections around a token. The sections left by pass 1 are encoded (tok_encode_section). */
static int split_added(const peft_tokenizer *t, tok_scratch *sc, int pass, const char *text, size_t b, size_t e,
                       tok_out *out, peft_err *err) {
    const tok_trie *trie = &t->added_trie[pass];
    const tok_added *added = t->added ? t->added + (pass ? t->n_raw_added : 0) : NULL; /* NULL + 0 is UB */
    size_t sec = b, i = b;
    int trim_next = 0, rc = 0;
    while (!rc && i < e) {
        int k = trie->root[(unsigned char)text[i]] >= 0 ? tok_trie_longest(trie, text + i, e - i) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        const tok_added *a = &added[k];
        int ok = a->single_word ? single_word_ok(t, sc, text, b, i, a->len, e) : 1;
        if (ok < 0) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
        if (ok <= 0) {
            i += a->len;
            continue;
        }
        size_t sb = trim_next ? trim_start(text, sec, i) : sec, se = a->lstrip ? trim_end(text, sb, i) : i;
        rc = pass ? section(t, sc, text, sb, se, out, err) : split_added(t, sc, 1, text, sb, se, out, err);
        if (!rc && tok_out_push(out, a->id, (uint32_t)i, (uint32_t)(i + a->len))) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
        i += a->len;
        sec = i;
        trim_next = a->rstrip;
    }
    size_t sb = trim_next ? trim_start(text, sec, e) : sec;
    if (!rc) rc = pass ? section(t, sc, text, sb, e, out, err) : split_added(t, sc, 1, text, sb, e, out, err);
    return rc;
}

/* Puts n_seq (1 or 2) encoded sequences together as the post-processor's template says (its
 * special tokens only with add_special): ids and spans into *out, and the type ids into *types
 * when it is not NULL. A special token gets an empty span at 0, or at end_at once the
 * sequences are out. A sequence's start/end may be NULL (ids only: spans 0). */
static int apply_template(const peft_tokenizer *t, const tok_out seq[2], int n_seq, uint32_t end_at, int add_special,
                          tok_out *out, uint32_t **types, peft_err *err) {
    const tok_post_piece *tmpl = t->post[n_seq - 1];
    int n_tmpl = t->n_post[n_seq - 1], done = 0, rc = 0; /* done: the sequences before this piece are out */
    size_t n_types = 0;
    for (int i = 0; i < n_tmpl && !rc; i++) {
        const tok_post_piece *q = &tmpl[i];
        const tok_out *s = q->seq >= 0 ? &seq[q->seq] : NULL;
        if (!s && !add_special) continue;
        for (size_t j = 0; j < (s ? s->n : 1) && !rc; j++) {
            uint32_t at = done ? end_at : 0;
            if (s ? tok_out_push(out, s->ids[j], s->start ? s->start[j] : 0, s->end ? s->end[j] : 0)
                  : tok_out_push(out, q->id, at, at))
                rc = -1;
        }
        done |= q->seq >= 0;
        if (!rc && types) {
            uint32_t *g = realloc(*types, (out->n ? out->n : 1) * sizeof *g);
            if (!g) rc = -1;
            else for (*types = g; n_types < out->n; n_types++) g[n_types] = q->type_id;
        }
        if (rc) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    }
    if (!rc && !out->ids && !(out->ids = malloc(sizeof *out->ids))) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    if (!rc && types && !*types && !(*types = malloc(sizeof **types))) rc = peft_fail(err, PEFT_ENOMEM, "tokenizer: out of memory");
    if (rc) {
        free(out->ids), free(out->start), free(out->end);
        if (types) free(*types), *types = NULL;
        memset(out, 0, sizeof *out);
    }
    return rc;
}

/* Encodes n_seq (1 or 2) texts, each on its own, then apply_template. */
static int encode_template(const peft_tokenizer *t, const char *const text[2], const size_t len[2], int n_seq,
                           int add_special, tok_out *out, uint32_t **types, peft_err *err) {
    tok_out seq[2] = {{0}};
    tok_scratch sc = {0};
    int rc = 0;
    for (int k = 0; k < n_seq && !rc; k++) {
        if (len[k] > UINT32_MAX - 16) rc = peft_fail(err, PEFT_EINVAL, "tokenizer: text of %zu bytes is too long", len[k]);
        for (size_t i = 0; i < len[k] && !rc;) {
            size_t c = utf8_valid_len(text[k] + i, len[k] - i);
            if (!c) rc = peft_fail(err, PEFT_EINVAL, "tokenizer: %stext is not valid UTF-8 at byte %zu", k ? "second " : "", i);
            i += c;
        }
        if (!rc) rc = split_added(t, &sc, 0, text[k], 0, len[k], &seq[k], err);
    }
    tok_scratch_free(&sc);
    if (!rc) rc = apply_template(t, seq, n_seq, (uint32_t)len[n_seq - 1], add_special, out, types, err);
    for (int k = 0; k < 2; k++) free(seq[k].ids), free(seq[k].start), free(seq[k].end);
    return rc;
}

int peft_tokenizer_post_process(const peft_tokenizer *tok, const int32_t *a, size_t na, const int32_t *b, size_t nb,
                                int32_t **ids, uint32_t **type_ids, size_t *n_ids, peft_err *err) {
    tok_out seq[2] = {{.ids = (int32_t *)a, .n = na}, {.ids = (int32_t *)b, .n = nb}};
    tok_out out = {0};
    *ids = NULL;
    *type_ids = NULL;
    *n_ids = 0;
    int rc = apply_template(tok, seq, b ? 2 : 1, 0, 1, &out, type_ids, err);
    if (rc) return rc;
    free(out.start);
    free(out.end);
    *ids = out.ids;
    *n_ids = out.n;
    return PEFT_OK;
}

int peft_tokenizer_encode_spans(const peft_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                                uint32_t **starts, uint32_t **ends, size_t *n_ids, peft_err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (starts) *starts = NULL;
    if (ends) *ends = NULL;
    const char *texts[2] = {text, NULL};
    size_t lens[2] = {len, 0};
    tok_out out = {0};
    int rc = encode_template(t, texts, lens, 1, add_special, &out, NULL, err);
    if (rc) return rc;
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

int peft_tokenizer_encode_pair(const peft_tokenizer *tok, const char *a, size_t alen, const char *b, size_t blen,
                               int add_special, int32_t **ids, uint32_t **type_ids, size_t *n_ids, peft_err *err) {
    const char *texts[2] = {a, b};
    size_t lens[2] = {alen, blen};
    tok_out out = {0};
    *ids = NULL;
    *type_ids = NULL;
    *n_ids = 0;
    int rc = encode_template(tok, texts, lens, 2, add_special, &out, type_ids, err);
    if (rc) return rc;
    free(out.start);
    free(out.end);
    *ids = out.ids;
    *n_ids = out.n;
    return PEFT_OK;
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
    size_t n = strlen(text);
    int k = tok_trie_find(&tok->added_trie[0], text, n);
    if (k < 0 && (k = tok_trie_find(&tok->added_trie[1], text, n)) >= 0) k += tok->n_raw_added;
    return k >= 0 ? tok->added[k].id : tok_strmap_get(&tok->vocab, text, n);
}
