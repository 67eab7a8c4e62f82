/* pretok.c: normalizers and pre-tokenizers of tokenizer.json, applied to one section of text
 * (the text between two added tokens). Each step keeps, for every byte it produces, the offset
 * of the original byte it came from, so tokens can be traced back to the text (loss masks).
 *
 * Handled: normalizers Sequence, NFC, Prepend, Replace (String), Lowercase, Strip, BertNormalizer
 * (clean_text, handle_chinese_chars, strip_accents, lowercase); pre-tokenizers Sequence, Split
 * (Regex or String; every behavior; invert), ByteLevel (add_prefix_space, use_regex with the GPT-2
 * pattern), Metaspace, Digits, BertPreTokenizer. The BERT steps and Lowercase use the character
 * classes of the tokenizers library (nfc.h: uni_bert_flags, uni_lowercase). Regexes run on
 * PCRE2 (JIT) in UTF + UCP mode: \p{L}, \p{N} and \s are Unicode classes, lookaheads work. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "nfc.h"
#include "tok_internal.h"
#include "utf8.h"

/* ByteLevel's split pattern when use_regex is true (GPT-2's). */
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int tok_scratch_keep(tok_scratch *sc, void *p) {
    if (sc->n_blocks == sc->cap_blocks) {
        size_t cap = sc->cap_blocks ? sc->cap_blocks * 2 : 16;
        void **b = realloc(sc->blocks, cap * sizeof *b);
        if (!b) return free(p), -1;
        sc->blocks = b;
        sc->cap_blocks = cap;
    }
    sc->blocks[sc->n_blocks++] = p;
    return 0;
}

void *tok_scratch_alloc(tok_scratch *sc, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    return p && !tok_scratch_keep(sc, p) ? p : NULL;
}

void tok_scratch_free(tok_scratch *sc) {
    for (size_t i = 0; i < sc->n_blocks; i++) free(sc->blocks[i]);
    free(sc->blocks);
    free(sc->sym_id);
    free(sc->sym_start);
    free(sc->sym_len);
    free(sc->prev);
    free(sc->next);
    free(sc->heap);
    free(sc->buf);
    if (sc->md) pcre2_match_data_free(sc->md);
    memset(sc, 0, sizeof *sc);
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

/* Flattens nested Sequences: calls one(...) for each leaf object. */
typedef int (*leaf_fn)(peft_tokenizer *tok, const cJSON *o, const char *what, peft_err *err);
static int flatten(peft_tokenizer *tok, const cJSON *o, const char *list_key, leaf_fn one, const char *what, peft_err *err) {
    if (!o || cJSON_IsNull(o)) return 0;
    const char *type = jstr(o, "type");
    if (!type) return peft_fail(err, PEFT_EFORMAT, "%s: a step has no \"type\"", what);
    if (strcmp(type, "Sequence")) return one(tok, o, what, err);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, list_key), *it;
    if (!cJSON_IsArray(list)) return peft_fail(err, PEFT_EFORMAT, "%s: Sequence without \"%s\"", what, list_key);
    cJSON_ArrayForEach(it, list) {
        int rc = flatten(tok, it, list_key, one, what, err);
        if (rc) return rc;
    }
    return 0;
}

/* ---- normalizers ---- */

