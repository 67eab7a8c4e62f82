/* test_tokenizer.c: the added-token trie against a brute-force longest-prefix search, the
 * tokenizer on a small SentencePiece-style fixture (always), and on the GPT-2 tokenizer of
 * ../shared/models/tiny-gpt2 (when present) with ids from HF tokenizers. The full comparison
 * with HF tokenizers is tests/tokenizer/test_tokenizer_hf.py. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fileio.h"
#include "tokenizer/fixture.h"
#include "tokenizer/tok_internal.h"
#include "tokenizer/tokenizer.h"

/* The longest of the n strings that s[0..len) starts with (first index among equals), -1 if
 * none: what the trie must answer, by looking at every string. */
static int brute_longest(const char *const *str, const uint32_t *slen, int n, const char *s, size_t len) {
    int best = -1;
    for (int k = 0; k < n; k++)
        if (slen[k] <= len && !memcmp(s, str[k], slen[k]) && (best < 0 || slen[k] > slen[best])) best = k;
    return best;
}

static void trie_tests(void) {
    /* overlapping strings: prefixes of each other, a duplicate, bytes 0x00 and 0xFF, one byte */
    static const char *const fixed[] = {"<|a|>", "<|a|>b", "<|a|>bc", "|a|>", "<|", "<|a|>", "\xff\x00", "\xff", "x", "<|ab|>"};
    enum { NF = sizeof fixed / sizeof fixed[0], NR = 1000 };
    const char *str[NF + NR];
    uint32_t slen[NF + NR];
    static char pool[NR][8];
    for (int k = 0; k < NF; k++) str[k] = fixed[k], slen[k] = (uint32_t)strlen(fixed[k]);
    slen[6] = 2; /* "\xff\x00" holds a NUL */
    uint32_t r = 12345;
    for (int k = 0; k < NR; k++) { /* random strings over a 4-letter alphabet: many shared prefixes */
        r = r * 1103515245u + 12345u;
        int n = 1 + (int)((r >> 16) % 6);
        for (int i = 0; i < n; i++) r = r * 1103515245u + 12345u, pool[k][i] = "abc<"[(r >> 16) & 3];
        str[NF + k] = pool[k];
        slen[NF + k] = (uint32_t)n;
    }
    tok_trie t;
    CHECK(tok_trie_build(&t, str, slen, NF + NR) == 0);
    CHECK(tok_trie_longest(&t, "<|a|>bcd", 8) == 2 && tok_trie_longest(&t, "<|a|>b", 5) == 0);
    CHECK(tok_trie_longest(&t, "<|a|", 4) == 4 && tok_trie_longest(&t, "|a|", 3) == -1);
    CHECK(tok_trie_longest(&t, "\xff\x00z", 3) == 6 && tok_trie_longest(&t, "\xff", 1) == 7);
    CHECK(tok_trie_find(&t, "<|a|>", 5) == 0 && tok_trie_find(&t, "<|a", 3) == -1 && tok_trie_find(&t, "", 0) == -1);
    /* every position of a random text: the trie and the brute force agree */
    char text[2000];
    for (size_t i = 0; i < sizeof text; i++) r = r * 1103515245u + 12345u, text[i] = "abc<|x>"[(r >> 16) % 7];
    int bad = 0;
    for (size_t i = 0; i < sizeof text; i++)
        bad += tok_trie_longest(&t, text + i, sizeof text - i) != brute_longest(str, slen, NF + NR, text + i, sizeof text - i);
    for (int k = 0; k < NF + NR; k++) bad += tok_trie_find(&t, str[k], slen[k]) != brute_longest(str, slen, NF + NR, str[k], slen[k]);
    CHECK_MSG(bad == 0, "%d trie answers differ from the brute force", bad);
    tok_trie_free(&t);
    CHECK(tok_trie_build(&t, str, slen, 0) == 0 && tok_trie_longest(&t, "x", 1) == -1 && tok_trie_find(&t, "x", 1) == -1);
    tok_trie_free(&t);
}

static int ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || !memcmp(a, b, na * sizeof *a));
}

