/* wordpiece.c: the WordPiece model of tokenizer.json (BERT and its kin), as the tokenizers
 * library runs it: each pre-tokenized word is cut greedily, longest match first, into vocabulary
 * entries, every piece after the first spelled with continuing_subword_prefix ("##"); a word
 * that cannot be spelled that way, or that has more than max_input_chars_per_word characters,
 * becomes one unk token as a whole. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tok_internal.h"

int tok_wordpiece_load(peft_tokenizer *tok, const void *model_cjson, const char *what, peft_err *err) {
    const cJSON *model = model_cjson;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *max = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
    /* the library's defaults for absent fields */
    const char *u = cJSON_IsString(unk) ? unk->valuestring : "[UNK]", *pf = cJSON_IsString(prefix) ? prefix->valuestring : "##";
    if ((unk && !cJSON_IsString(unk)) || (prefix && !cJSON_IsString(prefix)))
        return peft_fail(err, PEFT_EFORMAT, "%s: WordPiece \"unk_token\" and \"continuing_subword_prefix\" must be strings", what);
    if (max && !(cJSON_IsNumber(max) && max->valuedouble >= 0 && max->valuedouble <= 1e9 && max->valuedouble == (double)max->valueint))
        return peft_fail(err, PEFT_EFORMAT, "%s: WordPiece \"max_input_chars_per_word\" must be an integer in [0, 1e9]", what);
    tok->wp_max_chars = max ? (size_t)max->valueint : 100;
    /* the library fails on the first word it cannot spell when unk is missing; refuse the file */
    if ((tok->unk_id = tok_strmap_get(&tok->vocab, u, strlen(u))) < 0)
        return peft_fail(err, PEFT_EFORMAT, "%s: WordPiece unk_token \"%s\" is not in the vocabulary", what, u);
    tok->wp_prefix_n = strlen(pf);
    if (!(tok->wp_prefix = malloc(tok->wp_prefix_n + 1))) return peft_fail(err, PEFT_ENOMEM, "%s: out of memory", what);
    memcpy(tok->wp_prefix, pf, tok->wp_prefix_n + 1);
    tok->wordpiece = 1;
    return 0;
}

/* Start of the character that ends at byte e (> 0) of valid UTF-8. */
static size_t char_start(const char *s, size_t e) {
    size_t k = e - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

int tok_wordpiece_piece(const peft_tokenizer *tok, tok_scratch *sc, const tok_piece *p, tok_out *out) {
    size_t n = p->n, chars = 0, n0 = out->n;
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)p->s[i] & 0xC0) != 0x80;
    uint32_t o_begin = tok_piece_orig(p, 0), o_end = tok_piece_orig(p, n - 1) + 1;
    if (chars > tok->wp_max_chars) return tok_out_push(out, tok->unk_id, o_begin, o_end);
    /* buf = prefix + the word; for a piece at start > 0 the prefix is copied over the consumed
     * bytes just before it, so that prefix + word[start..end) is the contiguous key buf + start */
    size_t pn = tok->wp_prefix_n;
    if (sc->buf_cap < pn + n) {
        char *g = realloc(sc->buf, pn + n);
        if (!g) return -1;
        sc->buf = g;
        sc->buf_cap = pn + n;
    }
    memcpy(sc->buf + pn, p->s, n);
    for (size_t start = 0; start < n;) {
        size_t end = n;
        int32_t id = -1;
        const char *key = start ? sc->buf + start : sc->buf + pn; /* the first piece has no prefix */
        if (start) memcpy(sc->buf + start, tok->wp_prefix, pn);
        while (end > start) {
            size_t klen = end - start + (start ? pn : 0);
            if ((id = tok_strmap_get(&tok->vocab, key, klen)) >= 0) break;
            end = char_start(p->s, end);
        }
        if (id < 0) { /* the whole word is unk */
            out->n = n0;
            return tok_out_push(out, tok->unk_id, o_begin, o_end);
        }
        if (tok_out_push(out, id, tok_piece_orig(p, start), tok_piece_orig(p, end - 1) + 1)) return -1;
        start = end;
    }
    return 0;
}