static int norm_one(peft_tokenizer *tok, const cJSON *o, const char *what, peft_err *err) {
    const char *type = jstr(o, "type");
    tok_norm n = {0};
    tok_norm *grown = realloc(tok->norm, (tok->n_norm + 1) * sizeof *grown);
    if (!grown) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    tok->norm = grown;
    if (!strcmp(type, "NFC")) {
        n.kind = TOK_NORM_NFC;
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(o, "prepend");
        if (!p) return peft_fail(err, PEFT_EFORMAT, "%s: Prepend normalizer without \"prepend\"", what);
        n.kind = TOK_NORM_PREPEND;
        n.a = dup_n(p, n.an = strlen(p));
    } else if (!strcmp(type, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(o, "content");
        if (!from || !to)
            return peft_fail(err, PEFT_EUNSUPPORTED, "%s: Replace normalizer: only a String pattern is supported", what);
        if (!*from) return peft_fail(err, PEFT_EFORMAT, "%s: Replace normalizer with an empty pattern", what);
        n.kind = TOK_NORM_REPLACE;
        n.a = dup_n(from, n.an = strlen(from));
        n.b = dup_n(to, n.bn = strlen(to));
    } else if (!strcmp(type, "Lowercase")) {
        n.kind = TOK_NORM_BERT;
        n.lowercase = 1;
    } else if (!strcmp(type, "BertNormalizer")) {
        const cJSON *sa = cJSON_GetObjectItemCaseSensitive(o, "strip_accents");
        n.kind = TOK_NORM_BERT;
        n.clean = jbool(o, "clean_text", 1);
        n.chinese = jbool(o, "handle_chinese_chars", 1);
        n.lowercase = jbool(o, "lowercase", 1);
        n.strip_accents = cJSON_IsBool(sa) ? cJSON_IsTrue(sa) : n.lowercase; /* null: as lowercase */
    } else if (!strcmp(type, "Strip")) {
        n.kind = TOK_NORM_STRIP;
        n.left = jbool(o, "strip_left", 1);
        n.right = jbool(o, "strip_right", 1);
    } else {
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: normalizer \"%s\" is not supported", what, type);
    }
    if ((n.kind == TOK_NORM_PREPEND && !n.a) || (n.kind == TOK_NORM_REPLACE && (!n.a || !n.b))) {
        free(n.a);
        free(n.b);
        return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    }
    tok->norm[tok->n_norm++] = n;
    return 0;
}

int tok_parse_normalizer(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err) {
    return flatten(tok, cjson, "normalizers", norm_one, what, err);
}

/* Hands an output of nfc_normalize / nfd_normalize to sc and makes it the piece. */
static int keep_normalized(tok_scratch *sc, tok_piece *p, char *o, size_t on, uint32_t *a) {
    if (tok_scratch_keep(sc, o)) return free(a), -1;
    if (tok_scratch_keep(sc, a)) return -1;
    p->s = o, p->n = on, p->align = a;
    return 0;
}

/* One pass over the characters of p into sc memory (at most 3 output bytes per input byte):
 * stage 0 is clean_text and handle_chinese_chars, stage 1 the removal of nonspacing marks (after
 * NFD) and lowercase, in the order of the library's BertNormalizer. */
static int bert_pass(const tok_norm *nm, tok_scratch *sc, tok_piece *p, int stage) {
    char *o = tok_scratch_alloc(sc, 3 * p->n + 1);
    uint32_t *a = tok_scratch_alloc(sc, (3 * p->n + 1) * sizeof *a);
    if (!o || !a) return -1;
    size_t w = 0;
    for (size_t i = 0; i < p->n;) {
        uint32_t cp, cps[3];
        size_t k = utf8_decode(p->s + i, p->n - i, &cp);
        int f = uni_bert_flags(cp), m = 1;
        cps[0] = cp;
        if (stage == 0 && nm->clean && (f & UNI_BERT_DROP)) m = 0;
        else if (stage == 0 && nm->clean && (f & UNI_BERT_SPACE)) cps[0] = ' ';
        else if (stage == 0 && nm->chinese && (f & UNI_BERT_CJK)) cps[0] = ' ', cps[1] = cp, cps[2] = ' ', m = 3;
        else if (stage == 1 && nm->strip_accents && (f & UNI_BERT_MN)) m = 0;
        else if (stage == 1 && nm->lowercase) m = uni_lowercase(cp, cps);
        uint32_t orig = tok_piece_orig(p, i);
        for (int j = 0; j < m; j++) {
            size_t e = utf8_encode(cps[j], o + w);
            while (e--) a[w++] = orig;
        }
        i += k;
    }
    p->s = o, p->n = w, p->align = a;
    return 0;
}