static void expect_ids(const peft_tokenizer *tok, const char *text, int special, const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    peft_err err;
    int rc = peft_tokenizer_encode(tok, text, strlen(text), special, &ids, &n, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    CHECK_MSG(ids_eq(ids, n, want, n_want), "encode(\"%s\") gave %zu ids", text, n);
    free(ids);
}

static void expect_roundtrip(const peft_tokenizer *tok, const char *text, const char *want) {
    int32_t *ids;
    size_t n;
    char *out = NULL;
    peft_err err;
    CHECK(peft_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err) == 0);
    CHECK_MSG(peft_tokenizer_decode(tok, ids, n, 1, &out, &err) == 0, "%s", err.msg);
    CHECK_MSG(out && !strcmp(out, want), "decode(encode(\"%s\")) = \"%s\"", text, out ? out : "(null)");
    free(out);
    free(ids);
}

static void fixture_tests(void) {
    char *dir = fixture_dir();
    CHECK(dir != NULL);
    if (!dir) return;
    peft_tokenizer *tok;
    peft_err err;
    CHECK_MSG(peft_tokenizer_load(dir, &tok, &err) == 0, "%s", err.msg);
    CHECK(peft_tokenizer_vocab_size(tok) == 293);
    CHECK(peft_tokenizer_bos_id(tok) == FIX_BOS && peft_tokenizer_eos_id(tok) == FIX_EOS && peft_tokenizer_pad_id(tok) == FIX_PAD);
    CHECK(peft_tokenizer_token_id(tok, "<|im_end|>") == FIX_IM_END && peft_tokenizer_token_id(tok, "zz") == -1);
    CHECK(peft_tokenizer_chat_template(tok) && strstr(peft_tokenizer_chat_template(tok), "<|im_start|>"));

    /* merges by rank: "▁t" then "he" then "▁the"; "the" mid-word is not preceded by ▁ */
    expect_ids(tok, "the cat", 1, (int32_t[]){FIX_BOS, FIX_THE, FIX_SPACE, FIX_CH('c'), FIX_CH('a'), FIX_CH('t')}, 6);
    expect_ids(tok, "the cat", 0, (int32_t[]){FIX_THE, FIX_SPACE, FIX_CH('c'), FIX_CH('a'), FIX_CH('t')}, 5);
    expect_ids(tok, "bathe", 0, (int32_t[]){FIX_SPACE, FIX_CH('b'), FIX_CH('a'), FIX_CH('t'), FIX_HE}, 5);
    /* the same merge at two places: both apply */
    expect_ids(tok, "abab", 0, (int32_t[]){FIX_SPACE, FIX_AB, FIX_AB}, 3);
    /* byte fallback: 'Q' and 'é' are not in the vocabulary */
    expect_ids(tok, "Q\xc3\xa9", 0, (int32_t[]){FIX_SPACE, FIX_BYTE0 + 'Q', FIX_BYTE0 + 0xC3, FIX_BYTE0 + 0xA9}, 4);
    /* added tokens are never split; each section gets its own ▁ (Prepend is per section) */
    expect_ids(tok, "a</s>b", 0, (int32_t[]){FIX_SPACE, FIX_CH('a'), FIX_EOS, FIX_SPACE, FIX_CH('b')}, 5);
    expect_ids(tok, "<|im_start|><|im_end|>", 0, (int32_t[]){FIX_IM_START, FIX_IM_END}, 2);
    /* lstrip/rstrip: the spaces around <pad> go */
    expect_ids(tok, "a  <pad>  b", 0, (int32_t[]){FIX_SPACE, FIX_CH('a'), FIX_PAD, FIX_SPACE, FIX_CH('b')}, 5);
    expect_ids(tok, "", 1, (int32_t[]){FIX_BOS}, 1);

    expect_roundtrip(tok, "the cat sat", "the cat sat");
    expect_roundtrip(tok, " two  spaces ", " two  spaces ");
    expect_roundtrip(tok, "Caf\xc3\xa9 \xf0\x9f\xa4\x97 QED\n", "Caf\xc3\xa9 \xf0\x9f\xa4\x97 QED\n");

    /* decode keeps special tokens unless asked; ByteFallback of a lone continuation byte is U+FFFD */
    char *out = NULL;
    CHECK(peft_tokenizer_decode(tok, (int32_t[]){FIX_BOS, FIX_THE, FIX_EOS}, 3, 0, &out, &err) == 0 && !strcmp(out, "<s> the</s>"));
    free(out);
    CHECK(peft_tokenizer_decode(tok, (int32_t[]){FIX_THE, FIX_BYTE0 + 0xA9, FIX_CH('a')}, 3, 0, &out, &err) == 0 &&
          !strcmp(out, "the\xef\xbf\xbd" "a"));
    free(out);
    CHECK(peft_tokenizer_decode(tok, (int32_t[]){5000}, 1, 0, &out, &err) == PEFT_EINVAL && strstr(err.msg, "5000"));

    /* spans map tokens back to the original bytes, through the normalizer */
    int32_t *ids;
    uint32_t *st, *en;
    size_t n;
    CHECK(peft_tokenizer_encode_spans(tok, "the cat", 7, 1, &ids, &st, &en, &n, &err) == 0 && n == 6);
    if (n == 6) {
        CHECK(st[0] == 0 && en[0] == 0);      /* BOS */
        CHECK(st[1] == 0 && en[1] == 3);      /* ▁the <- "the" */
        CHECK(st[2] == 3 && en[2] == 4);      /* ▁ <- " " */
        CHECK(st[5] == 6 && en[5] == 7);      /* t */
    }
    free(ids), free(st), free(en);

    CHECK(peft_tokenizer_encode(tok, "bad \xff byte", 10, 1, &ids, &n, &err) == PEFT_EINVAL && strstr(err.msg, "byte 4"));
    peft_tokenizer_free(tok);

    /* no tokenizer_config.json: no bos/eos, still encodes */
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    remove(path);
    CHECK(peft_tokenizer_load(dir, &tok, &err) == 0);
    CHECK(peft_tokenizer_bos_id(tok) == -1 && peft_tokenizer_chat_template(tok) == NULL);
    peft_tokenizer_free(tok);

    /* a broken file names itself (a WordPiece vocabulary without its unk token) */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", f);
    fclose(f);
    CHECK(peft_tokenizer_load(dir, &tok, &err) == PEFT_EFORMAT && strstr(err.msg, "tokenizer.json") && strstr(err.msg, "unk_token"));
    fixture_rmdir(dir);
    CHECK(peft_tokenizer_load("/nonexistent-dir", &tok, &err) == PEFT_EIO);
}

