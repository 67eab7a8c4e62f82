/* fuzz_tokenizer.c: libFuzzer target for tokenizer.json / tokenizer_config.json parsing
 * (peft_tokenizer_load_json) and for encoding and decoding with whatever was accepted.
 * Input: the tokenizer.json text, optionally followed by a NUL byte and a tokenizer_config.json
 * text. Any input must give an error naming the input, or a tokenizer that encodes a few fixed
 * texts (and the input's last bytes when they are UTF-8) without error, to ids inside its
 * vocabulary with spans inside the text, encodes pairs of them (peft_tokenizer_encode_pair: a's
 * ids then b's, type ids in the template's range), and decodes those ids and every id of the vocabulary to a
 * NUL-terminated string. Built by fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

#define REQUIRE(c) \
    do {           \
        if (!(c)) __builtin_trap(); \
    } while (0)

static const char *const TEXTS[] = {
    "Hello world! The quick brown fox, 1234567 times.",
    "  leading spaces\n\ttabs and\r\nnewlines   ",
    "<|im_start|>user\nhi<|im_end|>\n<s>[INST] x [/INST]</s><|eot_id|><pad> <unk>",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xe2\x96\x81x A\xcc\x8a \xef\xbc\xa1",
    "",
};

static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_valid_len(s + i, n - i))) return 0;
    return 1;
}

static void check_encode(const peft_tokenizer *tok, const char *text, size_t len) {
    for (int special = 0; special < 2; special++) {
        peft_err err = {0};
        int32_t *ids;
        uint32_t *st, *en;
        size_t n;
        int rc = peft_tokenizer_encode_spans(tok, text, len, special, &ids, &st, &en, &n, &err);
        /* valid UTF-8 always encodes: a character the vocabulary cannot spell becomes unk, or is
         * dropped when there is no unk token (as in HF); invalid UTF-8 may be refused */
        if (rc != PEFT_OK && !valid_utf8(text, len)) {
            REQUIRE(rc < 0 && err.code == rc);
            return;
        }
        REQUIRE(rc == PEFT_OK);
        int V = peft_tokenizer_vocab_size(tok);
        for (size_t i = 0; i < n; i++) REQUIRE(ids[i] >= 0 && ids[i] < V && st[i] <= en[i] && en[i] <= len);
        char *back;
        for (int skip = 0; skip < 2; skip++)
            if (peft_tokenizer_decode(tok, ids, n, skip, &back, &err) == PEFT_OK) {
                REQUIRE(back != NULL);
                (void)strlen(back);
                free(back);
            }
        free(ids);
        free(st);
        free(en);
    }
}

/* The pair (a, b) as encode(a, b): without specials exactly a's ids then b's; with them, ids in
 * the vocabulary and type ids as a template may state them (BERT's 0 / 1; TemplateProcessing
 * allows up to 1e6, see tokenizer.c). Invalid UTF-8 in either must be refused. */
static void check_pair(const peft_tokenizer *tok, const char *a, size_t alen, const char *b, size_t blen) {
    int V = peft_tokenizer_vocab_size(tok);
    size_t n_single[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        peft_err err = {0};
        int32_t *ids;
        size_t n;
        if (peft_tokenizer_encode(tok, k ? b : a, k ? blen : alen, 0, &ids, &n, &err) != PEFT_OK) return;
        free(ids);
        n_single[k] = n;
    }
    for (int special = 0; special < 2; special++) {
        peft_err err = {0};
        int32_t *ids;
        uint32_t *types;
        size_t n;
        int rc = peft_tokenizer_encode_pair(tok, a, alen, b, blen, special, &ids, &types, &n, &err);
        REQUIRE(rc == PEFT_OK);
        if (!special) REQUIRE(n == n_single[0] + n_single[1]);
        for (size_t i = 0; i < n; i++) REQUIRE(ids[i] >= 0 && ids[i] < V && types[i] <= 1000000);
        free(ids);
        free(types);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1u << 18)) return 0;
    /* exactly sized, not NUL-terminated copies */
    const uint8_t *nul = memchr(data, 0, size);
    size_t len = nul ? (size_t)(nul - data) : size, cfg_len = nul ? size - len - 1 : 0;
    char *json = malloc(len ? len : 1), *cfg = nul ? malloc(cfg_len ? cfg_len : 1) : NULL;
    if (!json || (nul && !cfg)) return free(json), free(cfg), 0;
    memcpy(json, data, len);
    if (cfg && cfg_len) memcpy(cfg, nul + 1, cfg_len);
    peft_err err = {0};
    peft_tokenizer *tok = NULL;
    int rc = peft_tokenizer_load_json(json, len, cfg, cfg_len, "fuzz", &tok, &err);
    free(json);
    free(cfg);
    if (rc != PEFT_OK) {
        REQUIRE(tok == NULL);
        REQUIRE(rc < 0 && err.code == rc && memchr(err.msg, 0, sizeof err.msg) && strstr(err.msg, "fuzz/tokenizer"));
        return 0;
    }
    REQUIRE(tok != NULL);
    int V = peft_tokenizer_vocab_size(tok);
    REQUIRE(V >= 0);
    int ids[] = {peft_tokenizer_bos_id(tok), peft_tokenizer_eos_id(tok), peft_tokenizer_pad_id(tok)};
    for (int i = 0; i < 3; i++) REQUIRE(ids[i] >= -1 && ids[i] < V);
    for (size_t i = 0; i < sizeof TEXTS / sizeof *TEXTS; i++) check_encode(tok, TEXTS[i], strlen(TEXTS[i]));
    /* the input's tail as text (it must encode when it is valid UTF-8) */
    size_t tail = size < 48 ? size : 48;
    check_encode(tok, (const char *)data + size - tail, tail);
    /* the tail's two halves as a pair, and each fixed text with the next */
    const char *t0 = (const char *)data + size - tail;
    check_pair(tok, t0, tail / 2, t0 + tail / 2, tail - tail / 2);
    for (size_t i = 0; i + 1 < sizeof TEXTS / sizeof *TEXTS; i++)
        check_pair(tok, TEXTS[i], strlen(TEXTS[i]), TEXTS[i + 1], strlen(TEXTS[i + 1]));
    /* every id alone and all of them at once (ids without a vocabulary entry included) */
    int n_all = V < 4096 ? V : 4096;
    int32_t *all = malloc(((size_t)n_all + 1) * sizeof *all);
    for (int i = 0; all && i < n_all; i++) all[i] = i;
    char *back;
    for (int skip = 0; all && skip < 2; skip++)
        if (peft_tokenizer_decode(tok, all, (size_t)n_all, skip, &back, &err) == PEFT_OK) free(back);
    free(all);
    for (int i = 0; i < n_all; i++) {
        const char *t = peft_tokenizer_added_text(tok, i);
        if (t) REQUIRE(peft_tokenizer_token_id(tok, t) >= 0);
    }
    peft_chat_template *tpl;
    int trc = peft_chat_template_for(tok, NULL, &tpl, &err);
    REQUIRE(trc == PEFT_OK ? tpl != NULL : tpl == NULL && err.code == trc);
    peft_chat_template_free(tpl);
    peft_tokenizer_free(tok);
    return 0;
}