static int bert_normalize(const tok_norm *nm, tok_scratch *sc, tok_piece *p) {
    if ((nm->clean || nm->chinese) && bert_pass(nm, sc, p, 0)) return -1;
    if (nm->strip_accents && !nfd_is_trivial(p->s, p->n)) {
        char *o;
        uint32_t *a;
        size_t on;
        if (nfd_normalize(p->s, p->n, p->align, p->base, &o, &on, &a) || keep_normalized(sc, p, o, on, a)) return -1;
    }
    return (nm->strip_accents || nm->lowercase) ? bert_pass(nm, sc, p, 1) : 0;
}

/* Applies one normalizer to p, writing a new piece into sc memory. Returns 0 or -1 (memory). */
static int normalize(const tok_norm *nm, tok_scratch *sc, tok_piece *p) {
    size_t n = p->n;
    if (nm->kind == TOK_NORM_BERT) return bert_normalize(nm, sc, p);
    if (nm->kind == TOK_NORM_NFC) {
        if (nfc_is_trivial(p->s, n)) return 0;
        char *o;
        uint32_t *a;
        size_t on;
        return nfc_normalize(p->s, n, p->align, p->base, &o, &on, &a) || keep_normalized(sc, p, o, on, a) ? -1 : 0;
    }
    if (nm->kind == TOK_NORM_STRIP) {
        size_t b = 0, e = n;
        if (nm->left)
            while (b < e && isspace((unsigned char)p->s[b])) b++;
        if (nm->right)
            while (e > b && isspace((unsigned char)p->s[e - 1])) e--;
        p->s += b;
        p->n = e - b;
        if (p->align) p->align += b;
        else p->base += (uint32_t)b;
        return 0;
    }
    size_t cap = nm->kind == TOK_NORM_PREPEND ? n + nm->an
               : nm->kind == TOK_NORM_REPLACE ? n * (nm->bn > nm->an ? nm->bn : nm->an) / nm->an + nm->bn + 1
                                              : n;
    char *o = tok_scratch_alloc(sc, cap + 1);
    uint32_t *a = tok_scratch_alloc(sc, (cap + 1) * sizeof *a);
    if (!o || !a) return -1;
    size_t w = 0;
    if (nm->kind == TOK_NORM_PREPEND) {
        if (n == 0) return 0; /* HF prepends nothing to an empty string */
        uint32_t o0 = tok_piece_orig(p, 0);
        for (size_t i = 0; i < nm->an; i++) o[w] = nm->a[i], a[w++] = o0;
        for (size_t i = 0; i < n; i++) o[w] = p->s[i], a[w++] = tok_piece_orig(p, i);
    } else if (nm->kind == TOK_NORM_REPLACE) {
        for (size_t i = 0; i < n;) {
            if (i + nm->an <= n && !memcmp(p->s + i, nm->a, nm->an)) {
                uint32_t oi = tok_piece_orig(p, i);
                for (size_t j = 0; j < nm->bn; j++) o[w] = nm->b[j], a[w++] = oi;
                i += nm->an;
            } else {
                o[w] = p->s[i], a[w++] = tok_piece_orig(p, i);
                i++;
            }
        }
    }
    p->s = o, p->n = w, p->align = a;
    return 0;
}

/* ---- pre-tokenizers ---- */