/* GPT-2 ids from HF tokenizers 0.23.3 (Tokenizer.from_file(...).encode) for the same strings. */
static void gpt2_tests(void) {
    const char *shared = getenv("PEFT_SHARED");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/tiny-gpt2", shared ? shared : "../shared");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/tokenizer.json", dir);
    if (!peft_file_exists(probe)) {
        fprintf(stderr, "note: %s missing; GPT-2 checks skipped\n", probe);
        return;
    }
    peft_tokenizer *tok;
    peft_err err;
    CHECK_MSG(peft_tokenizer_load(dir, &tok, &err) == 0, "%s", err.msg);
    CHECK(peft_tokenizer_vocab_size(tok) == 50257 && peft_tokenizer_bos_id(tok) == 50256 && peft_tokenizer_eos_id(tok) == 50256);
    expect_ids(tok, "Hello world  <|im_start|> it's  123456 \n  h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\xa4\x97<s></s>", 1,
               (int32_t[]){15496, 995, 220, 1279, 91, 320, 62, 9688, 91, 29, 340, 338, 220, 17031, 29228, 220, 198, 220, 289, 2634,
                           18798, 220, 19526, 254, 25001, 121, 12520, 97, 245, 27, 82, 12240, 82, 29}, 34);
    expect_ids(tok, "a<|endoftext|>b", 1, (int32_t[]){64, 50256, 65}, 3);
    expect_roundtrip(tok, "It's 2024 \xe2\x80\x94 na\xc3\xafve caf\xc3\xa9s, 3.14!\n\n\tok", "It's 2024 \xe2\x80\x94 na\xc3\xafve caf\xc3\xa9s, 3.14!\n\n\tok");
    peft_tokenizer_free(tok);
}

int main(void) {
    trie_tests();
    fixture_tests();
    gpt2_tests();
    return check_report("test_tokenizer");
}