static pcre2_code *compile(const char *pattern, uint32_t extra, const char *what, peft_err *err) {
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | extra, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        peft_fail(err, PEFT_EUNSUPPORTED, "%s: regex /%s/ at offset %zu: %s", what, pattern, (size_t)eo, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is absent */
    return re;
}

static int pre_one(peft_tokenizer *tok, const cJSON *o, const char *what, peft_err *err) {
    const char *type = jstr(o, "type");
    tok_pre p = {0};
    tok_pre *grown = realloc(tok->pre, (tok->n_pre + 1) * sizeof *grown);
    if (!grown) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    tok->pre = grown;
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
        const char *rx = jstr(pat, "Regex"), *lit = jstr(pat, "String"), *beh = jstr(o, "behavior");
        if (!rx && !lit) return peft_fail(err, PEFT_EFORMAT, "%s: Split without a Regex or String pattern", what);
        p.kind = TOK_PRE_SPLIT;
        p.invert = jbool(o, "invert", 0);
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        p.behavior = -1;
        for (int i = 0; i < 5; i++)
            if (beh && !strcmp(beh, names[i])) p.behavior = i;
        if (p.behavior < 0) return peft_fail(err, PEFT_EUNSUPPORTED, "%s: Split behavior \"%s\" is not supported", what, beh ? beh : "(none)");
        if (!(p.re = compile(rx ? rx : lit, rx ? 0 : PCRE2_LITERAL, what, err))) return err ? err->code : PEFT_EUNSUPPORTED;
    } else if (!strcmp(type, "ByteLevel")) {
        p.kind = TOK_PRE_BYTELEVEL;
        p.add_prefix_space = jbool(o, "add_prefix_space", 0);
        if (jbool(o, "use_regex", 1) && !(p.re = compile(GPT2_PATTERN, 0, what, err))) return err ? err->code : PEFT_EUNSUPPORTED;
        tok->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(o, "replacement"), *scheme = jstr(o, "prepend_scheme");
        p.kind = TOK_PRE_METASPACE;
        if (!r) r = "\xe2\x96\x81";
        p.repl_n = strlen(r);
        if (p.repl_n >= sizeof p.repl) return peft_fail(err, PEFT_EFORMAT, "%s: Metaspace replacement too long", what);
        memcpy(p.repl, r, p.repl_n);
        p.prepend_scheme = jbool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        if (scheme) p.prepend_scheme = !strcmp(scheme, "first") ? TOK_PREPEND_FIRST : !strcmp(scheme, "never") ? TOK_PREPEND_NEVER : TOK_PREPEND_ALWAYS;
        p.split = jbool(o, "split", 1);
    } else if (!strcmp(type, "BertPreTokenizer")) {
        p.kind = TOK_PRE_BERT;
    } else if (!strcmp(type, "Digits")) {
        p.kind = TOK_PRE_DIGITS;
        p.individual_digits = jbool(o, "individual_digits", 0);
    } else {
        return peft_fail(err, PEFT_EUNSUPPORTED, "%s: pre-tokenizer \"%s\" is not supported", what, type);
    }
    tok->pre[tok->n_pre++] = p;
    return 0;
}

int tok_parse_pre_tokenizer(peft_tokenizer *tok, const void *cjson, const char *what, peft_err *err) {
    return flatten(tok, cjson, "pretokenizers", pre_one, what, err);
}

void tok_free_steps(peft_tokenizer *tok) {
    for (int i = 0; i < tok->n_norm; i++) free(tok->norm[i].a), free(tok->norm[i].b);
    for (int i = 0; i < tok->n_pre; i++)
        if (tok->pre[i].re) pcre2_code_free(tok->pre[i].re);
    free(tok->norm);
    free(tok->pre);
    tok->norm = NULL;
    tok->pre = NULL;
    tok->n_norm = tok->n_pre = 0;
}

typedef struct run_ctx {
    const peft_tokenizer *tok;
    tok_scratch *sc;
    tok_out *out;
    int first;
} run_ctx;

static int run_pre(run_ctx *c, int step, tok_piece p);

static tok_piece slice(const tok_piece *p, size_t b, size_t e) {
    tok_piece q = {p->s + b, e - b, p->align ? p->align + b : NULL, p->align ? 0 : p->base + (uint32_t)b};
    return q;
}

static int emit(run_ctx *c, int step, const tok_piece *p, size_t b, size_t e) {
    return e > b ? run_pre(c, step + 1, slice(p, b, e)) : 0;
}

/* Finds the next non-empty match at or after *at; returns 0 when there is none. */
static int next_match(run_ctx *c, const tok_piece *p, const pcre2_code *re, size_t *at, size_t *mb, size_t *me) {
    while (*at <= p->n) {
        if (pcre2_match(re, (PCRE2_SPTR)p->s, p->n, *at, PCRE2_NO_UTF_CHECK, c->sc->md, NULL) < 0) return 0;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->sc->md);
        if (ov[1] > ov[0]) {
            *mb = ov[0], *me = ov[1];
            return 1;
        }
        /* an empty match splits nothing: look again one character on */
        if (ov[0] >= p->n) return 0;
        *at = ov[0] + utf8_char_len((unsigned char)p->s[ov[0]]);
    }
    return 0;
}

typedef struct part { size_t b, e; int delim; } part;

/* Splits p at the regex's matches (the delimiters; invert swaps matches and the text between
 * them) and hands the parts to the next step, combined per `behavior` as HF's
 * NormalizedString::split does. */
static int split_regex(run_ctx *c, int step, const tok_piece *p, const pcre2_code *re, int behavior, int invert) {
    if (!c->sc->md && !(c->sc->md = pcre2_match_data_create(1, NULL))) return -1;
    part *parts = NULL;
    size_t np = 0, cap = 0, at = 0, gap = 0, mb, me;
    int rc = 0, more = 1;
    while (more && !rc) {
        more = next_match(c, p, re, &at, &mb, &me);
        if (!more) mb = me = p->n;
        part two[2] = {{gap, mb, invert}, {mb, me, !invert}};
        for (int k = 0; k < 2 && !rc; k++) {
            if (two[k].e == two[k].b) continue;
            if (behavior == TOK_SPLIT_ISOLATED || behavior == TOK_SPLIT_REMOVED) {
                /* the common cases stream their parts */
                if (!(behavior == TOK_SPLIT_REMOVED && two[k].delim)) rc = emit(c, step, p, two[k].b, two[k].e);
                continue;
            }
            if (np == cap) {
                part *g = realloc(parts, (cap = cap ? cap * 2 : 64) * sizeof *g);
                if (!g) { rc = -1; break; }
                parts = g;
            }
            parts[np++] = two[k];
        }
        gap = at = me;
    }
    if (rc || behavior == TOK_SPLIT_ISOLATED || behavior == TOK_SPLIT_REMOVED) return free(parts), rc;
    /* fold as HF does: a delimiter joins its previous (or next) part unless that part was a
     * delimiter itself; Contiguous joins runs of equal kind */
    part *out = malloc((np ? np : 1) * sizeof *out);
    size_t no = 0;
    if (!out) return free(parts), -1;
    int prev_delim = 0;
    if (behavior == TOK_SPLIT_MERGED_NEXT) {
        for (size_t i = np; i-- > 0;) {
            if (parts[i].delim && !prev_delim && no) out[no - 1].b = parts[i].b;
            else out[no++] = parts[i];
            prev_delim = parts[i].delim;
        }
        for (size_t i = 0; i < no / 2; i++) {
            part t = out[i]; out[i] = out[no - 1 - i]; out[no - 1 - i] = t;
        }
    } else {
        for (size_t i = 0; i < np; i++) {
            int join = behavior == TOK_SPLIT_CONTIGUOUS ? parts[i].delim == prev_delim : parts[i].delim && !prev_delim;
            if (join && no) out[no - 1].e = parts[i].e;
            else out[no++] = parts[i];
            prev_delim = parts[i].delim;
        }
    }
    for (size_t i = 0; i < no && !rc; i++) rc = emit(c, step, p, out[i].b, out[i].e);
    free(out);
    free(parts);
    return rc;
}

static int metaspace(run_ctx *c, int step, const tok_piece *p, const tok_pre *mp) {
    int prepend = mp->prepend_scheme == TOK_PREPEND_ALWAYS || (mp->prepend_scheme == TOK_PREPEND_FIRST && c->first);
    size_t cap = p->n * mp->repl_n + mp->repl_n + 1;
    char *o = tok_scratch_alloc(c->sc, cap);
    uint32_t *a = tok_scratch_alloc(c->sc, cap * sizeof *a);
    if (!o || !a) return -1;
    size_t w = 0;
    int starts_with = p->n >= mp->repl_n && !memcmp(p->s, mp->repl, mp->repl_n);
    if (prepend && p->n && !(p->s[0] == ' ') && !starts_with)
        for (size_t j = 0; j < mp->repl_n; j++) o[w] = mp->repl[j], a[w++] = tok_piece_orig(p, 0);
    for (size_t i = 0; i < p->n; i++) {
        if (p->s[i] == ' ') {
            for (size_t j = 0; j < mp->repl_n; j++) o[w] = mp->repl[j], a[w++] = tok_piece_orig(p, i);
        } else {
            o[w] = p->s[i], a[w++] = tok_piece_orig(p, i);
        }
    }
    tok_piece q = {o, w, a, 0};
    if (!mp->split) return run_pre(c, step + 1, q);
    /* split before each replacement character, which stays at the start of its word */
    size_t b = 0;
    for (size_t i = 1; i + mp->repl_n <= w; i++)
        if (!memcmp(o + i, mp->repl, mp->repl_n)) {
            if (emit(c, step, &q, b, i)) return -1;
            b = i;
        }
    return emit(c, step, &q, b, w);
}

static int digits(run_ctx *c, int step, const tok_piece *p, int individual) {
    size_t b = 0;
    for (size_t i = 1; i <= p->n; i++) {
        int d0 = isdigit((unsigned char)p->s[i - 1]);
        if (i == p->n || d0 != !!isdigit((unsigned char)p->s[i]) || (d0 && individual)) {
            if (emit(c, step, p, b, i)) return -1;
            b = i;
        }
    }
    return 0;
}

/* BertPreTokenizer: words split at whitespace (removed), each punctuation character a piece. */
static int bert_pre(run_ctx *c, int step, const tok_piece *p) {
    size_t b = 0;
    for (size_t i = 0; i < p->n;) {
        uint32_t cp;
        size_t k = utf8_decode(p->s + i, p->n - i, &cp);
        int f = uni_bert_flags(cp);
        if (f & (UNI_BERT_WS | UNI_BERT_PUNCT)) {
            if (emit(c, step, p, b, i) || ((f & UNI_BERT_PUNCT) && emit(c, step, p, i, i + k))) return -1;
            b = i + k;
        }
        i += k;
    }
    return emit(c, step, p, b, p->n);
}

static int run_pre(run_ctx *c, int step, tok_piece p) {
    if (step == c->tok->n_pre)
        return c->tok->wordpiece ? tok_wordpiece_piece(c->tok, c->sc, &p, c->out) : tok_bpe_piece(c->tok, c->sc, &p, c->out);
    const tok_pre *pr = &c->tok->pre[step];
    switch (pr->kind) {
    case TOK_PRE_SPLIT:
        return split_regex(c, step, &p, pr->re, pr->behavior, pr->invert);
    case TOK_PRE_BYTELEVEL:
        if (pr->add_prefix_space && (p.n == 0 || p.s[0] != ' ')) {
            char *o = tok_scratch_alloc(c->sc, p.n + 1);
            uint32_t *a = tok_scratch_alloc(c->sc, (p.n + 1) * sizeof *a);
            if (!o || !a) return -1;
            o[0] = ' ';
            a[0] = tok_piece_orig(&p, 0);
            memcpy(o + 1, p.s, p.n);
            for (size_t i = 0; i < p.n; i++) a[i + 1] = tok_piece_orig(&p, i);
            p.s = o, p.n++, p.align = a;
        }
        return pr->re ? split_regex(c, step, &p, pr->re, TOK_SPLIT_ISOLATED, 0) : run_pre(c, step + 1, p);
    case TOK_PRE_METASPACE:
        return metaspace(c, step, &p, pr);
    case TOK_PRE_BERT:
        return bert_pre(c, step, &p);
    default:
        return digits(c, step, &p, pr->individual_digits);
    }
}

int tok_encode_section(const peft_tokenizer *tok, tok_scratch *sc, const char *s, size_t n, uint32_t base,
                       int first, tok_out *out) {
    tok_piece p = {s, n, NULL, base};
    for (int i = 0; i < tok->n_norm; i++)
        if (normalize(&tok->norm[i], sc, &p)) return -1;
    if (p.n == 0) return 0;
    run_ctx c = {tok, sc, out, first};
    return run_pre(&c, 0, p);
}
